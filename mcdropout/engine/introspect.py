"""What a Keras model tells about itself: its task and the shape and dtype of one input row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from mcdropout.engine.prediction import Task
from mcdropout.errors import InvalidArgumentError


def infer_task(model: Any) -> Task:
    """"classification" when the output layer is a softmax or sigmoid, else "regression"."""
    layer = _output_layer(model)
    if isinstance(layer, keras.layers.Softmax):
        return "classification"
    activation = getattr(getattr(layer, "activation", None), "__name__", "")
    return "classification" if activation in ("softmax", "sigmoid") else "regression"


def input_signature(model: Any, input_shape: Sequence[int] | None
                    ) -> tuple[tuple[int, ...], str]:
    """The shape of one input row and the input dtype.

    Args:
        model: A Keras model with one input.
        input_shape: The row shape, when the model does not declare it (subclassed, unbuilt).

    Raises:
        InvalidArgumentError: several inputs, or a shape the model does not tell and the caller
            did not give.
    """
    inputs = getattr(model, "inputs", None)
    if input_shape is not None:
        dtype = str(inputs[0].dtype) if inputs else "float32"
        return tuple(int(d) for d in input_shape), dtype
    if not inputs:
        raise InvalidArgumentError(
            "cannot tell the model's input shape (a subclassed or unbuilt model); "
            "pass input_shape=(...) for one row")
    if len(inputs) != 1:
        raise InvalidArgumentError(f"models with exactly one input are supported, got {len(inputs)}")
    shape = tuple(inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise InvalidArgumentError(
            f"the model's input shape {shape} has unknown dimensions; pass input_shape=(...)")
    return tuple(int(d) for d in shape), str(inputs[0].dtype)


def _output_layer(model: Any) -> Any:
    if isinstance(model, keras.Sequential):
        return model.layers[-1]
    outputs = getattr(model, "outputs", None)
    history = getattr(outputs[0], "_keras_history", None) if outputs else None
    return history[0] if history else None
