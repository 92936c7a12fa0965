"""Refused Open Inference Protocol requests: the native API's codes and messages where both apply.

After each test an autouse check makes sure the server still answers a good request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from mcdropout_client import tensors as wire
from mcdropout_client.proto.inference import grpc_predict_v2_pb2 as oip
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb
from mcdropout_server.logs import JsonFormatter
from oip_testkit import infer_request, outputs_of
from server_testkit import LIMITS, MAX_SAMPLES, reg_inputs

Code = grpc.StatusCode
NAN = np.array([[0.0, np.nan, 1.0]], np.float32)


@pytest.fixture(autouse=True)
def server_keeps_serving(oip_stub: Any) -> Iterator[None]:
    yield
    ok = oip_stub.ModelInfer(infer_request("reg", reg_inputs(1), samples=2), timeout=10)
    assert ok.parameters["samples"].int64_param == 2


def refused(call: Callable[..., Any], request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    return info.value


def native(model: str = "reg", x: Any = None, **fields: Any) -> pb.PredictRequest:
    x = reg_inputs(2) if x is None else x
    inputs = x if isinstance(x, pb.Tensor) else wire.to_proto(x)
    return pb.PredictRequest(model_name=model, inputs=inputs, **fields)


def short_raw() -> oip.ModelInferRequest:
    request = infer_request("reg", reg_inputs(2))
    request.raw_input_contents[0] = bytes(20)
    return request


# (OIP request, the native request that is wrong in the same way)
SAME_AS_NATIVE = {
    "unknown model": (infer_request("nope", reg_inputs(2)), native("nope")),
    "unknown version": (infer_request("reg", reg_inputs(2), version="9"), native(model_version=9)),
    "negative version": (infer_request("reg", reg_inputs(2), version="-1"),
                         native(model_version=-1)),
    "no model name": (infer_request("", reg_inputs(2)), native("")),
    "too many samples": (infer_request("reg", reg_inputs(2), samples=MAX_SAMPLES + 1),
                         native(samples=MAX_SAMPLES + 1)),
    "negative tolerance": (infer_request("reg", reg_inputs(2), tolerance=-0.5),
                           native(tolerance=-0.5)),
    "NaN input": (infer_request("reg", NAN), native(x=NAN)),
    "wrong row shape": (infer_request("reg", np.zeros((2, 5), np.float32)),
                        native(x=np.zeros((2, 5), np.float32))),
    "no rows": (infer_request("reg", np.zeros((0, 3), np.float32)),
                native(x=np.zeros((0, 3), np.float32))),
    "too many rows": (infer_request("reg", reg_inputs(LIMITS.max_rows + 1)),
                      native(x=reg_inputs(LIMITS.max_rows + 1))),
    "short raw data": (short_raw(),
                       native(x=pb.Tensor(dtype=pb.FLOAT32, shape=[2, 3], data=bytes(20)))),
    "level above 1": (infer_request("reg", reg_inputs(2), ("lower",), interval_level=1.5),
                      native(interval_levels=[1.5])),
}


@pytest.mark.parametrize("case", SAME_AS_NATIVE)
def test_same_code_and_message_as_the_native_api(oip_stub: Any, stub: Any, case: str) -> None:
    request, twin = SAME_AS_NATIVE[case]
    got, expected = refused(oip_stub.ModelInfer, request), refused(stub.Predict, twin)
    assert expected.code() != Code.OK
    assert (got.code(), got.details()) == (expected.code(), expected.details())


def test_metadata_of_an_unknown_model_is_not_found_as_natively(oip_stub: Any, stub: Any) -> None:
    got = refused(oip_stub.ModelMetadata, oip.ModelMetadataRequest(name="nope"))
    expected = refused(stub.GetModelMetadata, pb.GetModelMetadataRequest(model_name="nope"))
    assert (got.code(), got.details()) == (expected.code(), expected.details())


def with_input(change: Callable[[Any], None], raw: bool = False) -> oip.ModelInferRequest:
    request = infer_request("reg", reg_inputs(2), raw=raw)
    change(request)
    return request


def two_inputs(r: Any) -> None:
    r.inputs.add().CopyFrom(r.inputs[0])


def int8_input(r: Any) -> None:
    r.inputs[0].datatype = "INT8"
    r.inputs[0].contents.Clear()
    r.inputs[0].contents.int_contents.extend([1, 2, 300, 4, 5, 6])


def set_attr(path: str, value: Any) -> Callable[[Any], None]:
    def change(r: Any) -> None:
        *owners, name = path.split(".")
        target = r
        for owner in owners:
            target = target.inputs[0] if owner == "input" else getattr(target, owner)
        if isinstance(value, list):
            getattr(target, name).extend(value)
        else:
            setattr(target, name, value)
    return change


OIP_ONLY = {
    "unsupported datatype": (with_input(set_attr("input.datatype", "BYTES")),
                             ["datatype 'BYTES' is not supported", "FP32, FP64, INT8"]),
    "two inputs": (with_input(two_inputs),
                   ["each input must be named once", "['inputs', 'inputs']"]),
    "wrong input name": (with_input(set_attr("input.name", "x")),
                         ["unknown input(s) ['x']", "the model takes 'inputs' (rows, 3) float32"]),
    "too few typed values": (with_input(set_attr("input.shape", [2])),
                             ["6 values in contents.fp32_contents", "[2, 3, 2] needs 12"]),
    "values in the wrong field": (with_input(set_attr("input.contents.fp64_contents", [1.0])),
                                  ["FP32 takes its values in contents.fp32_contents",
                                   "fp64_contents"]),
    "INT8 out of range": (with_input(int8_input), ["values [300] are out of the range of INT8, -128..127"]),
    "raw and typed contents": (with_input(set_attr("input.contents.fp32_contents", [1.0]),
                                          raw=True),
                               ["must not set contents when raw_input_contents is used"]),
    "malformed version": (infer_request("reg", reg_inputs(2), version="latest"),
                          ["model version must be an integer", "got 'latest'"]),
    "misspelt parameter": (infer_request("reg", reg_inputs(2), sample=10),
                           ["unknown request parameters ['sample']",
                            "samples, seed, tolerance, interval_level"]),
    "samples as text": (infer_request("reg", reg_inputs(2), samples="ten"),
                        ["'samples' must be an integer", "'ten'"]),
    "tolerance as text": (infer_request("reg", reg_inputs(2), tolerance="small"),
                          ["'tolerance' must be a number"]),
    "negative seed": (infer_request("reg", reg_inputs(2), seed=-1),
                      ["seed must be in 0..2**64-1, got -1"]),
    "seed above 2**64": (infer_request("reg", reg_inputs(2), seed=str(2**64)),
                         [f"got {2**64}"]),
    "classification output of a regression": (
        infer_request("reg", reg_inputs(2), ("mean", "entropy")),
        ["outputs ['entropy'] do not apply to this regression model",
         "allowed outputs: mean, std, standard_error, predictive_std, lower, upper, "
         "raw_samples"]),
}


@pytest.mark.parametrize("case", OIP_ONLY)
def test_malformed_requests_are_invalid_arguments(oip_stub: Any, case: str) -> None:
    request, phrases = OIP_ONLY[case]
    error = refused(oip_stub.ModelInfer, request)
    assert error.code() == Code.INVALID_ARGUMENT, error.details()
    for phrase in phrases:
        assert phrase in error.details()


def test_triton_scheduler_parameters_are_accepted_and_ignored(oip_stub: Any) -> None:
    request = infer_request("reg", reg_inputs(2), samples=3, priority=1, timeout=10**6)
    assert oip_stub.ModelInfer(request, timeout=10).parameters["samples"].int64_param == 3


LONG = 20_000


def long_parameter_key() -> oip.ModelInferRequest:
    request = infer_request("reg", reg_inputs(2))
    request.parameters["k" * LONG].int64_param = 1
    return request


OVERLONG = {
    "model name": (infer_request("m" * LONG, reg_inputs(2)), "model name must match"),
    "output name": (infer_request("reg", reg_inputs(2), ("o" * LONG,)),
                    "do not apply to this regression model"),
    "parameter key": (long_parameter_key(), "unknown request parameters"),
}


@pytest.mark.parametrize("case", OVERLONG)
def test_overlong_client_strings_are_refused_and_logged_briefly(
        oip_stub: Any, case: str, caplog: pytest.LogCaptureFixture) -> None:
    request, phrase = OVERLONG[case]
    with caplog.at_level(logging.WARNING, logger="mcdropout_server"):
        error = refused(oip_stub.ModelInfer, request)
    assert error.code() == Code.INVALID_ARGUMENT, error.details()[:300]
    assert phrase in error.details()
    assert f"({LONG} characters)" in error.details() and len(error.details()) < 1024
    [record] = [r for r in caplog.records if r.name == "mcdropout_server.rpc"]
    assert len(JsonFormatter().format(record)) < 2048


def test_overlong_model_name_in_metadata_and_readiness(
        oip_stub: Any, caplog: pytest.LogCaptureFixture) -> None:
    error = refused(oip_stub.ModelMetadata, oip.ModelMetadataRequest(name="m" * LONG))
    assert error.code() == Code.INVALID_ARGUMENT, error.details()[:300]
    assert len(error.details()) < 1024 and "model name must match" in error.details()
    # Readiness answers "not ready" rather than an error; its DEBUG line is bounded all the same.
    with caplog.at_level(logging.DEBUG, logger="mcdropout_server"):
        ready = oip_stub.ModelReady(oip.ModelReadyRequest(name="m" * LONG), timeout=10)
    assert not ready.ready
    [record] = [r for r in caplog.records if r.levelno == logging.DEBUG
                and r.name == "mcdropout_server.rpc"]
    assert len(JsonFormatter().format(record)) < 2048


def test_numbers_sent_as_strings_are_accepted(oip_stub: Any) -> None:
    # kserve's Python client sends a float parameter only as a string.
    as_numbers = infer_request("reg", reg_inputs(3), ("lower", "upper", "mean"), samples=40,
                               seed=7, interval_level=0.9, tolerance=0.01)
    as_strings = infer_request("reg", reg_inputs(3), ("lower", "upper", "mean"), samples="40",
                               seed="7", interval_level="0.9", tolerance="1e-2")
    expected, got = (oip_stub.ModelInfer(r, timeout=10) for r in (as_numbers, as_strings))
    assert got.parameters["interval_level"].double_param == 0.9
    assert outputs_of(got).keys() == outputs_of(expected).keys()
    for name, value in outputs_of(expected).items():
        np.testing.assert_array_equal(outputs_of(got)[name], value)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e999", "0x1p-1", "0.9 ", "ninety"])
def test_numbers_as_strings_must_be_finite_decimals(oip_stub: Any, text: str) -> None:
    error = refused(oip_stub.ModelInfer, infer_request("reg", reg_inputs(2), ("lower",),
                                                       interval_level=text))
    assert error.code() == Code.INVALID_ARGUMENT
    assert "parameter 'interval_level' must be a number" in error.details()
    assert "finite decimal number" in error.details() and repr(text) in error.details()


@pytest.mark.parametrize(("key", "value"), [
    ("interval_level", 1.5), ("interval_level", 0.0), ("tolerance", -0.5),
    ("samples", MAX_SAMPLES + 1)])
def test_numbers_as_strings_meet_the_same_range_checks(oip_stub: Any, key: str,
                                                       value: float) -> None:
    as_number = refused(oip_stub.ModelInfer, infer_request("reg", reg_inputs(2), ("lower",),
                                                           **{key: value}))
    as_string = refused(oip_stub.ModelInfer, infer_request("reg", reg_inputs(2), ("lower",),
                                                           **{key: str(value)}))
    assert as_string.code() == as_number.code() == Code.INVALID_ARGUMENT
    assert as_string.details() == as_number.details()
