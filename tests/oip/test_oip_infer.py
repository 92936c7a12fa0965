"""The Open Inference Protocol service answers like the native API, through a plain v2 stub."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from mcdropout_client import Client
from mcdropout_client.proto.inference import grpc_predict_v2_pb2 as oip
from mcdropout_server.drain import DrainGate
from mcdropout_server.metrics import ServerMetrics
from mcdropout_server.oip_servicer import InferenceServicer
from mcdropout_server.runner import PredictionRunner
from oip_testkit import infer_request, outputs_of, parameters_of
from server_testkit import CLASSES, CLS_FEATURES, REG_FEATURES, cls_inputs, reg_inputs

REG_STATS = ("mean", "std", "predictive_std", "standard_error")
CLS_STATS = {"probabilities": "mean", "std": "std", "standard_error": "standard_error",
             "predicted_class": "predicted_class", "entropy": "predictive_entropy",
             "expected_entropy": "expected_entropy", "mutual_information": "mutual_information",
             "variation_ratio": "variation_ratio", "raw_samples": "raw_samples"}
INTEGER_TYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


def test_server_is_live_and_ready_and_describes_itself(oip_stub: Any) -> None:
    assert oip_stub.ServerLive(oip.ServerLiveRequest()).live
    assert oip_stub.ServerReady(oip.ServerReadyRequest()).ready
    meta = oip_stub.ServerMetadata(oip.ServerMetadataRequest())
    assert meta.name == "mcdropout" and meta.version


@pytest.mark.parametrize(("name", "version", "ready"), [
    ("reg", "", True), ("reg", "1", True), ("cls", "", True), ("reg", "9", False),
    ("nope", "", False)])
def test_model_ready(oip_stub: Any, name: str, version: str, ready: bool) -> None:
    assert oip_stub.ModelReady(oip.ModelReadyRequest(name=name, version=version)).ready is ready


def test_model_metadata_lists_every_output_with_shape_and_datatype(oip_stub: Any) -> None:
    reg = oip_stub.ModelMetadata(oip.ModelMetadataRequest(name="reg"))
    assert (reg.name, list(reg.versions), reg.platform) == ("reg", ["1", "2"], "mcdropout_keras")
    [inputs] = reg.inputs
    assert (inputs.name, inputs.datatype, list(inputs.shape)) == ("inputs", "FP32",
                                                                  [-1, REG_FEATURES])
    described = {o.name: (o.datatype, list(o.shape)) for o in reg.outputs}
    assert described == {
        "mean": ("FP64", [-1, 1]), "std": ("FP64", [-1, 1]), "standard_error": ("FP64", [-1, 1]),
        "predictive_std": ("FP64", [-1, 1]), "lower": ("FP64", [-1, 1]),
        "upper": ("FP64", [-1, 1]), "raw_samples": ("FP32", [-1, -1, 1])}

    cls = oip_stub.ModelMetadata(oip.ModelMetadataRequest(name="cls", version="1"))
    assert list(cls.inputs[0].shape) == [-1, CLS_FEATURES]
    described = {o.name: (o.datatype, list(o.shape)) for o in cls.outputs}
    assert described["probabilities"] == ("FP64", [-1, len(CLASSES)])
    assert described["predicted_class"] == ("INT64", [-1])
    assert described["entropy"] == described["mutual_information"] == ("FP64", [-1])
    assert "mean" not in described and "predictive_std" not in described


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_regression_equals_the_native_api(oip_stub: Any, client: Client, raw: bool) -> None:
    x = reg_inputs(6)
    response = oip_stub.ModelInfer(infer_request(
        "reg", x, (*REG_STATS, "lower", "upper"), raw=raw, samples=300, seed=42,
        interval_level=0.9))
    native = client.predict(x, model="reg", samples=300, seed=42, interval_levels=[0.9],
                            outputs=[*REG_STATS, "intervals"])

    assert (response.model_name, response.model_version, response.id) == ("reg", "2", "req-1")
    assert parameters_of(response) == {"samples": 300, "seed": 42, "seed_string": "42",
                                       "interval_level": 0.9}
    assert bool(response.raw_output_contents) is raw
    assert not raw or all(not t.HasField("contents") for t in response.outputs)
    got = outputs_of(response)
    assert list(got) == [*REG_STATS, "lower", "upper"]  # in the order asked for
    for name in REG_STATS:
        assert got[name].dtype == np.float64 and got[name].shape == (6, 1)
        np.testing.assert_array_equal(got[name], getattr(native, name), err_msg=name)
    np.testing.assert_array_equal(got["lower"], native.intervals[0.9][0])
    np.testing.assert_array_equal(got["upper"], native.intervals[0.9][1])


def test_classifier_equals_the_native_api(oip_stub: Any, client: Client) -> None:
    x = cls_inputs(5)
    response = oip_stub.ModelInfer(infer_request("cls", x, tuple(CLS_STATS), samples=200, seed=7))
    native = client.predict(x, model="cls", samples=200, seed=7,
                            outputs=[*(n for n in CLS_STATS.values() if n != "raw_samples"),
                                     "samples"])
    got = outputs_of(response)
    for name, attribute in CLS_STATS.items():
        np.testing.assert_array_equal(got[name], getattr(native, attribute), err_msg=name)
    assert got["predicted_class"].dtype == np.int64
    assert got["raw_samples"].shape == (200, 5, len(CLASSES))
    assert got["raw_samples"].dtype == np.float32


@pytest.mark.parametrize("dtype", ["float64", *INTEGER_TYPES])
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_every_input_datatype_gives_the_native_result(oip_stub: Any, client: Client, dtype: str,
                                                      raw: bool) -> None:
    values = np.array([[1, 0, 3], [2, 5, 1]]) * (1 if dtype.startswith("u") else [1, -1, 1])
    x = values.astype(dtype)
    response = oip_stub.ModelInfer(infer_request("reg", x, ("mean", "std"), raw=raw, samples=20,
                                                 seed=3))
    native = client.predict(x, model="reg", samples=20, seed=3, outputs=["mean", "std"])
    got = outputs_of(response)
    np.testing.assert_array_equal(got["mean"], native.mean)
    np.testing.assert_array_equal(got["std"], native.std)


def test_default_outputs_and_samples_follow_the_model(oip_stub: Any) -> None:
    reg = oip_stub.ModelInfer(infer_request("reg", reg_inputs(2)))
    assert [t.name for t in reg.outputs] == ["mean", "std", "predictive_std"]
    assert parameters_of(reg)["samples"] == 50  # the model's default_samples
    cls = oip_stub.ModelInfer(infer_request("cls", cls_inputs(2), version="1"))
    assert {t.name for t in cls.outputs} == {"probabilities", "std", "predicted_class", "entropy",
                                             "mutual_information"}
    assert parameters_of(cls)["samples"] == 40


def test_fresh_and_large_seeds_are_returned(oip_stub: Any, client: Client) -> None:
    fresh = parameters_of(oip_stub.ModelInfer(infer_request("reg", reg_inputs(1), samples=5)))
    assert 0 <= fresh["seed"] < 2**64 and fresh["seed_string"] == str(fresh["seed"])
    top = str(2**64 - 1)  # above int64: sent as a string parameter, and returned as one too
    large = oip_stub.ModelInfer(infer_request("reg", reg_inputs(3), ("mean",), samples=30,
                                              seed=top))
    assert (parameters_of(large)["seed"], parameters_of(large)["seed_string"]) == (2**64 - 1, top)
    native = client.predict(reg_inputs(3), model="reg", samples=30, seed=2**64 - 1)
    np.testing.assert_array_equal(outputs_of(large)["mean"], native.mean)


def test_adaptive_sampling_stops_where_the_native_api_stops(oip_stub: Any, client: Client) -> None:
    x = reg_inputs(4)
    response = oip_stub.ModelInfer(infer_request("reg", x, ("mean", "standard_error"),
                                                 samples=4000, seed=11, tolerance=0.05))
    native = client.predict(x, model="reg", samples=4000, seed=11, tolerance=0.05,
                            outputs=["mean", "standard_error"])
    used = parameters_of(response)["samples"]
    assert used == native.samples_used < 4000
    assert np.all(outputs_of(response)["standard_error"] <= 0.05)


def test_triton_only_rpcs_are_unimplemented(channel: grpc.Channel) -> None:
    config = channel.unary_unary("/inference.GRPCInferenceService/ModelConfig")
    with pytest.raises(grpc.RpcError) as info:
        config(b"", timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "ModelConfig is not implemented" in info.value.details()
    assert "ModelInfer" in info.value.details()


def test_reflection_lists_and_describes_the_service(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol="inference.ModelInferRequest")]
    listed, described = list(stub.ServerReflectionInfo(iter(requests), timeout=5))
    assert "inference.GRPCInferenceService" in {
        s.name for s in listed.list_services_response.service}
    assert described.file_descriptor_response.file_descriptor_proto


async def test_a_draining_server_is_not_ready(registry: Any) -> None:
    runner = PredictionRunner(registry, workers=1)
    try:
        servicer = InferenceServicer(runner, DrainGate(), ServerMetrics(registry.names()))
        assert (await servicer.ServerReady(oip.ServerReadyRequest(), None)).ready
        servicer.gate.close()
        assert not (await servicer.ServerReady(oip.ServerReadyRequest(), None)).ready
        assert (await servicer.ServerLive(oip.ServerLiveRequest(), None)).live
    finally:
        await asyncio.to_thread(runner.shutdown)
