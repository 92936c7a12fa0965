"""What a Predict call asks for, in domain terms, and which outputs it gets.

No grpc or protobuf here: a codec builds a :class:`PredictCall` from the wire request, the
registry resolves it against its model once (:class:`~mcdropout_server.registry.PreparedCall`),
and the answer comes back as an :class:`Answer`. Which outputs exist, and for which task, is
declared once in :mod:`mcdropout_client.outputs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mcdropout_client import outputs as catalogue

from mcdropout import InvalidArgumentError, Prediction, Task

MAX_REQUEST_ID_CHARS = 128


def is_valid_request_id(request_id: str) -> bool:
    """Whether a caller's request id can be used as given: 1..128 printable ASCII characters.

    The id is echoed in the ``x-request-id`` trailer, and gRPC fails the whole call with INTERNAL
    when a metadata value holds anything else.
    """
    return (0 < len(request_id) <= MAX_REQUEST_ID_CHARS and request_id.isascii()
            and request_id.isprintable())


@dataclass(frozen=True, eq=False)
class PredictCall:
    """One Predict request as decoded from the wire, before any default is applied.

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


def resolve_outputs(call: PredictCall, task: Task, has_tau: bool) -> frozenset[str]:
    """The outputs to compute for ``call`` on a model of ``task``.

    Non-empty ``interval_levels`` add "intervals" implicitly.

    Raises:
        InvalidArgumentError: an output that does not apply to the task (the message lists the
            allowed ones), or "intervals" without levels.
    """
    allowed = catalogue.allowed(task, has_tau)
    chosen = set(call.outputs or catalogue.defaults(task, has_tau))
    wrong = sorted(chosen - set(allowed))
    if wrong:
        why = (" (the model has no noise precision tau)"
               if wrong == ["predictive_std"] and task == "regression" else "")
        raise InvalidArgumentError(
            f"outputs {wrong} do not apply to this {task} model{why}; allowed outputs: "
            f"{', '.join(allowed)}")
    if call.interval_levels:
        chosen.add("intervals")
    elif "intervals" in chosen:
        raise InvalidArgumentError("output 'intervals' needs interval_levels, each strictly "
                                   "between 0 and 1 (e.g. [0.9, 0.95]); got none")
    return frozenset(chosen)
