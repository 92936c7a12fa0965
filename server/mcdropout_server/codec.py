"""Translation between the wire messages (mcdropout.v1) and the server's domain types.

The one place that knows both: servicers decode with it, call the domain, encode with it. Tensor
bytes are converted by :mod:`mcdropout_client.tensors`, shared with the client.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mcdropout_client import tensors
from mcdropout_client.outputs import TENSOR_OUTPUTS
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb

from mcdropout import InvalidArgumentError, Prediction, Task
from mcdropout.calibration import Calibration, HeadCalibration
from mcdropout.engine.inputs import LEGACY_NAME as LEGACY_INPUT_NAME
from mcdropout.errors import shorten
from mcdropout_server.calls import (
    MAX_REQUEST_ID_CHARS,
    Answer,
    PredictCall,
    is_valid_request_id,
)
from mcdropout_server.ranking import RankChunk, RankedPool, RankSettings
from mcdropout_server.registry import ModelRegistry, ServedModel

_TASKS = {"regression": pb.REGRESSION, "classification": pb.CLASSIFICATION}


def decode_predict(request: pb.PredictRequest, request_id: str) -> PredictCall:
    """The :class:`PredictCall` a PredictRequest asks for.

    Args:
        request: The wire request.
        request_id: The id to carry (the request's own, or one the server made).

    Raises:
        InvalidArgumentError: no inputs, both ``inputs`` and ``named_inputs``, a malformed
            tensor, an unknown output enum value, a request id that is over-long or not
            printable ASCII. Which input names a model takes, values with a range (samples,
            seed, tolerance, levels), and whether the version is calibrated, are checked once,
            by the registry's resolution.
    """
    _check_request_id(request.request_id)
    return PredictCall(
        model=request.model_name,
        version=request.model_version or None,
        x=_inputs(request),
        samples=request.samples or None,
        seed=request.seed if request.HasField("seed") else None,
        tolerance=request.tolerance or None,  # 0, the wire's default, turns it off
        interval_levels=tuple(request.interval_levels),
        outputs=tuple(_output_name(value) for value in request.outputs),
        request_id=request_id,
        calibrated=request.calibrated,
        set_levels=tuple(request.set_levels),
    )


def _check_request_id(request_id: str) -> None:
    if request_id and not is_valid_request_id(request_id):
        raise InvalidArgumentError(
            f"request_id must be 1..{MAX_REQUEST_ID_CHARS} printable ASCII characters (it is "
            f"echoed in the x-request-id trailer), got {shorten(request_id)}")


def decode_rank_chunk(request: pb.RankPoolRequest) -> RankChunk:
    """One message of a RankPool stream: the settings it gives (None where unset) and its rows.

    Raises:
        InvalidArgumentError: as :func:`decode_predict` for the rows and the request id; an
            unknown acquisition enum value. The settings' ranges are checked by
            :class:`~mcdropout_server.ranking.PoolRanking` and the registry.
    """
    _check_request_id(request.request_id)
    settings = RankSettings(
        model=request.model_name or None, version=request.model_version or None,
        acquisition=_acquisition_name(request.acquisition), top_k=request.top_k or None,
        samples=request.samples or None,
        seed=request.seed if request.HasField("seed") else None,
        head=request.head or None, calibrated=request.calibrated or None)
    return RankChunk(settings, _inputs(request), request.request_id)


def encode_rank_pool(ranked: RankedPool, request_id: str) -> pb.RankPoolResponse:
    """The RankPoolResponse for ``ranked``: the top rows' indices and scores, best first."""
    return pb.RankPoolResponse(
        model_name=ranked.model, model_version=ranked.version, rows_scored=ranked.rows_scored,
        indices=ranked.indices.tolist(), scores=ranked.scores.tolist(), seed=ranked.seed,
        request_id=request_id)


def _acquisition_name(value: int) -> str | None:
    if value == pb.ACQUISITION_UNSPECIFIED:
        return None  # the head's task's default
    if value not in pb.Acquisition.values():
        allowed = [v.name for v in pb.Acquisition.DESCRIPTOR.values if v.number]
        raise InvalidArgumentError(f"unknown acquisition enum value {value}; allowed: "
                                   f"{', '.join(allowed)}")
    return pb.Acquisition.Name(value).lower().removeprefix("acquisition_")  # type: ignore[arg-type]


def _inputs(request: pb.PredictRequest | pb.RankPoolRequest
            ) -> np.ndarray | dict[str, np.ndarray]:
    if request.HasField("inputs") and request.named_inputs:
        raise InvalidArgumentError(
            f"set inputs or named_inputs, not both: inputs is for a one-input model, "
            f"named_inputs names every input of a model; got inputs and named_inputs "
            f"{shorten(sorted(request.named_inputs))}")
    if request.named_inputs:
        return {name: _input(name, tensor) for name, tensor in request.named_inputs.items()}
    if not request.HasField("inputs"):
        raise InvalidArgumentError(
            "inputs is required: a Tensor of shape (rows, *input_shape), or named_inputs with "
            "every input of the model by name (GetModelMetadata lists them)")
    return _input(LEGACY_INPUT_NAME, request.inputs)


def _input(name: str, tensor: pb.Tensor) -> np.ndarray:
    # Named as the OIP codec names a bad tensor, so both APIs give one message for one mistake.
    try:
        return tensors.from_proto(tensor)
    except ValueError as exc:
        raise InvalidArgumentError(f"input {shorten(name)}: {exc}") from None


def encode_predict(answer: Answer, request_id: str) -> pb.PredictResponse:
    """The PredictResponse for ``answer``, holding exactly the outputs it selected.

    A one-head model's statistics fill the response's own fields; a model with several heads
    answers in ``heads`` (one HeadResult each, in the model's order) and says TASK_UNSPECIFIED.
    ``calibrated`` says whether the version's calibration was applied.
    """
    prediction = answer.prediction
    response = pb.PredictResponse(
        model_name=answer.model, model_version=answer.version, samples_used=prediction.samples,
        seed=prediction.seed, request_id=request_id, calibrated=prediction.calibrated)
    if isinstance(prediction, Prediction):
        ((_, outputs),) = answer.outputs.items()
        response.task = _TASKS[prediction.task]
        _fill(response, prediction, outputs)
    else:
        for name, head, outputs in answer.heads():
            _fill(response.heads.add(name=name, task=_TASKS[head.task]), head, outputs)
    return response


def _fill(message: pb.PredictResponse | pb.HeadResult, prediction: Prediction,
          outputs: frozenset[str]) -> None:
    # A HeadResult holds its statistics in fields of the same names as a PredictResponse.
    for spec in TENSOR_OUTPUTS:
        if spec.name in outputs:
            value = getattr(prediction, spec.attribute)
            if value is not None:
                getattr(message, spec.name).CopyFrom(_tensor(value, spec.dtype))
    if "intervals" in outputs:
        for interval in prediction.intervals:
            message.intervals.add(level=interval.level,
                                  lower=_tensor(interval.lower, np.float64),
                                  upper=_tensor(interval.upper, np.float64))
    if "prediction_sets" in outputs:
        for found in prediction.prediction_sets:
            message.prediction_sets.add(level=found.level,
                                        members=_tensor(found.members, np.bool_))


def encode_metadata(served: ServedModel, registry: ModelRegistry) -> pb.ModelMetadata:
    """The ModelMetadata describing one served model version.

    ``input``, ``output``, ``task``, ``labels``, ``tau`` and ``noise`` describe the first input
    and head, as they did before models had several; ``inputs`` and ``heads`` list them all.
    """
    predictor, info = served.predictor, served.info
    inputs, heads = input_specs(served), head_specs(served)
    return pb.ModelMetadata(
        name=served.name,
        version=served.version,
        versions=registry.versions(served.name),
        task=heads[0].task,
        input=inputs[0],
        output=heads[0].output,
        labels=heads[0].labels,
        dropout_layers=[
            pb.DropoutLayer(name=layer.name, kind=layer.kind, rate=layer.rate,
                            recurrent_rate=layer.recurrent_rate)
            for layer in predictor.stochastic_layers
        ],
        default_samples=predictor.default_samples,
        max_samples=predictor.max_samples,
        tau=heads[0].tau,
        description=info.description,
        max_rows=registry.limits.max_rows,
        inputs=inputs,
        heads=heads,
        calibration=calibration_specs(served.calibration),
        noise=heads[0].noise,
    )


def calibration_specs(calibration: Calibration | None) -> list[pb.HeadCalibration]:
    """What a version's calibration is, head by head (none for an uncalibrated version)."""
    if calibration is None:
        return []
    return [_head_calibration(head) for head in calibration.heads.values()]


def _head_calibration(head: HeadCalibration) -> pb.HeadCalibration:
    policy = head.abstention
    return pb.HeadCalibration(
        head=head.head, method=head.method, rows=head.rows, temperature=head.temperature or 0.0,
        before=head.before, after=head.after,
        abstention=None if policy is None else pb.AbstentionPolicy(
            measure=policy.measure, threshold=policy.threshold, target=policy.target,
            target_value=policy.target_value, risk=policy.risk, coverage=policy.coverage),
        scale=head.regression.scale if head.regression is not None else "",
        drift_measure=head.drift.measure, drift_p95=head.drift.p95, drift_p99=head.drift.p99)


def encode_models(registry: ModelRegistry) -> pb.ListModelsResponse:
    """The ListModelsResponse of every served model with its versions, inputs and heads."""
    summaries = []
    for name in registry.names():
        latest = registry.get(name)
        heads = head_specs(latest)
        summaries.append(pb.ModelSummary(name=name, task=heads[0].task,
                                         versions=registry.versions(name),
                                         inputs=input_specs(latest), heads=heads))
    return pb.ListModelsResponse(models=summaries)


def input_specs(served: ServedModel) -> list[pb.TensorSpec]:
    """Every input of a model version, -1 for the rows and for each variable dimension."""
    return [pb.TensorSpec(name=spec.name, dtype=tensors.dtype_to_enum(spec.dtype),
                          shape=[-1, *(-1 if d is None else d for d in spec.shape)])
            for spec in served.predictor.inputs]


def head_specs(served: ServedModel) -> list[pb.HeadSpec]:
    """Every head of a model version: task, the shape of its mean, labels, tau (target units)
    and noise model ("fixed" or "learned")."""
    return [pb.HeadSpec(name=head.name, task=_TASKS[head.task],
                        output=pb.TensorSpec(name="mean", dtype=pb.FLOAT64,
                                             shape=[-1, head.width]),
                        labels=head.labels, tau=head.tau or 0.0,
                        noise="learned" if head.learned_noise else "fixed")
            for head in served.predictor.heads]


def task_enum(task: Task) -> Any:
    """The wire Task value of a domain task name."""
    return _TASKS[task]


def _tensor(value: np.ndarray, dtype: Any) -> pb.Tensor:
    return tensors.to_proto(np.asarray(value, dtype=dtype))


def _output_name(value: int) -> str:
    if value == pb.OUTPUT_UNSPECIFIED or value not in pb.Output.values():
        allowed = [v.name for v in pb.Output.DESCRIPTOR.values if v.number]
        raise InvalidArgumentError(f"unknown output enum value {value}; allowed outputs: "
                                   f"{', '.join(allowed)}")
    return pb.Output.Name(value).lower()  # type: ignore[arg-type]
