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
from mcdropout_server.oip_tensors import DATATYPES as DATATYPES  # the input datatypes
from mcdropout_server.oip_tensors import OUTPUT_DATATYPES
from mcdropout_server.registry import ModelRegistry, ServedModel

PLATFORM = "mcdropout_keras"
DEFAULT_INTERVAL_LEVEL = 0.95
PARAMETERS = ("samples", "seed", "tolerance", "interval_level", "calibrated", "set_levels")
# The response parameter holding the seed as a string, for clients whose schema lacks uint64.
SEED_STRING = "seed_string"
# Set by Triton clients for Triton's scheduler, which mcdropout does not have: accepted, unused.
IGNORED_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end", "priority", "timeout",
                      "headers", "binary_data_output")
_DATATYPE_OF_DTYPE = {"float64": "FP64", "float32": "FP32", "int64": "INT64", "bool": "BOOL"}
# A prediction set's output name carries its level: "prediction_set@0.9".
LEVEL_MARK = "@"
_BOOLEANS = {"true": True, "false": False}
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
    # Of the Prediction; of its first Interval for "lower"/"upper"; of the PredictionSet at
    # the name's level for "prediction_set".
    attribute: str
    datatype: str

    @property
    def rank(self) -> int:
        return len(self.native.shape)


# OIP output name -> how it is computed, in the catalogue's order (what messages list).
def _attribute(spec: OutputSpec, name: str) -> str:
    # An interval's bounds are its attributes "lower" and "upper"; a prediction set's, "members".
    return {"intervals": name, "prediction_sets": "members"}.get(spec.name, spec.attribute)


OUTPUTS: dict[str, OipOutput] = {
    name: OipOutput(spec, _attribute(spec, name), _DATATYPE_OF_DTYPE[spec.dtype])
    for spec in catalogue.OUTPUTS
    for name in dict.fromkeys(n for names in spec.oip.values() for n in names)
}
SET_OUTPUT = catalogue.BY_NAME["prediction_sets"].oip[catalogue.CLASSIFICATION][0]


@dataclass(frozen=True)
class InferCall:
    """A decoded ModelInferRequest: the domain call plus how to shape the answer."""

    call: PredictCall
    outputs: tuple[str, ...]  # OIP names, in response order
    raw: bool  # answer in raw_output_contents (the request sent raw_input_contents)
    interval_level: float | None


def output_names(task: Task, has_tau: bool, native: tuple[str, ...] | None = None,
                 calibrated: bool = False) -> list[str]:
    """The OIP output names of a head's task, or of the given native outputs (default: all;
    those of a calibrated version with ``calibrated``)."""
    wanted = set(catalogue.allowed(task, has_tau, calibrated) if native is None else native)
    return [name for name, out in OUTPUTS.items()
            if out.native.name in wanted and name in out.native.oip.get(task, ())]


def model_outputs(heads: Sequence[Head], *, defaults: bool = False,
                  calibrated: bool = False) -> dict[str, tuple[str, str]]:
    """OIP output name -> (head name, statistic name) of a model (or its default outputs).

    A one-head model's outputs carry the statistic's name alone (``mean``); a model with
    several heads names them ``<head>/<statistic>`` (``price/mean``, ``kind/predicted_class``).
    With ``calibrated``, the outputs of a calibrated version are included; a prediction set
    is listed by its name without a level (``prediction_set``; requests name the level).
    """
    found = {}
    for head in heads:
        native = catalogue.defaults(head.task, head.has_tau) if defaults else None
        for stat in output_names(head.task, head.has_tau, native, calibrated):
            found[stat if len(heads) == 1 else f"{head.name}/{stat}"] = (head.name, stat)
    return found


def split_level(name: str) -> tuple[str, float | None]:
    """An output name without its level, and the level: ``"kind/prediction_set@0.9"`` is
    ``("kind/prediction_set", 0.9)``; a name without a level mark is itself and None.

    Raises:
        InvalidArgumentError: a level mark on an output other than a prediction set, or a
            level that is not a finite decimal number.
    """
    base, mark, text = name.rpartition(LEVEL_MARK)
    if not mark:
        return name, None
    if base.rpartition("/")[2] != SET_OUTPUT:
        raise InvalidArgumentError(f"only {SET_OUTPUT} outputs name a level after "
                                   f"{LEVEL_MARK!r} (e.g. {SET_OUTPUT}@0.9), got {shorten(name)}")
    if not (_NUMBER.fullmatch(text) and math.isfinite(float(text))):
        raise InvalidArgumentError(f"output {shorten(name)}: the level after {LEVEL_MARK!r} must "
                                   f"be a decimal number such as 0.9, got {shorten(text)}")
    return base, float(text)


def level_name(base: str, level: float) -> str:
    """The output name of a prediction set at ``level``: ``prediction_set@0.9``."""
    return f"{base}{LEVEL_MARK}{level!r}"


def _listed(name: str, stat: str) -> str:
    # How an output is listed (metadata, messages): a prediction set with a placeholder level.
    return f"{name}{LEVEL_MARK}<level>" if stat == SET_OUTPUT else name


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


def decode_infer(request: oip.ModelInferRequest, registry: ModelRegistry,
                 request_id: str = "") -> InferCall:
    """The :class:`InferCall` a ModelInferRequest asks for.

    Inputs go by name; which names the model takes is checked, as for the native API, when the
    call is resolved. Prediction sets are asked for by name with their level
    (``prediction_set@0.9``) or by the ``set_levels`` parameter, which with no outputs named
    adds a set per level to the default outputs.

    Args:
        request_id: The id the call carries when the request has no ``id`` (the RPC's own).

    Raises:
        InvalidArgumentError: an input name given twice, an unsupported datatype, contents that
            do not match the shape, a malformed version or parameter, an output name the model
            does not have, a prediction set named without its level.
        NotFoundError: unknown model or version.
    """
    version = parse_version(request.model_version)
    served = registry.get(request.model_name, version)
    heads = served.predictor.heads
    # Calibrated outputs are known names for every version: whether this one is calibrated is
    # the engine's check, which answers FAILED_PRECONDITION as the native API does.
    allowed = model_outputs(heads, calibrated=True)
    params = _parameters(request.parameters)
    set_levels: dict[float, None] = dict.fromkeys(params.get("set_levels", ()))
    names = tuple(o.name for o in request.outputs)
    if not names:
        names = (*model_outputs(heads, defaults=True),
                 *(level_name(name, level) for level in set_levels
                   for name, (_, stat) in allowed.items() if stat == SET_OUTPUT))
    stats = {}
    for name in names:
        base, level = split_level(name)
        if base not in allowed:
            continue  # refused below, with the others
        if allowed[base][1] == SET_OUTPUT and level is None:
            raise InvalidArgumentError(f"output {shorten(name)} names its level: "
                                       f"{level_name(base, 0.9)} for the 90% set")
        if level is not None:
            set_levels[level] = None
        stats[name] = allowed[base][1]
    wrong = sorted(set(names) - set(stats))
    if wrong:
        kind = heads[0].task if len(heads) == 1 else f"{len(heads)}-head"
        listed = [_listed(n, stat) for n, (_, stat) in allowed.items()]
        raise InvalidArgumentError(f"outputs {shorten(wrong)} do not apply to this {kind} "
                                   f"model; allowed outputs: {', '.join(listed)}")
    level = params.get("interval_level")
    if level is None and {"lower", "upper"} & set(stats.values()):
        level = DEFAULT_INTERVAL_LEVEL
    call = PredictCall(
        model=request.model_name, version=version, x=oip_tensors.decode_inputs(request),
        samples=params.get("samples") or None, seed=params.get("seed"),
        tolerance=params.get("tolerance") or None,
        interval_levels=() if level is None else (level,),
        outputs=tuple(dict.fromkeys(OUTPUTS[stat].native.name for stat in stats.values())),
        request_id=request.id or request_id, calibrated=params.get("calibrated", False),
        set_levels=tuple(set_levels))
    return InferCall(call, names, bool(request.raw_input_contents), level)


def encode_infer(answer: Answer, decoded: InferCall) -> oip.ModelInferResponse:
    """The ModelInferResponse holding the requested outputs, raw if the request was raw."""
    prediction = answer.prediction
    response = oip.ModelInferResponse(model_name=answer.model, model_version=str(answer.version),
                                      id=decoded.call.request_id)
    response.parameters["samples"].int64_param = prediction.samples
    response.parameters["seed"].uint64_param = prediction.seed
    # The same seed as a decimal string: bool, int64 and string are the parameter types every
    # OIP schema has (kserve's has no uint64, and an int64 cannot hold seeds above 2**63 - 1).
    response.parameters[SEED_STRING].string_param = str(prediction.seed)
    if decoded.interval_level is not None:
        response.parameters["interval_level"].double_param = decoded.interval_level
    if prediction.calibrated:
        response.parameters["calibrated"].bool_param = True
    if decoded.call.set_levels:
        response.parameters["set_levels"].string_param = ",".join(
            repr(level) for level in decoded.call.set_levels)
    heads = dict((name, head) for name, head, _ in answer.heads())
    for name in decoded.outputs:
        base, level = split_level(name)
        head, stat = base.rpartition("/")[::2] if len(heads) > 1 else ("", base)
        spec, source = OUTPUTS[stat], heads[head] if head else next(iter(heads.values()))
        owner: Any = source
        if spec.native.name == "intervals":
            owner = source.intervals[0]
        elif spec.native.name == "prediction_sets":
            owner = next(found for found in source.prediction_sets if found.level == level)
        value = getattr(owner, spec.attribute)
        if value is None:
            continue
        wire = tensors.to_proto(np.asarray(value, dtype=oip_tensors.dtype_of(spec.datatype)))
        tensor = response.outputs.add(name=name, datatype=spec.datatype, shape=wire.shape)
        if decoded.raw:
            response.raw_output_contents.append(wire.data)
        else:
            field = OUTPUT_DATATYPES[spec.datatype][1]
            getattr(tensor.contents, field).extend(np.asarray(value).ravel().tolist())
    return response


def encode_model_metadata(served: ServedModel,
                          registry: ModelRegistry) -> oip.ModelMetadataResponse:
    """The ModelMetadataResponse of one model version: its inputs and every output it can return.

    -1 marks the rows and each variable dimension; raw samples have -1 passes too. A calibrated
    version lists its prediction sets as ``prediction_set@<level>`` (a request names the level)
    and, for heads with an abstention policy, ``abstain``.
    """
    predictor, calibration = served.predictor, served.calibration
    meta = oip.ModelMetadataResponse.TensorMetadata
    widths = {head.name: head.width for head in predictor.heads}
    outputs = []
    for name, (head, stat) in model_outputs(predictor.heads,
                                            calibrated=calibration is not None).items():
        if calibration is not None and stat == "abstain" and (
                calibration.heads[head].abstention is None):
            continue
        name = _listed(name, stat)
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
        if key == "calibrated":
            value = _boolean(key, kind, value)
        elif key == "set_levels":
            value = _numbers(key, kind, value)
        elif key in ("samples", "seed"):
            value = _integer(key, kind, value)
            if key == "seed" and not 0 <= value < 2**64:
                raise InvalidArgumentError(f"seed must be in 0..2**64-1, got {value}")
        else:
            value = _number(key, kind, value)
        values[key] = value
    return values


def _boolean(key: str, kind: str, value: Any) -> bool:
    if kind == "bool_param":
        return bool(value)
    if kind == "string_param" and value.lower() in _BOOLEANS:
        return _BOOLEANS[value.lower()]
    raise InvalidArgumentError(f"parameter {key!r} must be a bool, or the string \"true\" or "
                               f"\"false\", got {kind} {shorten(value)}")


def _numbers(key: str, kind: str, value: Any) -> tuple[float, ...]:
    # One level as a number, or several as a comma-separated string ("0.9,0.95").
    if kind != "string_param":
        return (_number(key, kind, value),)
    return tuple(_number(key, kind, part.strip()) for part in value.split(","))


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
    several = ", or several such numbers separated by commas" if key == "set_levels" else ""
    raise InvalidArgumentError(f"parameter {key!r} must be a number (double, int64, uint64, or a "
                               f"string holding a finite decimal number such as \"0.9\"{several}"
                               f"), got {kind} {shorten(value)}")
