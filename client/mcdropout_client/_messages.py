"""Request building and response parsing shared by the sync and asyncio clients."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from grpc_health.v1 import health_pb2

from mcdropout_client import tensors
from mcdropout_client.outputs import OUTPUT_NAMES, TENSOR_OUTPUTS
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2
from mcdropout_client.results import (
    AbstentionPolicy,
    DropoutLayer,
    HeadCalibration,
    HeadResult,
    HeadSpec,
    ModelDescription,
    ModelSummary,
    PredictResult,
    TensorSpec,
)

_MAX_SEED = 2**64


def predict_request(
    x: Any, *, model: str, version: int | None, samples: int | None, seed: int | None,
    tolerance: float | None, interval_levels: Sequence[float], outputs: Sequence[str] | None,
    request_id: str | None, calibrated: bool = False, set_levels: Sequence[float] = (),
) -> mcdropout_pb2.PredictRequest:
    """Build a PredictRequest, checking locally what the wire types cannot carry.

    ``x`` is one array (sent as ``inputs``) or a mapping input name -> array (``named_inputs``).
    """
    if not model:
        raise ValueError("model must be a non-empty model name, got ''")
    if seed is not None and not 0 <= seed < _MAX_SEED:
        raise ValueError(f"seed must be in 0..2**64-1, got {seed}")
    if samples is not None and not 0 <= samples < 2**32:
        raise ValueError(
            f"samples must be in 0..2**32-1 (0 for the model's default), got {samples}"
        )
    request = mcdropout_pb2.PredictRequest(
        model_name=model,
        model_version=version or 0,
        samples=samples or 0,
        tolerance=tolerance or 0.0,
        interval_levels=[float(level) for level in interval_levels],
        outputs=[output_enum(name) for name in outputs or ()],
        request_id=request_id or "",
        calibrated=bool(calibrated),
        set_levels=[float(level) for level in set_levels],
    )
    if isinstance(x, Mapping):
        for name, value in x.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"input names must be non-empty strings, got {name!r}")
            request.named_inputs[name].CopyFrom(tensors.to_proto(value))
    else:
        request.inputs.CopyFrom(tensors.to_proto(x))
    if seed is not None:
        request.seed = seed
    return request


def output_enum(name: str) -> mcdropout_pb2.Output.ValueType:
    """Return the Output enum value for a lower-case output name such as ``"mean"``."""
    if name.lower() not in OUTPUT_NAMES:
        raise ValueError(f"unknown output {name!r}; allowed: {', '.join(OUTPUT_NAMES)}")
    return mcdropout_pb2.Output.Value(name.upper())


def predict_result(response: mcdropout_pb2.PredictResponse) -> PredictResult:
    """Turn a PredictResponse into a :class:`PredictResult` of numpy arrays."""
    # The answer is calibrated as a whole: every head's statistics were taken the same way.
    heads = {head.name: HeadResult(name=head.name, task=task_name(head.task),
                                   **_statistics(head, response.calibrated))
             for head in response.heads}
    return PredictResult(
        model=response.model_name,
        version=response.model_version,
        samples_used=response.samples_used,
        seed=response.seed,
        request_id=response.request_id,
        task=task_name(response.task),
        heads=heads,
        **_statistics(response, response.calibrated),
    )


def _statistics(message: mcdropout_pb2.PredictResponse | mcdropout_pb2.HeadResult,
                calibrated: bool) -> dict[str, Any]:
    # A HeadResult holds its statistics in fields of the same names as a PredictResponse.
    found: dict[str, Any] = {
        spec.attribute: tensors.from_proto(getattr(message, spec.name))
        for spec in TENSOR_OUTPUTS
        if message.HasField(spec.name)  # type: ignore[arg-type]
    }
    found["intervals"] = {
        iv.level: (tensors.from_proto(iv.lower), tensors.from_proto(iv.upper))
        for iv in message.intervals
    }
    found["prediction_sets"] = {s.level: tensors.from_proto(s.members)
                                for s in message.prediction_sets}
    found["calibrated"] = calibrated
    return found


def metadata_request(model: str, version: int | None) -> mcdropout_pb2.GetModelMetadataRequest:
    """Build a GetModelMetadataRequest (version ``None`` means the latest)."""
    if not model:
        raise ValueError("model must be a non-empty model name, got ''")
    return mcdropout_pb2.GetModelMetadataRequest(model_name=model, model_version=version or 0)


def model_description(meta: mcdropout_pb2.ModelMetadata) -> ModelDescription:
    """Turn a ModelMetadata message into a :class:`ModelDescription`."""
    return ModelDescription(
        name=meta.name,
        version=meta.version,
        versions=tuple(meta.versions),
        task=task_name(meta.task),
        input=_spec(meta.input),
        output=_spec(meta.output),
        labels=tuple(meta.labels),
        dropout_layers=tuple(
            DropoutLayer(d.name, d.kind, d.rate, d.recurrent_rate) for d in meta.dropout_layers
        ),
        default_samples=meta.default_samples,
        max_samples=meta.max_samples,
        tau=meta.tau or None,
        description=meta.description,
        max_rows=meta.max_rows,
        inputs=tuple(_spec(spec) for spec in meta.inputs),
        heads=tuple(_head(head) for head in meta.heads),
        calibration=tuple(_calibration(head) for head in meta.calibration),
        noise=meta.noise or "fixed",  # empty from a server older than the field
    )


def model_summaries(response: mcdropout_pb2.ListModelsResponse) -> list[ModelSummary]:
    """Turn a ListModelsResponse into :class:`ModelSummary` entries, in server order."""
    return [ModelSummary(m.name, task_name(m.task), tuple(m.versions),
                         tuple(_spec(spec) for spec in m.inputs),
                         tuple(_head(head) for head in m.heads))
            for m in response.models]


def health_request(service: str) -> health_pb2.HealthCheckRequest:
    """Build a grpc.health.v1 check request ("" asks about the whole server)."""
    return health_pb2.HealthCheckRequest(service=service)


def health_status(response: health_pb2.HealthCheckResponse) -> str:
    """Return the serving status name, e.g. ``"SERVING"`` or ``"NOT_SERVING"``."""
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def task_name(task: int) -> str:
    """``"regression"``, ``"classification"`` or ``"unspecified"`` for a wire Task value."""
    try:
        return mcdropout_pb2.Task.Name(task).lower().removeprefix("task_")  # type: ignore[arg-type]
    except ValueError:  # a newer server's task: describe it rather than fail the whole call
        return f"task_{task}"


def _spec(spec: mcdropout_pb2.TensorSpec) -> TensorSpec:
    try:
        dtype = str(tensors.enum_to_dtype(spec.dtype))
    except ValueError:  # unspecified, or a dtype newer than this client
        dtype = "unspecified" if spec.dtype == 0 else f"dtype_{spec.dtype}"
    return TensorSpec(name=spec.name, dtype=dtype, shape=tuple(spec.shape))


def _calibration(cal: mcdropout_pb2.HeadCalibration) -> HeadCalibration:
    policy = cal.abstention if cal.HasField("abstention") else None
    return HeadCalibration(
        head=cal.head, method=cal.method, rows=cal.rows, temperature=cal.temperature or None,
        scale=cal.scale, before=dict(cal.before), after=dict(cal.after),
        abstention=None if policy is None else AbstentionPolicy(
            policy.measure, policy.threshold, policy.target, policy.target_value, policy.risk,
            policy.coverage),
        drift_measure=cal.drift_measure, drift_p95=cal.drift_p95, drift_p99=cal.drift_p99)


def _head(head: mcdropout_pb2.HeadSpec) -> HeadSpec:
    return HeadSpec(name=head.name, task=task_name(head.task), output=_spec(head.output),
                    labels=tuple(head.labels), tau=head.tau or None,
                    noise=head.noise or "fixed")
