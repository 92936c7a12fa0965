"""Counter-based random numbers for dropout masks, addressed by (seed, layer, pass, unit).

Keras draws masks from a stateful generator, so a pass's mask depends on everything drawn before
it. Here every mask element is a pure function of its coordinates, hashed with a strong 32-bit
mixer. That makes a request's result independent of how its passes are chunked and of which other
rows share its batch, and lets any answer be reproduced from its seed alone.

Masks are drawn by *mask rows*: a row is one (key, pass) pair and holds one word per unit. A
single request shares one mask row per pass among all its rows; a merged batch of requests with
different seeds needs one mask row per (pass, input row), each with its own request's key. The
words of a row depend only on its (key, pass), so both layouts give a request the same masks.

Hashing is a chain of about twenty integer operations per word. TensorFlow runs each as its own
pass over memory, with slow scalar kernels for some (RightShift), while one XLA-fused kernel does
the whole chain in a single loop. :func:`row_keep` can therefore run the chain fused
(``fused=True``, what the dropout layers use), on row counts rounded up to a power of two so that
a handful of compiled shapes serve every request; :func:`pass_keep` is always fused.
"""

from __future__ import annotations

import tensorflow as tf

_GOLDEN = 0x9E3779B9
_M1 = 0x7FEB352D
_M2 = 0x846CA68B
_MIN_FUSED_ROWS = 64  # the smallest compiled row count: tiny batches share one shape


def _u32(value: int) -> tf.Tensor:
    return tf.constant(value & 0xFFFFFFFF, dtype=tf.uint32)


def mix32(x: tf.Tensor) -> tf.Tensor:
    """A bijective avalanche mix of uint32 values (Wellons' "lowbias32")."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(16)))
    x = x * _u32(_M1)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(15)))
    x = x * _u32(_M2)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(16)))


def _mix32_int(x: int) -> int:
    """:func:`mix32` of one Python integer (for constants, computed once on the host)."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * _M1) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * _M2) & 0xFFFFFFFF
    return x ^ (x >> 16)


def _stream_salt(stream: int) -> int:
    return _mix32_int(stream * _GOLDEN + 1)


def _salted_key(seed: tf.Tensor, salt: tf.Tensor) -> tf.Tensor:
    low = mix32(tf.bitwise.bitwise_xor(seed[..., 0], salt)) + _u32(_GOLDEN)
    return mix32(tf.bitwise.bitwise_xor(low, seed[..., 1]))


def stream_key(seed: tf.Tensor, stream: int) -> tf.Tensor:
    """Derive uint32 keys for one random stream (a layer, a mask role) from seeds.

    Args:
        seed: uint32 tensor of shape (..., 2): the low and high halves of 64-bit seeds.
        stream: An integer in [0, 2**32) naming the stream (laid out by
            :func:`mcdropout.engine.rnn_masks.mask_stream`); for one seed, distinct streams
            give distinct keys.

    Returns:
        uint32 keys of shape (...): a scalar for one seed, (S,) for S seeds.
    """
    return _salted_key(seed, _u32(_stream_salt(stream)))


def row_words(keys: tf.Tensor, passes: tf.Tensor, units: int) -> tf.Tensor:
    """Random uint32 words of shape (rows, units); row r is a pure function of (keys[r], passes[r]).

    Args:
        keys: uint32 (rows,): the stream key of each mask row.
        passes: uint32 (rows,): the pass index of each mask row.
        units: Words per row; word j depends only on (key, pass, j).
    """
    per_pass = mix32(keys + passes * _u32(_GOLDEN))[:, None]  # (rows, 1)
    unit_key = mix32(tf.bitwise.bitwise_xor(keys, _u32(_M1)))[:, None]
    unit_ids = mix32(tf.cast(tf.range(units), tf.uint32)[None, :] * _u32(_M2) + unit_key)
    # Hash the (pass, unit) pair, not just the XOR of their hashes: equal halves would cancel to
    # a fixed word and always drop that unit.
    pair = mix32(tf.bitwise.bitwise_xor(per_pass, unit_ids))
    return mix32(pair + per_pass)


def _threshold(rate: float) -> int:
    return min(round(rate * 2.0**32), 0xFFFFFFFF)


def _keep_values(keys: tf.Tensor, passes: tf.Tensor, threshold: tf.Tensor, scale: tf.Tensor,
                 units: int) -> tf.Tensor:
    kept = row_words(keys, passes, units) >= threshold
    return tf.where(kept, scale, tf.zeros_like(scale))


_fused_keep_values = tf.function(_keep_values, jit_compile=True, reduce_retracing=True)


def _pass_keep_values(seed: tf.Tensor, salt: tf.Tensor, passes: tf.Tensor, threshold: tf.Tensor,
                      scale: tf.Tensor, units: int) -> tf.Tensor:
    keys = tf.fill(tf.shape(passes), _salted_key(seed, salt))
    return _keep_values(keys, passes, threshold, scale, units)


_fused_pass_keep_values = tf.function(_pass_keep_values, jit_compile=True, reduce_retracing=True)


def bucket_size(n: int) -> int:
    """:func:`bucket` of a Python int: the row count a fused kernel compiles for ``n`` rows."""
    return 1 << (max(n, _MIN_FUSED_ROWS) - 1).bit_length()


def bucket(n: tf.Tensor) -> tf.Tensor:
    """The smallest power of two >= n (and >= _MIN_FUSED_ROWS), for int32 n >= 1.

    Fused kernels compile once per row count; rounding row counts up to these sizes keeps the
    number of compiled shapes to a handful.
    """
    v = tf.maximum(n, _MIN_FUSED_ROWS) - 1
    for shift in (1, 2, 4, 8, 16):
        v = tf.bitwise.bitwise_or(v, tf.bitwise.right_shift(v, shift))
    return v + 1


def row_keep(keys: tf.Tensor, passes: tf.Tensor, units: int, rate: float, scale: tf.Tensor,
             fused: bool = False) -> tf.Tensor:
    """Dropout keep values of shape (rows, units): ``scale`` with probability 1 - rate, else 0.

    Args:
        keys, passes: uint32 (rows,): each mask row's stream key and pass index.
        units: Values per row.
        rate: Drop probability in [0, 1).
        scale: Scalar tensor (in the activations' dtype) returned for kept units.
        fused: Run the hash as one XLA-compiled loop. The words, and so the values, are the same
            bits either way (integer arithmetic); fused only changes the speed.
    """
    threshold = _u32(_threshold(rate))
    if not fused:
        return _keep_values(keys, passes, threshold, scale, units)
    rows = tf.shape(keys)[0]
    pad = [[0, bucket(rows) - rows]]
    values = _fused_keep_values(tf.pad(keys, pad), tf.pad(passes, pad), threshold, scale, units)
    return values[:rows]  # a leading-dimension slice: TensorFlow shares the buffer, no copy


def pass_keep(seed: tf.Tensor, stream: int, passes: tf.Tensor, count: tf.Tensor, units: int,
              rate: float, scale: tf.Tensor) -> tf.Tensor:
    """Keep values of shape (count, units) for one seed's passes: :func:`row_keep` of one key.

    The words are those of ``row_keep(fill(stream_key(seed, stream)), passes[:count], ...)``,
    but the key is derived inside the one XLA kernel, which saves a score of small TensorFlow
    ops per layer and request.

    Args:
        seed: uint32 (2,), one request's seed.
        stream: The layer's stream, as for :func:`stream_key`.
        passes: uint32 (rows,), the pass indices, padded to a :func:`bucket` size; rows past
            ``count`` are computed and dropped.
        count: The rows wanted, at most ``len(passes)``.
        units, rate, scale: As for :func:`row_keep`.
    """
    values = _fused_pass_keep_values(seed, _u32(_stream_salt(stream)), passes,
                                     _u32(_threshold(rate)), scale, units)
    return values[:count]  # a leading-dimension slice: no copy


def row_normal(keys: tf.Tensor, passes: tf.Tensor, units: int,
               dtype: tf.DType = tf.float32) -> tf.Tensor:
    """Standard normal (rows, units) values by the Box-Muller transform of two hash streams."""
    scale = 2.0**-24
    other = mix32(tf.bitwise.bitwise_xor(keys, _u32(_M2)))
    u1 = (tf.cast(tf.bitwise.right_shift(row_words(keys, passes, units), _u32(8)),
                  tf.float32) + 0.5) * scale
    u2 = tf.cast(tf.bitwise.right_shift(row_words(other, passes, units), _u32(8)),
                 tf.float32) * scale
    z = tf.sqrt(-2.0 * tf.math.log(u1)) * tf.cos(2.0 * 3.141592653589793 * u2)
    return tf.cast(z, dtype)


def seed_words(seed: int) -> tuple[int, int]:
    """A 64-bit seed as the (low, high) uint32 pair the functions above take as ``seed``."""
    return seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF

