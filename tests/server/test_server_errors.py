"""Every refused request gets the right status code and a message saying what was wrong.

After each test an autouse check makes sure the server still answers a good request.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import numpy as np
import pytest
from mcdropout_client import Client
from mcdropout_client import tensors as wire
from mcdropout_client.errors import InvalidArgument, NotFound, ResourceExhausted
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb
from mcdropout_server.logs import JsonFormatter
from mcdropout_server.registry import ModelRegistry
from server_testkit import LIMITS, MAX_MESSAGE_BYTES, MAX_SAMPLES, cls_inputs, reg_inputs

Code = grpc.StatusCode

# Every test ends with a good request answered: a refusal never takes the server down.
pytestmark = pytest.mark.usefixtures("server_keeps_serving")


def request(model: str = "reg", x: Any = None, **fields: Any) -> pb.PredictRequest:
    x = reg_inputs(2) if x is None else x
    inputs = x if isinstance(x, pb.Tensor) else wire.to_proto(x)
    return pb.PredictRequest(model_name=model, inputs=inputs, **fields)


def refused(stub: Any, req: Any, method: str = "Predict") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, method)(req, timeout=10)
    return info.value


NAN = np.array([[0.0, np.nan, 1.0]], np.float32)
INF = np.array([[0.0, 1.0, -np.inf]], np.float32)
CASES = {
    "unknown model": (request("nope"), Code.NOT_FOUND,
                      ["'nope' not found", "served models: ['cls', 'reg']"]),
    "unknown version": (request(model_version=9), Code.NOT_FOUND,
                        ["no version 9", "available versions: [1, 2]"]),
    "no model name": (request(""), Code.INVALID_ARGUMENT,
                      ["model_name is required", "['cls', 'reg']"]),
    "negative version": (request(model_version=-1), Code.INVALID_ARGUMENT,
                         ["model_version must be >= 0", "got -1"]),
    "no inputs": (pb.PredictRequest(model_name="reg"), Code.INVALID_ARGUMENT,
                  ["inputs is required"]),
    "unspecified dtype": (request(x=pb.Tensor(shape=[1, 3], data=bytes(12))),
                          Code.INVALID_ARGUMENT, ["DATA_TYPE_UNSPECIFIED", "FLOAT32"]),
    "short data": (request(x=pb.Tensor(dtype=pb.FLOAT32, shape=[2, 3], data=bytes(20))),
                   Code.INVALID_ARGUMENT, ["20 bytes", "needs 24 bytes"]),
    "wrong row shape": (request(x=np.zeros((2, 5), np.float32)), Code.INVALID_ARGUMENT,
                        ["shape (rows, 3)", "got (2, 5)"]),
    "no rows": (request(x=np.zeros((0, 3), np.float32)), Code.INVALID_ARGUMENT,
                ["at least one row"]),
    "NaN input": (request(x=NAN), Code.INVALID_ARGUMENT, ["NaN or Inf", "row 0"]),
    "Inf input": (request(x=INF), Code.INVALID_ARGUMENT, ["NaN or Inf"]),
    "too many samples": (request(samples=MAX_SAMPLES + 1), Code.INVALID_ARGUMENT,
                         [f"samples must be an integer in 1..{MAX_SAMPLES}", f"got {MAX_SAMPLES + 1}"]),
    "level above 1": (request(interval_levels=[0.9, 1.5]), Code.INVALID_ARGUMENT,
                      ["strictly between 0 and 1", "got 1.5"]),
    "17 levels": (request(interval_levels=[0.5] * 17), Code.INVALID_ARGUMENT,
                  ["at most 16", "got 17"]),
    "intervals without levels": (request(outputs=[pb.INTERVALS]), Code.INVALID_ARGUMENT,
                                 ["needs interval_levels"]),
    "MI for regression": (request(outputs=[pb.MEAN, pb.MUTUAL_INFORMATION]),
                          Code.INVALID_ARGUMENT,
                          ["['mutual_information']", "regression", "allowed outputs: mean, std"]),
    "predictive std for a classifier": (
        request("cls", cls_inputs(2), outputs=[pb.PREDICTIVE_STD]), Code.INVALID_ARGUMENT,
        ["['predictive_std']", "classification", "mutual_information"]),
    "unknown output value": (request(outputs=[99]), Code.INVALID_ARGUMENT,
                             ["unknown output enum value 99", "MEAN"]),
    "negative tolerance": (request(tolerance=-0.5), Code.INVALID_ARGUMENT,
                           ["tolerance must be a finite number >= 0", "got -0.5"]),
    "too many rows": (request(x=reg_inputs(LIMITS.max_rows + 1)), Code.RESOURCE_EXHAUSTED,
                      [f"{LIMITS.max_rows + 1} rows", f"at most {LIMITS.max_rows}"]),
    "rows x samples": (request(x=reg_inputs(250), samples=5000), Code.RESOURCE_EXHAUSTED,
                       ["250 x 5000", f"limit of {LIMITS.max_row_samples}"]),
    "raw samples too large": (request(x=reg_inputs(100), samples=2000, outputs=[pb.SAMPLES]),
                              Code.RESOURCE_EXHAUSTED, ["2000 x 100 x 1", "exceeds the limit"]),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_requests_get_the_right_code_and_message(stub: Any, case: str) -> None:
    req, code, phrases = CASES[case]
    error = refused(stub, req)
    assert error.code() == code, error.details()
    for phrase in phrases:
        assert phrase in error.details()


def test_metadata_of_unknown_model_or_version(stub: Any) -> None:
    error = refused(stub, pb.GetModelMetadataRequest(model_name="nope"), "GetModelMetadata")
    assert error.code() == Code.NOT_FOUND and "served models" in error.details()
    error = refused(stub, pb.GetModelMetadataRequest(model_name="cls", model_version=3),
                    "GetModelMetadata")
    assert error.code() == Code.NOT_FOUND and "available versions: [1]" in error.details()


def test_message_above_the_size_limit_is_resource_exhausted(stub: Any) -> None:
    rows = MAX_MESSAGE_BYTES // 12 + 100  # float32 rows of 3 features: just over the limit
    error = refused(stub, request(x=np.zeros((rows, 3), np.float32)))
    assert error.code() == Code.RESOURCE_EXHAUSTED


def test_the_client_raises_typed_errors_with_the_server_message(client: Client) -> None:
    with pytest.raises(NotFound, match="'nope' not found"):
        client.predict(reg_inputs(1), model="nope")
    with pytest.raises(InvalidArgument, match="NaN or Inf"):
        client.predict(NAN, model="reg")
    with pytest.raises(ResourceExhausted, match="rows per request"):
        client.predict(reg_inputs(LIMITS.max_rows + 1), model="reg")


def test_unexpected_failure_is_internal_with_request_id_and_logged(
        stub: Any, registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("kaboom in the engine")

    monkeypatch.setattr(registry.get("cls").predictor, "run", broken)
    with caplog.at_level(logging.ERROR, logger="mcdropout_server"):
        error = refused(stub, request("cls", cls_inputs(1), request_id="req-internal-1"))
    assert error.code() == Code.INTERNAL
    assert "req-internal-1" in error.details()
    assert "kaboom" not in error.details()  # internals stay in the log
    assert ("x-request-id", "req-internal-1") in error.trailing_metadata()
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.fields["request_id"] == "req-internal-1"  # type: ignore[attr-defined]
    assert record.fields["code"] == "INTERNAL"  # type: ignore[attr-defined]
    assert record.exc_info is not None and "kaboom" in str(record.exc_info[1])


def test_refused_requests_are_logged_at_warning_with_request_id(
        stub: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mcdropout_server"):
        refused(stub, request("nope", request_id="req-warn-1"))
    [record] = [r for r in caplog.records if getattr(r, "fields", {}).get("request_id")
                == "req-warn-1"]
    assert record.levelno == logging.WARNING
    assert record.fields["code"] == "NOT_FOUND"  # type: ignore[attr-defined]
    assert "'nope' not found" in record.fields["error"]  # type: ignore[attr-defined]


LONG_NAME = "m" * 20_000


@pytest.mark.parametrize("method", ["Predict", "GetModelMetadata"])
def test_an_overlong_model_name_is_refused_and_logged_briefly(
        stub: Any, method: str, caplog: pytest.LogCaptureFixture) -> None:
    req = (request(LONG_NAME, request_id="req-long-name") if method == "Predict" else
           pb.GetModelMetadataRequest(model_name=LONG_NAME))
    with caplog.at_level(logging.WARNING, logger="mcdropout_server"):
        error = refused(stub, req, method)
    # Not NOT_FOUND echoing the whole name: a default client cannot even read such a reply.
    assert error.code() == Code.INVALID_ARGUMENT, error.details()[:300]
    assert len(error.details()) < 1024
    assert "model name must match [A-Za-z0-9][A-Za-z0-9_.-]* (at most 128 characters)" in (
        error.details())
    assert "(20000 characters)" in error.details()
    [record] = [r for r in caplog.records if r.name == "mcdropout_server.rpc"]
    assert len(JsonFormatter().format(record)) < 2048
    assert "(20000 characters)" in record.fields["model"]  # type: ignore[attr-defined]
