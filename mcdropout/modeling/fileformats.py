"""The syntax of the data files :mod:`mcdropout.modeling.tables` reads: CSV text and NPZ arrays.

Turns a file's cells into checked numpy arrays and nothing more: which columns are features or
targets, and what a task needs of them, is :mod:`~mcdropout.modeling.tables`' business. Only numpy
and the standard library; every failure is an :class:`InvalidArgumentError` that names the file,
the line and column or array, and the value.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from mcdropout.errors import InvalidArgumentError


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """(the first line's cells, stripped; the other lines), blank lines skipped.

    Raises:
        InvalidArgumentError: unreadable file, no lines, or a line whose field count differs
            from the first line's.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = [row for row in csv.reader(f) if row and any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidArgumentError(f"cannot read {path}: {exc}") from exc
    if not lines:
        raise InvalidArgumentError(f"{path} is empty")
    header = [c.strip() for c in lines[0]]
    for number, row in enumerate(lines[1:], start=2):
        if len(row) != len(header):
            raise InvalidArgumentError(
                f"{path} line {number} has {len(row)} fields, the first line has {len(header)}")
    return header, lines[1:]


def numeric_columns(path: Path, rows: list[list[str]], columns: list[int],
                    header: list[str] | None, first_line: int) -> np.ndarray:
    """The cells of ``columns`` as float64, (rows, columns).

    Args:
        path: The file, for messages.
        rows: The CSV lines' cells.
        columns: Indices of the columns to take, in output order.
        header: Column names for messages; None numbers the columns from 1.
        first_line: The file's line number of ``rows[0]``, for messages.

    Raises:
        InvalidArgumentError: a cell is not a finite number (the message names line and column).
    """
    out = np.empty((len(rows), len(columns)), dtype=np.float64)
    for i, row in enumerate(rows):
        for j, col in enumerate(columns):
            text = row[col].strip()
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                name = repr(header[col]) if header else str(col + 1)
                raise InvalidArgumentError(
                    f"{path} line {i + first_line} column {name}: expected a finite number, "
                    f"got {text!r}")
            out[i, j] = value
    return out


def is_number(text: str) -> bool:
    """Whether ``text`` reads as a finite float."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def is_numeric_row(row: list[str]) -> bool:
    """Whether every cell of a CSV line is a number: a data line, not a header."""
    return all(is_number(c.strip()) for c in row)


def npz_array(loaded: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    """The array ``key`` of an open NPZ file.

    Raises:
        InvalidArgumentError: the file holds no such array (the message lists those it holds).
    """
    if key not in loaded.files:
        raise InvalidArgumentError(f"{path} has no array {key!r}; it holds {loaded.files}")
    return np.asarray(loaded[key])


def npz_labels(path: Path, y: np.ndarray) -> np.ndarray:
    """Class labels from an NPZ ``y`` of integers, whole floats or strings, as strings (rows,).

    Raises:
        InvalidArgumentError: fractional or non-finite floats, or another dtype.
    """
    if y.dtype.kind in "iub":
        return np.array([str(int(v)) for v in y], dtype=object)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise InvalidArgumentError(
                f"{path}: float class labels must be whole numbers, got e.g. "
                f"{y[~(np.isfinite(y) & (y == np.round(y)))][:3].tolist()}")
        return np.array([str(int(v)) for v in y], dtype=object)
    if y.dtype.kind == "U":
        return np.array([str(v) for v in y], dtype=object)
    raise InvalidArgumentError(f"{path}: class labels must be integers or strings, got {y.dtype}")


def check_finite(path: Path, values: np.ndarray, name: str) -> None:
    """Raise InvalidArgumentError if the array ``name`` of ``path`` holds NaN or infinities."""
    if not np.all(np.isfinite(values)):
        raise InvalidArgumentError(f"{path}: {name} holds NaN or infinite values")
