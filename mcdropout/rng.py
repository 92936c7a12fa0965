"""Counter-based random numbers for dropout masks, addressed by (seed, layer, pass, unit).

Keras draws masks from a stateful generator, so a pass's mask depends on everything drawn before
it. Here every mask element is a pure function of its coordinates, hashed with a strong 32-bit
mixer. That makes a request's result independent of how its passes are chunked and of which other
rows share its batch, and lets any answer be reproduced from its seed alone.
"""

from __future__ import annotations

import tensorflow as tf

_GOLDEN = 0x9E3779B9
_M1 = 0x7FEB352D
_M2 = 0x846CA68B


def _u32(value: int) -> tf.Tensor:
    return tf.constant(value & 0xFFFFFFFF, dtype=tf.uint32)


def mix32(x: tf.Tensor) -> tf.Tensor:
    """A bijective avalanche mix of uint32 values (Wellons' "lowbias32")."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(16)))
    x = x * _u32(_M1)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(15)))
    x = x * _u32(_M2)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(16)))


def stream_key(seed: tf.Tensor, stream: int) -> tf.Tensor:
    """Derive a scalar uint32 key for one random stream (a layer, a mask role) from a seed.

    Args:
        seed: uint32 tensor of shape (2,): the low and high halves of a 64-bit seed.
        stream: A small integer naming the stream; distinct streams give independent numbers.
    """
    salt = mix32(_u32(stream * _GOLDEN + 1))
    low = mix32(tf.bitwise.bitwise_xor(seed[0], salt)) + _u32(_GOLDEN)
    return mix32(tf.bitwise.bitwise_xor(low, seed[1]))


def hash_bits(key: tf.Tensor, first_pass: tf.Tensor, passes: tf.Tensor, units: int) -> tf.Tensor:
    """Random uint32 words of shape (passes, units) for passes first_pass .. first_pass+passes-1.

    Element (t, j) depends only on (key, first_pass + t, j).
    """
    pass_ids = tf.cast(first_pass + tf.range(passes), tf.uint32)
    per_pass = mix32(key + pass_ids * _u32(_GOLDEN))  # (passes,)
    unit_key = mix32(tf.bitwise.bitwise_xor(key, _u32(_M1)))
    unit_ids = mix32(tf.cast(tf.range(units), tf.uint32) * _u32(_M2) + unit_key)  # (units,)
    # Hash the (pass, unit) pair, not just the XOR of their hashes: equal halves would cancel to
    # a fixed word and always drop that unit.
    pair = mix32(tf.bitwise.bitwise_xor(per_pass[:, None], unit_ids[None, :]))
    return mix32(pair + per_pass[:, None])


def keep_mask(key: tf.Tensor, first_pass: tf.Tensor, passes: tf.Tensor, units: int,
              rate: float) -> tf.Tensor:
    """Boolean (passes, units) mask, each element True with probability 1 - rate (to 2**-32)."""
    threshold = min(round(rate * 2.0**32), 0xFFFFFFFF)
    return hash_bits(key, first_pass, passes, units) >= _u32(threshold)


def standard_normal(key: tf.Tensor, first_pass: tf.Tensor, passes: tf.Tensor, units: int,
                    dtype: tf.DType = tf.float32) -> tf.Tensor:
    """Standard normal (passes, units) values by the Box-Muller transform of two hash streams."""
    scale = 2.0**-24
    other = mix32(tf.bitwise.bitwise_xor(key, _u32(_M2)))
    u1 = (tf.cast(tf.bitwise.right_shift(hash_bits(key, first_pass, passes, units), _u32(8)),
                  tf.float32) + 0.5) * scale
    u2 = tf.cast(tf.bitwise.right_shift(hash_bits(other, first_pass, passes, units), _u32(8)),
                 tf.float32) * scale
    z = tf.sqrt(-2.0 * tf.math.log(u1)) * tf.cos(2.0 * 3.141592653589793 * u2)
    return tf.cast(z, dtype)


def split_seed(seed: int) -> tf.Tensor:
    """A 64-bit seed as the uint32 pair the functions above take."""
    return tf.constant([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF], dtype=tf.uint32)
