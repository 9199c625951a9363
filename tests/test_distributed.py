"""Kernel stores computed on a Dask cluster (`compute_kernel(..., client=...)`).

One `LocalCluster` of 2 worker processes (127.0.0.1 only, one thread each) serves the module;
it is started and closed here, and every wait is bounded. Stores filled by the cluster must be
bit-identical to stores filled in this process, also when a worker is killed (SIGKILL, by its
pid) in the middle of the run.

(``dashboard_address="127.0.0.1:0"``: with ``None``, distributed still starts its web server,
on port 8787 first, and warns when another cluster on this machine holds that port.)
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import signal
import threading
import time

import pytest
import torch

from tangents import stax
from tangents.store import compute_kernel

distributed = pytest.importorskip("distributed")

TIMEOUT = 120  # seconds: cluster start and close, and each computation


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                                       dashboard_address="127.0.0.1:0", timeout=TIMEOUT)
    client = distributed.Client(cluster, timeout=TIMEOUT)
    try:
        client.wait_for_workers(2, timeout=TIMEOUT)
        yield client
    finally:
        client.close(timeout=TIMEOUT)
        cluster.close(timeout=TIMEOUT)


def fc() -> stax.Layer:
    return stax.serial(stax.Dense(64, W_std=1.5, b_std=0.05), stax.Relu(), stax.Dense(1, W_std=1.5, b_std=0.05))


def cnn(channels: int = 8) -> stax.Layer:
    return stax.serial(stax.Conv(channels, (3, 3), padding="SAME", W_std=1.5, b_std=0.05), stax.Relu(),
                       stax.Conv(channels, (3, 3), padding="SAME", W_std=1.5, b_std=0.05), stax.Relu(),
                       stax.GlobalAvgPool(), stax.Dense(1, W_std=1.5, b_std=0.05))


def same_bytes(a, b) -> bool:
    return all(a[name][...].tobytes() == b[name][...].tobytes() for name in a.get)


def test_cluster_stores_are_bit_identical_to_in_process_ones(client, tmp_path):
    """FC and CNN, float32 and float64, x2=None and x2 given, a block that divides neither N."""
    nets = {"fc": (fc(), (6,), 11, 4), "cnn": (cnn(), (3, 5, 5), 7, 3)}
    writers = set()  # the processes that wrote blocks (each manifest entry names its pid)
    for name, (net, shape, n, block) in nets.items():
        for dtype in (torch.float32, torch.float64):
            g = torch.Generator().manual_seed(5)
            x1, x2 = torch.randn(n, *shape, generator=g, dtype=dtype), torch.randn(n - 2, *shape, generator=g, dtype=dtype)
            for second in (None, x2):
                tag = f"{name}_{dtype}_{second is None}"
                here = compute_kernel(net, x1, second, path=tmp_path / f"{tag}_here", block_size=block, durable=False,
                                      progress=False)
                there = compute_kernel(net, x1, second, path=tmp_path / f"{tag}_dask", block_size=block, client=client,
                                       timeout=TIMEOUT, durable=False, progress=False)
                assert there.last_run["computed"] == len(there.plan) == len(here.plan)
                assert same_bytes(here, there), tag
                if second is None:
                    symmetric = there
                writers |= {json.loads(f.read_text())["pid"] for f in (there.path / "manifest").glob("*.json")}
                assert not list(there.path.glob("*inputs-*"))  # the inputs' file is gone after the run
    assert writers == set(client.run(os.getpid, wait=True).values())  # both workers, not this process
    # a symmetric store (CNN, float64) read lazily on the workers, mirrored blocks included
    lazy = symmetric["ntk"].to_dask()[1:6, 0:7]
    on_workers = client.compute(lazy).result(timeout=TIMEOUT)
    assert on_workers.tobytes() == symmetric["ntk"][1:6, 0:7].tobytes()



def test_a_store_begun_in_process_is_finished_on_the_cluster(client, tmp_path):
    """Interrupted in this process (Ctrl-C in its fourth kernel_fn call), resumed on the
    cluster (first with a timeout too short: a TimeoutError saying so): the cluster computes
    exactly the blocks left, and the store is bit-identical to one filled in this process alone."""
    net = fc()
    x = torch.randn(17, 6, generator=torch.Generator().manual_seed(11), dtype=torch.float32)
    calls = []

    @functools.wraps(net.kernel_fn)  # the store fingerprints the stax layer behind it
    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) > 4:  # the shape probe, then three blocks
            raise KeyboardInterrupt
        return net.kernel_fn(*args, **kwargs)

    with pytest.raises(KeyboardInterrupt):
        compute_kernel(interrupted, x, path=tmp_path / "k.zarr", block_size=4, durable=False, progress=False)
    with pytest.raises(TimeoutError, match=r"run_on_dask: \d+ of \d+ blocks were not done within the timeout of 1e-06 s"):
        compute_kernel(net, x, path=tmp_path / "k.zarr", client=client, timeout=1e-6, durable=False, progress=False)
    resumed = compute_kernel(net, x, path=tmp_path / "k.zarr", client=client, timeout=TIMEOUT, durable=False,
                             progress=False)
    total = len(resumed.plan)  # 5 x 5 grid, upper triangle: 15
    assert total == 15 and 1 <= resumed.last_run["skipped"] <= 3 + 11  # (blocks the timed-out run finished count too)
    assert resumed.last_run["computed"] == total - resumed.last_run["skipped"]
    here = compute_kernel(net, x, path=tmp_path / "here.zarr", block_size=4, durable=False, progress=False)
    assert same_bytes(here, resumed)

def test_command_line_on_a_scheduler_and_on_local_workers(client, tmp_path, capsys, monkeypatch):
    """``tangents kernel --scheduler ADDRESS`` (this module's cluster) and ``--workers K`` (its
    `local_client`, replaced by this cluster so that no second one starts) fill stores
    bit-identical to an in-process one; `connect` to an address where no scheduler answers says so.
    (Before the worker-kill test: a restarted worker's first task imports torch again, ~4 s.)"""
    import contextlib

    import numpy as np

    import tangents.distributed
    from tangents.cli import main
    from tangents.store import KernelStore

    x = np.random.default_rng(3).standard_normal((13, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    command = ["kernel", "--arch", "fc", "--x1", str(tmp_path / "x.npy"), "--block", "4", "--no-fsync", "--json"]
    assert main([*command, "--out", str(tmp_path / "here.zarr")]) == 0
    here = KernelStore.open(tmp_path / "here.zarr")
    assert main([*command, "--out", str(tmp_path / "scheduler.zarr"), "--scheduler", client.scheduler.address]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["computed"] == summary["blocks"] == 10  # 4 x 4 grid, upper triangle
    writers = {json.loads(f.read_text())["pid"] for f in (tmp_path / "scheduler.zarr" / "manifest").glob("*.json")}
    assert writers and os.getpid() not in writers  # the workers wrote the blocks
    assert same_bytes(here, KernelStore.open(tmp_path / "scheduler.zarr"))
    asked = []

    @contextlib.contextmanager
    def this_cluster(n_workers: int, **kwargs):
        asked.append(n_workers)
        yield client

    monkeypatch.setattr(tangents.distributed, "local_client", this_cluster)
    assert main([*command, "--out", str(tmp_path / "workers.zarr"), "--workers", "2"]) == 0
    assert asked == [2] and same_bytes(here, KernelStore.open(tmp_path / "workers.zarr"))
    capsys.readouterr()
    with pytest.raises(OSError, match=r"no Dask scheduler answered at tcp://127\.0\.0\.1:9 within 1 s .*start one"):
        tangents.distributed.connect("tcp://127.0.0.1:9", timeout=1)


@pytest.mark.parametrize("victims", [1, 2], ids=["one_worker", "every_worker"])
def test_a_worker_killed_mid_run_changes_nothing(client, tmp_path, victims):
    """SIGKILL one worker process (by pid) after some blocks: its task runs again elsewhere, the
    nanny starts a new worker, and the store is bit-identical to an in-process one. Every
    worker killed at once: the new workers read the inputs from the store (scattered data
    would be lost with the workers) and finish the same store."""
    net = cnn(4)
    x = torch.randn(14, 3, 6, 6, generator=torch.Generator().manual_seed(7))
    block, total = 2, 7 * 8 // 2  # 28 blocks
    path = tmp_path / "killed.zarr"
    pids = client.run(os.getpid, wait=True)
    assert len(pids) == 2
    victim = list(pids.values())[:victims]
    killed: dict = {}

    def kill_when_some_blocks_are_done() -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            done = len(list((path / "manifest").glob("*.json"))) if (path / "manifest").is_dir() else 0
            if done >= 4:
                for pid in victim:
                    os.kill(pid, signal.SIGKILL)
                killed["done"] = done
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_when_some_blocks_are_done)
    killer.start()
    try:
        store = compute_kernel(net, x, path=path, block_size=block, client=client, timeout=TIMEOUT, durable=False,
                               progress=False)
    finally:
        killer.join(timeout=TIMEOUT)
    assert 4 <= killed["done"] < total, killed  # killed mid-run
    assert store.last_run["computed"] == total and store.complete
    client.wait_for_workers(2, timeout=TIMEOUT)  # the nanny restarted the killed worker
    assert not set(victim) & set(client.run(os.getpid, wait=True).values())
    reference = compute_kernel(net, x, path=tmp_path / "reference.zarr", block_size=block, durable=False, progress=False)
    assert same_bytes(store, reference)


def test_inputs_reach_the_workers_through_the_store_checked(tmp_path):
    """Tasks get a reference to the inputs written in the store (not scattered data, lost when
    every worker is replaced); a worker reads them once, checked against the driver's hash."""
    from tangents._store import _compute

    payload = _compute._Payload(torch.arange(6.0).reshape(3, 2), None, {"mask_constant": 1.0})
    reference = _compute._StoredPayload.write(tmp_path, payload)
    assert reference.file.startswith(str(tmp_path / ".inputs-")) and len(pickle.dumps(reference)) < 500
    loaded = reference.load()
    assert torch.equal(loaded.x1, payload.x1) and loaded.x2 is None and loaded.kwargs == {"mask_constant": 1.0}
    assert reference.load() is loaded  # once per process
    _compute._LOADED.clear()
    with open(reference.file, "r+b") as f:  # garbled on the shared disk
        f.seek(-2, os.SEEK_END)
        f.write(b"xx")
    with pytest.raises(RuntimeError, match=r"the inputs at .* are not those the driver wrote \(sha256 differs\)"):
        reference.load()
    os.unlink(reference.file)
    with pytest.raises(OSError, match=r"this Dask worker cannot read the inputs at .*every worker must see the store"):
        reference.load()
