"""The Monte Carlo engine's front: T stochastic passes, vectorised, chunked, reduced to statistics.

A request's T passes are folded into the batch dimension of compiled graph calls (no Python loop
over passes). Passes are taken in chunks, and rows in blocks, sized so the live activations stay
under a memory budget; each chunk is reduced to float64 (mean, M2) and merged across chunks with
Chan's update. The deterministic prefix of the model runs once per row.

Every request goes through :meth:`MCDropoutPredictor.run`: a batch of one request is the ordinary
case, several mergeable requests share their graph calls (:mod:`.merged`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mcdropout.engine import introspect
from mcdropout.engine.graphs import PassGraphs
from mcdropout.engine.inputs import InputSpec
from mcdropout.engine.layers import StochasticLayer, find_stochastic_layers, is_mask_layer
from mcdropout.engine.merged import run_merged
from mcdropout.engine.passes import PassRunner
from mcdropout.engine.prediction import Prediction, Task
from mcdropout.engine.request import Limits, Request, resolve
from mcdropout.engine.sampling import StopCheck
from mcdropout.engine.split import split_model
from mcdropout.engine.summary import OutputSpace
from mcdropout.errors import InvalidArgumentError, MCDropoutError, NoStochasticLayersError
from mcdropout.store import ModelInfo, as_array


class MCDropoutPredictor:
    """Monte Carlo dropout predictions with uncertainty for a Keras model.

    Args:
        model: A Keras model (Sequential, Functional or subclassed) with one input and one output
            that holds at least one layer of the dropout family (Dropout, SpatialDropout1D/2D/3D,
            GaussianDropout, AlphaDropout, or a recurrent layer with dropout/recurrent_dropout).
        task: "regression" or "classification"; inferred from the output activation if None
            (softmax or sigmoid means classification).
        tau: Regression noise precision in the model's (standardised) output units, or None.
        feature_mean, feature_std: Inputs are standardised as ``(x - mean) / std`` first.
        target_mean, target_std: The model predicts ``(y - mean) / std``; results are mapped
            back to y's units.
        input_shape: Shape of one row; needed only when the model does not declare it.
        memory_budget_bytes: Upper bound for the activations of one chunk of passes.
        max_samples: Largest T accepted.
        default_samples: T used when a request names none.
        max_raw_sample_values: Largest samples x rows x outputs kept when raw passes are needed
            (intervals or ``return_samples``).
        prefix_caching: Run the deterministic prefix once per row (False: the whole model T times).

    Raises:
        NoStochasticLayersError: the model has no dropout-family layer with a rate above 0.
        InvalidArgumentError: an option is out of range or the input shape cannot be told.
    """

    def __init__(self, model: Any, *, task: Task | None = None, tau: float | None = None,
                 feature_mean: Any = None, feature_std: Any = None, target_mean: Any = None,
                 target_std: Any = None, input_shape: Sequence[int] | None = None,
                 memory_budget_bytes: int = 256 * 2**20, max_samples: int = 10_000,
                 default_samples: int = 100, max_raw_sample_values: int = 10_000_000,
                 prefix_caching: bool = True) -> None:
        self.stochastic_layers: tuple[StochasticLayer, ...] = find_stochastic_layers(model)
        if not self.stochastic_layers:
            raise NoStochasticLayersError(
                f"model {getattr(model, 'name', '?')!r} has no dropout layer with a rate above 0 "
                "(Dropout, SpatialDropout1D/2D/3D, GaussianDropout, AlphaDropout, or an RNN with "
                "dropout/recurrent_dropout), so every pass would be identical")
        if task not in (None, "regression", "classification"):
            raise InvalidArgumentError(f"task must be 'regression' or 'classification', got {task!r}")
        if not 1 <= default_samples <= max_samples:
            raise InvalidArgumentError(
                f"default_samples must be in 1..max_samples={max_samples}, got {default_samples}")
        if memory_budget_bytes < 2**20:
            raise InvalidArgumentError(
                f"memory_budget_bytes must be at least 1 MiB, got {memory_budget_bytes}")
        if tau is not None and not (math.isfinite(tau) and tau > 0):
            raise InvalidArgumentError(f"tau must be a positive finite number, got {tau}")
        self.task: Task = task or introspect.infer_task(model)
        shape, dtype = introspect.input_signature(model, input_shape)
        self.inputs = (InputSpec("inputs", shape, dtype, as_array(feature_mean),
                                 as_array(feature_std)),)
        self.split = split = split_model(model, shape, dtype, prefix_caching)
        suffix = (list(model.layers[split.prefix_layers:])
                  if isinstance(model, keras.Sequential) and prefix_caching else [])
        width = int(np.prod(model(tf.zeros((1, *shape), dtype)).shape[1:]))
        binary = self.task == "classification" and width == 1
        self.output_dim = 2 if binary else width
        self.limits = Limits(int(default_samples), int(max_samples), int(max_raw_sample_values),
                             self.output_dim)
        target_mean, target_std = as_array(target_mean), as_array(target_std)
        scale = float(target_std[0]) if target_std is not None else 1.0
        self.tau = None if tau is None else float(tau) / scale**2
        self.graphs = PassGraphs(model, split, shape, dtype,
                                 suffix if suffix and is_mask_layer(suffix[0]) else None, binary)
        self._passes = PassRunner(self.graphs, OutputSpace(self.task, target_mean, target_std,
                                                            self.tau),
                                  split.per_row_bytes + 16 * self.output_dim,
                                  int(memory_budget_bytes))

    @classmethod
    def from_info(cls, model: Any, info: ModelInfo, **options: Any) -> MCDropoutPredictor:
        """A predictor configured from a store entry's metadata (standardisation, tau, limits)."""
        options.setdefault("max_samples", info.max_samples)
        options.setdefault("default_samples", info.default_samples)
        return cls(model, task=info.task, tau=info.tau, feature_mean=info.feature_mean,
                   feature_std=info.feature_std, target_mean=info.target_mean,
                   target_std=info.target_std, input_shape=info.input_shape,  # type: ignore[arg-type]
                   **options)

    # -- what the model accepts --------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.inputs[0].shape

    @property
    def input_dtype(self) -> str:
        return self.inputs[0].dtype

    @property
    def default_samples(self) -> int:
        return self.limits.default_samples

    @property
    def max_samples(self) -> int:
        return self.limits.max_samples

    @property
    def memory_budget_bytes(self) -> int:
        return self._passes.memory_budget_bytes

    @property
    def row_bytes(self) -> int:
        """Activation bytes of one (pass, row), the unit of the memory budget."""
        return self._passes.row_bytes

    def plan(self, rows: int, samples: int, adaptive: bool = False) -> tuple[int, int]:
        """Rows per block and passes per chunk a request of this size runs in."""
        return self._passes.plan(rows, samples, adaptive)

    @property
    def trace_count(self) -> int:
        """Graph traces so far (each graph traces once; a later trace would be a retrace)."""
        return self.graphs.trace_count

    def check_inputs(self, x: Any) -> np.ndarray:
        """Check input rows and standardise them (see :meth:`InputSpec.check`)."""
        return self.inputs[0].check(x)

    def resolve(self, x: Any, samples: int | None = None, seed: int | None = None, *,
                tolerance: float | None = None, interval_levels: Sequence[float] = (),
                return_samples: bool = False, limits: Limits | None = None) -> Request:
        """Resolve a request against this model's limits (see :func:`request.resolve`).

        Args:
            limits: Limits to apply instead of the model's own (a server adds its row limits).
        """
        if isinstance(x, dict) and list(x) == [self.inputs[0].name]:
            x = x[self.inputs[0].name]
        return resolve(x, limits or self.limits, samples=samples, seed=seed,
                       tolerance=tolerance, interval_levels=interval_levels,
                       return_samples=return_samples)

    # -- running -----------------------------------------------------------------------------------
    def run(self, requests: Sequence[Request], should_stop: StopCheck = None
            ) -> list[Prediction | InvalidArgumentError]:
        """Answer resolved requests, sharing graph calls when there are several.

        Several requests must be mergeable (:attr:`Request.mergeable`) and have the same
        ``samples``. Each request's input values are checked first; a request whose values are
        refused gets its :class:`InvalidArgumentError` in place of an answer and the others run
        without it.

        Args:
            requests: At least one request, resolved against this model.
            should_stop: Polled between chunks; True abandons all the work.

        Returns:
            One prediction (or refusal) per request, in order.

        Raises:
            InvalidArgumentError: no request, or several that cannot be merged.
            CancelledError: ``should_stop`` returned True.
        """
        if not requests:
            raise InvalidArgumentError("at least one request is needed, got none")
        if len(requests) > 1 and not all(r.mergeable and r.samples == requests[0].samples
                                         for r in requests):
            raise InvalidArgumentError("merged requests must share samples and ask for no "
                                       "adaptive sampling, intervals or raw samples")
        checked: list[np.ndarray | InvalidArgumentError] = []
        for request in requests:
            try:
                checked.append(self.inputs[0].check(request.x))
            except InvalidArgumentError as exc:
                checked.append(exc)
        good = [i for i, c in enumerate(checked) if isinstance(c, np.ndarray)]
        rows = [c for c in checked if isinstance(c, np.ndarray)]
        answers: list[Prediction] = []
        if len(good) == 1:
            answers = [self._passes.run_one(rows[0], requests[good[0]], should_stop)]
        elif good:
            answers = run_merged(self._passes, [requests[i] for i in good], rows, should_stop)
        out: list[Prediction | InvalidArgumentError] = list(checked)  # type: ignore[arg-type]
        for i, answer in zip(good, answers, strict=True):
            out[i] = answer
        return out

    def predict(self, x: Any, samples: int | None = None, seed: int | None = None, *,
                tolerance: float | None = None, interval_levels: Sequence[float] = (),
                return_samples: bool = False, should_stop: StopCheck = None) -> Prediction:
        """Run T stochastic passes over the rows of ``x`` and summarise them.

        Args:
            x: Input rows, shape (rows, *input_shape), finite numbers.
            samples: Number of passes T, 1..max_samples (default: default_samples). With
                ``tolerance``, the most passes to run.
            seed: 0 <= seed < 2**64. The same seed, inputs and model give identical results;
                None draws a fresh seed (returned in the result).
            tolerance: Adaptive sampling: stop once the Monte Carlo standard error of every mean
                is at most this (in output units). None runs exactly ``samples`` passes.
            interval_levels: Coverage levels in (0, 1) of central predictive intervals.
            return_samples: Also return the raw per-pass outputs.
            should_stop: Polled between chunks; returning True abandons the work.

        Returns:
            A :class:`Prediction`.

        Raises:
            InvalidArgumentError: bad shape, dtype, NaN/Inf, samples, seed, tolerance or levels.
            ResourceLimitError: keeping the raw passes would exceed ``max_raw_sample_values``.
            CancelledError: ``should_stop`` returned True.
        """
        request = self.resolve(x, samples, seed, tolerance=tolerance,
                               interval_levels=interval_levels, return_samples=return_samples)
        return _answers(self.run([request], should_stop))[0]

    def predict_many(self, inputs: Sequence[Any], samples: int | None = None,
                     seeds: Sequence[int | None] | None = None, *,
                     should_stop: StopCheck = None) -> list[Prediction]:
        """Answer several independent requests with shared graph calls (a merged batch).

        Answer i is what ``predict(inputs[i], samples, seeds[i])`` returns (see
        :mod:`mcdropout.engine.merged` for when that holds bit for bit).

        Args:
            inputs: One array per request, each (rows_i, *input_shape), finite numbers.
            samples: Passes T for every request, 1..max_samples (default: default_samples).
            seeds: One seed per request (0 <= seed < 2**64) or None for a fresh one; None for
                all fresh.
            should_stop: Polled between chunks; returning True abandons all the work.

        Raises:
            InvalidArgumentError: an input (named by its index), samples or a seed is invalid.
            CancelledError: ``should_stop`` returned True.
        """
        if len(inputs) == 0:
            raise InvalidArgumentError("predict_many needs at least one input array, got none")
        seeds = [None] * len(inputs) if seeds is None else list(seeds)
        if len(seeds) != len(inputs):
            raise InvalidArgumentError(f"predict_many needs one seed per input: got "
                                       f"{len(seeds)} seeds for {len(inputs)} inputs")
        requests = [self.resolve(x, samples, seed) for x, seed in zip(inputs, seeds, strict=True)]
        answers = self.run(requests, should_stop)
        for i, answer in enumerate(answers):
            if isinstance(answer, MCDropoutError):
                raise InvalidArgumentError(f"inputs[{i}]: {answer}") from None
        return _answers(answers)

    def warmup(self, batch_rows: int = 0) -> None:
        """Trace and run the graphs once so the first real request pays no compile time.

        Args:
            batch_rows: Also prepare merged batches of up to this many rows at
                ``default_samples`` passes (their mask kernels compile per size class).
        """
        zeros = np.zeros((1, *self.input_shape), self.input_dtype)
        self.predict(zeros, samples=2, seed=0)
        # Mask kernels compile once per power-of-two class of passes: make the default's now.
        self.predict(zeros, samples=self.default_samples, seed=0)
        frontier = self.graphs.frontier(zeros)  # the graphs of requests that run in chunks
        self.graphs.chunk(frontier, np.zeros(2, np.uint32), None, 0, 2)
        if batch_rows >= 2:
            self.graphs.chunk(frontier, np.zeros((1, 2), np.uint32), np.zeros(1, np.int32), 0, 2)
        rows = 2
        while batch_rows >= 2:
            self.predict_many([zeros] * rows, samples=self.default_samples)
            if rows >= batch_rows:
                break
            rows = min(2 * rows, batch_rows)


def _answers(answers: Sequence[Prediction | InvalidArgumentError]) -> list[Prediction]:
    for answer in answers:
        if not isinstance(answer, Prediction):
            raise answer
    return list(answers)  # type: ignore[arg-type]
