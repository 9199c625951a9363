"""Every private torch API tangents uses, in one place, each with a fallback where one exists.

torch promises nothing about names that start with an underscore. Each is imported here
once; `tests/test_torch_private.py` checks that each still exists and behaves as used, so a
torch release that changes one fails that test by name instead of breaking a kernel deep
inside.

* ``tree_flatten``, ``tree_unflatten``, ``tree_map`` (``torch.utils._pytree``): nested
  tuples/lists/dicts of tensors, as ``torch.func`` flattens them. No public equivalent.
* ``is_functorch_wrapped``: whether a tensor is a ``torch.func`` transform's wrapper (a
  vmap/grad/jvp level), via ``torch._C._functorch``; without it, ``True`` (assume the
  worst: callers then take their safe, differentiable path).
* ``C_LINEAR`` (``torch._C._nn.linear``) and ``TensorBase`` (``torch._C.TensorBase``): the
  functions ``F.linear`` and ``Tensor.matmul`` dispatch to, as seen by a
  ``TorchFunctionMode``; without them, only the public names are recognised.
* ``BATCH_NORMS`` (``nn.modules.batchnorm._BatchNorm``) and ``DROPOUTS``
  (``nn.modules.dropout._DropoutNd``): the base classes of torch's batch-norm and dropout
  layers (lazy and synchronised variants included); without them, tuples of the public
  classes.
* `load_jvp_decompositions`: imports ``torch._decomp.decompositions_for_jvp``, which
  ``torch.func.jvp`` imports lazily on first use (it warns, which fails runs with
  warnings as errors).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten as tree_flatten
from torch.utils._pytree import tree_map as tree_map
from torch.utils._pytree import tree_unflatten as tree_unflatten

__all__ = ["BATCH_NORMS", "C_LINEAR", "DROPOUTS", "TensorBase", "is_functorch_wrapped", "load_jvp_decompositions", "tree_flatten", "tree_map", "tree_unflatten"]

#: ``F.linear``'s C implementation (what a ``TorchFunctionMode`` may see instead of it).
C_LINEAR: Any = getattr(getattr(torch._C, "_nn", None), "linear", F.linear)
#: The C base class of ``torch.Tensor`` (its ``matmul`` is what ``x @ w`` may dispatch to).
TensorBase: type = getattr(torch._C, "TensorBase", torch.Tensor)

#: Every batch-norm layer of torch (``isinstance`` target): training mode uses batch statistics.
BATCH_NORMS: Any = getattr(torch.nn.modules.batchnorm, "_BatchNorm", None) or (
    torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)
#: Every dropout layer of torch (``isinstance`` target), each with its probability ``p``.
DROPOUTS: Any = getattr(torch.nn.modules.dropout, "_DropoutNd", None) or (
    torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d, torch.nn.AlphaDropout,
    torch.nn.FeatureAlphaDropout)

_functorch = getattr(torch._C, "_functorch", None)
_is_wrapped = getattr(_functorch, "is_functorch_wrapped_tensor", None)


def is_functorch_wrapped(t: torch.Tensor) -> bool:
    """Whether ``t`` is wrapped by a ``torch.func`` transform (``True`` if torch cannot say)."""
    return bool(_is_wrapped(t)) if _is_wrapped is not None else True


def load_jvp_decompositions() -> None:
    """Imports what ``torch.func.jvp`` would import lazily, with its deprecation warning silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=DeprecationWarning)
        try:
            import torch._decomp.decompositions_for_jvp  # noqa: F401
        except Exception:  # pragma: no cover - moved in a future torch; jvp imports what it needs
            pass
