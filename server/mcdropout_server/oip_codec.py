"""Translation between the Open Inference Protocol (KServe v2) messages and the server's domain types.

The second codec over the same registry and engine as :mod:`mcdropout_server.codec`: a
ModelInferRequest becomes the same :class:`PredictCall` a native Predict would, so equal requests
give equal numbers and equal errors. What is OIP-specific lives here: string datatypes and
versions, typed or raw tensor contents, request parameters, and output names. Raw bytes are
converted by :mod:`mcdropout_client.tensors`, shared with the native API.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from mcdropout_client import outputs as catalogue
from mcdropout_client import tensors
from mcdropout_client.outputs import OutputSpec
from mcdropout_client.proto.inference import grpc_predict_v2_pb2 as oip
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb

from mcdropout import InvalidArgumentError, Task
from mcdropout.errors import shorten
from mcdropout_server.calls import Answer, PredictCall
from mcdropout_server.registry import ModelRegistry, ServedModel

PLATFORM = "mcdropout_keras"
INPUT_NAME = "inputs"
DEFAULT_INTERVAL_LEVEL = 0.95
PARAMETERS = ("samples", "seed", "tolerance", "interval_level")
# Set by Triton clients for Triton's scheduler, which mcdropout does not have: accepted, unused.
IGNORED_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end", "priority", "timeout",
                      "headers", "binary_data_output")
# OIP datatype -> (native wire dtype, InferTensorContents field holding its typed values).
DATATYPES: dict[str, tuple[int, str]] = {
    "FP32": (pb.FLOAT32, "fp32_contents"), "FP64": (pb.FLOAT64, "fp64_contents"),
    "INT8": (pb.INT8, "int_contents"), "INT16": (pb.INT16, "int_contents"),
    "INT32": (pb.INT32, "int_contents"), "INT64": (pb.INT64, "int64_contents"),
    "UINT8": (pb.UINT8, "uint_contents"), "UINT16": (pb.UINT16, "uint_contents"),
    "UINT32": (pb.UINT32, "uint_contents"), "UINT64": (pb.UINT64, "uint64_contents"),
}
_NAME_OF_ENUM = {enum: name for name, (enum, _) in DATATYPES.items()}


_DATATYPE_OF_DTYPE = {"float64": "FP64", "float32": "FP32", "int64": "INT64"}
# ASCII digits only, and few enough that int() never meets Python's 4,300-digit conversion limit:
# 19 digits hold every int64 version, 20 every uint64 seed.
_VERSION = re.compile(r"-?[0-9]{1,19}")
_INTEGER = re.compile(r"[0-9]{1,20}")
# A decimal number as a string (kserve's Python client sends floats only so); inf/nan are not.
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


@dataclass(frozen=True)
class OipOutput:
    """How one OIP output is computed: its native output and the attribute holding its value."""

    native: OutputSpec
    attribute: str  # of the Prediction, or of its first Interval for "lower"/"upper"
    datatype: str

    @property
    def rank(self) -> int:
        return len(self.native.shape)


# OIP output name -> how it is computed, in the catalogue's order (what messages list).
OUTPUTS: dict[str, OipOutput] = {
    name: OipOutput(spec, name if spec.name == "intervals" else spec.attribute,
                    _DATATYPE_OF_DTYPE[spec.dtype])
    for spec in catalogue.OUTPUTS
    for name in dict.fromkeys(n for names in spec.oip.values() for n in names)
}


@dataclass(frozen=True)
class InferCall:
    """A decoded ModelInferRequest: the domain call plus how to shape the answer."""

    call: PredictCall
    outputs: tuple[str, ...]  # OIP names, in response order
    raw: bool  # answer in raw_output_contents (the request sent raw_input_contents)
    interval_level: float | None


def output_names(task: Task, has_tau: bool, native: tuple[str, ...] | None = None) -> list[str]:
    """The OIP output names of a model, or of the given native outputs (default: all allowed)."""
    wanted = set(catalogue.allowed(task, has_tau) if native is None else native)
    return [name for name, out in OUTPUTS.items()
            if out.native.name in wanted and name in out.native.oip.get(task, ())]


def parse_version(version: str) -> int | None:
    """A model version string: "" for the latest, else a decimal integer of at most 19 digits.

    A negative one is returned as it is, for the registry to refuse as it refuses a native one.

    Raises:
        InvalidArgumentError: not such an integer.
    """
    if not version:
        return None
    if not _VERSION.fullmatch(version):
        raise InvalidArgumentError(f"model version must be an integer such as \"1\" (at most 19 "
                                   f"digits; empty for the latest), got {shorten(version)}")
    return int(version)


def decode_infer(request: oip.ModelInferRequest, registry: ModelRegistry) -> InferCall:
    """The :class:`InferCall` a ModelInferRequest asks for.

    Raises:
        InvalidArgumentError: not exactly one input, a wrong input name, an unsupported datatype,
            contents that do not match the shape, a malformed version or parameter, an output
            name the model does not have.
        NotFoundError: unknown model or version.
    """
    version = parse_version(request.model_version)
    served = registry.get(request.model_name, version)
    predictor = served.predictor
    allowed = output_names(predictor.task, predictor.tau is not None)
    names = tuple(o.name for o in request.outputs) or tuple(
        output_names(predictor.task, predictor.tau is not None,
                     catalogue.defaults(predictor.task, predictor.tau is not None)))
    wrong = sorted(set(names) - set(allowed))
    if wrong:
        raise InvalidArgumentError(f"outputs {shorten(wrong)} do not apply to this "
                                   f"{predictor.task} model; allowed outputs: {', '.join(allowed)}")
    params = _parameters(request.parameters)
    level = params.get("interval_level")
    if level is None and {"lower", "upper"} & set(names):
        level = DEFAULT_INTERVAL_LEVEL
    call = PredictCall(
        model=request.model_name, version=version, x=_input(request, served),
        samples=params.get("samples") or None, seed=params.get("seed"),
        tolerance=params.get("tolerance") or None,
        interval_levels=() if level is None else (level,),
        outputs=tuple(dict.fromkeys(OUTPUTS[n].native.name for n in names)),
        request_id=request.id)
    return InferCall(call, names, bool(request.raw_input_contents), level)


def encode_infer(answer: Answer, decoded: InferCall) -> oip.ModelInferResponse:
    """The ModelInferResponse holding the requested outputs, raw if the request was raw."""
    prediction = answer.prediction
    response = oip.ModelInferResponse(model_name=answer.model, model_version=str(answer.version),
                                      id=decoded.call.request_id)
    response.parameters["samples"].int64_param = prediction.samples
    response.parameters["seed"].uint64_param = prediction.seed
    if decoded.interval_level is not None:
        response.parameters["interval_level"].double_param = decoded.interval_level
    for name in decoded.outputs:
        spec = OUTPUTS[name]
        owner: Any = prediction.intervals[0] if spec.native.name == "intervals" else prediction
        value = getattr(owner, spec.attribute)
        if value is None:
            continue
        wire = tensors.to_proto(np.asarray(value, dtype=_dtype(spec.datatype)))
        tensor = response.outputs.add(name=name, datatype=spec.datatype, shape=wire.shape)
        if decoded.raw:
            response.raw_output_contents.append(wire.data)
        else:
            field = DATATYPES[spec.datatype][1]
            getattr(tensor.contents, field).extend(np.asarray(value).ravel().tolist())
    return response


def encode_model_metadata(served: ServedModel,
                          registry: ModelRegistry) -> oip.ModelMetadataResponse:
    """The ModelMetadataResponse of one model version: its input and every output it can return."""
    predictor = served.predictor
    meta = oip.ModelMetadataResponse.TensorMetadata
    width = predictor.output_dim
    shapes = {1: [-1], 2: [-1, width], 3: [-1, -1, width]}
    return oip.ModelMetadataResponse(
        name=served.name, versions=[str(v) for v in registry.versions(served.name)],
        platform=PLATFORM,
        inputs=[meta(name=INPUT_NAME, datatype=_NAME_OF_ENUM[tensors.dtype_to_enum(
            predictor.input_dtype)], shape=[-1, *predictor.input_shape])],
        outputs=[meta(name=name, datatype=OUTPUTS[name].datatype, shape=shapes[OUTPUTS[name].rank])
                 for name in output_names(predictor.task, predictor.tau is not None)])


def _input(request: oip.ModelInferRequest, served: ServedModel) -> np.ndarray:
    row_shape = [-1, *served.predictor.input_shape]
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT_NAME:
        got = [t.name for t in request.inputs]
        raise InvalidArgumentError(f"model {served.name!r} takes exactly one input, {INPUT_NAME!r} "
                                   f"of shape {row_shape}; got inputs {shorten(got)}")
    tensor = request.inputs[0]
    if tensor.datatype not in DATATYPES:
        raise InvalidArgumentError(f"input datatype {shorten(tensor.datatype)} is not supported; "
                                   f"expected one of {', '.join(DATATYPES)}")
    enum, field = DATATYPES[tensor.datatype]
    raw = request.raw_input_contents
    if raw:
        if len(raw) != 1:
            raise InvalidArgumentError(f"raw_input_contents must hold one entry per input, got "
                                       f"{len(raw)} for 1 input")
        if tensor.HasField("contents"):
            raise InvalidArgumentError("an input must not set contents when raw_input_contents "
                                       "is used")
        data = raw[0]
    else:
        sent = [f.name for f, _ in tensor.contents.ListFields()]
        if sent not in ([], [field]):
            raise InvalidArgumentError(f"input datatype {tensor.datatype} takes its values in "
                                       f"contents.{field}, got {', '.join(sent)}")
        values = getattr(tensor.contents, field)
        # Typed contents are wider than the datatype (e.g. int32 for INT8): check the range.
        wide = np.asarray(values, dtype=np.float64 if field.startswith("fp") else np.int64
                          if field.startswith("int") else np.uint64)
        narrow = wide.astype(_dtype(tensor.datatype))
        if not field.startswith("fp") and not np.array_equal(narrow, wide):
            limits = np.iinfo(narrow.dtype)
            raise InvalidArgumentError(
                f"input values {wide[narrow != wide][:5].tolist()} are out of the range of "
                f"{tensor.datatype}, {limits.min}..{limits.max}")
        count, shape = narrow.size, list(tensor.shape)
        if all(d >= 0 for d in shape) and count != math.prod(shape):
            raise InvalidArgumentError(f"input has {count} values in contents.{field} but shape "
                                       f"{shorten(shape)} needs {shorten(math.prod(shape))}")
        data = narrow.tobytes()
    try:
        return tensors.from_proto(pb.Tensor(dtype=enum, shape=tensor.shape,  # type: ignore[arg-type]
                                            data=data))
    except ValueError as exc:
        raise InvalidArgumentError(f"inputs: {exc}") from None


def _parameters(params: Any) -> dict[str, Any]:
    unknown = sorted(set(params) - {*PARAMETERS, *IGNORED_PARAMETERS})
    unknown = [k for k in unknown if not k.startswith("triton_")]
    if unknown:
        raise InvalidArgumentError(f"unknown request parameters {shorten(unknown)}; allowed parameters: "
                                   f"{', '.join(PARAMETERS)}")
    values: dict[str, Any] = {}
    for key in PARAMETERS:
        if key not in params:
            continue
        kind = params[key].WhichOneof("parameter_choice")
        if kind is None:
            raise InvalidArgumentError(f"parameter {key!r} has no value")
        value: Any = getattr(params[key], kind)
        if key in ("samples", "seed"):
            value = _integer(key, kind, value)
            if key == "seed" and not 0 <= value < 2**64:
                raise InvalidArgumentError(f"seed must be in 0..2**64-1, got {value}")
        else:
            value = _number(key, kind, value)
        values[key] = value
    return values


def _integer(key: str, kind: str, value: Any) -> int:
    if kind in ("int64_param", "uint64_param"):
        return int(value)
    if kind == "string_param" and _INTEGER.fullmatch(value):
        return int(value)  # seeds above 2**63 - 1 do not fit an int64 parameter
    raise InvalidArgumentError(f"parameter {key!r} must be an integer (int64, uint64, or a string "
                               f"of at most 20 decimal digits), got {kind} {shorten(value)}")


def _number(key: str, kind: str, value: Any) -> float:
    if kind in ("double_param", "int64_param", "uint64_param"):
        return float(value)  # NaN and Inf go on to the engine's range checks, as native ones do
    if kind == "string_param" and _NUMBER.fullmatch(value) and math.isfinite(float(value)):
        return float(value)
    raise InvalidArgumentError(f"parameter {key!r} must be a number (double, int64, uint64, or a "
                               f"string holding a finite decimal number such as \"0.9\"), got "
                               f"{kind} {shorten(value)}")


def _dtype(datatype: str) -> np.dtype[Any]:
    return tensors.enum_to_dtype(DATATYPES[datatype][0])
