"""NTK_VECTOR_PRODUCTS computed in chunks of rows (``vmap`` over J2ᵀ e in blocks): the
chunked forward-mode products must give neural-tangents' kernels and the brute-force NTK,
whatever the chunk (one row, a chunk that does not divide the rows, all rows)."""

from __future__ import annotations

import pytest
import torch

import tangents._empirical._ntk_vp as ntk_vp_mod
from tangents import empirical_ntk_fn
from reference_cases import relative_error
from test_empirical import CASE_IDS, _brute_force_ntk, _modules, flat_outputs, reference_network


@pytest.fixture(params=[1, 3, None], ids=["chunk1", "chunk3", "unchunked"])
def forced_chunk(request, monkeypatch):
    """Forces the rows per chunk (None: every row in one ``vmap``)."""
    calls = []

    def fixed(*args):
        calls.append(args)
        return 10**9 if request.param is None else request.param

    monkeypatch.setattr(ntk_vp_mod, "row_chunk", fixed)
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
    assert c * largest <= ntk_vp_mod.CHUNK_TENSOR_BYTES
    reference = _brute_force_ntk(net, x, x)[..., 0, 0]
    assert relative_error(empirical_ntk_fn(net, vmap_axes=0, implementation=2)(x), reference.numpy()) <= 1e-10
