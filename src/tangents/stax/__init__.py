"""Layers of infinitely wide networks, with neural-tangents' names, arguments and defaults.

Every layer is a `Layer`: unpack it as ``init_fn, apply_fn, kernel_fn``, call
``layer.kernel_fn(x1, x2, get)``, or build the finite network with ``layer.to_module``.
"""

# The spine
from ._layer import Layer as Layer
from ._layer import StaxModule as StaxModule

# Hyperparameters by name (W_std, b_std, activation parameters), and copies with new values
from ._hyperparameters import hyperparameters as hyperparameters
from ._hyperparameters import with_hyperparameters as with_hyperparameters

# Combinators
from ._combinators import parallel as parallel
from ._combinators import repeat as repeat
from ._combinators import serial as serial

# Branching
from ._branching import FanInConcat as FanInConcat
from ._branching import FanInProd as FanInProd
from ._branching import FanInSum as FanInSum
from ._branching import FanOut as FanOut
from ._branching import Identity as Identity

# Affine layers
from ._dense import Dense as Dense

# Nonlinearities
from ._elementwise import Activation as Activation
from ._activations import ABRelu as ABRelu
from ._activations import Abs as Abs
from ._activations import Erf as Erf
from ._activations import LeakyRelu as LeakyRelu
from ._activations import Relu as Relu
from ._activations import Sigmoid_like as Sigmoid_like
from ._activations import Cos as Cos
from ._activations import Exp as Exp
from ._activations import ExpNormalized as ExpNormalized
from ._activations import Gabor as Gabor
from ._activations import Gaussian as Gaussian
from ._activations import Gelu as Gelu
from ._activations import Rbf as Rbf
from ._activations import Sign as Sign
from ._activations import Sin as Sin
from ._polynomials import Hermite as Hermite
from ._polynomials import Monomial as Monomial
from ._polynomials import Polynomial as Polynomial
from ._polynomials import RectifiedMonomial as RectifiedMonomial

# User-defined and numerical nonlinearities
from ._custom import Elementwise as Elementwise
from ._custom import ElementwiseNumerical as ElementwiseNumerical
from ._custom import Elu as Elu
from ._custom import SiLU as SiLU
from ._custom import Sigmoid as Sigmoid
from ._custom import Softplus as Softplus
from ._custom import Tanh as Tanh
from ._hardtanh import Hardtanh as Hardtanh

# Normalization and dropout
from ._dropout import Dropout as Dropout
from ._normalization import LayerNorm as LayerNorm

# Convolutions and pooling
from ._conv import Conv as Conv
from ._conv import ConvLocal as ConvLocal
from ._conv import ConvTranspose as ConvTranspose
from ._pooling import AvgPool as AvgPool
from ._pooling import Flatten as Flatten
from ._pooling import GlobalAvgPool as GlobalAvgPool
from ._pooling import GlobalSumPool as GlobalSumPool
from ._pooling import SumPool as SumPool

# Graphs, indexing and resizing
from ._graph import Aggregate as Aggregate
from ._linear_ops import DotGeneral as DotGeneral
from ._linear_ops import ImageResize as ImageResize
from ._linear_ops import Index as Index
from ._linear_ops import Slice as Slice

# Attention
from ._attention import AttentionMechanism as AttentionMechanism
from ._attention import GlobalSelfAttention as GlobalSelfAttention
from ._attention import PositionalEmbedding as PositionalEmbedding

# Networks as JSON data, and named networks
from ._spec import PRESETS as PRESETS
from ._spec import from_spec as from_spec
from ._spec import preset as preset

__all__ = [
    "ABRelu",
    "Abs",
    "Activation",
    "Aggregate",
    "AttentionMechanism",
    "AvgPool",
    "Conv",
    "ConvLocal",
    "ConvTranspose",
    "Cos",
    "Dense",
    "DotGeneral",
    "Dropout",
    "Elementwise",
    "ElementwiseNumerical",
    "Elu",
    "Erf",
    "Exp",
    "ExpNormalized",
    "FanInConcat",
    "FanInProd",
    "FanInSum",
    "FanOut",
    "from_spec",
    "Flatten",
    "Gabor",
    "Gaussian",
    "Gelu",
    "GlobalAvgPool",
    "GlobalSelfAttention",
    "GlobalSumPool",
    "Hardtanh",
    "Hermite",
    "hyperparameters",
    "Identity",
    "ImageResize",
    "Index",
    "Layer",
    "LayerNorm",
    "LeakyRelu",
    "Monomial",
    "parallel",
    "Polynomial",
    "preset",
    "PRESETS",
    "PositionalEmbedding",
    "Rbf",
    "RectifiedMonomial",
    "Relu",
    "repeat",
    "serial",
    "Sigmoid",
    "Sigmoid_like",
    "Sign",
    "SiLU",
    "Sin",
    "Slice",
    "Softplus",
    "StaxModule",
    "SumPool",
    "Tanh",
    "with_hyperparameters",
]
