r"""`NTKRegressor` and `NTKClassifier`: infinitely wide networks as scikit-learn estimators.

Both predict with the infinite ensemble of infinitely wide networks trained by gradient
flow on the MSE loss (`tangents.predict.gradient_descent_mse_ensemble`): with the NTK Θ
(``kernel="ntk"``) the mean after training time ``t``,
:math:`\Theta_{xX}\Theta^{-1}(I - e^{-\eta t\Theta/(NC)})Y`, which at ``t=None`` (∞) is
kernel regression :math:`\Theta_{xX}(\Theta + \lambda I)^{-1}Y`; with the NNGP 𝒦
(``kernel="nngp"``) the Bayesian posterior mean of the network's Gaussian process
(at ``t=None``). The train-train kernel and its factorisation are computed once, in
``fit``; ``predict`` computes the test-train kernel.
"""

from __future__ import annotations

import collections
import math
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from .. import stax
from ..predict import gradient_descent_mse_ensemble
from ..stax import Layer
from ._common import (
    ACTIVATIONS,
    as_inputs,
    check_device,
    check_input_shape,
    check_kernel_shape,
    check_train_memory,
    prediction_block_rows,
)
from ._spectral import CALIBRATION_POINTS, evidence_diag_reg, fit_temperature, loo_outputs

try:
    from sklearn.utils.validation import validate_data
except ImportError:  # scikit-learn < 1.6

    def validate_data(estimator: Any, X: Any = "no_validation", y: Any = "no_validation", **kwargs: Any) -> Any:
        return estimator._validate_data(X, y, **kwargs)


__all__ = ["NTKClassifier", "NTKRegressor"]

#: Test points per block when covariances are computed (``return_std``): each block's
#: ``(B, B)`` covariance is formed, so memory stays O(B²) whatever the test set size.
_STD_BLOCK = 512


#: The solvers of `tangents.predict` (its ``solver=``).
SOLVERS = ("auto", "cholesky", "cg")


def solver_options(where: str, solver: str) -> dict[str, Any]:
    """``solver=`` for `gradient_descent_mse_ensemble`, checked at ``fit`` with the estimator's name.

    The one place where the estimators hand their ``solver`` to `tangents.predict`.
    """
    if not isinstance(solver, str):
        raise TypeError(f"{where}: solver must be a string such as 'auto' or 'cholesky', got {type(solver).__name__}.")
    if solver not in SOLVERS:
        raise ValueError(
            f"{where}: solver={solver!r} is not one of {', '.join(map(repr, SOLVERS))}; 'auto' factorizes when the "
            f"training kernel fits in memory and uses conjugate gradients otherwise."
        )
    return {"solver": solver}


class _TrainKernels:
    """``kernel_fn`` that computes the train-train kernels once and keeps them.

    Called as ``kernel_fn(x_train, None, get)`` (by `gradient_descent_mse_ensemble`) it
    returns the kept kernels; any other call is the network's ``kernel_fn``.
    """

    def __init__(self, network: Layer, x_train: torch.Tensor, names: tuple[str, ...]) -> None:
        self.network = network
        self.x_train = x_train
        self.names = names
        self.kernels: dict[str, torch.Tensor] = {}

    def train(self, name: str) -> torch.Tensor:
        if name not in self.kernels:
            with torch.no_grad():  # estimators never differentiate (tensor hyperparameters are fine)
                out = self.network.kernel_fn(self.x_train, None, self.names)
            n = self.x_train.shape[0]
            for g in self.names:
                check_kernel_shape("the network", getattr(out, g), n, n)
                self.kernels[g] = getattr(out, g)
        return self.kernels[name]

    def __call__(self, x1: Any, x2: Any = None, get: Any = None, **kwargs: Any) -> Any:
        if x1 is self.x_train and x2 is None and not kwargs and get is not None:
            if isinstance(get, str):
                return self.train(get)
            names = tuple(get)
            return collections.namedtuple("AnalyticKernel", names)(*(self.train(g) for g in names))
        with torch.no_grad():
            return self.network.kernel_fn(x1, x2, get, **kwargs)


class _InfiniteWidthEstimator(BaseEstimator):
    """Parameters, validation, fitting and mean predictions shared by both estimators."""

    def __init__(
        self,
        kernel: str = "ntk",
        network: Layer | None = None,
        depth: int = 2,
        width: int = 512,
        activation: str = "relu",
        W_std: float = 1.5,
        b_std: float | None = 0.5,
        parameterization: str = "ntk",
        input_shape: tuple[int, ...] | None = None,
        t: float | None = None,
        learning_rate: float = 1.0,
        diag_reg: float | str = 1e-4,
        solver: str = "auto",
        device: str = "cpu",
    ) -> None:
        self.kernel = kernel
        self.network = network
        self.depth = depth
        self.width = width
        self.activation = activation
        self.W_std = W_std
        self.b_std = b_std
        self.parameterization = parameterization
        self.input_shape = input_shape
        self.t = t
        self.learning_rate = learning_rate
        self.diag_reg = diag_reg
        self.solver = solver
        self.device = device

    # ------------------------------------------------------------------ validation

    def _check_params(self) -> dict[str, Any]:
        """Validates the parameters (at ``fit``, as scikit-learn does); returns the solver options."""
        name = type(self).__name__
        if self.kernel not in ("ntk", "nngp"):
            raise ValueError(f"{name}: kernel must be 'ntk' or 'nngp', got {self.kernel!r}.")
        if self.network is not None and not isinstance(self.network, Layer):
            raise TypeError(
                f"{name}: network must be None or a tangents.stax layer such as stax.serial(stax.Dense(512), "
                f"stax.Relu(), stax.Dense(1)), got {type(self.network).__name__}."
            )
        if self.network is None:
            _check_int(name, "depth", self.depth, 0)
            _check_int(name, "width", self.width, 1)
            if not (isinstance(self.activation, Layer) or self.activation in ACTIVATIONS):
                raise ValueError(
                    f"{name}: activation must be one of {', '.join(map(repr, ACTIVATIONS))} or a stax "
                    f"nonlinearity such as stax.Erf(), got {self.activation!r}."
                )
            _check_real(name, "W_std", self.W_std)
            if self.b_std is not None:
                _check_real(name, "b_std", self.b_std)
            if self.parameterization not in ("ntk", "standard"):
                raise ValueError(f"{name}: parameterization must be 'ntk' or 'standard', got {self.parameterization!r}.")
        check_input_shape(name, self.input_shape)
        if self.t is not None:
            _check_real(name, "t", self.t, minimum=0.0)
        _check_real(name, "learning_rate", self.learning_rate, minimum=0.0, strict=True)
        if not (isinstance(self.diag_reg, str) and self.diag_reg == "auto"):
            _check_real(name, "diag_reg", self.diag_reg, minimum=0.0)
        check_device(name, self.device)
        return solver_options(name, self.solver)

    def _network(self) -> Layer:
        """``network``, or ``[Dense(width, W_std, b_std), activation] × depth, Dense(1, W_std, b_std)``."""
        if self.network is not None:
            return self.network
        layers: list[Layer] = []
        for _ in range(self.depth):
            layers.append(stax.Dense(self.width, self.W_std, self.b_std, parameterization=self.parameterization))
            act = self.activation
            layers.append(ACTIVATIONS[act]() if isinstance(act, str) else act)
        layers.append(stax.Dense(1, self.W_std, self.b_std, parameterization=self.parameterization))
        return stax.serial(*layers)

    # ------------------------------------------------------------------ fit and predict

    def _fit(self, X: np.ndarray, targets: np.ndarray) -> None:
        """Kernels and factorisations for inputs ``X`` ``(N, d)`` and targets ``(N, C)``."""
        options = self._check_params()
        self.network_ = self._network()
        self.X_train_ = X
        self._targets = np.asarray(targets, dtype=np.float64)
        self._torch_state()
        if isinstance(self.diag_reg, str):  # "auto": the evidence's choice
            k = self._kernels.train(self.kernel)
            self.diag_reg_ = evidence_diag_reg(k, torch.as_tensor(self._targets, device=k.device))
        else:
            self.diag_reg_ = float(self.diag_reg)
        self._predictor(options)
        try:  # factorise now: a kernel that cannot be solved fails in fit, not in predict
            self._predict_fn(t=self.t, x_test=self._x_train[:1], get=self.kernel)
        except ValueError as error:
            raise ValueError(f"{type(self).__name__}.fit: {error}") from error

    def _torch_state(self) -> None:
        """The training inputs as a tensor, and their kernels (computed on first use)."""
        name = type(self).__name__
        device = check_device(name, self.device)
        self._x_train = as_inputs(name, self.X_train_, check_input_shape(name, self.input_shape), device)
        names = ("nngp", "ntk") if self.kernel == "ntk" else ("nngp",)
        check_train_memory(f"{name}.fit", self._x_train.shape[0], len(names), device)
        self._kernels = _TrainKernels(self.network_, self._x_train, names)

    def _predictor(self, options: dict[str, Any] | None = None) -> None:
        """`gradient_descent_mse_ensemble` on the training data (factorising on first use)."""
        options = solver_options(type(self).__name__, self.solver) if options is None else options
        y = torch.tensor(self._targets, dtype=torch.float64, device=self._x_train.device)
        self._predict_fn = gradient_descent_mse_ensemble(
            self._kernels, self._x_train, y, learning_rate=self.learning_rate, diag_reg=self.diag_reg_, **options
        )

    def _inputs(self, X: Any) -> torch.Tensor:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        name = type(self).__name__
        return as_inputs(name, X, check_input_shape(name, self.input_shape), check_device(name, self.device))

    def _mean(self, x: torch.Tensor) -> np.ndarray:
        """The ensemble's mean outputs ``(N_test, C)``."""
        if x.shape[0] == 0:
            return np.empty((0, self._targets.shape[1]))
        rows = prediction_block_rows(self._x_train.shape[0])  # test-train kernels in blocks: bounded memory
        blocks = [x[i : i + rows] for i in range(0, x.shape[0], rows)]
        return np.concatenate([self._predict_fn(t=self.t, x_test=b, get=self.kernel).cpu().numpy() for b in blocks])

    def _mean_and_cov(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``(N_test, C)`` and covariance ``(N_test, N_test)`` of the outputs."""
        out = self._predict_fn(t=self.t, x_test=x, get=self.kernel, compute_cov=True)
        return out.mean.cpu().numpy(), out.covariance.cpu().numpy()

    def _mean_and_variance(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``(N_test, C)`` and variance ``(N_test,)``, in blocks of test points."""
        means, variances = [np.empty((0, self._targets.shape[1]))], [np.empty(0)]
        rows = min(_STD_BLOCK, prediction_block_rows(self._x_train.shape[0]))
        for start in range(0, x.shape[0], rows):
            mean, cov = self._mean_and_cov(x[start : start + rows])
            means.append(mean)
            variances.append(np.clip(np.diagonal(cov), 0.0, None))  # ≥ 0 up to rounding
        return np.concatenate(means), np.concatenate(variances)

    # ------------------------------------------------------------------ pickling

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # a copy: the estimator keeps its own
        for key in ("_predict_fn", "_kernels", "_x_train"):  # closures and torch state: rebuilt
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if hasattr(self, "X_train_"):
            self._torch_state()
            self._predictor()

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = False
        return tags


class NTKRegressor(RegressorMixin, _InfiniteWidthEstimator):
    r"""Regression with an infinitely wide network: the NTK ensemble or the NNGP posterior.

    ``fit(X, y)`` computes the train-train kernel and factorises it; ``predict(X)`` is the
    mean of the infinite ensemble of infinitely wide networks trained for time ``t`` by
    gradient flow on the MSE loss (``kernel="ntk"``; ``t=None``: to convergence, which is
    kernel regression with the NTK), or the posterior mean of the network's Gaussian
    process (``kernel="nngp"``). ``predict(X, return_std=True)`` adds the standard
    deviation of that Gaussian: for ``"nngp"`` the GP posterior, for ``"ntk"`` the spread of
    the trained ensemble (NT's ``gradient_descent_mse_ensemble(..., compute_cov=True)``;
    at ``t=None`` the NTK posterior of `tangents.predict.gp_inference`). Neither includes
    observation noise.

    Args:
        kernel: ``"ntk"`` (default) or ``"nngp"``.
        network: any `tangents.stax` network with one output per example; ``None`` builds
            ``[Dense(width, W_std, b_std), activation] × depth, Dense(1, W_std, b_std)``.
        depth: hidden layers of the built network (0: a linear model).
        width: width of the built network's hidden layers; the kernels do not depend on it
            except the NTK in the standard parameterization.
        activation: ``"relu"``, ``"erf"``, ``"gelu"``, ``"abs"``, ``"leaky_relu"`` (slope
            0.1), ``"sigmoid_like"``, or a stax nonlinearity.
        W_std: weight standard deviation of the built network.
        b_std: bias standard deviation (``None``: no biases).
        parameterization: ``"ntk"`` or ``"standard"``.
        input_shape: the shape of one example when rows of ``X`` are flattened (images:
            ``(C, H, W)``, channels first); ``None`` feeds rows as they are.
        t: training time in units of ``learning_rate`` (NT's convention, dynamics scaled by
            ``1/y.size``); ``None`` for ∞.
        learning_rate: the learning rate η.
        diag_reg: ``K + diag_reg · mean(diag K) · I``: the regulariser (and the NNGP's
            noise), or ``"auto"`` (the default here): the value in [1e-6, 100] that
            maximises the marginal likelihood of the training targets under the GP with
            the kernel (the NTK-GP for ``"ntk"``), its amplitude fitted too.
        solver: how the train-train system is solved, passed to `tangents.predict`
            (``"auto"``).
        device: where kernels are computed (``"cpu"``, ``"cuda"``).
        normalize_y: standardise the targets with their training mean and standard
            deviation before fitting (and undo it on predictions): the networks' prior
            has mean 0 and unit-scale outputs.

    Attributes:
        network_: the network used.
        diag_reg_: the ``diag_reg`` used (the evidence's choice for ``"auto"``).
        X_train_: the training inputs ``(N, n_features)``.
        n_features_in_: the number of features.

    Example:
        >>> from sklearn.pipeline import make_pipeline
        >>> from sklearn.preprocessing import StandardScaler
        >>> model = make_pipeline(StandardScaler(), NTKRegressor(diag_reg=1e-2)).fit(X, y)
        >>> mean, std = model.predict(X_test, return_std=True)
    """

    def __init__(
        self,
        kernel: str = "ntk",
        network: Layer | None = None,
        depth: int = 2,
        width: int = 512,
        activation: str = "relu",
        W_std: float = 1.5,
        b_std: float | None = 0.5,
        parameterization: str = "ntk",
        input_shape: tuple[int, ...] | None = None,
        t: float | None = None,
        learning_rate: float = 1.0,
        diag_reg: float | str = "auto",
        solver: str = "auto",
        device: str = "cpu",
        normalize_y: bool = True,
    ) -> None:
        super().__init__(
            kernel, network, depth, width, activation, W_std, b_std, parameterization, input_shape, t,
            learning_rate, diag_reg, solver, device,
        )
        self.normalize_y = normalize_y

    def fit(self, X: Any, y: Any) -> NTKRegressor:
        """Computes and factorises the train-train kernel.

        Args:
            X: ``(N, n_features)``.
            y: ``(N,)`` or ``(N, n_targets)``.

        Returns:
            ``self``.
        """
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        self._y_ndim = y.ndim
        targets = y.reshape(len(y), -1)
        if self.normalize_y:
            self._y_mean = targets.mean(axis=0)
            std = targets.std(axis=0)
            self._y_scale = np.where(std > 0, std, 1.0)
        else:
            self._y_mean, self._y_scale = np.zeros(targets.shape[1]), np.ones(targets.shape[1])
        self._fit(X, (targets - self._y_mean) / self._y_scale)
        return self

    def predict(self, X: Any, return_std: bool = False, return_cov: bool = False) -> Any:
        """The ensemble's (or posterior's) mean, and optionally its standard deviation or covariance.

        Args:
            X: ``(N_test, n_features)``.
            return_std: also return the standard deviation, ``(N_test,)`` (or
                ``(N_test, n_targets)`` for 2-D ``y``).
            return_cov: also return the covariance, ``(N_test, N_test)`` (or
                ``(N_test, N_test, n_targets)``).

        Returns:
            ``mean``, or ``(mean, std)``, or ``(mean, cov)``; ``mean`` has ``y``'s shape per row.
        """
        if return_std and return_cov:
            raise ValueError("NTKRegressor.predict: at most one of return_std and return_cov can be True.")
        x = self._inputs(X)
        if return_cov:
            mean, cov = self._mean_and_cov(x)
            extra = cov[:, :, None] * self._y_scale**2
        elif return_std:
            mean, variance = self._mean_and_variance(x)
            extra = np.sqrt(variance)[:, None] * self._y_scale
        else:
            mean, extra = self._mean(x), None
        mean = mean * self._y_scale + self._y_mean
        if self._y_ndim == 1:
            mean = mean[:, 0]
            extra = None if extra is None else extra[..., 0]
        return mean if extra is None else (mean, extra)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


class NTKClassifier(ClassifierMixin, _InfiniteWidthEstimator):
    r"""Classification with an infinitely wide network, by regression on one-hot targets.

    Targets are the one-hot vectors centred to :math:`e_c - 1/C`; the outputs f(x) are the
    infinite NTK ensemble's mean after training time ``t`` (``kernel="ntk"``) or the NNGP
    posterior mean (``kernel="nngp"``), as in `NTKRegressor`, and ``predict`` takes the
    class with the largest output.

    ``predict_proba(X)`` is ``softmax(f(x) / temperature_)``. The temperature is fitted in
    ``fit`` to minimise the log loss of the training points' leave-one-out outputs (the
    outputs each point gets from the model fitted without it, in closed form: exact at
    ``t=None``, the generalised approximation at finite ``t``; from at most 2,000 training
    points). The probabilities rank classes as ``decision_function`` does; they estimate
    how often a class is right, not a posterior over the network's functions.

    Args:
        kernel, network, depth, width, activation, W_std, b_std, parameterization,
        input_shape, t, learning_rate, solver, device: as in `NTKRegressor`.
        diag_reg: as in `NTKRegressor`, but 1e-4 by default (class labels are not noisy
            measurements; ``"auto"`` is available).

    Attributes:
        classes_: the class labels (any type), sorted.
        temperature_: the softmax temperature of ``predict_proba``.
        diag_reg_: the ``diag_reg`` used.
        network_: the network used.
        X_train_: the training inputs.
        n_features_in_: the number of features.

    Example:
        >>> from sklearn.model_selection import cross_val_score
        >>> cross_val_score(NTKClassifier(kernel="nngp"), X, y, cv=5).mean()
    """

    def fit(self, X: Any, y: Any) -> NTKClassifier:
        """Computes and factorises the train-train kernel and fits ``temperature_``.

        Args:
            X: ``(N, n_features)``.
            y: ``(N,)`` labels of any type (at least two classes).

        Returns:
            ``self``.
        """
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, labels = np.unique(y, return_inverse=True)
        n_classes = len(self.classes_)
        if n_classes < 2:
            raise ValueError(
                f"NTKClassifier.fit: y has 1 class ({_plain(self.classes_[0])!r}); a classifier needs at least 2 classes."
            )
        targets = np.eye(n_classes)[labels] - 1.0 / n_classes
        self._fit(X, targets)
        self.temperature_ = self._calibrate(labels)
        return self

    def _calibrate(self, labels: np.ndarray) -> float:
        n = len(labels)
        rows = np.arange(n)
        if n > CALIBRATION_POINTS:
            rows = np.sort(np.random.default_rng(0).permutation(n)[:CALIBRATION_POINTS])
        index = torch.as_tensor(rows, device=self._x_train.device)
        k = self._kernels.train(self.kernel)[index][:, index]
        y = torch.as_tensor(self._targets[rows], device=k.device)
        tau = None if self.t is None else self.learning_rate * self.t / y.numel()
        outputs = loo_outputs(k, y, self.diag_reg_, tau).cpu().numpy()
        return fit_temperature(outputs, labels[rows])

    def decision_function(self, X: Any) -> np.ndarray:
        """The outputs f(x), ``(N_test, n_classes)``; for two classes ``f₁ − f₀``, ``(N_test,)``."""
        f = self._mean(self._inputs(X))
        return f[:, 1] - f[:, 0] if len(self.classes_) == 2 else f

    def predict(self, X: Any) -> np.ndarray:
        """The class with the largest output, ``(N_test,)``."""
        f = self._mean(self._inputs(X))
        return self.classes_[np.argmax(f, axis=1)]

    def predict_proba(self, X: Any) -> np.ndarray:
        """``softmax(f(x) / temperature_)``, ``(N_test, n_classes)`` (see the class docstring)."""
        return np.exp(self.predict_log_proba(X))

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """``log_softmax(f(x) / temperature_)``, ``(N_test, n_classes)``."""
        z = self._mean(self._inputs(X)) / self.temperature_
        top = z.max(axis=1, keepdims=True) if len(z) else z
        return z - top - np.log(np.exp(z - top).sum(axis=1, keepdims=True))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = False
        return tags


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (for messages)."""
    return value.item() if isinstance(value, np.generic) else value


def _check_int(where: str, name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{where}: {name} must be an integer >= {minimum}, got {value!r}.")


def _check_real(where: str, name: str, value: Any, minimum: float | None = None, strict: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    ok = ok and math.isfinite(value) and (minimum is None or (value > minimum if strict else value >= minimum))
    if not ok:
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
        raise ValueError(f"{where}: {name} must be a finite number{bound}, got {value!r}.")
