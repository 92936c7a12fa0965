"""Property-based tests of the Open Inference Protocol: no well-formed request gets INTERNAL or
UNKNOWN, and nothing a client sends comes back (or goes to the log) unbounded.

The decoders run in process on arbitrary messages (every field; parameters of every type; model
names and versions as any string, 20,000 characters and 5,000 digits included): every exception
must be a domain error that the rpc table maps to a refusal with a short message. The real server
then gets the known bad cases and a smaller run of arbitrary requests, each with a deadline; after
each test an autouse check makes sure it still answers a good request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mcdropout_client.proto.inference import grpc_predict_v2_pb2 as oip
from mcdropout_server import oip_codec
from mcdropout_server.registry import ModelRegistry
from mcdropout_server.rpc import status_for
from oip_testkit import infer_request
from server_testkit import CLS_FEATURES, REG_FEATURES, reg_inputs

from mcdropout import MCDropoutError

Code = grpc.StatusCode
# FAILED_PRECONDITION: a calibrated answer (calibrated, set_levels, prediction_set@L, abstain)
# asked of a version without calibration.
REFUSALS = {Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED,
            Code.FAILED_PRECONDITION}
MAX_MESSAGE_CHARS = 1024  # a refusal quotes what it was sent shortened, whatever its size
DEADLINE = 30.0  # seconds; the heaviest request the strategies allow takes well under one

INT64 = st.integers(-(2**63), 2**63 - 1)
UINT64 = st.integers(0, 2**64 - 1)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
# Past Python's 4,300-digit limit on int(str): such strings once escaped as ValueError.
HUGE_DIGITS = st.integers(4301, 5200).map(lambda n: "9" * n)
HUGE_NAME = st.sampled_from([129, 20_000]).map(lambda n: "n" * n)
VERSIONS = st.one_of(
    st.sampled_from(["", "0", "1", "2", "3", "-1", "--1", "-", "+1", " 1", "1.0", "\u0661",
                     "latest", "9" * 19, "9" * 20, "-" + "9" * 19]),
    st.integers(-(2**70), 2**70).map(str), st.text(max_size=30), HUGE_DIGITS)
NUMBER_STRINGS = st.one_of(
    st.sampled_from(["0.9", ".5", "1e-2", "+0.01", "nan", "inf", "-inf", "1e999", "1_0", " 1",
                     "0x10", "", "ten"]),
    FLOATS.map(repr), st.integers(-(2**70), 2**70).map(str), st.text(max_size=30), HUGE_DIGITS)
PARAMETER_KEYS = st.one_of(
    st.sampled_from([*oip_codec.PARAMETERS, *oip_codec.IGNORED_PARAMETERS, "triton_x"]),
    st.text(max_size=20), HUGE_NAME)
OUTPUT_NAMES = st.one_of(st.sampled_from(list(oip_codec.OUTPUTS)), st.text(max_size=20),
                         HUGE_NAME)
DATATYPES = st.one_of(st.sampled_from([*oip_codec.DATATYPES, "BYTES", "FP16", "BOOL", "",
                                       "fp32"]), st.text(max_size=10))
CONTENT_VALUES = {"fp32_contents": FLOATS, "fp64_contents": FLOATS,
                  "int_contents": st.integers(-(2**31), 2**31 - 1), "int64_contents": INT64,
                  "uint_contents": st.integers(0, 2**32 - 1), "uint64_contents": UINT64,
                  "bool_contents": st.booleans()}


@st.composite
def parameters(draw: st.DrawFn) -> oip.InferParameter:
    """One InferParameter of any type (or none set), with any value of that type."""
    kind = draw(st.sampled_from(["none", "bool_param", "int64_param", "uint64_param",
                                 "double_param", "string_param"]))
    values = {"bool_param": st.booleans(), "int64_param": INT64, "uint64_param": UINT64,
              "double_param": FLOATS, "string_param": NUMBER_STRINGS}
    return oip.InferParameter() if kind == "none" else oip.InferParameter(
        **{kind: draw(values[kind])})


@st.composite
def good_parameters(draw: st.DrawFn) -> dict[str, oip.InferParameter]:
    chosen: dict[str, oip.InferParameter] = {}
    if draw(st.booleans()):
        chosen["samples"] = oip.InferParameter(int64_param=draw(st.integers(1, 30)))
    if draw(st.booleans()):
        chosen["seed"] = oip.InferParameter(uint64_param=draw(UINT64))
    if draw(st.booleans()):
        level = draw(st.floats(0.05, 0.95))
        chosen["interval_level"] = draw(st.sampled_from([
            oip.InferParameter(double_param=level), oip.InferParameter(string_param=str(level))]))
    return chosen


@st.composite
def input_tensors(draw: st.DrawFn, request: oip.ModelInferRequest, broken: str | None) -> None:
    """Add the inputs: one good FP32/FP64 tensor, except for the ``broken`` part."""
    count = draw(st.sampled_from([0, 2])) if broken == "inputs" else 1
    for _ in range(count):
        name = draw(st.one_of(st.just("inputs"), st.text(max_size=10), HUGE_NAME)
                    if broken == "name" else st.just("inputs"))
        datatype = draw(DATATYPES if broken == "datatype" else st.sampled_from(["FP32", "FP64"]))
        rows = draw(st.integers(1, 4))
        shape = draw(st.lists(INT64, max_size=8) if broken == "shape" else st.just(
            [rows, draw(st.sampled_from([REG_FEATURES, CLS_FEATURES]))]))
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        count_ok = rows * shape[1] if broken is None else 0
        if broken is None:  # ordinary numbers, raw or typed: what a client would send
            values = draw(st.lists(st.floats(-10, 10, width=32), min_size=count_ok,
                                   max_size=count_ok))
            if draw(st.booleans()):
                dtype = "<f8" if datatype == "FP64" else "<f4"
                request.raw_input_contents.append(np.asarray(values, dtype).tobytes())
            else:
                getattr(tensor.contents, oip_codec.DATATYPES[datatype][1]).extend(values)
        elif broken == "raw":
            request.raw_input_contents.append(draw(st.binary(max_size=64)))
        else:
            field = draw(st.sampled_from(list(CONTENT_VALUES)) if broken == "contents" else
                         st.just(oip_codec.DATATYPES.get(datatype, (0, "fp32_contents"))[1]))
            getattr(tensor.contents, field).extend(
                draw(st.lists(CONTENT_VALUES[field], max_size=12)))
    if broken == "raw" and draw(st.booleans()):
        request.raw_input_contents.append(b"")  # one entry too many


FIELDS = ("model", "version", "id", "parameters", "outputs", "inputs", "name", "datatype",
          "shape", "contents", "raw")


@st.composite
def infer_requests(draw: st.DrawFn) -> oip.ModelInferRequest:
    """A ModelInferRequest: about half sensible in every field, the rest broken in one field."""
    broken = draw(st.one_of(st.none(), st.sampled_from(FIELDS)))

    def pick(field: str, good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
        return draw(bad if broken == field else good)

    request = oip.ModelInferRequest(
        model_name=pick("model", st.sampled_from(["reg", "cls"]),
                        st.one_of(st.sampled_from(["", "nope", "reg/1"]), st.text(max_size=40),
                                  HUGE_NAME)),
        model_version=pick("version", st.sampled_from(["", "1"]), VERSIONS),
        id=pick("id", st.text(max_size=20), st.one_of(st.text(max_size=300), HUGE_NAME)),
        outputs=[{"name": n} for n in pick("outputs", st.just([]),
                                           st.lists(OUTPUT_NAMES, max_size=4))])
    chosen = pick("parameters", good_parameters(),
                  st.dictionaries(PARAMETER_KEYS, parameters(), max_size=4))
    for key, value in chosen.items():
        request.parameters[key].CopyFrom(value)
    draw(input_tensors(request, broken))
    return request


def assert_refusal(exc: Exception) -> None:
    """``exc`` is a domain error that the rpc table answers with a refusal and a short message."""
    code, message = status_for(exc, "rid")
    assert isinstance(exc, MCDropoutError), repr(exc)
    assert code in REFUSALS, (code, message)
    assert message and len(message) < MAX_MESSAGE_CHARS, message[:2000]


@pytest.fixture(autouse=True)
def server_keeps_serving(oip_stub: Any) -> Iterator[None]:
    yield
    ok = oip_stub.ModelInfer(infer_request("reg", reg_inputs(1), samples=2), timeout=10)
    assert ok.parameters["samples"].int64_param == 2


# -- the decoders, in process ---------------------------------------------------------------------
@settings(max_examples=500, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(request=infer_requests())
def test_decoding_any_infer_request_gives_a_call_or_a_refusal(registry: ModelRegistry,
                                                              request: oip.ModelInferRequest
                                                              ) -> None:
    try:
        decoded = oip_codec.decode_infer(request, registry)
        prepared = registry.prepare(decoded.call)
    except Exception as exc:  # the property: every exception is a refusal
        event(type(exc).__name__)
        assert_refusal(exc)
        return
    event("prepared")
    assert prepared.model.name == request.model_name
    assert 1 <= prepared.request.samples <= prepared.model.predictor.max_samples


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.one_of(st.sampled_from(["reg", "cls", "", "nope"]), st.text(max_size=40),
                      HUGE_NAME), version=VERSIONS)
def test_looking_up_any_name_and_version_gives_a_model_or_a_refusal(
        registry: ModelRegistry, name: str, version: str) -> None:
    # What ModelReady and ModelMetadata do with their request.
    try:
        wanted = oip_codec.parse_version(version)
        served = registry.get(name, wanted)
    except Exception as exc:  # the property: every exception is a refusal
        assert_refusal(exc)
        return
    assert served.name == name
    assert wanted in (None, 0, served.version)


@settings(max_examples=300, deadline=None)
@given(version=VERSIONS)
def test_a_version_string_is_a_number_of_at_most_19_digits_or_a_refusal(version: str) -> None:
    try:
        parsed = oip_codec.parse_version(version)
    except Exception as exc:  # the property: every exception is a refusal
        assert_refusal(exc)
        return
    assert parsed is None if version == "" else parsed == int(version)
    assert parsed is None or abs(parsed) < 10**19


# -- the real server ------------------------------------------------------------------------------
LONG_DIGITS = "9" * 5000
BAD_VERSIONS = {"double minus": "--1", "5000 digits": LONG_DIGITS}


@pytest.mark.parametrize("method", ["ModelReady", "ModelMetadata", "ModelInfer"])
@pytest.mark.parametrize("case", BAD_VERSIONS)
def test_malformed_version_is_invalid_argument_on_every_method(oip_stub: Any, method: str,
                                                               case: str) -> None:
    version = BAD_VERSIONS[case]
    request = {"ModelReady": oip.ModelReadyRequest(name="reg", version=version),
               "ModelMetadata": oip.ModelMetadataRequest(name="reg", version=version),
               "ModelInfer": infer_request("reg", reg_inputs(2), version=version)}[method]
    with pytest.raises(grpc.RpcError) as info:
        getattr(oip_stub, method)(request, timeout=DEADLINE)
    assert info.value.code() == Code.INVALID_ARGUMENT, info.value.details()
    assert "model version must be an integer" in info.value.details()
    assert len(info.value.details()) < MAX_MESSAGE_CHARS


@pytest.mark.parametrize("key", ["samples", "seed"])
def test_integer_parameter_of_5000_digits_is_invalid_argument(oip_stub: Any, key: str) -> None:
    request = infer_request("reg", reg_inputs(2), **{key: LONG_DIGITS})
    with pytest.raises(grpc.RpcError) as info:
        oip_stub.ModelInfer(request, timeout=DEADLINE)
    assert info.value.code() == Code.INVALID_ARGUMENT, info.value.details()
    assert f"parameter {key!r} must be an integer" in info.value.details()
    assert "(5000 characters)" in info.value.details()
    assert len(info.value.details()) < MAX_MESSAGE_CHARS


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(request=infer_requests())
def test_server_answers_any_infer_request_with_ok_or_a_refusal(
        oip_stub: Any, request: oip.ModelInferRequest) -> None:
    try:
        oip_stub.ModelInfer(request, timeout=DEADLINE)
    except grpc.RpcError as error:
        event(error.code().name)
        assert error.code() in REFUSALS, (error.code(), error.details())
        assert error.details() and len(error.details()) < MAX_MESSAGE_CHARS
        return
    event("OK")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.one_of(st.sampled_from(["reg", "cls", "nope"]), st.text(max_size=40), HUGE_NAME),
       version=VERSIONS)
def test_server_answers_any_ready_or_metadata_request(oip_stub: Any, name: str,
                                                      version: str) -> None:
    for call, request in ((oip_stub.ModelReady, oip.ModelReadyRequest(name=name, version=version)),
                          (oip_stub.ModelMetadata,
                           oip.ModelMetadataRequest(name=name, version=version))):
        try:
            call(request, timeout=DEADLINE)
        except grpc.RpcError as error:
            assert error.code() in REFUSALS, (error.code(), error.details())
            assert len(error.details()) < MAX_MESSAGE_CHARS
