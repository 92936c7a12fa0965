"""The command-line options of the searches that find their own edges, shared by
``mcdropout tune`` and ``mcdropout benchmark uci``: ``--grid-only``, ``--search-rounds``,
``--search-margin`` and ``--noise`` (:mod:`mcdropout.modeling.edgesearch`,
:mod:`mcdropout.modeling.selection`).
"""

from __future__ import annotations

import argparse

from mcdropout.errors import InvalidArgumentError
from mcdropout.modeling import selection
from mcdropout.modeling.edgesearch import (
    DECADES,
    DEFAULT_ROUNDS,
    DEFAULT_SETTINGS_FACTOR,
    DROPOUT_BOUNDS,
    MAX_RATIO,
    MIN_RATIO,
)


def add_arguments(parser: argparse.ArgumentParser, points: str, tau_role: str) -> None:
    """The search options ``mcdropout tune`` and ``mcdropout benchmark uci`` share:
    ``--grid-only``, ``--search-rounds`` and ``--noise``.

    Args:
        parser: The command's parser.
        points: What the grid's settings are called, e.g. "points" or "settings".
        tau_role: What the tau values become with a learned noise.
    """
    parser.add_argument("--grid-only", action="store_true",
                        help=f"train the given grid's {points} only (no extension past its "
                             "edges), e.g. to reproduce a published grid")
    parser.add_argument(
        "--search-rounds", type=_rounds, default=DEFAULT_ROUNDS, metavar="N",
        help=f"extension rounds allowed while the best of the {points} lies on an edge of an "
             "axis given two or more values; the next value is the edge times the ratio of "
             f"the two outermost values ({MIN_RATIO:g} to {MAX_RATIO:g}); dropout rates stay "
             f"in [{DROPOUT_BOUNDS[0]:g}, {DROPOUT_BOUNDS[1]:g}], taus and weight decays "
             f"within {DECADES} decades of the given grid, and at most "
             f"{DEFAULT_SETTINGS_FACTOR}x the grid's {points} are trained; default %(default)s")
    parser.add_argument(
        "--search-margin", type=_margin, default=selection.DEFAULT_MARGIN, metavar="K",
        help="standard errors of the paired per-row difference of validation scores by which "
             f"one of the {points} added past the grid must beat the current choice (the "
             "one-standard-error rule: on a few dozen validation rows the highest of many "
             "scores is often a lucky one); 0 takes the best score; default %(default)s")
    add_noise_argument(parser, tau_role)


def _rounds(text: str) -> int:
    """argparse type of ``--search-rounds``: its errors then name the flag, not the API."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _margin(text: str) -> float:
    """argparse type of ``--search-margin``: its errors then name the flag."""
    try:
        return selection.check_margin(float(text))
    except (ValueError, InvalidArgumentError):
        raise argparse.ArgumentTypeError(
            f"must be a finite number of standard errors >= 0, got {text!r}") from None


def add_noise_argument(parser: argparse.ArgumentParser, tau_role: str) -> None:
    """``--noise {fixed,learned}``, as ``mcdropout train``, ``tune`` and ``benchmark uci`` take it.

    Args:
        parser: The command's parser.
        tau_role: What tau becomes with a learned noise.
    """
    parser.add_argument(
        "--noise", choices=("fixed", "learned"), default="fixed",
        help="regression: fixed (one noise precision tau) or learned (the network predicts a "
             f"log-variance per row beside the mean, trained by Gaussian NLL; {tau_role}); "
             "default %(default)s")


def add_concrete_argument(parser: argparse.ArgumentParser) -> None:
    """``--concrete-dropout``, as ``mcdropout train``, ``tune`` and ``benchmark uci`` take it."""
    parser.add_argument(
        "--concrete-dropout", dest="concrete", action="store_true",
        help="learn each layer's dropout rate in training (concrete dropout, Gal, Hron & Kendall "
             "2017); the dropout rate given is where each layer starts")
