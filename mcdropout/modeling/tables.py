"""Reading tabular data (CSV with a header, NPZ with arrays ``x``/``y``) and standardising it.

This module decides what a file means as a data set (feature and target columns, class labels,
standardisation, the validation split); :mod:`mcdropout.modeling.fileformats` parses the files'
cells into checked arrays. Only numpy and the standard library: no TensorFlow, no pandas. Every
failure is an :class:`InvalidArgumentError` that names the file, the place and the value.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mcdropout.engine.prediction import Task
from mcdropout.errors import InvalidArgumentError
from mcdropout.modeling.fileformats import (
    check_finite,
    is_number,
    is_numeric_row,
    npz_array,
    npz_labels,
    numeric_columns,
    read_csv,
)

PathLike = str | os.PathLike[str]
# A constant column has std 0; dividing by it would turn every value into NaN or Inf.
_MIN_STD = 1e-12


@dataclass(frozen=True)
class Table:
    """A labelled data set as read from one file.

    Attributes:
        x: Features, (rows, features) float64, all finite.
        y: Regression: targets, (rows, targets) float64. Classification: the raw class labels as
            strings, (rows,) of dtype object; map them to indices with :func:`encode_labels`.
        feature_names: One name per feature column.
        target_names: The target column names (one per target; one for classification).
        source: The file the table was read from.
        sha256: Hex SHA-256 of that file's bytes.
    """

    x: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]
    target_names: tuple[str, ...]
    source: str
    sha256: str

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])

    def take(self, index: np.ndarray) -> Table:
        """The rows at ``index`` (same names, source and hash)."""
        return Table(self.x[index], self.y[index], self.feature_names, self.target_names,
                     self.source, self.sha256)


def load_table(path: PathLike, *, task: Task, target: Sequence[str] | None = None,
               features: Sequence[str] | None = None) -> Table:
    """Read a labelled data set.

    Args:
        path: A ``.csv`` file whose first line is a header, or a ``.npz`` file holding ``x``
            (rows, features) and ``y`` (rows,) or (rows, targets).
        task: "regression" (numeric targets) or "classification" (one column of class labels,
            any strings or numbers).
        target: CSV only: the target column name(s); default the last column. Classification
            takes exactly one.
        features: CSV only: the feature columns, in order; default every non-target column.

    Returns:
        The :class:`Table`.

    Raises:
        InvalidArgumentError: unreadable file, unknown column, non-numeric or non-finite value,
            unsupported extension.
    """
    path = Path(path)
    if task not in ("regression", "classification"):
        raise InvalidArgumentError(
            f"task must be 'regression' or 'classification', got {task!r}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        header, rows = read_csv(path)
        return _table_from_csv(path, header, rows, task, target, features)
    if suffix == ".npz":
        return _table_from_npz(path, task)
    raise InvalidArgumentError(f"data file must end in .csv or .npz, got {str(path)!r}")


def load_inputs(path: PathLike, *, feature_names: Sequence[str] = (),
                n_features: int | None = None) -> np.ndarray:
    """Read model inputs (no targets) for prediction.

    Args:
        path: ``.npy`` (an array of rows), ``.npz`` (array ``x``) or ``.csv``. A CSV may have a
            header; when it names every column of ``feature_names`` those columns are used, in
            that order, so a labelled file works too. Without a header it must hold exactly
            ``n_features`` columns.
        feature_names: The model's feature names, from its provenance; may be empty.
        n_features: The number of columns the model takes, if known.

    Returns:
        Inputs as float64, (rows, features) for CSV; as stored for NPY/NPZ.

    Raises:
        InvalidArgumentError: unreadable file, wrong column count, non-numeric value.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        try:
            if suffix == ".npy":
                return np.asarray(np.load(path, allow_pickle=False))
            with np.load(path, allow_pickle=False) as loaded:
                return npz_array(loaded, "x", path)
        except InvalidArgumentError:
            raise
        except (OSError, ValueError) as exc:
            raise InvalidArgumentError(f"cannot read {path}: {exc}") from exc
    if suffix != ".csv":
        raise InvalidArgumentError(f"input file must end in .csv, .npy or .npz, got {str(path)!r}")
    header, rows = read_csv(path)
    if not is_numeric_row(header) and feature_names and set(feature_names) <= set(header):
        columns = [header.index(name) for name in feature_names]
        return numeric_columns(path, rows, columns, header, first_line=2)
    if is_numeric_row(header):
        rows, first_line = [header, *rows], 1
    else:
        first_line = 2
    width = len(rows[0]) if rows else 0
    if n_features is not None and width != n_features:
        named = f" and does not name all of the model's features {list(feature_names)}" \
            if feature_names else ""
        raise InvalidArgumentError(
            f"{path} has {width} columns{named}; the model takes {n_features}")
    return numeric_columns(path, rows, list(range(width)), None, first_line=first_line)


def csv_header(path: PathLike) -> list[str]:
    """The column names on the first line of a CSV file (read without the rest of the file)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [c.strip() for c in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidArgumentError(f"cannot read {path}: {exc}") from exc


def encode_labels(values: np.ndarray, labels: Sequence[str] | None = None
                  ) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map raw class labels to indices 0..K-1.

    Args:
        values: Class labels as strings, (rows,).
        labels: The known labels, in index order. None derives them: sorted numerically when every
            value is a number, else lexically.

    Returns:
        (indices as int64 (rows,), labels).

    Raises:
        InvalidArgumentError: a value is not among ``labels``.
    """
    text = [str(v) for v in np.asarray(values, dtype=object).ravel()]
    if labels is None:
        unique = set(text)
        key = float if all(is_number(v) for v in unique) else str
        labels = tuple(sorted(unique, key=key))  # type: ignore[arg-type]
    labels = tuple(labels)
    position = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(text) - set(position))
    if unknown:
        raise InvalidArgumentError(
            f"class labels {unknown[:10]} are not among the model's labels {list(labels)}")
    return np.array([position[v] for v in text], dtype=np.int64), labels


def standardization(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations (ddof 0) of a (rows, columns) array.

    A constant column gets std 1, so standardising leaves it at 0 instead of dividing by 0.
    """
    values = np.asarray(values, dtype=np.float64)
    mean = values.mean(axis=0)
    std = values.std(axis=0)
    std = np.where(std > _MIN_STD, std, 1.0)
    return mean, std


def split_indices(rows: int, validation_fraction: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of ``range(rows)`` into (train, validation) index arrays.

    Raises:
        InvalidArgumentError: fraction outside (0, 1) or too few rows for both parts.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise InvalidArgumentError(
            f"validation fraction must be in (0, 1), got {validation_fraction!r}")
    n_val = max(1, round(rows * validation_fraction))
    if rows - n_val < 2:
        raise InvalidArgumentError(
            f"need at least 2 training rows besides {n_val} validation rows, got {rows} rows")
    order = np.random.default_rng(seed).permutation(rows)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def sha256_file(path: PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _table_from_csv(path: Path, header: list[str], rows: list[list[str]], task: Task,
                    target: Sequence[str] | None, features: Sequence[str] | None) -> Table:
    if is_numeric_row(header):
        raise InvalidArgumentError(
            f"{path} must start with a header line naming its columns, got {header[:5]}")
    if len(set(header)) != len(header):
        raise InvalidArgumentError(f"{path} has repeated column names: {header}")
    targets = list(target) if target else [header[-1]]
    chosen = list(features) if features else [c for c in header if c not in targets]
    for name in [*targets, *chosen]:
        if name not in header:
            raise InvalidArgumentError(f"{path} has no column {name!r}; its columns: {header}")
    if task == "classification" and len(targets) != 1:
        raise InvalidArgumentError(
            f"classification takes exactly one target column, got {targets}")
    if not chosen:
        raise InvalidArgumentError(f"{path} has no feature columns besides the target {targets}")
    if not rows:
        raise InvalidArgumentError(f"{path} has a header but no data rows")
    x = numeric_columns(path, rows, [header.index(c) for c in chosen], header, first_line=2)
    if task == "classification":
        col = header.index(targets[0])
        y = np.array([row[col].strip() for row in rows], dtype=object)
        missing = [i + 2 for i, v in enumerate(y) if v == ""]
        if missing:
            raise InvalidArgumentError(
                f"{path} column {targets[0]!r} is empty on line(s) {missing[:10]}")
    else:
        y = numeric_columns(path, rows, [header.index(c) for c in targets], header, first_line=2)
    return Table(x, y, tuple(chosen), tuple(targets), str(path), sha256_file(path))


def _table_from_npz(path: Path, task: Task) -> Table:
    try:
        with np.load(path, allow_pickle=False) as loaded:
            x = np.asarray(npz_array(loaded, "x", path))
            y = np.asarray(npz_array(loaded, "y", path))
    except InvalidArgumentError:
        raise
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(f"cannot read {path}: {exc}") from exc
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.dtype.kind not in "iuf" or len(x) == 0:
        raise InvalidArgumentError(
            f"{path}: x must be a non-empty numeric (rows, features) array, "
            f"got shape {x.shape} dtype {x.dtype}")
    if len(y) != len(x):
        raise InvalidArgumentError(f"{path}: x has {len(x)} rows but y has {len(y)}")
    x = x.astype(np.float64)
    check_finite(path, x, "x")
    features = tuple(f"x{i}" for i in range(x.shape[1]))
    if task == "classification":
        if y.ndim != 1:
            raise InvalidArgumentError(
                f"{path}: classification y must be one label per row, got shape {y.shape}")
        return Table(x, npz_labels(path, y), features, ("y",), str(path), sha256_file(path))
    if y.dtype.kind not in "iuf" or y.ndim not in (1, 2):
        raise InvalidArgumentError(
            f"{path}: regression y must be numeric (rows,) or (rows, targets), "
            f"got shape {y.shape} dtype {y.dtype}")
    y = y.astype(np.float64).reshape(len(y), -1)
    check_finite(path, y, "y")
    targets = ("y",) if y.shape[1] == 1 else tuple(f"y{i}" for i in range(y.shape[1]))
    return Table(x, y, features, targets, str(path), sha256_file(path))
