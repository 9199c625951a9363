"""NTK_VECTOR_PRODUCTS computed in chunks of rows (``vmap`` over J2ᵀ e in blocks) through
panels of examples of x1: the chunked forward-mode products must give neural-tangents'
kernels and the brute-force NTK, whatever the chunk and panel (one row through one example,
chunks and panels that do not divide the rows and examples, all at once)."""

from __future__ import annotations

import pytest
import torch

import tangents._empirical._ntk_vp as ntk_vp_mod
import tangents._empirical._memory as memory_mod
from tangents._empirical._memory import CHUNK_TENSOR_BYTES, PANEL_TENSOR_BYTES, ForwardPasses, Profile, forward_passes
from tangents import empirical_ntk_fn
from reference_cases import relative_error
from test_empirical import CASE_IDS, _brute_force_ntk, _modules, flat_outputs, reference_network


FORCED = {  # rows per chunk over all of x1; the passes of independent examples (examples, rows, panel)
    "rows1": (1, ForwardPasses(1, 1, 1)),
    "rows3_panel2": (3, ForwardPasses(2, 3, 2)),  # 3 rows do not divide 2 examples' rows, 2 not |x1|
    "panel1": (3, ForwardPasses(1, 10**9, 1)),  # all of an example's rows through one example of x1
    "unchunked": (10**9, ForwardPasses(10**9, 10**9, 10**9)),
}


@pytest.fixture(params=list(FORCED), ids=list(FORCED))
def forced_chunk(request, monkeypatch):
    """Forces the rows per chunk and the forward passes (``unchunked``: every row in one ``vmap``)."""
    calls = []
    rows, passes = FORCED[request.param]

    def fixed_rows(*args):
        calls.append(args)
        return rows

    def fixed_passes(*args):
        calls.append(args)
        return passes

    monkeypatch.setattr(ntk_vp_mod, "row_chunk", fixed_rows)
    monkeypatch.setattr(ntk_vp_mod, "forward_passes_for", fixed_passes)
    monkeypatch.setattr(ntk_vp_mod, "MIN_CHUNK_ROWS", 0)
    return calls


@pytest.mark.parametrize("vmap_axes", [None, 0])
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_chunked_rows_match_neural_tangents(case_id, vmap_axes, forced_chunk):
    f, params, d = reference_network(case_id)
    x1, x2 = d["x1"], d["x2"]

    def ntk(trace_axes, diagonal_axes, x2):
        return empirical_ntk_fn(f, trace_axes, diagonal_axes, vmap_axes, 2)(x1, x2, params)

    assert relative_error(ntk((), (), x2), d["entk_full"].numpy()) <= 1e-10
    assert relative_error(ntk((), (), None), d["entk_full_self"].numpy()) <= 1e-10
    assert relative_error(ntk((-1,), (), x2), d["entk_traced"].numpy()) <= 1e-10
    assert relative_error(ntk((), (-1,), x2), d["entk_diag_out"].numpy()) <= 1e-10
    assert forced_chunk  # the chunked path ran


@pytest.mark.parametrize("name", ["cnn", "resnet_bn_eval", "transformer"])
def test_chunked_rows_match_brute_force_on_modules(name, forced_chunk):
    """Includes the transformer, whose fused attention has no forward-mode rule (the
    transposed-pullback fallback runs inside the chunked ``vmap``)."""
    module, x1, x2 = _modules()[name]
    if name == "transformer":
        module = flat_outputs(module)
    reference = _brute_force_ntk(module, x1, x2)
    for vmap_axes in (None, 0):
        ntk = empirical_ntk_fn(module, (), (), vmap_axes, 2)(x1, x2)
        assert relative_error(ntk, reference.numpy()) <= 1e-10, vmap_axes


def test_default_chunks_bound_the_intermediates():
    """The default chunking of a small CNN over 64 images: several chunks, each one's
    largest intermediate within the budget, and the kernel still the brute-force one."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 1))
    x = torch.randn(64, 3, 16, 16)
    from tangents._empirical._function import make_problem

    problem = make_problem(net, None, 0, "test")
    c = ntk_vp_mod.row_chunk(problem, problem.tensors, x, {})
    largest = 64 * 16 * 16 * 16 * x.element_size()  # one conv output over the batch, per row
    assert 1 <= c < 64
    assert c * largest <= CHUNK_TENSOR_BYTES
    reference = _brute_force_ntk(net, x, x)[..., 0, 0]
    assert relative_error(empirical_ntk_fn(net, vmap_axes=0, implementation=2)(x), reference.numpy()) <= 1e-10


def test_forward_passes_bound_the_tangents():
    """The three regimes of `forward_passes` (float32): a small model's rows go several
    examples at a time through all of x1; a ResNet-18-sized one's (one example's 10 rows over
    128 examples would be 80 MiB per tangent) through panels of x1 whose largest tangent is
    within PANEL_TENSOR_BYTES; when even one example of x1 is too much for an example's rows,
    fewer rows through one example."""
    small = Profile(activations=1000, largest=200)
    # rows over 256 examples: 128 MiB / (1000 x 256 x 4 B) = 131, 8 MiB / (200 x 256 x 4 B) = 40
    assert forward_passes(small, 256, 10, 4) == ForwardPasses(4, 40, 256)
    resnet = Profile(activations=400_000, largest=16_384)
    passes = forward_passes(resnet, 128, 10, 4)
    assert passes == ForwardPasses(1, 10, 51)  # 32 MiB / (10 x 16,384 x 4 B) = 51.2 examples
    assert passes.rows * passes.panel * resnet.largest * 4 <= PANEL_TENSOR_BYTES
    assert forward_passes(resnet, 16, 10, 4) == ForwardPasses(1, 10, 16)  # the panel is all of x1
    wide = Profile(activations=10_000_000, largest=1 << 20)  # 4 MiB per example and row
    assert forward_passes(wide, 128, 10, 4) == ForwardPasses(1, 8, 1)  # 32 MiB / 4 MiB = 8 rows


def test_panels_of_x1_give_the_brute_force_kernel(monkeypatch):
    """With a 512 KiB chunk budget (3 rows over all of x1) and a 1 MiB panel budget, a CNN's 10 rows per example (16 KiB of tangent per example
    and row at its widest, float64) go through panels of 6 examples of x1, and for x2=None
    the panel ending at the diagonal is rounded up to whole granules of 6 / 4 -> 2 examples
    (within x1): the passes have exactly the sizes below, and the kernel is the brute-force one."""
    monkeypatch.setattr(memory_mod, "CHUNK_TENSOR_BYTES", 512 << 10)  # 3 rows over all of x1: too few
    monkeypatch.setattr(memory_mod, "PANEL_TENSOR_BYTES", 1 << 20)
    seen: list[int] = []
    original = ntk_vp_mod.ntk_vp

    def recording(problem, tensors, x, kw, tangents):
        seen.append(problem.batch_size(x, kw))
        return original(problem, tensors, x, kw, tangents)

    monkeypatch.setattr(ntk_vp_mod, "ntk_vp", recording)
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).double()
    x1, x2 = torch.randn(9, 3, 16, 16, dtype=torch.float64), torch.randn(5, 3, 16, 16, dtype=torch.float64)
    # x2=None, example a through 0:a+1 rounded up to a multiple of 2 past 6 (the last panel
    # ends at |x1| = 9, which needs no rounding); x2 given: every example through 0:6 and 6:9.
    expected_self = [2, 2, 4, 4, 6, 6, 6, 2, 6, 2, 6, 3]
    for other, sizes in ((None, expected_self), (x2, [6, 3] * 5)):
        seen.clear()
        ntk = empirical_ntk_fn(net, (), (), 0, 2)(x1, other)
        reference = _brute_force_ntk(net, x1, x1 if other is None else other)
        assert relative_error(ntk, reference.numpy()) <= 1e-10
        assert seen == sizes
