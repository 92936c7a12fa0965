"""Choosing a search's setting when its scores are noisy: an added setting must win clearly.

A validation set of a few dozen rows scores every setting with noise, and a search that keeps
adding settings past the given grid's edges keeps drawing from that noise: the highest of many
noisy scores is biased upward (the winner's curse), and a setting that won by a hair on the
validation rows often loses on the test rows. The rule here is the one-standard-error rule of
model selection (Breiman et al. 1984; Hastie, Tibshirani & Friedman, *Elements of Statistical
Learning*, 7.10), applied in the order the settings were added: the given grid's best is chosen
first, and a later round's setting replaces the current choice only when it beats it by more than
``margin`` standard errors of their paired per-row difference (the same validation rows score
every setting of a search, so the difference, not each score, carries the noise that matters).
The search itself still explores toward the highest score
(:mod:`mcdropout.modeling.edgesearch`); only the choice waits for a clear lead. Settings whose
optimum lies far past the grid win clearly and are chosen; ones that only tie leave the given
grid's choice in place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mcdropout.errors import InvalidArgumentError

DEFAULT_MARGIN = 1.0
"""Standard errors by which a setting added past the given grid must beat the current choice."""


@dataclass(frozen=True)
class Trial:
    """One setting scored.

    Attributes:
        setting: Its values, one per axis.
        score: The mean of ``rows`` when they are given (NaN: a failed run, never chosen).
        round: The search round that added it (0: the given grid).
        rows: The per-row scores behind ``score``, on the same rows (in the same order) for
            every trial of a search; None when the caller has only the mean.
    """

    setting: tuple[float, ...]
    score: float
    round: int
    rows: np.ndarray | None = field(default=None, compare=False, repr=False)


def check_margin(margin: float) -> float:
    """``margin`` as a float; raises InvalidArgumentError unless it is finite and >= 0."""
    if isinstance(margin, bool) or not isinstance(margin, int | float) \
            or not math.isfinite(margin) or margin < 0:
        raise InvalidArgumentError(f"margin must be a finite number of standard errors >= 0, "
                                   f"got {margin!r}")
    return float(margin)


def highest(trials: Sequence[Trial], maximize: bool = True) -> Trial:
    """The trial with the best score; the first tried of equal scores wins, NaN never does."""
    if not trials:
        raise InvalidArgumentError("no setting has been scored yet")
    sign = 1.0 if maximize else -1.0
    return max(trials, key=lambda t: sign * t.score if math.isfinite(t.score) else -math.inf)


def choose(trials: Sequence[Trial], maximize: bool = True,
           margin: float = DEFAULT_MARGIN) -> Trial:
    """The chosen trial: round 0's best, then, round by round, the best so far when it beats the
    current choice by more than ``margin`` standard errors (:func:`beats`).

    With ``margin`` 0, or without per-row scores, this is :func:`highest`.
    """
    chosen = highest([t for t in trials if t.round == 0] or trials, maximize)
    for round_ in sorted({t.round for t in trials if t.round > 0}):
        top = highest([t for t in trials if t.round <= round_], maximize)
        if top is not chosen and beats(top, chosen, maximize, margin):
            chosen = top
    return chosen


def beats(challenger: Trial, incumbent: Trial, maximize: bool = True,
          margin: float = DEFAULT_MARGIN) -> bool:
    """Whether ``challenger`` scores better than ``incumbent`` by more than ``margin`` standard
    errors of their paired per-row difference (by any amount when either lacks per-row scores).

    Raises:
        InvalidArgumentError: per-row scores of different lengths.
    """
    if not math.isfinite(challenger.score):
        return False
    if not math.isfinite(incumbent.score):
        return True
    gain = (challenger.score - incumbent.score) * (1.0 if maximize else -1.0)
    if margin == 0 or challenger.rows is None or incumbent.rows is None:
        return gain > 0
    if challenger.rows.shape != incumbent.rows.shape:
        raise InvalidArgumentError(
            f"per-row scores must cover the same rows, got {challenger.rows.shape} and "
            f"{incumbent.rows.shape}")
    difference = challenger.rows - incumbent.rows
    spread = float(np.std(difference, ddof=1)) if difference.size > 1 else 0.0
    return gain > margin * spread / math.sqrt(difference.size)
