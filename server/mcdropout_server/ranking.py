"""Ranking a pool of unlabelled rows for labelling: acquisition scores, chunk by chunk, top k kept.

A RankPool call streams the pool in chunks. The first chunk fixes the settings
(:class:`RankSettings`): the model version (the latest resolved once), the head, the acquisition
function, k, passes and seed. Each chunk then runs as a Predict of its own would
(:class:`~mcdropout_server.calls.PredictCall` through the runner: the registry's limits, admission,
batching, cancellation and drain all apply), with seed ``seed + c`` (mod 2**64) for chunk ``c``,
so that a caller can reproduce any chunk's scores with one Predict. Its rows are scored and only
the best ``k`` of everything seen so far are kept (:class:`TopK`): the server holds one chunk and
``k`` entries, however long the pool. No grpc or protobuf here (the codec translates).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, fields, replace

import numpy as np

from mcdropout import InvalidArgumentError, MultiHeadPrediction, Prediction, Task
from mcdropout.engine.heads import HeadSpec
from mcdropout.engine.request import SEED_LIMIT
from mcdropout.errors import shorten
from mcdropout_server.calls import PredictCall
from mcdropout_server.registry import ModelRegistry

# Per entry kept, the reply holds an index (a varint, at most 10 bytes) and a score (8 bytes);
# the rest of the reply (names, ids, counts) fits in the reserve.
_REPLY_BYTES_PER_ENTRY = 18
_REPLY_RESERVE_BYTES = 1024
# Without a message limit (in-process use), k is still bounded: the state is k entries.
MAX_TOP_K_WITHOUT_LIMIT = 2**20


@dataclass(frozen=True)
class Acquisition:
    """An acquisition function: which task it applies to and the statistic it ranks by.

    Attributes:
        name: Its wire name, lower case (``ACQUISITION_BALD`` is "bald").
        task: The task of the heads it scores.
        statistic: The :class:`~mcdropout.Prediction` field holding the score (per row, or per
            row and output: then the mean over the outputs is the score).
    """

    name: str
    task: Task
    statistic: str


ACQUISITIONS: dict[str, Acquisition] = {a.name: a for a in (
    Acquisition("bald", "classification", "mutual_information"),
    Acquisition("predictive_entropy", "classification", "predictive_entropy"),
    Acquisition("variation_ratio", "classification", "variation_ratio"),
    Acquisition("predictive_std", "regression", "predictive_std"),
)}
# The acquisition a stream that names none gets, by its head's task.
DEFAULT_ACQUISITION: dict[Task, str] = {"classification": "bald", "regression": "predictive_std"}


@dataclass(frozen=True)
class RankSettings:
    """The settings one message of a RankPool stream gives; None where it leaves one unset.

    Attributes:
        model: Model name.
        version: Model version; None for the latest (resolved once, by the first message).
        acquisition: A key of :data:`ACQUISITIONS`; None for the head's task's default.
        top_k: Rows to return, >= 1 (the first message must give it).
        samples: Passes T per row; None for the model's default.
        seed: Seed of the first chunk, 0..2**64-1; None draws one.
        head: The head to score (required for a model with several heads).
        calibrated: Score with the version's calibration; None (unset) is False.
    """

    model: str | None = None
    version: int | None = None
    acquisition: str | None = None
    top_k: int | None = None
    samples: int | None = None
    seed: int | None = None
    head: str | None = None
    calibrated: bool | None = None


@dataclass(frozen=True)
class RankChunk:
    """One decoded message of a RankPool stream: its settings and its rows (as a Predict's x)."""

    settings: RankSettings
    x: np.ndarray | dict[str, np.ndarray]
    request_id: str = ""


@dataclass(frozen=True)
class RankedPool:
    """The answer of a RankPool call.

    Attributes:
        model, version: The model version that scored every chunk.
        rows_scored: Rows in the whole stream.
        indices: The best rows' positions in the stream (0-based), best first, (k',) int64 with
            k' = min(k, rows_scored); equal scores: the earlier row first.
        scores: Their scores, (k',) float64.
        seed: The seed of the first chunk (chunk c used seed + c mod 2**64).
    """

    model: str
    version: int
    rows_scored: int
    indices: np.ndarray
    scores: np.ndarray
    seed: int


def top_k_limit(max_reply_bytes: int | None) -> int:
    """The largest k whose reply fits in ``max_reply_bytes`` (the server's message limit)."""
    if max_reply_bytes is None:
        return MAX_TOP_K_WITHOUT_LIMIT
    return max(1, (max_reply_bytes - _REPLY_RESERVE_BYTES) // _REPLY_BYTES_PER_ENTRY)


class TopK:
    """The ``k`` best-scoring rows seen so far: at most ``k`` entries are ever held.

    Args:
        k: Entries to keep, >= 1.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.indices = np.empty(0, np.int64)
        self.scores = np.empty(0, np.float64)

    def offer(self, scores: np.ndarray, first_index: int) -> None:
        """Consider the rows ``first_index, first_index + 1, ...`` with ``scores`` (rows,).

        A NaN score ranks below every number. Equal scores keep the earlier row.
        """
        values = np.concatenate([self.scores, np.where(np.isnan(scores), -np.inf, scores)])
        indices = np.concatenate([self.indices,
                                  np.arange(first_index, first_index + len(scores), dtype=np.int64)])
        if len(values) > self.k:
            keep = _best(values, indices, self.k)
            values, indices = values[keep], indices[keep]
        self.scores, self.indices = values, indices

    def ranked(self) -> tuple[np.ndarray, np.ndarray]:
        """(indices, scores) best first; equal scores by row, earlier first."""
        order = np.lexsort((self.indices, -self.scores))
        return self.indices[order], self.scores[order]


def _best(values: np.ndarray, indices: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` best values, ties at the boundary broken by the smaller index.

    Linear time (one partition) rather than a sort of current entries and chunk together.
    """
    kth = values[np.argpartition(-values, k - 1)[k - 1]]
    above = np.flatnonzero(values > kth)
    tied = np.flatnonzero(values == kth)
    tied = tied[np.argsort(indices[tied], kind="stable")][:k - len(above)]
    return np.concatenate([above, tied])


class PoolRanking:
    """One RankPool stream's state: the settings its first message fixed, and the top k so far.

    Args:
        first: The first message's settings.
        registry: The served models (the version is looked up once, here).
        max_top_k: The largest k allowed (see :func:`top_k_limit`).

    Raises:
        InvalidArgumentError: no or a bad model name, k out of range, a head missing (several
            heads) or unknown, an acquisition that does not apply to the head's task (the
            message names those that do).
        NotFoundError: unknown model or version.

    A calibrated stream to a version without calibration is refused by the first chunk's
    Predict (NotCalibratedError, FAILED_PRECONDITION), as a calibrated Predict is.
    """

    def __init__(self, first: RankSettings, registry: ModelRegistry, max_top_k: int) -> None:
        served = registry.get(first.model or "", first.version)
        head = _head(served.predictor.heads, first.head)
        acquisition = _acquisition(first.acquisition, head)
        if first.top_k is None or not 1 <= first.top_k <= max_top_k:
            raise InvalidArgumentError(
                f"top_k must be in 1..{max_top_k} (the most rows whose reply fits the server's "
                f"message limit), got {first.top_k or 0}")
        # Later messages are compared with what the first one resolved to: repeating the
        # version, seed or acquisition the first left to the server is no change.
        self.settings = replace(
            first, model=served.name, version=served.version, acquisition=acquisition.name,
            seed=secrets.randbits(64) if first.seed is None else first.seed, head=head.name,
            calibrated=bool(first.calibrated))
        self.head = head
        self.acquisition = acquisition
        self.multi_head = len(served.predictor.heads) > 1
        self.top = TopK(first.top_k)
        self.chunks = 0
        self.rows_scored = 0

    @property
    def seed(self) -> int:
        """The first chunk's seed."""
        return int(self.settings.seed or 0)

    def check(self, later: RankSettings) -> None:
        """Refuse a later message that changes a setting the first one fixed.

        Raises:
            InvalidArgumentError: naming the field, its value and the fixed one.
        """
        for item in fields(later):
            value, fixed = getattr(later, item.name), getattr(self.settings, item.name)
            if value is not None and value != fixed:
                raise InvalidArgumentError(
                    f"{_WIRE_NAMES.get(item.name, item.name)} changed in message "
                    f"{self.chunks + 1} of the stream: {shorten(value)} after {shorten(fixed)}; "
                    "the first message fixes the settings, later ones may only repeat them")

    def call(self, x: np.ndarray | dict[str, np.ndarray], request_id: str) -> PredictCall:
        """The Predict call of the next chunk, whose rows are ``x`` (seed: seed + chunk)."""
        settings = self.settings
        return PredictCall(
            model=settings.model or "", version=settings.version, x=x,
            samples=settings.samples, seed=(self.seed + self.chunks) % SEED_LIMIT,
            outputs=(self._statistic(),), request_id=request_id,
            calibrated=bool(settings.calibrated), monitored=False)

    def add(self, prediction: Prediction | MultiHeadPrediction) -> None:
        """Score the rows of the chunk :meth:`call` made and keep the best k of all so far."""
        head = prediction.heads[self.head.name] if isinstance(prediction, MultiHeadPrediction) \
            else prediction
        scores = head.row_measure(self._statistic())
        self.top.offer(scores, self.rows_scored)
        self.rows_scored += len(scores)
        self.chunks += 1

    def result(self) -> RankedPool:
        """The top rows of the whole stream, best first."""
        indices, scores = self.top.ranked()
        return RankedPool(self.settings.model or "", int(self.settings.version or 0),
                          self.rows_scored, indices, scores, self.seed)

    def _statistic(self) -> str:
        # A regression head without tau has no predictive std: its spread is the passes' std.
        statistic = self.acquisition.statistic
        return "std" if statistic == "predictive_std" and not self.head.has_tau else statistic


# The wire names of the settings, for messages.
_WIRE_NAMES = {"model": "model_name", "version": "model_version"}


def _head(heads: tuple[HeadSpec, ...] | list[HeadSpec], name: str | None) -> HeadSpec:
    names = [head.name for head in heads]
    if name is None and len(heads) > 1:
        raise InvalidArgumentError(f"head is required for a model with several heads; this "
                                   f"model's heads: {', '.join(names)}")
    if name is None:
        return heads[0]
    for head in heads:
        if head.name == name:
            return head
    raise InvalidArgumentError(f"unknown head {shorten(name)}; this model's heads: "
                               f"{', '.join(names)}")


def _acquisition(name: str | None, head: HeadSpec) -> Acquisition:
    acquisition = ACQUISITIONS[name or DEFAULT_ACQUISITION[head.task]]
    if acquisition.task != head.task:
        fitting = [a.name for a in ACQUISITIONS.values() if a.task == head.task]
        raise InvalidArgumentError(
            f"acquisition {acquisition.name!r} scores {acquisition.task} heads; head "
            f"{head.name!r} is a {head.task} head, scored by: {', '.join(fitting)}")
    return acquisition

