"""Open Inference Protocol tensors: datatype names and decoding a request's inputs to numpy.

Both content forms of the protocol are read here: ``raw_input_contents`` (one little-endian
byte string per input, in the order of ``inputs``) and typed ``contents``, whose fields are
wider than the datatype and so are range-checked. Raw bytes are converted by
:mod:`mcdropout_client.tensors`, shared with the native API.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from mcdropout_client import tensors
from mcdropout_client.proto.inference import grpc_predict_v2_pb2 as oip
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb

from mcdropout import InvalidArgumentError
from mcdropout.errors import shorten

# OIP datatype -> (native wire dtype, InferTensorContents field holding its typed values).
DATATYPES: dict[str, tuple[int, str]] = {
    "FP32": (pb.FLOAT32, "fp32_contents"), "FP64": (pb.FLOAT64, "fp64_contents"),
    "INT8": (pb.INT8, "int_contents"), "INT16": (pb.INT16, "int_contents"),
    "INT32": (pb.INT32, "int_contents"), "INT64": (pb.INT64, "int64_contents"),
    "UINT8": (pb.UINT8, "uint_contents"), "UINT16": (pb.UINT16, "uint_contents"),
    "UINT32": (pb.UINT32, "uint_contents"), "UINT64": (pb.UINT64, "uint64_contents"),
}
NAME_OF_ENUM = {enum: name for name, (enum, _) in DATATYPES.items()}
# Outputs may also be BOOL (prediction sets, abstain); inputs may not: no model takes booleans.
OUTPUT_DATATYPES: dict[str, tuple[int, str]] = {**DATATYPES, "BOOL": (pb.BOOL, "bool_contents")}


def decode_inputs(request: oip.ModelInferRequest) -> dict[str, np.ndarray]:
    """Every input of a request by name, as sent (which names a model takes is checked later).

    Raises:
        InvalidArgumentError: a name given twice, raw contents not one per input, an
            unsupported datatype, contents that do not match the shape or the datatype's range.
    """
    names = [t.name for t in request.inputs]
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"each input must be named once, got inputs {shorten(names)}")
    raw = request.raw_input_contents
    if raw and len(raw) != len(names):
        raise InvalidArgumentError(f"raw_input_contents must hold one entry per input, got "
                                   f"{len(raw)} for {len(names)} inputs")
    return {tensor.name: _input(tensor, raw[i] if raw else None)
            for i, tensor in enumerate(request.inputs)}


def _input(tensor: Any, raw: bytes | None) -> np.ndarray:
    where = f"input {shorten(tensor.name)}"
    if tensor.datatype not in DATATYPES:
        raise InvalidArgumentError(f"{where}: datatype {shorten(tensor.datatype)} is not "
                                   f"supported; expected one of {', '.join(DATATYPES)}")
    enum, field = DATATYPES[tensor.datatype]
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidArgumentError(f"{where}: an input must not set contents when "
                                       "raw_input_contents is used")
        data = raw
    else:
        sent = [f.name for f, _ in tensor.contents.ListFields()]
        if sent not in ([], [field]):
            raise InvalidArgumentError(f"{where}: datatype {tensor.datatype} takes its values in "
                                       f"contents.{field}, got {', '.join(sent)}")
        values = getattr(tensor.contents, field)
        # Typed contents are wider than the datatype (e.g. int32 for INT8): check the range.
        wide = np.asarray(values, dtype=np.float64 if field.startswith("fp") else np.int64
                          if field.startswith("int") else np.uint64)
        narrow = wide.astype(dtype_of(tensor.datatype))
        if not field.startswith("fp") and not np.array_equal(narrow, wide):
            limits = np.iinfo(narrow.dtype)
            raise InvalidArgumentError(
                f"{where}: values {wide[narrow != wide][:5].tolist()} are out of the range of "
                f"{tensor.datatype}, {limits.min}..{limits.max}")
        count, shape = narrow.size, list(tensor.shape)
        if all(d >= 0 for d in shape) and count != math.prod(shape):
            raise InvalidArgumentError(f"{where} has {count} values in contents.{field} but "
                                       f"shape {shorten(shape)} needs {shorten(math.prod(shape))}")
        data = narrow.tobytes()
    try:
        return tensors.from_proto(pb.Tensor(dtype=enum, shape=tensor.shape,  # type: ignore[arg-type]
                                            data=data))
    except ValueError as exc:
        raise InvalidArgumentError(f"{where}: {exc}") from None


def dtype_of(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of an OIP datatype name such as "FP32" (or "BOOL", an output's)."""
    return tensors.enum_to_dtype(OUTPUT_DATATYPES[datatype][0])
