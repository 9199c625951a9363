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
import queue
import threading
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
    workers: int = 1,
) -> None:
    """Computes the blocks in this process and writes each as soon as it is computed.

    ``workers > 1`` (and at least two blocks per worker): ``workers`` blocks at a time, each in
    a thread of one intra-op thread (as a Dask worker computes them), while this thread writes
    the blocks computed. ``workers=1``: one block at a time here, with all of torch's threads
    (``kernel_fn``'s threaded tiles), each written in a writer thread while the next is computed.
    ``on_done(block, written)`` gets what ``write(block, result)`` returned, in this thread.
    At most ``2 workers + 1`` blocks' results are alive at once.

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
    try:
        for _ in range(len(blocks)):
            while True:
                try:
                    block, result = computed.get(timeout=0.1)  # (a timeout keeps Ctrl-C responsive)
                    break
                except queue.Empty:
                    if not any(thread.is_alive() for thread in threads) and computed.empty():
                        raise RuntimeError("run_in_process: the computing threads stopped before every block was done.")
            if isinstance(result, _Failed):
                raise result.error
            written = write(block, result)
            del result
            if on_done is not None:
                on_done(block, written)
    finally:
        stop.set()
