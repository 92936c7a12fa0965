"""Feedback: the observed targets of an answered Predict, sent back for live calibration gauges.

Request building and the result type shared by :meth:`mcdropout_client.Client.feedback` and
its asyncio twin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcdropout_client import tensors
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2


@dataclass(frozen=True)
class FeedbackResult:
    """What the server did with a Feedback call.

    Attributes:
        rows_matched: Rows matched with the kept answer and counted in the gauges.
        version: The model version that gave the answer.
    """

    rows_matched: int
    version: int


def feedback_request(model: str, request_id: str, targets: Any,
                     rows: Sequence[int] | None) -> mcdropout_pb2.FeedbackRequest:
    """Build a FeedbackRequest, checking locally what the wire types cannot carry.

    ``targets`` is one array (a one-head model, sent as ``targets``) or a mapping head name ->
    array (``named_targets``). Class labels are sent as int64, regression targets as float64.

    Raises:
        ValueError: an empty model or request id, a negative row index, an unsupported dtype.
    """
    if not model or not request_id:
        raise ValueError(f"model and request_id must be non-empty, got {model!r} and "
                         f"{request_id!r}")
    if rows is not None and any(int(row) < 0 for row in rows):
        raise ValueError(f"rows must be row indices >= 0, got {list(rows)}")
    request = mcdropout_pb2.FeedbackRequest(model_name=model, request_id=request_id,
                                            rows=[int(row) for row in rows or ()])
    if isinstance(targets, Mapping):
        for name, value in targets.items():
            request.named_targets[name].CopyFrom(tensors.to_proto(_targets(value)))
    else:
        request.targets.CopyFrom(tensors.to_proto(_targets(targets)))
    return request


def feedback_result(response: mcdropout_pb2.FeedbackResponse) -> FeedbackResult:
    """Turn a FeedbackResponse into a :class:`FeedbackResult`."""
    return FeedbackResult(rows_matched=response.rows_matched, version=response.model_version)


def integral_as_labels(targets: Any) -> Any:
    """Float arrays whose every value is a whole number as int64 (class labels read from a CSV
    arrive as floats); other arrays, and each array of a mapping, as they are."""
    if isinstance(targets, Mapping):
        return {name: integral_as_labels(value) for name, value in targets.items()}
    array = np.asarray(targets)
    if array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
        return array.astype(np.int64)
    return array


def _targets(value: Any) -> np.ndarray:
    array = np.asarray(value)
    # Labels stay integers (the server refuses float labels); values travel in full precision.
    return array.astype(np.int64 if array.dtype.kind in "iub" else np.float64)
