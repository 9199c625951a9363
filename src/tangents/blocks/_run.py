"""Executors of the blocks of a plan, in this process.

* `run_threaded`: many small tiles at once, in threads of one intra-op thread each (or in
  turn with all threads) — the tiles of one ``kernel_fn`` call assembled in memory;
* `run_in_process`: big blocks one after another (each with all threads, through
  ``kernel_fn``'s own threaded tiles), each block's result handed to a writer thread so
  that writing block ``k`` overlaps computing block ``k + 1``.

The Dask executor (`tangents.distributed`) runs the same blocks as tasks.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from ._plan import Block

__all__ = ["run_in_process", "run_threaded"]

T = TypeVar("T")


def run_threaded(workers: int, fn: Callable[[T], None], items: Sequence[T], on_done: Callable[[T], None] | None = None) -> None:
    """``fn`` on every item, in ``workers`` threads of one intra-op thread each (or in turn
    with all threads for ``workers=1``); ``on_done(item)`` after each, in this thread.

    With ``workers > 1`` every item runs with one intra-op thread, also a single one (here):
    the result of a tile does not depend on which executor ran it."""
    if workers > 1 and len(items) == 1:  # one item: here, but with one intra-op thread too
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            fn(items[0])
        finally:
            torch.set_num_threads(threads)
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
                for item, _ in zip(items, pool.map(fn, items)):
                    if on_done is not None:
                        on_done(item)
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
    overlap: bool = True,
) -> None:
    """Computes the blocks in turn in this thread and writes each in a writer thread.

    ``compute(block)`` runs here (with all of torch's threads); ``write(block, result)`` runs
    in one writer thread while the next block is computed (``overlap=False``: here, after
    it); ``on_done(block, written)`` gets what ``write`` returned, here, in block order.
    At most two blocks' results are alive at once (the one written and the one computed).

    Interrupted (Ctrl-C) or failing, it lets the write in flight finish (so a block computed
    is not lost) and re-raises.
    """
    if not overlap:
        for block in blocks:
            written = write(block, compute(block))
            if on_done is not None:
                on_done(block, written)
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
