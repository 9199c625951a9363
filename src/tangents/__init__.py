"""tangents: neural tangent kernels and infinitely wide networks, native to PyTorch.

The table of contents. Names are imported on first use (PEP 562), so ``import tangents``
and the command line's ``--help`` do not wait for torch; ``from tangents import stax`` and
``tangents.empirical_ntk_fn`` work as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

#: Public name -> the module that defines it (relative to this package).
_WHERE: dict[str, str] = {
    # The spine
    "Kernel": "._kernel",
    "stax": ".stax",
    # Computing large kernels
    "batch": ".blocks",
    "RunawayWorkWarning": ".blocks",
    # Training dynamics and inference
    "predict": ".predict",
    # Empirical kernels of finite networks
    "empirical": ".empirical",
    "NtkImplementation": ".empirical",
    "empirical_kernel_fn": ".empirical",
    "empirical_nngp_fn": ".empirical",
    "empirical_ntk_fn": ".empirical",
    "empirical_ntk_vp_fn": ".empirical",
    "linearize": "._linearize",
    "taylor_expand": "._linearize",
    # Kernels estimated by sampling finite networks
    "monte_carlo_kernel_fn": ".monte_carlo",
    # Kernels larger than memory: stores and clusters
    "store": ".store",
    "KernelStore": ".store",
    "compute_kernel": ".store",
    # scikit-learn estimators and GP kernel (optional dependency: tangents[sklearn])
    "sklearn": ".sklearn",
    # The theory's claims on finite networks, and figures
    "evidence": ".evidence",
    "plot": ".plot",
    # torch.nn models lifted to stax
    "from_torch": ".lift",
}

#: Modules that need an optional dependency: reachable as attributes, left out of ``import *``.
_OPTIONAL = {"sklearn"}

__all__ = ["__version__", *(name for name in _WHERE if name not in _OPTIONAL)]

_MODULES = {"stax", "predict", "empirical", "store", "sklearn", "evidence", "plot"}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'tangents' has no attribute {name!r}")
    module = importlib.import_module(where, __name__)
    value = module if name in _MODULES else getattr(module, name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(["__version__", *_WHERE])  # optional modules too: public, only not in import *


if TYPE_CHECKING:
    from . import empirical as empirical
    from . import evidence as evidence
    from . import plot as plot
    from . import predict as predict
    from . import sklearn as sklearn
    from . import stax as stax
    from . import store as store
    from ._kernel import Kernel as Kernel
    from .blocks import RunawayWorkWarning as RunawayWorkWarning
    from .blocks import batch as batch
    from .empirical import NtkImplementation as NtkImplementation
    from .empirical import empirical_kernel_fn as empirical_kernel_fn
    from .empirical import empirical_nngp_fn as empirical_nngp_fn
    from .empirical import empirical_ntk_fn as empirical_ntk_fn
    from .empirical import empirical_ntk_vp_fn as empirical_ntk_vp_fn
    from ._linearize import linearize as linearize
    from ._linearize import taylor_expand as taylor_expand
    from .lift import from_torch as from_torch
    from .monte_carlo import monte_carlo_kernel_fn as monte_carlo_kernel_fn
    from .store import KernelStore as KernelStore
    from .store import compute_kernel as compute_kernel
