"""``tangents fit`` on files the tests write (issue #15, item 4): CSV, .npy and .npz; one
test per bad-file case (one line naming file, row and column; exit status 1; no output
written); arguments and data checked before torch is imported."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="scikit-learn is the optional extra tangents[sklearn]")

from sklearn.datasets import load_diabetes, load_iris  # noqa: E402

from tangents.cli import main  # noqa: E402
from tangents.cli._tables import DataError, read_table  # noqa: E402
from tangents.cli.fit import _write_atomically  # noqa: E402
from tangents.sklearn import NTKRegressor  # noqa: E402

IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _iris(tmp_path: Path, with_test_target: bool = True) -> tuple[Path, Path]:
    data = load_iris()
    order = np.random.default_rng(0).permutation(150)
    rows = [list(data.data[i]) + [data.target_names[data.target[i]]] for i in order]
    train = _write_csv(tmp_path / "train.csv", IRIS_COLUMNS + ["species"], rows[:100])
    test_rows = rows[100:] if with_test_target else [r[:4] for r in rows[100:]]
    test = _write_csv(tmp_path / "test.csv", IRIS_COLUMNS + (["species"] if with_test_target else []), test_rows)
    return train, test


def _fit(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    status = main(["fit", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


# ---------------------------------------------------------------------- files that work


def test_csv_with_a_categorical_target(tmp_path, capsys):
    """Iris written as CSV (text labels): accuracy printed (measured 0.92 on this split, the
    5-fold accuracy of the same model is 0.96; chance 0.33) and one row of predictions and
    class probabilities per test row."""
    train, test = _iris(tmp_path)
    out_file = tmp_path / "predictions.csv"
    status, out, err = _fit(capsys, "--train", train, "--test", test, "--target", "species", "--out", out_file)
    assert status == 0 and err == ""
    assert "target 'species' (classification, 3 classes)" in out
    accuracy = float(out.split("accuracy ")[1].split()[0])
    assert accuracy >= 0.85
    with open(out_file, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["species", "p(setosa)", "p(versicolor)", "p(virginica)"]
    assert len(rows) == 51
    with open(test, newline="") as f:
        truth = [r[4] for r in csv.reader(f)][1:]
    assert sum(r[0] == t for r, t in zip(rows[1:], truth)) == round(accuracy * 50)
    assert all(abs(sum(map(float, r[1:])) - 1) < 1e-5 for r in rows[1:])  # 6 significant digits each
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tangents-fit-")]  # no temporary left


def test_test_file_without_the_target(tmp_path, capsys):
    train, test = _iris(tmp_path, with_test_target=False)
    status, out, _ = _fit(capsys, "--train", train, "--test", test, "--target", "species", "--kernel", "nngp", "--arch", "erf-1")
    assert status == 0 and "accuracy" not in out and "predictions not written" in out


def test_npy_regression_matches_the_estimator(tmp_path, capsys):
    """Diabetes as .npy (target: the last column): the predictions are NTKRegressor's on
    features standardised with the training mean and deviation; RMSE and R² printed."""
    X, y = load_diabetes(return_X_y=True)
    np.save(tmp_path / "train.npy", np.c_[X[:300], y[:300]])
    np.save(tmp_path / "test.npy", np.c_[X[300:], y[300:]])
    status, out, _ = _fit(capsys, "--train", tmp_path / "train.npy", "--test", tmp_path / "test.npy", "--target", "-1",
                          "--out", tmp_path / "pred.npy")
    assert status == 0 and "(regression)" in out
    predictions = np.load(tmp_path / "pred.npy")
    mean, std = X[:300].mean(axis=0), X[:300].std(axis=0)
    expected = NTKRegressor(b_std=0.5).fit((X[:300] - mean) / std, y[:300]).predict((X[300:] - mean) / std)
    assert np.allclose(predictions, expected, rtol=1e-10)
    rmse = float(out.split("RMSE ")[1].split()[0])
    assert rmse == pytest.approx(np.sqrt(np.mean((expected - y[300:]) ** 2)), rel=1e-3)  # printed to 4 digits
    assert rmse < y[300:].std()  # better than predicting the mean (measured 52.6 against 75.3)


def test_npz_with_integer_classes(tmp_path, capsys):
    """Integer targets with few values are classes; a test .npz without 'y' is predicted."""
    X, y = load_iris(return_X_y=True)
    np.savez(tmp_path / "train.npz", X=X[::2], y=y[::2])
    np.savez(tmp_path / "test.npz", X=X[1::2])
    status, out, _ = _fit(capsys, "--train", tmp_path / "train.npz", "--test", tmp_path / "test.npz", "--target", "y",
                          "--out", tmp_path / "p.csv", "--t", "100")
    assert status == 0 and "(classification, 3 classes)" in out and "t = 100" in out
    with open(tmp_path / "p.csv", newline="") as f:
        predicted = [int(r[0]) for r in list(csv.reader(f))[1:]]
    assert np.mean(np.array(predicted) == y[1::2]) >= 0.9  # measured 0.96


# ---------------------------------------------------------------------- bad files


IRIS_ROW = [5.1, 3.5, 1.4, 0.2, "setosa"]


@pytest.mark.parametrize(
    ("train_lines", "message"),
    [
        ("", r"train.csv: the file is empty; expected a header line"),
        ("a,b,species\n", r"train.csv: the header is the only line"),
        ("a,b,label\n1,2,x\n", r"train.csv: no column 'species' to predict \(--target\); the columns are a, b, label"),
        ("a,b,species\n1,2,x\n3,zz,y\n", r"train.csv: row 2 \(line 3\), column 'b': 'zz' is not a number"),
        ("a,b,species\n1,2,x\n3,,y\n", r"train.csv: row 2 \(line 3\), column 'b': missing value \(''\)"),
        ("a,b,species\n1,NaN,x\n3,4,y\n", r"train.csv: row 1 \(line 2\), column 'b': missing value \('NaN'\)"),
        ("a,b,species\n1,2,x\n3,inf,y\n", r"train.csv: row 2 \(line 3\), column 'b': 'inf' is not a finite number"),
        ("a,b,species\n1,2,x\n3,4\n", r"train.csv: row 2 \(line 3\) has 2 cells, but the header has 3 columns"),
        ("a,b,species\n1,2,x\n\n3,4,y,9\n", r"train.csv: row 2 \(line 4\) has 4 cells, but the header has 3 columns"),
        ("a,b,species\n1,2,x\n3,4,\n", r"train.csv: row 2 \(line 3\), column 'species': the target is missing \(''\)"),
        ("a,a,species\n1,2,x\n", r"train.csv: line 1: the header names column 'a' twice"),
        ("species\nx\ny\n", r"train.csv: the only column is the target 'species'"),
        ("a,b,species\n1,2,x\n3,4,x\n", r"train.csv: column 'species' has 1 class \('x'\); classification needs at least 2"),
    ],
)
def test_bad_training_csv(tmp_path, capsys, train_lines, message):
    (tmp_path / "train.csv").write_text(train_lines)
    test = _write_csv(tmp_path / "test.csv", ["a", "b"], [[1, 2]])
    out_file = tmp_path / "out.csv"
    out_file.write_text("previous results\n")
    status, out, err = _fit(capsys, "--train", tmp_path / "train.csv", "--test", test, "--target", "species", "--out", out_file)
    assert status == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("tangents fit: error: ")
    assert len(__import__("re").findall(message, err)) == 1, err
    assert out_file.read_text() == "previous results\n"  # untouched


@pytest.mark.parametrize(
    ("test_lines", "message"),
    [
        ("sepal_length,sepal_width,petal_length\n1,2,3\n", r"test.csv: no column 'petal_width', which .*train.csv has"),
        ("sepal_length,sepal_width,petal_length,petal_width,id\n1,2,3,4,7\n", r"test.csv: column 'id' is not in .*train.csv"),
        ("sepal_length,sepal_width,petal_length,petal_width\n1,2,3,x\n", r"test.csv: row 1 \(line 2\), column 'petal_width': 'x' is not a number"),
    ],
)
def test_bad_test_csv(tmp_path, capsys, test_lines, message):
    train, _ = _iris(tmp_path)
    (tmp_path / "test.csv").write_text(test_lines)
    status, _, err = _fit(capsys, "--train", train, "--test", tmp_path / "test.csv", "--target", "species", "--out", tmp_path / "o.csv")
    assert status == 1 and err.count("\n") == 1
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize(
    ("make", "target", "message"),
    [
        (lambda p: np.save(p / "train.npy", np.array([[1.0, 2.0, 0.0], [3.0, np.nan, 1.0]])), "-1", r"train.npy: row 2, column 1: nan is not a finite number"),
        (lambda p: np.save(p / "train.npy", np.arange(4.0)), "-1", r"train.npy: expected a 2-D array \(one row per example\), got shape \(4,\)"),
        (lambda p: np.save(p / "train.npy", np.zeros((0, 3))), "-1", r"train.npy: the array has no rows"),
        (lambda p: np.save(p / "train.npy", np.ones((3, 3))), "label", r"train.npy: for .npy files --target is a column index such as -1, got 'label'"),
        (lambda p: np.save(p / "train.npy", np.ones((3, 3))), "7", r"train.npy: --target column 7 is out of range for 3 columns"),
        (lambda p: np.savez(p / "train.npz", a=np.ones((3, 2)), b=np.ones((3, 2)), y=np.ones(3)), "y", r"train.npz: no feature array; name it 'X' \(arrays in the file: a, b, y\)"),
        (lambda p: np.savez(p / "train.npz", X=np.ones((3, 2))), "y", r"train.npz: no array 'y' to predict \(--target\); the arrays are X"),
        (lambda p: np.savez(p / "train.npz", X=np.ones((3, 2)), y=np.array([0.0, np.inf, 1.0])), "y", r"train.npz: row 2, array 'y': the target is inf"),
        (lambda p: (p / "train.npy").write_bytes(b"not numpy"), "-1", r"train.npy: not a numpy .npy file \(save it with numpy.save\)"),
    ],
)
def test_bad_numpy_files(tmp_path, capsys, make, target, message):
    make(tmp_path)
    train = next(tmp_path.glob("train.*"))
    np.save(tmp_path / "test.npy", np.ones((2, 2)))
    status, _, err = _fit(capsys, "--train", train, "--test", tmp_path / "test.npy", "--target", target, "--out", tmp_path / "o.npy")
    assert status == 1 and err.count("\n") == 1
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "o.npy").exists()


def test_too_many_rows_for_memory(tmp_path, capsys, monkeypatch):
    """With (pretended) 1 MB free, 400 training rows (5 arrays of 1.3 MB) are refused in one
    line naming the subset size that fits (isqrt(2²⁰/40) = 161), and no output is written."""
    monkeypatch.setattr("tangents._sklearn._common.available_memory", lambda device: 2**20)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "train.npy", np.c_[rng.standard_normal((400, 2)), rng.standard_normal(400)])
    np.save(tmp_path / "test.npy", np.ones((2, 2)))
    status, out, err = _fit(capsys, "--train", tmp_path / "train.npy", "--test", tmp_path / "test.npy", "--target", "-1",
                            "--out", tmp_path / "o.npy")
    assert status == 1 and out == "" and err.count("\n") == 1
    assert "400 training examples need at least" in err and "at most ~161 examples" in err, err
    assert not (tmp_path / "o.npy").exists()


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nothere.csv: no such file"):
        read_table(str(tmp_path / "nothere.csv"), "y")


def test_no_half_written_output(tmp_path):
    """A write that fails half-way leaves the previous file as it was and no temporary file."""
    target = tmp_path / "predictions.csv"
    target.write_text("old\n")

    def failing_write(path: str) -> None:
        with open(path, "w") as f:
            f.write("half a row,")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _write_atomically(str(target), failing_write)
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["predictions.csv"]


def test_arguments_and_bad_data_answer_before_torch_is_imported(tmp_path):
    """Bad arguments (exit 2) and a bad file (exit 1) are reported by a process that has
    not imported torch (seconds on a busy machine)."""
    (tmp_path / "train.csv").write_text("a,b\n1,2\n")
    probe = (
        "import sys\n"
        "from tangents.cli import main\n"
        "try:\n"
        "    status = main(sys.argv[1:])\n"
        "except SystemExit as exit:\n"
        "    status = exit.code\n"
        "print('status', status, 'torch imported:', 'torch' in sys.modules)\n"
    )
    base = ["fit", "--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "train.csv")]
    for args, status in (
        ([*base, "--target", "y", "--out", str(tmp_path / "p.txt")], 2),
        ([*base, "--target", "y", "--arch", "tanh-2"], 2),
        (["fit", "--help"], 0),
        ([*base, "--target", "y"], 1),
    ):
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120, check=False)
        assert f"status {status} torch imported: False" in done.stdout, (args, done.stdout, done.stderr)
    assert "must end in .csv or .npy" in subprocess.run(
        [sys.executable, "-c", probe, *base, "--target", "y", "--out", "p.txt"], capture_output=True, text=True, timeout=120
    ).stderr
