"""The dropout family: finding stochastic layers and running them in Monte Carlo mode.

In MC mode only these layers are random; every other layer (BatchNormalization included) runs in
inference mode. Masks come from :mod:`mcdropout.engine.rng`, one per pass, shared by all rows of the
request: each row still sees exactly the distribution of ordinary dropout, while the answer for a
row cannot depend on which other rows share its batch. A merged batch of several requests
(:class:`PassWindow` with ``segments``) gives each row the masks of its own request's seed, so
each request gets the masks it would get alone. Recurrent layers get one mask per sequence for
all time steps (variational RNN dropout, Gal & Ghahramani 2016; see :mod:`.rnn_masks`, which also
lays out the random stream of every mask).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from mcdropout.engine import rng
from mcdropout.engine.rnn_masks import mask_stream, rnn_cells, rnn_patches
from mcdropout.errors import NoStochasticLayersError

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


@dataclass(frozen=True)
class StochasticLayer:
    """A layer that makes the model's passes differ.

    Attributes:
        name: The Keras layer name.
        kind: The Keras class name ("Dropout", "SpatialDropout2D", "LSTM", ...).
        rate: Drop probability (for recurrent layers, of the inputs).
        recurrent_rate: Recurrent layers only: drop probability of the recurrent state.
    """

    name: str
    kind: str
    rate: float
    recurrent_rate: float = 0.0


def is_mask_layer(layer: Any) -> bool:
    """Whether ``layer`` is a Dropout, GaussianDropout or AlphaDropout with a rate above 0.

    In MC mode its call takes ``untiled=True`` for inputs that hold each row once for all
    passes (see :func:`_per_pass`).
    """
    mask_layers = (keras.layers.Dropout, keras.layers.GaussianDropout, keras.layers.AlphaDropout)
    return isinstance(layer, mask_layers) and float(layer.rate) > 0.0


def _describe(layer: Any) -> StochasticLayer | None:
    if is_mask_layer(layer):
        return StochasticLayer(layer.name, type(layer).__name__, float(layer.rate))
    cells = rnn_cells(layer)
    if cells:
        return StochasticLayer(layer.name, type(layer).__name__, float(cells[0].dropout),
                               float(cells[0].recurrent_dropout))
    return None


def _all_layers(model: Any) -> list[Any]:
    return list(model._flatten_layers(include_self=False, recursive=True))


def find_stochastic_layers(model: Any) -> tuple[StochasticLayer, ...]:
    """The layers of ``model`` (nested ones included) that MC dropout samples, in model order.

    Dropout layers with rate 0 do nothing and are not listed.
    """
    found = (_describe(layer) for layer in _all_layers(model))
    return tuple(f for f in found if f is not None)


def require_stochastic(model: Any) -> tuple[StochasticLayer, ...]:
    """The stochastic layers of ``model``; NoStochasticLayersError when it has none."""
    found = find_stochastic_layers(model)
    if not found:
        raise NoStochasticLayersError(
            f"model {getattr(model, 'name', '?')!r} has no dropout layer with a rate above 0 "
            "(Dropout, SpatialDropout1D/2D/3D, GaussianDropout, AlphaDropout, or an RNN with "
            "dropout/recurrent_dropout), so every pass would be identical")
    return found


def contains_stochastic(layer: Any) -> bool:
    """Whether ``layer`` is, or (as a nested model or wrapper) holds, a stochastic layer."""
    if _describe(layer) is not None:
        return True
    flatten = getattr(layer, "_flatten_layers", None)
    return flatten is not None and any(_describe(sub) is not None
                                       for sub in flatten(include_self=False, recursive=True))


@dataclass(frozen=True)
class PassWindow:
    """The passes a traced chunk computes: passes first .. first+count-1 of a request.

    Attributes:
        seed: uint32 (2,), one request's seed; or (S, 2), one seed per merged request.
        first: int32 scalar, the first pass.
        count: int32 scalar, the number of passes.
        segments: None when all rows share ``seed``; else int32 (rows,), the index into ``seed``
            of each row's request.
    """

    seed: tf.Tensor
    first: tf.Tensor
    count: tf.Tensor
    segments: tf.Tensor | None = None

    @functools.cached_property
    def padded_passes(self) -> tf.Tensor:
        """uint32 pass indices first, first+1, ... padded to an :func:`rng.bucket` size.

        Made once per traced chunk and shared by its layers' mask kernels.
        """
        return tf.cast(self.first + tf.range(rng.bucket(self.count)), tf.uint32)


_WINDOW: contextvars.ContextVar[PassWindow] = contextvars.ContextVar("mcdropout_window")
_PATCH_LOCK = threading.RLock()


def _mask_rows(window: PassWindow, stream: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Key and pass of each mask row: one per pass, or one per (pass, row) with segments."""
    keys = rng.stream_key(window.seed, stream)
    pass_ids = tf.cast(window.first + tf.range(window.count), tf.uint32)
    if window.segments is None:
        return tf.fill([window.count], keys), pass_ids
    rows = tf.size(window.segments)
    row_keys = tf.gather(keys, window.segments)
    # Mask rows in (pass, row) order, the order of the activations with passes folded in.
    return (tf.reshape(tf.tile(row_keys[None, :], [window.count, 1]), [-1]),
            tf.repeat(pass_ids, rows))


# draw(window, stream, units) -> (mask rows, units): the noise of a window's mask rows.
Draw = Callable[[PassWindow, int, Any], tf.Tensor]


def _noise(window: PassWindow, stream: int, tail: list[Any], draw: Draw) -> tf.Tensor:
    """Noise of shape (passes, 1 or rows, *tail) drawn by ``draw``."""
    units = 1
    for dim in tail:
        units = units * dim
    rows = 1 if window.segments is None else tf.size(window.segments)
    flat = draw(window, stream, units)
    return tf.reshape(flat, tf.concat([[window.count, rows], tf.stack(tail)], axis=0))


def _per_pass(x: tf.Tensor, window: PassWindow, noise: tf.Tensor,
              op: Callable[[tf.Tensor, tf.Tensor], tf.Tensor], untiled: bool = False
              ) -> tf.Tensor:
    """Apply ``op(x, noise)`` with x viewed as (passes, rows, ...) and noise broadcast over rows.

    ``untiled``: x holds the rows once, (rows, ...), the same for every pass; the result is
    (passes x rows, ...) all the same, without a tiled copy of x to multiply.
    """
    shape = tf.shape(x)
    if untiled:
        return tf.reshape(op(x[None], noise), tf.concat([[-1], shape[1:]], axis=0))
    grouped = tf.reshape(x, tf.concat([[window.count, -1], shape[1:]], axis=0))
    return tf.reshape(op(grouped, noise), shape)


def _dims(x: tf.Tensor) -> list[Any]:
    """Non-batch dimensions, static where known."""
    dynamic = tf.shape(x)
    return [d if d is not None else dynamic[i + 1] for i, d in enumerate(x.shape[1:])]


def _noise_tail(layer: Any, x: tf.Tensor) -> list[Any]:
    dims = _dims(x)
    if isinstance(layer, (keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
                          keras.layers.SpatialDropout3D)):
        channels_first = getattr(layer, "data_format", "channels_last") == "channels_first"
        keep = 0 if channels_first else len(dims) - 1
        return [d if i == keep else 1 for i, d in enumerate(dims)]
    noise_shape = getattr(layer, "noise_shape", None)
    if noise_shape is None:
        return dims
    return [dims[i] if n is None else n for i, n in enumerate(tuple(noise_shape)[1:])]


def _keep_scale(rate: float, dtype: tf.DType) -> tf.Tensor:
    """1 / (1 - rate) rounded once to ``dtype``, the value ``kept * (1 / (1 - rate))`` gives."""
    return tf.constant(1.0 / (1.0 - rate), dtype=dtype)


def _bernoulli(rate: float, scale: tf.Tensor) -> Draw:
    """A draw giving ``scale`` for kept units and 0 for dropped ones.

    The hash always runs as one XLA-fused kernel: TensorFlow runs each of its integer ops as a
    pass of its own over memory, some (RightShift) with slow scalar kernels, where the fused
    kernel does the whole chain in one loop.
    """

    def draw(window: PassWindow, stream: int, units: Any) -> tf.Tensor:
        if window.segments is None:
            return rng.pass_keep(window.seed, stream, window.padded_passes, window.count,
                                 units, rate, scale)
        keys, passes = _mask_rows(window, stream)
        return rng.row_keep(keys, passes, units, rate, scale, fused=True)

    return draw


def _dropout_call(layer: Any, stream: int) -> Callable[..., tf.Tensor]:
    rate = float(layer.rate)

    def call(inputs: tf.Tensor, training: Any = None, untiled: bool = False) -> tf.Tensor:
        window = _WINDOW.get()
        x = tf.convert_to_tensor(inputs)
        tail = _noise_tail(layer, x)

        if isinstance(layer, keras.layers.GaussianDropout):
            def normal(window: PassWindow, stream: int, units: Any) -> tf.Tensor:
                keys, passes = _mask_rows(window, stream)
                return rng.row_normal(keys, passes, units, x.dtype)

            z = _noise(window, stream, tail, normal)
            factor = 1.0 + (rate / (1.0 - rate)) ** 0.5 * z
            return _per_pass(x, window, factor, lambda g, n: g * n, untiled)
        if isinstance(layer, keras.layers.AlphaDropout):
            kept = _noise(window, stream, tail, _bernoulli(rate, tf.constant(1, x.dtype)))
            alpha_p = -_SELU_ALPHA * _SELU_SCALE
            a = ((1 - rate) * (1 + rate * alpha_p**2)) ** -0.5
            b = -a * alpha_p * rate
            return _per_pass(x, window, kept,
                             lambda g, k: a * (g * k + alpha_p * (1 - k)) + b, untiled)
        scaled = _noise(window, stream, tail, _bernoulli(rate, _keep_scale(rate, x.dtype)))
        return _per_pass(x, window, scaled, lambda g, m: g * m, untiled)

    return call


def _rnn_mask(stream: int, step_input: tf.Tensor, rate: float) -> tf.Tensor:
    """A scaled keep mask shaped like ``step_input`` (passes folded in), one for all time steps."""
    window = _WINDOW.get()
    draw = _bernoulli(rate, _keep_scale(rate, step_input.dtype))
    scaled = _noise(window, stream, _dims(step_input), draw)
    return _per_pass(tf.ones_like(step_input), window, scaled, lambda g, m: g * m)


@contextlib.contextmanager
def mc_mode(model: Any, window: PassWindow) -> Iterator[None]:
    """While tracing, make ``model``'s stochastic layers draw the masks of ``window``'s passes.

    Patches are installed on the layer instances for the duration of the block only, under a
    lock, so a traced graph holds the MC behaviour while the model itself is left unchanged.
    """
    patches: list[tuple[Any, str, Any]] = []
    index = 0
    for layer in _all_layers(model):
        if is_mask_layer(layer):
            patches.append((layer, "call", _dropout_call(layer, mask_stream(index))))
        elif rnn_cells(layer):
            patches.extend(rnn_patches(layer, index, _rnn_mask))
        else:
            continue
        index += 1
    with _PATCH_LOCK:
        token = _WINDOW.set(window)
        for obj, name, fn in patches:
            object.__setattr__(obj, name, fn)
        try:
            yield
        finally:
            for obj, name, _ in patches:
                object.__delattr__(obj, name)
            _WINDOW.reset(token)
