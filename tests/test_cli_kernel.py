"""``tangents kernel``: stores from the command line, --status, bad arguments, Ctrl-C.

Oracles: neural-tangents' kernels of a manifest architecture given as ``--arch FILE``
(float64, 1e-8), and the in-memory ``kernel_fn`` of the preset for the others.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from reference_cases import CASES, load, relative_error
from tangents import stax
from tangents.cli import main
from tangents.store import KernelStore

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["kernel", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_and_argument_errors_answer_before_torch_is_imported():
    probe = (
        "import sys\n"
        "from tangents.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit as e:\n"
        "    print('exit', e.code)\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    for args in (["kernel", "--help"], ["kernel", "--arch", "fc"], ["kernel", "--status", "x", "--block", "3"]):
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
        assert "torch imported: False" in done.stdout, (args, done.stdout, done.stderr)
    done = subprocess.run([sys.executable, "-m", "tangents", "--help"], capture_output=True, text=True, timeout=120)
    assert "tangents kernel" in done.stdout  # listed among the commands


@pytest.mark.parametrize(
    "args,message",
    [
        (["--arch", "fc", "--out", "s"], r"the following arguments are required: --x1 \(or --status STORE\)"),
        (["--status", "s", "--arch", "fc"], r"--status only reads a store; drop --arch"),
        (["--arch", "vgg", "--x1", "x.npy", "--out", "s"], r"--arch 'vgg' is neither a JSON file nor a preset \(fc, cnn"),
        (["--arch", "fc", "--x1", "missing.npy", "--out", "s"], r"--x1 'missing.npy': no such file"),
        (["--get", "nngp,cov1"], r"argument --get: expected nngp, ntk or nngp,ntk, got 'nngp,cov1'"),
        (["--block", "0"], r"argument --block: expected a positive integer, got 0"),
        (["--workers", "2", "--scheduler", "tcp://a:1"], r"argument --scheduler: not allowed with argument --workers"),
        (["--verify", "--arch", "fc"], r"--verify goes with --status STORE"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "x.npy", np.zeros((3, 4)))
    with pytest.raises(SystemExit) as exit_info:
        main(["kernel", *args])
    assert exit_info.value.code == 2
    import re

    assert re.search(message, capsys.readouterr().err), capsys.readouterr()


def test_preset_store_status_and_resume(capsys, tmp_path):
    x = np.random.default_rng(0).standard_normal((30, 7))
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "k.zarr"
    code, text, err = run(capsys, "--arch", "fc", "--x1", tmp_path / "x.npy", "--out", out, "--block", 8, "--dtype", "float64",
                          "--quiet")
    assert code == 0 and text == "" and err == ""
    store = KernelStore.open(out)
    reference = stax.preset("fc", (7,)).kernel_fn(torch.from_numpy(x), None, ("nngp", "ntk"))
    for name in ("nngp", "ntk"):
        assert relative_error(store[name][...], getattr(reference, name).numpy()) <= 1e-12  # measured ~2e-16
    code, text, err = run(capsys, "--arch", "fc", "--x1", tmp_path / "x.npy", "--out", out, "--dtype", "float64", "--json")
    summary = json.loads(text)
    assert code == 0 and (summary["computed"], summary["skipped"], summary["blocks"]) == (0, 10, 10)
    assert "resuming nngp,ntk of (30, 7)" in err and "blocks 10/10 (10 skipped on resume)" in err, err  # the bar
    code, text, _ = run(capsys, "--status", out)
    assert code == 0
    for line in ("status     complete: 10/10 blocks done", "kernels    nngp, ntk: shape (30, 30), float64",
                 "blocks     8 x 8 examples, grid 4 x 4 (upper triangle)", "x1         shape (30, 7) float64, sha256",
                 "network    serial(Dense(out_dim=512, W_std=1.5, b_std=0.05"):
        assert line in text, line
    code, text, _ = run(capsys, "--status", out, "--verify", "--json")
    assert code == 0 and json.loads(text)["complete"] and json.loads(text)["fingerprint"]["dtype"] == "float64"
    # a different command on the same store is refused, saying what differs
    code, _, err = run(capsys, "--arch", "fc", "--x1", tmp_path / "x.npy", "--out", out, "--dtype", "float32")
    assert code == 1 and "is a kernel of something else" in err and "dtype is 'float64' in the store, 'float32' now" in err
    (out / "manifest" / "1.3.json").unlink()
    code, text, _ = run(capsys, "--status", out)
    assert code == 1 and "INCOMPLETE: 9/10 blocks done" in text and "missing    (1, 3): rerun the same command" in text


def test_json_architecture_file_npz_inputs_and_x2(capsys, tmp_path):
    """A manifest architecture (NT's channels-last layout: --nt-layout) reproduces NT's kernels."""
    case = "cnn_valid_s2_gap"
    data = load(case)
    (tmp_path / "net.json").write_text(json.dumps(CASES[case]["arch"]))
    np.savez(tmp_path / "inputs.npz", x1=data["x1"], x2=data["x2"])
    out = tmp_path / "k.zarr"
    code, _, err = run(capsys, "--arch", tmp_path / "net.json", "--nt-layout", "--x1", f"{tmp_path / 'inputs.npz'}:x1",
                       "--x2", f"{tmp_path / 'inputs.npz'}:x2", "--out", out, "--block", 3, "--dtype", "float64",
                       "--get", "ntk", "--quiet")
    assert code == 0, err
    store = KernelStore.open(out)
    assert store.get == ("ntk",) and store.shape == (4, 3)
    assert relative_error(store["ntk"][...], data["ntk"]) <= 1e-8  # NT's float64 rounding; measured 4e-16
    code, _, err = run(capsys, "--arch", tmp_path / "net.json", "--x1", tmp_path / "inputs.npz", "--out", tmp_path / "o")
    assert code == 1 and "--x1 " in err and "the archive holds x1, x2; name one as" in err


def test_ctrl_c_leaves_a_resumable_store(capsys, tmp_path):
    """SIGINT to a child running ``tangents kernel`` (1,830 small blocks, a few seconds; with
    465 the child once finished them all, in 1.4 s, before the signal reached it): exit 130,
    a message, a store that --status calls incomplete; the same command finishes it."""
    x = np.random.default_rng(1).standard_normal((600, 6)).astype(np.float32)
    total = 60 * 61 // 2
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "k.zarr"
    command = ["--arch", "fc", "--x1", tmp_path / "x.npy", "--out", out, "--block", 10]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "2"}
    log = tmp_path / "child.log"
    with open(log, "w") as stderr:
        # SIGINT as a terminal's Ctrl-C delivers it: a shell without job control starts
        # background jobs with SIGINT ignored, and Python then installs no handler for it
        child = subprocess.Popen([sys.executable, "-m", "tangents", "kernel", *map(str, command)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=stderr,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while len(list((out / "manifest").glob("*.json"))) < 2 if (out / "manifest").is_dir() else True:
            assert child.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "no block written within 120 s"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGINT)
        code = child.wait(timeout=60)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
    text = log.read_text()
    assert code == 130, text[-2000:]
    assert "interrupted: " in text and f"of {total} blocks are done; rerun the same command to resume" in text
    done = len(KernelStore.open(out).plan) - len(KernelStore.open(out).missing_blocks())
    assert 2 <= done < total
    code, text, _ = run(capsys, "--status", out)
    assert code == 1 and f"INCOMPLETE: {done}/{total} blocks done" in text
    code, text, _ = run(capsys, *command, "--no-fsync", "--json")
    summary = json.loads(text)
    assert code == 0 and summary["skipped"] == done and summary["computed"] == total - done
    reference = stax.preset("fc", (6,)).kernel_fn(torch.from_numpy(x), None, "ntk").numpy()
    # float32: measured 1.3e-7 (matrix products of other shapes round differently), so 1e-6
    assert relative_error(KernelStore.open(out)["ntk"][...], reference) <= 1e-6


def test_sigterm_as_batch_schedulers_send_it_leaves_a_resumable_store(capsys, tmp_path):
    """SIGTERM (what SLURM/PBS send before pre-empting a job) to this process while ``tangents
    kernel`` runs in it: exit 143 (128 + SIGTERM), the blocks done kept, the previous SIGTERM handler back."""
    import threading

    np.save(tmp_path / "x.npy", np.random.default_rng(2).standard_normal((300, 6)).astype(np.float32))
    out = tmp_path / "k.zarr"
    manifest = out / "manifest"

    def terminate_after_two_blocks() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if manifest.is_dir() and len(list(manifest.glob("*.json"))) >= 2:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.005)

    before = signal.getsignal(signal.SIGTERM)
    killer = threading.Thread(target=terminate_after_two_blocks, daemon=True)
    killer.start()
    code, _, err = run(capsys, "--arch", "fc", "--x1", tmp_path / "x.npy", "--out", out, "--block", 10, "--no-fsync",
                       "--quiet")
    killer.join(timeout=120)
    assert code == 143 and "of 465 blocks are done; rerun the same command to resume" in err, err
    store = KernelStore.open(out)
    assert 2 <= len(store.plan) - len(store.missing_blocks()) < 465
    assert signal.getsignal(signal.SIGTERM) is before
