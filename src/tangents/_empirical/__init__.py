"""Private implementation of :mod:`tangents.empirical` (one idea per module)."""

from .._torch_private import load_jvp_decompositions

# torch.func.jvp imports a module lazily on first use, and importing it calls the deprecated
# torch.jit.script (a DeprecationWarning that fails runs with warnings as errors).
load_jvp_decompositions()
