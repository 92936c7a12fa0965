"""A model's output heads: what each one is, and its statistics from the shared passes.

Every head is computed by the same graph call: the heads' outputs are flattened and concatenated
on the last axis in the graph, then split per head in numpy (:class:`.sampling.JointStats`), so
all heads see the same T passes, the same masks, and their raw samples are joint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from mcdropout.engine import introspect
from mcdropout.engine.prediction import AnyPrediction, MultiHeadPrediction, Task
from mcdropout.engine.sampling import Columns, JointStats
from mcdropout.engine.summary import OutputSpace
from mcdropout.errors import InvalidArgumentError
from mcdropout.metadata import HeadInfo
from mcdropout.store import as_array


@dataclass(frozen=True)
class HeadSpec:
    """One output head as the engine serves it.

    Attributes:
        name: The head's name (see :func:`.introspect.head_layers`).
        width: Values per row in its statistics (2 for a one-unit sigmoid classifier, whose
            outputs become the two class probabilities; half its outputs for a learned-noise
            regression head, whose other half are the log-variances).
        labels: Class labels or target names, as the metadata gives them (may be empty).
        space: What its outputs mean: task, target scaling, tau (in target units).
        columns: Its columns in the concatenated outputs of one pass.
        binary: A one-unit sigmoid classifier.
    """

    name: str
    width: int
    labels: tuple[str, ...]
    space: OutputSpace
    columns: Columns
    binary: bool = False

    @property
    def task(self) -> Task:
        return self.space.task

    @property
    def tau(self) -> float | None:
        """The noise precision in the target's units, or None."""
        return self.space.tau

    @property
    def has_tau(self) -> bool:
        """Whether the head knows its noise, a fixed tau or a learned one: then it serves a
        ``predictive_std`` (and its intervals are of the noisy predictive mixture)."""
        return self.space.tau is not None or self.space.learned_noise

    @property
    def learned_noise(self) -> bool:
        return self.space.learned_noise


def keywords(**values: Any) -> dict[str, Any]:
    """The one-head keywords given (not None, not empty), for :func:`build`'s ``one_head``."""
    return {k: v for k, v in values.items() if v is not None and not (k == "labels" and not v)}


def check_tau(tau: float | None, where: str = "") -> None:
    if tau is not None and not (math.isfinite(tau) and tau > 0):
        raise InvalidArgumentError(f"{where}tau must be a positive finite number, got {tau}")


def build(model: Any, outputs: Sequence[Any], keys: tuple[str, ...] | None,
          given: Sequence[HeadInfo] | None, one_head: dict[str, Any] | None = None
          ) -> tuple[HeadSpec, ...]:
    """The heads of ``model``, in its output order.

    Args:
        model: The Keras model.
        outputs: Specs of its outputs, in order (:attr:`.split.SplitModel.outputs`).
        keys: A subclassed model's dict output keys (sorted), else None.
        given: One :class:`HeadInfo` per head (task, labels, scaling, tau), matched by name or,
            where the model's head names are generated, by position; None infers each task from
            its output layer and leaves the rest unset.
        one_head: A one-head model's task, tau, target_mean/std and labels given as keywords
            (they replace what is inferred).

    Raises:
        InvalidArgumentError: heads that do not match the model's, keywords for one head given
            for several (or with ``given``), a bad tau, or an output whose size varies.
    """
    output_widths = _widths(outputs)
    names, layers, own = introspect.head_layers(model, len(output_widths), keys)
    if given is None:
        infos = [HeadInfo(n, introspect.infer_task(layer)) for n, layer in zip(names, layers,
                                                                               strict=True)]
    else:
        order = introspect.match("head", [h.name for h in given], names, not own)
        infos = [given[i] for i in order]
    if one_head:
        if given is not None or len(infos) != 1:
            raise InvalidArgumentError(
                f"{sorted(one_head)} describe a one-head model; this one has heads {names}: "
                "describe each with heads=[HeadInfo(name, task, ...), ...] instead")
        infos = [replace(infos[0], **one_head)]
    heads, start = [], 0
    for info, raw_width in zip(infos, output_widths, strict=True):
        where = f"head {info.name!r}: " if len(infos) > 1 else ""
        check_tau(info.tau, where)
        learned = info.noise == "learned"
        if learned and raw_width % 2:
            raise InvalidArgumentError(
                f"{where}a learned-noise head needs a mean and a log-variance per target (an "
                f"even number of outputs), got {raw_width} outputs")
        binary = info.task == "classification" and raw_width == 1
        width = 2 if binary else raw_width // 2 if learned else raw_width
        target_mean, target_std = as_array(info.target_mean), as_array(info.target_std)
        scale = float(target_std[0]) if target_std is not None else 1.0
        tau = None if info.tau is None or learned else float(info.tau) / scale**2
        space = OutputSpace(info.task, target_mean, target_std, tau, learned)
        stop = start + (raw_width if learned else width)
        heads.append(HeadSpec(info.name, width, tuple(info.labels), space,
                              Columns(start, stop, info.task == "classification", learned),
                              binary))
        start = stop
    return tuple(heads)


def _widths(outputs: Sequence[Any]) -> list[int]:
    """Values per row of each output; a size that varies with the inputs cannot be a head."""
    widths = []
    for i, spec in enumerate(outputs):
        dims = tuple(spec.shape[1:])
        if any(d is None for d in dims):
            raise InvalidArgumentError(
                f"output {i} has row shape {dims}, whose size changes with the inputs' variable "
                "dimensions (None); only outputs of a fixed size per row can be served (e.g. "
                "pool over time, or a recurrent layer without return_sequences)")
        widths.append(int(np.prod(dims, dtype=np.int64)))
    return widths



def summarise(heads: Sequence[HeadSpec], sampled: JointStats, seed: int,
              levels: Sequence[float], return_samples: bool,
              conformal: Sequence[bool] | None = None) -> AnyPrediction:
    """A :class:`Prediction` for a one-head model, else a :class:`MultiHeadPrediction`.

    ``conformal``: per head, whether its intervals come from its calibration (then none are
    taken from the passes here); None for none of them.
    """
    skip = conformal or [False] * len(heads)
    predictions = [head.space.summarise(stats, seed, () if off else levels, return_samples)
                   for head, stats, off in zip(heads, sampled.heads, skip, strict=True)]
    if len(heads) == 1:
        return predictions[0]
    return MultiHeadPrediction(predictions[0].samples, seed,
                               {h.name: p for h, p in zip(heads, predictions, strict=True)})


def converged(heads: Sequence[HeadSpec], tolerance: float) -> Callable[[JointStats], bool]:
    """Adaptive sampling's stop: every head's every mean has a standard error at most
    ``tolerance``, each in its own target units."""

    def check(so_far: JointStats) -> bool:
        for head, stats in zip(heads, so_far.heads, strict=True):
            m = stats.moments
            # A learned-noise head's mean is its first `width` columns; the rest are variances.
            error = np.sqrt(m.variance()[..., :head.width] / m.count)
            if not float(np.max(error) * head.space.scale()) <= tolerance:
                return False  # (NaN errors never converge)
        return True

    return check
