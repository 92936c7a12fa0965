"""The result type of a Monte Carlo dropout prediction."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

import numpy as np

Task = Literal["regression", "classification"]


@dataclass(frozen=True)
class Interval:
    """A central predictive interval at one level, per row and output.

    Attributes:
        level: Coverage probability in (0, 1), e.g. 0.95.
        lower: Lower bounds, shape (rows, outputs), in the target's units.
        upper: Upper bounds, same shape.
    """

    level: float
    lower: np.ndarray
    upper: np.ndarray


@dataclass(frozen=True)
class PredictionSet:
    """Conformal prediction sets at one level: the classes kept for each row.

    Attributes:
        level: Coverage probability in (0, 1), e.g. 0.9.
        members: Whether each class is in each row's set, shape (rows, classes) bool; a row's set
            may be empty (LAC sets hold the classes whose calibrated mean probability reaches
            the calibration's threshold).
    """

    level: float
    members: np.ndarray


# Marks the fields holding one value (or vector) per input row: they are split by rows when a
# merged batch is answered, and are what a served response may carry.
_PER_ROW = {"per_row": True}


@dataclass(frozen=True)
class Prediction:
    """Mean and uncertainty of T stochastic forward passes.

    Shapes: ``rows`` is the number of input rows, ``outputs`` the model's output width (the number
    of classes for a classifier). All arrays are float64 unless noted; regression quantities are in
    the target's original units (the model's standardisation undone).

    Attributes:
        task: "regression" or "classification".
        samples: Number of passes T actually run (adaptive sampling may stop early).
        seed: The seed that drove the dropout masks; passing it again reproduces this result.
        mean: Mean over the passes, (rows, outputs). For a classifier, the mean class probabilities.
        std: Standard deviation over the passes (epistemic spread), (rows, outputs).
        standard_error: ``std / sqrt(samples)``, the Monte Carlo error of ``mean``.
        predictive_std: Regression with a known noise: ``sqrt(std**2 + 1/tau)`` for a fixed
            precision tau, ``sqrt(std**2 + mean_t sigma_t**2)`` for a learned noise (each pass
            t predicting its own variance sigma_t**2 per row).
        intervals: Central predictive intervals, one per requested level.
        predicted_class: Classifier only: argmax of ``mean``, (rows,), int64.
        predictive_entropy: Classifier only: entropy of the mean probabilities (nats), (rows,).
        expected_entropy: Classifier only: mean over passes of each pass's entropy (nats), (rows,).
        mutual_information: Classifier only: predictive minus expected entropy (BALD), (rows,).
        variation_ratio: Classifier only: 1 - (passes voting for the modal class) / T, (rows,).
        raw_samples: The T per-pass outputs, (samples, rows, outputs) float32, when requested
            (a learned-noise regression head: the per-pass means).
        raw_noise_var: A learned-noise regression head's per-pass noise variances, (samples,
            rows, outputs) float32 in the target's units squared, with ``raw_samples``.
        prediction_sets: Calibrated classifier only: conformal prediction sets, one per
            requested set level.
        abstain: Calibrated heads with an abstention policy, when asked: whether each row's
            uncertainty measure is above the policy's threshold, (rows,) bool.
        calibrated: Whether the version's calibration was applied (temperature-scaled passes,
            conformal intervals).
    """

    task: Task
    samples: int
    seed: int
    mean: np.ndarray = field(metadata=_PER_ROW)
    std: np.ndarray = field(metadata=_PER_ROW)
    standard_error: np.ndarray = field(metadata=_PER_ROW)
    predictive_std: np.ndarray | None = field(default=None, metadata=_PER_ROW)
    intervals: tuple[Interval, ...] = field(default_factory=tuple)
    predicted_class: np.ndarray | None = field(default=None, metadata=_PER_ROW)
    predictive_entropy: np.ndarray | None = field(default=None, metadata=_PER_ROW)
    expected_entropy: np.ndarray | None = field(default=None, metadata=_PER_ROW)
    mutual_information: np.ndarray | None = field(default=None, metadata=_PER_ROW)
    variation_ratio: np.ndarray | None = field(default=None, metadata=_PER_ROW)
    raw_samples: np.ndarray | None = None
    raw_noise_var: np.ndarray | None = None
    prediction_sets: tuple[PredictionSet, ...] = field(default_factory=tuple)
    abstain: np.ndarray | None = field(default=None, metadata=_PER_ROW)
    calibrated: bool = False

    @property
    def rows(self) -> int:
        return int(self.mean.shape[0])

    @property
    def spread(self) -> np.ndarray:
        """``predictive_std`` when the head knows tau, else ``std``: the spread a regression
        head's intervals, drift and ranking are scaled by, (rows, outputs)."""
        return self.predictive_std if self.predictive_std is not None else self.std

    def row_measure(self, name: str) -> np.ndarray:
        """One value per row of the statistic (or :attr:`spread`) called ``name``, float64: a
        (rows, outputs) statistic is averaged over each row's outputs. The one definition of a
        per-row uncertainty measure, for abstention, drift and ranking alike.

        Raises:
            ValueError: this prediction has no such statistic.
        """
        values = getattr(self, name)
        if values is None:
            raise ValueError(f"this {self.task} prediction has no {name!r}")
        values = np.asarray(values, dtype=np.float64)
        return values if values.ndim == 1 else values.reshape(len(values), -1).mean(axis=1)


ROW_STATISTICS: tuple[str, ...] = tuple(f.name for f in fields(Prediction) if f.metadata.get("per_row"))
"""The per-row statistics of a :class:`Prediction`, in field order."""


@dataclass(frozen=True)
class MultiHeadPrediction:
    """The predictions of a model with several output heads, all from the same passes.

    Every head's statistics come from the same T passes (the same dropout masks), so the heads'
    raw samples, when asked for, are joint: pass t of one head and pass t of another are two
    outputs of one network.

    Attributes:
        samples: Number of passes T actually run (adaptive sampling stops when every head's
            every mean meets the tolerance).
        seed: The seed that drove the dropout masks.
        heads: One :class:`Prediction` per head, keyed by head name, in the model's head order.
        calibrated: Whether the version's calibration was applied (to every head).
    """

    samples: int
    seed: int
    heads: dict[str, Prediction]
    calibrated: bool = False

    @property
    def rows(self) -> int:
        return next(iter(self.heads.values())).rows

    def __getitem__(self, head: str) -> Prediction:
        return self.heads[head]


AnyPrediction = Prediction | MultiHeadPrediction
"""What a predictor answers: a :class:`Prediction` for a one-head model, else a
:class:`MultiHeadPrediction`."""
