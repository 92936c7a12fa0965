"""The sampling loop: passes in chunks, rows in blocks, statistics folded in chunk by chunk.

Graph calls return the raw per-pass outputs of a chunk; the float64 statistics are taken here, in
numpy, where every reduction runs over one row's passes in pass order whatever the number of
rows. TensorFlow's reductions and its vectorised log split work by position in the whole tensor,
so a row's statistics could change in the last bit with the size of its batch; here they cannot,
which is what lets a merged batch give each request exactly its answer alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from mcdropout.calibration.temperature import scale_probabilities
from mcdropout.engine import stats
from mcdropout.errors import CancelledError

# run_chunk(rows of the block, its frontier, first pass, passes) -> (passes, rows, outputs) float32
ChunkRunner = Callable[[slice, list, int, int], np.ndarray]
# should_stop() -> True once the caller gave up; polled between graph calls.
StopCheck = Callable[[], bool] | None


@dataclass
class PassStats:
    """Per-row statistics of the passes folded in so far.

    Attributes:
        moments: Count, mean and M2 of the outputs, (rows, outputs).
        entropy: Classifier only: sum over passes of each pass's entropy (nats), (rows,).
        votes: Classifier only: passes whose argmax is each class, (rows, outputs).
        raw: The chunks' raw outputs, (passes, rows, outputs) each, when kept.
    """

    moments: stats.RunningMoments = field(default_factory=stats.RunningMoments)
    entropy: np.ndarray | None = None
    votes: np.ndarray | None = None
    raw: list[np.ndarray] = field(default_factory=list)

    def add(self, y: np.ndarray, classify: bool, keep_raw: bool) -> None:
        """Fold in one chunk of passes ``y``, (passes, rows, outputs) float32."""
        y64 = y.astype(np.float64)
        mean = _sum_passes(y64) / y.shape[0]
        self.moments.merge(y.shape[0], mean, _sum_passes(np.square(y64 - mean)))
        if classify:
            # p log p with 0 log 0 = 0: a float32 probability above 0 is far above the float64
            # floor, so the floor only ever meets p = 0. numpy's vectorised log gives a value
            # the same bits wherever it sits in the array (checked by the merged-batch tests).
            plogp = y64 * np.log(np.maximum(y64, np.finfo(np.float64).tiny))
            entropy = -_sum_passes(plogp.sum(axis=-1))
            _, rows, classes = y.shape
            winners = y.argmax(axis=-1) + classes * np.arange(rows)
            votes = np.bincount(winners.ravel(), minlength=rows * classes).reshape(rows, classes)
            self.entropy = entropy if self.entropy is None else self.entropy + entropy
            self.votes = votes if self.votes is None else self.votes + votes
        if keep_raw:
            self.raw.append(y)


@dataclass(frozen=True)
class Columns:
    """Where one head's values lie in a pass's outputs: columns ``start .. stop - 1``.

    Attributes:
        start, stop: The head's columns in the concatenated outputs of all heads.
        classify: A classifier head: its entropies and votes are counted too.
        learned_noise: A regression head with learned noise: its first half of columns are the
            means, its second half the log-variances of the noise (one per mean), which are
            folded in as variances (see :meth:`JointStats.add`).
    """

    start: int
    stop: int
    classify: bool
    learned_noise: bool = False


class JointStats:
    """The statistics of every head, all folded from the same passes.

    One :class:`PassStats` per head: a classifier's entropy and votes are taken over its own
    columns only. A one-head model folds the whole output array, exactly as it always has.

    Args:
        layout: Each head's columns.
        keep_raw: Keep every chunk's passes.
        temperatures: A calibrated request's temperature per head (None: a head left as it
            is): each pass's probabilities of such a head are rescaled by
            :func:`~mcdropout.calibration.temperature.scale_probabilities` before anything is
            folded, so every statistic (and the raw passes) is of the calibrated passes. None for
            an uncalibrated request, which then does exactly what it did before calibration.
    """

    def __init__(self, layout: Sequence[Columns], keep_raw: bool = False,
                 temperatures: Sequence[float | None] | None = None) -> None:
        self.layout, self.keep_raw = tuple(layout), keep_raw
        self.heads = [PassStats() for _ in self.layout]
        self.temperatures = None if temperatures is None else tuple(temperatures)

    @property
    def count(self) -> int:
        """Passes folded in so far."""
        return self.heads[0].moments.count

    def add(self, y: np.ndarray) -> None:
        """Fold in one chunk of passes ``y``, (passes, rows, all heads' outputs) float32."""
        if len(self.layout) == 1:
            self.heads[0].add(self._prepared(0, y), self.layout[0].classify, self.keep_raw)
            return
        for i, (columns, head) in enumerate(zip(self.layout, self.heads, strict=True)):
            # A contiguous copy: numpy's sums then run the same way whatever the other heads.
            part = np.ascontiguousarray(y[..., columns.start:columns.stop])
            head.add(self._prepared(i, part), columns.classify, self.keep_raw)

    def _prepared(self, head: int, y: np.ndarray) -> np.ndarray:
        """A head's passes as folded: temperature-scaled probabilities when calibrated, the
        noise variances ``exp(log-variance)`` of a learned-noise head (so that their mean over
        the passes is the mean predicted noise variance), else as they are."""
        if self.layout[head].learned_noise:
            return noise_variances(y)
        temperature = None if self.temperatures is None else self.temperatures[head]
        return y if temperature is None else scale_probabilities(y, temperature)


# exp(80) is about 5.5e34, inside float32; a larger log-variance is not a noise model.
_MAX_LOG_VARIANCE = 80.0


def noise_variances(y: np.ndarray) -> np.ndarray:
    """Passes of a learned-noise head, (passes, rows, 2 * outputs): the means kept, the
    log-variances (the second half of the last axis) turned into variances, float32."""
    half = y.shape[-1] // 2
    out = np.array(y, dtype=np.float32)
    out[..., half:] = np.exp(np.minimum(out[..., half:], _MAX_LOG_VARIANCE))
    return out


def cancelled() -> CancelledError:
    """The error a prediction stopped by its ``should_stop`` raises."""
    return CancelledError("prediction cancelled: the caller gave up or its deadline passed")


def _sum_passes(values: np.ndarray) -> np.ndarray:
    """Sum over axis 0 (passes) in an order that depends on the number of passes alone.

    numpy sums an axis pairwise when it is contiguous in memory and in plain order otherwise, and
    axis 0 is contiguous exactly when there is one row; moving it last makes it always so.
    """
    return np.ascontiguousarray(np.moveaxis(values, 0, -1)).sum(axis=-1)


def plan(rows: int, samples: int, row_bytes: int, budget: int, adaptive: bool) -> tuple[int, int]:
    """Rows per block and passes per chunk so one chunk's activations fit ``budget`` bytes.

    Args:
        rows: Input rows of the request.
        samples: Passes T.
        row_bytes: Activation bytes of one (pass, row).
        budget: Memory budget, bytes.
        adaptive: Adaptive sampling: smaller chunks, so it can stop soon after the tolerance.
    """
    block = max(1, min(rows, budget // row_bytes))
    chunk = max(1, min(samples, budget // (block * row_bytes)))
    if adaptive:
        chunk = min(chunk, max(10, samples // 20))
    return block, chunk


def sample(frontiers: list[list], blocks: list[slice], samples: int, chunk: int,
           run_chunk: ChunkRunner, out: JointStats, *,
           converged: Callable[[JointStats], bool] | None = None,
           should_stop: StopCheck = None) -> JointStats:
    """Run ``samples`` passes over row blocks (their prefix outputs in ``frontiers``).

    Args:
        frontiers, blocks: Each block's rows and the prefix outputs of those rows.
        samples: Passes to run (at most).
        chunk: Passes per graph call.
        run_chunk: Runs one graph call, see :data:`ChunkRunner`.
        out: Where the passes are folded in (its layout says which columns are which head's).
        converged: Checked after each chunk; True stops early (adaptive sampling).
        should_stop: Polled after each graph call; True raises CancelledError.

    Returns:
        ``out``.
    """
    done = 0
    while done < samples:
        count = min(chunk, samples - done)
        parts = []
        for rows, frontier in zip(blocks, frontiers, strict=True):
            parts.append(run_chunk(rows, frontier, done, count))
            if should_stop is not None and should_stop():
                raise cancelled()
        out.add(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1))
        done += count
        if converged is not None and done >= 2 and converged(out):
            break
    return out
