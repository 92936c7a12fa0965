"""Running a request's passes: in one graph call when they fit the memory budget, else in chunks.

:class:`PassRunner` plans blocks of rows and chunks of passes, calls the graphs, folds the
statistics of every head and summarises them, for one request or for a merged batch of requests
(each row with its own request's seed).

Variable dimensions: the activation bytes of one (pass, row) are measured with every variable
dimension at its probe size (:data:`.split.PROBE_SIZES`, the first); a request's rows are budgeted
at that size times the factor by which its own sizes exceed the probe's (per input, the product
over its variable dimensions of actual / probe; the largest over inputs; never below 1). Activations
grow at most in proportion to a sequence's length or an image's area, so that bound holds;
shorter rows are budgeted as if they had the probe size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mcdropout.calibration.model import HeadCalibration
from mcdropout.engine import calibrated as calibrated_
from mcdropout.engine import heads as heads_
from mcdropout.engine import sampling
from mcdropout.engine.graphs import PassGraphs
from mcdropout.engine.heads import HeadSpec
from mcdropout.engine.prediction import AnyPrediction
from mcdropout.engine.request import Request
from mcdropout.engine.rng import seed_words
from mcdropout.engine.sampling import StopCheck
from mcdropout.engine.split import PROBE_SIZES

ShapeKey = tuple[tuple[int, ...], ...]


class PassRunner:
    """Runs passes of one model's graphs within a memory budget.

    Args:
        graphs: The model's compiled graphs.
        heads: The model's heads (what each one's outputs mean, and where they lie).
        row_bytes: Activation bytes of one (pass, row), outputs included, variable dimensions
            at their probe size.
        memory_budget_bytes: Most activation bytes of one graph call.
        shapes: Each input's row shape (None for a variable dimension).
    """

    def __init__(self, graphs: PassGraphs, heads: Sequence[HeadSpec], row_bytes: int,
                 memory_budget_bytes: int, shapes: Sequence[tuple[int | None, ...]] = (),
                 calibration: Sequence[HeadCalibration] | None = None) -> None:
        self.graphs, self.heads = graphs, tuple(heads)
        self.row_bytes, self.memory_budget_bytes = row_bytes, memory_budget_bytes
        self._variable = [[i for i, d in enumerate(shape) if d is None] for shape in shapes]
        self.layout = tuple(h.columns for h in self.heads)
        self.calibration = None if calibration is None else tuple(calibration)

    def request_row_bytes(self, shape_key: ShapeKey | None) -> int:
        """Activation bytes of one (pass, row) of rows shaped ``shape_key`` (see the module)."""
        if shape_key is None or not any(self._variable):
            return self.row_bytes
        factor = 1.0
        for dims, shape in zip(self._variable, shape_key, strict=True):
            factor = max(factor, float(np.prod([shape[i] / PROBE_SIZES[0] for i in dims])))
        return int(np.ceil(self.row_bytes * factor))

    def plan(self, rows: int, samples: int, adaptive: bool = False,
             shape_key: ShapeKey | None = None) -> tuple[int, int]:
        """Rows per block and passes per chunk (see :func:`sampling.plan`)."""
        return sampling.plan(rows, samples, self.request_row_bytes(shape_key),
                             self.memory_budget_bytes, adaptive)

    def run_one(self, xs: Sequence[np.ndarray], request: Request, should_stop: StopCheck
                ) -> AnyPrediction:
        """The prediction for one request whose rows ``xs`` are checked and standardised."""
        block, chunk = self.plan(xs[0].shape[0], request.samples, request.tolerance is not None,
                                 request.shape_key)
        words = np.array(seed_words(request.seed), dtype=np.uint32)
        graphs, tolerance = self.graphs, request.tolerance
        sampled = self.sample(
            xs, request.samples, block, chunk,
            lambda rows, frontier, first, count: graphs.chunk(frontier, words, None, first, count),
            lambda: graphs.whole(xs, words, None, request.samples), request.keep_raw,
            None if tolerance is None else heads_.converged(self.heads, tolerance), should_stop,
            request.calibrated)
        if not request.calibrated:
            return heads_.summarise(self.heads, sampled, request.seed, request.interval_levels,
                                    request.return_samples)
        assert self.calibration is not None  # resolve refused a calibrated request otherwise
        conformal = [c.regression is not None for c in self.calibration]
        return self.finish(heads_.summarise(self.heads, sampled, request.seed,
                                            request.interval_levels, request.return_samples,
                                            conformal), request)

    def finish(self, prediction: AnyPrediction, request: Request) -> AnyPrediction:
        """A request's answer from its passes' ``prediction``: as it is, or calibrated (see
        :func:`.calibrated.finish`)."""
        if not request.calibrated:
            return prediction
        assert self.calibration is not None
        return calibrated_.finish(prediction, self.heads, self.calibration, request)

    def sample(self, xs: Sequence[np.ndarray], samples: int, block: int, chunk: int,
               run_chunk: sampling.ChunkRunner, whole: Callable[[], np.ndarray],
               keep_raw: bool = False,
               converged: Callable[[sampling.JointStats], bool] | None = None,
               should_stop: StopCheck = None, calibrated: bool = False) -> sampling.JointStats:
        """Run the passes: with ``whole()`` when they fit one call, else chunk by chunk.

        ``whole()`` is not used for a single pass of a single row, whose product would be a
        one-row one (see :func:`mcdropout.engine.graphs._two_rows`). ``calibrated``: scale the
        classifier heads' passes by their temperatures as they are folded.
        """
        temperatures = None
        if calibrated:
            assert self.calibration is not None
            temperatures = calibrated_.temperatures(self.calibration)
        out = sampling.JointStats(self.layout, keep_raw, temperatures)
        rows = xs[0].shape[0]
        if block >= rows and chunk >= samples and rows * samples > 1:
            out.add(whole())
            if should_stop is not None and should_stop():
                raise sampling.cancelled()
            return out
        blocks = [slice(i, min(i + block, rows)) for i in range(0, rows, block)]
        return sampling.sample([self.graphs.frontier([x[b] for x in xs]) for b in blocks], blocks,
                               samples, chunk, run_chunk, out, converged=converged,
                               should_stop=should_stop)
