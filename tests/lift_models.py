"""Plain torch models for the `tangents.from_torch` tests, each with its hand-written stax twin.

Every `Case` builds a torch model at a given width (torch's own initialisation) and, for the
kernel-equality tests, the stax network a user would write by hand for it, with W_std and
b_std written out from torch's documented default initialisation:

    nn.Linear / nn.Conv weight ~ U(−1/√fan_in, 1/√fan_in): Var = 1/(3 fan_in), W_std = 1/√3;
    bias ~ U(−1/√fan_in, 1/√fan_in): b_std = 1/√(3 fan_in).

The stax twins are written independently of `tangents.lift` (only `stax` layers), so the
equality tests check the lift against the library's own kernels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tangents import stax

W = 1 / math.sqrt(3)  # W_std of torch's default Linear/Conv initialisation


def bstd(fan_in: int) -> float:
    """b_std of torch's default bias U(−1/√fan_in, 1/√fan_in)."""
    return 1 / math.sqrt(3 * fan_in)


def dense(out: int, fan_in: int, param: str = "standard", bias: bool = True, **kw) -> stax.Layer:
    return stax.Dense(out, W_std=W, b_std=bstd(fan_in) if bias else None, parameterization=param, **kw)


def conv(out: int, k: tuple[int, ...], fan_in: int, param: str = "standard", **kw) -> stax.Layer:
    return stax.Conv(out, k, W_std=W, b_std=bstd(fan_in), parameterization=param, **kw)


@dataclasses.dataclass(frozen=True)
class Case:
    """A torch model and its stax twin.

    Attributes:
        id: pytest id.
        model: ``width -> nn.Module`` (torch's default initialisation unless stated).
        twin: ``(width, parameterization) -> stax layer`` written by hand, or ``None``.
        input_shape: one example's shape.
        eval: whether to lift ``model.eval()``.
    """

    id: str
    model: Callable[[int], nn.Module]
    twin: Callable[[int, str], stax.Layer] | None
    input_shape: tuple[int, ...]
    eval: bool = True
    params: tuple[str, ...] = ("standard", "ntk")


# ---------------------------------------------------------------------- 1. MLP


def mlp(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(5, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 3))


def mlp_twin(width: int, p: str) -> stax.Layer:
    return stax.serial(dense(width, 5, p), stax.Relu(), dense(width, width, p), stax.Relu(), dense(3, width, p))


# ---------------------------------------------------------------------- 2. CNN + global average pooling


def cnn_gap(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 4),
    )


def cnn_gap_twin(width: int, p: str) -> stax.Layer:
    pad = ((1, 1), (1, 1))
    return stax.serial(
        conv(width, (3, 3), 27, p, padding=pad), stax.Relu(),
        conv(width, (3, 3), 9 * width, p, strides=(2, 2), padding=pad), stax.Relu(),
        stax.GlobalAvgPool(), dense(4, width, p),
    )


# ---------------------------------------------------------------------- 3. Myrtle-5 (8x8 inputs)


def myrtle5(width: int) -> nn.Module:
    def block(c_in: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU()]

    return nn.Sequential(
        *block(3), *block(width), nn.AvgPool2d(2), *block(width), nn.AvgPool2d(2), *block(width), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(width, 10),
    )


def myrtle5_twin(width: int, p: str) -> stax.Layer:
    def block(fan_in: int) -> list[stax.Layer]:
        return [conv(width, (3, 3), fan_in, p, padding="SAME"), stax.Relu()]

    return stax.serial(
        *block(27), *block(9 * width), stax.AvgPool((2, 2), (2, 2)), *block(9 * width), stax.AvgPool((2, 2), (2, 2)),
        *block(9 * width), stax.AvgPool((2, 2), (2, 2)), stax.Flatten(), dense(10, width, p),
    )


# ---------------------------------------------------------------------- 4. ResNet-style, no BatchNorm


class PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride) if stride != 1 or c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x)
        skip = x if self.shortcut is None else self.shortcut(h)
        return skip + self.conv2(F.relu(self.conv1(h)))


class ResNet(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.layer1 = nn.Sequential(PreActBlock(width, width, 1), PreActBlock(width, width, 1))
        self.layer2 = nn.Sequential(PreActBlock(width, width, 2))
        self.fc = nn.Linear(width, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(F.relu(x).mean((2, 3)))


def resnet_twin(width: int, p: str) -> stax.Layer:
    pad = ((1, 1), (1, 1))

    def block(stride: int) -> stax.Layer:
        main = stax.serial(stax.Relu(), conv(width, (3, 3), 9 * width, p, strides=(stride, stride), padding=pad),
                           stax.Relu(), conv(width, (3, 3), 9 * width, p, padding=pad))
        skip = stax.Identity() if stride == 1 else stax.serial(
            stax.Relu(), conv(width, (1, 1), width, p, strides=(stride, stride)))
        return stax.serial(stax.FanOut(2), stax.parallel(skip, main), stax.FanInSum())

    return stax.serial(conv(width, (3, 3), 27, p, padding=pad), block(1), block(1), block(2), stax.Relu(),
                       stax.GlobalAvgPool(), dense(5, width, p))


# ---------------------------------------------------------------------- 5. 1-D conv net


def conv1d(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(2, width, 5, padding=2), nn.GELU(), nn.Conv1d(width, width, 3, stride=2), nn.ELU(),
        nn.AvgPool1d(2), nn.Flatten(), nn.Linear(width * 2, 3),
    )


def conv1d_twin(width: int, p: str) -> stax.Layer:
    return stax.serial(
        conv(width, (5,), 10, p, padding=((2, 2),)), stax.Gelu(), conv(width, (3,), 3 * width, p, strides=(2,)),
        stax.Elu(), stax.AvgPool((2,), (2,)), stax.Flatten(), dense(3, 2 * width, p),
    )


# ---------------------------------------------------------------------- 6. dilated convolutions


def dilated(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, dilation=2, padding=2), nn.LeakyReLU(0.1),
        nn.Conv2d(width, width, (3, 2), dilation=(1, 3), padding="same"), nn.ReLU(),
        nn.Conv2d(width, width, 3, dilation=2), nn.Flatten(), nn.Linear(width * 12, 2),
    )


def dilated_twin(width: int, p: str) -> stax.Layer:
    return stax.serial(
        conv(width, (3, 3), 27, p, padding=((2, 2), (2, 2)), rhs_dilation=(2, 2)), stax.LeakyRelu(0.1),
        conv(width, (3, 2), 6 * width, p, padding="SAME", rhs_dilation=(1, 3)), stax.Relu(),
        conv(width, (3, 3), 9 * width, p, rhs_dilation=(2, 2)), stax.Flatten(), dense(2, 12 * width, p),
    )


# ---------------------------------------------------------------------- 7. transformer encoder block


class EncoderBlock(nn.Module):
    """Post-norm transformer encoder block with tied queries/keys and logits scaled c / head_dim."""

    def __init__(self, width: int, heads: int = 2, c: float = 2.0) -> None:
        super().__init__()
        self.heads, self.c = heads, c
        self.embed = nn.Linear(3, width)
        self.qk = nn.Linear(width, width, bias=False)
        self.v = nn.Linear(width, width, bias=False)
        self.out = nn.Linear(width, width)
        self.norm1 = nn.LayerNorm(width)
        self.ff1 = nn.Linear(width, width)
        self.ff2 = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.head = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)  # (N, L, E)
        n, length, e = x.shape
        d = e // self.heads
        q = self.qk(x).view(n, length, self.heads, d).transpose(1, 2)
        v = self.v(x).view(n, length, self.heads, d).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, q, v, scale=self.c / d)
        a = a.transpose(1, 2).reshape(n, length, e)
        x = self.norm1(x + self.out(a))
        x = self.norm2(x + self.ff2(F.relu(self.ff1(x))))
        return self.head(x.mean(1))


def encoder_twin(width: int, p: str) -> stax.Layer:
    # NTK parameterization only: stax.GlobalSelfAttention has no standard parameterization.
    # logits c/d · q·q with q = x W_qk (W_std 1/√3): c · W_std² Σ(x, x) = QK_std · Σ; values and
    # output: OV_std = W_std²; the block's LayerNorms are trainable (γ=1, β=0): those are
    # written as the Dense-free NTK terms Θ += Σ + 1, i.e. lifted's ChannelAffine; the twin
    # uses elementwise_affine-free LayerNorms, so the model below disables them.
    qk = math.sqrt(2.0) * W
    attention = stax.GlobalSelfAttention(
        width, width // 2, width // 2, 2, linear_scaling=True, W_key_std=qk, W_query_std=qk, W_value_std=W,
        W_out_std=W, b_std=bstd(width), channel_axis=-1,
    )
    ln = stax.LayerNorm(axis=-1, eps=1e-5, channel_axis=-1)
    ff = stax.serial(dense(width, width, p), stax.Relu(), dense(width, width, p))
    return stax.serial(
        dense(width, 3, p),
        stax.FanOut(2), stax.parallel(stax.Identity(), attention), stax.FanInSum(), ln,
        stax.FanOut(2), stax.parallel(stax.Identity(), ff), stax.FanInSum(), ln,
        stax.GlobalAvgPool(channel_axis=-1), dense(2, width, p),
    )


def encoder(width: int) -> nn.Module:
    block = EncoderBlock(width)
    block.norm1 = nn.LayerNorm(width, elementwise_affine=False)
    block.norm2 = nn.LayerNorm(width, elementwise_affine=False)
    return block


# ---------------------------------------------------------------------- 8. functional calls


class Functional(nn.Module):
    """Weights as bare parameters, F.linear / F.conv2d, F.relu, x.relu(), torch.tanh, 0.5 * x."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(width, 3, 3, 3) / math.sqrt(27))  # LeCun: W_std = 1
        self.w2 = nn.Parameter(torch.randn(width, width) * math.sqrt(2 / width))  # He: W_std = √2
        self.b2 = nn.Parameter(torch.zeros(width))
        self.w3 = nn.Parameter(torch.randn(4, width) / math.sqrt(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.conv2d(x, self.w1, padding=1))
        x = torch.flatten(x.mean(dim=(2, 3), keepdim=True), 1)
        x = F.linear(x, self.w2, self.b2).relu() * 0.5
        return F.linear(x, self.w3)


def functional_twin(width: int, p: str) -> stax.Layer:
    return stax.serial(
        stax.Conv(width, (3, 3), W_std=1.0, padding="SAME", parameterization=p), stax.Relu(), stax.GlobalAvgPool(),
        stax.Dense(width, W_std=math.sqrt(2), b_std=0.0, parameterization=p), stax.Relu(), _Half(),
        stax.Dense(4, W_std=1.0, parameterization=p),
    )


class _Half(stax.Layer):
    """0.5 · x written out (Σ/4, Θ/4), independent of the lift's own scale layer."""

    def apply(self, params, x, **kw):  # noqa: ANN001, ANN201
        return 0.5 * x

    def propagate(self, k, **kw):  # noqa: ANN001, ANN201
        return k.replace(nngp=k.nngp / 4, ntk=k.ntk / 4, cov1=k.cov1 / 4, cov2=None if k.cov2 is None else k.cov2 / 4)


# ---------------------------------------------------------------------- 9. torch.cat branches


class Inception(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, width, 1)
        self.b = nn.Conv2d(3, 2 * width, 3, padding=1)
        self.mix = nn.Conv2d(3 * width, width, 1)
        self.fc = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([torch.relu(self.a(x)), F.gelu(self.b(x))], dim=1)
        h = F.relu(self.mix(h))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def inception_twin(width: int, p: str) -> stax.Layer:
    branches = stax.parallel(stax.serial(conv(width, (1, 1), 3, p), stax.Relu()),
                             stax.serial(conv(2 * width, (3, 3), 27, p, padding="SAME"), stax.Gelu()))
    return stax.serial(stax.FanOut(2), branches, stax.FanInConcat(axis=1), conv(width, (1, 1), 3 * width, p),
                       stax.Relu(), stax.GlobalAvgPool(), dense(2, width, p))


# ---------------------------------------------------------------------- 10. gated product (dropout in eval mode)


class Gated(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.h = nn.Linear(5, width)
        self.g = nn.Linear(5, width)
        self.drop = nn.Dropout(0.25)
        self.out = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.h(x) * torch.sigmoid(self.g(x))
        return self.out(self.drop(y))


def gated_twin(width: int, p: str) -> stax.Layer:
    gate = stax.serial(dense(width, 5, p), stax.Sigmoid())
    return stax.serial(stax.FanOut(2), stax.parallel(dense(width, 5, p), gate), stax.FanInProd(), dense(2, width, p))


# ---------------------------------------------------------------------- 11. transposed convolution


def deconv(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, stride=2, padding=1), nn.Tanh(),
        nn.ConvTranspose2d(width, width, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(width, 2),
    )


def deconv_twin(width: int, p: str) -> stax.Layer:
    # torch ConvTranspose2d(k=3, s=2, p=1, output_padding=1) pads the stride-dilated input by
    # (k-1-p, k-1-p+output_padding) = (1, 2); torch's default Var(W) = 1/(3 out |k|) with the
    # kernel's fan-in in |k|, so W_std = √(in/(3 out)) = 1/√3 for in = out, b_std = 1/√(3 out |k|).
    return stax.serial(
        conv(width, (3, 3), 27, p, strides=(2, 2), padding=((1, 1), (1, 1))), stax.Tanh(),
        stax.ConvTranspose(width, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)), W_std=W, b_std=bstd(9 * width),
                           parameterization=p),
        stax.Relu(), stax.GlobalAvgPool(), dense(2, width, p),
    )


CASES = [
    Case("mlp", mlp, mlp_twin, (5,)),
    Case("cnn_gap", cnn_gap, cnn_gap_twin, (3, 6, 5)),
    Case("myrtle5", myrtle5, myrtle5_twin, (3, 8, 8)),
    Case("resnet", ResNet, resnet_twin, (3, 6, 6)),
    Case("conv1d", conv1d, conv1d_twin, (2, 9)),
    Case("dilated", dilated, dilated_twin, (3, 7, 8)),
    Case("encoder", encoder, encoder_twin, (4, 3), params=("ntk",)),
    Case("functional", Functional, functional_twin, (3, 5, 4)),
    Case("inception", Inception, inception_twin, (3, 5, 5)),
    Case("gated", Gated, gated_twin, (5,)),
    Case("deconv", deconv, deconv_twin, (3, 6, 6)),
]


# ====================================================================== more features


class _Scaled(stax.Layer):
    """c · x written out (Σ c², Θ c²), independent of the lift's own scale layer."""

    def __init__(self, c: float) -> None:
        self.c = c

    def apply(self, params, x, **kw):  # noqa: ANN001, ANN201
        return self.c * x

    def propagate(self, k, **kw):  # noqa: ANN001, ANN201
        c2 = self.c**2
        return k.replace(nngp=k.nngp * c2, ntk=k.ntk * c2, cov1=k.cov1 * c2, cov2=None if k.cov2 is None else k.cov2 * c2)


class ViT(nn.Module):
    """Patches, one single-head attention block written with @ and softmax, mean over patches."""

    def __init__(self, width: int, c: float = 1.5) -> None:
        super().__init__()
        self.c = c
        self.patch = nn.Conv2d(3, width, 2, stride=2)
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.qk = nn.Linear(width, width, bias=False)
        self.v = nn.Linear(width, width, bias=False)
        self.o = nn.Linear(width, width)
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)  # (N, L, E)
        h = self.norm(x)
        q = self.qk(h)
        weights = torch.softmax(q @ q.transpose(-2, -1) * (self.c / q.shape[-1]), dim=-1)
        x = x + self.o(weights @ self.v(h))
        return self.head(x.mean(1))


def vit_twin(width: int, p: str) -> stax.Layer:
    qk = math.sqrt(1.5) * W
    attention = stax.GlobalSelfAttention(width, width, width, 1, linear_scaling=True, W_key_std=qk, W_query_std=qk,
                                         W_value_std=W, W_out_std=W, b_std=bstd(width), channel_axis=-1)
    # (N, E, 2, 2) patches -> (N, 4, E): a channels-last sequence of the 4 patches in row-major order
    return stax.serial(
        conv(width, (2, 2), 12, p, strides=(2, 2), dimension_numbers=("NCHW", "OIHW", "NHWC")),
        _MergeHW(),
        stax.FanOut(2),
        stax.parallel(stax.Identity(), stax.serial(stax.LayerNorm(axis=-1, eps=1e-5, channel_axis=-1), attention)),
        stax.FanInSum(), stax.GlobalAvgPool(channel_axis=-1), dense(3, width, p),
    )


class _MergeHW(stax.Layer):
    """(N, H, W, C) -> (N, H·W, C), written out on the full covariances (N1, N2, H, H', W, W')."""

    def output_shape(self, s):  # noqa: ANN001, ANN201
        return (s[0], s[1] * s[2], s[3])

    def apply(self, params, x, **kw):  # noqa: ANN001, ANN201
        return x.reshape(x.shape[0], -1, x.shape[-1])

    def propagate(self, k, **kw):  # noqa: ANN001, ANN201
        if k.is_reversed:  # the conv stored (W, W', H, H')
            def fix(t, b):  # noqa: ANN001, ANN202
                return None if t is None else t.permute(*range(b), b + 2, b + 3, b, b + 1)
        else:
            def fix(t, b):  # noqa: ANN001, ANN202
                return t

        def merge(t, b):  # noqa: ANN001, ANN202
            if t is None:
                return None
            t = fix(t, b)
            h, w = t.shape[b], t.shape[b + 2]
            return t.permute(*range(b), b, b + 2, b + 1, b + 3).reshape(*t.shape[:b], h * w, h * w)

        cb = 1 if k.diagonal_batch else 2
        return k.replace(nngp=merge(k.nngp, 2), ntk=merge(k.ntk, 2), cov1=merge(k.cov1, cb), cov2=merge(k.cov2, cb),
                         is_reversed=False, channel_axis=2)


def sequence(width: int) -> nn.Module:
    class Seq(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(3, width)
            self.conv = nn.Conv1d(width, width, 3, padding=1)
            self.out = nn.Linear(width, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, L, 3)
            h = self.conv(self.embed(x).transpose(1, 2))  # (N, W, L)
            return self.out(F.relu(h).transpose(1, 2).mean(1))

    return Seq()


def sequence_twin(width: int, p: str) -> stax.Layer:
    return stax.serial(
        dense(width, 3, p, channel_axis=-1),
        conv(width, (3,), 3 * width, p, padding="SAME", dimension_numbers=("NHC", "OIH", "NHC")), stax.Relu(),
        stax.GlobalAvgPool(channel_axis=-1), dense(2, width, p),
    )


def pools(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3), nn.ReLU(), nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
        nn.Conv2d(width, width, 1), nn.ReLU(), nn.AvgPool2d(2, divisor_override=3), nn.Flatten(), nn.Linear(width, 2),
    )


def pools_twin(width: int, p: str) -> stax.Layer:
    return stax.serial(
        conv(width, (3, 3), 27, p), stax.Relu(), stax.AvgPool((3, 3), (2, 2), ((1, 1), (1, 1)), normalize_edges=True),
        conv(width, (1, 1), width, p), stax.Relu(), stax.SumPool((2, 2), (2, 2)), _Scaled(1 / 3), stax.Flatten(),
        dense(2, width, p),
    )


def grouped(width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 2 * width, 3), nn.ReLU(), nn.Conv2d(2 * width, width, 3, groups=2, padding=1,
                         padding_mode="circular"), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 2))


def grouped_twin(width: int, p: str) -> stax.Layer:
    # groups=2: each output sees in/2 channels; fan_in = width·9, the same kernel as groups=1
    return stax.serial(
        conv(2 * width, (3, 3), 27, p), stax.Relu(),
        stax.Conv(width, (3, 3), padding="CIRCULAR", W_std=W, b_std=bstd(9 * width), parameterization=p,
                  s=(2, 1) if p == "standard" else (1, 1)),
        stax.Relu(), stax.GlobalAvgPool(), dense(2, width, p),
    )


def deconv_dilated(width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, width, 2), nn.Sigmoid(),
                         nn.ConvTranspose2d(width, 2 * width, 3, stride=2, padding=2, output_padding=1, dilation=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(2 * width * 36, 2))


def deconv_dilated_twin(width: int, p: str) -> stax.Layer:
    # torch ConvTranspose(k=3, s=2, p=2, op=1, d=2): pads (d(k-1)-p, d(k-1)-p+op) = (2, 3) of the dilated input;
    # default Var(W) = 1/(3 · out · |k|) and the kernel's fan-in is in · |k|: W_std = √(in / (3 out)).
    return stax.serial(
        conv(width, (2, 2), 8, p), stax.Sigmoid(),
        stax.ConvTranspose(2 * width, (3, 3), strides=(2, 2), padding=((2, 3), (2, 3)), rhs_dilation=(2, 2),
                           W_std=math.sqrt(width / (3 * 2 * width)), b_std=bstd(2 * width * 9), parameterization=p),
        stax.Relu(), stax.Flatten(), dense(2, 2 * width * 36, p),
    )


class FlattenFirst(nn.Module):
    """An activation after flattening, a difference and torch.add(alpha=...)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)
        self.a = nn.Linear(width * 4, width)
        self.b = nn.Linear(width * 4, width)
        self.c = nn.Linear(width * 4, width)
        self.out = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x).view(x.size(0), -1))
        y = torch.add(self.a(h) - 0.5 * self.b(h), self.c(h), alpha=2.0)
        return self.out(F.silu(y))


def flatten_first_twin(width: int, p: str) -> stax.Layer:
    f = 4 * width
    branches = stax.parallel(dense(width, f, p), stax.serial(dense(width, f, p), _Scaled(-0.5)),
                             stax.serial(dense(width, f, p), _Scaled(2.0)))
    return stax.serial(conv(width, (3, 3), 27, p), stax.Relu(), stax.Flatten(), stax.FanOut(3), branches,
                       stax.FanInSum(), stax.SiLU(), dense(2, width, p))


def activations(width: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(4, width)]
    for a in (nn.Hardtanh(-0.5, 1.0), nn.SELU(), nn.CELU(0.7), nn.Softplus(beta=2.0), nn.Mish(), nn.ReLU6(), nn.Tanh()):
        layers += [a, nn.Linear(width, width)]
    return nn.Sequential(*layers[:-1], nn.Linear(width, 2))


def activations_twin(width: int, p: str) -> stax.Layer:
    def numerical(fn, deg, df):  # noqa: ANN001, ANN202
        return stax.ElementwiseNumerical(fn, deg, df)

    def mish_derivative(x):  # noqa: ANN001, ANN202
        t = torch.tanh(F.softplus(x))
        return t + x * (1 - t**2) * torch.sigmoid(x)

    acts = [stax.Hardtanh(-0.5, 1.0),
            stax.serial(stax.Elu(1.6732632423543772), _Scaled(1.0507009873554805)),
            stax.serial(_Scaled(1 / 0.7), stax.Elu(1.0), _Scaled(0.7)),
            stax.serial(_Scaled(2.0), stax.Softplus(), _Scaled(0.5)),
            numerical(F.mish, 40, mish_derivative),
            stax.Hardtanh(0.0, 6.0), stax.Tanh()]
    layers: list[stax.Layer] = [dense(width, 4, p)]
    for a in acts:
        layers += [a, dense(width, width, p)]
    return stax.serial(*layers[:-1], dense(2, width, p))


def dropout_train(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(5, width), nn.ReLU(), nn.Dropout(0.2), nn.Linear(width, 2))


def dropout_train_twin(width: int, p: str) -> stax.Layer:
    return stax.serial(dense(width, 5, p), stax.Relu(), stax.Dropout(0.8), dense(2, width, p))


# ---------------------------------------------------------------------- 3-D convolutions, 1-D transposed convolution

_NCHWD = ("NCHWD", "OIHWD", "NCHWD")


def volumetric(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(2, width, (3, 3, 2), padding=1), nn.ReLU(), nn.AvgPool3d(2),
        nn.Conv3d(width, width, 2), nn.SiLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(width, 2),
    )


def volumetric_twin(width: int, p: str) -> stax.Layer:
    return stax.serial(
        conv(width, (3, 3, 2), 2 * 18, p, padding=((1, 1),) * 3, dimension_numbers=_NCHWD), stax.Relu(),
        stax.AvgPool((2, 2, 2), (2, 2, 2), channel_axis=1),
        conv(width, (2, 2, 2), 8 * width, p, dimension_numbers=_NCHWD), stax.SiLU(),
        stax.GlobalAvgPool(channel_axis=1), dense(2, width, p),
    )


def deconv1d(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(3, width, 3), nn.ReLU(), nn.ConvTranspose1d(width, width, 4, stride=2, padding=1, output_padding=1),
        nn.GELU(), nn.AvgPool1d(3, stride=2, padding=1), nn.Flatten(), nn.Linear(width * 6, 2),
    )


def deconv1d_twin(width: int, p: str) -> stax.Layer:
    # ConvTranspose1d(k=4, s=2, p=1, output_padding=1): pads the stride-dilated input by
    # (k-1-p, k-1-p+output_padding) = (2, 3); torch's fan_in for its (in, out, k) weight is out·k
    return stax.serial(
        conv(width, (3,), 9, p), stax.Relu(),
        stax.ConvTranspose(width, (4,), strides=(2,), padding=((2, 3),), W_std=W, b_std=bstd(4 * width),
                           parameterization=p),
        stax.Gelu(), stax.AvgPool((3,), (2,), padding=((1, 1),), channel_axis=1), stax.Flatten(),
        dense(2, 6 * width, p),
    )


FEATURE_CASES = [
    Case("vit", ViT, vit_twin, (3, 4, 4), params=("ntk",)),
    Case("sequence", sequence, sequence_twin, (5, 3)),
    Case("pools", pools, pools_twin, (3, 8, 7)),
    Case("grouped", grouped, grouped_twin, (3, 6, 5)),
    Case("deconv_dilated", deconv_dilated, deconv_dilated_twin, (2, 4, 4)),
    Case("flatten_first", FlattenFirst, flatten_first_twin, (3, 4, 4)),
    Case("activations", activations, activations_twin, (4,)),
    Case("dropout_train", dropout_train, dropout_train_twin, (5,), eval=False),
    Case("volumetric", volumetric, volumetric_twin, (2, 4, 4, 3)),
    Case("deconv1d", deconv1d, deconv1d_twin, (3, 7)),
]
