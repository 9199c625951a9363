"""Monte Carlo convergence of every spatial layer's kernel (the spatial `test_monte_carlo.py`).

The average over freshly initialised finite networks of their empirical NNGP and NTK must
approach ``kernel_fn``: the same check as `test_monte_carlo._check_converges` (reused, not
copied): |MC mean − analytic| <= Z · SE + C_BIAS · (depth − 1) / width · scale per entry,
with the standard error SE estimated from the 64 samples themselves (Z = 5), and the
tolerance required to stay below 35% of the kernel's scale. The spatial networks of
`networks_spatial` have widths 128–256 and 3–60 locations; one hidden layer before a
linear readout (pooling, Flatten, global pooling are linear) is exact at any width (hidden
channels are i.i.d. and the readout independent), so only the depth-2 ones get the
finite-width allowance, whose constant C_BIAS = 4 `test_monte_carlo` justifies.

The default run takes the networks whose 2 x 64 samples are cheap (< ~1 s); the others,
mostly NTK Jacobians of wide ConvLocal / 3-D / transposed convolutions, are marked slow.
"""

from __future__ import annotations

import pytest

from networks import Net
from networks_spatial import FINITE_SPATIAL_NETWORKS
from test_monte_carlo import N_SAMPLES, NNGP_OUT, NTK_OUT, _check_converges

#: Networks whose Monte Carlo estimates take more than ~1 s each on one core.
SLOW = {
    "conv1d_same_valid_strided_flatten",
    "conv2d_circular_strided_flatten",
    "conv2d_circular_gap",
    "conv2d_standard_flatten",
    "conv3d_same_valid_gap",
    "conv3d_flatten",
    "conv2d_channels_last_nt_layout",
    "conv_transpose2d_same_strided",
    "conv_transpose1d_circular_flatten",
    "conv_local2d_same_flatten",
    "conv_local_relu_local_gap",
    "attention1d_softmax",
    "attention2d_identity_flatten",
    "aggregate_identity_graph",
}


def _params(networks: list[Net]) -> list:
    return [pytest.param(n, marks=pytest.mark.slow, id=n.id) if n.id in SLOW else pytest.param(n, id=n.id) for n in networks]


@pytest.mark.parametrize("net", _params(FINITE_SPATIAL_NETWORKS))
def test_monte_carlo_nngp_converges_to_kernel_fn(net: Net):
    _check_converges(net, "nngp", net.mc_width, out=NNGP_OUT, n=N_SAMPLES)


@pytest.mark.parametrize("net", _params(FINITE_SPATIAL_NETWORKS))
def test_monte_carlo_ntk_converges_to_kernel_fn(net: Net):
    _check_converges(net, "ntk", net.mc_width, out=NTK_OUT, n=N_SAMPLES)


def test_every_spatial_layer_has_a_fast_monte_carlo_check():
    """Apart from ConvLocal (slow only: per-location weights make its Jacobian large), each
    spatial layer is checked by Monte Carlo in the default (not slow) run."""
    from tangents import stax

    covered: set[str] = set()

    def walk(layer: stax.Layer) -> None:
        covered.add(type(layer).__name__)
        for child in layer.children:
            walk(child)

    for net in FINITE_SPATIAL_NETWORKS:
        if net.id not in SLOW:
            walk(net.build(2))
    expected = {"Conv", "ConvTranspose", "AvgPool", "SumPool", "GlobalAvgPool", "GlobalSumPool", "Flatten",
                "LayerNorm", "Dropout", "FanInSum"}
    assert expected <= covered, expected - covered
