"""Running a request's passes: in one graph call when they fit the memory budget, else in chunks.

:class:`PassRunner` plans blocks of rows and chunks of passes, calls the graphs, folds the
statistics and summarises them into a :class:`Prediction`, for one request or for a merged
batch of requests (each row with its own request's seed).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mcdropout.engine import sampling
from mcdropout.engine.graphs import PassGraphs
from mcdropout.engine.prediction import Prediction
from mcdropout.engine.request import Request
from mcdropout.engine.rng import seed_words
from mcdropout.engine.sampling import StopCheck
from mcdropout.engine.summary import OutputSpace


class PassRunner:
    """Runs passes of one model's graphs within a memory budget.

    Args:
        graphs: The model's compiled graphs.
        space: What the outputs mean (task, target scaling, tau).
        row_bytes: Activation bytes of one (pass, row), outputs included.
        memory_budget_bytes: Most activation bytes of one graph call.
    """

    def __init__(self, graphs: PassGraphs, space: OutputSpace, row_bytes: int,
                 memory_budget_bytes: int) -> None:
        self.graphs, self.space = graphs, space
        self.row_bytes, self.memory_budget_bytes = row_bytes, memory_budget_bytes
        self._classify = space.task == "classification"

    def plan(self, rows: int, samples: int, adaptive: bool = False) -> tuple[int, int]:
        """Rows per block and passes per chunk (see :func:`sampling.plan`)."""
        return sampling.plan(rows, samples, self.row_bytes, self.memory_budget_bytes, adaptive)

    def run_one(self, x: np.ndarray, request: Request, should_stop: StopCheck) -> Prediction:
        """The prediction for one request whose rows ``x`` are checked and standardised."""
        block, chunk = self.plan(x.shape[0], request.samples, request.tolerance is not None)
        words = np.array(seed_words(request.seed), dtype=np.uint32)
        graphs, tolerance = self.graphs, request.tolerance

        def converged(so_far: sampling.PassStats) -> bool:
            m = so_far.moments
            assert tolerance is not None
            return float(np.max(np.sqrt(m.variance() / m.count)) * self.space.scale()) <= tolerance

        sampled = self.sample(
            x, request.samples, block, chunk,
            lambda rows, frontier, first, count: graphs.chunk(frontier, words, None, first, count),
            lambda: graphs.whole(x, words, None, request.samples), request.keep_raw,
            None if tolerance is None else converged, should_stop)
        return self.space.summarise(sampled, request.seed, request.interval_levels,
                                    request.return_samples)

    def sample(self, x: np.ndarray, samples: int, block: int, chunk: int,
               run_chunk: sampling.ChunkRunner, whole: Callable[[], np.ndarray],
               keep_raw: bool = False,
               converged: Callable[[sampling.PassStats], bool] | None = None,
               should_stop: StopCheck = None) -> sampling.PassStats:
        """Run the passes: with ``whole()`` when they fit one call, else chunk by chunk.

        ``whole()`` is not used for a single pass of a single row, whose product would be a
        one-row one (see :func:`mcdropout.engine.graphs._two_rows`).
        """
        if block >= x.shape[0] and chunk >= samples and x.shape[0] * samples > 1:
            out = sampling.PassStats()
            out.add(whole(), self._classify, keep_raw)
            if should_stop is not None and should_stop():
                raise sampling.cancelled()
            return out
        blocks = [slice(i, min(i + block, x.shape[0])) for i in range(0, x.shape[0], block)]
        return sampling.sample([self.graphs.frontier(x[b]) for b in blocks], blocks, samples,
                               chunk, run_chunk, classify=self._classify, keep_raw=keep_raw,
                               converged=converged, should_stop=should_stop)
