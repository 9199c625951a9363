r"""``tangents fit``: an infinitely wide network fitted to the user's own table.

::

    tangents fit --train train.csv --test test.csv --target species [--kernel ntk|nngp]
                 [--arch relu-2] [--t inf] [--out predictions.csv]

1. **read**: CSV files with a header (the target column by name; a categorical target is
   fine, features must be numbers), or ``.npy`` (a 2-D array, ``--target`` a column index)
   and ``.npz`` (features under ``X``, the target under ``--target``). Any problem stops
   the command with one line naming the file, row and column.
2. **task**: classification when the target is not numeric, or holds at most 20 distinct
   integers; regression otherwise (``--task`` decides instead).
3. **fit**: features standardised with the training mean and standard deviation, then
   `tangents.sklearn.NTKClassifier` or `NTKRegressor` with ``[Dense(512, W_std, b_std),
   activation] × depth, Dense(1)`` (``--arch ACTIVATION-DEPTH``).
4. **report**: accuracy (classification) or RMSE and R² (regression) when the test file has
   the target; predictions written to ``--out`` (``.csv``: the prediction, plus class
   probabilities or the standard deviation; ``.npy``: the predictions), through a temporary
   file renamed at the end, so an error never leaves a half-written file.

Arguments and data are checked before torch is imported.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ._tables import DataError, Table, read_table

__all__ = ["FitError", "build_parser", "main"]

#: ``--arch`` activation names (those of `tangents.sklearn`'s ``activation=``).
ACTIVATIONS = ("relu", "erf", "gelu", "abs", "leaky_relu", "sigmoid_like")
#: A numeric target with at most this many distinct integers is read as class labels.
MAX_INTEGER_CLASSES = 20
OUTPUT_KINDS = (".csv", ".npy")


class FitError(RuntimeError):
    """The command cannot go on for a reason other than the data (scikit-learn missing, no
    CUDA, a kernel that cannot be solved)."""


# ---------------------------------------------------------------------- argument parsing


def _arch(text: str) -> tuple[str, int]:
    name, _, depth = text.strip().lower().rpartition("-")
    if not name:
        name, depth = depth, "2"
    if name not in ACTIVATIONS or not depth.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected ACTIVATION-DEPTH such as relu-2 or erf-3, with ACTIVATION one of {', '.join(ACTIVATIONS)}, "
            f"got {text!r}"
        )
    return name, int(depth)


def _real(text: str, *, positive: bool = False, allow_none: bool = False) -> float | None:
    if allow_none and text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or (positive and value <= 0):
        kind = "a positive number" if positive else "a finite number"
        raise argparse.ArgumentTypeError(f"expected {kind}{' or none' if allow_none else ''}, got {text!r}")
    return value


def _time(text: str) -> float | None:
    if text.strip().lower() in ("inf", "infinity", "none"):
        return None
    value = _real(text)
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"expected a training time >= 0 or inf, got {text!r}")
    return value


def _diag_reg(text: str) -> float | str:
    if text.strip().lower() == "auto":
        return "auto"
    value = _real(text)
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number >= 0, got {text!r}")
    return value


def _out(text: str) -> str:
    if os.path.splitext(text)[1].lower() not in OUTPUT_KINDS:
        raise argparse.ArgumentTypeError(f"the predictions file must end in .csv or .npy, got {text!r}")
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"the folder of {text!r} does not exist")
    return text


def _threads(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return int(text)


def build_parser(prog: str = "tangents fit") -> argparse.ArgumentParser:
    """The ``tangents fit`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=prog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Fit an infinitely wide network (the infinite NTK ensemble trained on MSE, or the NNGP "
            "posterior) to a training file and predict a test file: CSV with a header (the target "
            "column by name, class labels or numbers), .npy (2-D, --target a column index) or .npz "
            "(features under 'X', the target under --target). Features are standardised; the "
            "accuracy or RMSE is printed when the test file has the target."
        ),
        epilog="Example: tangents fit --train iris_train.csv --test iris_test.csv --target species --out pred.csv",
    )
    parser.add_argument("--train", required=True, metavar="FILE", help="training data (.csv, .npy or .npz)")
    parser.add_argument("--test", required=True, metavar="FILE", help="data to predict, with or without the target")
    parser.add_argument(
        "--target", required=True, metavar="COLUMN", help="the column to predict: a CSV column name, a .npy column index, a .npz array name"
    )
    parser.add_argument("--kernel", choices=("ntk", "nngp"), default="ntk", help="NTK ensemble or NNGP posterior (default: %(default)s)")
    parser.add_argument(
        "--arch", type=_arch, default=("relu", 2), metavar="ACT-DEPTH",
        help=f"hidden layers [Dense, ACT] x DEPTH before Dense(1); ACT one of {', '.join(ACTIVATIONS)} (default: relu-2)",
    )
    parser.add_argument("--W-std", type=_real, default=1.5, metavar="S", help="weight standard deviation (default: %(default)s)")
    parser.add_argument(
        "--b-std", type=lambda t: _real(t, allow_none=True), default=0.5, metavar="S",
        help="bias standard deviation, or none (default: %(default)s)",
    )
    parser.add_argument("--t", type=_time, default=None, metavar="T", help="training time in units of the learning rate, or inf (default: inf)")
    parser.add_argument("--learning-rate", type=lambda t: _real(t, positive=True), default=1.0, metavar="LR", help="learning rate (default: %(default)s)")
    parser.add_argument(
        "--diag-reg", type=_diag_reg, default=None, metavar="R",
        help="regulariser, relative to the mean of the kernel diagonal, or auto (by the marginal likelihood); "
        "default: 1e-4 for classification, auto for regression",
    )
    parser.add_argument(
        "--task", choices=("auto", "classification", "regression"), default="auto",
        help=f"auto: classification for text targets or at most {MAX_INTEGER_CLASSES} distinct integers (default: %(default)s)",
    )
    parser.add_argument("--out", type=_out, default=None, metavar="FILE", help="write the predictions here (.csv or .npy)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--threads", type=_threads, default=0, help="CPU threads for torch; 0 keeps torch's default (default: %(default)s)")
    return parser


# ---------------------------------------------------------------------- the task


def _as_numbers(values: np.ndarray) -> np.ndarray | None:
    """``values`` as float64 if every one is a finite number, else ``None``."""
    try:
        numbers = np.asarray([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return numbers if np.isfinite(numbers).all() else None


def _task(table: Table, requested: str, target: str) -> tuple[str, np.ndarray]:
    """``(task, y)``: the task and the training targets (labels or float64 numbers)."""
    assert table.target is not None
    numbers = _as_numbers(table.target)
    if requested == "regression":
        if numbers is None:
            bad = next(i for i, v in enumerate(table.target) if _as_numbers(np.array([v])) is None)
            raise DataError(
                f"{table.path}: row {bad + 1}, column {target!r}: {table.target[bad]!r} is not a number, but "
                f"--task regression needs numeric targets"
            )
        return "regression", numbers
    if numbers is None:
        return "classification", np.asarray([str(v) for v in table.target], dtype=object)
    integers = bool(np.all(numbers == np.round(numbers)))
    if requested == "auto" and not (integers and len(np.unique(numbers)) <= MAX_INTEGER_CLASSES):
        return "regression", numbers
    return "classification", numbers.astype(np.int64) if integers else numbers


def _labels_like(values: np.ndarray, train_y: np.ndarray) -> np.ndarray:
    """Test targets in the training labels' type (labels that cannot be converted stay as
    they are and count as wrong)."""
    if train_y.dtype == object:
        return np.asarray([str(v) for v in values], dtype=object)
    out = []
    for v in values:
        try:
            number = float(v)
            out.append(int(number) if train_y.dtype.kind == "i" and number == round(number) else number)
        except (TypeError, ValueError):
            out.append(str(v))
    return np.asarray(out, dtype=object)


# ---------------------------------------------------------------------- output


def _write_atomically(path: str, write: Callable[[str], None]) -> None:
    """``write(file_path)`` into a temporary file next to ``path``, then renamed to it."""
    folder = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1]
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tangents-fit-", suffix=suffix)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _write_predictions(path: str, target: str, predictions: np.ndarray, extra: dict[str, np.ndarray]) -> None:
    if path.lower().endswith(".npy"):
        array = predictions.astype(str) if predictions.dtype == object else predictions

        def write(file: str) -> None:
            with open(file, "wb") as f:
                np.save(f, array, allow_pickle=False)

    else:

        def write(file: str) -> None:
            with open(file, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow([target, *extra])
                for i, p in enumerate(predictions):
                    writer.writerow([p, *(f"{column[i]:.6g}" for column in extra.values())])

    _write_atomically(path, write)


# ---------------------------------------------------------------------- the job


def _run(args: argparse.Namespace) -> list[str]:
    """Reads, fits, predicts and writes; returns the report lines."""
    train = read_table(args.train, args.target)
    test = read_table(args.test, args.target, like=train)
    task, y = _task(train, args.task, args.target)
    if task == "classification" and len(np.unique(y)) < 2:
        raise DataError(f"{train.path}: column {args.target!r} has 1 class ({y[0]!r}); classification needs at least 2")

    try:
        import torch

        from ..sklearn import NTKClassifier, NTKRegressor
    except ImportError as error:
        raise FitError(str(error)) from None
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise FitError(f"--device {args.device!r} is not a torch device; use e.g. cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FitError(f"--device {args.device!r} was asked for but CUDA is not available here; use --device cpu")

    mean, std = train.features.mean(axis=0), train.features.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # a constant column stays 0
    x_train, x_test = (train.features - mean) / std, (test.features - mean) / std
    activation, depth = args.arch
    options = dict(kernel=args.kernel, depth=depth, activation=activation, W_std=args.W_std, b_std=args.b_std,
                   t=args.t, learning_rate=args.learning_rate, device=args.device)
    if args.diag_reg is not None:
        options["diag_reg"] = args.diag_reg
    model = (NTKClassifier if task == "classification" else NTKRegressor)(**options)
    try:
        model.fit(x_train, y)
    except (ValueError, MemoryError) as error:  # e.g. a kernel that cannot be solved, too many rows
        raise FitError(str(error)) from None

    time_text = "inf" if args.t is None else f"{args.t:g}"
    lines = [
        f"tangents fit: {args.kernel.upper()} (t = {time_text}), [Dense(512, W_std={args.W_std:g}, b_std={args.b_std}), "
        f"{activation}] x {depth} -> Dense(1), diag_reg = {model.diag_reg_:.3g}",
        f"  train  {train.path}: {len(y)} rows, {len(train.columns)} features, target {args.target!r} ({task}"
        + (f", {len(model.classes_)} classes)" if task == "classification" else ")"),
        f"  test   {test.path}: {len(test.features)} rows",
    ]
    extra: dict[str, np.ndarray] = {}
    if task == "classification":
        probabilities = model.predict_proba(x_test)
        predictions = model.classes_[np.argmax(probabilities, axis=1)]
        extra = {f"p({c})": probabilities[:, i] for i, c in enumerate(model.classes_)}
        if test.target is not None:
            right = int(np.sum(_labels_like(test.target, y) == predictions))
            lines.append(f"  accuracy {right / len(predictions):.4f} ({right}/{len(predictions)})")
    else:
        predictions, deviation = model.predict(x_test, return_std=True)
        extra = {"std": deviation}
        if test.target is not None:
            truth = _as_numbers(test.target)
            if truth is None:
                bad = next(i for i, v in enumerate(test.target) if _as_numbers(np.array([v])) is None)
                raise DataError(f"{test.path}: row {bad + 1}, column {args.target!r}: {test.target[bad]!r} is not a number")
            rmse = float(np.sqrt(np.mean((predictions - truth) ** 2)))
            spread = float(np.sum((truth - truth.mean()) ** 2))
            r2 = 1 - float(np.sum((predictions - truth) ** 2)) / spread if spread > 0 else math.nan
            lines.append(f"  RMSE {rmse:.4g}  (R^2 {r2:.4f}; target standard deviation {truth.std():.4g})")
    if args.out is not None:
        _write_predictions(args.out, args.target, predictions, extra)
        lines.append(f"  predictions written to {args.out}")
    else:
        lines.append("  predictions not written (pass --out FILE.csv or FILE.npy)")
    return lines


def main(argv: Sequence[str] | None = None, prog: str = "tangents fit") -> int:
    """``tangents fit`` from the command line.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
        prog: the program name shown in usage and errors.

    Returns:
        0 on success; 1 with a one-line message on stderr for a problem with the data (file,
        row, column) or the fit; 2 for bad arguments (argparse), before torch is imported.
        With ``--threads N`` torch is imported first to set its thread count.
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        with _torch_threads(args.threads):
            lines = _run(args)
    except (DataError, FitError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """torch's thread count set to ``threads`` (0: unchanged) while the job runs, then
    restored (``main`` may run inside a larger program); torch is imported only if needed."""
    if not threads:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
