"""Private implementation of :mod:`tangents.empirical` (one idea per module)."""

import warnings

# torch.func.jvp imports this module lazily on first use, and importing it calls the
# deprecated torch.jit.script (a DeprecationWarning that fails runs with warnings as errors).
# Import it once here, with that one warning silenced.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=DeprecationWarning)
    try:
        import torch._decomp.decompositions_for_jvp  # noqa: F401
    except Exception:  # pragma: no cover - private module moved in a future torch
        pass
