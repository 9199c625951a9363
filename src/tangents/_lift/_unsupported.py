"""Why a torch op has no infinite-width kernel here, and what to write instead.

`MODULES` and `FUNCTIONS` map known but unsupported ops to ``(why, nearest supported
alternative)``; anything else unknown gets a generic message listing what is supported.
"""

from __future__ import annotations

from torch import nn

_MAX = (
    "the maximum over a window of correlated Gaussians is not a linear map and has no closed-form covariance",
    "average pooling with the same window (nn.AvgPool2d(kernel_size, stride)).",
)
_ADAPTIVE_MAX = (
    "the maximum over a window of correlated Gaussians has no closed-form covariance",
    "nn.AdaptiveAvgPool2d(1) (global average pooling).",
)
_GROUP_NORM = (
    "normalising over groups of a fixed number of channels keeps per-group statistics random at any width",
    "nn.LayerNorm over the channels, or no normalisation.",
)
_RECURRENT = (
    "its weights are shared across time steps; stax has no recurrent layer (a recurrence of kernels over time "
    "is not implemented)",
    "a 1-D convolution over time (nn.Conv1d) or attention.",
)

#: torch.nn module types -> (why, alternative).
MODULES: dict[type, tuple[str, str]] = {
    nn.MaxPool1d: _MAX,
    nn.MaxPool2d: _MAX,
    nn.MaxPool3d: _MAX,
    nn.AdaptiveMaxPool1d: _ADAPTIVE_MAX,
    nn.AdaptiveMaxPool2d: _ADAPTIVE_MAX,
    nn.AdaptiveMaxPool3d: _ADAPTIVE_MAX,
    nn.LPPool1d: _MAX,
    nn.LPPool2d: _MAX,
    nn.GroupNorm: _GROUP_NORM,
    nn.InstanceNorm1d: _GROUP_NORM,
    nn.InstanceNorm2d: _GROUP_NORM,
    nn.InstanceNorm3d: _GROUP_NORM,
    nn.LocalResponseNorm: _GROUP_NORM,
    nn.RNN: _RECURRENT,
    nn.LSTM: _RECURRENT,
    nn.GRU: _RECURRENT,
    nn.Embedding: (
        "an embedding looks up rows of a table by integer index: its inputs are not a vector space the first "
        "layer can average over",
        "one-hot float inputs followed by nn.Linear(vocabulary, d, bias=False).",
    ),
    nn.MultiheadAttention: (
        "it scales its logits by 1/√head_dim with independent query and key weights, so as the width grows the "
        "logits stay random (Gaussian, of order 1) and the output is not a Gaussian process with a closed-form "
        "kernel (Hron et al. 2020; neural-tangents' GlobalSelfAttention raises for this case too)",
        "self-attention with one projection for queries and keys and logits scaled by c/head_dim, whose limit is "
        "GlobalSelfAttention's (linear_scaling=True): q = self.qk(x).view(N, L, H, d).transpose(1, 2); "
        "F.scaled_dot_product_attention(q, q, v, scale=c / d).",
    ),
    nn.Softmax: (
        "a softmax across the (infinitely many) channels sends every output to 0",
        "a softmax only over attention scores (softmax(q @ q.transpose(-2, -1) * scale, dim=-1)), or none.",
    ),
    nn.LogSoftmax: ("a log-softmax across the channels has no infinite-width limit", "no output nonlinearity."),
    nn.PReLU: (
        "its negative slope is a trained parameter shared by all units (its NTK term is not implemented)",
        "nn.LeakyReLU with that slope.",
    ),
    nn.Upsample: ("upsampling is not mapped to stax.ImageResize yet", "nn.ConvTranspose2d."),
    nn.PixelShuffle: ("it moves channels into spatial positions", "nn.ConvTranspose2d."),
    nn.Bilinear: ("a product of two inputs through one weight tensor is not a stax layer", "nn.Linear on each."),
    nn.Threshold: ("a threshold with a constant fill value shifts the mean", "nn.ReLU."),
    nn.Softmin: ("a softmin across the channels sends every output to 0", "no output nonlinearity."),
    nn.GLU: ("it halves the channels into a gate of its own input", "x * torch.sigmoid(gate) with a separate Linear."),
}

#: names of torch functions / tensor methods -> (why, alternative).
FUNCTIONS: dict[str, tuple[str, str]] = {
    "max_pool1d": _MAX,
    "max_pool2d": _MAX,
    "max_pool3d": _MAX,
    "max_pool1d_with_indices": _MAX,
    "max_pool2d_with_indices": _MAX,
    "adaptive_max_pool1d": _ADAPTIVE_MAX,
    "adaptive_max_pool2d": _ADAPTIVE_MAX,
    "max": ("the maximum of correlated Gaussians has no closed-form covariance", "mean pooling (x.mean(dims))."),
    "amax": ("the maximum of correlated Gaussians has no closed-form covariance", "mean pooling (x.mean(dims))."),
    "min": ("the minimum of correlated Gaussians has no closed-form covariance", "mean pooling (x.mean(dims))."),
    "batch_norm": (
        "batch statistics couple the examples of a batch", "F.layer_norm over the channels, or no normalisation."
    ),
    "group_norm": _GROUP_NORM,
    "instance_norm": _GROUP_NORM,
    "interpolate": ("resizing is not mapped to stax.ImageResize yet", "F.conv_transpose2d / nn.ConvTranspose2d."),
    "pad": ("explicit padding before a layer is not folded into it", "the padding argument of the Conv layer."),
    "embedding": (MODULES[nn.Embedding][0], MODULES[nn.Embedding][1]),
    "detach": (
        "detaching stops gradients, so the parameters before it leave the NTK; stax layers are all trained",
        "no detach (or freeze nothing).",
    ),
    "einsum": ("einsum contractions are not mapped", "matmul / @ in the attention pattern, or nn.Linear."),
    "bmm": ("a batched matrix product outside attention has no stax layer", "q @ k.transpose(-2, -1) for attention."),
    "log_softmax": MODULES[nn.LogSoftmax],
    "softmin": MODULES[nn.Softmin],
    "prelu": MODULES[nn.PReLU],
    "glu": MODULES[nn.GLU],
    "multi_head_attention_forward": MODULES[nn.MultiheadAttention],
    "long": (
        "casting activations to integers makes indices (for an embedding lookup), which have no Gaussian limit",
        "one-hot float inputs followed by nn.Linear(vocabulary, d, bias=False).",
    ),
    "int": (
        "casting activations to integers makes indices (for an embedding lookup), which have no Gaussian limit",
        "one-hot float inputs followed by nn.Linear(vocabulary, d, bias=False).",
    ),
    "stack": ("stacking tensors along a new axis is not mapped", "torch.cat along the channel axis."),
}


def transformer(kind: str) -> tuple[str, str]:
    """``nn.TransformerEncoderLayer`` & co: their attention is ``nn.MultiheadAttention``."""
    why, alternative = MODULES[nn.MultiheadAttention]
    return f"its self-attention is nn.MultiheadAttention, which {why[3:]}", (
        f"the same {kind} written with that attention: " + alternative
    )


TRANSFORMERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.TransformerEncoder,
                nn.TransformerDecoder, nn.Transformer)
