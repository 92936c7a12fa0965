"""The traced graphs of one model: its deterministic prefix, and chunks of stochastic passes.

Every graph has a fixed signature and is traced once. Two kinds of chunk exist: one seed for all
rows (a single request: one mask row per pass), or one seed per row's request (a merged batch,
``segments`` naming each row's request). Either comes as a "chunk" graph over prefix outputs
already computed, or as a "whole" graph that runs the prefix and every pass in one call, for the
common request that fits the memory budget at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mcdropout.engine.layers import PassWindow, is_mask_layer, mc_mode
from mcdropout.engine.split import SplitModel
from mcdropout.engine.tracing import expect_retracing

# Each model traces its graphs once, with fixed signatures, but TensorFlow counts traces of the
# same method across instances: a server with several models or a grid search would warn.
expect_retracing("PassGraphs")


class _Graph:
    """A traced function with a fixed signature, called through its one concrete function.

    Calling the ``tf.function`` itself binds and checks the arguments against every signature
    it knows on each call; the concrete function behind the one signature skips that work.
    Arguments must be tensors of the signature's dtypes.
    """

    def __init__(self, fn: Callable[..., Any], signature: list[tf.TensorSpec]) -> None:
        self._function = tf.function(fn, input_signature=signature)
        self._concrete: Any = None
        self._flat: Callable[..., Any] | None = None

    def __call__(self, *args: tf.Tensor) -> Any:
        if self._concrete is None:  # traced on first use, not when the model is loaded
            self._concrete = self._function.get_concrete_function()
            self._flat = flat_call(self._concrete)
        if self._flat is not None:
            return self._flat(list(args), self._concrete.captured_inputs)
        return self._concrete(*args)


def flat_call(concrete: Any) -> Callable[..., Any] | None:
    """The concrete function's flat entry, ``_call_flat(tensors, captured)``, or None where this
    TensorFlow lacks it.

    Calling a concrete function canonicalises and binds its arguments against its structured
    signature first, about 0.1 ms of Python under the GIL per call, which a server pays on every
    engine call while its event loop waits for the GIL. Every signature here is a flat list of
    tensors, so the binding is the identity and the flat entry gives the same outputs (a test
    holds the two equal). It is TensorFlow's private API, hence the fallback.
    """
    entry = getattr(concrete, "_call_flat", None)
    return entry if callable(entry) and hasattr(concrete, "captured_inputs") else None


def _int32(value: int) -> tf.Tensor:
    return tf.constant(value, tf.int32)


def _two_rows(values: list[Any], concat: Callable[[list[Any]], Any]) -> list[Any]:
    """Each of ``values`` (one row each) as two copies of its row.

    No graph ever multiplies a single row: oneDNN takes a different kernel (gemv) for a one-row
    matrix, which rounds differently, and a request's row must give the same bits whether it
    comes alone or in a merged batch. A second copy of the row costs one row of work.
    """
    return [concat([v, v]) for v in values]


def mask_first(model: Any, split: SplitModel, prefix_caching: bool) -> list[Any] | None:
    """A Sequential model's suffix layers when the first is a dropout layer fed by the frontier
    alone (and no Keras mask rides on the frontier, which its direct call would drop), else
    None: see :class:`PassGraphs`."""
    if not (isinstance(model, keras.Sequential) and prefix_caching and not split.masks):
        return None
    suffix = list(model.layers[split.prefix_layers:])
    return suffix if suffix and is_mask_layer(suffix[0]) else None


class PassGraphs:
    """The compiled graphs of a split model in MC mode.

    A model with several inputs takes them as several arguments, in its input order; a model
    with several outputs (heads) gives them flattened and concatenated on the last axis, in its
    output order (split per head in numpy, :class:`.sampling.JointStats`).

    Args:
        model: The Keras model (its stochastic layers are patched while tracing only).
        split: The model cut into prefix and suffix.
        inputs: Each input's (row shape, dtype); None marks a variable dimension.
        mask_first: The suffix's layers when its first layer is a dropout layer fed by the
            frontier alone (it then masks the rows straight into passes x rows), else None.
        binary: Per output: a one-unit sigmoid classifier, whose outputs become two class
            probabilities.

    Attributes:
        trace_count: How many times a graph body was traced (tests check there is no retrace).
    """

    def __init__(self, model: Any, split: SplitModel,
                 inputs: Sequence[tuple[tuple[int | None, ...], str]],
                 mask_first: list[Any] | None, binary: Sequence[bool]) -> None:
        self._model, self._split = model, split
        self._mask_first, self._binary = mask_first, tuple(binary)
        self.trace_count = 0
        rows = [tf.TensorSpec((None, *shape), dtype) for shape, dtype in inputs]
        seed, seeds = tf.TensorSpec((2,), tf.uint32), tf.TensorSpec((None, 2), tf.uint32)
        segments, scalar = tf.TensorSpec((None,), tf.int32), tf.TensorSpec((), tf.int32)
        self._prefix_fn = _Graph(self._prefix, rows)
        self._chunk_fn = _Graph(self._chunk, [*split.frontier, seed, scalar, scalar])
        self._segments_fn = _Graph(self._segments_chunk,
                                   [*split.frontier, seeds, segments, scalar, scalar])
        self._whole_fn = _Graph(self._whole, [*rows, scalar, seed, scalar])
        self._whole_segments_fn = _Graph(self._whole_segments,
                                         [*rows, scalar, seeds, segments, scalar])

    # -- calls from the host ---------------------------------------------------------------------
    def frontier(self, xs: Sequence[np.ndarray]) -> list[tf.Tensor]:
        """The prefix outputs of rows ``xs`` (one array per input, standardised, the model's
        dtypes)."""
        if xs[0].shape[0] > 1:
            return list(self._prefix_fn(*(tf.constant(x) for x in xs)))
        padded = _two_rows(list(xs), np.concatenate)
        return [h[:1] for h in self._prefix_fn(*(tf.constant(p) for p in padded))]

    def chunk(self, frontier: list[tf.Tensor], seeds: np.ndarray, segments: np.ndarray | None,
              first: int, count: int) -> np.ndarray:
        """Passes ``first .. first+count-1`` over prefix outputs: (passes, rows, outputs).

        ``seeds`` is uint32 (2,) with ``segments`` None (one request), or (S, 2) with int32
        ``segments`` (rows,) naming each row's seed.
        """
        single = count == 1 and int(frontier[0].shape[0]) == 1
        if single:
            frontier = _two_rows(frontier, lambda v: tf.concat(v, axis=0))
            if segments is not None:
                segments = _two_rows([segments], np.concatenate)[0]
        passes = (_int32(first), _int32(count))
        y = (self._chunk_fn(*frontier, tf.constant(seeds), *passes) if segments is None
             else self._segments_fn(*frontier, tf.constant(seeds), tf.constant(segments),
                                    *passes)).numpy()
        return y[:, :1] if single else y

    def whole(self, xs: Sequence[np.ndarray], seeds: np.ndarray, segments: np.ndarray | None,
              count: int) -> np.ndarray:
        """The prefix and all ``count`` passes in one call: (passes, rows, outputs)."""
        rows = xs[0].shape[0]
        padded = [tf.constant(x) for x in (xs if rows > 1 else _two_rows(list(xs),
                                                                         np.concatenate))]
        if segments is None:
            return self._whole_fn(*padded, _int32(rows), tf.constant(seeds),
                                  _int32(count)).numpy()
        return self._whole_segments_fn(*padded, _int32(rows), tf.constant(seeds),
                                       tf.constant(segments), _int32(count)).numpy()

    # -- traced bodies ---------------------------------------------------------------------------
    def _prefix(self, *xs: tf.Tensor) -> list[tf.Tensor]:
        self.trace_count += 1
        return list(self._split.prefix(xs))

    def _chunk(self, *args: tf.Tensor) -> tf.Tensor:
        *frontier, seed, first, count = args
        return self._passes(frontier, PassWindow(seed, first, count))

    def _segments_chunk(self, *args: tf.Tensor) -> tf.Tensor:
        *frontier, seeds, segments, first, count = args
        return self._passes(frontier, PassWindow(seeds, first, count, segments))

    def _whole(self, *args: tf.Tensor) -> tf.Tensor:
        *xs, rows, seed, count = args
        frontier = [h[:rows] for h in self._split.prefix(xs)]  # xs may hold a lone row twice
        return self._passes(frontier, PassWindow(seed, tf.constant(0), count))

    def _whole_segments(self, *args: tf.Tensor) -> tf.Tensor:
        *xs, rows, seeds, segments, count = args
        frontier = [h[:rows] for h in self._split.prefix(xs)]
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
                outputs = [y]
            else:
                tiled = []
                for h in frontier:
                    reps = tf.concat([[count], tf.ones([len(h.shape)], tf.int32)], axis=0)
                    tiled.append(tf.reshape(tf.tile(h[None], reps),
                                            tf.concat([[-1], tf.shape(h)[1:]], axis=0)))
                outputs = self._split.suffix(tiled)
        heads = []
        for y, binary in zip(outputs, self._binary, strict=True):
            y = tf.reshape(tf.cast(y, tf.float32), [count, tf.shape(frontier[0])[0], -1])
            heads.append(tf.concat([1.0 - y, y], axis=-1) if binary else y)
        # (passes, rows, outputs of every head); the statistics are taken in sampling.JointStats
        return heads[0] if len(heads) == 1 else tf.concat(heads, axis=-1)
