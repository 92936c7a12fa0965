"""Translation between the Feedback wire messages (mcdropout.v1) and :mod:`~mcdropout_server.feedback`.

Tensor bytes are converted by :mod:`mcdropout_client.tensors`, shared with the client; what the
targets must hold (shape, dtype, range against the kept answer) is checked by the domain.
"""

from __future__ import annotations

import numpy as np
from mcdropout_client import tensors
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb

from mcdropout import InvalidArgumentError
from mcdropout.errors import shorten
from mcdropout_server.feedback import FeedbackCall, FeedbackResult


def decode_feedback(request: pb.FeedbackRequest) -> FeedbackCall:
    """The :class:`FeedbackCall` a FeedbackRequest makes.

    Raises:
        InvalidArgumentError: both or neither of ``targets`` and ``named_targets``, or a
            malformed tensor.
    """
    if request.HasField("targets") == bool(request.named_targets):
        raise InvalidArgumentError(
            "set targets (a one-head model) or named_targets (by head name), exactly one; got "
            + ("both" if request.named_targets else "neither"))
    named = {name: _tensor(f"named_targets[{shorten(name)}]", tensor)
             for name, tensor in request.named_targets.items()}
    return FeedbackCall(
        model=request.model_name, request_id=request.request_id,
        targets=_tensor("targets", request.targets) if request.HasField("targets") else None,
        named_targets=named, rows=tuple(request.rows))


def encode_feedback(result: FeedbackResult) -> pb.FeedbackResponse:
    """The FeedbackResponse of a matched Feedback call."""
    return pb.FeedbackResponse(rows_matched=result.rows_matched, model_version=result.version)


def _tensor(name: str, tensor: pb.Tensor) -> np.ndarray:
    try:
        return tensors.from_proto(tensor)
    except ValueError as exc:
        raise InvalidArgumentError(f"{name}: {exc}") from None
