"""The empirical NTK of a batch with itself (``x2=None``) is contracted by symmetric halves.

Reference: the same kernel with ``x2`` passed explicitly (the Jacobians of ``x2`` computed
apart, so the full product is formed); the reference data of ``test_empirical.py`` cover
the full product against neural-tangents. Batches of 150 examples span three row panels.
These networks are small, so every contraction is halved here whatever its work per entry
(by default only contractions of at least ``SELF_CONTRACT_MIN_WORK`` multiply-adds per
entry are).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tangents._empirical._axes as axes_module
from tangents import empirical_ntk_fn


DEFAULT_MIN_WORK = axes_module.SELF_CONTRACT_MIN_WORK


@pytest.fixture(autouse=True)
def halve_every_contraction(monkeypatch):
    monkeypatch.setattr(axes_module, "SELF_CONTRACT_MIN_WORK", 0)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.Flatten(1, 1)).double()


@pytest.mark.parametrize("implementation", [1, 3])
@pytest.mark.parametrize(
    "trace_axes, diagonal_axes", [((-1,), ()), ((), ()), ((), (-1,))], ids=["traced", "pairs", "diagonal"]
)
def test_mlp_self_kernel_equals_the_full_product(implementation, trace_axes, diagonal_axes, monkeypatch):
    calls = []
    original = axes_module.by_symmetric_halves
    def counted(*args):
        out = original(*args)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(axes_module, "by_symmetric_halves", counted)
    net = _mlp()
    x = torch.randn(150, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    fn = empirical_ntk_fn(net, trace_axes, diagonal_axes, vmap_axes=0, implementation=implementation)
    ours, full = fn(x, None), fn(x, x.clone())
    torch.testing.assert_close(ours, full, rtol=1e-12, atol=1e-12)
    assert any(calls)  # the halves were used


@pytest.mark.parametrize("implementation", [1, 3])
def test_cnn_self_kernel_with_spatial_pairs_equals_the_full_product(implementation):
    """Output (N, 3, 2, 2): channels traced, the spatial axes paired (mirrored two by two)."""
    net = _cnn()
    x = torch.randn(130, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    fn = empirical_ntk_fn(net, trace_axes=(1,), vmap_axes=0, implementation=implementation)
    ours, full = fn(x, None), fn(x, x.clone())
    assert ours.shape == (130, 130, 2, 2, 2, 2)
    torch.testing.assert_close(ours, full, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("implementation", [1, 3])
def test_cnn_self_kernel_with_every_output_axis_traced_equals_the_full_product(implementation):
    """Convolutions' structured Grams over token pairs (T = H·W > 1), mirrored token-wise."""
    net = _cnn()
    x = torch.randn(130, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    fn = empirical_ntk_fn(net, trace_axes=(1, 2, 3), vmap_axes=0, implementation=implementation)
    ours, full = fn(x, None), fn(x, x.clone())
    assert ours.shape == (130, 130)
    torch.testing.assert_close(ours, full, rtol=1e-12, atol=1e-12)


def test_cheap_contractions_are_not_halved(monkeypatch):
    """Below ``SELF_CONTRACT_MIN_WORK`` multiply-adds per entry, the mirrored copies would
    cost more than the product they save: the full product is formed, in one piece."""
    monkeypatch.setattr(axes_module, "SELF_CONTRACT_MIN_WORK", DEFAULT_MIN_WORK)
    a = torch.randn(256, 100)
    panels = []
    out = axes_module.by_symmetric_halves(256, lambda i, j: panels.append((i, j)) or a[i:j] @ a[i:].T,
                                          lambda k: k.T, work_per_entry=DEFAULT_MIN_WORK - 1)
    assert out is None and panels == []
    out = axes_module.by_symmetric_halves(256, lambda i, j: panels.append((i, j)) or a[i:j] @ a[i:].T,
                                          lambda k: k.T, work_per_entry=DEFAULT_MIN_WORK)
    assert len(panels) == 4
    torch.testing.assert_close(out, a @ a.T)
