"""Fitting a version's calibration on held-out labelled rows (``mcdropout calibrate``).

Regression heads get split-conformal intervals: the scores ``|y - mean| / scale`` of the
calibration rows, whose ``ceil((n + 1) level)``-th smallest q makes ``mean +- q scale`` cover a
new exchangeable row's target with probability at least ``level`` (marginally, not per row).
Classifier heads get a temperature, fitted by the NLL of the MC predictive distribution of the
temperature-scaled passes, then LAC prediction sets on the scores ``1 - p(true class)`` of the
calibrated mean. Both get the drift reference and, if asked, an abstention threshold, taken on
the calibration rows as a calibrated request serves them.

The predictor runs over the rows in blocks, so memory stays bounded by the block, not the data.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata as package_metadata
from typing import Any

import numpy as np

from mcdropout.calibration.abstention import AbstentionTarget, choose
from mcdropout.calibration.model import (
    Calibration,
    ConformalRegression,
    ConformalSets,
    DriftReference,
    HeadCalibration,
    Scale,
    max_level,
)
from mcdropout.calibration.temperature import fit_temperature, scale_probabilities
from mcdropout.errors import InvalidArgumentError
from mcdropout.evaluation import scores

# The temperature is fitted on at most this many passes per row: the NLL's minimiser moves by
# far less than its own sampling error beyond that, and the kept passes stay small.
FIT_PASSES = 200
# Raw values (passes x rows x outputs) held for one block of rows (~32 MiB of float32).
_BLOCK_VALUES = 8_000_000
# A classifier's probabilities sum to 1 per row up to float32 rounding.
_SUM_TOLERANCE = 1e-3


@dataclass
class _Head:
    """What the sweep over the calibration rows gathers for one head."""

    name: str
    task: str
    width: int
    has_tau: bool
    mean: list[np.ndarray] = field(default_factory=list)
    spread: list[np.ndarray] = field(default_factory=list)  # predictive_std, else std
    std: list[np.ndarray] = field(default_factory=list)
    intervals: list[list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=list)
    passes: list[np.ndarray] = field(default_factory=list)  # classifier: first FIT_PASSES


def calibrate(predictor: Any, x: Any, targets: Any, *, samples: int | None = None,
              seed: int = 0, abstention: AbstentionTarget | Mapping[str, AbstentionTarget]
              | None = None, report_levels: Sequence[float] = (0.9, 0.95)) -> Calibration:
    """Fit the calibration of every head of a model on held-out labelled rows.

    The rows must not have been used in training; the guarantees (conformal coverage, set
    coverage) hold for new rows exchangeable with them. The ``after`` scores are measured on
    the calibration rows themselves (in-sample: the conformal coverage there is at least the
    level by construction), the ``before`` ones on the same rows without calibration.

    Args:
        predictor: The version's uncalibrated :class:`mcdropout.MCDropoutPredictor`.
        x: Its inputs: an array (one-input models) or a mapping input name -> array.
        targets: An array for a one-head model, or a mapping head name -> array naming every
            head. Regression: (rows, outputs) (or (rows,) for one output) finite floats in the
            target's units. Classification: (rows,) integer class indices 0..classes-1.
        samples: Passes T, as a calibrated request will use (default the model's default).
        seed: Dropout seed, the same for every block of rows.
        abstention: An :class:`AbstentionTarget` (one-head models), or head name -> target for
            the heads that should get an abstention policy; None for none.
        report_levels: Levels the before/after interval coverage, width and set scores are
            reported at; each must be at most n/(n+1) for n rows.

    Returns:
        The :class:`Calibration`, ready for :meth:`mcdropout.ModelStore.save_calibrated`.

    Raises:
        InvalidArgumentError: targets missing, extra, of the wrong shape, dtype or range, rows
            that differ from the inputs', a multi-label classifier head (probabilities that do
            not sum to 1), an abstention measure the head does not give or a risk no share of
            the rows reaches, a report level the rows cannot support, or what ``predict``
            refuses.
        ResourceLimitError: one row's raw passes exceed the predictor's raw-sample limit.
    """
    # has_tau: a fixed tau or a learned noise; either way scores are scaled by predictive_std
    heads = [_Head(h.name, h.task, int(h.width), h.has_tau) for h in predictor.heads]
    rows = _rows(x)
    y = _targets(heads, targets, rows)
    aims = _aims(heads, abstention)
    levels = tuple(float(level) for level in report_levels)
    for level in levels:
        if not 0.0 < level <= max_level(rows):
            raise InvalidArgumentError(
                f"report level {level} needs more calibration rows than {rows}: levels must be "
                f"in (0, {max_level(rows):.6g}] (n/(n+1)); give more rows or lower levels")
    passes = int(samples or predictor.default_samples)
    _sweep(predictor, x, rows, passes, seed, levels, heads)
    fitted = {}
    for head in heads:
        if head.task == "regression":
            fitted[head.name] = _regression(head, y[head.name], passes, levels, aims.get(head.name))
        else:
            fitted[head.name] = _classification(predictor, x, rows, passes, seed, head,
                                                y[head.name], levels, aims.get(head.name))
    provenance = {"rows": rows, "samples": passes, "seed": seed,
                  "temperature_passes": min(passes, FIT_PASSES),
                  "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "mcdropout": _version()}
    return Calibration(fitted, provenance)


# -- checks ----------------------------------------------------------------------------------------
def _rows(x: Any) -> int:
    first = next(iter(x.values())) if isinstance(x, Mapping) and x else x
    array = np.asarray(first)
    if array.ndim < 1 or array.shape[0] == 0:
        raise InvalidArgumentError("calibration needs at least one labelled row, got none")
    return int(array.shape[0])


def _targets(heads: list[_Head], targets: Any, rows: int) -> dict[str, np.ndarray]:
    names = [h.name for h in heads]
    targets = _by_head(names, targets, "targets", "every head's name to its targets")
    missing = [n for n in names if n not in targets]
    if missing:
        raise InvalidArgumentError(f"targets must name every head of the model: missing "
                                   f"{missing}; the heads: {names}")
    return {h.name: _head_targets(h, targets[h.name], rows) for h in heads}


def _by_head(names: list[str], given: Any, what: str, mapping: str) -> dict[str, Any]:
    """``given`` as head name -> value: a bare value is the only head's; unknown names refused."""
    if not isinstance(given, Mapping):
        if len(names) != 1:
            raise InvalidArgumentError(f"the model has {len(names)} heads ({', '.join(names)}); "
                                       f"{what} must be a mapping from {mapping}")
        return {names[0]: given}
    unknown = sorted(set(given) - set(names), key=str)
    if unknown:
        raise InvalidArgumentError(f"{what} names unknown heads {unknown}; the heads: {names}")
    return dict(given)


def _head_targets(head: _Head, values: Any, rows: int) -> np.ndarray:
    y = np.asarray(values)
    where = f"targets of {head.task} head {head.name!r}"
    if y.ndim == 0 or y.shape[0] != rows:
        raise InvalidArgumentError(f"{where}: need one per input row ({rows}), got shape "
                                   f"{y.shape}")
    if head.task == "regression":
        if y.ndim == 1 and head.width == 1:
            y = y[:, None]
        if y.shape != (rows, head.width) or y.dtype.kind not in "iuf":
            raise InvalidArgumentError(f"{where}: need numbers of shape ({rows}, {head.width}) "
                                       f"(outputs a row), got shape {y.shape} dtype {y.dtype}")
        y = y.astype(np.float64)
        if not np.all(np.isfinite(y)):
            raise InvalidArgumentError(f"{where}: every target must be finite; got NaN or Inf")
        return y
    if y.ndim != 1 or y.dtype.kind not in "iubf":
        raise InvalidArgumentError(f"{where}: need class indices of shape ({rows},), got shape "
                                   f"{y.shape} dtype {y.dtype}")
    labels = y.astype(np.int64)
    if not (np.all(labels == y) and labels.min() >= 0 and labels.max() < head.width):
        raise InvalidArgumentError(f"{where}: need integer class indices in 0..{head.width - 1},"
                                   f" got values from {y.min()} to {y.max()}")
    return labels


def _aims(heads: list[_Head], abstention: Any) -> dict[str, AbstentionTarget]:
    if abstention is None:
        return {}
    aims = _by_head([h.name for h in heads], abstention, "abstention",
                    "the head it is for to its AbstentionTarget")
    for head in heads:
        if head.name in aims:
            aims[head.name].check_task(head.task, head.name, head.has_tau)
    return aims


# -- the sweep over the rows -----------------------------------------------------------------------
def _blocks(predictor: Any, x: Any, rows: int, passes: int, seed: int, levels: Sequence[float],
            raw: bool) -> Any:
    """Yield each block of rows' predictions as head name -> Prediction."""
    limit = min(int(predictor.limits.max_raw_sample_values), _BLOCK_VALUES)
    block = max(1, limit // (passes * max(1, int(predictor.output_dim))))
    for i in range(0, rows, block):
        part = ({k: v[i:i + block] for k, v in x.items()} if isinstance(x, Mapping)
                else x[i:i + block])
        answer = predictor.predict(part, passes, seed, interval_levels=levels,
                                   return_samples=raw)
        yield answer.heads if hasattr(answer, "heads") else {predictor.heads[0].name: answer}


def _sweep(predictor: Any, x: Any, rows: int, passes: int, seed: int,
           levels: Sequence[float], heads: list[_Head]) -> None:
    classifier = any(h.task == "classification" for h in heads)
    regression = any(h.task == "regression" for h in heads)
    for answer in _blocks(predictor, x, rows, passes, seed, levels if regression else (),
                          classifier):
        for head in heads:
            p = answer[head.name]
            head.mean.append(p.mean)
            head.std.append(p.std)
            if head.task == "regression":
                head.spread.append(p.spread)
                head.intervals.append([(iv.lower, iv.upper) for iv in p.intervals])
                continue
            sums = p.raw_samples.sum(axis=-1, dtype=np.float64)
            if np.max(np.abs(sums - 1.0)) > _SUM_TOLERANCE:
                raise InvalidArgumentError(
                    f"head {head.name!r}: its probabilities do not sum to 1 per row (a multi-"
                    "label sigmoid head?); calibration supports softmax heads and one-unit "
                    "sigmoid heads")
            head.passes.append(p.raw_samples[:FIT_PASSES])


# -- regression ------------------------------------------------------------------------------------
def _regression(head: _Head, y: np.ndarray, passes: int, levels: Sequence[float],
                aim: AbstentionTarget | None) -> HeadCalibration:
    mean, spread = np.concatenate(head.mean), np.concatenate(head.spread)
    scale: Scale = "predictive_std" if head.has_tau else "std"
    residual = np.abs(y - mean)
    # A zero spread (a row every pass agrees on, no tau) would make an infinite score.
    score = residual / np.maximum(spread, np.finfo(np.float64).tiny)
    conformal = ConformalRegression(scale, np.sort(score, axis=0))
    before: dict[str, float] = {"rmse": scores.rmse(y, mean)}
    if np.all(spread > 0):
        before["nll"] = scores.gaussian_nll(y, mean, spread)
    after: dict[str, float] = {"rmse": before["rmse"]}
    for j, level in enumerate(levels):
        lower = np.concatenate([part[j][0] for part in head.intervals])
        upper = np.concatenate([part[j][1] for part in head.intervals])
        before[f"coverage@{level:g}"] = scores.interval_coverage(y, lower, upper)
        before[f"mean_width@{level:g}"] = scores.mean_interval_width(lower, upper)
        q = conformal.quantile(level)
        after[f"coverage@{level:g}"] = scores.interval_coverage(y, mean - q * spread,
                                                                mean + q * spread)
        after[f"mean_width@{level:g}"] = float(np.mean(2 * q * spread))
    measure = spread.mean(axis=1)
    policy = None
    if aim is not None:
        row_measure = (spread if aim.measure == scale else np.concatenate(head.std)).mean(axis=1)
        policy = choose(aim, row_measure, np.mean((y - mean) ** 2, axis=1), regression=True)
    return HeadCalibration(
        head=head.name, task="regression", rows=len(y), samples=passes,
        drift=_drift(scale, measure), regression=conformal, abstention=policy,
        before=before, after=after)


# -- classification --------------------------------------------------------------------------------
def _classification(predictor: Any, x: Any, rows: int, passes: int, seed: int, head: _Head,
                    labels: np.ndarray, levels: Sequence[float], aim: AbstentionTarget | None
                    ) -> HeadCalibration:
    kept = np.concatenate(head.passes, axis=1)
    raw_mean = np.concatenate(head.mean)
    temperature = fit_temperature(kept, labels)
    if kept.shape[0] == passes:
        step = max(1, _BLOCK_VALUES // (passes * head.width))
        parts = [class_statistics(kept[:, i:i + step], temperature)
                 for i in range(0, rows, step)]
    else:  # served statistics use every pass: take them in a second sweep over the rows
        parts = [class_statistics(answer[head.name].raw_samples, temperature)
                 for answer in _blocks(predictor, x, rows, passes, seed, (), True)]
    stats = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    mean = stats["mean"]
    before = scores.classification_metrics(labels, raw_mean)
    after = scores.classification_metrics(labels, mean)
    for metrics in (before, after):
        metrics.pop("rows", None)
    sets = ConformalSets(np.sort(1.0 - mean[np.arange(rows), labels]))
    for level in levels:
        members = mean >= sets.threshold(level)
        after[f"set_coverage@{level:g}"] = float(np.mean(members[np.arange(rows), labels]))
        after[f"set_size@{level:g}"] = float(np.mean(members.sum(axis=1)))
    policy = None
    if aim is not None:
        wrong = (mean.argmax(axis=1) != labels).astype(np.float64)
        policy = choose(aim, stats[aim.measure], wrong, regression=False)
    return HeadCalibration(
        head=head.name, task="classification", rows=rows, samples=passes,
        drift=_drift("mutual_information", stats["mutual_information"]),
        temperature=temperature, sets=sets, abstention=policy, before=before, after=after)


def class_statistics(passes: np.ndarray, temperature: float) -> dict[str, np.ndarray]:
    """The per-row statistics a calibrated request gives a classifier head, from its raw passes.

    Args:
        passes: Per-pass class probabilities, (passes, rows, classes).
        temperature: The head's temperature (1 leaves them as they are).

    Returns:
        "mean" (rows, classes), "predictive_entropy", "expected_entropy",
        "mutual_information", "variation_ratio" (rows,), in nats where entropies.
    """
    from mcdropout.engine import stats  # the engine's entropy, so serving and fitting agree

    scaled = scale_probabilities(np.asarray(passes, dtype=np.float64), temperature)
    mean = scaled.mean(axis=0)
    predictive = stats.entropy(mean)
    expected = stats.entropy(scaled).mean(axis=0)
    t, _, classes = scaled.shape
    votes = np.stack([np.sum(scaled.argmax(axis=-1) == k, axis=0) for k in range(classes)],
                     axis=-1)
    return {"mean": mean, "predictive_entropy": predictive, "expected_entropy": expected,
            "mutual_information": stats.mutual_information(predictive, expected),
            "variation_ratio": 1.0 - votes.max(axis=-1) / t}


# -- helpers ---------------------------------------------------------------------------------------
def _drift(measure: str, values: np.ndarray) -> DriftReference:
    p95, p99 = np.quantile(values, [0.95, 0.99])
    return DriftReference(measure, float(p95), float(p99))  # type: ignore[arg-type]


def _version() -> str:
    try:
        return package_metadata.version("mcdropout")
    except package_metadata.PackageNotFoundError:
        return "unknown"


__all__ = ["FIT_PASSES", "AbstentionTarget", "calibrate", "class_statistics"]
