"""Whether a Keras model can be served: build its predictor and run a short MC pass.

Used wherever a model enters the store (``ModelStore.save``, ``mcdropout import``), so that what
is stored is what a server can load: a model the engine cannot run is refused there, with a
message that says what is wrong and what would be accepted, rather than at a server's start.
"""

from __future__ import annotations

from typing import Any

from mcdropout.engine.predictor import MCDropoutPredictor
from mcdropout.engine.warmup import zero_inputs
from mcdropout.errors import MCDropoutError, ModelLoadError
from mcdropout.metadata import ModelInfo

_ACCEPTED = ("accepted: Sequential, Functional or subclassed Keras models with one or more "
             "named inputs (float, or integer ids for an Embedding) and one or more output heads, "
             "holding at least one Dropout, SpatialDropout1D/2D/3D, GaussianDropout, AlphaDropout "
             "or recurrent layer with dropout/recurrent_dropout")


def validate_model(model: Any, info: ModelInfo | None = None, **options: Any
                   ) -> MCDropoutPredictor:
    """Build the predictor of ``model`` and run two MC passes on zero inputs.

    Zero rows of every input's shape and dtype, a variable dimension at the first probe size
    (:data:`.split.PROBE_SIZES`, at which the model was already probed): zero ids are valid
    for any Embedding.

    Args:
        model: A Keras model.
        info: Its metadata (inputs, heads, tasks, standardisation, limits), or None to take
            everything from the model.
        options: Further :class:`MCDropoutPredictor` keywords.

    Returns:
        The predictor, ready to use.

    Raises:
        NoStochasticLayersError: no dropout-family layer with a rate above 0.
        InvalidArgumentError: inputs or heads that do not match the model, an input shape that
            cannot be told, or options out of range.
        ModelLoadError: the model fails to run in MC mode (an unsupported layer or shape); the
            message carries the first line of the underlying error.
    """
    name = info.name if info is not None else getattr(model, "name", "?")
    try:
        predictor = (MCDropoutPredictor.from_info(model, info, **options) if info is not None
                     else MCDropoutPredictor(model, **options))
        predictor.predict(zero_inputs(predictor.inputs), samples=2, seed=0)
    except MCDropoutError:
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise ModelLoadError(
            f"model {name!r} cannot be served: running it with dropout on failed with "
            f"{type(exc).__name__}: {text[0] if text else ''} ({_ACCEPTED})") from exc
    return predictor
