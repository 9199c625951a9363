"""Executors of the blocks of a plan, in this process.

* `run_threaded`: many small tiles at once, in threads of one intra-op thread each (or in
  turn with all threads) — the tiles of one ``kernel_fn`` call assembled in memory;
* `run_in_process`: big blocks, several at a time in threads of one intra-op thread each
  (as Dask workers compute them) while this thread writes the blocks computed; or, for a
  few blocks, one after another with all threads (``kernel_fn``'s own threaded tiles),
  writing block ``k`` while block ``k + 1`` is computed.

The Dask executor (`tangents.distributed`) runs the same blocks as tasks.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch

from ._plan import Block

__all__ = ["one_intra_op_thread", "run_in_process", "run_threaded"]

T = TypeVar("T")


@contextlib.contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """Torch ops in this thread use one thread inside the ``with`` block.

    Small ops spread over several threads stall on every op's thread barrier when the cores
    are shared (several times slower on a loaded machine); a block or tile run this way also
    has the same numbers on every executor."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_threaded(workers: int, fn: Callable[[T], None], items: Sequence[T], on_done: Callable[[T], None] | None = None) -> None:
    """``fn`` on every item, in ``workers`` threads of one intra-op thread each (or in turn
    with all threads for ``workers=1``); ``on_done(item)`` after each, in this thread.

    With ``workers > 1`` every item runs with one intra-op thread, also a single one (here):
    the result of a tile does not depend on which executor ran it."""
    if workers > 1 and len(items) == 1:  # one item: here, but with one intra-op thread too
        with one_intra_op_thread():
            fn(items[0])
        if on_done is not None:
            on_done(items[0])
    elif workers > 1 and items:
        # Tiles in parallel, one thread each, rather than many small multi-threaded ops per
        # tile: the latter stall on every op's thread barrier when cores are shared.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            # (OpenMP's thread count is per thread: each worker sets its own.)
            with concurrent.futures.ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                try:
                    for item, _ in zip(items, pool.map(fn, items)):
                        if on_done is not None:
                            on_done(item)
                except BaseException:  # an error or Ctrl-C: do not wait for the items not yet started
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
        finally:
            torch.set_num_threads(threads)
    else:
        for item in items:
            fn(item)
            if on_done is not None:
                on_done(item)


def run_in_process(
    blocks: Sequence[Block],
    compute: Callable[[Block], Any],
    write: Callable[[Block, Any], Any],
    on_done: Callable[[Block, Any], None] | None = None,
    *,
    workers: int = 1,
) -> None:
    """Computes the blocks in this process and writes each as soon as it is computed.

    ``workers > 1`` (and at least two blocks per worker): ``workers`` blocks at a time, each in
    a thread of one intra-op thread (as a Dask worker computes them), while two writer threads
    write the blocks computed. ``workers=1``: one block at a time here, with all of torch's threads
    (``kernel_fn``'s threaded tiles), each written in a writer thread while the next is computed.
    ``on_done(block, written)`` gets what ``write(block, result)`` returned, in this thread.
    At most ``2 workers + 2`` blocks' results are alive at once.

    Interrupted (Ctrl-C) or failing, it stops computing, keeps every block already written
    (the one being written is finished or left unmarked), and re-raises.
    """
    if workers > 1 and len(blocks) >= 2 * workers:
        _run_parallel(blocks, compute, write, on_done, workers)
        return
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tangents-writer") as writer:
        pending: tuple[Block, concurrent.futures.Future[Any]] | None = None
        try:
            for block in blocks:
                result = compute(block)
                if pending is not None:
                    done, pending = pending, None
                    _finish(done, on_done)
                pending = (block, writer.submit(write, block, result))
                del result
            if pending is not None:
                done, pending = pending, None
                _finish(done, on_done)
        except BaseException:
            if pending is not None:  # the block computed last is written before stopping
                concurrent.futures.wait([pending[1]])
                if pending[1].exception() is None and on_done is not None:
                    on_done(pending[0], pending[1].result())
            raise


def _finish(pending: tuple[Block, concurrent.futures.Future[Any]], on_done: Callable[[Block, Any], None] | None) -> None:
    block, future = pending
    written = future.result()
    if on_done is not None:
        on_done(block, written)


#: Writer threads of a parallel run.
_WRITERS = 2


class _Failed:
    """A computing thread's exception, passed to the writing thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _run_parallel(
    blocks: Sequence[Block],
    compute: Callable[[Block], Any],
    write: Callable[[Block, Any], Any],
    on_done: Callable[[Block, Any], None] | None,
    workers: int,
) -> None:
    todo: queue.Queue[Block] = queue.Queue()
    for block in blocks:
        todo.put(block)
    computed: queue.Queue[tuple[Block, Any]] = queue.Queue(maxsize=workers)
    stop = threading.Event()

    def computing() -> None:
        torch.set_num_threads(1)
        while not stop.is_set():
            try:
                block = todo.get_nowait()
            except queue.Empty:
                return
            try:
                item: tuple[Block, Any] = (block, compute(block))
            except BaseException as error:  # handed to the writing thread, which raises it
                item = (block, _Failed(error))
            while not stop.is_set():
                try:
                    computed.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue

    # Daemon threads: an interrupted run does not wait for the blocks being computed.
    threads = [threading.Thread(target=computing, name=f"tangents-block-{i}", daemon=True) for i in range(workers)]
    for thread in threads:
        thread.start()
    # Two writer threads: one block's write waiting for the disk (fsync) does not hold up the
    # next; leaving the pool waits for the writes in flight, so no block computed is lost.
    pending: dict[concurrent.futures.Future[Any], Block] = {}
    received = 0
    try:
        with concurrent.futures.ThreadPoolExecutor(_WRITERS, thread_name_prefix="tangents-writer") as writers:
            while received < len(blocks) or pending:
                for future in [f for f in pending if f.done()]:
                    block = pending.pop(future)
                    written = future.result()
                    if on_done is not None:
                        on_done(block, written)
                if received < len(blocks) and len(pending) < _WRITERS:
                    try:
                        block, result = computed.get(timeout=0.05)  # (a timeout keeps Ctrl-C responsive)
                    except queue.Empty:
                        if not any(thread.is_alive() for thread in threads) and computed.empty():
                            raise RuntimeError("run_in_process: the computing threads stopped before every block was done.")
                        continue
                    received += 1
                    if isinstance(result, _Failed):
                        raise result.error
                    pending[writers.submit(write, block, result)] = block
                    del result
                else:
                    concurrent.futures.wait(list(pending), timeout=0.05, return_when=concurrent.futures.FIRST_COMPLETED)
    finally:
        stop.set()
