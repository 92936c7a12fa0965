"""Grid searches that find their own edges.

A grid search whose best value lies on the edge of its grid (the smallest dropout rate tried, the
largest tau) has not found an optimum: the best may lie further out. :class:`EdgeSearch` runs a
rectangular grid, and while the highest-scoring setting sits on an edge of an axis it adds the
next value on that side, geometrically (the ratio of the two outermost values on that side, at
least :data:`MIN_RATIO` and at most :data:`MAX_RATIO`; an axis of one value stays fixed), and trains
the new settings (the new value crossed with every value of the other axes, so the grid stays
rectangular). It stops when that setting lies inside the grid on every axis, when the next
value would leave the axis's bounds (dropout rates within :data:`DROPOUT_BOUNDS`; tau and weight
decay within :data:`DECADES` decades beyond the given grid), or when the budget is spent
(``max_rounds`` extension rounds, ``max_settings`` settings in all). Every setting tried, the
round that added it and the reason the search stopped are kept in :meth:`EdgeSearch.log`.

Exploring and choosing are kept apart. The grid grows toward the highest score, so a trend that
goes on past the grid in small steps is followed to its end; the setting the search returns
(:meth:`EdgeSearch.best`) is the chosen one of :func:`mcdropout.modeling.selection.choose`:
given per-row scores, a setting added past the grid must beat the current choice by more than
``margin`` standard errors of the paired difference, so a small validation set's noise does not
pick it.

The search does not train anything itself: :func:`run_searches` asks a scoring function for
every pending setting of several searches at once, so a caller can train them together (the UCI
benchmark trains the settings of all its splits in one stacked graph).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mcdropout.errors import InvalidArgumentError
from mcdropout.modeling import selection
from mcdropout.modeling.selection import Trial

DROPOUT_BOUNDS = (1e-4, 0.5)
"""Dropout rates the search may add: below 1e-4 a network is all but deterministic, above 0.5
it drops more than it keeps."""
DECADES = 3
"""How far beyond the given grid tau and weight decay may go, in factors of 10."""
MIN_RATIO, MAX_RATIO = 2.0, 4.0
DEFAULT_ROUNDS = 6
DEFAULT_SETTINGS_FACTOR = 4
"""The default budget of settings: this many times the first grid's size."""

Setting = tuple[float, ...]
Scored = float | tuple[float, np.ndarray]
"""What a scoring function returns per setting: the score, or (score, its per-row scores)."""


@dataclass(frozen=True)
class Axis:
    """One hyper-parameter of a grid.

    Attributes:
        name: E.g. "dropout", "tau", "weight_decay".
        values: The first grid's values, distinct, in the order given (the order its settings
            are tried in; the first tried of equal scores wins).
        low, high: Bounds of the values the search may add (inclusive).
    """

    name: str
    values: tuple[float, ...]
    low: float
    high: float

    @classmethod
    def of(cls, name: str, values: Sequence[float]) -> Axis:
        """An axis with the default bounds of its kind: :data:`DROPOUT_BOUNDS` for "dropout",
        :data:`DECADES` decades beyond the given values otherwise.

        Raises:
            InvalidArgumentError: no values, or a value that is not finite and > 0.
        """
        given = tuple(dict.fromkeys(float(v) for v in values))
        if not given or not all(math.isfinite(v) and v > 0 for v in given):
            raise InvalidArgumentError(
                f"{name} values must be one or more finite numbers > 0, got {list(values)}")
        smallest, largest = min(given), max(given)
        if name == "dropout":
            low, high = DROPOUT_BOUNDS
            return cls(name, given, min(low, smallest), max(high, largest))
        return cls(name, given, smallest / 10**DECADES, largest * 10**DECADES)


@dataclass
class EdgeSearch:
    """A grid search that extends its grid past an edge holding the best setting.

    Args:
        axes: The grid's axes; settings are tuples of one value per axis, in this order.
        maximize: Whether higher scores are better.
        extend: False searches the first grid only (the published protocol).
        max_rounds: Extension rounds allowed after the first grid, >= 0.
        max_settings: Settings allowed in all; None: :data:`DEFAULT_SETTINGS_FACTOR` times the
            first grid's size.
        margin: Standard errors by which a setting added past the first grid must beat the
            current choice (:func:`mcdropout.modeling.selection.choose`); it applies where
            :meth:`record` is given per-row scores; 0 chooses the highest score.

    Use: score every setting of :meth:`pending` with :meth:`record`, then :meth:`advance`;
    repeat while it returns True. :func:`run_searches` does this for several searches at once.
    """

    axes: tuple[Axis, ...]
    maximize: bool = True
    extend: bool = True
    max_rounds: int = DEFAULT_ROUNDS
    max_settings: int | None = None
    margin: float = selection.DEFAULT_MARGIN
    trials: list[Trial] = field(default_factory=list, init=False)
    grid: list[list[float]] = field(init=False)
    round: int = field(default=0, init=False)
    stop_reason: str = field(default="", init=False)

    def __post_init__(self) -> None:
        self.axes = tuple(self.axes)
        if not self.axes:
            raise InvalidArgumentError("a grid search needs at least one axis")
        if isinstance(self.max_rounds, bool) or not isinstance(self.max_rounds, int) \
                or self.max_rounds < 0:
            raise InvalidArgumentError(f"max_rounds must be an integer >= 0, got "
                                       f"{self.max_rounds!r}")
        self.margin = selection.check_margin(self.margin)
        size = math.prod(len(a.values) for a in self.axes)
        if self.max_settings is None:
            self.max_settings = DEFAULT_SETTINGS_FACTOR * size
        if self.max_settings < size:
            raise InvalidArgumentError(f"max_settings must be at least the first grid's size "
                                       f"{size}, got {self.max_settings}")
        self.grid = [list(a.values) for a in self.axes]

    @property
    def done(self) -> bool:
        return bool(self.stop_reason)

    def pending(self) -> list[Setting]:
        """The settings of the current grid not yet scored, in grid order (first axis major,
        each axis's values as given, then as added)."""
        if self.done:
            return []
        seen = {t.setting for t in self.trials}
        return [s for s in itertools.product(*self.grid) if s not in seen]

    def record(self, setting: Sequence[float], score: float,
               rows: np.ndarray | None = None) -> None:
        """Keep a pending setting's score (NaN: a failed run, never the best) and, when given,
        the per-row scores it is the mean of (the same rows for every setting)."""
        values = None if rows is None else np.asarray(rows, np.float64).reshape(-1)
        self.trials.append(Trial(tuple(float(v) for v in setting), float(score), self.round,
                                 values))

    def best(self) -> Trial:
        """The chosen trial so far (:func:`mcdropout.modeling.selection.choose`); the first
        tried of equal scores wins."""
        return selection.choose(self.trials, self.maximize, self.margin)

    def advance(self) -> bool:
        """After every pending setting is scored: extend the grid where the highest-scoring
        setting is on an edge, or stop. Returns whether new settings are pending."""
        if self.done:
            return False
        if self.pending():
            raise InvalidArgumentError(f"{len(self.pending())} settings are not scored yet")
        if not self.extend:
            return self._stop("the given grid only (extension off)")
        best = selection.highest(self.trials, self.maximize).setting
        additions, blocked = self._additions(best)
        if not additions:
            return self._stop("; ".join(blocked) if blocked
                              else "the best setting lies inside the grid on every axis")
        if self.round >= self.max_rounds:
            return self._stop(f"budget: {self.max_rounds} extension rounds spent, the best "
                              f"still on an edge ({', '.join(sorted(additions))})")
        grown = [values + additions.get(a.name, [])
                 for a, values in zip(self.axes, self.grid, strict=True)]
        total = math.prod(len(v) for v in grown)
        assert self.max_settings is not None
        if total > self.max_settings:
            return self._stop(f"budget: extending would make {total} settings, more than "
                              f"{self.max_settings}")
        self.grid = grown
        self.round += 1
        return True

    def _additions(self, best: Setting) -> tuple[dict[str, list[float]], list[str]]:
        """Per axis the value to add beside an edge holding ``best``, and why an edge that holds
        it cannot be extended."""
        additions: dict[str, list[float]] = {}
        blocked = []
        for axis, tried, value in zip(self.axes, self.grid, best, strict=True):
            if len(tried) < 2:
                continue  # one value given: the axis is fixed
            values = sorted(tried)
            for side, edge, inner in (("low", values[0], values[1]),
                                      ("high", values[-1], values[-2])):
                if value != edge:
                    continue
                ratio = min(MAX_RATIO, max(MIN_RATIO, edge / inner if side == "high"
                                           else inner / edge))
                bound = axis.low if side == "low" else axis.high
                step = edge / ratio if side == "low" else edge * ratio
                new = max(step, bound) if side == "low" else min(step, bound)
                if new == edge or new in values:
                    blocked.append(f"the best {axis.name} {edge:g} is on the {side} edge, at "
                                   f"the bound {bound:g}")
                else:
                    additions.setdefault(axis.name, []).append(new)
        return additions, blocked

    def _stop(self, reason: str) -> bool:
        self.stop_reason = reason
        return False

    def log(self) -> dict[str, Any]:
        """What the report records: axes with bounds, every value tried per axis, the rounds,
        the budget, the best setting and why the search stopped."""
        best, top = self.best(), selection.highest(self.trials, self.maximize)
        return {
            "extend": self.extend,
            "axes": [{"name": a.name, "given": list(a.values), "bounds": [a.low, a.high],
                      "tried": sorted(values)}
                     for a, values in zip(self.axes, self.grid, strict=True)],
            "rounds": self.round, "max_rounds": self.max_rounds,
            "settings": len(self.trials), "max_settings": self.max_settings,
            "best": dict(zip((a.name for a in self.axes), best.setting, strict=True)),
            "best_round": best.round, "stop_reason": self.stop_reason,
            "margin": self.margin,
            # The highest score when the margin kept an earlier setting instead.
            "highest": None if top is best else {
                **dict(zip((a.name for a in self.axes), top.setting, strict=True)),
                "round": top.round},
        }


def run_searches(searches: Sequence[EdgeSearch],
                 score: Callable[[list[tuple[int, Setting]]], Sequence[Scored]],
                 on_round: Callable[[int, int], None] | None = None) -> None:
    """Run several searches to their end, one round of all of them at a time.

    Args:
        searches: The searches; each keeps its own grid and trials.
        score: Given every pending (search index, setting) of a round, returns their scores in
            that order (so a caller may train them all together), each a number or a
            (number, per-row scores) pair.
        on_round: Called with (round, settings to score) before each round's scoring.
    """
    round_ = 0
    while True:
        todo = [(i, s) for i, search in enumerate(searches) for s in search.pending()]
        if not todo:
            return
        if on_round is not None:
            on_round(round_, len(todo))
        values = list(score(todo))
        if len(values) != len(todo):
            raise InvalidArgumentError(f"score returned {len(values)} values for {len(todo)} "
                                       "settings")
        for (i, setting), value in zip(todo, values, strict=True):
            if isinstance(value, tuple):
                searches[i].record(setting, value[0], value[1])
            else:
                searches[i].record(setting, value)
        for search in searches:
            search.advance()
        round_ += 1
