"""The Open Inference Protocol (KServe v2) ``inference.GRPCInferenceService`` methods.

Served beside mcdropout.v1.PredictionService on the same port, over the same runner, drain gate,
status mapping and metrics: decode with :mod:`mcdropout_server.oip_codec`, run, encode. The
Triton-only RPCs of that service (ModelConfig, ModelStatistics, RepositoryIndex, ...) that Triton
clients may call answer UNIMPLEMENTED with a message listing what is served.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib import metadata
from typing import Any

import grpc
from mcdropout_client.proto.inference import grpc_predict_v2_pb2 as oip
from mcdropout_client.proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc

from mcdropout import MCDropoutError
from mcdropout_server import oip_codec
from mcdropout_server.drain import DrainGate
from mcdropout_server.metrics import ServerMetrics
from mcdropout_server.rpc import RpcRecord, rpc
from mcdropout_server.runner import PredictionRunner
from mcdropout_server.servicers import ServicerBase

SERVICE_NAME: str = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
METHODS: tuple[str, ...] = tuple(
    m.name for m in oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods)
SERVER_NAME = "mcdropout"


class InferenceServicer(ServicerBase, oip_grpc.GRPCInferenceServiceServicer):
    """Serves the models of a :class:`~mcdropout_server.runner.PredictionRunner`'s registry.

    Shares its runner, drain gate (readiness turns false while it drains) and metrics with the
    native API.
    """

    async def ServerLive(self, request: oip.ServerLiveRequest,
                         context: Any) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(self, request: oip.ServerReadyRequest,
                          context: Any) -> oip.ServerReadyResponse:
        # Every model is loaded and warmed up before the server starts; draining ends readiness.
        return oip.ServerReadyResponse(ready=not self.gate.closed)

    @rpc("ModelReady")
    async def ModelReady(self, request: oip.ModelReadyRequest, context: Any,
                         record: RpcRecord) -> oip.ModelReadyResponse:
        record.model = request.name
        version = oip_codec.parse_version(request.version)
        try:
            record.version = self.registry.get(request.name, version).version
        except MCDropoutError:
            return oip.ModelReadyResponse(ready=False)  # unknown model or version: not ready
        return oip.ModelReadyResponse(ready=True)

    @rpc("ServerMetadata")
    async def ServerMetadata(self, request: oip.ServerMetadataRequest, context: Any,
                             record: RpcRecord) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(name=SERVER_NAME, version=_version(), extensions=[])

    @rpc("ModelMetadata")
    async def ModelMetadata(self, request: oip.ModelMetadataRequest, context: Any,
                            record: RpcRecord) -> oip.ModelMetadataResponse:
        record.model = request.name
        served = self.registry.get(request.name, oip_codec.parse_version(request.version))
        record.version = served.version
        return oip_codec.encode_model_metadata(served, self.registry)

    @rpc("ModelInfer")
    async def ModelInfer(self, request: oip.ModelInferRequest, context: Any,
                         record: RpcRecord) -> oip.ModelInferResponse:
        # Without an id of its own, the call carries the RPC's, so its answer can be fed back.
        decoded = oip_codec.decode_infer(request, self.registry, record.request_id)
        answer = await self.predict(decoded.call, context, record)
        return oip_codec.encode_infer(answer, decoded)


class UnimplementedHandler(grpc.GenericRpcHandler):
    """Answers UNIMPLEMENTED, naming the served methods, for the service's Triton-only RPCs."""

    def service(self, handler_call_details: Any) -> Any:
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        if service != SERVICE_NAME or method in METHODS:
            return None

        async def refuse(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                f"{SERVICE_NAME}/{method} is not implemented by mcdropout; it "
                                f"serves the Open Inference Protocol methods {', '.join(METHODS)}")
            yield b""  # never reached; makes this a streaming handler, which fits every RPC kind

        return grpc.stream_stream_rpc_method_handler(refuse)


def add_to_server(server: Any, runner: PredictionRunner, gate: DrainGate,
                  metrics: ServerMetrics) -> str:
    """Add the Open Inference Protocol service to ``server``; returns its full name (reflection)."""
    oip_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(runner, gate, metrics), server)
    server.add_generic_rpc_handlers((UnimplementedHandler(),))
    return SERVICE_NAME


def _version() -> str:
    try:
        return metadata.version("mcdropout")
    except metadata.PackageNotFoundError:
        return "unknown"
