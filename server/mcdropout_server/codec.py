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

from mcdropout import InvalidArgumentError, Task
from mcdropout.errors import shorten
from mcdropout_server.calls import MAX_REQUEST_ID_CHARS, Answer, PredictCall, is_valid_request_id
from mcdropout_server.registry import ModelRegistry, ServedModel

_TASKS = {"regression": pb.REGRESSION, "classification": pb.CLASSIFICATION}


def decode_predict(request: pb.PredictRequest, request_id: str) -> PredictCall:
    """The :class:`PredictCall` a PredictRequest asks for.

    Args:
        request: The wire request.
        request_id: The id to carry (the request's own, or one the server made).

    Raises:
        InvalidArgumentError: missing or malformed inputs, an unknown output enum value, a
            request id that is over-long or not printable ASCII. Values with a range (samples,
            seed, tolerance, levels) are checked once, by the registry's resolution.
    """
    if request.request_id and not is_valid_request_id(request.request_id):
        raise InvalidArgumentError(
            f"request_id must be 1..{MAX_REQUEST_ID_CHARS} printable ASCII characters (it is "
            f"echoed in the x-request-id trailer), got {shorten(request.request_id)}")
    if not request.HasField("inputs"):
        raise InvalidArgumentError("inputs is required: a Tensor of shape (rows, *input_shape)")
    try:
        x = tensors.from_proto(request.inputs)
    except ValueError as exc:
        raise InvalidArgumentError(f"inputs: {exc}") from None
    return PredictCall(
        model=request.model_name,
        version=request.model_version or None,
        x=x,
        samples=request.samples or None,
        seed=request.seed if request.HasField("seed") else None,
        tolerance=request.tolerance or None,  # 0, the wire's default, turns it off
        interval_levels=tuple(request.interval_levels),
        outputs=tuple(_output_name(value) for value in request.outputs),
        request_id=request_id,
    )


def encode_predict(answer: Answer, request_id: str) -> pb.PredictResponse:
    """The PredictResponse for ``answer``, holding exactly the outputs it selected."""
    prediction = answer.prediction
    response = pb.PredictResponse(
        model_name=answer.model, model_version=answer.version, samples_used=prediction.samples,
        seed=prediction.seed, request_id=request_id, task=_TASKS[prediction.task])
    for spec in TENSOR_OUTPUTS:
        if spec.name in answer.outputs:
            value = getattr(prediction, spec.attribute)
            if value is not None:
                getattr(response, spec.name).CopyFrom(_tensor(value, spec.dtype))
    if "intervals" in answer.outputs:
        for interval in prediction.intervals:
            response.intervals.add(level=interval.level,
                                   lower=_tensor(interval.lower, np.float64),
                                   upper=_tensor(interval.upper, np.float64))
    return response


def encode_metadata(served: ServedModel, registry: ModelRegistry) -> pb.ModelMetadata:
    """The ModelMetadata describing one served model version."""
    predictor, info = served.predictor, served.info
    return pb.ModelMetadata(
        name=served.name,
        version=served.version,
        versions=registry.versions(served.name),
        task=_TASKS[predictor.task],
        input=pb.TensorSpec(name="inputs", dtype=tensors.dtype_to_enum(predictor.input_dtype),
                            shape=[-1, *predictor.input_shape]),
        output=pb.TensorSpec(name="mean", dtype=pb.FLOAT64, shape=[-1, predictor.output_dim]),
        labels=info.labels,
        dropout_layers=[
            pb.DropoutLayer(name=layer.name, kind=layer.kind, rate=layer.rate,
                            recurrent_rate=layer.recurrent_rate)
            for layer in predictor.stochastic_layers
        ],
        default_samples=predictor.default_samples,
        max_samples=predictor.max_samples,
        tau=predictor.tau or 0.0,
        description=info.description,
        max_rows=registry.limits.max_rows,
    )


def encode_models(registry: ModelRegistry) -> pb.ListModelsResponse:
    """The ListModelsResponse of every served model with its versions."""
    return pb.ListModelsResponse(models=[
        pb.ModelSummary(name=name, task=task_enum(registry.get(name).predictor.task),
                        versions=registry.versions(name))
        for name in registry.names()
    ])


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
