"""Shared machinery of the predictors: input conversion, axis layouts, factorizations.

Every predictor works on *flattened* kernels. A kernel over outputs of shape ``y.shape``
with the ``trace_axes`` of ``y`` absent has the interleaved layout
``(d0, d0', d1, d1', ...)`` over the non-trace axes of ``y`` (neural-tangents' layout); it
is flattened to a matrix ``(prod d, prod d')`` and ``y`` to ``(prod d, prod trace_shape)``.
All linear algebra runs in float64 on the inputs' device; results are cast back.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from typing import Any, NamedTuple, Union

import numpy as np
import torch

ArrayLike = Union[torch.Tensor, np.ndarray, float, int]
Axes = Union[int, Sequence[int]]
Get = Union[None, str, Sequence[str]]

#: Working precision of every solve and eigendecomposition.
WORK_DTYPE = torch.float64


class Gaussian(NamedTuple):
    """A ``(mean, covariance)`` named tuple (neural-tangents' ``predict.Gaussian``).

    Attributes:
        mean: mean, shaped like the function outputs, e.g. ``(N_test, C)``.
        covariance: covariance, shaped like the respective NNGP/NTK kernel, e.g.
            ``(N_test, N_test)`` (with a leading time axis when ``t`` is an array).
    """

    mean: torch.Tensor
    covariance: torch.Tensor


# ---------------------------------------------------------------------- inputs


def as_tensor(x: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    """A torch tensor from a tensor, numpy array or number (no copy when possible)."""
    if isinstance(x, torch.Tensor):
        t = x if device is None else x.to(device)
    elif isinstance(x, (np.ndarray, np.generic, float, int)) and not isinstance(x, bool):
        a = np.asarray(x)
        if not a.flags.writeable:  # torch cannot view a read-only array (np.load(mmap_mode="r"))
            a = a.copy()
        t = torch.as_tensor(a, device=device)
    else:
        raise TypeError(f"{name} must be a torch.Tensor, a numpy array or a number, got {type(x).__name__}.")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8)):
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}.")
    return t


def output_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """The dtype results are returned in: the widest floating dtype among the inputs."""
    dtypes = [t.dtype for t in tensors if t is not None and t.is_floating_point()]
    if not dtypes:
        return torch.get_default_dtype()
    out = dtypes[0]
    for d in dtypes[1:]:
        out = torch.promote_types(out, d)
    return out


def work(x: torch.Tensor, dtype: torch.dtype = WORK_DTYPE) -> torch.Tensor:
    """``x`` in the working precision (float64 unless ``solve_dtype`` says otherwise)."""
    return x.to(dtype)


def check_solve_dtype(solve_dtype: Any, where: str) -> torch.dtype:
    if solve_dtype not in (torch.float64, torch.float32):
        raise ValueError(
            f"{where}: solve_dtype must be torch.float64 (the default) or torch.float32, got {solve_dtype!r}."
        )
    return solve_dtype


def check_finite(x: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite entries; check the kernel computation.")


def canonical_axes(axes: Axes, ndim: int, name: str = "trace_axes") -> tuple[int, ...]:
    """Sorted non-negative axes (neural-tangents' ``canonicalize_axis``)."""
    try:
        axes = (axes,) if isinstance(axes, (int, np.integer)) else tuple(axes)
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of ints (axes of y_train), got {axes!r}.") from None
    out = []
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
            raise TypeError(f"{name} must be an int or a sequence of ints (axes of y_train), got {axes!r}.")
        if not -ndim <= int(a) < ndim:
            raise ValueError(f"{name}={axes} is out of range for y_train with {ndim} dimensions.")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{name}={axes} repeats an axis.")
    return tuple(sorted(out))


class Layout:
    """How the axes of ``y_train`` map to the kernel's (``trace_axes`` block-diagonal).

    Attributes:
        trace: the trace axes of ``y``, non-negative, sorted.
        trace_neg: the same axes counted from the end (NT places them there in outputs).
        trace_shape: ``y.shape`` on the trace axes; ``m = prod(trace_shape)``.
        non_trace_shape: ``y.shape`` on the other axes (the kernel's paired axes).
    """

    def __init__(self, y_shape: Sequence[int], trace_axes: Axes) -> None:
        ndim = len(y_shape)
        self.ndim = ndim
        self.trace = canonical_axes(trace_axes, ndim)
        self.trace_neg = tuple(a - ndim for a in self.trace)
        self.non_trace = tuple(a for a in range(ndim) if a not in self.trace)
        self.trace_shape = tuple(y_shape[a] for a in self.trace)
        self.non_trace_shape = tuple(y_shape[a] for a in self.non_trace)
        self.m = math.prod(self.trace_shape)
        self.n = math.prod(self.non_trace_shape)

    def check_kernel(self, k: torch.Tensor, name: str, rows: Sequence[int] | None = None) -> None:
        """Checks that ``k`` pairs ``rows`` (default: the train axes) with the train axes."""
        want_cols = self.non_trace_shape
        shape = tuple(int(s) for s in k.shape)
        ok = len(shape) == 2 * len(want_cols) and shape[1::2] == want_cols
        if ok and rows is not None:
            ok = shape[0::2] == tuple(rows)
        if not ok:
            pairs = ", ".join(f"{'*' if rows is None else r}, {d}" for r, d in zip(rows or want_cols, want_cols))
            raise ValueError(
                f"{name} has shape {shape}, but y_train has shape "
                f"{self.non_trace_shape + self.trace_shape} with trace_axes={self.trace}: the kernel "
                f"must have the interleaved shape ({pairs}) over the non-trace axes of y_train"
                f"{' (* = any number of test points)' if rows is None else ''}. "
                f"Pass the kernel computed for these outputs, or change trace_axes."
            )

    def flatten(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` of shape ``y_train.shape`` → ``(n, m)``, trace axes last."""
        y = torch.movedim(y, self.trace, tuple(range(self.ndim - len(self.trace), self.ndim)))
        return y.reshape(-1, self.m)

    def unflatten(self, flat: torch.Tensor, rows_shape: Sequence[int], lead: Sequence[int] = ()) -> torch.Tensor:
        """``(*lead, n_rows, m)`` → ``(*lead, *outputs)`` with the trace axes put back."""
        out = flat.reshape(tuple(lead) + tuple(rows_shape) + self.trace_shape)
        k = len(self.trace)
        return torch.movedim(out, tuple(range(-k, 0)), self.trace_neg)

    def rows_shape(self, k: torch.Tensor) -> tuple[int, ...]:
        """The test shape (non-trace) of a test-train kernel: its even axes."""
        return tuple(int(s) for s in k.shape[0::2])


def to_2d(k: torch.Tensor) -> torch.Tensor:
    """``(a0, b0, a1, b1, ...)`` → ``(a0·a1·…, b0·b1·…)`` (NT's ``make_2d``)."""
    if k.ndim == 2:
        return k
    half = k.ndim // 2
    perm = tuple(range(0, k.ndim, 2)) + tuple(range(1, k.ndim, 2))
    return k.permute(perm).reshape(math.prod(k.shape[0::2]), math.prod(k.shape[1::2])) if half else k.reshape(1, 1)


def zip_pairs(cov: torch.Tensor, shape: Sequence[int], n_lead: int) -> torch.Tensor:
    """``(*lead, n, n)`` → ``(*lead, d0, d0, d1, d1, ...)`` (NT's ``zip_axes``)."""
    lead = tuple(cov.shape[:n_lead])
    shape = tuple(shape)
    out = cov.reshape(lead + shape + shape)
    p = len(shape)
    perm = list(range(n_lead))
    for i in range(p):
        perm += [n_lead + i, n_lead + p + i]
    return out.permute(perm)


def symmetrize(c: torch.Tensor) -> torch.Tensor:
    return 0.5 * (c + c.transpose(-1, -2))


# ---------------------------------------------------------------------- get


def canonical_get(get: Get, allowed: Sequence[str], where: str) -> tuple[bool, tuple[str, ...]]:
    """``(get_is_str, names)``; ``None`` means ``("nngp", "ntk")``."""
    if get is None:
        return False, ("nngp", "ntk")
    is_str = isinstance(get, str)
    if not is_str and not (isinstance(get, (tuple, list)) and all(isinstance(g, str) for g in get)):
        raise TypeError(
            f"{where}: get must be a name ({', '.join(map(repr, allowed))}), a tuple of names or "
            f"None, got {get!r}."
        )
    names = (get,) if is_str else tuple(get)
    if not names:
        raise ValueError(f"{where}: get must be a name, a non-empty tuple of names or None, got ().")
    names = tuple(str(g).lower() for g in names)
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: the entries of get must be unique, got {names}.")
    for g in names:
        if g not in allowed:
            raise ValueError(f"{where}: get={g!r} is not supported; choose from {', '.join(map(repr, allowed))}.")
    return is_str, names


_GAUSSIANS: dict[tuple[str, ...], type] = {}


def named_output(is_str: bool, names: tuple[str, ...], out: dict[str, Any]) -> Any:
    """One value for a string ``get``; else the named tuple ``Gaussians(nngp=..., ...)``."""
    if is_str:
        return out[names[0]]
    cls = _GAUSSIANS.get(names)
    if cls is None:
        cls = _GAUSSIANS[names] = collections.namedtuple("Gaussians", names)  # type: ignore[misc]
    return cls(*(out[g] for g in names))


def get_attr(k: Any, g: str, name: str) -> Any:
    """``k`` itself if it is an array, else its ``nngp``/``ntk`` attribute (duck-typed)."""
    if _is_array(k):
        return k
    value = getattr(k, g, None)
    if value is None and _is_mapping(k):
        value = _item(k, g)
    if value is None:
        raise ValueError(
            f"{name} has no {g!r} kernel: pass a tensor, or a Kernel / named tuple with a {g!r} field "
            f"(e.g. kernel_fn(x1, x2, ('nngp', 'ntk'))), or a kernel store holding {g!r}."
        )
    return value


def _is_array(k: Any) -> bool:
    """A tensor, a numpy array, or a stored array (``.shape``, ``.dtype`` and slicing)."""
    if isinstance(k, (torch.Tensor, np.ndarray)):
        return True
    shape = getattr(k, "shape", None)
    return shape is not None and hasattr(k, "dtype") and hasattr(k, "__getitem__")


def _is_mapping(k: Any) -> bool:
    """A kernel store or zarr group: kernels by name, ``k["ntk"]``."""
    return not _is_array(k) and hasattr(k, "__getitem__") and not isinstance(k, (tuple, list, str))


def _item(k: Any, g: str) -> Any:
    try:
        return k[g]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None


def first_kernel(k: Any) -> Any:
    if _is_array(k):
        return k
    for g in ("nngp", "ntk"):
        v = getattr(k, g, None)
        if v is None and _is_mapping(k):
            v = _item(k, g)
        if v is not None:
            return v
    raise TypeError(
        f"expected a tensor, an array, a stored array or an object with 'nngp'/'ntk' fields "
        f"(a Kernel, a named tuple, a kernel store), got {type(k).__name__}."
    )


# ---------------------------------------------------------------------- factorizations


def regularize(k2: torch.Tensor, diag_reg: float, diag_reg_absolute_scale: bool) -> torch.Tensor:
    """``K + diag_reg · s · I`` with ``s = 1`` if absolute, else the mean of ``diag(K)``."""
    diag_reg = float(diag_reg)
    if not diag_reg >= 0 or not math.isfinite(diag_reg):
        raise ValueError(f"diag_reg must be >= 0 and finite, got {diag_reg}.")
    if diag_reg == 0:
        return k2
    scale = 1.0 if diag_reg_absolute_scale else torch.diagonal(k2).mean()
    out = k2.clone()
    out.diagonal().add_(diag_reg * scale)
    return out


class Cholesky:
    """The Cholesky factor ``L`` of a symmetric positive definite ``K`` (float64); with
    ``overwrite`` it replaces ``K`` in its memory."""

    def __init__(self, k2: torch.Tensor, what: str, overwrite: bool = False) -> None:
        check_finite(k2, what)
        # overwrite: factorize in place (k2 is a scratch copy), one N × N matrix less at the peak
        if overwrite:
            L, info = torch.linalg.cholesky_ex(k2, out=(k2, torch.empty((), dtype=torch.int32, device=k2.device)))
        else:
            L, info = torch.linalg.cholesky_ex(k2)
        if int(info) != 0:
            raise ValueError(
                f"{what} is not positive definite (Cholesky failed at pivot {int(info)}), so the "
                f"solve is ill-posed. Increase diag_reg (e.g. diag_reg=1e-4, relative to the mean "
                f"of the kernel diagonal) to regularize it."
            )
        self.L = L

    def half_solve(self, b: torch.Tensor) -> torch.Tensor:
        """``L⁻¹ b``."""
        return torch.linalg.solve_triangular(self.L, b, upper=False)

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        """``K⁻¹ b``."""
        return torch.cholesky_solve(b, self.L)


class Eigen:
    """``K = V diag(λ) Vᵀ`` of a symmetric positive semi-definite ``K``, computed once.

    Eigenvalues below ``−tol · λ_max`` mean ``K`` is not positive semi-definite beyond
    rounding (``tol`` = √eps of ``input_dtype``) and raise a ValueError naming diag_reg.
    """

    def __init__(self, k2: torch.Tensor, what: str, input_dtype: torch.dtype = WORK_DTYPE) -> None:
        check_finite(k2, what)
        self.evals, self.evecs = torch.linalg.eigh(k2)
        tol = math.sqrt(torch.finfo(input_dtype).eps) if input_dtype.is_floating_point else 1e-8
        lo, hi = float(self.evals[0]), float(self.evals.abs().max()) if self.evals.numel() else 0.0
        if lo < -tol * hi:
            raise ValueError(
                f"{what} is not positive semi-definite: its smallest eigenvalue is {lo:.3g} "
                f"(largest magnitude {hi:.3g}). Check the kernel, or increase diag_reg so that "
                f"diag_reg · mean(diag K) (or diag_reg itself if diag_reg_absolute_scale) exceeds {-lo:.3g}."
            )


def expm1_factor(evals: torch.Tensor, t: torch.Tensor, n: int) -> torch.Tensor:
    """``expm1(−max(λ, 0) t / n)``, shape ``(T, N)`` for ``t`` of shape ``(T, 1)``."""
    lam = evals.clamp_min(0)
    x = lam * t / n
    return torch.where(lam > 0, torch.expm1(-x), torch.zeros_like(x))


def inv_expm1_factor(evals: torch.Tensor, t: torch.Tensor, n: int) -> torch.Tensor:
    """``expm1(−λ t / n) / λ``, with its limit ``−t / n`` at ``λ ≤ 0`` (never NaN).

    neural-tangents divides by ``|λ|`` (NaN at ``λ = 0``); for positive definite kernels the
    two agree exactly.
    """
    lam = evals.clamp_min(0)
    positive = lam > 0
    safe = torch.where(positive, lam, torch.ones_like(lam))
    val = torch.expm1(-safe * t / n) / safe
    limit = torch.where(torch.isfinite(t), -t / n, torch.zeros_like(t)).expand_as(val)
    return torch.where(positive, val, limit)


def times(
    t: Any, learning_rate: float, device: torch.device, dtype: torch.dtype = WORK_DTYPE
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``(lr · t)`` flattened to ``(T, 1)`` in ``dtype``, and the original shape of ``t``."""
    if isinstance(t, (list, tuple)):
        try:
            t = np.asarray(t, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"t must be a number, an array of numbers or None (t = ∞), got {t!r}.") from None
    t = as_tensor(t, "t", device).to(dtype)
    if bool(torch.isnan(t).any()):
        raise ValueError("t contains NaN; pass training times >= 0, or None for t = ∞.")
    if t.numel() and float(t.min()) < 0:
        raise ValueError(
            f"t must be >= 0 (training time, in units of learning_rate), got {float(t.min()):g}; "
            f"t=0 is the prior (initialization) and t=None is the end of training (t = ∞)."
        )
    t = t * float(learning_rate)
    return t.reshape(-1, 1), tuple(t.shape)


# ---------------------------------------------------------------------- argument checks


def check_number(value: Any, name: str, where: str, *, positive: bool = False, allow_none: bool = False) -> Any:
    """A finite real number ``>= 0`` (``> 0`` if ``positive``), else a ValueError/TypeError
    naming ``name``; returns it as a float."""
    if value is None and allow_none:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{where}: {name} must be a real number, got {type(value).__name__} {value!r}.")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{where}: {name} must be {bound} and finite, got {value!r}.")
    return v


def check_bool(value: Any, name: str, where: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where}: {name} must be True or False, got {type(value).__name__} {value!r}.")
    return bool(value)


def check_targets(y: torch.Tensor, where: str) -> None:
    """``y_train`` must be non-empty, at least 1-D and finite."""
    if y.ndim == 0 or y.numel() == 0:
        raise ValueError(
            f"{where}: y_train must have at least one example and one output, e.g. shape (N, C), "
            f"got shape {tuple(y.shape)}."
        )
    if y.is_floating_point() and not bool(torch.isfinite(y).all()):
        bad = int((~torch.isfinite(y)).sum())
        raise ValueError(f"{where}: y_train contains {bad} NaN or infinite entries; remove or impute them.")


def broadcast_outputs(f: torch.Tensor, shape: tuple[int, ...], name: str, where: str) -> torch.Tensor:
    """``f`` broadcast to ``shape`` (the outputs it stands for), or a ValueError naming it."""
    if not bool(torch.isfinite(f).all()):
        raise ValueError(f"{where}: {name} contains NaN or infinite entries.")
    try:
        return torch.broadcast_to(f, shape)
    except RuntimeError:
        raise ValueError(
            f"{where}: {name} has shape {tuple(f.shape)}, which does not broadcast to the outputs' "
            f"shape {shape}; pass a scalar or an array of that shape."
        ) from None
