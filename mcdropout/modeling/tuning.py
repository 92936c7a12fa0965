"""Grid search of the MC dropout hyper-parameters for your own data: ``mcdropout tune``.

The grid is the dropout rate p crossed with either the noise precision tau (regression; it also
sets the weight decay through ``l**2 (1 - p) / (2 N tau)``) or an explicit weight decay (either
task). Every point is trained with :func:`mcdropout.modeling.training.train`, the recipe of
``mcdropout train``, on the same seeded train/validation split, and scored on the validation rows:
regression by the MC-mixture log-likelihood (higher is better), classification by the negative
log-likelihood (lower is better). While the best point lies on an edge of the grid (the smallest
or largest dropout rate, tau or weight decay given) the grid is extended on that side and the new
points trained, within bounds and a budget (:mod:`mcdropout.modeling.edgesearch`); a point added
past the grid is chosen only when it beats the current choice by more than ``margin`` standard
errors of the paired per-row difference of their validation scores
(:mod:`mcdropout.modeling.selection`). ``extend=False`` (``--grid-only``) trains the given grid
only. The best model goes into the store with every point
tried and the search's log in its provenance; the points are also written as a table and the
dropout sweep as a plot. The command line is :mod:`mcdropout.modeling.tuning_cli`.
"""

from __future__ import annotations

import csv
import json
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mcdropout.errors import InvalidArgumentError
from mcdropout.evaluation import report, scores
from mcdropout.modeling import edgesearch, selection, tables, training
from mcdropout.store import ModelInfo, validate_name

DEFAULT_DROPOUT_RATES = (0.01, 0.05, 0.1, 0.2)


@dataclass(frozen=True)
class GridPoint:
    """One trained grid setting and its validation scores.

    Attributes:
        dropout: Dropout rate p (with concrete dropout, the rate every layer started from).
        tau: Regression: the precision in standardised target units, as given or (when the grid
            has no tau) as estimated after training; None for classification.
        weight_decay: The L2 coefficient the network was trained with; None with concrete
            dropout (its weight term follows from tau: :mod:`mcdropout.modeling.concrete`).
        score: The selection metric on the validation rows.
        validation: Every validation metric (see :func:`mcdropout.evaluation.scores.evaluate`).
        epochs_run: Epochs before early stopping ended training.
        round: The search round that added the point (0: the given grid).
        learned_dropout: With concrete dropout, each layer's learned rate, in model order.
    """

    dropout: float
    tau: float | None
    weight_decay: float | None
    score: float
    validation: dict[str, float]
    epochs_run: int
    round: int = 0
    learned_dropout: tuple[float, ...] = ()


@dataclass(frozen=True)
class TuningResult:
    """A finished grid search.

    Attributes:
        metric: The selection metric: "mc_log_likelihood" (regression) or "nll".
        higher_is_better: Whether larger scores win.
        points: Every point tried, in the order tried: the given grid (dropout-major), then
            each extension round's points.
        best: Index of the winner in ``points``.
        seed: The seed every point was trained with (same split for all).
        axis: The second grid axis: "tau", "weight_decay", or "" (dropout rates only).
        search: The search's log: axes with bounds and values tried, rounds, budget, why it
            stopped (:meth:`mcdropout.modeling.edgesearch.EdgeSearch.log`).
    """

    metric: str
    higher_is_better: bool
    points: tuple[GridPoint, ...]
    best: int
    seed: int
    axis: str = ""
    search: dict[str, Any] | None = None

    def table(self) -> list[dict[str, Any]]:
        """One flat row per grid point (for CSV and printing)."""
        return [{"dropout": p.dropout, "tau": p.tau, "weight_decay": p.weight_decay,
                 **({"learned_dropout": " ".join(f"{r:.4g}" for r in p.learned_dropout)}
                    if p.learned_dropout else {}),
                 self.metric: p.score, "epochs_run": p.epochs_run, "best": i == self.best,
                 **{f"validation_{k}": v for k, v in p.validation.items() if k != self.metric}}
                for i, p in enumerate(self.points)]


def grid_search(table: tables.Table, config: training.TrainConfig, name: str, *,
                dropout_rates: Sequence[float] = DEFAULT_DROPOUT_RATES,
                taus: Sequence[float] | None = None,
                weight_decays: Sequence[float] | None = None, description: str = "",
                on_point: Callable[[GridPoint], None] | None = None, extend: bool = True,
                max_rounds: int = edgesearch.DEFAULT_ROUNDS,
                margin: float = selection.DEFAULT_MARGIN
                ) -> tuple[Any, ModelInfo, TuningResult]:
    """Train every grid setting, extend the grid past an edge that holds the best one, and keep
    the best.

    Args:
        table: The labelled data (see :func:`mcdropout.modeling.tables.load_table`).
        config: Everything but the grid's settings (task, noise, layers, epochs, split, seed...);
            its ``dropout`` and ``tau`` are replaced per point. ``config.seed`` None draws one
            seed for the whole grid, so every point sees the same split.
        name: The model's name in the store.
        dropout_rates: The rates p to try, each in (0, 1).
        taus: Regression only: precisions in standardised target units (1 = noise as large as
            the target's spread), each > 0 (with a learned noise: the weight decay's prior
            precision). None: tau is estimated per point after training.
        weight_decays: L2 coefficients to try instead of taus, each > 0.
        description: Free text for the saved model.
        on_point: Called with each point as it finishes.
        extend: Extend an axis of two or more values past an edge holding the best point
            (:mod:`mcdropout.modeling.edgesearch`); False trains the given grid only.
        max_rounds: Extension rounds allowed, >= 0.
        margin: Standard errors by which a point added past the grid must beat the current
            choice on the validation rows (:func:`mcdropout.modeling.selection.choose`); 0 keeps
            the best score. Every point's model is kept until the search ends (the chosen one
            may be an earlier point than the best score's).

    Returns:
        (the best keras.Model, its ModelInfo with the points in ``provenance["tuning"]``, the
        :class:`TuningResult`).

    Raises:
        InvalidArgumentError: an empty or out-of-range grid, taus with weight decays, taus for
            classification, or anything :func:`mcdropout.modeling.training.train` rejects.
    """
    validate_name(name)
    rates, taus, decays = _check_grid(config.task, dropout_rates, taus, weight_decays)
    if config.concrete and decays:
        raise InvalidArgumentError(
            "weight decays do not apply to concrete dropout: its regularisers follow from the "
            "length-scale and tau; search taus (regression) or give none")
    seed = config.seed if config.seed is not None else secrets.randbits(31)
    # The split training.train makes for every point (same rows, same seed).
    train_idx, val_idx = tables.split_indices(table.rows, config.validation_fraction, seed)
    train_rows = len(train_idx)
    regression = config.task == "regression"
    metric = "mc_log_likelihood" if regression else "nll"
    axis = "tau" if taus else "weight_decay" if decays else ""
    axes = [edgesearch.Axis.of("dropout", rates)]
    if axis:
        axes.append(edgesearch.Axis.of(axis, taus or decays))
    search = edgesearch.EdgeSearch(tuple(axes), maximize=regression, extend=extend,
                                   max_rounds=max_rounds, margin=margin)
    points: list[GridPoint] = []
    trained: list[tuple[Any, ModelInfo]] = []
    val_x, val_y = _validation_rows(table, config.task, val_idx)

    def train_point(setting: tuple[float, ...]) -> tuple[float, np.ndarray]:
        p, second = setting[0], setting[1] if axis else None
        tau = second if axis == "tau" else None
        decay = second if axis == "weight_decay" else None
        length_scale = config.length_scale if decay is None else _length_scale(
            decay, p, train_rows, tau)
        model, info = training.train(
            table, replace(config, dropout=p, tau=tau, length_scale=length_scale, seed=seed),
            name, description=description)
        validation = info.provenance["validation_metrics"]
        if metric not in validation:
            raise InvalidArgumentError(
                f"validation metrics lack {metric!r} (got {sorted(validation)})")
        run, decay_used = info.provenance["training"], info.provenance["hyperparameters"][
            "weight_decay"]
        point = GridPoint(
            dropout=p, tau=(tau if info.tau is None else info.tau) if regression else None,
            weight_decay=None if decay_used is None else float(decay_used),
            score=float(validation[metric]), validation=dict(validation),
            epochs_run=int(run["epochs_run"]), round=search.round,
            learned_dropout=tuple(run.get("learned_dropout", {}).values()))
        points.append(point)
        trained.append((model, info))
        if on_point is not None:
            on_point(point)
        return point.score, _row_scores(model, info, val_x, val_y, config, seed)

    edgesearch.run_searches([search], lambda todo: [train_point(s) for _, s in todo])
    log = search.log()
    # The search's trials and the points were appended in the same order.
    best = search.best()
    chosen = next(i for i, t in enumerate(search.trials) if t is best)
    result = TuningResult(metric, regression, tuple(points), chosen, seed, axis, log)
    tuning = {"metric": metric, "higher_is_better": regression, "seed": seed, "axis": axis,
              "best": result.best, "grid": [asdict(p) for p in points], "search": log}
    model, info = trained[chosen]
    return model, replace(info, provenance={**info.provenance, "tuning": tuning}), result


def _validation_rows(table: tables.Table, task: str, val_idx: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The rows :func:`mcdropout.modeling.training.train` scores a point on (same split), with
    targets as :func:`mcdropout.evaluation.scores.evaluate` takes them."""
    y = tables.encode_labels(table.y)[0] if task == "classification" else table.y
    return table.x[val_idx], y[val_idx]


def _row_scores(model: Any, info: ModelInfo, x: np.ndarray, y: np.ndarray,
                config: training.TrainConfig, seed: int) -> np.ndarray:
    """Per validation row, the selection metric's term: the same passes (samples, seed) as the
    point's validation score, so their mean is that score."""
    from mcdropout.engine import MCDropoutPredictor

    predictor = MCDropoutPredictor.from_info(model, info)
    if config.task == "classification":
        return scores.classification_nll_rows(
            y, scores.predict_chunked(predictor, x, config.validation_samples, seed).mean)
    prediction = scores.predict_chunked(predictor, x, config.validation_samples, seed,
                                        return_samples=True)
    y = np.asarray(y, np.float64).reshape(prediction.mean.shape)
    noise = prediction.raw_noise_var
    precision = predictor.tau if noise is None else 1.0 / noise  # in the targets' units
    if precision is None or prediction.raw_samples is None:
        raise InvalidArgumentError(f"model {info.name!r} has no noise model (tau or learned) "
                                   "to score validation rows by MC log-likelihood")
    return scores.mc_log_likelihood_rows(y, prediction.raw_samples, precision)


def write_outputs(result: TuningResult, directory: str | Path, title: str = "") -> list[Path]:
    """Write ``grid.csv``, ``grid.json`` and the sweep plot ``dropout_sweep.png``."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    rows = result.table()
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(folder / "grid.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (folder / "grid.json").write_text(json.dumps(asdict(result), indent=2))
    series = [(p.dropout, _series_label(p, result.axis), p.score) for p in result.points]
    label = "validation MC log-likelihood" if result.higher_is_better else "validation NLL"
    plot = report.plot_dropout_sweep(series, folder / "dropout_sweep.png", metric=label,
                                     title=title, best=result.best)
    return [folder / "grid.csv", folder / "grid.json", plot]


def format_table(result: TuningResult) -> str:
    """Every point tried as aligned text, in the order tried, the winner marked with '*'."""
    learned = any(p.learned_dropout for p in result.points)
    lines = [f"{'':1} {'dropout':>8} {'tau':>10} {'weight decay':>12} {result.metric:>18} "
             f"{'epochs':>6} {'round':>5}" + ("  learned dropout" if learned else "")]
    for i, p in enumerate(result.points):
        tau = "-" if p.tau is None else f"{p.tau:.4g}"
        decay = "-" if p.weight_decay is None else f"{p.weight_decay:.3g}"
        rates = "  " + format_rates(p.learned_dropout) if learned else ""
        lines.append(f"{'*' if i == result.best else ' ':1} {p.dropout:8.4g} {tau:>10} "
                     f"{decay:>12} {p.score:18.4f} {p.epochs_run:6d} {p.round:5d}{rates}")
    return "\n".join(lines)


def format_rates(rates: Sequence[float]) -> str:
    """Learned dropout rates as printed in the table and progress lines: "0.0312 0.184"."""
    return " ".join(f"{r:.3g}" for r in rates)


def _series_label(point: GridPoint, axis: str) -> str:
    if axis == "tau":
        return f"tau={point.tau:.3g}"
    return f"weight decay={point.weight_decay:.3g}" if axis == "weight_decay" else ""


def _length_scale(decay: float, dropout: float, n_train: int, tau: float | None) -> float:
    # training.train derives its decay as l^2 (1 - p) / (2 N tau); solve for the l that gives
    # the requested decay (tau is 1 there when not given).
    return math.sqrt(2.0 * n_train * decay * (tau or 1.0) / (1.0 - dropout))


def _check_grid(task: str, dropout_rates: Sequence[float], taus: Sequence[float] | None,
                weight_decays: Sequence[float] | None
                ) -> tuple[list[float], list[float], list[float]]:
    rates = [float(p) for p in dropout_rates]
    if not rates or not all(0.0 < p < 1.0 for p in rates):
        raise InvalidArgumentError(f"dropout rates must be a non-empty list in (0, 1), got {rates}")
    if taus and weight_decays:
        raise InvalidArgumentError("give taus or weight decays, not both: in the MC dropout "
                                   "objective tau sets the weight decay")
    if taus and task != "regression":
        raise InvalidArgumentError(f"taus apply to regression only; the task is {task!r}; "
                                   "search weight decays instead")
    tau_list = [float(t) for t in taus or ()]
    decay_list = [float(d) for d in weight_decays or ()]
    for name, values in (("taus", tau_list), ("weight decays", decay_list)):
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise InvalidArgumentError(f"{name} must be finite numbers > 0, got {values}")
    return rates, tau_list, decay_list
