"""The block engine: kernels computed block by block, with bounded memory.

Floor 2 of the package: it knows the `Kernel` record (floor 1) and nothing of ``stax``, the
empirical kernels, stores or Dask, which call it. One plan of blocks (`plan_blocks`) and one
per-block call (`block_call`) serve every way of running a kernel in blocks:

* in memory: `tiled` (what large ``kernel_fn`` calls and `batch` do), tiles in threads;
* into a store: `tangents.store.compute_kernel` with `run_in_process` (blocks in turn,
  writing overlapped with computing);
* as Dask tasks: `tangents.distributed`.

`BlockProgress` is the progress bar they share.
"""

from ._plan import Block as Block
from ._plan import BlockPlan as BlockPlan
from ._plan import block_arguments as block_arguments
from ._plan import block_call as block_call
from ._plan import leading_size as leading_size
from ._plan import plan_blocks as plan_blocks
from ._plan import slice_inputs as slice_inputs
from ._progress import BlockProgress as BlockProgress
from ._progress import inner_bars_hidden as inner_bars_hidden
from ._run import one_intra_op_thread as one_intra_op_thread
from ._run import run_in_process as run_in_process
from ._run import run_threaded as run_threaded
from ._estimate import RunawayWorkWarning as RunawayWorkWarning
from ._tiles import available_memory as available_memory
from ._tiles import batch as batch
from ._tiles import first_tensor as first_tensor
from ._tiles import is_analytic as is_analytic
from ._tiles import swap_pairs as swap_pairs
from ._tiles import tiled as tiled

__all__ = [
    "RunawayWorkWarning",
    "Block",
    "BlockPlan",
    "BlockProgress",
    "available_memory",
    "batch",
    "block_arguments",
    "block_call",
    "first_tensor",
    "inner_bars_hidden",
    "is_analytic",
    "leading_size",
    "one_intra_op_thread",
    "plan_blocks",
    "run_in_process",
    "run_threaded",
    "slice_inputs",
    "swap_pairs",
    "tiled",
]
