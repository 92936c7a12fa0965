"""A model's named inputs: arranging a request's arrays, checking their values, standardising.

Arranging (:func:`arrange`) happens where a request is resolved: which array is which input, and
that they have the same number of rows. Checking the values (:meth:`InputSpec.check`) must scan
them, so it runs where the passes run: a merged call checks each request's rows there and a bad
one fails alone (see ``MCDropoutPredictor.run``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcdropout.errors import InvalidArgumentError, shorten

LEGACY_NAME = "inputs"
"""The name a one-input model's input answers to whatever its own name (today's wire name)."""


@dataclass(frozen=True, eq=False)
class InputSpec:
    """What one input's rows must look like, and how they are standardised.

    Attributes:
        name: The input's name (the Keras input's, or the metadata's).
        shape: Shape of one row; None marks a variable dimension (rows of one request share it).
        dtype: The model's input dtype (numpy name).
        feature_mean, feature_std: Rows are fed as ``(x - mean) / std``; None for no shift/scale.
        id_limit: Integer inputs read by an Embedding: ids must be in ``0 .. id_limit - 1``
            (the Embedding's ``input_dim``); None when no such bound is known.
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    feature_mean: np.ndarray | None = None
    feature_std: np.ndarray | None = None
    id_limit: int | None = None

    @property
    def integer(self) -> bool:
        return np.dtype(self.dtype).kind in "iu"

    def check(self, x: Any, label: str = LEGACY_NAME) -> np.ndarray:
        """Check input rows and standardise them.

        Args:
            x: Input rows, (rows, *shape), finite numbers (integers for an integer input).
            label: How messages name the input ("inputs" for a one-input model, else
                ``input 'name'``).

        Returns:
            The standardised rows in the model's input dtype.

        Raises:
            InvalidArgumentError: wrong shape, no rows, a wrong dtype, NaN or Inf, an id out of
                range, or a value out of the model's input dtype's range after standardisation.
        """
        arr = np.asarray(x)
        if self.integer:
            if arr.dtype.kind not in "iu":
                raise InvalidArgumentError(f"{label} takes integer ids ({self.dtype}), got dtype "
                                           f"{arr.dtype}")
        elif arr.dtype.kind not in "biuf":
            raise InvalidArgumentError(f"{label} must be numeric, got dtype {arr.dtype}")
        if arr.ndim != len(self.shape) + 1 or any(
                d is not None and d != got for d, got in zip(self.shape, arr.shape[1:], strict=True)):
            raise InvalidArgumentError(f"{label} must have shape {self.rows_shape()}, got "
                                       f"{tuple(arr.shape)}")
        if arr.shape[0] == 0:
            raise InvalidArgumentError(f"{label} must hold at least one row of shape "
                                       f"{self.rows_shape()}, got 0")
        empty = [i for i, d in enumerate(self.shape, start=1) if d is None and arr.shape[i] == 0]
        if empty:
            # A graph over an empty sequence fails inside TensorFlow; refuse it here instead.
            raise InvalidArgumentError(f"{label} has length 0 in variable dimension {empty[0]} "
                                       f"of shape {self.rows_shape()}, got {tuple(arr.shape)}; "
                                       "a variable dimension must be at least 1")
        if self.integer:
            return self._ids(arr, label)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InvalidArgumentError(
                f"{label} contain NaN or Inf (first in row {_first_row(~np.isfinite(arr))}); only "
                "finite values are allowed")
        if arr.dtype == self.dtype and self.feature_mean is None and self.feature_std is None:
            return arr  # the float64 round trip below would give back these very values
        out = arr.astype(np.float64)
        if self.feature_mean is not None:
            out = out - self.feature_mean
        if self.feature_std is not None:
            out = out / self.feature_std
        with np.errstate(over="ignore", invalid="ignore"):
            cast = out.astype(self.dtype)
        if cast.dtype.kind == "f" and not np.isfinite(cast).all():
            # Finite float64 values beyond the model's float range would turn into Inf here.
            limit = float(np.finfo(cast.dtype).max)
            raise InvalidArgumentError(
                f"{label} hold a value (first in row {_first_row(~np.isfinite(cast))}) that is "
                f"out of range for the model's input dtype {cast.dtype} after standardisation; "
                f"allowed magnitude is at most {limit:.3g}")
        return cast

    def _ids(self, arr: np.ndarray, label: str) -> np.ndarray:
        info = np.iinfo(self.dtype)
        low, high = (0, self.id_limit - 1) if self.id_limit is not None else (info.min, info.max)
        bad = (arr < low) | (arr > high)
        if bad.any():
            row = _first_row(bad)
            value = int(arr.reshape(arr.shape[0], -1)[row][bad.reshape(arr.shape[0], -1)[row]][0])
            why = (f" (the Embedding reading it has input_dim {self.id_limit})"
                   if self.id_limit is not None else f" (the range of {self.dtype})")
            raise InvalidArgumentError(f"{label} holds id {value} in row {row}; ids must be "
                                       f"integers in {low}..{high}{why}")
        return arr.astype(self.dtype, copy=False)

    def rows_shape(self) -> str:
        """The accepted shape as text, e.g. ``(rows, 8)``; a variable dimension shows as ``*``."""
        return "(" + ", ".join(["rows", *("*" if d is None else str(d) for d in self.shape)]) + ")"

    def describe(self) -> str:
        """The input as a message lists it: ``'ids' (rows, *) int32``."""
        return f"{self.name!r} {self.rows_shape()} {self.dtype}"


def label(specs: Sequence[InputSpec], spec: InputSpec) -> str:
    """How messages name ``spec``: ``input 'name'``, or "inputs" for a one-input model whose
    input has no name of its own (the wire's name for it)."""
    return LEGACY_NAME if len(specs) == 1 and spec.name == LEGACY_NAME else f"input {spec.name!r}"


def arrange(specs: Sequence[InputSpec], x: Any) -> tuple[np.ndarray, ...]:
    """A request's input arrays in the model's input order.

    Args:
        specs: The model's inputs.
        x: An array (one-input models only) or a mapping from input name to array, naming every
            input exactly once (a one-input model's input also answers to "inputs").

    Raises:
        InvalidArgumentError: an array for a several-input model, a missing or unknown name, or
            arrays with different numbers of rows. Messages list the model's inputs.
    """
    if not isinstance(x, Mapping):
        if len(specs) != 1:
            raise InvalidArgumentError(
                f"this model takes {len(specs)} named inputs, {_listing(specs)}; send a mapping "
                "from input name to array, not a single array")
        return (np.asarray(x),)
    names = [str(k) for k in x]
    if len(specs) == 1 and names == [LEGACY_NAME]:
        return (np.asarray(x[LEGACY_NAME]),)
    wanted = [s.name for s in specs]
    unknown = [n for n in names if n not in wanted]
    missing = [n for n in wanted if n not in names]
    if unknown or missing:
        parts = ([f"unknown input(s) {shorten(unknown)}"] if unknown else []) + \
                ([f"missing input(s) {missing}"] if missing else [])
        raise InvalidArgumentError(f"{'; '.join(parts)}: the model takes {_listing(specs)}")
    arrays = tuple(np.asarray(x[n]) for n in wanted)
    rows = [int(a.shape[0]) if a.ndim else 0 for a in arrays]
    if len(set(rows)) > 1:
        given = ", ".join(f"{n!r} {r}" for n, r in zip(wanted, rows, strict=True))
        raise InvalidArgumentError(f"every input must have the same number of rows, got {given}")
    return arrays


def _listing(specs: Sequence[InputSpec]) -> str:
    return ", ".join(s.describe() for s in specs)


def _first_row(flags: np.ndarray) -> int:
    return int(np.argwhere(flags.reshape(flags.shape[0], -1))[0][0])
