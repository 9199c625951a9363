r"""Lift ``torch.nn`` models to stax: `from_torch`.

``tangents.from_torch(model, example_input)`` traces the model with torch.fx and returns a
stax layer whose ``kernel_fn`` is the NNGP / NTK of the model's architecture as every width
goes to infinity, and whose ``init_fn`` / ``apply_fn`` / ``to_module`` are the same
architecture at finite width (with stax's Gaussian initialisation).

Supported (each module path travels with its node, so errors and ``print`` name it):

* ``nn.Linear`` / ``F.linear``; ``nn.Conv1d/2d/3d`` / ``F.conv*d`` (stride, integer or
  ``'same'``/``'valid'`` padding, dilation, ``padding_mode`` ``'zeros'`` or ``'circular'``,
  groups with several channels per group); ``nn.ConvTranspose1d/2d/3d`` (padding,
  output_padding, dilation).
* ReLU, LeakyReLU, GELU, Tanh, Sigmoid, SiLU, ELU, SELU, CELU, Softplus, Hardtanh, ReLU6,
  Mish, Softsign, Hardswish, Hardsigmoid, Identity, as modules, functions (``F.relu``,
  ``torch.tanh``) and methods (``x.relu()``); ``abs``, ``sin``, ``cos``, ``exp``, ``erf``,
  ``sign``, ``x ** k``, ``x * x``.
* ``nn.AvgPool*`` / ``F.avg_pool*d`` (padding, ``count_include_pad``, ``divisor_override``),
  ``nn.AdaptiveAvgPool*`` to 1 (global average pooling) or to sizes dividing the input,
  ``x.mean(spatial axes)`` / ``x.sum(...)``; ``nn.Flatten``, ``torch.flatten``,
  ``x.view(N, -1)`` / ``reshape``, ``squeeze``/``unsqueeze`` of unit axes, ``permute`` /
  ``transpose`` of the non-batch axes, splitting channels into attention heads and back.
* ``nn.Dropout`` / ``F.dropout`` (identity in eval mode, stax ``Dropout`` in train mode);
  ``nn.LayerNorm`` / ``F.layer_norm`` over the channels (with γ equal across channels and
  β = 0, as initialised; their NTK terms are kept); ``nn.BatchNorm*d`` in eval mode with its
  initial statistics (a constant scale).
* Residual sums ``x + f(x)`` and differences (`stax.FanInSum` of independent zero-mean
  Gaussian branches), ``torch.cat`` along channels (`stax.FanInConcat`), elementwise
  products of independent branches (`stax.FanInProd`), scalar multiples ``c * x``, ``x / c``.
* Self-attention with tied queries and keys and an explicit scale:
  ``F.scaled_dot_product_attention(q, q, v, scale=s)`` or
  ``torch.softmax(q @ q.transpose(-2, -1) * s, dim=-1) @ v``, heads split by
  ``view``/``transpose``. With ``c = s · head_dim`` held fixed as the width grows (Hron et al.
  2020), its limit is neural-tangents' ``GlobalSelfAttention`` (``linear_scaling=True``).

Everything else stops with `LiftError`, naming the op, its module path and source line, why
it has no infinite-width kernel here, and the nearest supported alternative: ``MaxPool``
(use AvgPool), ``BatchNorm`` in training mode or with trained statistics, GroupNorm,
``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` (1/√head_dim logits and
untied query/key weights: no closed form), recurrent layers, embeddings, data-dependent
control flow, in-place updates read later, shared weights, and unknown modules.

**Conventions.**

* Layouts are torch's: images ``(N, C, H, W)`` (tangents' default), sequences for attention
  and ``nn.Linear`` ``(N, L, C)``; the input's channel axis is where the first layer that
  cares puts it.
* ``W_std`` and ``b_std`` are read from each affine layer's tensors (see ``_lift/_stds``):
  torch's default ``nn.Linear``/``nn.Conv`` initialisation has Var(W) = 1/(3 fan_in), so
  W_std = 1/√3, and its bias U(−1/√fan_in, 1/√fan_in) has b_std = 1/√(3 fan_in). Tensors
  re-initialised by kaiming, xavier, LeCun or zeros initialisers are recognised (W_std = √2
  for ``kaiming_normal_``); others get the estimate √(fan_in · mean(W²)), marked as such in
  ``print``; ``stds=`` gives exact values.
* **The infinite-width limit keeps these constants as read at the model's widths.** In
  particular the bias std 1/√(3 fan_in) of a default-initialised layer is the value at the
  model's fan_in, held fixed as all widths grow (the other convention, b_std → 0, would drop
  the biases altogether). Likewise the attention logit constant ``c = scale · head_dim``.
  In the standard parameterization the NTK also depends on the widths (Θ' = n Σ + W_std² Θ
  + 1): it is the NTK expected at the model's widths. A Monte Carlo estimate over
  initialisations of the model at width n therefore converges to the lift of that model,
  with an error shrinking like 1/√n (``tests/test_lift_monte_carlo.py``).
* **The first layer's fan-in is the data's dimension d**, which does not grow: torch's
  uniform weights give it non-Gaussian pre-activations, and the model's kernel after the
  first nonlinearity differs from the Gaussian-weight kernel computed here by O(1/d)
  (measured for a ReLU MLP: 2.2 % of the NNGP with d = 4, within the 1 % noise with d = 64).
  Layers whose fan-in is a width have Gaussian pre-activations in the limit whatever the
  weights' distribution (central limit theorem).
"""

from ._lift._api import from_torch as from_torch
from ._lift._network import LiftedNetwork as LiftedNetwork
from ._lift._network import Node as Node
from ._lift._trace import LiftError as LiftError

__all__ = ["LiftError", "LiftedNetwork", "Node", "from_torch"]
