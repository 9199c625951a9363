"""Blocks as tasks on a Dask cluster (``pip install 'tangents[distributed]'``).

`tangents.store.compute_kernel(..., client=client)` hands its blocks to `run_on_dask`: the
inputs are written once into the store's directory, which every worker reads once per process
(so they survive a cluster whose every worker is replaced during a long run, which scattered
data would not); each block is one task that computes the block and writes it into the store
itself, and the driver only collects each task's small manifest entry. Any ``dask.distributed`` cluster
works: a `LocalCluster` (`local_client`), SSH, dask-jobqueue (SLURM, PBS) or Kubernetes —
all workers must see the store's directory (a shared filesystem for several machines).

A worker killed mid-task (pre-empted, out of memory, SIGKILL) loses its task; the scheduler
runs it again on another worker, and since a block's numbers depend only on its inputs, the
store ends bit-identical to one computed in a single process. Torch inside a worker uses
the threads its nanny allows (``OMP_NUM_THREADS``, one per worker thread by default).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .blocks import Block

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["connect", "local_client", "run_on_dask"]

_INSTALL = "pip install 'tangents[distributed]' (or: pip install 'dask[distributed]')"


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as e:
        raise ImportError(f"tangents.distributed needs dask.distributed, which is not installed: {_INSTALL}.") from e
    return distributed


def run_on_dask(
    client: Client,
    blocks: Sequence[Block],
    task: Callable[[Block, Any], Any],
    payload: Any,
    on_done: Callable[[Block, Any], None],
    *,
    retries: int = 1,
    timeout: float | None = None,
    scatter: bool = True,
    name: str = "tangents-block",
) -> None:
    """Runs ``task(block, payload)`` for every block as Dask tasks.

    Args:
        client: a ``distributed.Client``.
        blocks: the blocks to compute.
        task: a picklable callable; it computes a block and writes it where it belongs (the
            store), returning something small (a manifest entry).
        payload: what every task needs (the inputs): scattered to every worker once (and lost
            if every worker holding it is lost); with ``scatter=False`` passed to every task
            as it is (for a small reference to data the workers read themselves).
        on_done: ``on_done(block, returned)`` in this process as each task finishes.
        retries: times a task that *raised* is run again (a task whose worker died is
            rescheduled by Dask anyway, up to ``distributed.scheduler.allowed-failures``).
        timeout: seconds to wait for all tasks (``None``: no limit); then `TimeoutError`.
        name: prefix of the task keys (shown on the Dask dashboard).

    Raises:
        Whatever a task raised (after its retries); the other tasks are cancelled. Interrupted
        (Ctrl-C), the tasks are cancelled too; blocks written stay written.
    """
    distributed = _distributed()
    if not isinstance(client, distributed.Client):
        raise TypeError(f"run_on_dask: client must be a distributed.Client, got {type(client).__name__}.")
    if not blocks:
        return
    run = uuid.uuid4().hex[:8]
    scattered = client.scatter([payload], broadcast=True, hash=False)[0] if scatter else payload
    futures = {}
    try:
        for block in blocks:
            key = f"{name}-{run}-{block.index[0]}-{block.index[1]}"
            futures[client.submit(task, block, scattered, key=key, pure=False, retries=retries)] = block
        finished = 0
        try:
            for future in distributed.as_completed(list(futures), timeout=timeout):
                on_done(futures[future], future.result())
                finished += 1
        except TimeoutError as e:
            raise TimeoutError(
                f"run_on_dask: {len(blocks) - finished} of {len(blocks)} blocks were not done within the timeout of "
                f"{timeout} s (the blocks done stay done); run again to resume, with a longer timeout or more "
                f"workers."
            ) from e
    except BaseException:
        client.cancel(list(futures))
        raise
    finally:
        futures.clear()
        if scatter:
            with contextlib.suppress(Exception):
                client.cancel([scattered])


def connect(address: str, timeout: float = 30.0) -> Client:
    """A client of the Dask scheduler at ``address`` (e.g. ``tcp://10.0.0.1:8786``).

    Raises:
        OSError: no scheduler answered within ``timeout`` seconds.
    """
    distributed = _distributed()
    try:
        return distributed.Client(address, timeout=timeout)
    except (OSError, TimeoutError) as e:
        raise OSError(
            f"tangents kernel: no Dask scheduler answered at {address} within {timeout:.0f} s ({e}); start one "
            f"(dask scheduler) or check the address."
        ) from None


@contextlib.contextmanager
def local_client(n_workers: int, *, threads_per_worker: int = 1, timeout: float = 120.0) -> Iterator[Client]:
    """A `LocalCluster` of ``n_workers`` worker processes on this machine, and its client.

    Workers listen on 127.0.0.1 only; there is no dashboard. Closed on exit (within
    ``timeout`` seconds).

    Example:
        >>> with local_client(2) as client:
        ...     store = tangents.store.compute_kernel(kernel_fn, x, path="k.zarr", client=client)
    """
    distributed = _distributed()
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"local_client: n_workers must be a positive integer, got {n_workers!r}.")
    cluster = distributed.LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        processes=True,
        host="127.0.0.1",
        # No dashboard, and its web server on a free local port: None would try port 8787
        # first and warn when another cluster holds it.
        dashboard_address="127.0.0.1:0",
        timeout=timeout,
    )
    try:
        client = distributed.Client(cluster, timeout=timeout)
        try:
            yield client
        finally:
            client.close(timeout=timeout)
    finally:
        cluster.close(timeout=timeout)
