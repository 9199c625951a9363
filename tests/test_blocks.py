"""The block engine's one plan (`plan_blocks`), its per-block call and the in-process executor."""

from __future__ import annotations

import re
import threading
import time

import pytest
import torch

from tangents.blocks import Block, block_arguments, block_call, plan_blocks, run_in_process


def test_symmetric_plan_is_the_upper_triangle_and_covers_every_pair_once():
    plan = plan_blocks(10, None, 3, symmetric=True)
    assert plan.grid == (4, 4)
    assert [b.index for b in plan] == [(i, j) for i in range(4) for j in range(i, 4)]
    # Every unordered pair {a, b} of the 10 examples lies in exactly one block (or its mirror).
    covered = torch.zeros(10, 10, dtype=torch.int64)
    for b in plan:
        covered[b.rows, b.cols] += 1
        if not b.on_diagonal:
            covered[b.cols, b.rows] += 1
    assert torch.equal(covered, torch.ones(10, 10, dtype=torch.int64))
    assert plan.pairs == 10 * 11 // 2 + sum(b.shape[0] * (b.shape[0] - 1) // 2 for b in plan if b.on_diagonal)
    assert [b.on_diagonal for b in plan].count(True) == 4
    assert plan.blocks[-1].rows == slice(9, 10)  # a block size that does not divide N


def test_full_plans():
    plan = plan_blocks(7, 5, 2, symmetric=True)  # x2 given: symmetry does not apply
    assert not plan.symmetric and len(plan) == 4 * 3 and not any(b.on_diagonal for b in plan)
    assert plan.pairs == 35
    plan = plan_blocks(5, None, 2, symmetric=False)  # x2=None, not symmetric (non-analytic kernels)
    assert len(plan) == 9 and [b.index for b in plan if b.on_diagonal] == [(0, 0), (1, 1), (2, 2)]
    assert plan.block(2, 0) == Block((2, 0), slice(4, 5), slice(0, 2), False)
    with pytest.raises(IndexError, match=r"BlockPlan.block: \(3, 0\) is outside the 3 x 3 grid"):
        plan.block(3, 0)
    with pytest.raises(ValueError, match=r"plan_blocks: block_size must be a positive integer, got 0"):
        plan_blocks(5, None, 0, symmetric=True)


def test_block_call_slices_inputs_and_per_example_pairs():
    x1, x2 = torch.arange(6.0)[:, None], torch.arange(10.0, 14.0)[:, None]
    p1, p2 = torch.arange(6), torch.arange(100, 104)
    seen = []

    def kernel_fn(a, b, get, pattern):
        seen.append((a[:, 0].tolist(), None if b is None else b[:, 0].tolist(), [t.tolist() for t in pattern]))
        return get

    plan = plan_blocks(6, 4, 4, symmetric=False)
    assert block_call(kernel_fn, x1, x2, "ntk", plan.block(1, 0), {"pattern": (p1, p2)}) == "ntk"
    assert seen[-1] == ([4.0, 5.0], [10.0, 11.0, 12.0, 13.0], [[4, 5], [100, 101, 102, 103]])
    plan = plan_blocks(6, None, 4, symmetric=True)
    block_call(kernel_fn, x1, None, None, plan.block(0, 1), {"pattern": (p1, p1)})
    assert seen[-1] == ([0.0, 1.0, 2.0, 3.0], [4.0, 5.0], [[0, 1, 2, 3], [4, 5]])
    xa, xb, kwargs = block_arguments(x1, None, {"pattern": (p1, None), "n": 3}, plan.block(1, 1))
    assert xb is None and kwargs["n"] == 3 and kwargs["pattern"][1].tolist() == [4, 5]


def test_run_in_process_one_block_at_a_time_overlaps_writing_and_keeps_order():
    plan = plan_blocks(6, None, 2, symmetric=True)
    writer_threads, done = set(), []

    def write(block, result):
        writer_threads.add(threading.current_thread().name)
        return result * 10

    run_in_process(list(plan), lambda b: b.index[0] + b.index[1], write, lambda b, w: done.append((b.index, w)))
    assert done == [(b.index, 10 * sum(b.index)) for b in plan]
    assert writer_threads and all(name.startswith("tangents-writer") for name in writer_threads)


def test_run_in_process_parallel_blocks_use_one_thread_each():
    plan = list(plan_blocks(12, None, 2, symmetric=True))  # 21 blocks
    seen, done = [], []

    def compute(block):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return block.index

    run_in_process(plan, compute, lambda b, r: r, lambda b, w: done.append(w), workers=2)
    assert sorted(done) == sorted(b.index for b in plan)  # each block once, in any order
    assert {threads for _, threads in seen} == {1}
    assert {name for name, _ in seen} <= {"tangents-block-0", "tangents-block-1"}


@pytest.mark.parametrize("workers", [1, 2])
def test_run_in_process_stops_on_interrupt_and_keeps_what_was_written(workers):
    plan = list(plan_blocks(12, None, 2, symmetric=True))
    written = []

    def compute(block):
        if block.index == (1, 1):
            raise KeyboardInterrupt
        return block.index

    with pytest.raises(KeyboardInterrupt):
        run_in_process(plan, compute, lambda b, r: written.append(r), None, workers=workers)
    assert (1, 1) not in written and len(set(written)) == len(written) < len(plan)
    if workers == 1:  # in order: the six blocks before (1, 1) were computed, and all six written
        assert written == [(0, j) for j in range(6)]


def test_run_in_process_passes_on_errors():
    plan = list(plan_blocks(12, None, 2, symmetric=True))

    def compute(block):
        if block.index == (2, 3):
            raise ValueError("kernel_fn: bad block")
        return block.index

    with pytest.raises(ValueError, match="kernel_fn: bad block"):
        run_in_process(plan, compute, lambda b, r: r, None, workers=2)


def test_progress_bar_shows_blocks_skipped_pairs_per_second_and_eta():
    import io

    from tangents.blocks import BlockProgress

    out = io.StringIO()
    bar = BlockProgress(10, 1000, done_blocks=2, done_pairs=200, show=True, file=out)
    time.sleep(0.05)
    bar.update(100)
    bar.update(100)
    bar.close()
    text = out.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    assert "kernel: blocks 4/10 (2 skipped on resume)" in text, text
    assert "400/1.00k" in text and "pair/s" in text, text  # pairs done / total, their rate
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", text), text  # elapsed < ETA
    assert (bar.computed_blocks, bar.computed_pairs, bar.skipped) == (2, 200, 2)
    hidden = io.StringIO()
    BlockProgress(3, 30, show=False, file=hidden).close()
    assert hidden.getvalue() == ""
