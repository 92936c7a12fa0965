"""The Monte Carlo engine: T stochastic passes, vectorised, chunked, reduced to statistics.

A request's T passes are folded into the batch dimension of compiled graph calls (no Python loop
over passes). Passes are taken in chunks, and rows in blocks, sized so the live activations stay
under a memory budget; each chunk is reduced in the graph to float64 (mean, M2) and merged across
chunks with Chan's update. The deterministic prefix of the model runs once per row.

:meth:`MCDropoutPredictor.predict_many` answers several requests (each with its own seed) with the
same graph calls, for servers that merge concurrent requests; see its docstring for why each
answer is the one the request gets alone.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mcdropout.engine import sampling
from mcdropout.engine.layers import (
    PassWindow,
    StochasticLayer,
    find_stochastic_layers,
    is_mask_layer,
    mc_mode,
)
from mcdropout.engine.prediction import Prediction, Task
from mcdropout.engine.split import split_model
from mcdropout.engine.summary import OutputSpace
from mcdropout.engine.tracing import expect_retracing
from mcdropout.errors import (
    CancelledError,
    InvalidArgumentError,
    NoStochasticLayersError,
    ResourceLimitError,
)
from mcdropout.store import ModelInfo, as_array

MAX_INTERVAL_LEVELS = 16
_SEED_LIMIT = 2**64


# Each predictor traces its graphs once, with fixed signatures, but TensorFlow counts traces of
# the same method across instances: a server with several models or a grid search would warn.
expect_retracing("MCDropoutPredictor")


class _Graph:
    """A traced function with a fixed signature, called through its one concrete function.

    Calling the ``tf.function`` binds and checks the arguments against every signature it knows,
    about 0.2-0.3 ms per call here; the concrete function behind the one signature skips that.
    Arguments must be tensors of the signature's dtypes.
    """

    def __init__(self, fn: Callable[..., Any], signature: list[tf.TensorSpec]) -> None:
        self._function = tf.function(fn, input_signature=signature)
        self._concrete: Any = None

    def __call__(self, *args: tf.Tensor) -> Any:
        if self._concrete is None:  # traced on first use, not when the predictor is built
            self._concrete = self._function.get_concrete_function()
        return self._concrete(*args)


def _first_non_finite_row(rows: np.ndarray) -> int:
    return int(np.argwhere(~np.isfinite(rows.reshape(rows.shape[0], -1)))[0][0])


def _int32(value: int) -> tf.Tensor:
    return tf.constant(value, tf.int32)


def _output_layer(model: Any) -> Any:
    if isinstance(model, keras.Sequential):
        return model.layers[-1]
    outputs = getattr(model, "outputs", None)
    history = getattr(outputs[0], "_keras_history", None) if outputs else None
    return history[0] if history else None


def _infer_task(model: Any) -> Task:
    layer = _output_layer(model)
    if isinstance(layer, keras.layers.Softmax):
        return "classification"
    activation = getattr(getattr(layer, "activation", None), "__name__", "")
    return "classification" if activation in ("softmax", "sigmoid") else "regression"


def _input_signature(model: Any, input_shape: Sequence[int] | None) -> tuple[tuple[int, ...], str]:
    inputs = getattr(model, "inputs", None)
    if input_shape is not None:
        dtype = str(inputs[0].dtype) if inputs else "float32"
        return tuple(int(d) for d in input_shape), dtype
    if not inputs:
        raise InvalidArgumentError(
            "cannot tell the model's input shape (a subclassed or unbuilt model); "
            "pass input_shape=(...) for one row")
    if len(inputs) != 1:
        raise InvalidArgumentError(f"models with exactly one input are supported, got {len(inputs)}")
    shape = tuple(inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise InvalidArgumentError(
            f"the model's input shape {shape} has unknown dimensions; pass input_shape=(...)")
    return tuple(int(d) for d in shape), str(inputs[0].dtype)


_ROW_FIELDS = ("mean", "std", "standard_error", "predictive_std", "predicted_class",
               "predictive_entropy", "expected_entropy", "mutual_information", "variation_ratio")


def _rows_of(prediction: Prediction, rows: slice, seed: int) -> Prediction:
    """The prediction for some rows of a merged batch (no intervals or raw samples there)."""
    arrays: dict[str, Any] = {name: np.array(getattr(prediction, name)[rows])
                              for name in _ROW_FIELDS if getattr(prediction, name) is not None}
    return dataclasses.replace(prediction, seed=seed, **arrays)


def _seed_words(seed: int) -> tuple[int, int]:
    return seed & 0xFFFFFFFF, seed >> 32


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
        default_samples: T used when ``predict`` gets none.
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
        self._model = model
        self.task: Task = task or _infer_task(model)
        self.input_shape, self.input_dtype = _input_signature(model, input_shape)
        self.max_samples = int(max_samples)
        self.default_samples = int(default_samples)
        self.memory_budget_bytes = int(memory_budget_bytes)
        self.max_raw_sample_values = int(max_raw_sample_values)
        self._feature_mean, self._feature_std = as_array(feature_mean), as_array(feature_std)
        self._target_mean, self._target_std = as_array(target_mean), as_array(target_std)
        self._split = split_model(model, self.input_shape, self.input_dtype, prefix_caching)
        suffix = (list(model.layers[self._split.prefix_layers:])
                  if isinstance(model, keras.Sequential) and prefix_caching else [])
        self._mask_first = suffix if suffix and is_mask_layer(suffix[0]) else None
        width = int(np.prod(model(tf.zeros((1, *self.input_shape), self.input_dtype)).shape[1:]))
        self._binary = self.task == "classification" and width == 1
        self.output_dim = 2 if self._binary else width
        scale = float(self._target_std[0]) if self._target_std is not None else 1.0
        self.tau = None if tau is None else float(tau) / scale**2
        self._space = OutputSpace(self.task, self._target_mean, self._target_std, self.tau)
        self.trace_count = 0
        self._prefix_fn = _Graph(self._prefix, [tf.TensorSpec((None, *self.input_shape),
                                                              self.input_dtype)])
        passes_spec = [tf.TensorSpec((), tf.int32), tf.TensorSpec((), tf.int32)]
        self._chunk_fn = _Graph(self._chunk, [
            *self._split.frontier, tf.TensorSpec((2,), tf.uint32), *passes_spec])
        self._segments_fn = _Graph(self._segments_chunk, [
            *self._split.frontier, tf.TensorSpec((None, 2), tf.uint32),
            tf.TensorSpec((None,), tf.int32), *passes_spec])
        rows_spec = [tf.TensorSpec((None, *self.input_shape), self.input_dtype),
                     tf.TensorSpec((), tf.int32)]
        self._whole_fn = _Graph(self._whole, [
            *rows_spec, tf.TensorSpec((2,), tf.uint32), tf.TensorSpec((), tf.int32)])
        self._whole_segments_fn = _Graph(self._whole_segments, [
            *rows_spec, tf.TensorSpec((None, 2), tf.uint32), tf.TensorSpec((None,), tf.int32),
            tf.TensorSpec((), tf.int32)])

    @classmethod
    def from_info(cls, model: Any, info: ModelInfo, **options: Any) -> MCDropoutPredictor:
        """A predictor configured from a store entry's metadata (standardisation, tau, limits)."""
        options.setdefault("max_samples", info.max_samples)
        options.setdefault("default_samples", info.default_samples)
        return cls(model, task=info.task, tau=info.tau, feature_mean=info.feature_mean,
                   feature_std=info.feature_std, target_mean=info.target_mean,
                   target_std=info.target_std, input_shape=info.input_shape, **options)

    # -- traced graphs -------------------------------------------------------------------------
    def _prefix(self, x: tf.Tensor) -> list[tf.Tensor]:
        self.trace_count += 1
        return list(self._split.prefix(x))

    def _chunk(self, *args: tf.Tensor) -> tf.Tensor:
        *frontier, seed, first, count = args
        return self._passes(frontier, PassWindow(seed, first, count))

    def _segments_chunk(self, *args: tf.Tensor) -> tf.Tensor:
        *frontier, seeds, segments, first, count = args
        return self._passes(frontier, PassWindow(seeds, first, count, segments))

    def _whole(self, x: tf.Tensor, rows: tf.Tensor, seed: tf.Tensor, count: tf.Tensor
               ) -> tf.Tensor:
        # Prefix and every pass in one call; x may carry a second copy of a lone row (_frontier).
        frontier = [h[:rows] for h in self._split.prefix(x)]
        return self._passes(frontier, PassWindow(seed, tf.constant(0), count))

    def _whole_segments(self, x: tf.Tensor, rows: tf.Tensor, seeds: tf.Tensor,
                        segments: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
        frontier = [h[:rows] for h in self._split.prefix(x)]
        return self._passes(frontier, PassWindow(seeds, tf.constant(0), count, segments))

    def _passes(self, frontier: list[tf.Tensor], window: PassWindow) -> tf.Tensor:
        self.trace_count += 1
        count = window.count
        with mc_mode(self._model, window):
            if self._mask_first is not None:
                # The frontier feeds one dropout layer alone: it multiplies the rows by each
                # pass's mask straight into (passes x rows, ...), with no tiled copy first.
                first, *rest = self._mask_first
                y = first.call(frontier[0], untiled=True)
                for layer in rest:
                    y = layer(y)
            else:
                tiled = []
                for h in frontier:
                    reps = tf.concat([[count], tf.ones([len(h.shape)], tf.int32)], axis=0)
                    tiled.append(tf.reshape(tf.tile(h[None], reps),
                                            tf.concat([[-1], tf.shape(h)[1:]], axis=0)))
                y = self._split.suffix(tiled)
        y = tf.reshape(tf.cast(y, tf.float32), [count, tf.shape(frontier[0])[0], -1])
        if self._binary:
            y = tf.concat([1.0 - y, y], axis=-1)
        return y  # (passes, rows, outputs); the statistics are taken in sampling.PassStats

    # -- public API ----------------------------------------------------------------------------
    def warmup(self, batch_rows: int = 0) -> None:
        """Trace and run the graphs once so the first real request pays no compile time.

        Args:
            batch_rows: Also prepare :meth:`predict_many` for merged batches of up to this many
                rows at ``default_samples`` passes (its mask kernels compile per size class).
        """
        zeros = np.zeros((1, *self.input_shape), self.input_dtype)
        self.predict(zeros, samples=2, seed=0)
        # Mask kernels compile once per power-of-two class of passes: make the default's now.
        self.predict(zeros, samples=self.default_samples, seed=0)
        frontier = self._frontier(zeros)  # the graphs of requests that run in several chunks
        self._call(frontier, np.zeros(2, np.uint32), None, 0, 2)
        if batch_rows >= 2:
            self._call(frontier, np.zeros((1, 2), np.uint32), np.zeros(1, np.int32), 0, 2)
        rows = 2
        while batch_rows >= 2:
            self.predict_many([zeros] * rows, samples=self.default_samples)
            if rows >= batch_rows:
                break
            rows = min(2 * rows, batch_rows)

    def predict(self, x: Any, samples: int | None = None, seed: int | None = None, *,
                tolerance: float | None = None, interval_levels: Sequence[float] = (),
                return_samples: bool = False,
                should_stop: Callable[[], bool] | None = None) -> Prediction:
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
        rows = self.check_inputs(x)
        samples = self._check_samples(samples)
        seed = self._check_seed(seed)
        levels = self._check_levels(interval_levels)
        if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
            raise InvalidArgumentError(f"tolerance must be a finite number >= 0, got {tolerance}")
        keep_raw = return_samples or bool(levels)
        if keep_raw and samples * rows.shape[0] * self.output_dim > self.max_raw_sample_values:
            raise ResourceLimitError(
                f"intervals and raw samples keep every pass: samples x rows x outputs = "
                f"{samples} x {rows.shape[0]} x {self.output_dim} exceeds the limit of "
                f"{self.max_raw_sample_values} values; ask for fewer samples or rows")
        return self._run(rows, samples, seed, tolerance, levels, keep_raw, return_samples,
                         should_stop)

    def predict_many(self, inputs: Sequence[Any], samples: int | None = None,
                     seeds: Sequence[int | None] | None = None, *,
                     should_stop: Callable[[], bool] | None = None) -> list[Prediction]:
        """Answer several independent requests with shared graph calls (a merged batch).

        Answer i is what ``predict(inputs[i], samples, seeds[i])`` returns, bit for bit wherever
        the model's kernels compute a row the same way whatever its position in the batch: each
        row gets the masks of its own request's seed (element (pass, unit) of a mask depends only
        on the seed, the layer, the pass and the unit), and requests are grouped so that each
        one's passes fall in the chunks it would use alone. Dense, convolution-free models with
        ReLU, tanh or softmax meet that; sigmoid, exp and log kernels in TensorFlow round a value
        differently depending on where in a vector it falls (by about 1e-7 relative), and so may
        the answers.

        Args:
            inputs: One array per request, each (rows_i, *input_shape), finite numbers.
            samples: Passes T for every request, 1..max_samples (default: default_samples).
            seeds: One seed per request (0 <= seed < 2**64) or None for a fresh one; None for
                all fresh.
            should_stop: Polled between chunks; returning True abandons all the work.

        Returns:
            One :class:`Prediction` per request, in order.

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
        arrays = []
        for i, x in enumerate(inputs):
            try:
                arrays.append(self.check_inputs(x))
            except InvalidArgumentError as exc:
                raise InvalidArgumentError(f"inputs[{i}]: {exc}") from None
        samples = self._check_samples(samples)
        checked = [self._check_seed(seed) for seed in seeds]
        # Requests that would run their passes in different chunks alone run apart here too:
        # chunk boundaries decide how the float64 statistics are merged.
        groups: dict[int, list[int]] = {}
        for i, arr in enumerate(arrays):
            groups.setdefault(self._plan(arr.shape[0], samples, False)[1], []).append(i)
        results: dict[int, Prediction] = {}
        for chunk, members in groups.items():
            sizes = [arrays[i].shape[0] for i in members]
            x = np.concatenate([arrays[i] for i in members])
            segments = np.repeat(np.arange(len(members), dtype=np.int32), sizes)
            words = np.array([_seed_words(checked[i]) for i in members], dtype=np.uint32)
            block = max(1, min(x.shape[0], self.memory_budget_bytes // (chunk * self._row_bytes())))

            def run_chunk(rows: slice, frontier: list[tf.Tensor], first: int, count: int,
                          words: np.ndarray = words, segments: np.ndarray = segments
                          ) -> np.ndarray:
                return self._call(frontier, words, segments[rows], first, count)

            whole = functools.partial(self._whole_call, x, words, segments, samples)
            sampled = self._sample(x, samples, block, chunk, run_chunk, whole,
                                   should_stop=should_stop)
            # Every statistic is per row, so all rows are summarised at once and then split.
            together = self._space.summarise(sampled, 0, (), False)
            start = 0
            for i, size in zip(members, sizes, strict=True):
                results[i] = _rows_of(together, slice(start, start + size), checked[i])
                start += size
        return [results[i] for i in range(len(arrays))]

    # -- validation ------------------------------------------------------------------------------
    def check_inputs(self, x: Any) -> np.ndarray:
        """Check input rows and standardise them as the model expects.

        Args:
            x: Input rows, (rows, *input_shape), finite numbers.

        Returns:
            The standardised rows in the model's input dtype.

        Raises:
            InvalidArgumentError: wrong shape, no rows, a non-numeric dtype, NaN or Inf, or a value
                out of the model's input dtype's range.
        """
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":
            raise InvalidArgumentError(f"inputs must be numeric, got dtype {arr.dtype}")
        if arr.ndim == 0 or arr.shape[1:] != self.input_shape:
            raise InvalidArgumentError(f"inputs must have shape {self._rows_shape()}, got "
                                       f"{tuple(arr.shape)}")
        if arr.shape[0] == 0:
            raise InvalidArgumentError(f"inputs must hold at least one row of shape "
                                       f"{self._rows_shape()}, got 0")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InvalidArgumentError(
                f"inputs contain NaN or Inf (first in row {_first_non_finite_row(arr)}); only "
                "finite values are allowed")
        if arr.dtype == self.input_dtype and self._feature_mean is None \
                and self._feature_std is None:
            return arr  # the float64 round trip below would give back these very values
        out = arr.astype(np.float64)
        if self._feature_mean is not None:
            out = out - self._feature_mean
        if self._feature_std is not None:
            out = out / self._feature_std
        with np.errstate(over="ignore", invalid="ignore"):
            cast = out.astype(self.input_dtype)
        if cast.dtype.kind == "f" and not np.isfinite(cast).all():
            # Finite float64 values beyond the model's float range would turn into Inf here.
            limit = float(np.finfo(cast.dtype).max)
            raise InvalidArgumentError(
                f"inputs hold a value (first in row {_first_non_finite_row(cast)}) that is out of "
                "range for the model's "
                f"input dtype {cast.dtype} after standardisation; allowed magnitude is at most "
                f"{limit:.3g}")
        return cast

    def _rows_shape(self) -> str:
        return "(rows, " + ", ".join(map(str, self.input_shape)) + ")"

    def _check_samples(self, samples: int | None) -> int:
        samples = self.default_samples if samples is None else samples
        if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) \
                or not 1 <= samples <= self.max_samples:
            raise InvalidArgumentError(
                f"samples must be an integer in 1..{self.max_samples}, got {samples!r}")
        return int(samples)

    @staticmethod
    def _check_seed(seed: int | None) -> int:
        if seed is None:
            return secrets.randbits(64)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
                or not 0 <= seed < _SEED_LIMIT:
            raise InvalidArgumentError(f"seed must be an integer in 0..2**64-1, got {seed!r}")
        return int(seed)

    @staticmethod
    def _check_levels(levels: Sequence[float]) -> tuple[float, ...]:
        levels = tuple(float(v) for v in levels)
        if len(levels) > MAX_INTERVAL_LEVELS:
            raise InvalidArgumentError(
                f"at most {MAX_INTERVAL_LEVELS} interval levels are allowed, got {len(levels)}")
        for level in levels:
            if not 0.0 < level < 1.0:
                raise InvalidArgumentError(
                    f"interval levels must be strictly between 0 and 1, got {level}")
        return levels

    # -- the sampling loop -------------------------------------------------------------------------
    def _row_bytes(self) -> int:
        return self._split.per_row_bytes + 16 * self.output_dim

    def _plan(self, rows: int, samples: int, adaptive: bool) -> tuple[int, int]:
        return sampling.plan(rows, samples, self._row_bytes(), self.memory_budget_bytes, adaptive)

    def _frontier(self, x: np.ndarray) -> list[tf.Tensor]:
        # Never a graph call on one row: oneDNN multiplies a one-row matrix by a different kernel
        # (gemv) that rounds differently, and a request's row must give the same bits whether it
        # comes alone or in a merged batch. Two copies of the row cost one extra prefix row.
        if x.shape[0] > 1:
            return list(self._prefix_fn(tf.constant(x)))
        return [h[:1] for h in self._prefix_fn(tf.constant(np.concatenate([x, x])))]

    def _call(self, frontier: list[tf.Tensor], seeds: np.ndarray, segments: np.ndarray | None,
              first: int, count: int) -> np.ndarray:
        """One chunk graph call (shared masks when ``segments`` is None): (passes, rows, outputs).

        A single (pass, row) is padded to two rows, for the reason given in :meth:`_frontier`.
        """
        single = count == 1 and int(frontier[0].shape[0]) == 1
        if single:
            frontier = [tf.concat([h, h], axis=0) for h in frontier]
            segments = None if segments is None else np.concatenate([segments, segments])
        passes = (_int32(first), _int32(count))
        y = (self._chunk_fn(*frontier, tf.constant(seeds), *passes) if segments is None
             else self._segments_fn(*frontier, tf.constant(seeds), tf.constant(segments),
                                    *passes)).numpy()
        return y[:, :1] if single else y

    def _whole_call(self, x: np.ndarray, seeds: np.ndarray, segments: np.ndarray | None,
                    count: int) -> np.ndarray:
        """Prefix and all ``count`` passes in one graph call: (passes, rows, outputs)."""
        rows = x.shape[0]
        padded = tf.constant(x if rows > 1 else np.concatenate([x, x]))  # see _frontier
        if segments is None:
            return self._whole_fn(padded, _int32(rows), tf.constant(seeds), _int32(count)).numpy()
        return self._whole_segments_fn(padded, _int32(rows), tf.constant(seeds),
                                       tf.constant(segments), _int32(count)).numpy()

    def _sample(self, x: np.ndarray, samples: int, block: int, chunk: int,
                run_chunk: sampling.ChunkRunner, whole: Callable[[], np.ndarray],
                tolerance: float | None = None, keep_raw: bool = False,
                should_stop: Callable[[], bool] | None = None) -> sampling.PassStats:
        """Run the passes: in one graph call when they fit in one, else chunk by chunk.

        ``whole()`` makes the one call; it is not used for a single pass of a single row, whose
        one-row product would take oneDNN's one-row kernel (see _frontier).
        """
        classify = self.task == "classification"
        if block >= x.shape[0] and chunk >= samples and x.shape[0] * samples > 1:
            out = sampling.PassStats()
            out.add(whole(), classify, keep_raw)
            if should_stop is not None and should_stop():
                raise CancelledError("prediction cancelled: the caller gave up or its deadline "
                                     "passed")
            return out
        blocks = [slice(i, min(i + block, x.shape[0])) for i in range(0, x.shape[0], block)]

        def converged(so_far: sampling.PassStats) -> bool:
            m = so_far.moments
            assert tolerance is not None
            return float(np.max(np.sqrt(m.variance() / m.count)) * self._space.scale()) <= tolerance

        return sampling.sample([self._frontier(x[b]) for b in blocks], blocks, samples, chunk,
                               run_chunk, classify=classify,
                               keep_raw=keep_raw,
                               converged=None if tolerance is None else converged,
                               should_stop=should_stop)

    def _run(self, x: np.ndarray, samples: int, seed: int, tolerance: float | None,
             levels: tuple[float, ...], keep_raw: bool, return_samples: bool,
             should_stop: Callable[[], bool] | None) -> Prediction:
        block, chunk = self._plan(x.shape[0], samples, tolerance is not None)
        words = np.array(_seed_words(seed), dtype=np.uint32)

        def run_chunk(rows: slice, frontier: list[tf.Tensor], first: int, count: int
                      ) -> np.ndarray:
            return self._call(frontier, words, None, first, count)

        sampled = self._sample(x, samples, block, chunk, run_chunk,
                               lambda: self._whole_call(x, words, None, samples), tolerance,
                               keep_raw, should_stop)
        return self._space.summarise(sampled, seed, levels, return_samples)
