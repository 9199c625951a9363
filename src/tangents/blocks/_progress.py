"""Progress of a blocked computation: blocks done of the total, pairs per second, ETA.

One tqdm bar counts *pairs* (so its rate is pairs per second and its ETA accounts for the
shorter last blocks) and shows the blocks in its description: ``blocks 12/465 (skipped 200
on resume)``.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from tqdm.auto import tqdm

__all__ = ["BlockProgress", "inner_bars_hidden"]

_hidden = 0
_hidden_lock = threading.Lock()


@contextlib.contextmanager
def inner_bars_hidden() -> Iterator[None]:
    """Bars that would appear on their own (``show=None``) stay hidden inside the ``with``
    block, in every thread: the tiles of each block of a store have no bar of their own
    under the store's."""
    global _hidden
    with _hidden_lock:
        _hidden += 1
    try:
        yield
    finally:
        with _hidden_lock:
            _hidden -= 1


class BlockProgress:
    """A progress bar over the blocks of a computation.

    Args:
        total_blocks: blocks of the whole computation (done before or not).
        total_pairs: pairs of the whole computation.
        done_blocks: blocks already done when this run starts (skipped on resume).
        done_pairs: their pairs.
        show: ``True`` always shows the bar, ``False`` never; ``None`` shows it once the run
            has lasted two seconds (unless inside `inner_bars_hidden`).
        desc: the bar's label.
        leave: keep the finished bar on screen (default: when ``show`` is ``True``).
        file: where the bar is written (default: standard error).
    """

    def __init__(
        self,
        total_blocks: int,
        total_pairs: int,
        done_blocks: int = 0,
        done_pairs: int = 0,
        *,
        show: bool | None = None,
        desc: str = "kernel",
        leave: bool | None = None,
        file: Any = None,
    ) -> None:
        self.total_blocks = total_blocks
        self.done_blocks = done_blocks
        self.skipped = done_blocks
        self.computed_blocks = 0
        self.computed_pairs = 0
        self.started = time.perf_counter()
        self._desc = desc
        self._bar = tqdm(
            total=total_pairs,
            initial=done_pairs,
            unit="pair",
            unit_scale=True,
            desc=self._describe(),
            disable=show is False or (show is None and _hidden > 0),
            delay=0 if show else 2.0,
            leave=bool(show) if leave is None else leave,
            file=file if file is not None else sys.stderr,
            dynamic_ncols=True,
            smoothing=0.1,
        )

    def _describe(self) -> str:
        text = f"{self._desc}: blocks {self.done_blocks}/{self.total_blocks}"
        if self.skipped:
            text += f" ({self.skipped} skipped on resume)"
        return text

    def update(self, pairs: int, blocks: int = 1) -> None:
        """Counts ``blocks`` more blocks of ``pairs`` pairs as done."""
        self.done_blocks += blocks
        self.computed_blocks += blocks
        self.computed_pairs += pairs
        self._bar.set_description_str(self._describe(), refresh=False)
        self._bar.update(pairs)

    @property
    def pairs_per_second(self) -> float:
        """Pairs computed per second in this run (0 before the first block)."""
        elapsed = time.perf_counter() - self.started
        return self.computed_pairs / elapsed if elapsed > 0 else 0.0

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> BlockProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
