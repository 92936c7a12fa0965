"""The mcdropout.v1.PredictionService methods: decode with the codec, call the domain, encode.

:class:`ServicerBase` holds what both APIs' servicers share (this one and the Open Inference
Protocol's in :mod:`mcdropout_server.oip_servicer`): the runner, the drain gate, the metrics, and
running one decoded call with its deadline and bookkeeping.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2_grpc as pb_grpc

from mcdropout import InvalidArgumentError
from mcdropout_server import codec, feedback_codec
from mcdropout_server.calls import Answer, PredictCall
from mcdropout_server.drain import DrainGate
from mcdropout_server.feedback import Feedback
from mcdropout_server.metrics import ServerMetrics
from mcdropout_server.ranking import PoolRanking, top_k_limit
from mcdropout_server.rpc import REQUEST_ID_KEY, RpcRecord, rpc
from mcdropout_server.runner import PredictionRunner


class ServicerBase:
    """What every prediction servicer holds and does, whatever its wire API.

    Args:
        runner: Runs predictions off the event loop.
        gate: Refuses new calls while the server drains.
        metrics: Where calls are counted.
    """

    def __init__(self, runner: PredictionRunner, gate: DrainGate, metrics: ServerMetrics) -> None:
        self.runner = runner
        self.registry = runner.registry
        self.gate = gate
        self.metrics = metrics
        self.max_reply_bytes = runner.max_reply_bytes
        self.feedback = runner.feedback or Feedback.off(metrics)

    async def predict(self, call: PredictCall, context: Any, record: RpcRecord) -> Answer:
        """Run a decoded call within the RPC's deadline, noting what it did in ``record``."""
        record.rows, record.seed = call.rows, call.seed
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        answer = await self.runner.predict(call, deadline=deadline)
        record.version, record.samples = answer.version, answer.prediction.samples
        record.seed = answer.prediction.seed
        self.metrics.observe_prediction(answer.model, call.rows, answer.prediction.samples)
        return answer


class PredictionServicer(ServicerBase, pb_grpc.PredictionServiceServicer):
    """Serves the models of a :class:`~mcdropout_server.runner.PredictionRunner`'s registry."""

    @rpc("Predict")
    async def Predict(self, request: pb.PredictRequest, context: Any,
                      record: RpcRecord) -> pb.PredictResponse:
        call = codec.decode_predict(request, record.request_id)
        answer = await self.predict(call, context, record)
        return codec.encode_predict(answer, record.request_id)

    @rpc("Feedback")
    async def Feedback(self, request: pb.FeedbackRequest, context: Any,
                       record: RpcRecord) -> pb.FeedbackResponse:
        call = feedback_codec.decode_feedback(request)
        result = self.feedback.apply(call)
        record.version, record.rows = result.version, result.rows_matched
        return feedback_codec.encode_feedback(result)

    @rpc("RankPool")
    async def RankPool(self, requests: AsyncIterator[pb.RankPoolRequest], context: Any,
                       record: RpcRecord) -> pb.RankPoolResponse:
        # Each chunk is a Predict of its own (see mcdropout_server.ranking); only one chunk and
        # the top k are held at once, whatever the pool's length.
        ranking: PoolRanking | None = None
        async for request in requests:
            chunk = codec.decode_rank_chunk(request)
            if ranking is None:
                if chunk.request_id:  # the stream's id is its first message's
                    record.request_id = chunk.request_id
                    context.set_trailing_metadata(((REQUEST_ID_KEY, record.request_id),))
                record.model = request.model_name
                ranking = PoolRanking(chunk.settings, self.registry,
                                      top_k_limit(self.max_reply_bytes))
            else:
                ranking.check(chunk.settings)
            answer = await self.predict(ranking.call(chunk.x, record.request_id), context,
                                        record)
            ranking.add(answer.prediction)
        if ranking is None:
            raise InvalidArgumentError("the RankPool stream held no message: send the pool's "
                                       "rows in one or more RankPoolRequests, the first naming "
                                       "the model, top_k and the other settings")
        record.rows, record.seed = ranking.rows_scored, ranking.seed
        return codec.encode_rank_pool(ranking.result(), record.request_id)

    @rpc("GetModelMetadata")
    async def GetModelMetadata(self, request: pb.GetModelMetadataRequest,
                               context: Any, record: RpcRecord) -> pb.ModelMetadata:
        served = self.registry.get(request.model_name, request.model_version or None)
        record.version = served.version
        return codec.encode_metadata(served, self.registry)

    @rpc("ListModels")
    async def ListModels(self, request: pb.ListModelsRequest, context: Any,
                         record: RpcRecord) -> pb.ListModelsResponse:
        return codec.encode_models(self.registry)
