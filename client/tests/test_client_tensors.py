"""numpy <-> wire Tensor: round trips for every dtype, byte order, layout, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from mcdropout_client import tensors
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb

SHAPES = [(), (0,), (4,), (2, 3), (0, 3), (2, 3, 4)]


def _values(dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(0)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        # The extremes catch sign and width mistakes that small values would hide.
        flat = np.resize(np.array([info.min, info.max, 0, 1], dtype=dtype), int(np.prod(shape)))
        return flat.reshape(shape)
    return rng.normal(size=shape).astype(dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", tensors.SUPPORTED_DTYPES)
def test_round_trip_every_dtype_and_shape(dtype: str, shape: tuple[int, ...]) -> None:
    array = _values(np.dtype(dtype), shape)
    message = tensors.to_proto(array)
    assert list(message.shape) == list(shape)
    assert len(message.data) == array.size * array.itemsize
    back = tensors.from_proto(pb.Tensor.FromString(message.SerializeToString()))
    assert back.dtype == np.dtype(dtype)
    assert back.shape == shape
    np.testing.assert_array_equal(back, array)


def test_every_wire_dtype_has_a_numpy_dtype() -> None:
    wire = {v for v in pb.DataType.values() if v != pb.DATA_TYPE_UNSPECIFIED}
    assert {tensors.dtype_to_enum(d) for d in tensors.SUPPORTED_DTYPES} == wire


def test_bytes_are_little_endian_c_order_whatever_the_input() -> None:
    native = np.arange(6, dtype=np.int32).reshape(2, 3)
    expected = np.ascontiguousarray(native).astype("<i4").tobytes()
    big_endian = native.astype(">i4")
    fortran = np.asfortranarray(native)
    wide = np.zeros((2, 6), dtype=np.int32)
    wide[:, ::2] = native
    strided = wide[:, ::2]
    assert not strided.flags.c_contiguous and not fortran.flags.c_contiguous
    for array in (native, big_endian, fortran, strided):
        message = tensors.to_proto(array)
        assert message.dtype == pb.INT32
        assert message.data == expected
    back = tensors.from_proto(tensors.to_proto(big_endian))
    assert back.dtype.isnative
    np.testing.assert_array_equal(back, native)


def test_transposed_view_keeps_its_logical_order() -> None:
    array = np.arange(6, dtype=np.float64).reshape(2, 3).T
    np.testing.assert_array_equal(tensors.from_proto(tensors.to_proto(array)), array)


def test_lists_and_scalars_are_accepted() -> None:
    message = tensors.to_proto([[1.5, 2.5]])
    assert message.dtype == pb.FLOAT64 and list(message.shape) == [1, 2]
    assert tensors.from_proto(tensors.to_proto(True)).item() is True


def test_decoding_is_zero_copy_and_read_only_unless_asked() -> None:
    message = tensors.to_proto(np.arange(4, dtype=np.float32))
    view = tensors.from_proto(message)
    assert not view.flags.writeable
    copy = tensors.from_proto(message, copy=True)
    copy[0] = 7.0
    assert copy.flags.writeable and view[0] == 0.0


@pytest.mark.parametrize("dtype", [np.complex64, np.dtype("U3"), object, "datetime64[s]"])
def test_unsupported_numpy_dtype_is_refused(dtype: object) -> None:
    with pytest.raises(ValueError, match=r"cannot be sent as a Tensor; supported: float32"):
        tensors.to_proto(np.zeros(2, dtype=dtype))  # type: ignore[call-overload]


def test_wrong_byte_length_names_both_lengths() -> None:
    message = pb.Tensor(dtype=pb.FLOAT32, shape=[2, 3], data=b"\x00" * 20)
    with pytest.raises(ValueError, match=r"has 20 bytes but shape \[2, 3\] of FLOAT32 needs 24"):
        tensors.from_proto(message)


def test_negative_dimension_is_refused() -> None:
    message = pb.Tensor(dtype=pb.FLOAT64, shape=[-1, 3], data=b"")
    with pytest.raises(ValueError, match=r"dimensions >= 0, got \[-1, 3\]"):
        tensors.from_proto(message)


def test_huge_shape_does_not_overflow_into_a_small_byte_count() -> None:
    # 2**62 * 4 * 8 wraps to 0 in int64 arithmetic; Python ints must not be fooled.
    message = pb.Tensor(dtype=pb.FLOAT64, shape=[2**62, 4], data=b"")
    with pytest.raises(ValueError, match="has 0 bytes"):
        tensors.from_proto(message)


@pytest.mark.parametrize(("enum", "name"), [(pb.DATA_TYPE_UNSPECIFIED, "DATA_TYPE_UNSPECIFIED"),
                                            (99, "99")])
def test_unknown_or_unspecified_dtype_is_refused(enum: int, name: str) -> None:
    message = pb.Tensor(dtype=enum, shape=[1], data=b"\x00")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"dtype {name} is not supported; expected FLOAT32"):
        tensors.from_proto(message)
