"""stax additions for torch models: explicit (lo, hi) padding and filter dilation (``rhs_dilation``).

Oracles are torch's own convolutions: a convolution is linear in its weights, so with i.i.d.
weights of variance v the NNGP of one output channel is v · J(x1) J(x2)ᵀ, J the Jacobian of
``F.conv*d`` / ``F.conv_transpose*d`` in the filter of that channel (computed by
``torch.func.jacrev``); average pooling is linear in the inputs, so its kernel is the input
kernel x1·x2/C of the pooled inputs ``F.avg_pool2d(x)``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import jacrev

from tangents import stax


def _full(k, n_spatial: int) -> torch.Tensor:  # noqa: ANN001
    """The kernel's nngp ``(N1, N2, S1, S1', S2, S2', ...)`` in the activations' spatial order."""
    nngp = k.nngp
    if k.is_reversed:
        order = [0, 1]
        for i in reversed(range(n_spatial)):
            order += [2 + 2 * i, 3 + 2 * i]
        nngp = nngp.permute(order)
    return nngp


def _reference(conv, x1: torch.Tensor, x2: torch.Tensor, w_shape: tuple[int, ...], var: float) -> torch.Tensor:  # noqa: ANN001
    """v J(x1) J(x2)ᵀ for one output channel, laid out as ``(N1, N2, S1, S1', ...)``."""
    w = torch.zeros(w_shape, dtype=x1.dtype)

    def jac(x: torch.Tensor) -> torch.Tensor:
        j = jacrev(lambda w_: conv(x, w_))(w)  # (N, 1, *S, *w_shape)
        return j.reshape(x.shape[0], *j.shape[2 : j.ndim - len(w_shape)], -1)

    j1, j2 = jac(x1), jac(x2)
    spatial = j1.shape[1:-1]
    flat1 = j1.reshape(x1.shape[0], -1, j1.shape[-1])  # (N1, locations, weights)
    flat2 = j2.reshape(x2.shape[0], -1, j2.shape[-1])
    k = var * torch.einsum("aip,bjp->abij", flat1, flat2).reshape(x1.shape[0], x2.shape[0], *spatial, *spatial)
    d = len(spatial)
    order = [0, 1]
    for i in range(d):
        order += [2 + i, 2 + d + i]
    return k.permute(order)


CONVS = [
    # (id, filter, strides, stax padding, dilation, torch pre-padding (F.pad spec), input spatial shape)
    ("dilated_asymmetric_2d", (3, 2), (1, 2), ((2, 1), (0, 3)), (2, 1), (0, 3, 2, 1), (7, 6)),
    ("dilated_valid_1d", (3,), (2,), "VALID", (3,), (0, 0), (11,)),
    ("dilated_3d", (2, 2, 2), (1, 1, 1), ((1, 1), (0, 0), (1, 0)), (1, 2, 1), (1, 0, 0, 0, 1, 1), (3, 4, 3)),
]


@pytest.mark.parametrize("case", CONVS, ids=lambda c: c[0])
def test_dilated_conv_with_explicit_padding_matches_torch(case):
    _, filt, strides, padding, dilation, pre, spatial = case
    n = len(filt)
    conv_fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    x1, x2 = torch.randn(2, 3, *spatial), torch.randn(3, 3, *spatial)
    layer = stax.Conv(5, filt, strides, padding, W_std=1.0, parameterization="standard", rhs_dilation=dilation)
    k = layer.kernel_fn(x1, x2, diagonal_spatial=False)

    def conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return conv_fn(F.pad(x, pre), w, stride=strides, dilation=dilation)

    var = 1.0 / (3 * math.prod(filt))  # W_std² / fan_in in the standard parameterization
    expected = _reference(conv, x1, x2, (1, 3, *filt), var)
    torch.testing.assert_close(_full(k, n), expected, rtol=1e-12, atol=1e-13)  # measured ≤ 3e-16


def test_same_padding_of_a_dilated_even_filter_puts_the_extra_zero_last():
    # lax SAME for span d (k - 1) + 1 = 4: pads (1, 2); torch's padding='same' does the same
    x1, x2 = torch.randn(2, 2, 6, 5), torch.randn(2, 2, 6, 5)
    layer = stax.Conv(4, (2, 2), padding="SAME", W_std=1.0, parameterization="standard", rhs_dilation=(3, 1))
    k = layer.kernel_fn(x1, x2, diagonal_spatial=False)

    def conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (0, 1, 1, 2)), w, dilation=(3, 1))

    expected = _reference(conv, x1, x2, (1, 2, 2, 2), 1.0 / 8)
    torch.testing.assert_close(_full(k, 2), expected, rtol=1e-12, atol=1e-13)
    assert layer.output_shape((2, 2, 6, 5)) == (2, 4, 6, 5)


@pytest.mark.parametrize(
    "kernel, stride, padding, output_padding, dilation",
    [((3, 3), (2, 2), (1, 1), (1, 1), (1, 1)), ((3, 2), (2, 3), (2, 0), (1, 2), (2, 2)), ((4,), (3,), (1,), (0,), (1,))],
)
def test_transposed_conv_with_explicit_padding_matches_torch(kernel, stride, padding, output_padding, dilation):
    n = len(kernel)
    spatial = (4, 3)[:n]
    x1, x2 = torch.randn(2, 3, *spatial), torch.randn(2, 3, *spatial)
    pads = tuple((d * (k - 1) - p, d * (k - 1) - p + op) for k, p, op, d in zip(kernel, padding, output_padding, dilation))
    layer = stax.ConvTranspose(4, kernel, stride, pads, W_std=1.0, parameterization="standard", rhs_dilation=dilation)
    k = layer.kernel_fn(x1, x2, diagonal_spatial=False)
    transpose = {1: F.conv_transpose1d, 2: F.conv_transpose2d}[n]

    def conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return transpose(x, w, stride=stride, padding=padding, output_padding=output_padding, dilation=dilation)

    expected = _reference(conv, x1, x2, (3, 1, *kernel), 1.0 / (3 * math.prod(kernel)))
    assert layer.output_shape((2, 3, *spatial))[2:] == expected.shape[2::2]
    torch.testing.assert_close(_full(k, n), expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_with_explicit_padding_matches_torch(count_include_pad):
    x1, x2 = torch.randn(2, 4, 7, 6), torch.randn(3, 4, 7, 6)
    layer = stax.AvgPool((3, 2), (2, 1), ((1, 1), (1, 1)), normalize_edges=not count_include_pad)
    k = layer.kernel_fn(x1, x2, diagonal_spatial=False)

    def pooled(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, (3, 2), (2, 1), (1, 1), count_include_pad=count_include_pad)

    p1, p2 = pooled(x1), pooled(x2)
    expected = torch.einsum("achw,bcij->abhiwj", p1, p2) / 4  # the input kernel of the pooled inputs
    torch.testing.assert_close(_full(k, 2), expected, rtol=1e-12, atol=1e-13)
    # the finite forward pass is torch's too
    torch.testing.assert_close(layer.apply_fn((), x1), p1, rtol=1e-12, atol=1e-13)


def test_finite_dilated_conv_is_torchs_with_the_same_weights():
    layer = stax.Conv(4, (3, 2), (1, 2), ((2, 1), (0, 3)), rhs_dilation=(2, 1), W_std=1.0, parameterization="standard")
    x = torch.randn(2, 3, 7, 6)
    _, (w, b) = layer.init_fn(0, tuple(x.shape))
    expected = F.conv2d(F.pad(x, (0, 3, 2, 1)), w, stride=(1, 2), dilation=(2, 1))
    torch.testing.assert_close(layer.apply_fn((w, b), x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: stax.Conv(4, (3, 3), padding=((1, 1),)), r"Conv: padding must be .* a sequence of 2 \(lo, hi\) integer pairs"),
        (lambda: stax.Conv(4, (3, 3), padding=((1, 1.5), (0, 0))), r"\(lo, hi\) integer pairs.*got \(\(1, 1\.5\)"),
        (lambda: stax.Conv(4, (3, 3), padding="FULL"), r"padding must be one of 'VALID', 'SAME', 'CIRCULAR' or \(lo, hi\)"),
        (lambda: stax.Conv(4, (3, 3), rhs_dilation=(0, 1)), r"Conv: rhs_dilation must be a tuple of positive integers"),
        (lambda: stax.Conv(4, (3, 3), rhs_dilation=(2,)), r"rhs_dilation must have 2 entries"),
        (lambda: stax.ConvLocal(4, (3, 3), rhs_dilation=(2, 2)), r"ConvLocal: rhs_dilation=\(2, 2\) is not supported"),
        (lambda: stax.AvgPool((2, 2), padding=((1, 1),)), r"AvgPool: padding must be .* 2 \(lo, hi\) integer pairs"),
    ],
)
def test_bad_padding_and_dilation_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_a_filter_wider_than_the_padded_input_is_refused():
    layer = stax.Conv(4, (3,), padding=((0, 0),), rhs_dilation=(4,))
    with pytest.raises(ValueError, match=r"the filter \(3,\) \(span 9\) is larger than the input's spatial size 7"):
        layer.kernel_fn(torch.randn(2, 1, 7))
