"""Checking a request's input values and standardising them as the model expects.

This is the one check that must scan the values, so it runs where the passes run: a merged call
checks each request's rows here and a bad one fails alone (see ``MCDropoutPredictor.run``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mcdropout.errors import InvalidArgumentError


@dataclass(frozen=True, eq=False)
class InputSpec:
    """What one input row must look like, and how it is standardised.

    Attributes:
        name: The input's name (the Keras input's).
        shape: Shape of one row.
        dtype: The model's input dtype (numpy name).
        feature_mean, feature_std: Rows are fed as ``(x - mean) / std``; None for no shift/scale.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    feature_mean: np.ndarray | None = None
    feature_std: np.ndarray | None = None

    def check(self, x: Any) -> np.ndarray:
        """Check input rows and standardise them.

        Args:
            x: Input rows, (rows, *shape), finite numbers.

        Returns:
            The standardised rows in the model's input dtype.

        Raises:
            InvalidArgumentError: wrong shape, no rows, a non-numeric dtype, NaN or Inf, or a
                value out of the model's input dtype's range after standardisation.
        """
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":
            raise InvalidArgumentError(f"inputs must be numeric, got dtype {arr.dtype}")
        if arr.ndim == 0 or arr.shape[1:] != self.shape:
            raise InvalidArgumentError(f"inputs must have shape {self.rows_shape()}, got "
                                       f"{tuple(arr.shape)}")
        if arr.shape[0] == 0:
            raise InvalidArgumentError(f"inputs must hold at least one row of shape "
                                       f"{self.rows_shape()}, got 0")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InvalidArgumentError(
                f"inputs contain NaN or Inf (first in row {_first_non_finite_row(arr)}); only "
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
                f"inputs hold a value (first in row {_first_non_finite_row(cast)}) that is out "
                f"of range for the model's input dtype {cast.dtype} after standardisation; "
                f"allowed magnitude is at most {limit:.3g}")
        return cast

    def rows_shape(self) -> str:
        """The accepted shape as text, e.g. ``(rows, 8)``."""
        return "(rows, " + ", ".join(map(str, self.shape)) + ")"


def _first_non_finite_row(rows: np.ndarray) -> int:
    return int(np.argwhere(~np.isfinite(rows.reshape(rows.shape[0], -1)))[0][0])
