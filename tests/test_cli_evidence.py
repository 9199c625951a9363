"""``tangents evidence``: it writes the figures and the report, takes the user's network, and
answers bad options with a message (before importing torch).

The runs use tiny configurations (widths 8–32, 2 networks, a few steps): a few seconds each,
most of it drawing the five figures.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="the figures need matplotlib (pip install -e '.[test]')")

from tangents.cli import COMMANDS, main  # noqa: E402

TINY = ["--widths", "8,16,32", "--circle-widths", "8,32", "--networks", "2", "--n-train", "5", "--steps", "4", "--quiet"]
FIGURES = ("jacot_fig1_ntk_on_circle", "jacot_fig2_dynamics", "convergence_and_lazy_training", "lee_linearization", "spectrum")


def test_command_writes_the_figures_and_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "new" / "evidence"  # created with its parent
    assert main(["evidence", "--out", str(out), "--seed", "3", "--dpi", "60", *TINY]) == 0
    stdout, stderr = capsys.readouterr()
    assert stderr == "", "--quiet keeps stderr empty"
    for name in FIGURES:
        data = (out / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        # At dpi 60 the figures are 10-40 KB (palette PNGs); 150 KB would mean full-colour ones.
        assert 2_000 < len(data) < 150_000, (name, len(data))
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "network seeds (the same at every width): 3, 4; data seed: 3" in report
    for name in FIGURES:
        assert f"({name}.png)" in report, name
    assert "widths: 8, 16, 32" in report and "4 steps of full-batch gradient descent" in report
    assert re.search(r"3 widths x 2 networks, 4 steps \(seeds 3\.\.4, data seed 3\)", stdout), stdout
    assert f"wrote 5 figures and report.md to {out}" in stdout
    # The terminal's headline distance is the report's (Lee et al. table, widest row: the
    # geometric mean over the seeds), printed the same way.
    printed = re.search(r"width 32: RMSE network - NTK prediction (\S+) ", stdout)
    assert printed is not None, stdout
    lee = report.split("## Lee et al.")[1]
    row = next(line for line in lee.splitlines() if line.startswith("| 32 |"))
    assert row.split(" | ")[2] == printed.group(1), (row, printed.group(1))


def test_command_runs_a_network_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nets = tmp_path / "nets.py"
    nets.write_text(
        "from tangents import stax\n"
        "def erf_net(width):\n"
        "    return stax.serial(stax.Dense(width, W_std=1.5, b_std=0.1), stax.Erf(), stax.Dense(1, W_std=1.5))\n",
        encoding="utf-8",
    )
    out = tmp_path / "erf"
    assert main(["evidence", "--out", str(out), "--network", f"{nets}:erf_net", "--dpi", "40", *TINY]) == 0
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "Erf" in report and "W_std=1.5" in report
    capsys.readouterr()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--widths", "100,200"], r"argument --widths: expected at least 3 different values, got '100,200'"),
        (["--widths", "100,x,300"], r"argument --widths: expected comma-separated integers"),
        (["--widths", "0,10,100"], r"argument --widths: expected integers >= 1, got '0,10,100'"),
        (["--circle-widths", ""], r"argument --circle-widths: expected at least 1 different values"),
        (["--networks", "1"], r"argument --networks: expected an integer >= 2, got 1"),
        (["--seed", "-1"], r"argument --seed: expected an integer >= 0, got -1"),
        (["--n-train", "1000"], r"argument --n-train: expected an integer between 2 and 512, got 1000"),
        (["--steps", "0"], r"argument --steps: expected an integer >= 1, got 0"),
        (["--lr", "0"], r"argument --lr: expected 'auto' or a positive number, got '0'"),
        (["--dtype", "float16"], r"argument --dtype: invalid choice: 'float16'"),
        (["--device", "tpu"], r"argument --device: expected a torch device such as 'cpu' or 'cuda:0', got 'tpu'"),
        (["--dpi", "5"], r"argument --dpi: expected an integer between 20 and 600, got 5"),
        (["--network", "nets.py"], r"argument --network: expected MODULE:FUNCTION"),
        (["--network", "nets:net", "--depth", "2"], r"--depth applies to the default network only; give --network or --depth"),
    ],
)
def test_bad_options_exit_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evidence", "--out", str(tmp_path), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: tangents evidence" in err
    assert re.search(message, err), err


def test_out_is_required_and_must_be_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evidence"])
    assert exit_info.value.code == 2
    assert "the following arguments are required: --out" in capsys.readouterr().err
    a_file = tmp_path / "report.md"
    a_file.write_text("", encoding="utf-8")
    with pytest.raises(SystemExit):
        main(["evidence", "--out", str(a_file)])
    assert f"--out '{a_file}' exists and is not a directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_17:net", r"--network 'no_such_module_17:net': importing 'no_such_module_17' failed: ModuleNotFoundError"),
        ("tangents.stax:no_such_net", r"'tangents.stax' has no function 'no_such_net' \(width -> stax layer\)"),
        ("missing/nets.py:net", r"--network 'missing/nets.py:net': there is no file 'missing/nets.py'"),
    ],
)
def test_networks_that_cannot_be_loaded_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str, message: str
) -> None:
    assert main(["evidence", "--out", str(tmp_path), "--network", spec, *TINY]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tangents evidence: error: ") and re.search(message, err), err


def test_a_network_with_the_wrong_output_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nets = tmp_path / "nets.py"
    nets.write_text("from tangents import stax\ndef two(width):\n    return stax.serial(stax.Dense(width), stax.Relu(), stax.Dense(2))\n")
    assert main(["evidence", "--out", str(tmp_path / "o"), "--network", f"{nets}:two", *TINY]) == 1
    assert "network(8) must map (N, 2) inputs to (N, 1) outputs (end it with stax.Dense(1))" in capsys.readouterr().err


def test_missing_matplotlib_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert main(["evidence", "--out", str(tmp_path), *TINY]) == 1
    assert "the figures need matplotlib; install it with: pip install 'tangents[plot]'" in capsys.readouterr().err


def test_registered_and_answers_before_torch_is_imported() -> None:
    assert COMMANDS["evidence"][0] == "evidence"
    probe = (
        "import sys\n"
        "from tangents.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch imported:', 'torch' in sys.modules, 'matplotlib imported:', 'matplotlib' in sys.modules)\n"
    )
    for args in (["evidence", "--help"], ["evidence", "--out", "x", "--widths", "1,2"]):
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120, check=False)
        assert "torch imported: False matplotlib imported: False" in done.stdout, (args, done.stdout, done.stderr)
    done = subprocess.run([sys.executable, "-m", "tangents", "evidence", "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0
    for option in ("--out", "--widths", "--circle-widths", "--networks", "--seed", "--n-train", "--steps", "--lr",
                   "--depth", "--network", "--dtype", "--device", "--threads", "--dpi", "--quiet"):
        assert option in done.stdout, option
