"""The asyncio client: :class:`AsyncClient`, the async twin of :class:`mcdropout_client.Client`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2_grpc

from mcdropout_client import _messages, ranking
from mcdropout_client._base import ClientBase, Metadata, Timeout
from mcdropout_client._retry import Attempts
from mcdropout_client.errors import NotFound, raise_for
from mcdropout_client.feedback import FeedbackResult, feedback_request, feedback_result
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2, mcdropout_pb2_grpc
from mcdropout_client.ranking import RankedPool
from mcdropout_client.results import ModelDescription, ModelSummary, PredictResult

_Response = TypeVar("_Response")


class AsyncClient(ClientBase):
    """Asyncio client of the mcdropout PredictionService; create it inside a running loop.

    Example::

        async with AsyncClient("localhost:50051") as client:
            result = await client.predict(x, model="boston", samples=200)

    Arguments, results and errors are those of :class:`mcdropout_client.Client`; the
    constructor's arguments are documented on :meth:`ClientBase.__init__`.
    """

    def _open(self) -> None:
        if self._credentials is None:
            self._channel = grpc.aio.insecure_channel(self.target, options=self._options)
        else:
            self._channel = grpc.aio.secure_channel(self.target, self._credentials, self._options)
        self._stub = mcdropout_pb2_grpc.PredictionServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def predict(
        self, x: Any, *, model: str, version: int | None = None, samples: int | None = None,
        seed: int | None = None, tolerance: float | None = None,
        interval_levels: Sequence[float] = (), outputs: Sequence[str] | None = None,
        timeout: Timeout = ..., metadata: Metadata = (), request_id: str | None = None,
        calibrated: bool = False, set_levels: Sequence[float] = (),
    ) -> PredictResult:
        """Run T stochastic passes of ``model`` over ``x``; see :meth:`Client.predict`."""
        request = _messages.predict_request(
            x, model=model, version=version, samples=samples, seed=seed, tolerance=tolerance,
            interval_levels=interval_levels, outputs=outputs, request_id=request_id,
            calibrated=calibrated, set_levels=set_levels,
        )
        reply = await self._invoke(self._stub.Predict, request, timeout, metadata)
        return _messages.predict_result(reply)

    async def feedback(self, model: str, request_id: str, targets: Any, *,
                       rows: Sequence[int] | None = None, timeout: Timeout = ...,
                       metadata: Metadata = ()) -> FeedbackResult:
        """Send the observed targets of an answer; see :meth:`Client.feedback`."""
        request = feedback_request(model, request_id, targets, rows)
        reply = await self._invoke(self._stub.Feedback, request, timeout, metadata)
        return feedback_result(reply)

    async def rank_pool(
        self, pool: Any, *, model: str, top_k: int, acquisition: str = "bald",
        chunk_rows: int = 1024, samples: int | None = None, seed: int | None = None,
        head: str | None = None, calibrated: bool = False, version: int | None = None,
        timeout: Timeout = None, metadata: Metadata = (), request_id: str | None = None,
    ) -> RankedPool:
        """Rank the rows of ``pool``; return the best ``top_k``; see :meth:`Client.rank_pool`.

        The chunks are made on the event loop, one at a time, as gRPC is ready to send them.
        """
        first = ranking.settings_request(
            model=model, top_k=top_k, acquisition=acquisition, samples=samples, seed=seed,
            head=head, calibrated=calibrated, version=version, request_id=request_id)
        # A chunk that cannot be made raises into grpc.aio, which cancels the call.
        stream = ranking.PoolStream(pool, chunk_rows, first)
        try:
            reply = await self._stub.RankPool(iter(stream), timeout=self._call_timeout(timeout),
                                              metadata=self._call_metadata(metadata))
        except (grpc.RpcError, asyncio.CancelledError) as error:
            stream.raise_for(error)
        return ranking.ranked_pool(reply)

    async def metadata(self, model: str, version: int | None = None, *, timeout: Timeout = ...,
                       metadata: Metadata = ()) -> ModelDescription:
        """Describe ``model``; see :meth:`Client.metadata`."""
        request = _messages.metadata_request(model, version)
        reply = await self._invoke(self._stub.GetModelMetadata, request, timeout, metadata)
        return _messages.model_description(reply)

    async def models(self, *, timeout: Timeout = ...,
                     metadata: Metadata = ()) -> list[ModelSummary]:
        """List the served models; see :meth:`Client.models`."""
        request = mcdropout_pb2.ListModelsRequest()
        reply = await self._invoke(self._stub.ListModels, request, timeout, metadata)
        return _messages.model_summaries(reply)

    async def health(self, service: str = "", *, timeout: Timeout = ...,
                     metadata: Metadata = ()) -> str:
        """Check the server's health; see :meth:`Client.health`."""
        request = _messages.health_request(service)
        try:
            reply = await self._invoke(self._health.Check, request, timeout, metadata)
        except NotFound:
            return "SERVICE_UNKNOWN"
        return _messages.health_status(reply)

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _invoke(self, method: Callable[..., Awaitable[_Response]], request: Any,
                      timeout: Timeout, metadata: Metadata) -> _Response:
        attempts = Attempts(self.retry_policy, self._call_timeout(timeout))
        call_metadata = self._call_metadata(metadata)
        while True:
            try:
                return await method(request, timeout=attempts.remaining(), metadata=call_metadata)
            except grpc.RpcError as error:
                delay = attempts.next_delay(error)
                if delay is None:
                    raise_for(error)
                await asyncio.sleep(delay)
