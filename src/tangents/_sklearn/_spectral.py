r"""What one eigendecomposition of the train-train kernel gives in closed form.

* `evidence_diag_reg`: the regulariser ``diag_reg="auto"`` of the estimators, the one that
  maximises the marginal likelihood of the targets;
* `loo_outputs` and `fit_temperature`: the leave-one-out outputs of kernel regression,
  and the softmax temperature they calibrate.

**Evidence.** With :math:`K = V\,\mathrm{diag}(\mu)\,V^\top` and :math:`Z = V^\top Y`
``(N, C)``, the GP :math:`Y_{:c} \sim \mathcal N(0, a(K + rmI))` (m = mean diag K, a an
amplitude, r the relative noise ``diag_reg``) has, with a at its maximum
:math:`a^* = \sum_{ic} Z_{ic}^2 / (\mu_i + rm) / (NC)`,

.. math::
    -\log p(Y) = \tfrac{NC}{2}\log a^* + \tfrac{C}{2}\sum_i \log(\mu_i + rm)
                 + \tfrac{NC}{2}(1 + \log 2\pi),

the same number `tangents.predict.log_marginal_likelihood` gives for the kernel
:math:`a^*K` and ``diag_reg=r``. Predictions depend on r only (not on a), so r is chosen
by a bounded search on log r, one O(N) evaluation per step after the eigendecomposition.

**Leave-one-out.** `NTKClassifier.predict_proba` is ``softmax(f(x) / T)``, with f the ensemble's mean outputs
and T chosen at ``fit`` to minimise the log loss of the *leave-one-out* outputs of the
training points (the outputs each point would get from a model fitted without it), which
kernel regression gives in closed form. With :math:`\tilde K = K + \lambda I = V\,
\mathrm{diag}(\mu)\,V^\top` (λ = ``diag_reg`` · mean diag K), the training-point outputs
are :math:`HY` for the smoother

.. math::
    H = V\,\mathrm{diag}(g(\mu))\,V^\top,\qquad
    g(\mu) = (1 - \lambda/\mu)(1 - e^{-\tau\mu}),\quad \tau = \eta t / (N C),

(:math:`e^{-\tau\mu} = 0` at t = ∞), and the leave-one-out outputs are
:math:`F_i = Y_i - [(I - H)Y]_i / [I - H]_{ii}`. At t = ∞ this is exact,
:math:`F_i = Y_i - [\tilde K^{-1}Y]_i / [\tilde K^{-1}]_{ii}` (Rasmussen & Williams 2006,
eq. 5.12), computed from one Cholesky factor of :math:`\tilde K`; at finite t it is the
usual generalised approximation for linear smoothers, from the eigendecomposition.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize_scalar

__all__ = ["AUTO_DIAG_REG_RANGE", "CALIBRATION_POINTS", "evidence_diag_reg", "fit_temperature", "loo_outputs"]

#: The range ``diag_reg="auto"`` searches (relative to the mean of the kernel's diagonal).
AUTO_DIAG_REG_RANGE = (1e-6, 1e2)

#: At most this many training points (a fixed random subset) calibrate the temperature:
#: one eigendecomposition of their kernel, ~1 s, whatever the training set size.
CALIBRATION_POINTS = 2000


def evidence_diag_reg(k: torch.Tensor, y: torch.Tensor) -> float:
    """The relative ``diag_reg`` in `AUTO_DIAG_REG_RANGE` maximising the evidence of ``y``.

    Args:
        k: train-train kernel ``(N, N)``.
        y: targets ``(N, C)``.

    Returns:
        r, the noise variance relative to the mean of ``diag k`` (module docstring).
    """
    k = k.to(torch.float64)
    mu, v = torch.linalg.eigh(k)
    mu = mu.clamp_min(0).cpu().numpy()
    z2 = ((v.T @ y.to(k)) ** 2).sum(dim=1).cpu().numpy()
    n, c = y.shape
    mean = float(torch.diagonal(k).mean())

    def negative_log_evidence(log_r: float) -> float:
        noisy = mu + math.exp(log_r) * mean
        amplitude = max(float((z2 / noisy).sum()) / (n * c), 1e-300)  # 0 for all-zero targets
        return 0.5 * n * c * math.log(amplitude) + 0.5 * c * float(np.log(noisy).sum())

    low, high = (math.log(b) for b in AUTO_DIAG_REG_RANGE)
    result = minimize_scalar(negative_log_evidence, bounds=(low, high), method="bounded", options={"xatol": 1e-3})
    return math.exp(float(result.x))


def loo_outputs(k: torch.Tensor, y: torch.Tensor, diag_reg: float, tau: float | None) -> torch.Tensor:
    """Leave-one-out outputs ``(N, C)`` of kernel regression (module docstring).

    Args:
        k: train-train kernel ``(N, N)`` (float64).
        y: targets ``(N, C)``.
        diag_reg: the predictor's relative regulariser (λ = diag_reg · mean diag k).
        tau: η t / (N C), or ``None`` for t = ∞.
    """
    k = k.to(torch.float64)
    y = y.to(k)
    lam = diag_reg * float(torch.diagonal(k).mean())
    noisy = k + lam * torch.eye(k.shape[0], dtype=k.dtype, device=k.device)
    tiny = torch.finfo(k.dtype).tiny
    if tau is None:  # (I - H) / λ = K̃⁻¹: the λ cancels in the ratio; one Cholesky (~1/10 of an eigh)
        factor, info = torch.linalg.cholesky_ex(noisy)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(factor)
            return y - (inverse @ y) / torch.diagonal(inverse).clamp_min(tiny)[:, None]
    mu, v = torch.linalg.eigh(noisy)  # finite t, or K̃ singular to rounding (λ = 0)
    mu = mu.clamp_min(tiny)
    if tau is None:
        weight = 1 / mu
    else:
        weight = lam / mu + (1 - lam / mu) * torch.exp(-tau * mu)
    residual = v @ (weight[:, None] * (v.T @ y))
    denominator = (v * v) @ weight
    return y - residual / denominator.clamp_min(tiny)[:, None]


def fit_temperature(outputs: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the mean log loss of ``softmax(outputs / T)`` at ``labels``.

    The loss is convex in 1/T, so a bounded scalar search on log(1/T) finds its minimum
    (within T ∈ [e⁻⁷, e⁵]).

    Args:
        outputs: ``(N, C)`` scores.
        labels: ``(N,)`` class indices.
    """
    picked = outputs[np.arange(len(labels)), labels]

    def loss(log_beta: float) -> float:
        z = math.exp(log_beta) * outputs
        top = z.max(axis=1)
        log_norm = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
        return float(np.mean(log_norm - math.exp(log_beta) * picked))

    result = minimize_scalar(loss, bounds=(-5.0, 7.0), method="bounded", options={"xatol": 1e-4})
    return math.exp(-float(result.x))
