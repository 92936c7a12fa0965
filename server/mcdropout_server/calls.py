"""What a Predict call asks for, in domain terms, and the rules on which outputs a task has.

No grpc or protobuf here: the codec builds a :class:`PredictCall` from the wire request, the
registry checks it against the model, and the answer comes back as an :class:`Answer`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mcdropout import CancelledError, InvalidArgumentError, MCDropoutError, Prediction, Task

MAX_INTERVAL_LEVELS = 16
MAX_REQUEST_ID_CHARS = 128

COMMON_OUTPUTS = ("mean", "std", "standard_error", "intervals", "samples")
REGRESSION_OUTPUTS = ("predictive_std",)
CLASSIFICATION_OUTPUTS = ("predicted_class", "predictive_entropy", "expected_entropy",
                          "mutual_information", "variation_ratio")


def is_valid_request_id(request_id: str) -> bool:
    """Whether a caller's request id can be used as given: 1..128 printable ASCII characters.

    The id is echoed in the ``x-request-id`` trailer, and gRPC fails the whole call with INTERNAL
    when a metadata value holds anything else.
    """
    return (0 < len(request_id) <= MAX_REQUEST_ID_CHARS and request_id.isascii()
            and request_id.isprintable())


class ShuttingDownError(MCDropoutError):
    """The server is draining for shutdown and takes no new requests."""


class DeadlineExceededError(CancelledError):
    """The caller's deadline passed before the prediction finished (or started)."""


@dataclass(frozen=True)
class PredictCall:
    """One Predict request, decoded.

    Attributes:
        model: Model name.
        version: Model version; None for the latest.
        x: Input rows, (rows, *input_shape), any numeric dtype (the engine casts and checks it).
        samples: Passes T; None for the model's default. With ``tolerance``, the ceiling.
        seed: Mask seed in 0..2**64-1, or None for a fresh one.
        tolerance: Adaptive-sampling target standard error in output units, or None.
        interval_levels: Coverage levels of the intervals to return.
        outputs: Requested output names (lower case); empty for the task's default set.
        request_id: Id echoed in logs and the response.
    """

    model: str
    version: int | None
    x: np.ndarray
    samples: int | None = None
    seed: int | None = None
    tolerance: float | None = None
    interval_levels: tuple[float, ...] = ()
    outputs: tuple[str, ...] = ()
    request_id: str = ""

    @property
    def rows(self) -> int:
        return int(self.x.shape[0]) if self.x.ndim else 0


@dataclass(frozen=True)
class Answer:
    """The result of a Predict call: which model answered, the prediction, the outputs to send."""

    model: str
    version: int
    prediction: Prediction
    outputs: frozenset[str]


def allowed_outputs(task: Task, has_tau: bool) -> tuple[str, ...]:
    """The outputs that make sense for ``task`` (PREDICTIVE_STD needs a known tau)."""
    if task == "classification":
        return COMMON_OUTPUTS + CLASSIFICATION_OUTPUTS
    return COMMON_OUTPUTS + (REGRESSION_OUTPUTS if has_tau else ())


def default_outputs(task: Task, has_tau: bool) -> tuple[str, ...]:
    """The outputs sent when a request names none (see the proto's Output enum)."""
    if task == "classification":
        return ("mean", "std", "predicted_class", "predictive_entropy", "mutual_information")
    return ("mean", "std", "predictive_std") if has_tau else ("mean", "std")


def resolve_outputs(call: PredictCall, task: Task, has_tau: bool) -> frozenset[str]:
    """The outputs to compute for ``call`` on a model of ``task``.

    Non-empty ``interval_levels`` add "intervals" implicitly.

    Raises:
        InvalidArgumentError: an output that does not apply to the task (the message lists the
            allowed ones), "intervals" without levels, or more than 16 levels.
    """
    allowed = allowed_outputs(task, has_tau)
    chosen = set(call.outputs or default_outputs(task, has_tau))
    wrong = sorted(chosen - set(allowed))
    if wrong:
        why = (" (the model has no noise precision tau)"
               if wrong == ["predictive_std"] and task == "regression" else "")
        raise InvalidArgumentError(
            f"outputs {wrong} do not apply to this {task} model{why}; allowed outputs: "
            f"{', '.join(allowed)}")
    if len(call.interval_levels) > MAX_INTERVAL_LEVELS:
        raise InvalidArgumentError(f"at most {MAX_INTERVAL_LEVELS} interval_levels are allowed, "
                                   f"got {len(call.interval_levels)}")
    if call.interval_levels:
        chosen.add("intervals")
    elif "intervals" in chosen:
        raise InvalidArgumentError("output 'intervals' needs interval_levels, each strictly "
                                   "between 0 and 1 (e.g. [0.9, 0.95]); got none")
    return frozenset(chosen)
