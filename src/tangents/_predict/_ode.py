"""Function-space gradient [momentum] flow for any differentiable loss, by an ODE solver."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Optional, Protocol, Union

import numpy as np
import scipy.integrate
import torch

from ._common import (
    ArrayLike,
    Axes,
    Layout,
    as_tensor,
    check_finite,
    check_number,
    check_targets,
    output_dtype,
    to_2d,
    work,
)
from ._mse import check_inputs

_WHERE = "gradient_descent predict_fn"

#: The ODE solver (scipy's LSODA switches between Adams and BDF as stiffness requires) and
#: its relative and absolute tolerances.
METHOD = "LSODA"
RTOL = 1e-10
ATOL = 1e-12


@dataclasses.dataclass
class ODEState:
    """State of the function-space ODE (neural-tangents' ``predict.ODEState``).

    Attributes:
        fx_train: training-set outputs ``(N, C)``.
        fx_test: test-set outputs ``(N_test, C)``.
        qx_train: training-set auxiliary variable (the momentum), or ``None``.
        qx_test: test-set auxiliary variable, or ``None``.
    """

    fx_train: Optional[torch.Tensor] = None
    fx_test: Optional[torch.Tensor] = None
    qx_train: Optional[torch.Tensor] = None
    qx_test: Optional[torch.Tensor] = None


class PredictFnODE(Protocol):
    """``predict_fn(t, fx_train_or_state_0=0., fx_test_0=None, k_test_train=None)``."""

    def __call__(
        self,
        t: Optional[ArrayLike] = None,
        fx_train_or_state_0: Union[ArrayLike, ODEState, None] = 0.0,
        fx_test_0: Optional[ArrayLike] = None,
        k_test_train: Optional[ArrayLike] = None,
    ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor], ODEState]: ...


def gradient_descent(
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    k_train_train: ArrayLike,
    y_train: ArrayLike,
    learning_rate: float = 1.0,
    momentum: Optional[float] = None,
    trace_axes: Axes = (-1,),
) -> PredictFnODE:
    r"""Predicts function-space gradient [momentum] flow on any differentiable loss.

    Solves, with :math:`K` the NTK (``k_train_train``, and ``k_test_train`` for test points),

    .. math::
        \frac{d f_t(X)}{dt} = -\eta\, K_{XX} \nabla_f \mathcal L(f_t(X), Y), \qquad
        \frac{d f_t(x)}{dt} = -\eta\, K_{xX} \nabla_f \mathcal L(f_t(X), Y),

    with scipy's ``solve_ivp`` (LSODA, ``rtol=1e-10``). With ``momentum``
    :math:`\mu` it solves the second-order system :math:`\ddot f = -K\nabla\mathcal L
    + \frac{\mu - 1}{\sqrt\eta}\dot f` in units of :math:`\sqrt\eta` (as neural-tangents).

    Args:
        loss: ``loss(fx_train, y_train) -> scalar`` written in torch and differentiable
            (e.g. ``lambda fx, y: -(torch.log_softmax(fx, -1) * y).mean()``). It is called
            with float64 tensors.
        k_train_train: the NTK on the training data, ``(N, N)`` (interleaved pairs of the
            non-trace axes of ``y_train`` in general).
        y_train: targets ``(N, C)``.
        learning_rate: step size :math:`\eta`.
        momentum: momentum :math:`\mu`, or ``None`` for plain gradient descent.
        trace_axes: axes of ``y_train`` along which the kernel is :math:`K \otimes I`.

    Returns:
        ``predict_fn(t, fx_train_or_state_0=0., fx_test_0=None, k_test_train=None)``
        returning ``fx_train_t``, ``fx_test_t`` or both (an `ODEState` if one was passed),
        with a leading axis of shape ``t.shape`` when ``t`` is an array.

    Example:
        >>> ce = lambda fx, y: -(torch.log_softmax(fx, -1) * y).mean()
        >>> predict_fn = predict.gradient_descent(ce, kernel_fn(x_train, None, "ntk"), y_train)
        >>> fx_train_t, fx_test_t = predict_fn(10., 0., 0., kernel_fn(x_test, x_train, "ntk"))
    """
    if not callable(loss):
        raise TypeError(f"gradient_descent: loss must be a callable loss(fx, y), got {type(loss).__name__}.")
    k = as_tensor(k_train_train, "k_train_train")
    device = k.device
    y = as_tensor(y_train, "y_train", device)
    check_targets(y, "gradient_descent")
    layout = Layout(tuple(y.shape), trace_axes)
    layout.check_kernel(k, "gradient_descent: k_train_train", layout.non_trace_shape)
    dtype = output_dtype(k)
    k2 = work(to_2d(k))
    check_finite(k2, "k_train_train")
    y64 = work(y)
    lr = check_number(learning_rate, "learning_rate", "gradient_descent", positive=True)
    if momentum is not None:
        if check_number(momentum, "momentum", "gradient_descent") > 1:
            raise ValueError(
                f"gradient_descent: momentum must be in [0, 1] (friction (momentum - 1) / sqrt(learning_rate) "
                f"would be negative and the flow diverge), got {momentum!r}; pass e.g. momentum=0.9."
            )
        lr = lr**0.5
        friction = (float(momentum) - 1.0) / lr

    def grad_flat(fx: torch.Tensor) -> torch.Tensor:
        """``∇_f loss(f, y)`` for ``f`` of shape ``y.shape``, flattened to ``(n, m)``."""
        fx = fx.detach().requires_grad_(True)
        value = loss(fx, y64)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise TypeError("gradient_descent: loss(fx, y) must return a scalar torch.Tensor.")
        (g,) = torch.autograd.grad(value.reshape(()), fx)
        return layout.flatten(g)

    def predict_fn(
        t: Optional[ArrayLike] = None,
        fx_train_or_state_0: Union[ArrayLike, ODEState, None] = 0.0,
        fx_test_0: Optional[ArrayLike] = None,
        k_test_train: Optional[ArrayLike] = None,
    ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor], ODEState]:
        """Train [and test] outputs (or the `ODEState`) at time[s] ``t``.

        Args:
            t: a non-negative scalar or array of any shape (a leading axis of that shape is
                added). ``t=None`` (infinite time) is not supported by the ODE solver.
            fx_train_or_state_0: outputs on the training set at ``t = 0`` (``None`` to skip
                train outputs), or an `ODEState` (then an `ODEState` is returned).
            fx_test_0: outputs on the test set at ``t = 0`` (``None`` to skip them; must be
                ``None`` when a state is passed).
            k_test_train: test-train NTK ``(N_test, N)``, needed for test outputs.
        """
        is_state = isinstance(fx_train_or_state_0, ODEState)
        if is_state:
            if fx_test_0 is not None:
                raise ValueError(f"{_WHERE}: fx_test_0 is part of the ODEState passed; set fx_test_0=None.")
            st = fx_train_or_state_0
            fx_train_0, fx_test_0, q_train_0, q_test_0 = st.fx_train, st.fx_test, st.qx_train, st.qx_test
        else:
            fx_train_0, q_train_0, q_test_0 = fx_train_or_state_0, None, None
        check_inputs(fx_train_0, fx_test_0, k_test_train, _WHERE)
        if momentum is None and (q_train_0 is not None or q_test_0 is not None):
            raise ValueError(f"{_WHERE}: the ODEState has momentum variables (qx_*) but momentum is None.")
        if t is None:
            raise ValueError(
                f"{_WHERE}: t=None (infinite time) cannot be integrated; pass a finite time, or use "
                f"gradient_descent_mse for the closed-form t=None limit of the MSE loss."
            )
        tt = as_tensor(np.asarray(t, dtype=np.float64) if isinstance(t, (list, tuple)) else t, "t").to(torch.float64) * lr
        t_shape = tuple(tt.shape)
        t_flat = tt.reshape(-1).cpu().numpy()
        if not np.all(np.isfinite(t_flat)) or np.any(t_flat < 0):
            raise ValueError(f"{_WHERE}: times must be finite and >= 0, got t={t!r}.")

        def full(v: Any, shape: tuple[int, ...], name: str) -> torch.Tensor:
            return torch.broadcast_to(work(as_tensor(v, name, device)), shape).reshape(-1)

        parts = [full(0.0 if fx_train_0 is None else fx_train_0, tuple(y.shape), "fx_train_0")]
        ktd2 = None
        test_shape: tuple[int, ...] = ()
        if fx_test_0 is not None:
            ktd = as_tensor(k_test_train, "k_test_train", device)
            layout.check_kernel(ktd, "gradient_descent: k_test_train")
            ktd2 = work(to_2d(ktd))
            rows = layout.rows_shape(ktd)
            test_shape = tuple(layout.unflatten(torch.zeros(ktd2.shape[0], layout.m), rows).shape)
            parts.append(full(fx_test_0, test_shape, "fx_test_0"))
        if momentum is not None:
            parts.append(full(0.0 if q_train_0 is None else q_train_0, tuple(y.shape), "qx_train"))
            if fx_test_0 is not None:
                parts.append(full(0.0 if q_test_0 is None else q_test_0, test_shape, "qx_test"))
        sizes = [p.numel() for p in parts]
        n_f = sizes[0] + (sizes[1] if fx_test_0 is not None else 0)

        def velocity(f: torch.Tensor) -> torch.Tensor:
            """``-K ∇L`` for the train [and test] outputs, flattened like the state."""
            g = grad_flat(f[: sizes[0]].reshape(y.shape))
            out = [layout.unflatten(k2 @ g, layout.non_trace_shape).reshape(-1)]
            if ktd2 is not None:
                out.append(layout.unflatten(ktd2 @ g, rows).reshape(-1))
            return -torch.cat(out)

        def rhs(_: float, s: np.ndarray) -> np.ndarray:
            state = torch.from_numpy(s).to(device)
            f = state[:n_f]
            if momentum is None:
                return velocity(f).cpu().numpy()
            q = state[n_f:]
            dq = velocity(f) + friction * q
            return torch.cat([q, dq]).cpu().numpy()

        s0 = torch.cat(parts).cpu().numpy()
        # one integration from 0 to max(t), reporting every requested time (any order)
        t_end = float(t_flat.max()) if t_flat.size else 0.0
        if t_end > 0:
            scale = max(1.0, float(np.abs(s0).max()) if s0.size else 1.0)
            sol = scipy.integrate.solve_ivp(
                rhs, (0.0, t_end), s0, method=METHOD, t_eval=np.unique(t_flat), rtol=RTOL, atol=ATOL * scale
            )
            if not sol.success:
                raise RuntimeError(f"{_WHERE}: the ODE solver failed: {sol.message}")
            table = {float(tv): sol.y[:, i] for i, tv in enumerate(sol.t)}
        else:
            table = {}
        states = np.stack([s0 if tv == 0 else table[float(tv)] for tv in t_flat]) if t_flat.size else np.zeros((0, s0.size))
        states_t = torch.from_numpy(states).to(device)

        def piece(i: int, shape: tuple[int, ...]) -> torch.Tensor:
            start = sum(sizes[:i])
            return states_t[:, start : start + sizes[i]].reshape(t_shape + shape).to(dtype)

        fx_train_t = piece(0, tuple(y.shape))
        fx_test_t = piece(1, test_shape) if fx_test_0 is not None else None
        if is_state:
            q_train_t = q_test_t = None
            if momentum is not None:
                i = 2 if fx_test_0 is not None else 1
                q_train_t = piece(i, tuple(y.shape))
                q_test_t = piece(i + 1, test_shape) if fx_test_0 is not None else None
            return ODEState(fx_train_t, fx_test_t, q_train_t, q_test_t)
        if fx_test_t is None:
            return fx_train_t
        if fx_train_0 is None:
            return fx_test_t
        return fx_train_t, fx_test_t

    return predict_fn

