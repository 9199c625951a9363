"""The contract every layer inherits: properties of ``kernel_fn`` that hold for any network.

Each test runs over `networks.NETWORKS` (every layer family of `tangents.stax`). The
properties are consequences of the definitions, not numbers from an earlier run:
covariances are symmetric and positive semi-definite, ``x2=None`` means ``x2=x1``, ``cov1``
is the diagonal of the NNGP, a kernel of a sub-batch is a block of the full kernel, dtypes
are kept, and the finite-width module runs and matches ``init_fn``'s output shape.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from networks import FINITE_NETWORKS, NETWORKS, Net, ids, inputs

from tangents import Kernel

WIDTH = 32  # hidden width: the kernels of NTK-parameterized nets do not depend on it
N1, N2 = 5, 3

parametrize = pytest.mark.parametrize("net", NETWORKS, ids=ids)


def _x1(net: Net, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return inputs(net, N1, seed=1, dtype=dtype)


def _x2(net: Net, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return inputs(net, N2, seed=2, dtype=dtype)


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-12) -> bool:
    """|a − b| <= rtol · max|b| entrywise (rounding of float64, relative to the kernel's scale)."""
    scale = max(float(b.abs().max()), 1e-300)
    return bool(((a - b).abs() <= rtol * scale).all())


@parametrize
def test_symmetric_and_psd_for_x2_none(net: Net):
    k = net.build(WIDTH).kernel_fn(_x1(net), None, ("nngp", "ntk"))
    # Quadrature kernels are symmetric only to their quadrature error (see networks.Net).
    rtol = 2e-3 if net.quadrature else 1e-12
    for name, m in zip(k._fields, k):
        assert m.shape == (N1, N1), name
        assert _close(m, m.T, rtol), f"{name} is not symmetric: {float((m - m.T).abs().max())}"
        eigenvalues = torch.linalg.eigvalsh((m + m.T) / 2)
        assert eigenvalues.min() >= -1e-10 * eigenvalues.abs().max(), f"{name} is not PSD: {eigenvalues}"


@parametrize
def test_x2_none_equals_x2_is_x1(net: Net):
    layer = net.build(WIDTH)
    x = _x1(net)
    k_none = layer.kernel_fn(x, None)
    k_same = layer.kernel_fn(x, x.clone())
    assert isinstance(k_none, Kernel) and isinstance(k_same, Kernel)
    assert k_none.x1_is_x2 and k_same.x1_is_x2
    for name in ("nngp", "ntk", "cov1"):
        assert _close(getattr(k_same, name), getattr(k_none, name)), name
    assert k_none.cov2 is None
    assert _close(k_same.cov2, k_none.cov1)


@parametrize
def test_cov1_is_the_nngp_diagonal(net: Net):
    layer = net.build(WIDTH)
    x1, x2 = _x1(net), _x2(net)
    k = layer.kernel_fn(x1, None, diagonal_batch=True)
    assert k.cov1.shape == (N1,)
    assert _close(k.cov1, torch.diagonal(k.nngp))
    full = layer.kernel_fn(x1, None, diagonal_batch=False)
    assert full.cov1.shape == (N1, N1)
    assert _close(full.cov1, full.nngp)
    assert _close(full.nngp, k.nngp)
    # With a second batch, cov1 and cov2 are the variances of each batch on its own.
    k12 = layer.kernel_fn(x1, x2)
    assert _close(k12.cov1, torch.diagonal(k.nngp))
    assert _close(k12.cov2, torch.diagonal(layer.kernel_fn(x2, None, "nngp")))


@parametrize
def test_batch_splits_agree(net: Net):
    layer = net.build(WIDTH)
    x1, x2 = _x1(net), _x2(net)
    k = layer.kernel_fn(x1, x2, ("nngp", "ntk"))
    assert k.nngp.shape == k.ntk.shape == (N1, N2)
    rows = layer.kernel_fn(x1[:2], x2, ("nngp", "ntk"))
    cols = layer.kernel_fn(x1, x2[1:], ("nngp", "ntk"))
    for name in ("nngp", "ntk"):
        assert _close(getattr(rows, name), getattr(k, name)[:2]), name
        assert _close(getattr(cols, name), getattr(k, name)[:, 1:]), name
    # The cross kernel is the off-diagonal block of the kernel of both batches together.
    both = layer.kernel_fn(torch.cat([x1, x2]), None, ("nngp", "ntk"))
    # A kernel of x with itself is symmetrised, (K + Kᵀ)/2: for quadrature layers, whose rule
    # treats x1 and x2 differently, its block then differs from the cross kernel by half the
    # quadrature's asymmetry (measured 5.4e-6 of the scale, act_Tanh's NTK).
    rtol = 1e-5 if net.quadrature else 1e-11
    for name in ("nngp", "ntk"):
        assert _close(getattr(k, name), getattr(both, name)[:N1, N1:], rtol=rtol), name


#: float32 vs float64: kernels are O(1) combinations of a few dozen float32 operations on
#: O(1) numbers (eps = 1.2e-7), so 1e-5 of the kernel's scale is ~100 eps of headroom;
#: quadrature (ElementwiseNumerical) sums 25² weighted terms, covered by the same margin.
RTOL_FLOAT32 = 1e-5


@parametrize
def test_float32_and_float64(net: Net):
    layer = net.build(WIDTH)
    k64 = layer.kernel_fn(_x1(net), _x2(net))
    k32 = layer.kernel_fn(_x1(net, torch.float32), _x2(net, torch.float32))
    for name in ("nngp", "ntk", "cov1", "cov2"):
        t64, t32 = getattr(k64, name), getattr(k32, name)
        assert t64.dtype == torch.float64 and t32.dtype == torch.float32, name
        assert _close(t32.double(), t64, rtol=RTOL_FLOAT32), (name, float((t32 - t64).abs().max()))


@parametrize
def test_numpy_inputs(net: Net):
    layer = net.build(WIDTH)
    x1, x2 = _x1(net), _x2(net)
    expected = layer.kernel_fn(x1, x2, "ntk")
    got = layer.kernel_fn(x1.numpy(), x2.numpy(), "ntk")
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    assert _close(got, expected)
    got32 = layer.kernel_fn(x1.numpy().astype(np.float32), None, "nngp")
    assert got32.dtype == torch.float32


@parametrize
def test_get_return_types(net: Net):
    layer = net.build(WIDTH)
    x1, x2 = _x1(net), _x2(net)
    kernel = layer.kernel_fn(x1, x2, None)
    assert isinstance(kernel, Kernel)
    ntk = layer.kernel_fn(x1, x2, "ntk")
    assert isinstance(ntk, torch.Tensor) and _close(ntk, kernel.ntk)
    pair = layer.kernel_fn(x1, x2, ("ntk", "nngp"))
    assert pair._fields == ("ntk", "nngp")
    assert _close(pair.ntk, kernel.ntk) and _close(pair.nngp, kernel.nngp)
    triple = layer.kernel_fn(x1, x2, ["cov1", "nngp", "cov2"])
    assert triple._fields == ("cov1", "nngp", "cov2")
    assert _close(triple.cov2, kernel.cov2)
    # Asking only for the NNGP must give the same NNGP (the NTK is skipped, not needed).
    assert _close(layer.kernel_fn(x1, x2, "nngp"), kernel.nngp)


@pytest.mark.parametrize("net", FINITE_NETWORKS, ids=ids)
def test_module_forward_and_backward(net: Net):
    layer = net.build(WIDTH)
    out_shape, _ = layer.init_fn(0, (-1, *net.input_shape))
    model = layer.to_module((-1, *net.input_shape), seed=0)
    x = _x1(net)
    y = model(x)
    assert y.shape == (N1,) + tuple(out_shape)[1:]
    assert out_shape[0] == -1
    y.square().sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.grad.shape == p.shape for p in model.parameters())
    # init_fn with the actual batch size reports the shape of apply_fn's output exactly.
    shape, params = layer.init_fn(0, tuple(x.shape))
    assert tuple(layer.apply_fn(params, x).shape) == tuple(shape)


@pytest.mark.parametrize("net", [n for n in NETWORKS if not n.finite], ids=ids)
def test_kernel_only_layers_refuse_the_finite_forward_pass(net: Net):
    layer = net.build(WIDTH)
    _, params = layer.init_fn(0, (N1, *net.input_shape))
    with pytest.raises(NotImplementedError, match="finite"):
        layer.apply_fn(params, _x1(net))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@parametrize
def test_cuda_matches_cpu(net: Net):
    layer = net.build(WIDTH)
    x1, x2 = _x1(net), _x2(net)
    cpu = layer.kernel_fn(x1, x2)
    gpu = layer.kernel_fn(x1.cuda(), x2.cuda())
    for name in ("nngp", "ntk", "cov1", "cov2"):
        t = getattr(gpu, name)
        assert t.device.type == "cuda", name
        assert _close(t.cpu(), getattr(cpu, name), rtol=1e-10), name
