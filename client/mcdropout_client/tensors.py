"""Conversion between numpy arrays and the wire ``mcdropout.v1.Tensor`` (the one place it lives).

A Tensor carries a dtype enum, a shape, and the elements as raw little-endian bytes in C order.
The server's codec and this client both use :func:`to_proto` and :func:`from_proto`.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np

from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2

# Little-endian on purpose: the wire format is little-endian whatever the host is.
_BY_ENUM: dict[mcdropout_pb2.DataType.ValueType, np.dtype[Any]] = {
    mcdropout_pb2.FLOAT32: np.dtype("<f4"),
    mcdropout_pb2.FLOAT64: np.dtype("<f8"),
    mcdropout_pb2.FLOAT16: np.dtype("<f2"),
    mcdropout_pb2.INT8: np.dtype("i1"),
    mcdropout_pb2.INT16: np.dtype("<i2"),
    mcdropout_pb2.INT32: np.dtype("<i4"),
    mcdropout_pb2.INT64: np.dtype("<i8"),
    mcdropout_pb2.UINT8: np.dtype("u1"),
    mcdropout_pb2.UINT16: np.dtype("<u2"),
    mcdropout_pb2.UINT32: np.dtype("<u4"),
    mcdropout_pb2.UINT64: np.dtype("<u8"),
    mcdropout_pb2.BOOL: np.dtype("?"),
}
# Keyed by (kind, itemsize) so that byte order does not matter when looking an array's dtype up.
_BY_KIND: dict[tuple[str, int], mcdropout_pb2.DataType.ValueType] = {
    (d.kind, d.itemsize): e for e, d in _BY_ENUM.items()
}

SUPPORTED_DTYPES: tuple[str, ...] = tuple(str(d.newbyteorder("=")) for d in _BY_ENUM.values())
"""numpy dtype names that have a wire DataType."""


def dtype_to_enum(dtype: np.dtype[Any] | type | str) -> mcdropout_pb2.DataType.ValueType:
    """Return the wire ``DataType`` enum value for a numpy dtype.

    Args:
        dtype: anything ``np.dtype`` accepts, e.g. ``np.float32`` or ``"int64"``.

    Raises:
        ValueError: the dtype has no wire equivalent (e.g. complex, string, object).
    """
    dt = np.dtype(dtype)
    enum = _BY_KIND.get((dt.kind, dt.itemsize))
    if enum is None:
        raise ValueError(
            f"dtype {dt} cannot be sent as a Tensor; supported: {', '.join(SUPPORTED_DTYPES)}"
        )
    return enum


def enum_to_dtype(enum: int) -> np.dtype[Any]:
    """Return the native-byte-order numpy dtype of a wire ``DataType`` enum value.

    Raises:
        ValueError: the value is DATA_TYPE_UNSPECIFIED or unknown.
    """
    # Any int may come off the wire; unknown values are the None case below.
    dt = _BY_ENUM.get(cast("mcdropout_pb2.DataType.ValueType", enum))
    if dt is None:
        allowed = ", ".join(_enum_name(e) for e in _BY_ENUM)
        raise ValueError(f"tensor dtype {_enum_name(enum)} is not supported; expected {allowed}")
    return dt.newbyteorder("=")


def to_proto(array: Any) -> mcdropout_pb2.Tensor:
    """Encode an array as a wire Tensor.

    Args:
        array: a numpy array or anything ``np.asarray`` accepts (nested lists, scalars).
            Big-endian and non-contiguous arrays are converted; the bytes are always little-endian
            and in C order.

    Returns:
        A ``mcdropout_pb2.Tensor`` with dtype, shape and data set.

    Raises:
        ValueError: the dtype has no wire equivalent.
    """
    arr = np.asarray(array)
    enum = dtype_to_enum(arr.dtype)
    wire = _BY_ENUM[enum]
    if arr.dtype != wire or not arr.flags.c_contiguous:
        # Converts byte order and layout in one copy; no copy when both already match.
        arr = np.ascontiguousarray(arr, dtype=wire)
    return mcdropout_pb2.Tensor(dtype=enum, shape=arr.shape, data=arr.tobytes())


def from_proto(tensor: mcdropout_pb2.Tensor, *, copy: bool = False) -> np.ndarray:
    """Decode a wire Tensor into a numpy array of its shape and (native-order) dtype.

    Args:
        tensor: the message to decode.
        copy: return a writable copy. By default the array is a read-only view of the message's
            bytes (no copy) on little-endian hosts.

    Returns:
        An array with ``shape == tuple(tensor.shape)``.

    Raises:
        ValueError: unknown or unspecified dtype, a negative dimension, or a byte length that is
            not ``product(shape) * itemsize``.
    """
    dtype = enum_to_dtype(tensor.dtype)
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"tensor shape must have dimensions >= 0, got {list(shape)}")
    # Python ints: a hostile shape must not overflow into a plausible byte count.
    expected = math.prod(shape) * dtype.itemsize
    if len(tensor.data) != expected:
        raise ValueError(
            f"tensor data has {len(tensor.data)} bytes but shape {list(shape)} of "
            f"{_enum_name(tensor.dtype)} needs {expected} bytes"
        )
    arr = np.frombuffer(tensor.data, dtype=_BY_ENUM[tensor.dtype]).reshape(shape)
    if arr.dtype != dtype:
        return arr.astype(dtype)
    return arr.copy() if copy else arr


def _enum_name(enum: int) -> str:
    try:
        return mcdropout_pb2.DataType.Name(enum)  # type: ignore[arg-type]
    except ValueError:
        return str(enum)
