"""mcdropout: Monte Carlo dropout predictions with their uncertainty.

The public API: build or load a Keras model with dropout, wrap it in an
:class:`MCDropoutPredictor`, and call ``predict`` to get a :class:`Prediction` (a
:class:`MultiHeadPrediction` for a model with several output heads).
"""

from mcdropout.engine.prediction import (
    Interval,
    MultiHeadPrediction,
    Prediction,
    PredictionSet,
    Task,
)
from mcdropout.errors import (
    CancelledError,
    InvalidArgumentError,
    MCDropoutError,
    ModelLoadError,
    NoStochasticLayersError,
    NotCalibratedError,
    NotFoundError,
    ResourceLimitError,
)
from mcdropout.modeling.builders import build_mlp
from mcdropout.modeling.defaults import ensure_default_store
from mcdropout.modeling.training import TrainConfig, train
from mcdropout.store import HeadInfo, InputInfo, ModelInfo, ModelStore


def __getattr__(name: str) -> object:
    # The engine pulls in TensorFlow; load it on first use so light imports (store, errors) stay fast.
    if name in ("MCDropoutPredictor", "StochasticLayer", "find_stochastic_layers"):
        from mcdropout.engine import layers, predictor

        return getattr(predictor if name == "MCDropoutPredictor" else layers, name)
    if name == "validate_model":
        from mcdropout.engine.validate import validate_model

        return validate_model
    raise AttributeError(f"module 'mcdropout' has no attribute {name!r}")


__all__ = [
    "CancelledError",
    "HeadInfo",
    "InputInfo",
    "Interval",
    "InvalidArgumentError",
    "MCDropoutError",
    "MCDropoutPredictor",
    "ModelInfo",
    "ModelLoadError",
    "ModelStore",
    "MultiHeadPrediction",
    "NoStochasticLayersError",
    "NotCalibratedError",
    "NotFoundError",
    "Prediction",
    "PredictionSet",
    "ResourceLimitError",
    "StochasticLayer",
    "Task",
    "TrainConfig",
    "build_mlp",
    "ensure_default_store",
    "find_stochastic_layers",
    "train",
    "validate_model",
]
