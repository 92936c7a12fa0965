"""A fake PredictionService (numpy only, deterministic) to serve on a free loopback port.

The fake computes its statistics from its own raw samples, so tests can check that every field
the client parses lands in the right attribute. Behaviours tests need (failures, delays) are
switched on through attributes of the fake.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from mcdropout_client import tensors
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2, mcdropout_pb2_grpc

pb = mcdropout_pb2
FEATURES = 3
LABELS = ("setosa", "versicolor", "virginica")
MAX_SAMPLES = 50
DEFAULT_SAMPLES = 10
DEFAULT_SEED = 1234


SHOP_HEADS = ("price", "kind")


class FakePredictionService(mcdropout_pb2_grpc.PredictionServiceServicer):
    """Two models: "reg" (regression, 2 outputs, tau 4) and "clf" (3 classes), versions 1 and 2;
    and "shop", inputs "features" (3 floats) and "ids" (2 ints, one per sequence step: variable
    length), heads "price" (regression, like reg) and "kind" (3 classes, like clf), version 1.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.fail_with: list[grpc.StatusCode] = []  # codes to abort the next calls with, in order
        # Codes to end the next calls with as gRPC itself does, before any handler ran: no
        # x-request-id trailer (a call cut as a draining server closes its listener).
        self.drop_with: list[grpc.StatusCode] = []
        self.delay = 0.0  # seconds to sleep before answering
        self.seen_metadata: list[dict[str, str]] = []
        self.requests: list[object] = []
        self._lock = threading.Lock()

    def _enter(self, request: object, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls += 1
            self.requests.append(request)
            self.seen_metadata.append(dict(context.invocation_metadata()))
            code = self.fail_with.pop(0) if self.fail_with else None
            dropped = self.drop_with.pop(0) if self.drop_with else None
        if dropped is not None:
            context.abort(dropped, dropped.name)
        if code is not None:
            context.set_trailing_metadata((("x-request-id", "rid-failed"),))
            context.abort(code, f"fake failure {code.name}")
        if self.delay:
            time.sleep(self.delay)

    def Predict(self, request, context):
        self._enter(request, context)
        if request.model_name == "shop":
            return _shop(request, context)
        if request.model_name not in ("reg", "clf"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model_name!r} not found")
        passes = request.samples or DEFAULT_SAMPLES
        if passes > MAX_SAMPLES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"samples must be in 1..{MAX_SAMPLES}, got {passes}")
        # A one-input model takes its rows in inputs, or under any one name in named_inputs.
        rows = request.inputs if request.HasField("inputs") else next(
            iter(request.named_inputs.values()))
        x = tensors.from_proto(rows).astype(np.float64)
        if x.ndim != 2 or x.shape[1] != FEATURES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"inputs must have shape (rows, {FEATURES}), got {x.shape}")
        seed = request.seed if request.HasField("seed") else DEFAULT_SEED
        rng = np.random.default_rng(seed)
        reply = pb.PredictResponse(
            model_name=request.model_name, model_version=request.model_version or 2,
            samples_used=passes, seed=seed, request_id=request.request_id or "server-made-id",
        )
        wanted = set(request.outputs)
        if request.model_name == "reg":
            draws = x.sum(axis=1)[None, :, None] * np.array([1.0, -2.0]) + rng.normal(
                size=(passes, len(x), 2))
            _regression(reply, draws, wanted, request.interval_levels)
        else:
            logits = x @ np.arange(9.0).reshape(3, 3) / 10 + rng.normal(size=(passes, len(x), 3))
            draws = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
            _classification(reply, draws, wanted)
        if pb.SAMPLES in wanted:
            reply.samples.CopyFrom(tensors.to_proto(draws.astype(np.float32)))
        if request.calibrated or request.set_levels or {pb.PREDICTION_SETS, pb.ABSTAIN} & wanted:
            _calibrated(request, reply, draws, context)
        return reply

    def GetModelMetadata(self, request, context):
        self._enter(request, context)
        if request.model_name == "shop":
            return pb.ModelMetadata(name="shop", version=1, versions=[1], task=pb.REGRESSION,
                                    input=_SHOP_SPECS[0], output=_SHOP_HEAD_SPECS[0].output,
                                    labels=["price"], inputs=_SHOP_SPECS, heads=_SHOP_HEAD_SPECS,
                                    default_samples=DEFAULT_SAMPLES, max_samples=MAX_SAMPLES)
        if request.model_name not in ("reg", "clf") or request.model_version not in (0, 1, 2):
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"model {request.model_name!r} version {request.model_version} not found")
        is_reg = request.model_name == "reg"
        return pb.ModelMetadata(
            name=request.model_name, version=request.model_version or 2, versions=[1, 2],
            task=pb.REGRESSION if is_reg else pb.CLASSIFICATION,
            input=pb.TensorSpec(name="x", dtype=pb.FLOAT32, shape=[-1, FEATURES]),
            output=pb.TensorSpec(name="y", dtype=pb.FLOAT32, shape=[-1, 2 if is_reg else 3]),
            labels=["price", "rent"] if is_reg else list(LABELS),
            dropout_layers=[pb.DropoutLayer(name="dropout", kind="Dropout", rate=0.1),
                            pb.DropoutLayer(name="lstm", kind="LSTM", rate=0.2,
                                            recurrent_rate=0.3)],
            default_samples=DEFAULT_SAMPLES, max_samples=MAX_SAMPLES,
            tau=4.0 if is_reg else 0.0, description=f"fake {request.model_name}", max_rows=100,
            calibration=[CLF_CALIBRATION] if not is_reg and request.model_version != 1 else [],
        )

    def ListModels(self, request, context):
        self._enter(request, context)
        return pb.ListModelsResponse(models=[
            pb.ModelSummary(name="clf", task=pb.CLASSIFICATION, versions=[1, 2]),
            pb.ModelSummary(name="reg", task=pb.REGRESSION, versions=[1, 2]),
            pb.ModelSummary(name="shop", task=pb.REGRESSION, versions=[1], inputs=_SHOP_SPECS,
                            heads=_SHOP_HEAD_SPECS),
        ])


_SHOP_SPECS = [pb.TensorSpec(name="features", dtype=pb.FLOAT32, shape=[-1, FEATURES]),
               pb.TensorSpec(name="ids", dtype=pb.INT32, shape=[-1, -1])]
_SHOP_HEAD_SPECS = [
    pb.HeadSpec(name="price", task=pb.REGRESSION, labels=["price"], tau=4.0,
                output=pb.TensorSpec(name="mean", dtype=pb.FLOAT64, shape=[-1, 2])),
    pb.HeadSpec(name="kind", task=pb.CLASSIFICATION, labels=list(LABELS),
                output=pb.TensorSpec(name="mean", dtype=pb.FLOAT64, shape=[-1, 3])),
]


def _shop(request, context):
    """The two-input, two-head model: "reg"'s statistics on "price", "clf"'s on "kind"."""
    if request.HasField("inputs") or sorted(request.named_inputs) != ["features", "ids"]:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      "model 'shop' takes named_inputs 'features' and 'ids'")
    x = tensors.from_proto(request.named_inputs["features"]).astype(np.float64)
    ids = tensors.from_proto(request.named_inputs["ids"])
    passes = request.samples or DEFAULT_SAMPLES
    seed = request.seed if request.HasField("seed") else DEFAULT_SEED
    rng = np.random.default_rng(seed)
    reply = pb.PredictResponse(model_name="shop", model_version=1, samples_used=passes, seed=seed,
                               request_id=request.request_id or "server-made-id")
    wanted = set(request.outputs)
    shift = ids.sum(axis=1)[None, :, None]
    price = x.sum(axis=1)[None, :, None] * np.array([1.0, -2.0]) + shift + rng.normal(
        size=(passes, len(x), 2))
    logits = x @ np.arange(9.0).reshape(3, 3) / 10 + rng.normal(size=(passes, len(x), 3))
    kind = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    _regression(reply.heads.add(name="price"), price, wanted, request.interval_levels)
    _classification(reply.heads.add(name="kind"), kind, wanted)
    if pb.SAMPLES in wanted:
        reply.heads[0].samples.CopyFrom(tensors.to_proto(price.astype(np.float32)))
        reply.heads[1].samples.CopyFrom(tensors.to_proto(kind.astype(np.float32)))
    return reply


# "clf" version 2 (the latest) is calibrated; version 1 and "reg" are not.
CLF_CALIBRATION = pb.HeadCalibration(
    head="y", method="temperature+lac", rows=500, temperature=1.5,
    before={"ece": 0.12, "nll": 0.9}, after={"ece": 0.03, "nll": 0.7},
    abstention=pb.AbstentionPolicy(measure="mutual_information", threshold=0.05,
                                   target="coverage", target_value=0.9, risk=0.08,
                                   coverage=0.9),
    drift_measure="mutual_information", drift_p95=0.04, drift_p99=0.06)


def _calibrated(request, reply, draws, context) -> None:
    """A calibrated answer of "clf" v2: sets of the classes with mean >= 1 - level (a stand-in
    for a threshold), abstain where the top class is below one half."""
    if request.model_name != "clf" or request.model_version == 1:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                      f"model {request.model_name!r} has no calibration")
    mean = draws.mean(axis=0)
    for level in request.set_levels:
        reply.prediction_sets.add(level=level, members=tensors.to_proto(mean >= 1 - level))
    if pb.ABSTAIN in request.outputs:
        reply.abstain.CopyFrom(tensors.to_proto(mean.max(axis=-1) < 0.5))
    reply.calibrated = True


def _regression(reply, draws, wanted, levels) -> None:
    wanted = wanted or {pb.MEAN, pb.STD, pb.PREDICTIVE_STD}
    mean, std = draws.mean(axis=0), draws.std(axis=0)
    if pb.MEAN in wanted:
        reply.mean.CopyFrom(tensors.to_proto(mean))
    if pb.STD in wanted:
        reply.std.CopyFrom(tensors.to_proto(std))
    if pb.PREDICTIVE_STD in wanted:
        reply.predictive_std.CopyFrom(tensors.to_proto(np.sqrt(std**2 + 1 / 4.0)))
    if pb.STANDARD_ERROR in wanted:
        reply.standard_error.CopyFrom(tensors.to_proto(std / np.sqrt(len(draws))))
    for level in levels:
        lower, upper = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
        reply.intervals.add(level=level, lower=tensors.to_proto(lower),
                            upper=tensors.to_proto(upper))
    reply.task = pb.REGRESSION


def _classification(reply, draws, wanted) -> None:
    wanted = wanted or {pb.MEAN, pb.STD, pb.PREDICTED_CLASS, pb.PREDICTIVE_ENTROPY,
                        pb.MUTUAL_INFORMATION}
    mean = draws.mean(axis=0)
    entropy = -(mean * np.log(mean)).sum(axis=-1)
    expected = -(draws * np.log(draws)).sum(axis=-1).mean(axis=0)
    modal = mean.argmax(axis=-1)
    stats = {
        pb.MEAN: ("mean", mean), pb.STD: ("std", draws.std(axis=0)),
        pb.PREDICTED_CLASS: ("predicted_class", modal.astype(np.int64)),
        pb.PREDICTIVE_ENTROPY: ("predictive_entropy", entropy),
        pb.EXPECTED_ENTROPY: ("expected_entropy", expected),
        pb.MUTUAL_INFORMATION: ("mutual_information", entropy - expected),
        pb.VARIATION_RATIO: ("variation_ratio", 1 - (draws.argmax(-1) == modal).mean(axis=0)),
    }
    for output, (name, value) in stats.items():
        if output in wanted:
            getattr(reply, name).CopyFrom(tensors.to_proto(value))
    reply.task = pb.CLASSIFICATION


@dataclass
class FakeServer:
    """A running fake: its address, servicer (to script and inspect) and health servicer."""

    address: str
    service: FakePredictionService
    health: health.HealthServicer
    server: grpc.Server = field(repr=False)


def start_fake_server() -> FakeServer:
    """Serve a fresh fake on 127.0.0.1 at a port the OS picks."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    service = FakePredictionService()
    mcdropout_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    serving, not_serving = (health_pb2.HealthCheckResponse.SERVING,
                            health_pb2.HealthCheckResponse.NOT_SERVING)
    for name in ("", "mcdropout.v1.PredictionService", "reg"):
        health_servicer.set(name, serving)
    health_servicer.set("clf", not_serving)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return FakeServer(f"127.0.0.1:{port}", service, health_servicer, server)
