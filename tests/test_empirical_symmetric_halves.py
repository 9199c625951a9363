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


@pytest.mark.parametrize("with_x2", [False, True], ids=["x2=None", "x2"])
@pytest.mark.parametrize("trace_axes", [(), (1,)], ids=["untraced", "channels traced"])
def test_structured_row_panels_give_the_jacobian_kernel(with_x2, trace_axes, monkeypatch):
    """Structured contractions in row panels (token-pair products ``rows x E2 x σ x T²`` held
    within ``STRUCTURED_PANEL_BYTES``, here forced down to 64 KiB: panels of 1-10 rows),
    against the independent torch.func.jacrev reference (float64; the same sums in another
    order: measured <= 3e-16 relative)."""
    import math

    import tangents._empirical._rules as rules_module
    from ntk_reference import reference_ntk

    budget = 64 << 10
    panels = []
    original = rules_module._structured_block

    def counted(spec, g1, x1, g2, x2):
        kept = {"pair": lambda s: s * s, "diag": lambda s: s, "trace": lambda s: 1}  # traced axes are summed
        pairs = math.prod(kept[k](s) for k, s in zip(spec.kinds[1:], g1.shape[1:-2]))
        held = g1.shape[0] * g2.shape[0] * pairs * g1.shape[-2] * g2.shape[-2] * g1.element_size()
        panels.append((g1.shape[0], g2.shape[0], held))
        return original(spec, g1, x1, g2, x2)

    monkeypatch.setattr(rules_module, "_structured_block", counted)
    monkeypatch.setattr(rules_module, "STRUCTURED_PANEL_BYTES", budget)
    net = _cnn()
    x = torch.randn(130, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x2 = torch.randn(7, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) if with_x2 else None
    ours = empirical_ntk_fn(net, trace_axes=trace_axes, vmap_axes=0, implementation=3)(x, x2)
    expect = reference_ntk(net, x, x2, trace_axes=trace_axes, per_example=True)
    assert float((ours - expect).abs().max()) <= 1e-13 * float(expect.abs().max())
    assert panels and all(held <= budget or rows == 1 for rows, _, held in panels), panels
    assert min(rows for rows, _, _ in panels) < 130  # the rows were split
    if not with_x2:  # the upper half only: the panels' columns shrink down the diagonal
        assert min(cols for _, cols, _ in panels) < 130
