"""What a Predict call asks for, in domain terms, and which outputs it gets.

No grpc or protobuf here: a codec builds a :class:`PredictCall` from the wire request, the
registry resolves it against its model once (:class:`~mcdropout_server.registry.PreparedCall`),
and the answer comes back as an :class:`Answer`. Which outputs exist, and for which task, is
declared once in :mod:`mcdropout_client.outputs`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from mcdropout_client import outputs as catalogue

from mcdropout import (
    InvalidArgumentError,
    MultiHeadPrediction,
    Prediction,
    ResourceLimitError,
    Task,
)

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
        x: Input rows: one array (rows, *input_shape), or input name -> such an array (names
            and shapes are checked against the model when the call is resolved); any numeric
            dtype (the engine casts and checks it).
        samples: Passes T; None for the model's default. With ``tolerance``, the ceiling.
        seed: Mask seed in 0..2**64-1, or None for a fresh one.
        tolerance: Adaptive-sampling target standard error in output units, or None.
        interval_levels: Coverage levels of the intervals to return.
        outputs: Requested output names (lower case); empty for the task's default set.
        request_id: Id echoed in logs and the response.
        calibrated: Apply the version's calibration (see :attr:`uses_calibration`).
        set_levels: Coverage levels of the conformal prediction sets to return.
        monitored: Served traffic: the answer is kept for Feedback and its rows counted in the
            drift metrics. False for rows that are not answers to a user (a RankPool's pool
            chunks), which must neither evict real answers nor shift the drift shares.
    """

    model: str
    version: int | None
    x: np.ndarray | dict[str, np.ndarray]
    samples: int | None = None
    seed: int | None = None
    tolerance: float | None = None
    interval_levels: tuple[float, ...] = ()
    outputs: tuple[str, ...] = ()
    request_id: str = ""
    calibrated: bool = False
    set_levels: tuple[float, ...] = ()
    monitored: bool = True

    @property
    def uses_calibration(self) -> bool:
        """Whether the answer is calibrated: asked for, or implied by set levels or an output
        only a calibrated version has (prediction sets, abstain)."""
        return (self.calibrated or bool(self.set_levels)
                or any(name in catalogue.CALIBRATED_OUTPUTS for name in self.outputs))

    @property
    def rows(self) -> int:
        """Rows of the (first) input, for logs; the engine checks that every input agrees."""
        first = next(iter(self.x.values()), None) if isinstance(self.x, dict) else self.x
        return int(first.shape[0]) if first is not None and first.ndim else 0


HeadOutputs = Mapping[str, frozenset[str]]
"""Head name -> the output names to send for that head (one entry for a one-head model)."""


@dataclass(frozen=True)
class Answer:
    """The result of a Predict call: which model answered, the prediction, the outputs to send.

    ``prediction`` is a :class:`Prediction` for a one-head model and a
    :class:`MultiHeadPrediction` (one ``Prediction`` per head) for a model with several.
    """

    model: str
    version: int
    prediction: Prediction | MultiHeadPrediction
    outputs: HeadOutputs

    def heads(self) -> list[tuple[str, Prediction, frozenset[str]]]:
        """(head name, its prediction, its outputs) per head, in the model's order."""
        if isinstance(self.prediction, Prediction):
            ((name, outputs),) = self.outputs.items()
            return [(name, self.prediction, outputs)]
        return [(name, head, self.outputs[name]) for name, head in self.prediction.heads.items()]


class Head(Protocol):
    """What output rules need of a head (the engine's ``HeadSpec`` has it)."""

    @property
    def name(self) -> str: ...
    @property
    def task(self) -> Task: ...
    @property
    def has_tau(self) -> bool: ...


def resolve_outputs(call: PredictCall, heads: Sequence[Head]) -> dict[str, frozenset[str]]:
    """The outputs to compute for ``call``, per head of its model.

    Each head gets the requested outputs that apply to its task (all of them for a one-head
    model, where any that does not apply is refused); no outputs requested gives each head its
    task's default set. Non-empty ``interval_levels`` add "intervals" implicitly, non-empty
    ``set_levels`` "prediction_sets" (to the classifier heads). Outputs only a calibrated
    version has are allowed here: whether the version has a calibration, and whether the model
    has a classifier head for set levels, are the engine's checks.

    Raises:
        InvalidArgumentError: an output that no head has (the message lists each head's
            allowed outputs), "intervals" without interval levels, "prediction_sets" without
            set levels.
    """
    extra = (_implied("intervals", call.interval_levels, call.outputs, "interval_levels")
             | _implied("prediction_sets", call.set_levels, call.outputs, "set_levels"))
    allowed = {head.name: set(catalogue.allowed(head.task, head.has_tau, calibrated=True))
               for head in heads}
    wrong = sorted(set(call.outputs) - set().union(*allowed.values()))
    if wrong:
        raise InvalidArgumentError(_not_applicable(wrong, heads))
    return {head.name: frozenset((extra | set(call.outputs) if call.outputs else
                                  extra | set(catalogue.defaults(head.task, head.has_tau)))
                                 & allowed[head.name])
            for head in heads}


def _implied(output: str, levels: tuple[float, ...], outputs: tuple[str, ...],
             field: str) -> set[str]:
    # An output given per level: asked for by its levels, refused when named without any.
    if levels:
        return {output}
    if output in outputs:
        raise InvalidArgumentError(f"output {output!r} needs {field}, each strictly between 0 "
                                   "and 1 (e.g. [0.9, 0.95]); got none")
    return set()


def _not_applicable(wrong: list[str], heads: Sequence[Head]) -> str:
    if len(heads) == 1:
        (head,) = heads
        why = (" (the model has no noise precision tau)"
               if wrong == ["predictive_std"] and head.task == "regression" else "")
        return (f"outputs {wrong} do not apply to this {head.task} model{why}; allowed "
                f"outputs: {', '.join(catalogue.allowed(head.task, head.has_tau, True))}")
    each = "; ".join(f"{head.name} ({head.task}): "
                     f"{', '.join(catalogue.allowed(head.task, head.has_tau, True))}"
                     for head in heads)
    return f"outputs {wrong} apply to no head of this model; allowed outputs per head: {each}"


def check_reply_size(outputs: HeadOutputs, widths: Mapping[str, int], *, rows: int,
                     samples: int, levels: int, limit: int, set_levels: int = 0) -> None:
    """Refuse a call whose reply would be larger than ``limit`` bytes, before any pass runs.

    Args:
        outputs: The outputs each head sends.
        widths: Values per row of each head's per-row-and-output statistics.
        rows, samples, levels, set_levels: The resolved request's rows, passes, interval
            levels and prediction set levels.

    Raises:
        ResourceLimitError: the reply, every head counted, would exceed ``limit``.
    """
    size = sum(catalogue.reply_bytes(sent, rows=rows, width=widths[name], samples=samples,
                                     levels=levels, set_levels=set_levels)
               for name, sent in outputs.items())
    if size > limit:
        raw = " and raw samples" if any("samples" in sent for sent in outputs.values()) else ""
        raise ResourceLimitError(
            f"the reply would hold about {size} bytes ({rows} rows x {sum(widths.values())} "
            f"outputs{raw}), above the server's message limit of {limit} bytes "
            "(MCDROPOUT_MAX_MESSAGE_BYTES); ask for fewer rows, samples or outputs")
