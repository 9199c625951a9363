"""tangents: neural tangent kernels and infinitely wide networks, native to PyTorch."""

# The spine
from ._kernel import Kernel as Kernel
from . import stax as stax

__version__ = "0.1.0"

# Computing large kernels
from .batching import batch as batch

# Training dynamics and inference
from . import predict as predict

# Empirical kernels of finite networks
from . import empirical as empirical
from .empirical import NtkImplementation as NtkImplementation
from .empirical import empirical_kernel_fn as empirical_kernel_fn
from .empirical import empirical_nngp_fn as empirical_nngp_fn
from .empirical import empirical_ntk_fn as empirical_ntk_fn
from .empirical import empirical_ntk_vp_fn as empirical_ntk_vp_fn
from .linearize import linearize as linearize
from .linearize import taylor_expand as taylor_expand

# Kernels estimated by sampling finite networks
from .monte_carlo import monte_carlo_kernel_fn as monte_carlo_kernel_fn
