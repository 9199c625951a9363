"""The block engine: kernels computed block by block, with bounded memory.

Floor 2 of the package: it knows the `Kernel` record (floor 1) and nothing of ``stax`` or
the empirical kernels, which call it.
"""

from ._estimate import RunawayWorkWarning as RunawayWorkWarning
from ._tiles import available_memory as available_memory
from ._tiles import batch as batch
from ._tiles import first_tensor as first_tensor
from ._tiles import swap_pairs as swap_pairs
from ._tiles import tiled as tiled

__all__ = ["RunawayWorkWarning", "available_memory", "batch", "first_tensor", "swap_pairs", "tiled"]
