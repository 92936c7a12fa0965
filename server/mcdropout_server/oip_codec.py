"""Translation between the Open Inference Protocol (KServe v2) messages and the server's domain types.

The second codec over the same registry and engine as :mod:`mcdropout_server.codec`: a
ModelInferRequest becomes the same :class:`PredictCall` a native Predict would, so equal requests
give equal numbers and equal errors. What is OIP-specific lives here: versions as strings,
request parameters, output names (``<head>/<statistic>`` for a model with several heads) and
typed or raw output contents; input tensors are read by :mod:`mcdropout_server.oip_tensors`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from mcdropout_client import outputs as catalogue
from mcdropout_client import tensors
from mcdropout_client.outputs import OutputSpec
from mcdropout_client.proto.inference import grpc_predict_v2_pb2 as oip

from mcdropout import InvalidArgumentError, Task
from mcdropout.errors import shorten
from mcdropout_server import oip_tensors
from mcdropout_server.calls import Answer, Head, PredictCall
from mcdropout_server.oip_tensors import DATATYPES
from mcdropout_server.registry import ModelRegistry, ServedModel

PLATFORM = "mcdropout_keras"
DEFAULT_INTERVAL_LEVEL = 0.95
PARAMETERS = ("samples", "seed", "tolerance", "interval_level")
# Set by Triton clients for Triton's scheduler, which mcdropout does not have: accepted, unused.
IGNORED_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end", "priority", "timeout",
                      "headers", "binary_data_output")
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
    """The OIP output names of a head's task, or of the given native outputs (default: all)."""
    wanted = set(catalogue.allowed(task, has_tau) if native is None else native)
    return [name for name, out in OUTPUTS.items()
            if out.native.name in wanted and name in out.native.oip.get(task, ())]


def model_outputs(heads: Sequence[Head], *, defaults: bool = False) -> dict[str, tuple[str, str]]:
    """OIP output name -> (head name, statistic name) of a model (or its default outputs).

    A one-head model's outputs carry the statistic's name alone (``mean``); a model with
    several heads names them ``<head>/<statistic>`` (``price/mean``, ``kind/predicted_class``).
    """
    found = {}
    for head in heads:
        native = catalogue.defaults(head.task, head.has_tau) if defaults else None
        for stat in output_names(head.task, head.has_tau, native):
            found[stat if len(heads) == 1 else f"{head.name}/{stat}"] = (head.name, stat)
    return found


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

    Inputs go by name; which names the model takes is checked, as for the native API, when the
    call is resolved.

    Raises:
        InvalidArgumentError: an input name given twice, an unsupported datatype, contents that
            do not match the shape, a malformed version or parameter, an output name the model
            does not have.
        NotFoundError: unknown model or version.
    """
    version = parse_version(request.model_version)
    served = registry.get(request.model_name, version)
    heads = served.predictor.heads
    allowed = model_outputs(heads)
    names = tuple(o.name for o in request.outputs) or tuple(model_outputs(heads, defaults=True))
    wrong = sorted(set(names) - set(allowed))
    if wrong:
        kind = heads[0].task if len(heads) == 1 else f"{len(heads)}-head"
        raise InvalidArgumentError(f"outputs {shorten(wrong)} do not apply to this {kind} "
                                   f"model; allowed outputs: {', '.join(allowed)}")
    params = _parameters(request.parameters)
    level = params.get("interval_level")
    if level is None and {"lower", "upper"} & set(names):
        level = DEFAULT_INTERVAL_LEVEL
    call = PredictCall(
        model=request.model_name, version=version, x=oip_tensors.decode_inputs(request),
        samples=params.get("samples") or None, seed=params.get("seed"),
        tolerance=params.get("tolerance") or None,
        interval_levels=() if level is None else (level,),
        outputs=tuple(dict.fromkeys(OUTPUTS[allowed[n][1]].native.name for n in names)),
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
    heads = dict((name, head) for name, head, _ in answer.heads())
    for name in decoded.outputs:
        head, stat = name.rpartition("/")[::2] if len(heads) > 1 else ("", name)
        spec, source = OUTPUTS[stat], heads[head] if head else next(iter(heads.values()))
        owner: Any = source.intervals[0] if spec.native.name == "intervals" else source
        value = getattr(owner, spec.attribute)
        if value is None:
            continue
        wire = tensors.to_proto(np.asarray(value, dtype=oip_tensors.dtype_of(spec.datatype)))
        tensor = response.outputs.add(name=name, datatype=spec.datatype, shape=wire.shape)
        if decoded.raw:
            response.raw_output_contents.append(wire.data)
        else:
            field = DATATYPES[spec.datatype][1]
            getattr(tensor.contents, field).extend(np.asarray(value).ravel().tolist())
    return response


def encode_model_metadata(served: ServedModel,
                          registry: ModelRegistry) -> oip.ModelMetadataResponse:
    """The ModelMetadataResponse of one model version: its inputs and every output it can return.

    -1 marks the rows and each variable dimension; raw samples have -1 passes too.
    """
    predictor = served.predictor
    meta = oip.ModelMetadataResponse.TensorMetadata
    widths = {head.name: head.width for head in predictor.heads}
    outputs = []
    for name, (head, stat) in model_outputs(predictor.heads).items():
        shape = {1: [-1], 2: [-1, widths[head]], 3: [-1, -1, widths[head]]}[OUTPUTS[stat].rank]
        outputs.append(meta(name=name, datatype=OUTPUTS[stat].datatype, shape=shape))
    return oip.ModelMetadataResponse(
        name=served.name, versions=[str(v) for v in registry.versions(served.name)],
        platform=PLATFORM,
        inputs=[meta(name=spec.name, datatype=oip_tensors.NAME_OF_ENUM[tensors.dtype_to_enum(spec.dtype)],
                     shape=[-1, *(-1 if d is None else d for d in spec.shape)])
                for spec in predictor.inputs],
        outputs=outputs)


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
