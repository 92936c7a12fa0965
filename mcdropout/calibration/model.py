"""What a version's calibration holds: the domain types, and their file (``calibration.json``).

``mcdropout calibrate`` fits one :class:`HeadCalibration` per head on held-out labelled rows and
stores the :class:`Calibration` beside the model; the engine applies it to requests that ask for
it (``calibrated``, prediction sets, abstention). Fitting lives in the sibling modules; this one
only describes and (de)serialises.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from mcdropout.errors import InvalidArgumentError

CALIBRATION_FILE = "calibration.json"
FORMAT = 1

Scale = Literal["predictive_std", "std"]
Measure = Literal["predictive_std", "std", "predictive_entropy", "mutual_information",
                  "variation_ratio"]
MEASURES: tuple[str, ...] = ("predictive_std", "std", "predictive_entropy", "mutual_information",
                             "variation_ratio")


def conformal_rank(n: int, level: float) -> int:
    """The 1-based rank of the split-conformal quantile: ``ceil((n + 1) * level)``.

    The k-th smallest of n exchangeable calibration scores bounds a new score with probability
    at least k / (n + 1); k above n means no finite bound exists at ``level``.
    """
    return math.ceil((n + 1) * level - 1e-12)


def max_level(n: int) -> float:
    """The highest level a calibration set of ``n`` rows supports: ``n / (n + 1)``."""
    return n / (n + 1)


def _check_level(level: float, n: int, what: str) -> int:
    if not 0.0 < level < 1.0:
        raise InvalidArgumentError(f"{what} levels must be strictly between 0 and 1, got {level}")
    k = conformal_rank(n, level)
    if k > n:
        raise InvalidArgumentError(
            f"{what} level {level} needs more calibration rows than the {n} this version was "
            f"calibrated on: the highest level it supports is {max_level(n):.6g} (n/(n+1))")
    return k


@dataclass(frozen=True, eq=False)
class ConformalRegression:
    """Split-conformal intervals for a regression head: ``mean +- q(level) * scale``.

    Attributes:
        scale: The spread the scores are divided by: "predictive_std" (the head knows tau) or
            "std" (the MC standard deviation alone).
        scores: Nonconformity scores ``|y - mean| / scale`` of the calibration rows, sorted
            ascending per output column, shape (n, outputs) float64.
    """

    scale: Scale
    scores: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.scores.shape[0])

    def quantile(self, level: float) -> np.ndarray:
        """The multiplier q per output column for intervals at ``level``, shape (outputs,).

        Raises:
            InvalidArgumentError: ``level`` outside (0, n/(n+1)].
        """
        k = _check_level(level, self.rows, "interval")
        return np.asarray(self.scores[k - 1], dtype=np.float64)


@dataclass(frozen=True, eq=False)
class ConformalSets:
    """LAC prediction sets for a classifier head: class k is in a row's set when its calibrated
    mean probability is at least ``1 - q(level)``.

    Attributes:
        scores: ``1 - p(true class)`` of the calibration rows (temperature-scaled mean
            probabilities), sorted ascending, shape (n,) float64.
    """

    scores: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.scores.shape[0])

    def threshold(self, level: float) -> float:
        """The smallest probability a class needs to be in a set at ``level``.

        Raises:
            InvalidArgumentError: ``level`` outside (0, n/(n+1)].
        """
        k = _check_level(level, self.rows, "prediction set")
        return float(1.0 - self.scores[k - 1])


@dataclass(frozen=True)
class AbstentionPolicy:
    """Abstain on a row when its ``measure`` is above ``threshold``.

    Attributes:
        measure: A per-row uncertainty measure (regression spreads are averaged over outputs).
        threshold: Rows with a measure above it are abstained on.
        target: "risk" (the largest share of rows kept whose risk on the calibration rows is at
            most ``target_value``) or "coverage" (keep ``target_value`` of the rows).
        target_value: The risk or coverage asked for.
        risk: Risk of the rows kept on the calibration rows (error rate, or RMSE in target
            units for regression).
        coverage: Share of the calibration rows kept.
    """

    measure: Measure
    threshold: float
    target: Literal["risk", "coverage"]
    target_value: float
    risk: float
    coverage: float


@dataclass(frozen=True)
class DriftReference:
    """Where the calibration rows' uncertainty lay, to compare served rows with.

    Attributes:
        measure: The per-row measure ("predictive_std"/"std" for regression, averaged over
            outputs; "mutual_information" for a classifier).
        p95, p99: Its 95th and 99th percentiles on the calibration rows.
    """

    measure: Measure
    p95: float
    p99: float


@dataclass(frozen=True, eq=False)
class HeadCalibration:
    """How one head is calibrated.

    Attributes:
        head: The head's name.
        task: "regression" or "classification".
        rows: Labelled calibration rows it was fitted on.
        samples: Passes T used on the calibration rows.
        regression: Regression heads: the conformal interval scores.
        temperature: Classifier heads: each pass's probabilities become
            ``softmax(log p / temperature)`` before any statistic is taken.
        sets: Classifier heads: the LAC set scores (on temperature-scaled probabilities).
        abstention: The abstention policy, if one was chosen.
        drift: The reference distribution of the drift measure.
        before, after: Scores on the calibration rows before and after calibration (e.g.
            "coverage@0.95", "mean_width@0.95", "ece", "nll", "accuracy").
    """

    head: str
    task: Literal["regression", "classification"]
    rows: int
    samples: int
    drift: DriftReference
    regression: ConformalRegression | None = None
    temperature: float | None = None
    sets: ConformalSets | None = None
    abstention: AbstentionPolicy | None = None
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return "split-conformal" if self.task == "regression" else "temperature+lac"


@dataclass(frozen=True, eq=False)
class Calibration:
    """A version's calibration: one :class:`HeadCalibration` per head, in the model's order.

    Attributes:
        heads: Head name -> its calibration.
        provenance: How it was made (data file, rows, seed, time, library version).
    """

    heads: dict[str, HeadCalibration]
    provenance: dict[str, Any] = field(default_factory=dict)

    def head(self, name: str) -> HeadCalibration:
        try:
            return self.heads[name]
        except KeyError:
            raise InvalidArgumentError(f"no calibration for head {name!r}; calibrated heads: "
                                       f"{sorted(self.heads)}") from None

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "provenance": self.provenance,
                           "heads": [_head_to_dict(h) for h in self.heads.values()]},
                          indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        """Parse ``calibration.json``.

        Raises:
            ValueError: not JSON, an unknown format, or a missing or malformed field.
        """
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"calibration file must be a JSON object with \"format\": {FORMAT}")
        try:
            heads = [_head_from_dict(item) for item in data["heads"]]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed calibration file: {exc!r}") from None
        return cls({h.head: h for h in heads}, dict(data.get("provenance") or {}))


def _head_to_dict(h: HeadCalibration) -> dict[str, Any]:
    out: dict[str, Any] = {
        "head": h.head, "task": h.task, "rows": h.rows, "samples": h.samples,
        "drift": vars(h.drift), "temperature": h.temperature,
        "abstention": None if h.abstention is None else vars(h.abstention),
        "before": h.before, "after": h.after,
        "regression": None if h.regression is None else {
            "scale": h.regression.scale, "scores": h.regression.scores.tolist()},
        "sets": None if h.sets is None else {"scores": h.sets.scores.tolist()},
    }
    return out


def _head_from_dict(d: dict[str, Any]) -> HeadCalibration:
    reg = d.get("regression")
    sets = d.get("sets")
    abst = d.get("abstention")
    return HeadCalibration(
        head=str(d["head"]), task=d["task"], rows=int(d["rows"]), samples=int(d["samples"]),
        drift=DriftReference(**d["drift"]),
        regression=None if reg is None else ConformalRegression(
            reg["scale"], np.sort(np.asarray(reg["scores"], dtype=np.float64).reshape(
                len(reg["scores"]), -1), axis=0)),
        temperature=None if d.get("temperature") is None else float(d["temperature"]),
        sets=None if sets is None else ConformalSets(
            np.sort(np.asarray(sets["scores"], dtype=np.float64))),
        abstention=None if abst is None else AbstentionPolicy(**abst),
        before={str(k): float(v) for k, v in (d.get("before") or {}).items()},
        after={str(k): float(v) for k, v in (d.get("after") or {}).items()},
    )
