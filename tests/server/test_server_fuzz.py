"""Property-based tests: whatever arrives, the answer is a proper status code, never a crash or hang.

The codec and the registry checks are driven directly (fast, many examples); the real server gets
fewer examples, each with a deadline so that a hang fails the test instead of stalling it; after
each test an autouse check makes sure the server still answers a good request.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mcdropout_client import tensors as wire
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb
from mcdropout_server import codec
from mcdropout_server.registry import ModelRegistry
from server_testkit import CLS_FEATURES, REG_FEATURES, reg_inputs

from mcdropout import (
    InvalidArgumentError,
    NotCalibratedError,
    NotFoundError,
    ResourceLimitError,
)

Code = grpc.StatusCode
# What a bad request may get back: a refusal that names the problem. INTERNAL (a bug), UNKNOWN
# (an escaped exception) and DEADLINE_EXCEEDED (a hang) are never acceptable. FAILED_PRECONDITION
# is a calibrated answer (calibrated, set levels, prediction sets, abstain) of a version that has
# no calibration.
REFUSALS = {Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED,
            Code.FAILED_PRECONDITION}
DOMAIN_REFUSALS = (InvalidArgumentError, NotFoundError, ResourceLimitError, NotCalibratedError)
DEADLINE = 30.0  # seconds; the heaviest request the strategies allow takes well under one
MAX_MESSAGE_CHARS = 1024  # a refusal quotes what it was sent shortened, whatever its size
PREDICT = "/mcdropout.v1.PredictionService/Predict"

INT64 = st.integers(-(2**63), 2**63 - 1)
# Every declared dtype, DATA_TYPE_UNSPECIFIED and values outside the enum (proto3 keeps them).
DTYPES = st.one_of(st.sampled_from(list(pb.DataType.values())), st.integers(-3, 40))
KNOWN_DTYPES = {v for v in pb.DataType.values() if v != pb.DATA_TYPE_UNSPECIFIED}
HEADER_SAFE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
# Names far beyond the store's 128 characters: once echoed whole, in the reply and the log.
NAMES = st.one_of(st.sampled_from(["", "nope", "reg/1"]), st.text(max_size=300),
                  st.sampled_from([129, 20_000]).map(lambda n: "m" * n))
OUTPUTS = st.lists(st.one_of(st.sampled_from(list(pb.Output.values())), st.integers(-2, 40)),
                   max_size=6)


FIELDS = ("model", "version", "samples", "tolerance", "levels", "outputs", "inputs", "dtype",
          "shape", "data")


@st.composite
def tensors(draw: st.DrawFn, *, broken: str | None = None, wild: bool = False) -> pb.Tensor:
    """A Tensor: (rows, 3 or 4) numbers of the right byte length, except for the ``broken`` part
    ("dtype", "shape" or "data"); ``wild`` is anything, huge, negative, 70 dimensions included."""
    if wild:
        shape = draw(st.lists(st.one_of(INT64, st.integers(-2, 8)), max_size=70))
        return pb.Tensor(dtype=draw(DTYPES), shape=shape, data=draw(st.binary(max_size=256)))
    dtype = draw(DTYPES if broken == "dtype" else st.sampled_from([pb.FLOAT32, pb.FLOAT64]))
    rows = st.one_of(st.integers(0, 6), st.sampled_from([255, 256, 257]))
    shape = draw(st.lists(rows, max_size=4) if broken == "shape"
                 else st.tuples(rows, st.sampled_from([REG_FEATURES, CLS_FEATURES])).map(list))
    itemsize = wire.enum_to_dtype(dtype).itemsize if dtype in KNOWN_DTYPES else 4
    size, count = math.prod(shape) * itemsize, math.prod(shape)
    if broken == "data" or size > 2**20:
        return pb.Tensor(dtype=dtype, shape=shape, data=draw(st.binary(max_size=64)))
    if dtype in (pb.FLOAT32, pb.FLOAT64) and draw(st.booleans()):
        # Ordinary numbers, with NaN or Inf now and then.
        values: Any
        if count <= 64:
            values = draw(st.lists(st.one_of(st.floats(-1e3, 1e3), FLOATS), min_size=count,
                                   max_size=count))
        else:
            values = np.random.default_rng(draw(st.integers(0, 2**32))).normal(size=count)
            if count and draw(st.booleans()):
                values[draw(st.integers(0, count - 1))] = draw(st.sampled_from(
                    [np.nan, np.inf, -np.inf]))
        with np.errstate(over="ignore"):  # huge doubles become Inf in float32: fine
            array = np.asarray(values, wire.enum_to_dtype(dtype)).reshape(shape)
        return wire.to_proto(array)
    # Random bytes of the right length: any bit pattern, huge values and subnormals included.
    data = (draw(st.binary(min_size=size, max_size=size)) if size <= 1024
            else np.random.default_rng(draw(st.integers(0, 2**32))).bytes(size))
    return pb.Tensor(dtype=dtype, shape=shape, data=data)


@st.composite
def predict_requests(draw: st.DrawFn, *, near_valid: bool) -> pb.PredictRequest:
    """A PredictRequest. With ``near_valid``, about half are sensible in every field and the rest
    break one field at a time (so that each check is reached); otherwise anything goes."""
    broken = draw(st.one_of(st.none(), st.sampled_from(FIELDS))) if near_valid else "all"

    def pick(field: str, good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
        return draw(bad if broken in (field, "all") else good)

    request = pb.PredictRequest(
        model_name=pick("model", st.sampled_from(["reg", "cls"]), NAMES),
        model_version=pick("version", st.sampled_from([0, 1]),
                           st.one_of(st.integers(-2, 4), INT64)),
        samples=pick("samples", st.integers(0, 40),
                     st.sampled_from([4999, 5000, 5001, 2**32 - 1])),
        tolerance=pick("tolerance", st.sampled_from([0.0, 0.05]), FLOATS),
        interval_levels=pick("levels", st.lists(st.floats(0.01, 0.99), max_size=3),
                             st.lists(FLOATS, max_size=18)),
        outputs=pick("outputs", st.just([]), OUTPUTS),
        # Header-safe ids only here; see test_request_id_that_is_no_valid_header_value.
        request_id=draw(st.text(HEADER_SAFE, max_size=200) if near_valid
                        else st.text(max_size=200)),
    )
    if draw(st.booleans()):
        request.seed = draw(st.integers(0, 2**64 - 1))
    if broken != "inputs":
        request.inputs.CopyFrom(draw(tensors(broken=broken, wild=not near_valid)))
    return request

# Every test ends with a good request answered: a refusal never takes the server down.
pytestmark = pytest.mark.usefixtures("server_keeps_serving")


# -- the codec and the registry checks, in process ------------------------------------------------
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=predict_requests(near_valid=False))
def test_decoding_any_request_gives_a_call_or_invalid_argument(
        request: pb.PredictRequest) -> None:
    try:
        call = codec.decode_predict(request, "rid")
    except InvalidArgumentError as exc:
        assert str(exc)  # a message, always
        return
    assert call.x.shape == tuple(request.inputs.shape)
    assert (call.tolerance is None) == (request.tolerance == 0)  # 0 on the wire: off


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=predict_requests(near_valid=True))
def test_checking_any_decoded_call_refuses_with_a_domain_error(
        registry: ModelRegistry, request: pb.PredictRequest) -> None:
    try:
        prepared = registry.prepare(codec.decode_predict(request, "rid"))
    except DOMAIN_REFUSALS as exc:
        assert str(exc) and len(str(exc)) < MAX_MESSAGE_CHARS, str(exc)[:2000]
        return
    request_ = prepared.request
    assert request_.rows <= registry.limits.max_rows
    assert 1 <= request_.samples <= prepared.model.predictor.max_samples
    assert request_.tolerance is None or request_.tolerance >= 0


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes_either_fail_to_parse_or_decode_cleanly(data: bytes) -> None:
    try:
        request = pb.PredictRequest.FromString(data)
    except DecodeError:
        return
    with contextlib.suppress(InvalidArgumentError):
        codec.decode_predict(request, "rid")


@settings(max_examples=100, deadline=None)
@given(request=predict_requests(near_valid=True), number=st.integers(100, 10_000),
       value=st.integers(0, 2**63 - 1))
def test_unknown_fields_are_ignored(request: pb.PredictRequest, number: int, value: int) -> None:
    extra = _varint(number << 3) + _varint(value)  # field `number`, wire type 0 (varint)
    parsed = pb.PredictRequest.FromString(request.SerializeToString() + extra)
    parsed.DiscardUnknownFields()
    assert parsed == request


# -- the real server ------------------------------------------------------------------------------
@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(request=predict_requests(near_valid=True))
def test_server_answers_any_predict_with_ok_or_a_refusal(stub: Any,
                                                         request: pb.PredictRequest) -> None:
    try:
        answer = stub.Predict(request, timeout=DEADLINE)
    except grpc.RpcError as error:
        event(error.code().name)
        assert error.code() in REFUSALS, (error.code(), error.details()[:2000])
        assert error.details() and len(error.details()) < MAX_MESSAGE_CHARS
        return
    event("OK")
    rows = request.inputs.shape[0]
    features = REG_FEATURES if request.model_name == "reg" else CLS_FEATURES
    assert list(request.inputs.shape) == [rows, features]
    assert answer.model_name == request.model_name and answer.samples_used >= 1
    # Inputs within float32's range but this large may still overflow inside the model.
    if answer.HasField("mean") and np.abs(wire.from_proto(request.inputs)).max() < 1e6:
        assert np.isfinite(wire.from_proto(answer.mean)).all()


@pytest.mark.parametrize(("model", "x"), [("reg", [[1e39, 0.0, 0.0]]),
                                          ("cls", [[0.0, 0.0, 0.0, -1e39]])])
def test_input_beyond_float32_is_refused(stub: Any, model: str, x: list[list[float]]) -> None:
    request = pb.PredictRequest(model_name=model, inputs=wire.to_proto(np.array(x, np.float64)),
                                samples=3)
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=DEADLINE)
    assert info.value.code() == Code.INVALID_ARGUMENT
    assert "out of range for the model's input dtype float32" in info.value.details()


@pytest.mark.parametrize("request_id", ["\x1f", "caf\u00e9", "line\nbreak"])
def test_request_id_that_is_no_valid_header_value(stub: Any, request_id: str) -> None:
    request = pb.PredictRequest(model_name="reg", inputs=wire.to_proto(reg_inputs(1)),
                                samples=2, request_id=request_id)
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=DEADLINE)
    assert info.value.code() == Code.INVALID_ARGUMENT, (info.value.code(), info.value.details())
    assert "printable ASCII" in info.value.details()
    # The refusal still carries a request id the client can quote: one the server made.
    trailer = dict(info.value.trailing_metadata() or ())
    assert len(trailer["x-request-id"]) == 32


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=512))
def test_server_answers_arbitrary_bytes_with_a_status(channel: grpc.Channel, data: bytes) -> None:
    raw = channel.unary_unary(PREDICT)  # no serializers: the bytes go out as they are
    try:
        pb.PredictRequest.FromString(data)
        parses = True
    except DecodeError:
        parses = False
    try:
        raw(data, timeout=DEADLINE)
    except grpc.RpcError as error:
        if parses:
            assert error.code() in REFUSALS, (error.code(), error.details())
        else:  # the intake parses the body itself and says why it does not parse
            assert error.code() == Code.INVALID_ARGUMENT and "Error parsing message" in error.details()


@settings(max_examples=100, deadline=None)
@given(name=NAMES, version=INT64)
def test_server_answers_any_metadata_request(stub: Any, name: str, version: int) -> None:
    try:
        stub.GetModelMetadata(pb.GetModelMetadataRequest(model_name=name, model_version=version),
                              timeout=DEADLINE)
    except grpc.RpcError as error:
        # No RESOURCE_EXHAUSTED: nothing here is large, except a reply echoing a huge name, which
        # a default client cannot even read (it reports RESOURCE_EXHAUSTED "Stream removed").
        assert error.code() in {Code.INVALID_ARGUMENT, Code.NOT_FOUND}, (
            error.code(), error.details()[:2000])
        assert len(error.details()) < MAX_MESSAGE_CHARS


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
