"""Layers of infinitely wide networks, with neural-tangents' names, arguments and defaults.

Every layer is a `Layer`: unpack it as ``init_fn, apply_fn, kernel_fn``, call
``layer.kernel_fn(x1, x2, get)``, or build the finite network with ``layer.to_module``.
"""

# The spine
from ._layer import Layer as Layer
from ._layer import StaxModule as StaxModule
from ._requirements import Bool as Bool
from ._requirements import Diagonal as Diagonal

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
