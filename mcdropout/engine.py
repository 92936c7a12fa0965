"""The Monte Carlo engine: T stochastic passes, vectorised, chunked, reduced to statistics.

A request's T passes are folded into the batch dimension of compiled graph calls (no Python loop
over passes). Passes are taken in chunks, and rows in blocks, sized so the live activations stay
under a memory budget; each chunk is reduced in the graph to float64 (mean, M2) and merged across
chunks with Chan's update. The deterministic prefix of the model runs once per row.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mcdropout import stats
from mcdropout.errors import (
    CancelledError,
    InvalidArgumentError,
    NoStochasticLayersError,
    ResourceLimitError,
)
from mcdropout.graph import split_model
from mcdropout.layers import PassWindow, StochasticLayer, find_stochastic_layers, mc_mode
from mcdropout.prediction import Interval, Prediction, Task
from mcdropout.store import ModelInfo, as_array

MAX_INTERVAL_LEVELS = 16
_SEED_LIMIT = 2**64


class _OneTracePerPredictor(logging.Filter):
    """Drop TensorFlow's "frequent retracing" warning about our graphs.

    Each predictor traces its two graphs once, with fixed signatures; TensorFlow counts traces of
    the same method across *instances* and warns once a process has built five predictors (a
    server with several models, a grid search), which reads like a per-request retrace.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("triggered tf.function retracing" in text and "MCDropoutPredictor" in text)


logging.getLogger("tensorflow").addFilter(_OneTracePerPredictor())


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
        width = int(np.prod(model(tf.zeros((1, *self.input_shape), self.input_dtype)).shape[1:]))
        self._binary = self.task == "classification" and width == 1
        self.output_dim = 2 if self._binary else width
        scale = float(self._target_std[0]) if self._target_std is not None else 1.0
        self.tau = None if tau is None else float(tau) / scale**2
        self.trace_count = 0
        self._prefix_fn = tf.function(
            self._prefix, input_signature=[tf.TensorSpec((None, *self.input_shape),
                                                         self.input_dtype)])
        window_spec = [tf.TensorSpec((2,), tf.uint32), tf.TensorSpec((), tf.int32),
                       tf.TensorSpec((), tf.int32)]
        self._chunk_fn = tf.function(self._chunk,
                                     input_signature=[*self._split.frontier, *window_spec])

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

    def _chunk(self, *args: tf.Tensor) -> dict[str, tf.Tensor]:
        self.trace_count += 1
        *frontier, seed, first, count = args
        tiled = []
        for h in frontier:
            reps = tf.concat([[count], tf.ones([len(h.shape)], tf.int32)], axis=0)
            tiled.append(tf.reshape(tf.tile(h[None], reps),
                                    tf.concat([[-1], tf.shape(h)[1:]], axis=0)))
        with mc_mode(self._model, PassWindow(seed, first, count)):
            y = self._split.suffix(tiled)
        y = tf.reshape(tf.cast(y, tf.float32), [count, tf.shape(frontier[0])[0], -1])
        if self._binary:
            y = tf.concat([1.0 - y, y], axis=-1)
        y64 = tf.cast(y, tf.float64)
        mean = tf.reduce_mean(y64, axis=0)
        out = {"y": y, "mean": mean, "m2": tf.reduce_sum(tf.square(y64 - mean), axis=0)}
        if self.task == "classification":
            out["entropy"] = tf.reduce_sum(-tf.reduce_sum(tf.math.xlogy(y64, y64), -1), axis=0)
            out["votes"] = tf.reduce_sum(
                tf.one_hot(tf.argmax(y, axis=-1), self.output_dim, dtype=tf.float64), axis=0)
        return out

    # -- public API ----------------------------------------------------------------------------
    def warmup(self) -> None:
        """Trace and run the graphs once so the first real request pays no compile time."""
        self.predict(np.zeros((1, *self.input_shape), self.input_dtype), samples=2, seed=0)

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
        rows = self._check_inputs(x)
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

    # -- validation ------------------------------------------------------------------------------
    def _check_inputs(self, x: Any) -> np.ndarray:
        arr = np.asarray(x)
        want = "(rows, " + ", ".join(map(str, self.input_shape)) + ")"
        if arr.dtype.kind not in "biuf":
            raise InvalidArgumentError(f"inputs must be numeric, got dtype {arr.dtype}")
        if arr.ndim != 1 + len(self.input_shape) or tuple(arr.shape[1:]) != self.input_shape:
            raise InvalidArgumentError(f"inputs must have shape {want}, got {tuple(arr.shape)}")
        if arr.shape[0] == 0:
            raise InvalidArgumentError(f"inputs must hold at least one row of shape {want}, got 0")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            row = int(np.argwhere(~np.isfinite(arr.reshape(arr.shape[0], -1)))[0][0])
            raise InvalidArgumentError(
                f"inputs contain NaN or Inf (first in row {row}); only finite values are allowed")
        out = arr.astype(np.float64)
        if self._feature_mean is not None:
            out = out - self._feature_mean
        if self._feature_std is not None:
            out = out / self._feature_std
        return out.astype(self.input_dtype)

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
    def _plan(self, rows: int, samples: int, adaptive: bool) -> tuple[int, int]:
        per_row = self._split.per_row_bytes + 16 * self.output_dim
        block = max(1, min(rows, self.memory_budget_bytes // per_row))
        chunk = max(1, min(samples, self.memory_budget_bytes // (block * per_row)))
        if adaptive:
            chunk = min(chunk, max(10, samples // 20))
        return block, chunk

    def _run(self, x: np.ndarray, samples: int, seed: int, tolerance: float | None,
             levels: tuple[float, ...], keep_raw: bool, return_samples: bool,
             should_stop: Callable[[], bool] | None) -> Prediction:
        rows = x.shape[0]
        block, chunk = self._plan(rows, samples, tolerance is not None)
        seed_words = np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint32)
        blocks = [slice(i, min(i + block, rows)) for i in range(0, rows, block)]
        frontiers = [self._prefix_fn(tf.constant(x[b])) for b in blocks]
        moments = stats.RunningMoments()
        entropy = np.zeros(rows) if self.task == "classification" else None
        votes = np.zeros((rows, self.output_dim)) if self.task == "classification" else None
        raw: list[np.ndarray] = []
        done = 0
        while done < samples:
            count = min(chunk, samples - done)
            parts = []
            for frontier in frontiers:
                parts.append(self._chunk_fn(*frontier, seed_words, np.int32(done), np.int32(count)))
                if should_stop is not None and should_stop():
                    raise CancelledError("prediction cancelled: the caller gave up or its "
                                         "deadline passed")
            moments.merge(count, np.concatenate([p["mean"].numpy() for p in parts]),
                          np.concatenate([p["m2"].numpy() for p in parts]))
            if entropy is not None and votes is not None:
                entropy += np.concatenate([p["entropy"].numpy() for p in parts])
                votes += np.concatenate([p["votes"].numpy() for p in parts])
            if keep_raw:
                raw.append(np.concatenate([p["y"].numpy() for p in parts], axis=1))
            done += count
            if tolerance is not None and done >= 2:
                worst = float(np.max(np.sqrt(moments.variance() / done)) * self._scale())
                if worst <= tolerance:
                    break
        return self._summarise(moments, entropy, votes, raw, seed, levels, return_samples)

    def _scale(self) -> float:
        if self.task == "regression" and self._target_std is not None:
            return float(np.max(self._target_std))
        return 1.0

    def _to_target_units(self, values: np.ndarray, shift: bool = True) -> np.ndarray:
        if self.task != "regression":
            return values
        if self._target_std is not None:
            values = values * self._target_std
        if shift and self._target_mean is not None:
            values = values + self._target_mean
        return values

    def _summarise(self, moments: stats.RunningMoments, entropy: np.ndarray | None,
                   votes: np.ndarray | None, raw: list[np.ndarray], seed: int,
                   levels: tuple[float, ...], return_samples: bool) -> Prediction:
        assert moments.mean is not None
        n = moments.count
        mean = self._to_target_units(moments.mean)
        std = self._to_target_units(np.sqrt(moments.variance()), shift=False)
        passes = self._to_target_units(np.concatenate(raw).astype(np.float64)) if raw else None
        result: dict[str, Any] = {}
        if self.task == "regression":
            if self.tau is not None:
                result["predictive_std"] = np.sqrt(std**2 + 1.0 / self.tau)
            if passes is not None and levels:
                bounds = (stats.mixture_intervals(passes, self.tau**-0.5, levels)
                          if self.tau is not None else stats.empirical_intervals(passes, levels))
                result["intervals"] = tuple(Interval(lv, lo, hi)
                                            for lv, (lo, hi) in zip(levels, bounds, strict=True))
        else:
            assert entropy is not None and votes is not None
            predictive = stats.entropy(mean)
            expected = entropy / n
            result.update(
                predicted_class=np.argmax(mean, axis=-1).astype(np.int64),
                predictive_entropy=predictive,
                expected_entropy=expected,
                mutual_information=stats.mutual_information(predictive, expected),
                variation_ratio=1.0 - votes.max(axis=-1) / n,
            )
            if passes is not None and levels:
                result["intervals"] = tuple(
                    Interval(lv, lo, hi) for lv, (lo, hi)
                    in zip(levels, stats.empirical_intervals(passes, levels), strict=True))
        if return_samples and passes is not None:
            result["raw_samples"] = passes.astype(np.float32)
        return Prediction(task=self.task, samples=n, seed=seed, mean=mean, std=std,
                          standard_error=std / math.sqrt(n), **result)
