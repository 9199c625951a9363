"""tangents: neural tangent kernels and infinitely wide networks, native to PyTorch."""

# The spine
from ._kernel import Kernel as Kernel
from . import stax as stax

__version__ = "0.1.0"
