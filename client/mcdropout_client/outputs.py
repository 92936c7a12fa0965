"""The outputs a prediction can return, declared once for the client and the server.

Each :class:`OutputSpec` says what one output is called (in ``predict(outputs=...)``, in the
proto's ``Output`` enum and ``PredictResponse`` field, and in the Open Inference Protocol), which
tasks have it, its shape per request and its dtype on the wire. The client's request checks and
result parsing, the server's native and OIP codecs, and the server's output rules all derive
from :data:`OUTPUTS`; the engine computes the statistics with the same names (its
``Prediction`` fields; a test keeps the two in step).

To add a statistic: compute it in the engine (``mcdropout.engine.summary``) as a ``Prediction``
field, add its enum value and response field to ``protos/mcdropout/v1/mcdropout.proto``, add a
:class:`OutputSpec` here and a field to ``PredictResult``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

REGRESSION = "regression"
CLASSIFICATION = "classification"
BOTH = frozenset({REGRESSION, CLASSIFICATION})


@dataclass(frozen=True)
class OutputSpec:
    """One output of a prediction.

    Attributes:
        name: Lower-case name: ``predict(outputs=...)``, the ``PredictResponse`` field, and the
            ``Output`` enum value upper-cased.
        attribute: The ``PredictResult`` (and engine ``Prediction``) attribute holding it.
        tasks: The tasks whose models return it.
        shape: Its shape per request: ``("rows",)``, ``("rows", "outputs")`` or
            ``("passes", "rows", "outputs")``.
        dtype: numpy dtype name on the wire.
        oip: Its Open Inference Protocol output names, per task; each name's value is the
            attribute of the same name (``lower``/``upper`` of an interval) or this output.
        default: Tasks for which it is sent when a request names no outputs.
        needs_tau: Only models with a known noise precision tau have it.
        calibrated: Only calibrated versions have it (``mcdropout calibrate``); asking for it
            makes the request calibrated.
        levelled: A list with one entry per requested level (intervals at ``interval_levels``,
            prediction sets at ``set_levels``) rather than one tensor.
    """

    name: str
    attribute: str
    tasks: frozenset[str]
    shape: tuple[str, ...]
    dtype: str = "float64"
    oip: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default: frozenset[str] = frozenset()
    needs_tau: bool = False
    calibrated: bool = False
    levelled: bool = False

    def applies(self, task: str, has_tau: bool, calibrated: bool = False) -> bool:
        """Whether a model of ``task`` (with or without a known tau; a calibrated version or
        not) has this output."""
        return (task in self.tasks and (has_tau or not self.needs_tau)
                and (calibrated or not self.calibrated))


def _oip(*names: str, tasks: frozenset[str] = BOTH) -> dict[str, tuple[str, ...]]:
    return {task: names for task in tasks}


_MATRIX = ("rows", "outputs")
_ROWS = ("rows",)

OUTPUTS: tuple[OutputSpec, ...] = (
    OutputSpec("mean", "mean", BOTH, _MATRIX, default=BOTH,
               oip={REGRESSION: ("mean",), CLASSIFICATION: ("probabilities",)}),
    OutputSpec("std", "std", BOTH, _MATRIX, default=BOTH, oip=_oip("std")),
    OutputSpec("standard_error", "standard_error", BOTH, _MATRIX, oip=_oip("standard_error")),
    OutputSpec("predictive_std", "predictive_std", frozenset({REGRESSION}), _MATRIX,
               default=frozenset({REGRESSION}), needs_tau=True,
               oip=_oip("predictive_std", tasks=frozenset({REGRESSION}))),
    OutputSpec("predicted_class", "predicted_class", frozenset({CLASSIFICATION}), _ROWS, "int64",
               default=frozenset({CLASSIFICATION}),
               oip=_oip("predicted_class", tasks=frozenset({CLASSIFICATION}))),
    OutputSpec("predictive_entropy", "predictive_entropy", frozenset({CLASSIFICATION}), _ROWS,
               default=frozenset({CLASSIFICATION}),
               oip=_oip("entropy", tasks=frozenset({CLASSIFICATION}))),
    OutputSpec("expected_entropy", "expected_entropy", frozenset({CLASSIFICATION}), _ROWS,
               oip=_oip("expected_entropy", tasks=frozenset({CLASSIFICATION}))),
    OutputSpec("mutual_information", "mutual_information", frozenset({CLASSIFICATION}), _ROWS,
               default=frozenset({CLASSIFICATION}),
               oip=_oip("mutual_information", tasks=frozenset({CLASSIFICATION}))),
    OutputSpec("variation_ratio", "variation_ratio", frozenset({CLASSIFICATION}), _ROWS,
               oip=_oip("variation_ratio", tasks=frozenset({CLASSIFICATION}))),
    OutputSpec("intervals", "intervals", BOTH, _MATRIX, oip=_oip("lower", "upper"),
               levelled=True),
    OutputSpec("samples", "raw_samples", BOTH, ("passes", "rows", "outputs"), "float32",
               oip=_oip("raw_samples")),
    # The OIP names a set by its level: "prediction_set@0.9" (see docs/oip.md).
    OutputSpec("prediction_sets", "prediction_sets", frozenset({CLASSIFICATION}), _MATRIX, "bool",
               oip=_oip("prediction_set", tasks=frozenset({CLASSIFICATION})), calibrated=True,
               levelled=True),
    OutputSpec("abstain", "abstain", BOTH, _ROWS, "bool", oip=_oip("abstain"), calibrated=True),
)
"""Every output, in the order messages list them."""

BY_NAME: dict[str, OutputSpec] = {spec.name: spec for spec in OUTPUTS}
OUTPUT_NAMES: tuple[str, ...] = tuple(spec.name for spec in OUTPUTS)
"""Names accepted in ``predict(outputs=...)``, e.g. ``"mean"``, ``"mutual_information"``."""

# Outputs held as one tensor in a response (intervals and prediction sets are a list per level).
TENSOR_OUTPUTS: tuple[OutputSpec, ...] = tuple(s for s in OUTPUTS if not s.levelled)
CALIBRATED_OUTPUTS: tuple[str, ...] = tuple(s.name for s in OUTPUTS if s.calibrated)
"""Outputs only a calibrated version has; asking for one makes the request calibrated."""


def allowed(task: str, has_tau: bool, calibrated: bool = False) -> tuple[str, ...]:
    """The outputs a model of ``task`` can return (``predictive_std`` needs a known tau; the
    outputs of :data:`CALIBRATED_OUTPUTS` a calibrated version)."""
    return tuple(s.name for s in OUTPUTS if s.applies(task, has_tau, calibrated))


def defaults(task: str, has_tau: bool) -> tuple[str, ...]:
    """The outputs sent when a request names none (see the proto's ``Output`` enum)."""
    return tuple(s.name for s in OUTPUTS if task in s.default and s.applies(task, has_tau))


_ITEM_BYTES = {"float64": 8, "float32": 4, "int64": 8, "bool": 1}
# Field tags, lengths, dtype and shape of one tensor, and the reply's own scalar fields: generous.
_TENSOR_FRAMING, _REPLY_FRAMING = 64, 1024


def reply_bytes(outputs: Iterable[str], *, rows: int, width: int, samples: int,
                levels: int, set_levels: int = 0) -> int:
    """An upper estimate of the bytes a reply holding ``outputs`` takes on the wire.

    Args:
        outputs: Output names.
        rows: Input rows answered.
        width: Values per row of a per-row-and-output statistic (classes, targets).
        samples: Passes (the raw samples hold one value per pass, row and output).
        levels: Interval levels (each gives a lower and an upper bound tensor).
        set_levels: Prediction set levels (each gives one (rows, classes) tensor).
    """
    dims = {"rows": rows, "outputs": width, "passes": samples}
    total = _REPLY_FRAMING
    for name in outputs:
        spec = BY_NAME[name]
        tensors = {"intervals": 2 * levels, "prediction_sets": set_levels}.get(spec.name, 1)
        values = math.prod(dims[d] for d in spec.shape)
        total += tensors * (values * _ITEM_BYTES[spec.dtype] + _TENSOR_FRAMING)
    return total
