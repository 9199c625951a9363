"""`Aggregate`, `DotGeneral`, `Index`/`Slice` and `ImageResize`.

Oracles: neural-tangents 0.6.5 in float64 (``reference/spatial_extra_nt.npz``, generated
by ``reference/spatial_extra_nt.py``; NT's channels-last networks rebuilt with NT's
layout, plus channels-first rebuilds with transposed inputs), ``jax.image.resize`` and NT
``apply_fn`` outputs, and Monte Carlo for linear networks (whose empirical NNGP is
unbiased at any width, so the tolerance is a multiple of the sample standard error).
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from reference_cases import relative_error
from tangents import stax

TOL = 1e-8
DATA = dict(np.load(pathlib.Path(__file__).parent / "reference" / "spatial_extra_nt.npz"))
NHWC = ("NHWC", "HWIO", "NHWC")
NHC = ("NHC", "HIO", "NHC")


def _head(*layers):
    return stax.serial(*layers, stax.Dense(1, 1.5, 0.05))


def _conv(c, f, **kw):
    return stax.Conv(c, f, W_std=1.5, dimension_numbers=NHWC if len(f) == 2 else NHC, **kw)


def _gap(**kw):
    return stax.GlobalAvgPool(channel_axis=kw.pop("channel_axis", -1), **kw)


def _nt_layout_nets():
    """The generator's networks, in NT's channels-last layout."""
    nets = {
        "agg_sparse": _head(
            stax.Dense(8, 1.5, 0.05), stax.Relu(), stax.Aggregate(channel_axis=-1, implementation="SPARSE"),
            stax.Dense(8, 1.5, 0.05), stax.Relu(), _gap(),
        ),
        "agg_image": _head(
            _conv(8, (2, 2), padding="SAME", b_std=0.05), stax.Aggregate(aggregate_axis=(1, 2), channel_axis=-1),
            stax.Relu(), _gap(),
        ),
        "agg_rows": _head(
            _conv(8, (2, 2), padding="SAME", b_std=0.05), stax.Aggregate(aggregate_axis=2, channel_axis=-1),
            stax.Relu(), _gap(),
        ),
        "dot_scalar": _head(
            _conv(16, (1, 3), b_std=0.05), stax.Relu(), stax.DotGeneral(rhs=2.0, channel_axis=-1), _gap()
        ),
        "dot_rhs": _head(
            _conv(16, (1, 3), b_std=0.05), stax.Relu(),
            stax.DotGeneral(rhs=torch.tensor([1.0, -1.0]), dimension_numbers=(((1,), (0,)), ((), ())), channel_axis=-1),
            _gap(),
        ),
        "dot_lhs": _head(
            _conv(16, (1, 3), b_std=0.05), stax.Relu(),
            stax.DotGeneral(
                lhs=np.array([[0.0, 1.0], [1.0, 0.5]]), dimension_numbers=(((1,), (1,)), ((), ())), channel_axis=-1
            ),
            _gap(batch_axis=1),
        ),
        "dot_rhs_matrix": _head(
            _conv(16, (1, 3), b_std=0.05),
            stax.DotGeneral(rhs=DATA["dot_rhs_matrix_M"], dimension_numbers=(((2,), (0,)), ((), ())), channel_axis=-1),
            stax.Relu(), _gap(channel_axis=2),
        ),
        "index_crop": _head(
            _conv(16, (2, 2), padding="SAME", b_std=0.05), stax.Relu(),
            stax.Index(stax.Slice[:, 1:5, ::-2, :], channel_axis=-1), _conv(16, (2, 2)), stax.Relu(), _gap(),
        ),
        "index_row": _head(
            _conv(16, (2, 2), padding="SAME", b_std=0.05), stax.Relu(),
            stax.Index(stax.Slice[:, 2, ...], channel_axis=-1), _conv(16, (2,)), stax.Relu(), _gap(),
        ),
        "resize_dense_nonsquare": _head(
            stax.Dense(16, 1.5, 0.05), stax.ImageResize((-1, 9, 4, -1), "linear", channel_axis=-1), stax.Relu(), _gap()
        ),
    }
    for name, shape, method, aa in [
        ("resize_up_linear", (-1, 9, 7, -1), "linear", True),
        ("resize_down_linear_noaa", (-1, 4, 3, -1), "linear", False),
        ("resize_down_linear_aa", (-1, 4, 3, -1), "bilinear", True),
        ("resize_nearest_mixed", (-1, 3, 8, -1), "nearest", True),
    ]:
        nets[name] = _head(
            _conv(16, (2, 2), padding="SAME", b_std=0.05), stax.Relu(),
            stax.ImageResize(shape, method, antialias=aa, channel_axis=-1), _conv(16, (2, 2)), stax.Relu(), _gap(),
        )
    return nets


NETS = _nt_layout_nets()


def _kwargs(name, self_kernel=False):
    if not name.startswith("agg"):
        return {}
    p1 = DATA[f"{name}_pattern1"]
    return {"pattern": (p1, p1 if self_kernel else DATA[f"{name}_pattern2"])}


@pytest.mark.parametrize("name", sorted(NETS))
def test_kernels_match_neural_tangents(name):
    net = NETS[name]
    x1, x2 = torch.from_numpy(DATA[f"{name}_x1"]), torch.from_numpy(DATA[f"{name}_x2"])
    nngp, ntk = net.kernel_fn(x1, x2, ("nngp", "ntk"), **_kwargs(name))
    assert relative_error(nngp, DATA[f"{name}_nngp"]) <= TOL
    assert relative_error(ntk, DATA[f"{name}_ntk"]) <= TOL
    nngp, ntk = net.kernel_fn(x1, None, ("nngp", "ntk"), **_kwargs(name, True))
    assert relative_error(nngp, DATA[f"{name}_nngp_self"]) <= TOL
    assert relative_error(ntk, DATA[f"{name}_ntk_self"]) <= TOL


def test_channels_first_defaults_give_nt_numbers():
    """tangents' defaults (channel_axis=1, NCHW convolutions) on transposed inputs."""
    x1 = torch.from_numpy(DATA["agg_image_x1"]).permute(0, 3, 1, 2)
    x2 = torch.from_numpy(DATA["agg_image_x2"]).permute(0, 3, 1, 2)
    net = stax.serial(
        stax.Conv(8, (2, 2), padding="SAME", W_std=1.5, b_std=0.05), stax.Aggregate(aggregate_axis=(2, 3)),
        stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1, 1.5, 0.05),
    )
    ntk = net.kernel_fn(x1, x2, "ntk", pattern=(DATA["agg_image_pattern1"], DATA["agg_image_pattern2"]))
    assert relative_error(ntk, DATA["agg_image_ntk"]) <= TOL

    x1 = torch.from_numpy(DATA["index_crop_x1"]).permute(0, 3, 1, 2)
    x2 = torch.from_numpy(DATA["index_crop_x2"]).permute(0, 3, 1, 2)
    net = stax.serial(
        stax.Conv(16, (2, 2), padding="SAME", W_std=1.5, b_std=0.05), stax.Relu(),
        stax.Index(stax.Slice[:, :, 1:5, ::-2]), stax.Conv(16, (2, 2), W_std=1.5), stax.Relu(),
        stax.GlobalAvgPool(), stax.Dense(1, 1.5, 0.05),
    )
    assert relative_error(net.kernel_fn(x1, x2, "ntk"), DATA["index_crop_ntk"]) <= TOL

    x1 = torch.from_numpy(DATA["resize_up_linear_x1"]).permute(0, 3, 1, 2)
    x2 = torch.from_numpy(DATA["resize_up_linear_x2"]).permute(0, 3, 1, 2)
    net = stax.serial(
        stax.Conv(16, (2, 2), padding="SAME", W_std=1.5, b_std=0.05), stax.Relu(),
        stax.ImageResize((-1, -1, 9, 7), "linear"), stax.Conv(16, (2, 2), W_std=1.5), stax.Relu(),
        stax.GlobalAvgPool(), stax.Dense(1, 1.5, 0.05),
    )
    assert relative_error(net.kernel_fn(x1, x2, "ntk"), DATA["resize_up_linear_ntk"]) <= TOL

    x1 = torch.from_numpy(DATA["dot_rhs_x1"]).permute(0, 3, 1, 2)  # (N, C, 2, L)
    x2 = torch.from_numpy(DATA["dot_rhs_x2"]).permute(0, 3, 1, 2)
    net = stax.serial(
        stax.Conv(16, (1, 3), W_std=1.5, b_std=0.05), stax.Relu(),
        stax.DotGeneral(rhs=torch.tensor([1.0, -1.0]), dimension_numbers=(((2,), (0,)), ((), ()))),
        stax.GlobalAvgPool(), stax.Dense(1, 1.5, 0.05),
    )
    assert relative_error(net.kernel_fn(x1, x2, "ntk"), DATA["dot_rhs_ntk"]) <= TOL


def test_sparse_equals_dense_adjacency():
    e1, e2 = DATA["agg_sparse_pattern1"], DATA["agg_sparse_pattern2"]
    v = DATA["agg_sparse_x1"].shape[1]

    def dense(e):
        a = np.zeros((e.shape[0], v, v))
        for n, edges in enumerate(e):
            for s, r in edges:
                if r >= 0:
                    a[n, s, r] += 1
        return a

    x1, x2 = torch.from_numpy(DATA["agg_sparse_x1"]), torch.from_numpy(DATA["agg_sparse_x2"])

    def net(impl):
        return _head(stax.Dense(8, 1.5, 0.05), stax.Relu(), stax.Aggregate(channel_axis=-1, implementation=impl),
                     stax.Dense(8, 1.5, 0.05), stax.Relu(), _gap())

    sparse = net("SPARSE").kernel_fn(x1, x2, "ntk", pattern=(e1, e2))
    dense_k = net("DENSE").kernel_fn(x1, x2, "ntk", pattern=(dense(e1), dense(e2)))
    torch.testing.assert_close(sparse, dense_k, rtol=1e-12, atol=0)
    # to_dense decodes any format on the fly
    decoded = _head(stax.Dense(8, 1.5, 0.05), stax.Relu(), stax.Aggregate(channel_axis=-1, to_dense=dense),
                    stax.Dense(8, 1.5, 0.05), stax.Relu(), _gap()).kernel_fn(x1, x2, "ntk", pattern=(e1, e2))
    torch.testing.assert_close(decoded, dense_k, rtol=1e-12, atol=0)


def test_aggregate_apply_matches_nt():
    x = torch.from_numpy(DATA["agg_apply_x"])
    _, apply_fn, _ = stax.Aggregate(channel_axis=-1, implementation="SPARSE")
    out = apply_fn((), x, pattern=torch.from_numpy(DATA["agg_sparse_pattern1"]))
    assert relative_error(out, DATA["agg_apply_sparse"]) <= 1e-12
    xi = torch.from_numpy(DATA["agg_apply_image_x"])
    out = stax.Aggregate(aggregate_axis=(1, 2), channel_axis=-1).apply_fn((), xi, pattern=DATA["agg_image_pattern1"])
    assert relative_error(out, DATA["agg_apply_image"]) <= 1e-12
    # channels-first default: the same numbers on (N, C, H, W)
    out = stax.Aggregate().apply_fn((), xi.permute(0, 3, 1, 2), pattern=DATA["agg_image_pattern1"])
    assert relative_error(out.permute(0, 2, 3, 1), DATA["agg_apply_image"]) <= 1e-12
    assert stax.Aggregate().apply_fn((), xi) is xi  # pattern=None: identity


@pytest.mark.parametrize("method", ["nearest", "linear", "cubic", "lanczos3", "lanczos5"])
def test_image_resize_apply_matches_jax(method):
    x = torch.from_numpy(DATA["resize_apply_x"])  # (2, 6, 5, 3) channels-last
    for tag, shape in (("up", (-1, 9, 7, -1)), ("down", (-1, 4, 3, -1))):
        for aa in (True, False):
            ref = DATA[f"resize_apply_{method}_{tag}_{int(aa)}"]
            out = stax.ImageResize(shape, method, antialias=aa, channel_axis=-1).apply_fn((), x)
            assert relative_error(out, ref) <= 1e-12, (tag, aa)
            cf = stax.ImageResize((shape[0], shape[3], shape[1], shape[2]), method, antialias=aa)
            out = cf.apply_fn((), x.permute(0, 3, 1, 2))
            assert relative_error(out.permute(0, 2, 3, 1), ref) <= 1e-12


def test_index_and_dot_general_apply():
    x = torch.randn(3, 4, 6, 5)
    out = stax.Index(stax.Slice[:, :, 1:5, ::-2]).apply_fn((), x)
    assert torch.equal(out, torch.from_numpy(x.numpy()[:, :, 1:5, ::-2].copy()))
    assert torch.equal(stax.Index(stax.Slice[::2, :, 3]).apply_fn((), x), x[::2, :, 3])
    assert stax.Index(stax.Slice[:, :, 1:5, ::-2]).output_shape((-1, 4, 6, 5)) == (-1, 4, 4, 3)
    assert stax.Slice[1, :, 2:8:3] == (1, slice(None), slice(2, 8, 3))
    m = torch.randn(5, 2)
    out = stax.DotGeneral(rhs=m, dimension_numbers=(((3,), (0,)), ((), ()))).apply_fn((), x)
    torch.testing.assert_close(out, x @ m)
    lhs = torch.randn(2, 6)
    out = stax.DotGeneral(lhs=lhs, dimension_numbers=(((1,), (2,)), ((), ()))).apply_fn((), x)
    torch.testing.assert_close(out, torch.einsum("ah,nchw->ancw", lhs, x))
    assert stax.DotGeneral(rhs=2.0).output_shape((-1, 4, 6, 5)) == (-1, 4, 6, 5)


def _mc_check(net, x1, x2, n_samples, **kwargs):
    """Empirical NNGP of a linear network (unbiased at any width) within 5 standard errors."""
    nngp = net.kernel_fn(x1, x2, "nngp", **kwargs)
    samples = []
    for seed in range(n_samples):
        _, params = net.init_fn(seed, tuple(x1.shape))
        f1 = net.apply_fn(params, x1, **({"pattern": kwargs["pattern"][0]} if "pattern" in kwargs else {}))
        f2 = net.apply_fn(params, x2, **({"pattern": kwargs["pattern"][1]} if "pattern" in kwargs else {}))
        samples.append(f1 @ f2.T / f1.shape[1])
    samples = torch.stack(samples)
    mean, se = samples.mean(0), samples.std(0) / n_samples**0.5
    assert bool((torch.abs(mean - nngp) <= 5 * se + 1e-12).all()), (mean, nngp, se)
    # and the estimate is informative: its error is small relative to the kernel
    assert float(torch.abs(mean - nngp).max() / nngp.abs().max()) < 0.15


def test_monte_carlo_aggregate():
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(3, 4, 5, generator=g), torch.randn(2, 4, 5, generator=g)  # (N, C, V)
    a1 = (torch.rand(3, 5, 5, generator=g) < 0.5).double()
    a2 = (torch.rand(2, 5, 5, generator=g) < 0.5).double()
    net = stax.serial(
        stax.Dense(32, 1.5, 0.1, channel_axis=1), stax.Aggregate(), stax.Dense(32, 1.2, 0.1, channel_axis=1),
        stax.GlobalAvgPool(), stax.Dense(8, 1.0, 0.1),
    )
    _mc_check(net, x1, x2, 300, pattern=(a1, a2))


def test_monte_carlo_dot_general_and_resize():
    g = torch.Generator().manual_seed(2)
    x1, x2 = torch.randn(3, 3, 2, 6, generator=g), torch.randn(2, 3, 2, 6, generator=g)  # (N, C, 2, L)
    net = stax.serial(
        stax.Conv(16, (1, 3), W_std=1.5, b_std=0.1),
        stax.DotGeneral(lhs=torch.tensor([[0.0, 1.0], [1.0, 0.5], [2.0, -1.0]]), dimension_numbers=(((1,), (2,)), ((), ()))),
        stax.GlobalAvgPool(batch_axis=1, channel_axis=2),  # outputs (3, N, C, L) -> (N, C)
        stax.Dense(8, 1.0, 0.1),
    )
    _mc_check(net, x1, x2, 1000)
    # a non-square resize after a Dense layer (unreversed kernel) is exact
    net = stax.serial(
        stax.Conv(16, (2, 2), W_std=1.5, b_std=0.1), stax.Conv(16, (2, 2), W_std=1.5),  # two convs: not reversed
        stax.ImageResize((-1, -1, 3, 7), "linear"), stax.Index(stax.Slice[:, :, ::2, 1:]),
        stax.GlobalAvgPool(), stax.Dense(8, 1.0, 0.1),
    )
    x1, x2 = torch.randn(3, 3, 6, 6, generator=g), torch.randn(2, 3, 6, 6, generator=g)
    _mc_check(net, x1, x2, 1000)


# ---------------------------------------------------------------------- errors


def _gnn(**kw):
    return stax.serial(stax.Dense(8, channel_axis=1), stax.Aggregate(**kw), stax.GlobalAvgPool(), stax.Dense(1))


def test_aggregate_errors():
    x1, x2 = torch.randn(3, 4, 5), torch.randn(2, 4, 5)
    a1, a2 = torch.ones(3, 5, 5), torch.ones(2, 5, 5)
    net = _gnn()
    with pytest.raises(ValueError, match=r"pattern2 must be a dense adjacency of shape \(N, \*A, \*A\) = \(2, 5, 5\)"):
        net.kernel_fn(x1, x2, "nngp", pattern=(a1, a1))
    with pytest.raises(ValueError, match="both graphs or neither"):
        net.kernel_fn(x1, x2, "nngp", pattern=(a1, None))
    with pytest.raises(ValueError, match=r"needs pattern=\(pattern1, pattern2\)"):
        net.kernel_fn(x1, x2, "nngp", pattern=a1)
    with pytest.raises(TypeError, match="integer edge list"):
        _gnn(implementation="SPARSE").kernel_fn(x1, x2, "nngp", pattern=(a1, a2))
    with pytest.raises(ValueError, match=r"\(N, n_edges, K, 2\) = \(3, n_edges, 1, 2\)"):
        _gnn(implementation="SPARSE").kernel_fn(
            x1, x2, "nngp", pattern=(torch.zeros(3, 4, 2, 2, dtype=torch.long), torch.zeros(2, 4, 2, dtype=torch.long))
        )
    with pytest.raises(ValueError, match="implementation must be 'DENSE' or 'SPARSE'"):
        stax.Aggregate(implementation="COO")
    with pytest.raises(ValueError, match="includes the batch or channel axis"):
        stax.Aggregate(aggregate_axis=1).apply_fn((), x1, pattern=torch.ones(3, 4, 4))
    with pytest.raises(ValueError, match="channel_axis=1"):  # channels-last kernel, channels-first layer
        stax.serial(stax.Dense(8), stax.Aggregate()).kernel_fn(x1.transpose(1, 2), None, pattern=(a1, a1))
    assert torch.equal(net.kernel_fn(x1, x2, "nngp"), net.kernel_fn(x1, x2, "nngp", pattern=(None, None)))


def test_dot_general_index_resize_errors():
    x = torch.randn(3, 4, 6, 5)
    conv = stax.Conv(8, (2, 2))
    with pytest.raises(ValueError, match="contract or batch the channel axis"):
        stax.serial(conv, stax.DotGeneral(rhs=torch.ones(8), dimension_numbers=(((1,), (0,)), ((), ())))).kernel_fn(x)
    with pytest.raises(ValueError, match="contracting the batch axis"):
        stax.serial(conv, stax.DotGeneral(rhs=torch.ones(3), dimension_numbers=(((0,), (0,)), ((), ())))).kernel_fn(x)
    with pytest.raises(ValueError, match="at most one of the constants"):
        stax.DotGeneral(lhs=1.0, rhs=2.0)
    with pytest.raises(ValueError, match="paired with axis 0 of the constant"):
        stax.DotGeneral(rhs=torch.ones(3), dimension_numbers=(((2,), (0,)), ((), ()))).apply_fn((), x)
    with pytest.raises(ValueError, match="indexes the channel axis 1"):
        stax.serial(conv, stax.Index(stax.Slice[:, :4])).kernel_fn(x)
    with pytest.raises(ValueError, match="with an integer, which would remove it"):
        stax.serial(conv, stax.Index(stax.Slice[0])).kernel_fn(x)
    with pytest.raises(TypeError, match="idx entries must be ints, slices or"):
        stax.Index(stax.Slice[:, [1, 2]])
    with pytest.raises(ValueError, match="supports method 'linear' or 'nearest' only"):
        stax.serial(conv, stax.ImageResize((-1, -1, 4, 4), "cubic")).kernel_fn(x)
    with pytest.raises(ValueError, match="unknown method 'bogus'"):
        stax.ImageResize((-1, -1, 4, 4), "bogus")
    with pytest.raises(ValueError, match=r"resizing the channel axis 1 is not defined"):
        stax.serial(conv, stax.ImageResize((-1, 4, 4, 4), "linear")).kernel_fn(x)
    with pytest.raises(ValueError, match="has 3 entries but the inputs are"):
        stax.ImageResize((-1, 4, 4), "linear").apply_fn((), x)
