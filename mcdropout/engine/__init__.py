"""The Monte Carlo engine: what serving runs, and nothing else.

:class:`MCDropoutPredictor` (in :mod:`.predictor`) answers requests; the modules beside it each
hold one part of that work, listed in ``docs/architecture.md``. The engine knows nothing of gRPC
or protobuf, and nothing of training or evaluation (those live in :mod:`mcdropout.modeling` and
:mod:`mcdropout.evaluation`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mcdropout.engine.predictor import MCDropoutPredictor


def __getattr__(name: str) -> object:
    # The predictor pulls in TensorFlow; the light modules (prediction, request) must not.
    if name == "MCDropoutPredictor":
        from mcdropout.engine.predictor import MCDropoutPredictor

        return MCDropoutPredictor
    raise AttributeError(f"module 'mcdropout.engine' has no attribute {name!r}")


__all__ = ["MCDropoutPredictor"]
