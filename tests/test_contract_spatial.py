"""The layer contract on spatial networks (convolutions, pooling, readouts, blocks).

Every property of `test_contract.py` runs here, unchanged, on `networks_spatial`'s
networks (1-D, 2-D and 3-D inputs; VALID/SAME/CIRCULAR; strides; both parameterizations;
every pooling layer; Flatten and global-pooling readouts; ConvTranspose; ConvLocal; a
residual block; LayerNorm; Dropout). The property functions are those of
`test_contract.py`, re-parametrized (not copied).

Spatial-only properties follow: with ``diagonal_spatial=True`` the kernel equals the
location diagonal of the full computation whenever the architecture allows it, and the
call raises a clear error where a layer needs location–location covariances.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import test_contract as contract
from networks import Net, ids
from networks_spatial import FINITE_SPATIAL_NETWORKS, SPATIAL_NETWORKS

from tangents import Kernel, stax

parametrize = pytest.mark.parametrize("net", SPATIAL_NETWORKS, ids=ids)


def _on(networks: list[Net], prop: Callable[[Net], None]) -> Callable[[Net], None]:
    """``prop`` (a property of `test_contract`) as a test over ``networks``."""

    @pytest.mark.parametrize("net", networks, ids=ids)
    def test(net: Net) -> None:
        prop(net)

    test.__doc__ = prop.__doc__
    return test


test_symmetric_and_psd_for_x2_none = _on(SPATIAL_NETWORKS, contract.test_symmetric_and_psd_for_x2_none)
test_x2_none_equals_x2_is_x1 = _on(SPATIAL_NETWORKS, contract.test_x2_none_equals_x2_is_x1)
test_cov1_is_the_nngp_diagonal = _on(SPATIAL_NETWORKS, contract.test_cov1_is_the_nngp_diagonal)
test_batch_splits_agree = _on(SPATIAL_NETWORKS, contract.test_batch_splits_agree)
test_float32_and_float64 = _on(SPATIAL_NETWORKS, contract.test_float32_and_float64)
test_numpy_inputs = _on(SPATIAL_NETWORKS, contract.test_numpy_inputs)
test_get_return_types = _on(SPATIAL_NETWORKS, contract.test_get_return_types)
test_module_forward_and_backward = _on(FINITE_SPATIAL_NETWORKS, contract.test_module_forward_and_backward)
test_cuda_matches_cpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(
    _on(SPATIAL_NETWORKS, contract.test_cuda_matches_cpu)
)


# ---------------------------------------------------------------------- diagonal_spatial


def _location_diagonal(t: torch.Tensor, batch_ndim: int) -> torch.Tensor:
    """``(*B, S1, S1', ..., Sd, Sd') -> (*B, S1, ..., Sd)``: the coincident-location entries."""
    for _ in range((t.ndim - batch_ndim) // 2):
        t = torch.diagonal(t, 0, batch_ndim, batch_ndim + 1)  # the pair's diagonal goes last
    return t


def _reverse(t: torch.Tensor, batch_ndim: int) -> torch.Tensor:
    return t.permute(list(range(batch_ndim)) + list(range(t.ndim - 1, batch_ndim - 1, -1)))


def _assert_diagonal_of_full(diag: Kernel, full: Kernel) -> None:
    assert diag.diagonal_spatial and not full.diagonal_spatial
    for name, batch_ndim in (("nngp", 2), ("ntk", 2), ("cov1", 1), ("cov2", 1)):
        d, f = getattr(diag, name), getattr(full, name)
        if d is None:
            assert f is None, name
            continue
        expected = _location_diagonal(f, batch_ndim)
        if full.is_reversed != diag.is_reversed:  # full covariances may store axes reversed
            expected = _reverse(expected, batch_ndim)
        assert d.shape == expected.shape, (name, d.shape, expected.shape)
        assert contract._close(d, expected), (name, float((d - expected).abs().max()))


@pytest.mark.parametrize("net", [n for n in SPATIAL_NETWORKS if n.diagonal_spatial], ids=ids)
def test_diagonal_spatial_equals_the_full_computation(net: Net):
    layer = net.build(contract.WIDTH)
    x1, x2 = contract._x1(net), contract._x2(net)
    for b in (x2, None):
        diag = layer.kernel_fn(x1, b, diagonal_spatial=True)
        full = layer.kernel_fn(x1, b, diagonal_spatial=False)
        for name in ("nngp", "ntk", "cov1", "cov2"):
            d, f = getattr(diag, name), getattr(full, name)
            assert (d is None) == (f is None), name
            if d is not None:
                assert contract._close(d, f), (name, float((d - f).abs().max()))


def _body(layer: stax.Layer) -> stax.Layer | None:
    """The network without its ``Flatten, Dense`` readout (None if it has another one)."""
    children = layer.children
    if len(children) < 3 or not isinstance(children[-2], stax.Flatten):
        return None
    return stax.serial(*children[:-2])


@pytest.mark.parametrize(
    "net", [n for n in SPATIAL_NETWORKS if n.diagonal_spatial and _body(n.build(2)) is not None], ids=ids
)
def test_diagonal_spatial_kernel_is_the_location_diagonal_before_the_readout(net: Net):
    """Before the readout the kernels are spatial: the diagonal layout must be exactly the
    coincident-location entries of the full ``(N1, N2, S1, S1', ...)`` covariances."""
    body = _body(net.build(contract.WIDTH))
    x1, x2 = contract._x1(net), contract._x2(net)
    for b in (x2, None):
        diag = body.kernel_fn(x1, b, diagonal_spatial=True)
        full = body.kernel_fn(x1, b, diagonal_spatial=False)
        n_spatial = len(net.input_shape) - 1
        assert diag.nngp.ndim == 2 + n_spatial and full.nngp.ndim == 2 + 2 * n_spatial
        _assert_diagonal_of_full(diag, full)


@pytest.mark.parametrize("net", [n for n in SPATIAL_NETWORKS if n.diagonal_spatial is False], ids=ids)
def test_diagonal_spatial_is_refused_where_locations_mix(net: Net):
    layer = net.build(contract.WIDTH)
    with pytest.raises(ValueError, match=r"diagonal_spatial=True was requested, but a layer of this network"):
        layer.kernel_fn(contract._x1(net), None, diagonal_spatial=True)
    # The default picks what the network needs and agrees with asking for full covariances.
    default = layer.kernel_fn(contract._x1(net), contract._x2(net), "nngp")
    full = layer.kernel_fn(contract._x1(net), contract._x2(net), "nngp", diagonal_spatial=False)
    assert contract._close(default, full)


def test_every_spatial_layer_is_covered():
    """Each spatial layer of `tangents.stax` appears in some contract network."""
    layers: set[str] = set()

    def walk(layer: stax.Layer) -> None:
        layers.add(type(layer).__name__)
        for child in layer.children:
            walk(child)

    for net in SPATIAL_NETWORKS:
        walk(net.build(2))
    expected = {
        "Conv", "ConvTranspose", "ConvLocal", "AvgPool", "SumPool", "GlobalAvgPool",
        "GlobalSumPool", "Flatten", "LayerNorm", "Dropout", "GlobalSelfAttention", "Aggregate",
    }  # fmt: skip
    assert expected <= layers, expected - layers
