"""Empirical NTK / NNGP: neural-tangents 0.6.5 reference values, agreement of implementations,
layouts, modules with buffers, chunking and bad input.

The reference networks are written here as plain functions of NT-layout weights (Dense W
(in, out); Conv HWIO on NHWC inputs) so these tests depend on nothing but tangents.empirical.
"""

from __future__ import annotations

import functools

import math

import pytest
import torch
import torch.nn.functional as F

import tangents
from ntk_reference import reference_ntk
from tangents import NtkImplementation, empirical_kernel_fn, empirical_nngp_fn, empirical_ntk_fn, empirical_ntk_vp_fn
from reference_cases import CASES, load, relative_error

IMPLEMENTATIONS = [1, 2, 3]


# ----------------------------------------------------------------------------- reference nets
def _dense(W, b, x, layer):
    if layer["parameterization"] == "ntk":
        return layer["W_std"] / math.sqrt(W.shape[0]) * x @ W + layer["b_std"] * b
    return x @ W + b


def _conv(W, b, x, layer):
    """NT's Conv on NHWC input with HWIO weights, SAME/VALID padding as lax."""
    xc = x.permute(0, 3, 1, 2)
    kh, kw = W.shape[:2]
    sh, sw = layer["strides"]
    if layer["padding"] == "SAME":
        pads = []
        for size, k, s in ((xc.shape[3], kw, sw), (xc.shape[2], kh, sh)):
            out = -(-size // s)
            total = max((out - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        xc = F.pad(xc, pads)
    y = F.conv2d(xc, W.permute(3, 2, 0, 1), stride=(sh, sw)).permute(0, 2, 3, 1)
    fan_in = kh * kw * W.shape[2]
    return layer["W_std"] / math.sqrt(fan_in) * y + layer["b_std"] * b


def reference_network(case_id):
    """``(f, params, data)``: f(params, x) in NT layout, params a tuple with None for
    parameter-free layers (as stax does)."""
    data = {k: torch.from_numpy(v) for k, v in load(case_id).items()}
    layers = CASES[case_id]["arch"]["layers"]
    params = tuple(
        (data[f"param_{i}_W"], data[f"param_{i}_b"]) if f"param_{i}_W" in data else None for i in range(len(layers))
    )

    def f(params, x):
        for layer, p in zip(layers, params):
            kind = layer["type"]
            if kind == "Dense":
                x = _dense(p[0], p[1], x, layer)
            elif kind == "Conv":
                x = _conv(p[0], p[1], x, layer)
            elif kind == "Relu":
                x = torch.relu(x)
            elif kind == "Erf":
                x = torch.erf(x)
            elif kind == "GlobalAvgPool":
                x = x.mean(dim=(1, 2))
            else:  # pragma: no cover
                raise NotImplementedError(kind)
        return x

    return f, params, data


CASE_IDS = ["empirical_mlp_ntk", "empirical_mlp_std", "empirical_cnn_ntk"]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_reference_outputs_and_nngp(case_id):
    f, params, d = reference_network(case_id)
    assert relative_error(f(params, d["x1"]), d["fx1"].numpy()) <= 1e-12
    assert relative_error(f(params, d["x2"]), d["fx2"].numpy()) <= 1e-12
    nngp = empirical_nngp_fn(f)(d["x1"], d["x2"], params)
    assert relative_error(nngp, d["enngp_traced"].numpy()) <= 1e-10


@pytest.mark.parametrize("vmap_axes", [None, 0])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_reference_ntk(case_id, implementation, vmap_axes):
    f, params, d = reference_network(case_id)
    x1, x2 = d["x1"], d["x2"]

    def ntk(trace_axes, diagonal_axes, x2):
        return empirical_ntk_fn(f, trace_axes, diagonal_axes, vmap_axes, implementation)(x1, x2, params)

    assert relative_error(ntk((), (), x2), d["entk_full"].numpy()) <= 1e-10
    assert relative_error(ntk((), (), None), d["entk_full_self"].numpy()) <= 1e-10
    assert relative_error(ntk((-1,), (), x2), d["entk_traced"].numpy()) <= 1e-10
    assert relative_error(ntk((), (-1,), x2), d["entk_diag_out"].numpy()) <= 1e-10


def test_kernel_fn_get_and_namedtuple():
    f, params, d = reference_network("empirical_mlp_ntk")
    kernel_fn = empirical_kernel_fn(f)
    both = kernel_fn(d["x1"], d["x2"], None, params)
    assert both._fields == ("nngp", "ntk")
    assert relative_error(both.ntk, d["entk_traced"].numpy()) <= 1e-10
    assert relative_error(both.nngp, d["enngp_traced"].numpy()) <= 1e-10
    ntk = kernel_fn(d["x1"], d["x2"], "ntk", params)
    assert relative_error(ntk, d["entk_traced"].numpy()) <= 1e-10
    only = kernel_fn(d["x1"], None, ("ntk",), params=params)
    assert only._fields == ("ntk",)
    assert relative_error(only.ntk[:, :3], kernel_fn(d["x1"], d["x1"][:3], "ntk", params).numpy()) <= 1e-12


# ----------------------------------------------------------------------------- torch modules
class _Block(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn(self.conv(x)))


def _modules():
    nn = torch.nn
    mlp = nn.Sequential(nn.Linear(5, 32), nn.Tanh(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    cnn = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2), nn.ReLU(),
                        nn.Flatten(), nn.Linear(20, 2))
    res = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), _Block(4),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        for m in res.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    res.eval()
    transformer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).eval()
    return {
        "mlp": (mlp, torch.randn(4, 5), torch.randn(3, 5)),
        "cnn": (cnn, torch.randn(3, 2, 6, 6), torch.randn(2, 2, 6, 6)),
        "resnet_bn_eval": (res, torch.randn(3, 2, 6, 6), torch.randn(2, 2, 6, 6)),
        "transformer": (transformer, torch.randn(3, 4, 8), torch.randn(2, 4, 8)),
    }


def _brute_force_ntk(module, x1, x2):
    """Θ[a, b, o, p] from explicit full Jacobians (trace_axes=() layout for (N, O) outputs)."""
    params = {k: v.detach() for k, v in module.named_parameters()}
    buffers = dict(module.named_buffers())

    def jac(x):
        j = torch.func.jacrev(lambda p: torch.func.functional_call(module, {**p, **buffers}, (x,)))(params)
        n = x.shape[0]
        out = module(x)
        return torch.cat([v.reshape(n, out[0].numel(), -1) for v in j.values()], -1)

    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):  # the fused CPU attention has no vmap rule
        j1, j2 = jac(x1), jac(x2)
    return torch.einsum("aop,bqp->aboq", j1, j2)


class _FlatOutputs(torch.nn.Module):
    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.m = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x).flatten(1)


def flat_outputs(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with its outputs flattened to ``(N, O)`` (a plain Jacobian for the brute force)."""
    return _FlatOutputs(module).eval()


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet_bn_eval", "transformer"])
def test_implementations_agree_on_modules(name):
    module, x1, x2 = _modules()[name]
    # flatten the transformer's (N, L, C) output so the brute force is a plain (N, O) Jacobian
    f = module if name != "transformer" else (lambda p, x: torch.func.functional_call(module, p, (x,)).flatten(1))
    params = None if name != "transformer" else {k: v.detach() for k, v in module.named_parameters()}
    reference = _brute_force_ntk(flat_outputs(module) if name == "transformer" else module, x1, x2)
    for vmap_axes in (None, 0):
        for implementation in (0, 1, 2, 3):
            ntk = empirical_ntk_fn(f, (), (), vmap_axes, implementation)(x1, x2, params)
            assert relative_error(ntk, reference.numpy()) <= 1e-10, (vmap_axes, implementation)


def test_transformer_batch_second_with_vmap_axes_triple():
    """batch_first=False: examples on axis 1 of the input and of the output."""
    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0).eval()
    x1, x2 = torch.randn(4, 3, 8), torch.randn(4, 2, 8)  # (L, N, C)
    full = empirical_ntk_fn(layer, trace_axes=(-1,))(x1, x2)  # no assumption: exact
    assert full.shape == (4, 4, 3, 2)  # zip((L, N1), (L, N2))
    for implementation in (1, 2, 3):
        ntk = empirical_ntk_fn(layer, (-1,), (), (1, 1, {}), implementation)(x1, x2)
        assert relative_error(ntk, full.numpy()) <= 1e-10


def test_structured_derivatives_uses_the_structure_of_linear_and_conv_layers():
    from tangents._empirical._rules import classify
    from tangents._empirical._probes import discover
    from tangents._empirical._function import make_problem

    for name in ("mlp", "cnn"):
        module, x1, _ = _modules()[name]
        problem = make_problem(module, None, 0, "test")
        xb, kw, _ = problem.to_batch_first(x1, {})
        plan = discover(problem, problem.tensors, xb, kw)
        assert plan.unexplained == []
        rules = [classify(u, p) for u in plan.uses for p in set(u.params.values())]
        assert len(rules) == len(problem.tensors) and all(r is not None for r in rules)


def test_unknown_layers_fall_back_cleanly():
    """A parameter used in a way the recorder cannot see (torch.split returns a tuple) and an
    elementwise scale parameter: structured derivatives still give the exact NTK."""

    def f(params, x):
        w, scale = params
        a, b = torch.split(w, 3, dim=1)
        return torch.tanh(x @ a) * scale + torch.sin(x @ b)

    params = (torch.randn(4, 6), torch.randn(3))
    x1, x2 = torch.randn(5, 4), torch.randn(2, 4)
    ref = reference_ntk(f, x1, x2, params, trace_axes=())
    for vmap_axes in (None, 0):
        ntk = empirical_ntk_fn(f, trace_axes=(), vmap_axes=vmap_axes, implementation=3)(x1, x2, params)
        assert relative_error(ntk, ref.numpy()) <= 1e-12


# ----------------------------------------------------------------------------- layouts
def _explicit_full(f, params, x1, x2):
    """Θ with every output axis paired, from explicit Jacobians: (N1, N2, *S, *S) unzipped."""
    leaves, spec = torch.utils._pytree.tree_flatten(params)
    idx = [i for i, l in enumerate(leaves) if isinstance(l, torch.Tensor)]

    def g(x):
        def h(*ts):
            ls = list(leaves)
            for i, t in zip(idx, ts):
                ls[i] = t
            return f(torch.utils._pytree.tree_unflatten(ls, spec), x)

        js = torch.func.jacrev(h, argnums=tuple(range(len(idx))))(*[leaves[i] for i in idx])
        out = h(*[leaves[i] for i in idx])
        return torch.cat([j.reshape(*out.shape, -1) for j in js], -1)

    j1, j2 = g(x1), g(x2)
    n = j1.ndim - 1
    return torch.tensordot(j1, j2, dims=([n], [n]))  # (*out1, *out2)


def _conv_net(params, x):
    w1, w2 = params
    h = torch.relu(F.conv2d(x, w1, padding=1))
    return F.conv2d(h, w2, padding=1)  # (N, C, H, W) output


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_axes_layout_matches_zip_of_output_shapes(implementation):
    params = (torch.randn(3, 2, 3, 3), torch.randn(2, 3, 3, 3))
    x1, x2 = torch.randn(2, 2, 4, 3), torch.randn(3, 2, 4, 3)
    full = _explicit_full(_conv_net, params, x1, x2)  # (N1, C, H, W, N2, C, H, W)
    zipped = full.permute(0, 4, 1, 5, 2, 6, 3, 7)  # (N1, N2, C, C, H, H, W, W)
    for vmap_axes in (None, 0):
        fn = lambda t, d: empirical_ntk_fn(_conv_net, t, d, vmap_axes, implementation)(x1, x2, params)
        assert relative_error(fn((), ()), zipped.numpy()) <= 1e-12
        # trace over channels (mean), diagonal over width
        expected = torch.diagonal(torch.diagonal(zipped, dim1=2, dim2=3).mean(-1), dim1=4, dim2=5)
        assert relative_error(fn((1,), (3,)), expected.numpy()) <= 1e-12
        assert fn((1,), (3,)).shape == (2, 3, 4, 4, 3)
        # negative axes; trace over height and width
        expected = torch.einsum("abcdhhww->abcd", zipped) / 12
        assert relative_error(fn((-1, -2), ()), expected.numpy()) <= 1e-12
    # the batch axis itself diagonal (needs N1 == N2)
    x2 = torch.randn(2, 2, 4, 3)
    full = _explicit_full(_conv_net, params, x1, x2).permute(0, 4, 1, 5, 2, 6, 3, 7)
    diag = empirical_ntk_fn(_conv_net, (1, 2, 3), (0,), 0, implementation)(x1, x2, params)
    reference = torch.einsum("nnccHHWW->n", full) / (2 * 4 * 3)
    assert relative_error(diag, reference.numpy()) <= 1e-12


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_tuple_and_dict_outputs_give_a_kernel_per_output(implementation):
    def f(params, x):
        h = torch.tanh(x @ params["w"])
        return {"a": h @ params["va"], "b": (h @ params["vb"], torch.sin(x @ params["w"]))}

    params = {"w": torch.randn(3, 8), "va": torch.randn(8, 2), "vb": torch.randn(8, 4)}
    x1, x2 = torch.randn(4, 3), torch.randn(2, 3)
    ntk = empirical_ntk_fn(f, trace_axes=(), vmap_axes=0, implementation=implementation)(x1, x2, params)
    assert set(ntk) == {"a", "b"} and isinstance(ntk["b"], tuple) and len(ntk["b"]) == 2
    for key, sub in (("a", lambda o: o["a"]), ("b0", lambda o: o["b"][0]), ("b1", lambda o: o["b"][1])):
        ref = _explicit_full(lambda p, x: sub(f(p, x)), params, x1, x2).permute(0, 2, 1, 3)
        ours = ntk["a"] if key == "a" else ntk["b"][int(key[1])]
        assert relative_error(ours, ref.numpy()) <= 1e-12


def test_float32_and_none_leaves_in_nested_params():
    def f(params, x):
        (w1, b1), nothing, (w2, b2) = params
        assert nothing is None
        h = torch.relu(x @ w1 + (0 if b1 is None else b1))
        return h @ w2 + b2

    params = ((torch.randn(3, 16), None), None, (torch.randn(16, 2), torch.randn(2)))
    x1, x2 = torch.randn(4, 3), torch.randn(5, 3)
    ref = reference_ntk(f, x1, x2, params)
    p32 = torch.utils._pytree.tree_map(lambda t: t.float() if isinstance(t, torch.Tensor) else t, params)
    for implementation in (0, 1, 2, 3):
        ntk = empirical_ntk_fn(f, vmap_axes=0, implementation=implementation)(x1.float(), x2.float(), p32)
        assert ntk.dtype == torch.float32
        assert relative_error(ntk.double(), ref.numpy()) <= 1e-5


def test_module_params_default_subset_and_kwargs():
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    x = torch.randn(4, 3)
    full = empirical_ntk_fn(net, trace_axes=())(x)
    last = {k: v.detach() for k, v in net.named_parameters() if k.startswith("2.")}
    ntk_last = empirical_ntk_fn(net, trace_axes=(), implementation=3)(x, None, last)
    h = torch.tanh(net[0](x)).detach()
    expected = torch.einsum("ab,op->abop", h @ h.T + 1, torch.eye(2))  # last layer: (h·h' + 1) I
    assert relative_error(ntk_last, expected.numpy()) <= 1e-12
    assert float((full - ntk_last).abs().max()) > 1e-3  # the other layers do contribute

    def f(params, x, scale=1.0):
        return scale * torch.tanh(x @ params)

    p = torch.randn(3, 2)
    base = empirical_ntk_fn(f)(x, None, p)
    assert relative_error(empirical_ntk_fn(f)(x, None, p, scale=2.0), 4 * base.numpy()) <= 1e-12
    # a pair (v1, v2) goes to f(x1) and f(x2)
    assert relative_error(empirical_ntk_fn(f)(x, x, p, scale=(2.0, 3.0)), 6 * base.numpy()) <= 1e-12


# ----------------------------------------------------------------------------- memory
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_chunked_equals_unchunked(implementation):
    module, x1, x2 = _modules()["cnn"]
    x1 = torch.randn(7, 2, 6, 6)
    for t, d in (((), ()), ((-1,), ()), ((1,), (0,))):
        fn = lambda chunk, x2: empirical_ntk_fn(module, t, d, 0, implementation, chunk_size=chunk)(x1, x2)
        for x2_ in ((None, x2) if d == () else (None,)):
            ref = fn(None, x2_)
            for chunk in (1, 3):
                assert relative_error(fn(chunk, x2_), ref.numpy()) <= 1e-12


def test_memory_limit_tiles_or_refuses():
    """A wide layer (2,000 units: ~16 kB of activations per example and output) and a small
    result (40 x 40 x 3 x 3 float64, 115 kB): a limit of 4 MB fits the result but not the
    40-example block (~8 MB estimated), so the kernel is computed in blocks of examples."""
    net = torch.nn.Sequential(torch.nn.Linear(10, 2000), torch.nn.ReLU(), torch.nn.Linear(2000, 3))
    x = torch.randn(40, 10)
    ref = reference_ntk(net, x, None, trace_axes=())
    fn = empirical_ntk_fn(net, trace_axes=(), vmap_axes=0, memory_limit=4_000_000, progress=False)
    tiled = fn(x)
    assert 1 < fn.plan.chunk_size < 40  # blocks of examples, not one block
    assert relative_error(tiled, ref.numpy()) <= 1e-12  # measured 4e-16: the same sums in blocks
    with pytest.raises(MemoryError, match="estimated to need .* more than the 3.8 MiB available.*pass vmap_axes=0"):
        empirical_ntk_fn(net, trace_axes=(), memory_limit=4_000_000)(x)
    with pytest.raises(MemoryError, match=r"estimated to need .* MiB \(STRUCTURED_DERIVATIVES\).*pass a smaller chunk_size"):
        empirical_ntk_fn(net, trace_axes=(), vmap_axes=0, chunk_size=40, memory_limit=4_000_000)(x)
    with pytest.raises(MemoryError, match="even one example per block does not fit"):
        empirical_ntk_fn(net, trace_axes=(), vmap_axes=0, memory_limit=200_000)(x)
    with pytest.raises(MemoryError, match=r"the NTK of 40 x 40 examples \(kernel \(40, 40, 3, 3\), float64\) needs "
                                          r"0.1 MiB for the result alone, more than the 0.1 MiB"):
        empirical_ntk_fn(net, trace_axes=(), vmap_axes=0, memory_limit=100_000)(x)


def test_auto_prefers_structured_derivatives_for_a_wide_mlp():
    from tangents._empirical._memory import MemoryPlanner

    net = torch.nn.Sequential(torch.nn.Linear(100, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                              torch.nn.ReLU(), torch.nn.Linear(512, 1))
    planner = MemoryPlanner(NtkImplementation.AUTO, None)
    from tangents._empirical._engine import empirical_kernel
    from tangents._empirical._function import make_problem
    from tangents._empirical._implementation import run_planned

    empirical_kernel(functools.partial(run_planned, planner), make_problem(net, None, 0, "t"), torch.randn(8, 100), None, {},
                     (-1,), (), None, planner=planner)
    assert planner.chosen == NtkImplementation.STRUCTURED_DERIVATIVES


# ----------------------------------------------------------------------------- ntk-vector products
def test_ntk_vp_fn_matches_the_ntk():
    module, x1, x2 = _modules()["resnet_bn_eval"]
    ntk = empirical_ntk_fn(module, trace_axes=())(x1, x2)  # (N1, N2, O, O)
    v = torch.randn(2, 3)
    expected = torch.einsum("abop,bp->ao", ntk, v)
    assert relative_error(empirical_ntk_vp_fn(module, x1, x2)(v), expected.numpy()) <= 1e-12
    ntk_self = empirical_ntk_fn(module, trace_axes=())(x1)
    v = torch.randn(3, 3)
    expected = torch.einsum("abop,bp->ao", ntk_self, v)
    assert relative_error(empirical_ntk_vp_fn(module, x1)(v), expected.numpy()) <= 1e-12


# ----------------------------------------------------------------------------- bad input
def test_bad_input_messages():
    f = lambda p, x: x @ p
    p, x = torch.randn(3, 2), torch.randn(4, 3)
    with pytest.raises(ValueError, match="params is required when f is a function"):
        empirical_ntk_fn(f)(x)
    with pytest.raises(ValueError, match="params is required when f is a function"):
        empirical_nngp_fn(f)(x)
    with pytest.raises(ValueError, match="implementation=7 is not an NtkImplementation.*AUTO \\(0\\)"):
        empirical_ntk_fn(f, implementation=7)
    with pytest.raises(ValueError, match="trace_axes=\\(-1,\\) and diagonal_axes=\\(-1,\\) overlap"):
        empirical_ntk_fn(f, trace_axes=(-1,), diagonal_axes=(-1,))
    with pytest.raises(ValueError, match="overlap"):
        empirical_kernel_fn(f, trace_axes=(1,), diagonal_axes=(1,))
    with pytest.raises(ValueError, match="axis 2 is out of range for an output of 2 dimensions"):
        empirical_ntk_fn(f, trace_axes=(2,))(x, None, p)
    with pytest.raises(ValueError, match="differ on axis 1, which is in trace_axes"):
        empirical_ntk_fn(lambda p, x: (x @ p)[:, : x.shape[0]])(x, torch.randn(2, 3), torch.randn(3, 4))
    with pytest.raises(ValueError, match="differ on axis 0, which is in diagonal_axes"):
        empirical_ntk_fn(f, diagonal_axes=(0,))(x, torch.randn(2, 3), p)
    with pytest.raises(ValueError, match="chunk_size should be None or a positive int"):
        empirical_ntk_fn(f, chunk_size=0)(x, None, p)
    with pytest.raises(ValueError, match="chunk_size=2 needs vmap_axes"):
        empirical_ntk_fn(f, chunk_size=2)(x, None, p)
    with pytest.raises(ValueError, match="vmap_axes must be None, an int, or a triple"):
        empirical_ntk_fn(f, vmap_axes=(0, 0))(x, None, p)
    with pytest.raises(ValueError, match="get='cov1': empirical kernels are"):
        empirical_kernel_fn(f)(x, None, "cov1", p)
    with pytest.raises(TypeError, match="f must be an nn.Module or a callable"):
        empirical_ntk_fn(3)(x, None, p)
    net = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="params names \\['nope'\\] are not parameters of Linear"):
        empirical_ntk_fn(net)(x, None, {"nope": p})
    with pytest.raises(TypeError, match="params for an nn.Module must be a dict"):
        empirical_ntk_fn(net)(x, None, (p,))
    assert tangents.NtkImplementation(2) is NtkImplementation.NTK_VECTOR_PRODUCTS
    assert [m.value for m in NtkImplementation] == [0, 1, 2, 3]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
def test_structured_conv_with_same_padding_stride_and_dilation():
    """Odd 'same' (structured), strided dilated (structured) and even 'same' (asymmetric
    padding: generic fallback) convolutions."""
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding="same"), nn.Tanh(), nn.Conv2d(3, 4, 3, stride=2, dilation=2, padding=2),
                        nn.ReLU(), nn.Conv2d(4, 2, 2, padding="same"), nn.Flatten())
    x1, x2 = torch.randn(3, 2, 7, 7), torch.randn(2, 2, 7, 7)
    ref = reference_ntk(net, x1, x2, trace_axes=())
    for vmap_axes in (None, 0):
        ntk = empirical_ntk_fn(net, trace_axes=(), vmap_axes=vmap_axes, implementation=3)(x1, x2)
        assert relative_error(ntk, ref.numpy()) <= 1e-12


def test_structured_derivatives_on_matmul_tokens_and_shared_weights():
    """x @ W with token axes, a weight used twice (tied) and a 1-D linear weight."""

    def f(params, x):  # x: (N, L, C)
        w, v, u = params
        h = torch.tanh(x @ w)  # tokens L
        h = torch.tanh(F.linear(h, w.T))  # w used again (through a transpose)
        return F.linear(h.transpose(1, 2), u).sum(-1, keepdim=True) + h.mean(1) @ v

    params = (torch.randn(4, 4), torch.randn(4, 2), torch.randn(5))
    x1, x2 = torch.randn(3, 5, 4), torch.randn(2, 5, 4)
    ref = reference_ntk(f, x1, x2, params, trace_axes=())
    for vmap_axes in (None, 0):
        ntk = empirical_ntk_fn(f, trace_axes=(), vmap_axes=vmap_axes, implementation=3)(x1, x2, params)
        assert relative_error(ntk, ref.numpy()) <= 1e-12


def test_profile_is_reused_for_the_same_shapes_and_redone_for_others(monkeypatch):
    """One forward pass on one example (output shapes, memory estimate) per input shape and
    ntk_fn, with vmap_axes; every call without (outputs may depend on the whole batch)."""
    import tangents._empirical._memory as memory_module

    calls = []
    original = memory_module.profile
    monkeypatch.setattr(memory_module, "profile", lambda *a: calls.append(1) or original(*a))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    fn = empirical_ntk_fn(net, trace_axes=(), vmap_axes=0)
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    first, again = fn(x), fn(x)
    assert len(calls) == 1 and first.shape == again.shape == (5, 5, 2, 2)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    assert fn(y).shape == (6, 6, 2, 2) and len(calls) == 1  # another batch size, same per-example shapes
    assert fn(torch.randn(5, 4, 3, dtype=torch.float64)).shape == (5, 5, 4, 4, 2, 2)  # another example shape
    assert len(calls) == 2
    batch_fn = empirical_ntk_fn(net, trace_axes=())
    batch_fn(x), batch_fn(x)
    assert len(calls) == 4
