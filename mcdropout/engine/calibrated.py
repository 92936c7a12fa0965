"""Calibrated answers: a version's :class:`~mcdropout.calibration.model.Calibration` applied.

A calibrated request changes two things. Its classifier heads' passes are temperature-scaled
before any statistic is folded (:class:`.sampling.JointStats`), so mean, entropies, mutual
information, votes and raw samples are all of the calibrated passes. Then, per row and head,
:func:`finish` adds what the calibration gives on top of the statistics: conformal intervals
(``mean +- q(level) * scale``, so regression heads need no raw passes), prediction sets, and
abstention flags. Everything :func:`finish` computes is per row, which is why a merged batch of
calibrated requests may be summarised together and finished request by request.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from mcdropout.calibration.model import Calibration, HeadCalibration
from mcdropout.engine.heads import HeadSpec
from mcdropout.engine.prediction import (
    AnyPrediction,
    Interval,
    MultiHeadPrediction,
    Prediction,
    PredictionSet,
)
from mcdropout.engine.request import Request
from mcdropout.errors import InvalidArgumentError, NotCalibratedError

# The per-row measures an abstention policy may name, by task (regression spreads need tau for
# predictive_std).
_MEASURES = {"regression": ("predictive_std", "std"),
             "classification": ("predictive_entropy", "mutual_information", "variation_ratio")}


def bind(heads: Sequence[HeadSpec], calibration: Calibration) -> tuple[HeadCalibration, ...]:
    """Each head's calibration, in the model's head order.

    Raises:
        InvalidArgumentError: the calibration's heads are not the model's (names, tasks), a
            regression head's conformal scores are not one column per output, or a spread or
            measure it names is one the head does not have (predictive_std without tau).
    """
    names = [h.name for h in heads]
    if sorted(calibration.heads) != sorted(names):
        raise InvalidArgumentError(f"the calibration is of heads {sorted(calibration.heads)}; "
                                   f"the model's heads are {names}")
    bound = []
    for head in heads:
        cal = calibration.heads[head.name]
        where = f"calibration of head {head.name!r}"
        if cal.task != head.task:
            raise InvalidArgumentError(f"{where} is for a {cal.task} head; the model's head is "
                                       f"{head.task}")
        if cal.regression is not None:
            width = cal.regression.scores.shape[-1] if cal.regression.scores.ndim == 2 else -1
            if head.task != "regression" or width != head.width:
                raise InvalidArgumentError(
                    f"{where}: conformal interval scores must be (rows, {head.width}) for this "
                    f"{head.task} head, got shape {cal.regression.scores.shape}")
            _need_measure(head, cal.regression.scale, f"{where}: interval scale")
        if head.task == "regression" and (cal.temperature is not None or cal.sets is not None):
            raise InvalidArgumentError(f"{where}: temperature and prediction sets are for "
                                       "classifier heads only")
        if cal.temperature is not None and not cal.temperature > 0:
            raise InvalidArgumentError(f"{where}: temperature must be positive, got "
                                       f"{cal.temperature}")
        if cal.abstention is not None:
            _need_measure(head, cal.abstention.measure, f"{where}: abstention measure")
        bound.append(cal)
    return tuple(bound)


def _need_measure(head: HeadSpec, measure: str, what: str) -> None:
    allowed = [m for m in _MEASURES[head.task] if m != "predictive_std" or head.has_tau]
    if measure not in allowed:
        raise InvalidArgumentError(f"{what} {measure!r} is not one this {head.task} head has; "
                                   f"allowed: {allowed}")


def conformal_only(heads: Sequence[HeadSpec], bound: Sequence[HeadCalibration] | None) -> bool:
    """Whether a calibrated request's intervals need no raw passes: every head is conformally
    calibrated (a classifier's intervals are empirical, from the passes)."""
    return bound is not None and all(c.regression is not None for c in bound)


def temperatures(bound: Sequence[HeadCalibration]) -> tuple[float | None, ...]:
    """The temperature each head's passes are scaled by (None: not scaled)."""
    return tuple(c.temperature for c in bound)


def check(heads: Sequence[HeadSpec], bound: Sequence[HeadCalibration] | None, request: Request,
          model: str) -> None:
    """Refuse a calibrated request the model's calibration cannot answer.

    Args:
        heads: The model's heads.
        bound: Their calibrations (:func:`bind`), or None for a version without calibration.
        request: A resolved request with ``calibrated`` set.
        model: How messages name the model, e.g. "model 'x' version 2".

    Raises:
        InvalidArgumentError: prediction sets asked of a model without a classifier head; a set
            or interval level above what the calibration set supports (n / (n + 1)).
        NotCalibratedError: no calibration; abstention asked and no head has a policy;
            prediction sets asked and no classifier head has set scores.
    """
    if request.set_levels and not any(h.task == "classification" for h in heads):
        raise InvalidArgumentError(
            f"prediction sets are for classifier heads; {model} has only regression heads "
            f"({[h.name for h in heads]}): ask for intervals instead")
    if bound is None:
        raise NotCalibratedError(
            f"{model} has no calibration; `mcdropout calibrate` makes a calibrated version "
            "(ModelMetadata.calibration lists what a version has)")
    if request.abstain and not any(c.abstention is not None for c in bound):
        raise NotCalibratedError(
            f"{model} has no abstention policy; calibrate with --abstain-measure to choose one")
    sets = [c.sets for c in bound if c.sets is not None]
    if request.set_levels and not sets:
        raise NotCalibratedError(f"{model} has no prediction-set calibration; calibrate it again "
                                 "to get one")
    for level in request.set_levels:
        for cal in sets:
            cal.threshold(level)  # raises for a level above n / (n + 1)
    for level in request.interval_levels:
        for c in bound:
            if c.regression is not None:
                c.regression.quantile(level)


def finish(prediction: AnyPrediction, heads: Sequence[HeadSpec],
           bound: Sequence[HeadCalibration], request: Request) -> AnyPrediction:
    """A calibrated request's answer: ``prediction`` (of the calibrated passes) with its
    conformal intervals, prediction sets and abstention flags, marked calibrated."""
    if isinstance(prediction, MultiHeadPrediction):
        return MultiHeadPrediction(prediction.samples, prediction.seed, {
            head.name: _finish_head(prediction.heads[head.name], cal, request)
            for head, cal in zip(heads, bound, strict=True)}, calibrated=True)
    return _finish_head(prediction, bound[0], request)


def _finish_head(p: Prediction, cal: HeadCalibration, request: Request) -> Prediction:
    changes: dict[str, object] = {"calibrated": True}
    conformal = cal.regression
    if conformal is not None and request.interval_levels:
        spread = p.predictive_std if conformal.scale == "predictive_std" else p.std
        assert spread is not None  # bind() refused predictive_std for a head without tau
        changes["intervals"] = tuple(
            Interval(level, p.mean - q * spread, p.mean + q * spread)
            for level, q in ((lv, conformal.quantile(lv)) for lv in request.interval_levels))
    if cal.sets is not None and request.set_levels:
        changes["prediction_sets"] = tuple(PredictionSet(level, p.mean >= cal.sets.threshold(level))
                                           for level in request.set_levels)
    policy = cal.abstention
    if policy is not None and request.abstain:
        changes["abstain"] = p.row_measure(policy.measure) > policy.threshold
    return dataclasses.replace(p, **changes)  # type: ignore[arg-type]
