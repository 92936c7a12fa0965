"""A prediction request resolved once: every default applied, every limit checked.

Whoever accepts a request (the Python API, a server codec) resolves it against the model's
:class:`Limits` as soon as it arrives; the queue, the batcher and the engine then read the
:class:`Request` and never default or range-check a value again. What can only be known by
scanning the input values (shape, NaN, range after standardisation) is checked where the
passes run, so that one bad request merged with others fails alone (:mod:`.inputs`).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcdropout.engine.inputs import InputSpec, arrange
from mcdropout.errors import InvalidArgumentError, ResourceLimitError

MAX_INTERVAL_LEVELS = 16
SEED_LIMIT = 2**64


@dataclass(frozen=True)
class Limits:
    """What one model accepts per request.

    Attributes:
        default_samples: Passes T when a request names none.
        max_samples: Largest T.
        max_raw_sample_values: Largest samples x rows x outputs kept when the raw passes are
            needed (intervals or raw samples returned).
        output_dim: Values per row and pass, all heads together (the raw-sample limit counts
            them).
        max_rows: Most input rows per request; None for no limit.
        max_row_samples: Most rows x samples per request; None for no limit.
    """

    default_samples: int
    max_samples: int
    max_raw_sample_values: int
    output_dim: int
    max_rows: int | None = None
    max_row_samples: int | None = None


@dataclass(frozen=True, eq=False)
class Request:
    """One request, resolved: what the engine runs.

    Attributes:
        inputs: The input arrays as sent, in the model's input order, each (rows, *row shape);
            their values are checked when they run.
        samples: Passes T (with ``tolerance``, the most that may run).
        seed: The mask seed, 0 <= seed < 2**64 (drawn at resolution when none was given).
        tolerance: Adaptive sampling: stop once every mean's standard error is at most this
            (output units); None runs exactly ``samples`` passes.
        interval_levels: Coverage levels of the central intervals to compute.
        return_samples: Whether the raw per-pass outputs are returned.
        calibrated: Whether the version's calibration is applied (asked, or implied by
            ``set_levels`` or ``abstain``).
        set_levels: Coverage levels of the conformal prediction sets of classifier heads.
        abstain: Whether each row's abstention flag is computed (heads with a policy).
        conformal_intervals: Every head's intervals come from its conformal calibration, so
            they need no raw passes.
    """

    inputs: tuple[np.ndarray, ...]
    samples: int
    seed: int
    tolerance: float | None = None
    interval_levels: tuple[float, ...] = ()
    return_samples: bool = False
    calibrated: bool = False
    set_levels: tuple[float, ...] = ()
    abstain: bool = False
    conformal_intervals: bool = False

    @property
    def x(self) -> np.ndarray:
        """The input array of a one-input request."""
        if len(self.inputs) != 1:
            raise AttributeError(f"Request.x is for one-input requests; this one has "
                                 f"{len(self.inputs)} inputs (see Request.inputs)")
        return self.inputs[0]

    @property
    def rows(self) -> int:
        first = self.inputs[0]
        return int(first.shape[0]) if first.ndim else 0

    @property
    def shape_key(self) -> tuple[tuple[int, ...], ...]:
        """The per-row shapes of its inputs: only requests with equal keys share graph calls
        (variable dimensions make rows of different requests different shapes)."""
        return tuple(tuple(int(d) for d in a.shape[1:]) for a in self.inputs)

    @property
    def keep_raw(self) -> bool:
        """Whether every pass must be kept (for raw samples, or intervals taken from the passes
        rather than from a conformal calibration)."""
        return self.return_samples or (bool(self.interval_levels) and not self.conformal_intervals)

    @property
    def mergeable(self) -> bool:
        """Whether it may share graph calls with other requests (see ``predict_many``).

        Adaptive sampling stops on its own rows' errors, and intervals and raw samples keep
        every pass: those run alone. Mergeable requests share graph calls only with requests of
        the same :attr:`shape_key` and the same :attr:`calibrated` (calibration changes the
        passes' statistics).
        """
        return self.tolerance is None and not self.keep_raw


def resolve(x: Any, limits: Limits, *, samples: int | None = None, seed: int | None = None,
            tolerance: float | None = None, interval_levels: Sequence[float] = (),
            return_samples: bool = False, inputs: Sequence[InputSpec] | None = None,
            calibrated: bool = False, set_levels: Sequence[float] = (), abstain: bool = False,
            conformal_intervals: bool = False) -> Request:
    """Resolve a request against ``limits`` (what the model's calibration allows is checked by
    the predictor, see :func:`.calibrated.check`).

    Args:
        x: Input rows: an array-like (one-input models), or a mapping from input name to
            array-like (see :func:`.inputs.arrange`); converted, values not yet checked.
        samples: Passes T in 1..max_samples; None for the default.
        seed: 0 <= seed < 2**64; None draws a fresh one.
        tolerance: Adaptive-sampling target standard error, a finite number >= 0; None for off.
        interval_levels: At most 16 levels, each strictly between 0 and 1.
        return_samples: Return the raw passes too.
        inputs: The model's inputs; None takes ``x`` as the one input's array.
        calibrated: Apply the version's calibration; ``set_levels`` or ``abstain`` imply it.
        set_levels: Prediction-set levels, checked like ``interval_levels``.
        abstain: Compute the per-row abstention flags.
        conformal_intervals: A calibrated request's intervals need no raw passes (see
            :attr:`Request.conformal_intervals`); ignored when not calibrated.

    Raises:
        InvalidArgumentError: samples, seed, tolerance or a level out of range; input names or
            row counts that do not match the model's inputs.
        ResourceLimitError: more rows, rows x samples or raw values than the limits allow.
    """
    arrays = (np.asarray(x),) if inputs is None else arrange(inputs, x)
    calibrated = bool(calibrated or set_levels or abstain)
    request = Request(arrays, _samples(samples, limits), _seed(seed), _tolerance(tolerance),
                      _levels(interval_levels), bool(return_samples), calibrated,
                      _levels(set_levels, "prediction set"), bool(abstain),
                      calibrated and bool(conformal_intervals))
    _check_size(request, limits)
    return request


def _samples(samples: int | None, limits: Limits) -> int:
    if samples is None:
        return limits.default_samples
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) \
            or not 1 <= samples <= limits.max_samples:
        raise InvalidArgumentError(
            f"samples must be an integer in 1..{limits.max_samples} (unset for the default, "
            f"{limits.default_samples}), got {samples!r}")
    return int(samples)


def _seed(seed: int | None) -> int:
    if seed is None:
        return secrets.randbits(64)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
            or not 0 <= seed < SEED_LIMIT:
        raise InvalidArgumentError(f"seed must be an integer in 0..2**64-1, got {seed!r}")
    return int(seed)


def _tolerance(tolerance: float | None) -> float | None:
    if tolerance is None:
        return None
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise InvalidArgumentError(f"tolerance must be a finite number >= 0 (unset or 0 on the "
                                   f"wire turns adaptive sampling off), got {tolerance}")
    return float(tolerance)


def _levels(levels: Sequence[float], what: str = "interval") -> tuple[float, ...]:
    if len(levels) > MAX_INTERVAL_LEVELS:
        raise InvalidArgumentError(
            f"at most {MAX_INTERVAL_LEVELS} {what} levels are allowed, got {len(levels)}")
    out = tuple(float(v) for v in levels)
    for level in out:
        if not 0.0 < level < 1.0:
            raise InvalidArgumentError(
                f"{what} levels must be strictly between 0 and 1, got {level}")
    return out


def _check_size(request: Request, limits: Limits) -> None:
    rows, samples = request.rows, request.samples
    if limits.max_rows is not None and rows > limits.max_rows:
        raise ResourceLimitError(f"inputs have {rows} rows; at most {limits.max_rows} rows "
                                 "per request are allowed, split the batch")
    if limits.max_row_samples is not None and rows * samples > limits.max_row_samples:
        raise ResourceLimitError(
            f"rows x samples = {rows} x {samples} = {rows * samples} is above the limit of "
            f"{limits.max_row_samples} row-passes per request; send fewer rows or samples")
    if request.keep_raw and samples * rows * limits.output_dim > limits.max_raw_sample_values:
        raise ResourceLimitError(
            f"intervals and raw samples keep every pass: samples x rows x outputs = "
            f"{samples} x {rows} x {limits.output_dim} exceeds the limit of "
            f"{limits.max_raw_sample_values} values; ask for fewer samples or rows")
