"""Ranking a pool of unlabelled rows for labelling: the request stream, its chunks and the result.

:meth:`mcdropout_client.Client.rank_pool` streams the pool to the server's RankPool method in
chunks of ``chunk_rows`` rows, made one at a time as gRPC asks for the next message, so that the
client holds one chunk however large the pool (an ``np.memmap`` or ``np.load(...,
mmap_mode="r")`` array is read chunk by chunk from disk). The server keeps only the best ``k``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
import numpy as np

from mcdropout_client import tensors
from mcdropout_client.errors import raise_for
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2

ACQUISITION_NAMES: tuple[str, ...] = tuple(
    value.name.lower().removeprefix("acquisition_")
    for value in mcdropout_pb2.Acquisition.DESCRIPTOR.values if value.number)
"""The acquisition functions a pool can be ranked by: "bald", "predictive_entropy",
"variation_ratio" (classification heads) and "predictive_std" (regression heads)."""

_MAX_SEED = 2**64
Chunk = np.ndarray | dict[str, np.ndarray]


@dataclass(frozen=True)
class RankedPool:
    """The best rows of a pool by an acquisition function.

    Attributes:
        indices: The rows' positions in the pool (0-based, counted across every chunk), best
            first, shape (k',) int64 with k' = min(top_k, rows_scored); equal scores: the
            earlier row first.
        scores: Their acquisition scores, (k',) float64 (nats for "bald" and
            "predictive_entropy", a share for "variation_ratio", target units for
            "predictive_std").
        rows_scored: Rows in the whole pool.
        model_version: The model version that scored every chunk.
        seed: Seed of the first chunk; chunk c used ``seed + c`` (mod 2**64), so
            ``predict(chunk, seed=seed + c, samples=...)`` reproduces its scores.
    """

    indices: np.ndarray
    scores: np.ndarray
    rows_scored: int
    model_version: int
    seed: int


def chunks(pool: Any, chunk_rows: int) -> Iterator[Chunk]:
    """The pool's rows in chunks of at most ``chunk_rows``, made one at a time.

    Args:
        pool: One array of rows (anything ``np.asarray`` takes, e.g. nested lists; an
            ``np.memmap`` is sliced without being read whole); a mapping input name -> rows for
            a model with several inputs; or an iterable (not a list or tuple) of such arrays or
            mappings, each split further when it has more than ``chunk_rows`` rows.
        chunk_rows: Most rows per chunk, >= 1.

    Raises:
        ValueError: ``chunk_rows`` below 1; a mapping whose inputs differ in rows; an array
            without a rows dimension.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if isinstance(pool, Mapping) or _is_array(pool):
        yield from _split(pool, chunk_rows)
        return
    for part in pool:
        yield from _split(part, chunk_rows)


def _is_array(pool: Any) -> bool:
    return isinstance(pool, (np.ndarray, list, tuple)) or not isinstance(pool, Iterable)


def _split(part: Any, chunk_rows: int) -> Iterator[Chunk]:
    if isinstance(part, Mapping):
        named = {str(name): _rows(value, f"input {name!r}") for name, value in part.items()}
        lengths = {name: len(value) for name, value in named.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"every input of a chunk needs the same number of rows, got {lengths}")
        total = next(iter(lengths.values()), 0)
        for start in range(0, total, chunk_rows):
            yield {name: value[start:start + chunk_rows] for name, value in named.items()}
        return
    rows = _rows(part, "the pool")
    for start in range(0, len(rows), chunk_rows):
        yield rows[start:start + chunk_rows]


def _rows(value: Any, what: str) -> np.ndarray:
    # np.asarray keeps an np.memmap a memmap (no read); slicing it reads only the slice.
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if array.ndim < 1:
        raise ValueError(f"{what} needs a rows dimension, got a scalar")
    return array


def acquisition_enum(name: str) -> mcdropout_pb2.Acquisition.ValueType:
    """The wire Acquisition value of ``name`` (one of :data:`ACQUISITION_NAMES`).

    Raises:
        ValueError: an unknown name.
    """
    if name.lower() not in ACQUISITION_NAMES:
        raise ValueError(f"unknown acquisition {name!r}; allowed: {', '.join(ACQUISITION_NAMES)}")
    return mcdropout_pb2.Acquisition.Value(f"ACQUISITION_{name.upper()}")


class PoolStream:
    """The RankPool request messages of one pool, made lazily; remembers what stopped them.

    The first message carries the settings and the first chunk; the others carry rows only.
    An exception raised while a chunk is made (a bad array in an iterable pool) is kept in
    :attr:`failure` and ``on_failure`` is called (to cancel the call), so that the caller can
    raise it rather than the CANCELLED status the call then ends with.

    Args:
        pool, chunk_rows: see :func:`chunks`.
        first: The settings, as a RankPoolRequest without rows.
        on_failure: Called once when making a message fails; None: the exception propagates
            into gRPC (which cancels the call) after being kept.

    Raises:
        ValueError: bad settings (checked here, before any call is made).
    """

    def __init__(self, pool: Any, chunk_rows: int, first: mcdropout_pb2.RankPoolRequest,
                 on_failure: Callable[[], None] | None = None) -> None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.pool = pool
        self.chunk_rows = chunk_rows
        self.first = first
        self.on_failure = on_failure
        self.failure: Exception | None = None

    def __iter__(self) -> Iterator[mcdropout_pb2.RankPoolRequest]:
        try:
            for number, chunk in enumerate(chunks(self.pool, self.chunk_rows)):
                request = mcdropout_pb2.RankPoolRequest()
                if number == 0:
                    request.CopyFrom(self.first)
                if isinstance(chunk, dict):
                    for name, value in chunk.items():
                        request.named_inputs[name].CopyFrom(tensors.to_proto(value))
                else:
                    request.inputs.CopyFrom(tensors.to_proto(chunk))
                del chunk  # only the message holds the rows while it is sent
                yield request
        except Exception as exc:
            self.failure = exc
            if self.on_failure is None:
                raise
            self.on_failure()


    def raise_for(self, error: BaseException) -> NoReturn:
        """Raise what ended the call: the chunk's own failure when there was one, else the
        :class:`~mcdropout_client.errors.ClientError` of ``error`` (or ``error`` itself)."""
        if self.failure is not None:
            raise self.failure from None
        if isinstance(error, grpc.RpcError):
            raise_for(error)
        raise error


def settings_request(
    *, model: str, top_k: int, acquisition: str, samples: int | None, seed: int | None,
    head: str | None, calibrated: bool, version: int | None, request_id: str | None,
) -> mcdropout_pb2.RankPoolRequest:
    """The first RankPool message's settings (no rows), checked where the wire types cannot.

    Raises:
        ValueError: an empty model name, top_k below 1, an unknown acquisition, samples or
            seed out of range.
    """
    if not model:
        raise ValueError("model must be a non-empty model name, got ''")
    if not 1 <= top_k < 2**32:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if seed is not None and not 0 <= seed < _MAX_SEED:
        raise ValueError(f"seed must be in 0..2**64-1, got {seed}")
    if samples is not None and not 0 <= samples < 2**32:
        raise ValueError(f"samples must be in 0..2**32-1 (0 for the model's default), got "
                         f"{samples}")
    request = mcdropout_pb2.RankPoolRequest(
        model_name=model, model_version=version or 0, acquisition=acquisition_enum(acquisition),
        top_k=top_k, samples=samples or 0, head=head or "", calibrated=calibrated,
        request_id=request_id or "")
    if seed is not None:
        request.seed = seed
    return request


def ranked_pool(response: mcdropout_pb2.RankPoolResponse) -> RankedPool:
    """Turn a RankPoolResponse into a :class:`RankedPool` of numpy arrays."""
    return RankedPool(indices=np.asarray(response.indices, dtype=np.int64),
                      scores=np.asarray(response.scores, dtype=np.float64),
                      rows_scored=response.rows_scored, model_version=response.model_version,
                      seed=response.seed)
