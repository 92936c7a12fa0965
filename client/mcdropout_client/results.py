"""What the client returns: plain frozen dataclasses holding numpy arrays (no protobuf)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

REGRESSION = "regression"
CLASSIFICATION = "classification"


# eq=False: the fields are arrays, whose == is elementwise and has no single truth value.
# kw_only: the statistics follow each subclass's own fields in its constructor.
@dataclass(frozen=True, eq=False, kw_only=True)
class Statistics:
    """The statistics of one prediction (a one-head model's, or one head's of several).

    Statistics that were not requested, or do not apply to the task, are ``None``.

    Attributes:
        mean: (rows, outputs) mean over passes; for classifiers the mean class probabilities.
        std: (rows, outputs) standard deviation over passes (epistemic), in output units.
        predictive_std: (rows, outputs) regression only, sqrt(std**2 + 1/tau).
        standard_error: (rows, outputs) Monte Carlo standard error of ``mean``.
        intervals: coverage level -> (lower, upper), each (rows, outputs).
        predicted_class: (rows,) int64 argmax of ``mean``.
        predictive_entropy: (rows,) nats.
        expected_entropy: (rows,) nats (aleatoric part).
        mutual_information: (rows,) nats (epistemic part, BALD).
        variation_ratio: (rows,) in [0, 1).
        raw_samples: (passes, rows, outputs) float32 per-pass outputs, when requested.
        prediction_sets: classification, calibrated: coverage level -> (rows, classes) bool,
            ``[i, k]`` true when class k is in row i's conformal set (a set may be empty).
        abstain: calibrated, with an abstention policy: (rows,) bool, true where the policy
            abstains (the row's uncertainty is above the threshold fitted at calibration).
        calibrated: whether the version's calibration was applied to every statistic
            (temperature-scaled passes, conformal intervals).
    """

    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    predictive_std: np.ndarray | None = None
    standard_error: np.ndarray | None = None
    intervals: dict[float, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    predicted_class: np.ndarray | None = None
    predictive_entropy: np.ndarray | None = None
    expected_entropy: np.ndarray | None = None
    mutual_information: np.ndarray | None = None
    variation_ratio: np.ndarray | None = None
    raw_samples: np.ndarray | None = None
    prediction_sets: dict[float, np.ndarray] = field(default_factory=dict)
    abstain: np.ndarray | None = None
    calibrated: bool = False

    @property
    def rows(self) -> int:
        """Number of input rows answered."""
        for arr in (self.mean, self.predicted_class, self.std, self.predictive_entropy,
                    self.abstain):
            if arr is not None:
                return int(arr.shape[0])
        return 0


@dataclass(frozen=True, eq=False)
class HeadResult(Statistics):
    """The statistics of one output head of a model with several heads.

    Attributes:
        name: the head's name (the Keras output's name; see ``ModelDescription.heads``).
        task: ``"regression"`` or ``"classification"``: this head's own task.
    """

    name: str
    task: str


@dataclass(frozen=True, eq=False)
class PredictResult(Statistics):
    """The answer to one Predict call.

    A one-head model's statistics are the attributes inherited from :class:`Statistics`
    (``mean``, ``std``, ...), and ``heads`` is empty. A model with several heads answers in
    ``heads``, one :class:`HeadResult` per head in the model's order, all computed from the same
    passes; its top-level statistics are then ``None`` and ``task`` is ``"unspecified"``.

    Attributes:
        model: name of the model that answered.
        version: the model version that answered.
        samples_used: stochastic passes actually run (below the request only when adaptive
            sampling met its tolerance early).
        seed: seed of the dropout masks; send it back to reproduce the answer exactly.
        request_id: the request id (the caller's, or the one the server made).
        task: ``"regression"`` or ``"classification"``; ``"unspecified"`` with several heads.
        heads: head name -> :class:`HeadResult`, for a model with several heads; else empty.
    """

    model: str
    version: int
    samples_used: int
    seed: int
    request_id: str
    task: str
    heads: dict[str, HeadResult] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Number of input rows answered."""
        return next((head.rows for head in self.heads.values()), 0) or super().rows


@dataclass(frozen=True)
class TensorSpec:
    """Shape and numpy dtype name of a model input or output.

    -1 marks the rows dimension (the first) and any variable dimension (e.g. a sequence length).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class DropoutLayer:
    """A stochastic layer of a model (the source of the Monte Carlo spread).

    Attributes:
        name: layer name in the model.
        kind: Keras class name, e.g. ``"Dropout"`` or ``"LSTM"``.
        rate: drop probability in [0, 1).
        recurrent_rate: recurrent-state drop probability (recurrent layers only, else 0).
    """

    name: str
    kind: str
    rate: float
    recurrent_rate: float = 0.0


@dataclass(frozen=True)
class HeadSpec:
    """One output head of a model.

    Attributes:
        name: the head's name, as ``PredictResult.heads`` keys it.
        task: ``"regression"`` or ``"classification"``.
        output: the head's mean: dtype and shape ``(-1, outputs)``.
        labels: class labels (classification) or target names (regression); may be empty.
        tau: regression noise precision (1/variance, target units), ``None`` when unknown
            (always for a learned noise).
        noise: the noise model: "fixed" (one precision ``tau``, or none known) or "learned"
            (the network predicts a noise variance per row, which ``predictive_std`` and the
            intervals include).
    """

    name: str
    task: str
    output: TensorSpec
    labels: tuple[str, ...] = ()
    tau: float | None = None
    noise: str = "fixed"


@dataclass(frozen=True)
class AbstentionPolicy:
    """A calibrated version's rule for abstaining: abstain when ``measure`` > ``threshold``.

    Attributes:
        measure: "predictive_std" or "std" (regression, mean over outputs),
            "predictive_entropy", "mutual_information" or "variation_ratio" (classification).
        threshold: rows whose measure is above it are abstained on.
        target: what the threshold was chosen for: "risk" or "coverage".
        target_value: the risk or the share of rows kept that was asked for.
        risk: on the calibration rows, the risk of the rows kept (error rate; RMSE for
            regression).
        coverage: on the calibration rows, the share of rows kept.
    """

    measure: str
    threshold: float
    target: str
    target_value: float
    risk: float
    coverage: float


@dataclass(frozen=True)
class HeadCalibration:
    """How one head of a version was calibrated (``mcdropout calibrate``).

    Attributes:
        head: the head's name.
        method: "split-conformal" (regression) or "temperature+lac" (classification).
        rows: labelled calibration rows it was fitted on.
        temperature: classification: the fitted temperature; ``None`` for regression.
        scale: regression: the spread conformal intervals scale, "predictive_std" or "std".
        before, after: scores on the calibration rows before and after calibration, by name
            (e.g. "coverage@0.95", "ece", "nll").
        abstention: the abstention policy, or ``None`` when the version has none.
        drift_measure: the uncertainty measure served rows are compared with for drift.
        drift_p95, drift_p99: its 95th and 99th percentiles on the calibration rows.
    """

    head: str
    method: str
    rows: int
    temperature: float | None = None
    scale: str = ""
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    abstention: AbstentionPolicy | None = None
    drift_measure: str = ""
    drift_p95: float = 0.0
    drift_p99: float = 0.0


@dataclass(frozen=True)
class ModelDescription:
    """Metadata of one model version, as ``GetModelMetadata`` describes it.

    ``input``, ``output``, ``task``, ``labels``, ``tau`` and ``noise`` describe the first input
    and head (the only ones of a one-input, one-head model); ``inputs`` and ``heads`` list them
    all.

    Attributes:
        tau: regression noise precision (1/variance, target units), ``None`` when unknown.
        noise: the first head's noise model, "fixed" or "learned" (see :class:`HeadSpec`).
        labels: class labels (classification) or target names (regression); may be empty.
        max_rows: largest accepted number of rows per request (0 when the server sets no limit).
        inputs: every input, in the model's order, named as ``predict`` takes them in a mapping.
        heads: every output head, in the model's order.
        calibration: the version's calibration, one entry per head in the model's order;
            empty when the version is not calibrated.
    """

    name: str
    version: int
    versions: tuple[int, ...]
    task: str
    input: TensorSpec
    output: TensorSpec
    labels: tuple[str, ...]
    dropout_layers: tuple[DropoutLayer, ...]
    default_samples: int
    max_samples: int
    tau: float | None
    description: str
    max_rows: int
    inputs: tuple[TensorSpec, ...] = ()
    heads: tuple[HeadSpec, ...] = ()
    calibration: tuple[HeadCalibration, ...] = ()
    noise: str = "fixed"

    @property
    def calibrated(self) -> bool:
        """Whether the version can answer calibrated requests."""
        return bool(self.calibration)


@dataclass(frozen=True)
class ModelSummary:
    """One entry of ``ListModels``: a model name, its task and its versions (ascending).

    ``task`` is the first head's; ``inputs`` and ``heads`` describe the latest version.
    """

    name: str
    task: str
    versions: tuple[int, ...]
    inputs: tuple[TensorSpec, ...] = ()
    heads: tuple[HeadSpec, ...] = ()
