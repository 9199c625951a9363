"""Small spatial test networks (1-D, 2-D and 3-D convolutions, pooling, readouts, attention).

The spatial counterpart of `networks.py`, with the same `networks.Net` record: each network
takes channels-first inputs ``(N, C, *spatial)`` of shape ``(N, *net.input_shape)`` and ends
in a dense readout ``(N, out)``, so every property of `test_contract.py` applies to it
unchanged (`test_contract_spatial.py` runs them), and the Monte Carlo tests of
`test_monte_carlo_spatial.py` reuse the estimator checks of `test_monte_carlo.py`.

``Net.diagonal_spatial`` says whether ``kernel_fn(..., diagonal_spatial=True)`` is allowed:
``True`` when every layer needs only location-diagonal covariances (a `Flatten` readout,
`ConvLocal`, elementwise layers, LayerNorm), ``False`` when a layer mixes locations of a
pair (pooling, attention, a shared-weight convolution before them) and the call must raise.

Spatial sizes are tiny and deliberately unequal (5 x 4, 3 x 4 x 3) so that a swapped axis
shows up as a shape error or a wrong number.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from networks import OUT, Net, _layer

from tangents import stax

SHAPE_1D = (3, 7)
SHAPE_2D = (2, 5, 4)
SHAPE_3D = (2, 3, 4, 3)

SQRT2 = math.sqrt(2.0)


def _spatial(
    id: str,
    input_shape: tuple[int, ...],
    diagonal_spatial: bool,
    depth: int = 1,
    mc_width: int = 256,
    **options,
) -> Callable[[Callable[..., stax.Layer]], Net]:
    """Decorator: a builder ``(width, out=OUT) -> Layer`` becomes a `Net`."""
    return lambda build: Net(
        id, build, depth=depth, mc_width=mc_width, input_shape=input_shape, diagonal_spatial=diagonal_spatial, **options
    )


def _conv(width: int, filter_shape: tuple[int, ...], padding: str = "SAME", **kwargs) -> stax.Layer:
    kwargs.setdefault("W_std", 1.5)
    kwargs.setdefault("b_std", 0.1)
    return stax.Conv(width, filter_shape, padding=padding, **kwargs)


def _readout(out: int, **kwargs) -> stax.Layer:
    return stax.Dense(out, W_std=kwargs.pop("W_std", 1.2), b_std=kwargs.pop("b_std", 0.1), **kwargs)


# ---------------------------------------------------------------------- convolutions


@_spatial("conv1d_same_valid_strided_flatten", SHAPE_1D, diagonal_spatial=True, depth=2)
def _conv1d(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(
        _conv(width, (3,), "SAME"),
        stax.Relu(),
        _conv(width, (2,), "VALID", strides=(2,), W_std=1.3, b_std=0.05),
        stax.Erf(),
        stax.Flatten(),
        _readout(out),
    )


@_spatial("conv2d_valid_gap", SHAPE_2D, diagonal_spatial=False)
def _conv2d_valid(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(_conv(width, (3, 2), "VALID"), stax.Relu(), stax.GlobalAvgPool(), _readout(out))


@_spatial("conv2d_circular_strided_flatten", SHAPE_2D, diagonal_spatial=True)
def _conv2d_circular(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(_conv(width, (3, 3), "CIRCULAR", strides=(2, 1)), stax.Relu(), stax.Flatten(), _readout(out))


@_spatial("conv2d_circular_gap", SHAPE_2D, diagonal_spatial=False, depth=2, mc_width=128)
def _conv2d_circular_gap(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(
        _conv(width, (3, 2), "CIRCULAR"),
        stax.Relu(),
        _conv(width, (2, 3), "CIRCULAR", strides=(1, 2)),
        stax.Relu(),
        stax.GlobalAvgPool(),
        _readout(out),
    )


@_spatial("conv2d_standard_same_gsp", SHAPE_2D, diagonal_spatial=False)
def _conv2d_standard(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(
        _conv(width, (3, 3), "SAME", parameterization="standard", W_std=1.4, b_std=0.2),
        stax.Relu(),
        stax.GlobalSumPool(),
        _readout(out, W_std=0.3, parameterization="standard"),
    )


@_spatial("conv2d_standard_flatten", SHAPE_2D, diagonal_spatial=True)
def _conv2d_standard_flatten(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(
        _conv(width, (2, 3), "VALID", parameterization="standard", W_std=1.4, b_std=0.2),
        stax.Erf(),
        stax.Flatten(),
        _readout(out, parameterization="standard"),
    )


@_spatial("conv3d_same_valid_gap", SHAPE_3D, diagonal_spatial=False, depth=2, mc_width=128)
def _conv3d(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(
        _conv(width, (2, 2, 2), "SAME"),
        stax.Relu(),
        _conv(width, (3, 1, 2), "VALID", W_std=1.3),
        stax.Relu(),
        stax.GlobalAvgPool(),
        _readout(out),
    )


@_spatial("conv3d_flatten", SHAPE_3D, diagonal_spatial=True)
def _conv3d_flatten(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(_conv(width, (2, 3, 2), "CIRCULAR", strides=(1, 2, 1)), stax.Erf(), stax.Flatten(), _readout(out))


@_spatial("conv2d_channels_last_nt_layout", (5, 4, 2), diagonal_spatial=False)
def _conv2d_nhwc(width: int, out: int = OUT) -> stax.Layer:
    # NT's layout: (N, H, W, C) inputs; the example shape is (H, W, C) here.
    nhwc = ("NHWC", "HWIO", "NHWC")
    return stax.serial(
        _conv(width, (3, 2), "SAME", dimension_numbers=nhwc),
        stax.Relu(),
        stax.AvgPool((2, 2), strides=(1, 2), padding="SAME", channel_axis=-1),
        _conv(width, (2, 2), "VALID", dimension_numbers=nhwc),
        stax.Relu(),
        stax.GlobalAvgPool(channel_axis=-1),
        _readout(out),
    )


# ---------------------------------------------------------------------- transposed and local


@_spatial("conv_transpose2d_same_strided", SHAPE_2D, diagonal_spatial=True, depth=2, mc_width=128)
def _conv_transpose_same(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(
        _conv(width, (2, 2), "VALID"),
        stax.Relu(),
        stax.ConvTranspose(width, (3, 2), strides=(2, 1), padding="SAME", W_std=1.4, b_std=0.1),
        stax.Relu(),
        stax.Flatten(),
        _readout(out),
    )


@_spatial("conv_transpose1d_valid_gap", SHAPE_1D, diagonal_spatial=False)
def _conv_transpose_valid(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(
        stax.ConvTranspose(width, (3,), strides=(2,), padding="VALID", W_std=1.4, b_std=0.1),
        stax.Relu(),
        stax.GlobalAvgPool(),
        _readout(out),
    )


@_spatial("conv_transpose1d_circular_flatten", SHAPE_1D, diagonal_spatial=True)
def _conv_transpose_circular(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(
        stax.ConvTranspose(width, (4,), strides=(2,), padding="CIRCULAR", W_std=1.4, b_std=0.1),
        stax.Erf(),
        stax.Flatten(),
        _readout(out),
    )


@_spatial("conv_local2d_same_flatten", SHAPE_2D, diagonal_spatial=True, depth=2, mc_width=128)
def _conv_local(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(
        stax.ConvLocal(width, (3, 2), padding="SAME", W_std=1.4, b_std=0.1),
        stax.Relu(),
        stax.ConvLocal(width, (2, 2), strides=(2, 1), padding="VALID", W_std=1.3, b_std=0.1),
        stax.Relu(),
        stax.Flatten(),
        _readout(out),
    )


@_spatial("conv_local_relu_local_gap", SHAPE_2D, diagonal_spatial=True, depth=2, mc_width=64)
def _conv_local_gap(width: int, out: int = OUT) -> stax.Layer:
    # A ConvLocal output has zero off-diagonal location covariances, so global pooling
    # right after it is exact with diagonal storage (Diagonal(input=MAYBE)).
    return stax.serial(
        stax.ConvLocal(width, (3, 3), padding="SAME", W_std=1.4, b_std=0.1),
        stax.Relu(),
        stax.ConvLocal(width, (2, 3), padding="CIRCULAR", W_std=1.3, b_std=0.1),
        stax.GlobalAvgPool(),
        _readout(out),
    )


# ---------------------------------------------------------------------- pooling


def _pool_net(name: str, window: tuple[int, ...], shape: tuple[int, ...], readout: str = "flatten", **kwargs) -> Net:
    suffix = "".join(f"_{k}{v}" for k, v in kwargs.items()).replace("(", "").replace(")", "").replace(", ", "x")
    net_id = f"{name}{len(window)}d{suffix}_{readout}".replace(",", "")

    def build(width: int, out: int = OUT) -> stax.Layer:
        n = len(window)
        return stax.serial(
            _conv(width, (3,) * n, "SAME"),
            stax.Relu(),
            _layer(name, window, **kwargs),
            stax.Flatten() if readout == "flatten" else stax.GlobalAvgPool(),
            _readout(out),
        )

    return Net(net_id, build, input_shape=shape, diagonal_spatial=False, mc_width=256)


POOLING_NETWORKS: list[Net] = [
    _pool_net("AvgPool", (2, 2), SHAPE_2D, strides=(2, 2)),
    _pool_net("AvgPool", (3, 2), SHAPE_2D, strides=(2, 1), padding="SAME"),
    _pool_net("AvgPool", (3, 2), SHAPE_2D, strides=(2, 1), padding="SAME", normalize_edges=True),
    _pool_net("AvgPool", (2, 3), SHAPE_2D, readout="gap", padding="CIRCULAR", normalize_edges=True),
    _pool_net("AvgPool", (3,), SHAPE_1D, padding="SAME", normalize_edges=True),
    _pool_net("AvgPool", (2, 2, 2), SHAPE_3D, strides=(1, 2, 1)),
    _pool_net("SumPool", (2, 2), SHAPE_2D, strides=(1, 2), padding="SAME"),
    _pool_net("SumPool", (3,), SHAPE_1D, readout="gap", strides=(2,)),
    _pool_net("SumPool", (2, 3), SHAPE_2D, padding="CIRCULAR"),
]


@_spatial("global_sum_pool_1d", SHAPE_1D, diagonal_spatial=False)
def _global_sum(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(_conv(width, (3,), "VALID"), stax.Erf(), stax.GlobalSumPool(), _readout(out, W_std=0.5))


# ---------------------------------------------------------------------- blocks


@_spatial("residual_conv_block", SHAPE_2D, diagonal_spatial=False, depth=2, mc_width=128)
def _residual(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(
        _conv(width, (3, 3), "SAME", W_std=1.2),
        stax.FanOut(2),
        stax.parallel(stax.Identity(), stax.serial(stax.Relu(), _conv(width, (3, 3), "SAME", W_std=1.3, b_std=0.0))),
        stax.FanInSum(),
        stax.Relu(),
        stax.GlobalAvgPool(),
        _readout(out),
    )


@_spatial("layernorm_channels", SHAPE_2D, diagonal_spatial=True, depth=2, mc_width=128)
def _layernorm_channels(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(
        _conv(width, (3, 2), "SAME", b_std=0.3),
        stax.LayerNorm(axis=1, channel_axis=1),
        stax.Relu(),
        stax.Flatten(),
        _readout(out),
    )


@_spatial("layernorm_channels_and_space", SHAPE_2D, diagonal_spatial=False, depth=2, mc_width=128)
def _layernorm_space(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(
        _conv(width, (3, 3), "SAME", b_std=0.3),
        stax.LayerNorm(axis=(1, 2, 3), channel_axis=1),
        stax.Relu(),
        stax.GlobalAvgPool(),
        _readout(out),
    )


@_spatial("layernorm_channels_and_space_1d_flatten", SHAPE_1D, diagonal_spatial=True, depth=2, mc_width=128)
def _layernorm_space_1d(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(
        _conv(width, (3,), "SAME", b_std=0.3),
        stax.LayerNorm(axis=(1, 2), channel_axis=1),
        stax.Erf(),
        stax.Flatten(),
        _readout(out),
    )


@_spatial("dropout_conv", SHAPE_2D, diagonal_spatial=False, depth=2, mc_width=128, stochastic=True)
def _dropout(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(
        _conv(width, (3, 3), "SAME"),
        stax.Relu(),
        _layer("Dropout", 0.8),
        _conv(width, (2, 2), "VALID", W_std=1.3),
        stax.Relu(),
        stax.GlobalAvgPool(),
        _readout(out),
    )


# ---------------------------------------------------------------------- attention and graphs


def _attention(width: int, mechanism: str) -> stax.Layer:
    # Key, query and value channels grow with the width: the kernel is their infinite limit
    # (with 16 fixed key channels the IDENTITY mechanism's Monte Carlo mean is 60% off at width 128).
    return stax.GlobalSelfAttention(
        width, width, width, 2, attention_mechanism=mechanism,
        W_key_std=1.0, W_value_std=1.2, W_query_std=1.0, W_out_std=1.1, b_std=0.1,
    )  # fmt: skip


@_spatial("attention1d_softmax", (3, 6), diagonal_spatial=False, depth=2, mc_width=128)
def _attention_1d(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(
        _conv(width, (3,), "SAME"), _attention(width, "SOFTMAX"), stax.Relu(), stax.GlobalAvgPool(), _readout(out)
    )


@_spatial("attention2d_identity_flatten", (2, 3, 2), diagonal_spatial=False, depth=2, mc_width=128)
def _attention_2d(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(_conv(width, (2, 2), "SAME"), stax.Relu(), _attention(width, "IDENTITY"), stax.Flatten(), _readout(out))


@_spatial("aggregate_identity_graph", (3, 6), diagonal_spatial=False, depth=2, mc_width=128)
def _aggregate(width: int, out: int = OUT) -> stax.Layer:
    # pattern=None: the identity graph (self-loops only); patterns as kwargs are not
    # exercised by the contract (its properties call kernel_fn without kwargs).
    return stax.serial(
        _conv(width, (1,), "VALID"), stax.Relu(), stax.Aggregate(), _conv(width, (1,), "VALID"), stax.Relu(),
        stax.GlobalSumPool(), _readout(out, W_std=0.5),
    )  # fmt: skip


CONV_NETWORKS: list[Net] = [
    _conv1d,
    _conv2d_valid,
    _conv2d_circular,
    _conv2d_circular_gap,
    _conv2d_standard,
    _conv2d_standard_flatten,
    _conv3d,
    _conv3d_flatten,
    _conv2d_nhwc,
    _conv_transpose_same,
    _conv_transpose_valid,
    _conv_transpose_circular,
    _conv_local,
    _conv_local_gap,
]

BLOCK_NETWORKS: list[Net] = [_global_sum, _residual, _layernorm_channels, _layernorm_space, _layernorm_space_1d, _dropout]
ATTENTION_NETWORKS: list[Net] = [_attention_1d, _attention_2d, _aggregate]

#: Every spatial test network.
SPATIAL_NETWORKS: list[Net] = CONV_NETWORKS + POOLING_NETWORKS + BLOCK_NETWORKS + ATTENTION_NETWORKS
#: Those with a finite-width forward pass.
FINITE_SPATIAL_NETWORKS: list[Net] = [net for net in SPATIAL_NETWORKS if net.finite]

assert len({net.id for net in SPATIAL_NETWORKS}) == len(SPATIAL_NETWORKS), "duplicate network ids"

__all__ = ["SPATIAL_NETWORKS", "FINITE_SPATIAL_NETWORKS", "SHAPE_1D", "SHAPE_2D", "SHAPE_3D"]

