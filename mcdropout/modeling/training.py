"""Training an MC dropout MLP on a table and writing it, with full metadata, into the model store.

The recipe: a seeded train/validation split; features (and regression targets) standardised with
the training rows' statistics; the standard MC dropout MLP (:func:`mcdropout.modeling.builders.build_mlp`)
fitted with Adam and early stopping on the validation loss (best weights restored); for regression
without a given tau, the noise precision estimated from the validation residuals of the MC mean;
and the validation metrics of :func:`mcdropout.evaluation.scores.evaluate` recorded in the provenance.
"""

from __future__ import annotations

import platform
import secrets
import sys
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from mcdropout.engine.prediction import Task
from mcdropout.errors import InvalidArgumentError
from mcdropout.evaluation import scores
from mcdropout.modeling import builders, tables
from mcdropout.store import ModelInfo, ModelStore, validate_name

# The noise variance estimate keeps at least this share of the validation residual variance: with
# few validation rows the epistemic spread can exceed the residuals by chance, and tau -> infinity
# would make every interval purely epistemic and the test log-likelihood collapse.
_MIN_NOISE_SHARE = 0.01


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train`.

    Attributes:
        task: "regression" or "classification".
        hidden: Hidden layer widths.
        activation: Keras activation of the hidden layers.
        dropout: Dropout rate p of every Dropout layer, in (0, 1); with ``concrete``, the rate
            every layer starts from.
        input_dropout: Dropout on the inputs too.
        length_scale: Prior length-scale for the weight decay (standardised input units).
        tau: Regression noise precision in standardised target units, > 0; None estimates it from
            the validation residuals after training (and uses 1 in the weight decay). With a
            learned noise it is the prior precision of the weight decay only (None: 1).
        noise: Regression: "fixed" (one precision tau) or "learned" (the network predicts a
            log-variance per row and target beside the mean, trained by Gaussian NLL; the
            saved version's metadata says ``noise: "learned"`` and has no tau).
        concrete: Learn each layer's dropout rate (concrete dropout, Gal, Hron & Kendall 2017;
            :mod:`mcdropout.modeling.concrete`); the learned rates are in the provenance
            (``training.learned_dropout``) and in the served model's stochastic layers.
        max_norm: Max-norm constraint on incoming weight vectors, or None.
        epochs: Most epochs to run, >= 1.
        batch_size: Rows per gradient step, >= 1.
        learning_rate: Adam learning rate.
        validation_fraction: Share of the rows held out for early stopping and metrics, in (0, 1).
        patience: Epochs without a better validation loss before stopping, >= 1.
        seed: Seeds the split, weight initialisation, shuffling and dropout (Python, numpy and
            TensorFlow via ``keras.utils.set_random_seed``); None draws one and records it.
        validation_samples: MC passes T used for tau and the validation metrics.
        verbose: Keras ``fit`` verbosity: 0 silent, 2 one line per epoch.
    """

    task: Task = "regression"
    hidden: tuple[int, ...] = (50,)
    activation: str = "relu"
    dropout: float = 0.05
    input_dropout: bool = True
    length_scale: float = 1e-2
    tau: float | None = None
    noise: str = "fixed"
    concrete: bool = False
    max_norm: float | None = None
    epochs: int = 200
    batch_size: int = 32
    learning_rate: float = 1e-3
    validation_fraction: float = 0.2
    patience: int = 20
    seed: int | None = None
    validation_samples: int = 100
    verbose: int = 0


def train(table: tables.Table, config: TrainConfig, name: str, *, description: str = "",
          extra_provenance: dict[str, Any] | None = None) -> tuple[Any, ModelInfo]:
    """Train an MC dropout MLP on ``table``.

    Note that this seeds the global Python, numpy and TensorFlow generators.

    Args:
        table: The labelled data (see :func:`mcdropout.modeling.tables.load_table`).
        config: Hyper-parameters.
        name: The model's name in the store.
        description: Free text for the metadata.
        extra_provenance: Merged into the recorded provenance.

    Returns:
        (the trained keras.Model, its ModelInfo with version 0).

    Raises:
        InvalidArgumentError: bad name, hyper-parameter, or data (e.g. one class only).
    """
    import keras  # deferred: importing the package should not start TensorFlow

    validate_name(name)
    _check_config(config)
    seed = config.seed if config.seed is not None else secrets.randbits(31)
    train_idx, val_idx = tables.split_indices(table.rows, config.validation_fraction, seed)
    x_mean, x_std = tables.standardization(table.x[train_idx])
    x_std_all = (table.x - x_mean) / x_std
    if config.task == "classification":
        y_all, labels = tables.encode_labels(table.y)
        if len(labels) < 2:
            raise InvalidArgumentError(
                f"classification needs at least 2 classes in {table.target_names[0]!r}, "
                f"got {list(labels)}")
        y_mean = y_std = None
        y_fit: np.ndarray = (y_all.astype(np.float32)[:, None] if len(labels) == 2
                             else y_all)
        output_dim = 1 if len(labels) == 2 else len(labels)
    else:
        y_all, labels = table.y, table.target_names
        y_mean, y_std = tables.standardization(table.y[train_idx])
        y_fit = ((table.y - y_mean) / y_std).astype(np.float32)
        output_dim = table.y.shape[1]

    keras.utils.set_random_seed(seed)
    n_train = len(train_idx)
    tau_prior = config.tau if config.tau is not None else 1.0
    decay = None if config.concrete else builders.weight_decay(
        config.length_scale, config.dropout, n_train, tau_prior)
    model = builders.build_mlp(
        table.x.shape[1], output_dim, hidden=config.hidden, activation=config.activation,
        dropout=config.dropout, input_dropout=config.input_dropout, task=config.task,
        max_norm=config.max_norm, weight_decay=decay, learning_rate=config.learning_rate,
        noise=config.noise, concrete=config.concrete, length_scale=config.length_scale,
        n_train=n_train, tau=tau_prior)
    x32 = x_std_all.astype(np.float32)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                         restore_best_weights=True)
    history = model.fit(x32[train_idx], y_fit[train_idx], epochs=config.epochs,
                        batch_size=config.batch_size, shuffle=True, callbacks=[stop],
                        validation_data=(x32[val_idx], y_fit[val_idx]), verbose=config.verbose)

    learned = config.noise == "learned"
    tau = None if learned else config.tau
    if config.task == "regression" and tau is None and not learned:
        tau = estimate_tau(model, x32[val_idx], y_fit[val_idx], config.validation_samples, seed)
    info = ModelInfo(
        name=name, task=config.task, input_shape=(int(table.x.shape[1]),), input_dtype="float32",
        labels=tuple(labels), feature_mean=_floats(x_mean), feature_std=_floats(x_std),
        target_mean=_floats(y_mean), target_std=_floats(y_std), tau=tau, noise=config.noise,
        description=description)
    from mcdropout.engine import MCDropoutPredictor

    predictor = MCDropoutPredictor.from_info(model, info)
    validation = scores.evaluate(predictor, table.x[val_idx], y_all[val_idx],
                                  samples=config.validation_samples, seed=seed)
    losses = history.history
    best = int(np.argmin(losses["val_loss"]))
    provenance = {
        "data": {"path": table.source, "sha256": table.sha256, "rows": table.rows,
                 "train_rows": n_train, "validation_rows": len(val_idx),
                 "features": list(table.feature_names), "target": list(table.target_names)},
        "hyperparameters": {**asdict(config), "hidden": list(config.hidden), "seed": seed,
                            "weight_decay": decay, "tau_prior": config.tau or 1.0},
        "training": {"epochs_run": len(losses["loss"]), "best_epoch": best + 1,
                     "train_loss": float(losses["loss"][best]),
                     "validation_loss": float(losses["val_loss"][best]),
                     "tau_estimated": (config.task == "regression" and config.tau is None
                                       and not learned),
                     "loss": [float(v) for v in losses["loss"]],
                     "val_loss": [float(v) for v in losses["val_loss"]],
                     **({"learned_dropout": _learned_rates(model)} if config.concrete else {})},
        "validation_metrics": validation,
        "versions": _versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **(extra_provenance or {}),
    }
    return model, replace(info, provenance=provenance)


def estimate_tau(model: Any, x: np.ndarray, y: np.ndarray, samples: int, seed: int) -> float:
    """Noise precision, in the units of ``y``, from held-out residuals of the MC mean.

    Moment matching: the MC predictive variance is the pass variance plus 1/tau, so
    ``1/tau = mean((y - mc_mean)**2) - mean(mc_var)``, kept at or above 1% of the residual
    variance.

    Args:
        model: The trained model, fed ``x`` as is (already standardised).
        x: Held-out inputs, (rows, features).
        y: Held-out targets in the model's output units, (rows, outputs).
        samples: MC passes T.
        seed: Dropout seed.
    """
    from mcdropout.engine import MCDropoutPredictor
    from mcdropout.engine.prediction import Prediction

    prediction = MCDropoutPredictor(model, task="regression").predict(x, samples, seed)
    assert isinstance(prediction, Prediction)  # a one-head model
    residual = float(np.mean((np.asarray(y, np.float64).reshape(prediction.mean.shape)
                              - prediction.mean) ** 2))
    noise = max(residual - float(np.mean(prediction.std**2)), _MIN_NOISE_SHARE * residual)
    if not noise > 0:
        raise InvalidArgumentError(
            "cannot estimate tau: the model fits the validation rows exactly; pass tau")
    return 1.0 / noise


def train_file(path: str | Path, config: TrainConfig, *, name: str, model_root: str | Path,
               target: list[str] | None = None, description: str = ""
               ) -> tuple[int, ModelInfo]:
    """Train on a CSV/NPZ file and save the model as a new version in a store.

    Args:
        path: The data (see :func:`mcdropout.modeling.tables.load_table`).
        config: Hyper-parameters.
        name: Model name in the store.
        model_root: The store's root directory.
        target: CSV target column(s); default the last column.
        description: Free text for the metadata.

    Returns:
        (the new version number, its ModelInfo).
    """
    validate_name(name)
    table = tables.load_table(Path(path).resolve(), task=config.task, target=target)
    model, info = train(table, config, name, description=description)
    version = ModelStore(model_root).save(model, info)
    return version, replace(info, version=version)


def _check_config(config: TrainConfig) -> None:
    for field, low in (("epochs", 1), ("batch_size", 1), ("patience", 1),
                       ("validation_samples", 2)):
        value = getattr(config, field)
        if not isinstance(value, int) or value < low:
            raise InvalidArgumentError(f"{field} must be an integer >= {low}, got {value!r}")
    if config.task not in builders.TASKS:
        raise InvalidArgumentError(f"task must be one of {list(builders.TASKS)}, "
                                   f"got {config.task!r}")
    if not 0.0 < config.dropout < 1.0:
        raise InvalidArgumentError(f"dropout must be in (0, 1), got {config.dropout!r}")
    if config.tau is not None and config.task == "classification":
        raise InvalidArgumentError("tau applies to regression only; got tau with classification")
    builders.check_noise(config.noise, config.task)
    if config.seed is not None and not 0 <= config.seed < 2**32:
        raise InvalidArgumentError(f"seed must be in 0..2**32-1, got {config.seed}")


def _learned_rates(model: Any) -> dict[str, float]:
    from mcdropout.modeling import concrete  # deferred: it imports Keras

    return concrete.learned_rates(model)


def _floats(values: np.ndarray | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in np.ravel(values))


def _versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("mcdropout", "keras", "tensorflow", "tensorflow-cpu", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found
