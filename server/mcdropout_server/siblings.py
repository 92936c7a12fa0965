"""What the server processes of ``--processes`` N > 1 ask each other, over private unix sockets.

Beside the public port, each process serves a private service on ``<run dir>/process-<i>.sock``
(a folder only the server's user may enter; :mod:`mcdropout_server.processes` makes it):

- ``Metrics``: the process's Prometheus exposition, which the supervisor merges;
- ``TakeAnswer``: the answer the process keeps for Feedback under a (model, request id), given
  up to the process that asks (it leaves the giver's store).

Feedback across processes: an answer is kept by the process that answered the Predict, but the
Feedback for it may come on another connection, so to another process. A process that does not
hold the answer asks its siblings for it; the one that holds it gives it up, the asking process
keeps it in its own store, and the Feedback is applied there exactly as in a single process: the
answer is matched once, its rows scored into the asking process's gauges, and bad targets are
refused with the answer left in place (now in the asking process) for a corrected call. When no
process holds it, the reason given is the most telling one any process knows ("already fed back"
rather than "never answered"). The exchange stays between the processes of one server, so
answers travel pickled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
from dataclasses import dataclass
from typing import Any, cast

import grpc
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb
from prometheus_client import generate_latest

from mcdropout_server.drain import DrainGate
from mcdropout_server.feedback import AnswerNotFoundError, Feedback, StoredAnswer
from mcdropout_server.metrics import ServerMetrics
from mcdropout_server.process_role import (
    PRIVATE_CHANNEL_OPTIONS,
    SIBLINGS_SERVICE,
    TAKE_ANSWER_METHOD,
    ProcessRole,
)
from mcdropout_server.rpc import RpcRecord, rpc
from mcdropout_server.runner import PredictionRunner
from mcdropout_server.servicers import PredictionServicer

log = logging.getLogger(__name__)
ASK_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Missing:
    """A process's word that it holds no answer under a key: why, and its message."""

    reason: str
    message: str


class Siblings:
    """This process's private service, and its questions to the other processes.

    Args:
        role: Which process this is, and where the sockets are.
        feedback: This process's answers kept for Feedback.
        metrics: This process's metrics (served to the supervisor; unmatched Feedback counted).
    """

    def __init__(self, role: ProcessRole, feedback: Feedback, metrics: ServerMetrics) -> None:
        self.role, self.feedback, self.metrics = role, feedback, metrics
        self._server: Any = None
        self._channels: dict[int, grpc.aio.Channel] = {}

    async def start(self) -> None:
        """Serve the private service on this process's socket."""
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            SIBLINGS_SERVICE, {
                "Metrics": grpc.unary_unary_rpc_method_handler(self._metrics),
                "TakeAnswer": grpc.unary_unary_rpc_method_handler(self._take_answer)}),))
        self._server.add_insecure_port(self.role.socket(self.role.index))
        await self._server.start()

    async def stop(self) -> None:
        """Stop the private service and close the channels to the siblings."""
        for channel in self._channels.values():
            await channel.close()
        if self._server is not None:
            await self._server.stop(0)

    async def bring(self, model: str, request_id: str) -> None:
        """Make sure the answer under (model, request id) is in this process's store if any
        process holds it: taken from the sibling that does.

        Raises:
            AnswerNotFoundError: no process holds it and this one knows no reason but that it
                never saw it, while a sibling knows better (e.g. fed back already); counted as
                unmatched, as :meth:`Feedback.apply` counts its own refusals.
        """
        store = self.feedback.store
        if store is None or not model or not request_id:
            return  # Feedback.apply refuses these itself
        try:
            store.get(model, request_id)
            return
        except AnswerNotFoundError as exc:
            here = exc.reason
        key = json.dumps({"model": model, "request_id": request_id}).encode()
        replies = await asyncio.gather(*(self._ask(i, key) for i in self.role.siblings))
        for reply in replies:
            if isinstance(reply, StoredAnswer):
                store.put(model, request_id, reply)
                return
        known = [r for r in replies if isinstance(r, Missing) and r.reason != "unknown"]
        if here == "unknown" and known:
            self.metrics.feedback_unmatched.labels(self.metrics.model_label(model),
                                                   known[0].reason).inc()
            raise AnswerNotFoundError(known[0].message, known[0].reason)

    async def _ask(self, index: int, key: bytes) -> StoredAnswer | Missing | None:
        if index not in self._channels:
            self._channels[index] = grpc.aio.insecure_channel(self.role.socket(index),
                                                              PRIVATE_CHANNEL_OPTIONS)
        try:
            reply = await self._channels[index].unary_unary(TAKE_ANSWER_METHOD)(
                key, timeout=ASK_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:  # gone (draining) or stuck: it holds nothing now
            log.debug(f"process {index} did not answer TakeAnswer: {exc.code().name}")
            return None
        return cast(StoredAnswer | Missing | None, pickle.loads(reply))

    async def _take_answer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        store = self.feedback.store
        if store is None:
            return pickle.dumps(None)
        key = json.loads(request)
        try:
            answer = store.get(key["model"], key["request_id"])
            store.take(key["model"], key["request_id"], answer)
        except AnswerNotFoundError as exc:
            return pickle.dumps(Missing(exc.reason, str(exc)))
        return pickle.dumps(answer)

    async def _metrics(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        # Collectors summarise their windows under their locks: off the event loop.
        return await asyncio.to_thread(generate_latest, self.metrics.registry)


class ProcessServicer(PredictionServicer):
    """The native API in one of several processes: Feedback also finds answers a sibling kept.

    Args:
        runner, gate, metrics: As for :class:`PredictionServicer`.
        siblings: This process's link to the others.
    """

    def __init__(self, runner: PredictionRunner, gate: DrainGate, metrics: ServerMetrics,
                 siblings: Siblings) -> None:
        super().__init__(runner, gate, metrics)
        self.siblings = siblings

    @rpc("Feedback")
    async def Feedback(self, request: pb.FeedbackRequest, context: Any,
                       record: RpcRecord) -> pb.FeedbackResponse:
        await self.siblings.bring(request.model_name, request.request_id)
        # The single-process method, undecorated: this wrapper already is the RPC.
        method = PredictionServicer.Feedback.__wrapped__  # type: ignore[attr-defined]
        return cast(pb.FeedbackResponse, await method(self, request, context, record))
