"""The built-in default models, trained on first use from data shipped in the package.

Two small real data sets ship in ``mcdropout/modeling/data/`` (see its README for source and licence):
diabetes (regression, 442 rows) and iris (classification, 150 rows). Every 10th row of each is
held out as a test set that training never sees; the demo predicts those rows. Nothing is
downloaded: the first call trains (seeded, seconds on a laptop CPU) and later calls find the
models in the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mcdropout.evaluation import scores
from mcdropout.modeling import tables, training
from mcdropout.store import ModelInfo, ModelStore

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
# Bump when the recipe below changes: stores made by an older recipe then get a new version.
REVISION = 1
TEST_EVERY = 10
_LOCK_FILE = ".default-store.lock"


@dataclass(frozen=True)
class DefaultModel:
    """One built-in model: which shipped file, which target column, which recipe."""

    name: str
    file: str
    target: str
    config: training.TrainConfig
    description: str


DEFAULT_MODELS: tuple[DefaultModel, ...] = (
    DefaultModel(
        "diabetes", "diabetes.csv", "progression",
        training.TrainConfig(task="regression", hidden=(50,), dropout=0.05, epochs=120,
                             batch_size=32, learning_rate=3e-3, patience=15, seed=0),
        "Disease progression one year after baseline from 10 baseline measurements "
        "(Efron et al. 2004, diabetes data as shipped by scikit-learn). Regression."),
    DefaultModel(
        "iris", "iris.csv", "species",
        training.TrainConfig(task="classification", hidden=(50,), dropout=0.05, epochs=120,
                             batch_size=16, learning_rate=1e-2, patience=15, seed=0),
        "Iris species from sepal and petal length and width in cm (Fisher 1936). "
        "Classification into setosa, versicolor, virginica."),
)


@dataclass(frozen=True)
class DemoResult:
    """What :func:`demo` predicted.

    Attributes:
        info: The model's metadata.
        x: The held-out input rows, original units.
        y: Their true targets, (rows, outputs).
        prediction: The MC dropout prediction for ``x``.
    """

    info: ModelInfo
    x: np.ndarray
    y: np.ndarray
    prediction: Any


def default_store_root() -> Path:
    """``$XDG_CACHE_HOME/mcdropout/default-store``, with ``~/.cache`` when the variable is unset."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "mcdropout" / "default-store"


def ensure_default_store(root: Path | None = None,
                         models: Sequence[DefaultModel] | None = None) -> Path:
    """Make sure a model store holds the built-in default models, training any that are missing.

    Safe when several processes call it at once: they take turns on a lock file in the store,
    and each model version is written to a temporary directory and renamed into place. A model of
    the same name that was not made by this function is left alone.

    Args:
        root: The store's root; default :func:`default_store_root`.
        models: Which default models to ensure; default all of :data:`DEFAULT_MODELS`.

    Returns:
        The store's root.
    """
    root = Path(root) if root is not None else default_store_root()
    models = DEFAULT_MODELS if models is None else models
    if not _missing(ModelStore(root), models):
        return root
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / _LOCK_FILE):
        store = ModelStore(root)
        for spec in _missing(store, models):  # again: another process may have trained them
            log.info("training default model %r into %s (first use; seconds)", spec.name, root)
            model, info = train_default(spec)
            version = store.save(model, info)
            log.info("default model %r version %d saved", spec.name, version)
    return root


def train_default(spec: DefaultModel) -> tuple[Any, ModelInfo]:
    """Train one default model on its shipped data without the held-out rows.

    Returns:
        (keras.Model, ModelInfo) whose provenance also records the test-set metrics.
    """
    from mcdropout.engine import MCDropoutPredictor

    table = load_default_table(spec)
    train_rows, test_rows = held_out(table)
    model, info = training.train(table.take(train_rows), spec.config, spec.name,
                                 description=spec.description)
    test = table.take(test_rows)
    y = tables.encode_labels(test.y, info.labels)[0] if info.task == "classification" else test.y
    test_metrics = scores.evaluate(MCDropoutPredictor.from_info(model, info), test.x, y,
                                    seed=spec.config.seed)
    default = {"revision": REVISION, "test_rows": f"every {TEST_EVERY}th row from row 0",
               "test_metrics": test_metrics}
    return model, replace(info, provenance={**info.provenance, "default_model": default})


def load_default_table(spec: DefaultModel) -> tables.Table:
    """The shipped data set of a default model."""
    return tables.load_table(DATA_DIR / spec.file, task=spec.config.task, target=[spec.target])


def held_out(table: tables.Table) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices: every ``TEST_EVERY``-th row, from row 0, is a test row."""
    index = np.arange(table.rows)
    return index[index % TEST_EVERY != 0], index[index % TEST_EVERY == 0]


def demo(root: Path | None = None, *, model: str = "diabetes", rows: int = 5,
         samples: int = 100, seed: int = 0, level: float = 0.95) -> DemoResult:
    """Predict a few held-out rows of a default model with MC dropout.

    Args:
        root: The default store (see :func:`ensure_default_store`).
        model: Which default model.
        rows: How many of its held-out rows, >= 1.
        samples: MC passes T.
        seed: Dropout seed.
        level: Central interval level, in (0, 1).

    Returns:
        The rows, their true targets and the prediction.
    """
    from mcdropout.engine import MCDropoutPredictor

    spec = next((m for m in DEFAULT_MODELS if m.name == model), None)
    if spec is None:
        from mcdropout.errors import NotFoundError

        raise NotFoundError(f"no default model {model!r}; default models: "
                            f"{[m.name for m in DEFAULT_MODELS]}")
    store = ModelStore(ensure_default_store(root, [spec]))
    info = store.read_info(spec.name)
    predictor = MCDropoutPredictor.from_info(store.load_model(spec.name, info.version), info)
    table = load_default_table(spec)
    test = table.take(held_out(table)[1][:max(1, rows)])
    prediction = predictor.predict(test.x, samples, seed, interval_levels=(level,))
    y = test.y if info.task == "regression" else test.y.reshape(-1, 1)
    return DemoResult(info, test.x, y, prediction)


def _missing(store: ModelStore, models: Sequence[DefaultModel]) -> list[DefaultModel]:
    missing = []
    for spec in models:
        if not store.versions(spec.name):
            missing.append(spec)
            continue
        made_by = store.read_info(spec.name).provenance.get("default_model")
        # Retrain only our own, outdated models; a user's model of that name is theirs.
        if isinstance(made_by, dict) and made_by.get("revision") != REVISION:
            missing.append(spec)
    return missing


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
