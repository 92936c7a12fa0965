"""mcdropout: Monte Carlo dropout predictions with their uncertainty.

The public API: build or load a Keras model with dropout, wrap it in an
:class:`MCDropoutPredictor`, and call ``predict`` to get a :class:`Prediction`.
"""

from mcdropout.errors import (
    CancelledError,
    InvalidArgumentError,
    MCDropoutError,
    ModelLoadError,
    NoStochasticLayersError,
    NotFoundError,
    ResourceLimitError,
)
from mcdropout.prediction import Interval, Prediction, Task
from mcdropout.store import ModelInfo, ModelStore



def __getattr__(name: str) -> object:
    # The engine pulls in TensorFlow; load it on first use so light imports (store, errors) stay fast.
    if name in ("MCDropoutPredictor", "StochasticLayer", "find_stochastic_layers"):
        from mcdropout import engine, layers

        return getattr(engine if name == "MCDropoutPredictor" else layers, name)
    raise AttributeError(f"module 'mcdropout' has no attribute {name!r}")


__all__ = [
    "MCDropoutPredictor",
    "StochasticLayer",
    "find_stochastic_layers",
    "CancelledError",
    "Interval",
    "InvalidArgumentError",
    "MCDropoutError",
    "ModelInfo",
    "ModelLoadError",
    "ModelStore",
    "NoStochasticLayersError",
    "NotFoundError",
    "Prediction",
    "ResourceLimitError",
    "Task",
]
