"""Monte Carlo: the kernels of torch-initialised models converge to their lift's kernels.

For a model family at widths n = 32, 128, 512 (every hidden width n, and n/4 outputs), S
models are initialised by torch's own default initialisation (one seed each). Their
empirical NNGP ``f(x1) f(x2)ᵀ / outputs`` and empirical NTK (``tangents.empirical_ntk_fn``,
independent of the lift) are compared with ``from_torch(model_n, x).kernel_fn`` in the
standard parameterization (the model as torch initialises it).

Two claims, each with its tolerance's reason:

* **No systematic difference.** At every width the mean over the S models is within 3 of
  its own standard errors (estimated from the samples) of the lifted kernel, plus 2/n for
  the finite-width bias O(1/n) (relative errors ‖K̄ − K‖/‖K‖; standard error
  ‖std‖/√S/‖K‖). Measured: within 1.3 standard errors at every width.
* **Convergence like 1/√n.** The root-mean-square deviation of one model's kernel from the
  lifted one, d_n = √mean_s(‖K_s − K‖²)/‖K‖, shrinks like n^−½: the fitted slope of
  log d_n against log n must lie in [−0.75, −0.25] (a kernel that did not converge would
  give 0, an O(1/n) one −1), and from n = 128 to 512 d_n must fall by a factor in
  [1.5, 2.7] (√4 = 2). Measured: slopes −0.38 (NNGP) and −0.33 (NTK), falls 1.75 and 1.81.
  The slopes are shallower than −½ at small widths for known reasons: in the standard
  parameterization the NTK is n Σ (the readout's weights) plus O(1) terms of the earlier
  layers, which weigh 1/n relative to it and shrink the relative deviation at small n; the
  NNGP's readout noise over n/4 outputs is a Wishart deviation, Gaussian only for many
  outputs. (The hidden features' own kernel h hᵀ/n deviates as 2.39/√n at every n from 32
  to 2048.)

Why 32 input features: the lifted kernel is that of Gaussian weights with the variances
read from the model. Every layer whose fan-in grows with the width has Gaussian
pre-activations in the limit (central limit theorem), but the first layer's fan-in is the
data's dimension: torch's uniform weights then give non-Gaussian first pre-activations,
which shift the kernel after the first nonlinearity by O(1/d). Measured for a ReLU MLP at
width 512 over 400 models: 2.2 % of the NNGP with d = 4 inputs (3.5 standard errors),
within the 1.1 % noise with d = 64 or with Gaussian first-layer weights.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import tangents
from tangents.lift import from_torch

WIDTHS = (32, 128, 512)


class Mlp(nn.Module):
    """Linear -> LayerNorm (trainable γ, β) -> ReLU -> Linear -> GELU -> Linear, n/4 outputs."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, width)
        self.norm = nn.LayerNorm(width)
        self.fc2 = nn.Linear(width, width)
        self.out = nn.Linear(width, width // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.fc2(torch.relu(self.norm(self.fc1(x))))))


def _statistics(samples: list[torch.Tensor], exact: torch.Tensor) -> dict[str, float]:
    """Relative error of the mean, its standard error, and the RMS deviation of one sample."""
    stacked = torch.stack(samples)
    scale = exact.norm()
    return {
        "error": float((stacked.mean(0) - exact).norm() / scale),
        "se": float(stacked.std(0).norm() / math.sqrt(len(samples)) / scale),
        "rms": float(((stacked - exact) ** 2).sum((1, 2)).mean().sqrt() / scale),
    }


def monte_carlo(family, input_shape: tuple[int, ...], nngp_seeds: int, ntk_seeds: int) -> dict[str, list[dict]]:
    """Per width, `_statistics` of the NNGP and NTK of torch-initialised models against the lift."""
    x = torch.randn(8, *input_shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x_ntk = x[:6]  # its samples cost a backward pass per output and example
    report: dict[str, list[dict]] = {"nngp": [], "ntk": []}
    for width in WIDTHS:
        torch.manual_seed(10_000 + width)
        template = family(width)
        lifted = from_torch(template, x[:2])  # the kernels are per output: any output
        exact_nngp = lifted.kernel_fn(x, None, "nngp")
        exact_ntk = lifted.kernel_fn(x_ntk, None, "ntk")
        # the NTK concentrates whatever the number of outputs: that of the first two (cheaper)
        ntk_fn = tangents.empirical_ntk_fn(
            lambda params, inputs: functional_call(template, params, (inputs,))[:, :2], vmap_axes=0
        )
        nngps, ntks = [], []
        for seed in range(max(nngp_seeds, ntk_seeds)):
            torch.manual_seed(seed)
            model = family(width)
            if seed < nngp_seeds:  # a forward pass: cheap, so many samples
                with torch.no_grad():
                    f = model(x)
                nngps.append(f @ f.T / f.shape[1])
            if seed < ntk_seeds:
                ntks.append(ntk_fn(x_ntk, None, {k: v.detach() for k, v in model.named_parameters()}))
        report["nngp"].append(_statistics(nngps, exact_nngp))
        report["ntk"].append(_statistics(ntks, exact_ntk))
    return report


def check_convergence(report: dict[str, list[dict]]) -> None:
    for name, rows in report.items():
        for width, row in zip(WIDTHS, rows):
            assert row["error"] <= 3 * row["se"] + 2 / width, (name, width, rows)
        rms = [row["rms"] for row in rows]
        slope = float(np.polyfit(np.log(WIDTHS), np.log(rms), 1)[0])
        assert -0.75 <= slope <= -0.25, (name, slope, rms)
        assert 1.5 <= rms[-2] / rms[-1] <= 2.7, (name, rms)


@pytest.fixture
def one_thread():
    """Tiny forward passes: torch's spinning thread pool costs more than it saves (8x here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_mlp_kernels_converge_like_one_over_sqrt_width(one_thread):
    check_convergence(monte_carlo(Mlp, (32,), nngp_seeds=300, ntk_seeds=30))
