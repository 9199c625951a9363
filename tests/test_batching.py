"""`tangents.batch`: tiled kernels equal untiled ones; x2=None computes only the upper triangle."""

from __future__ import annotations

import pytest
import torch

import tangents
from tangents import stax


def _net() -> stax.Layer:
    return stax.serial(
        stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(),
        stax.Dense(512, W_std=1.5, b_std=0.05), stax.Erf(),
        stax.Dense(1, W_std=1.5, b_std=0.05),
    )


@pytest.mark.parametrize("batch_size", [1, 3, 4, 10, 50])
def test_tiles_equal_untiled_with_x2(batch_size):
    net = _net()
    x1, x2 = torch.randn(10, 7), torch.randn(7, 7)
    ref = net.kernel_fn(x1, x2)
    out = tangents.batch(net.kernel_fn, batch_size=batch_size)(x1, x2)
    for name in ("nngp", "ntk", "cov1", "cov2"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), rtol=1e-13, atol=0)
    assert out.shape1 == ref.shape1 and out.shape2 == ref.shape2


@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_tiles_equal_untiled_x2_none(batch_size):
    net = _net()
    x = torch.randn(10, 7)
    ref = net.kernel_fn(x, None, ("nngp", "ntk", "cov1"))
    out = tangents.batch(net.kernel_fn, batch_size=batch_size)(x, None, ("nngp", "ntk", "cov1"))
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=0)


def test_x2_none_computes_only_upper_triangle_tiles():
    net = _net()
    calls = []

    def counting_kernel_fn(x1, x2=None, get=None, **kw):
        calls.append((x1.shape[0], None if x2 is None else x2.shape[0]))
        return net.kernel_fn(x1, x2, get, **kw)

    counting_kernel_fn.__self__ = net  # looks like a bound Layer.kernel_fn
    x = torch.randn(12, 5)
    tangents.batch(counting_kernel_fn, batch_size=4)(x, None, "ntk")
    assert len(calls) == 6  # 3 diagonal tiles + 3 above the diagonal, not 9
    assert sum(c[1] is None for c in calls) == 3


def test_string_get_and_float32():
    net = _net()
    x = torch.randn(9, 4, dtype=torch.float32)
    out = tangents.batch(net.kernel_fn, batch_size=4)(x, None, "ntk")
    assert out.dtype == torch.float32 and out.shape == (9, 9)
    torch.testing.assert_close(out, net.kernel_fn(x, None, "ntk"))


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size must be a non-negative integer"):
        tangents.batch(_net().kernel_fn, batch_size=-1)
    with pytest.raises(ValueError, match="device_count=4 is not supported"):
        tangents.batch(_net().kernel_fn, batch_size=2, device_count=4)


def test_large_kernel_fn_calls_are_tiled_and_equal_untiled(monkeypatch):
    import tangents.stax._layer as layer_module

    net = stax.serial(stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(), stax.Dropout(0.7),
                      stax.Dense(512, W_std=1.5, b_std=0.05), stax.Erf(), stax.Dense(1))
    x1, x2 = torch.randn(700, 6), torch.randn(500, 6)
    assert layer_module._auto_tile_size(x1, None, True, False, 0, -1) is not None
    tiled_self = net.kernel_fn(x1, None, ("nngp", "ntk", "cov1"))
    tiled_pair = net.kernel_fn(x1, x2)
    monkeypatch.setattr(layer_module, "_auto_tile_size", lambda *args: None)
    direct_self = net.kernel_fn(x1, None, ("nngp", "ntk", "cov1"))
    direct_pair = net.kernel_fn(x1, x2)
    # tiles change the GEMM's blocking, so entries agree to rounding of the kernel's scale
    # (tiny entries near a sign change can differ in relative terms)
    for a, b in zip(tiled_self, direct_self):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13 * b.abs().max().item())
    for name in ("nngp", "ntk", "cov1", "cov2"):
        a, b = getattr(tiled_pair, name), getattr(direct_pair, name)
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13 * b.abs().max().item())
    assert tiled_pair.shape1 == direct_pair.shape1 == (700, 1)


def test_result_that_cannot_fit_is_refused_before_allocating(monkeypatch):
    import tangents.blocks._tiles as batching_module

    monkeypatch.setattr(batching_module, "available_memory", lambda device: 10_000_000)  # 10 MB free
    net = _net()
    x = torch.randn(1200, 3)  # nngp + ntk: 2 x 1200² x 8 B = 23 MB
    with pytest.raises(MemoryError, match=r"the result needs 22.0 MB \(1200 x 1200 pairs\) but only 9.5 MB is free"):
        tangents.batch(net.kernel_fn, batch_size=100)(x, None, ("nngp", "ntk"))
