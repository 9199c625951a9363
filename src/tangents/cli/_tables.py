"""Reading the user's data for ``tangents fit``: CSV, .npy and .npz, with errors that point.

Every problem with a file is a `DataError` whose one-line message names the file and, when
there is one, the row (the data row, counted from 1 after the header, and the line of the
file) and the column: a missing column, a cell that is not a number, a missing or NaN
value, a row with the wrong number of cells, an empty file. Only numpy and the standard
library are used (the command reads its data before importing torch).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from typing import Any

import numpy as np

__all__ = ["DataError", "Table", "read_table"]

#: Cells read as a missing value (besides the empty cell), compared in lower case.
MISSING = frozenset({"nan", "na", "n/a", "null", "none", "?", "-"})
#: Keys of an .npz file's feature array, tried in turn.
FEATURE_KEYS = ("X", "x", "features")


class DataError(ValueError):
    """A data file that cannot be used; the message names the file, row and column."""


@dataclasses.dataclass
class Table:
    """One data file, read.

    Attributes:
        path: the file.
        columns: the feature columns' names (CSV header; ``"0"``, ``"1"``, ... otherwise).
        features: ``(N, d)`` float64, finite.
        target: the ``N`` target values (strings from a CSV file, numbers or strings from
            numpy files), or ``None`` when the file has no target.
    """

    path: str
    columns: list[str]
    features: np.ndarray
    target: np.ndarray | None


def read_table(path: str, target: str, like: Table | None = None) -> Table:
    """Reads a training file (``like=None``: the target is required) or a test file (the
    features ``like`` has, in its order; the target optional).

    Args:
        path: a ``.csv``, ``.npy`` or ``.npz`` file.
        target: the target's column name (CSV), column index (``.npy``) or array key (``.npz``).
        like: the training table, when reading a test file.

    Raises:
        DataError: anything wrong with the file, in one line naming file, row and column.
    """
    kind = os.path.splitext(path)[1].lower()
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if kind == ".npy":
        return _read_npy(path, target, like)
    if kind == ".npz":
        return _read_npz(path, target, like)
    return _read_csv(path, target, like)


# ---------------------------------------------------------------------- CSV


def _read_csv(path: str, target: str, like: Table | None) -> Table:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            records = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not a UTF-8 text file ({error.reason} at byte {error.start}); save it as UTF-8 CSV") from None
    except csv.Error as error:
        raise DataError(f"{path}: not a readable CSV file ({error})") from None
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror})") from None
    records = [(line, row) for line, row in records if row]  # blank lines
    if not records:
        raise DataError(f"{path}: the file is empty; expected a header line naming the columns, then one line per example")
    _, header = records[0]
    header = [name.strip() for name in header]
    for i, name in enumerate(header):
        if not name:
            raise DataError(f"{path}: line {records[0][0]}: column {i + 1} of the header has no name")
        if name in header[:i]:
            raise DataError(f"{path}: line {records[0][0]}: the header names column {name!r} twice")
    rows = records[1:]
    if not rows:
        raise DataError(f"{path}: the header is the only line; expected one line per example after it")
    for number, (line, row) in enumerate(rows, start=1):
        if len(row) != len(header):
            raise DataError(
                f"{path}: row {number} (line {line}) has {len(row)} cells, but the header has {len(header)} columns"
            )
    has_target = target in header
    if like is None and not has_target:
        raise DataError(f"{path}: no column {target!r} to predict (--target); the columns are {', '.join(header)}")
    if like is None:
        columns = [name for name in header if name != target]
        if not columns:
            raise DataError(f"{path}: the only column is the target {target!r}; there are no features to learn from")
    else:
        missing = [name for name in like.columns if name not in header]
        if missing:
            raise DataError(f"{path}: no column {missing[0]!r}, which {like.path} has (the test file needs every feature column)")
        extra = [name for name in header if name not in like.columns and name != target]
        if extra:
            raise DataError(f"{path}: column {extra[0]!r} is not in {like.path}; the test file must have the same feature columns")
        columns = list(like.columns)
    index = [header.index(name) for name in columns]
    features = np.empty((len(rows), len(columns)))
    for number, (line, row) in enumerate(rows, start=1):
        for j, (name, i) in enumerate(zip(columns, index)):
            features[number - 1, j] = _number(path, number, line, name, row[i])
    values = None
    if has_target:
        i = header.index(target)
        values = np.array([row[i].strip() for _, row in rows], dtype=object)
        for number, ((line, _), value) in enumerate(zip(rows, values), start=1):
            if not value or value.lower() in MISSING:
                raise DataError(f"{path}: row {number} (line {line}), column {target!r}: the target is missing ({value!r})")
    return Table(path, columns, features, values)


def _number(path: str, number: int, line: int, column: str, cell: str) -> float:
    text = cell.strip()
    where = f"{path}: row {number} (line {line}), column {column!r}"
    if not text or text.lower() in MISSING:
        raise DataError(f"{where}: missing value ({cell!r}); fill it in or drop the row")
    try:
        value = float(text)
    except ValueError:
        raise DataError(
            f"{where}: {cell!r} is not a number; features must be numeric (encode categories as numbers first)"
        ) from None
    if not math.isfinite(value):
        raise DataError(f"{where}: {cell!r} is not a finite number")
    return value


# ---------------------------------------------------------------------- numpy


#: The first bytes of .npy files and of .npz (zip) archives.
_MAGIC = {".npy": b"\x93NUMPY", ".npz": b"PK"}


def _load(path: str) -> Any:
    kind = os.path.splitext(path)[1].lower()
    try:
        with open(path, "rb") as f:
            start = f.read(len(_MAGIC[kind]))
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror})") from None
    if start != _MAGIC[kind]:
        raise DataError(f"{path}: not a numpy {kind} file (save it with numpy.{'save' if kind == '.npy' else 'savez'})")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as error:
        raise DataError(f"{path}: cannot be read without pickle ({error}); save plain numeric arrays") from None
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: not a readable numpy file ({error})") from None


def _read_npy(path: str, target: str, like: Table | None) -> Table:
    array = _load(path)
    if array.ndim != 2:
        raise DataError(f"{path}: expected a 2-D array (one row per example), got shape {array.shape}")
    if array.shape[0] == 0:
        raise DataError(f"{path}: the array has no rows")
    try:
        column = int(target)
    except ValueError:
        raise DataError(f"{path}: for .npy files --target is a column index such as -1, got {target!r}") from None
    n_columns = array.shape[1] if like is None else len(like.columns) + 1
    if not -n_columns <= column < n_columns:
        raise DataError(f"{path}: --target column {column} is out of range for {n_columns} columns")
    column %= n_columns
    if like is not None and array.shape[1] == len(like.columns):  # a test file without the target
        return Table(path, like.columns, _numeric(path, array, list(range(array.shape[1]))), None)
    if like is not None and array.shape[1] != n_columns:
        raise DataError(
            f"{path}: {array.shape[1]} columns, but {like.path} has {n_columns} (features and target) or "
            f"{n_columns - 1} (features only) are expected"
        )
    keep = [j for j in range(n_columns) if j != column]
    if not keep:
        raise DataError(f"{path}: the only column is the target; there are no features to learn from")
    features = _numeric(path, array[:, keep], keep)
    values = array[:, column]
    _check_target(path, values, f"column {column}")
    return Table(path, [str(j) for j in keep] if like is None else like.columns, features, values)


def _read_npz(path: str, target: str, like: Table | None) -> Table:
    with _load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    key = next((k for k in FEATURE_KEYS if k in arrays), None)
    if key is None:
        others = [k for k in arrays if k != target]
        if len(others) != 1:
            raise DataError(
                f"{path}: no feature array; name it 'X' (arrays in the file: {', '.join(arrays) or 'none'})"
            )
        key = others[0]
    features = arrays[key]
    if features.ndim == 1:
        features = features[:, None]
    if features.ndim != 2 or features.shape[0] == 0:
        raise DataError(f"{path}: the feature array {key!r} must be 2-D with at least one row, got shape {features.shape}")
    if like is not None and features.shape[1] != len(like.columns):
        raise DataError(f"{path}: {features.shape[1]} features in {key!r}, but {like.path} has {len(like.columns)}")
    features = _numeric(path, features, list(range(features.shape[1])), array_name=key)
    values = arrays.get(target)
    if values is None and like is None:
        raise DataError(f"{path}: no array {target!r} to predict (--target); the arrays are {', '.join(arrays)}")
    if values is not None:
        values = values.reshape(-1) if values.ndim == 2 and values.shape[1] == 1 else values
        if values.ndim != 1 or len(values) != len(features):
            raise DataError(
                f"{path}: the target {target!r} must hold one value per row of {key!r} ({len(features)}), "
                f"got shape {values.shape}"
            )
        _check_target(path, values, f"array {target!r}")
    columns = [str(j) for j in range(features.shape[1])] if like is None else like.columns
    return Table(path, columns, features, values)


def _numeric(path: str, array: np.ndarray, columns: list[int], array_name: str | None = None) -> np.ndarray:
    """``array`` as finite float64, or a `DataError` naming the first bad row and column."""
    where = f"{path}{'' if array_name is None else f' (array {array_name!r})'}"
    if array.dtype.kind not in "biuf":
        raise DataError(f"{where}: features must be numbers, got dtype {array.dtype}")
    values = array.astype(np.float64)
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        row, j = bad[0]
        raise DataError(f"{where}: row {row + 1}, column {columns[j]}: {float(values[row, j])!r} is not a finite number")
    return values


def _check_target(path: str, values: np.ndarray, what: str) -> None:
    if values.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise DataError(f"{path}: row {bad[0] + 1}, {what}: the target is {float(values[bad[0]])!r}")
    elif values.dtype.kind not in "biuUS":
        raise DataError(f"{path}: {what}: the target must hold numbers or strings, got dtype {values.dtype}")
