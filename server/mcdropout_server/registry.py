"""The served models: every version of every model in the store, loaded and warmed up at start.

:meth:`ModelRegistry.predict` is the one call from the transport into the engine; a later layer
(dynamic batching) can sit in front of it without the servicers changing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mcdropout import (
    CancelledError,
    InvalidArgumentError,
    ModelInfo,
    ModelLoadError,
    ModelStore,
    NotFoundError,
    ResourceLimitError,
)
from mcdropout.engine import MCDropoutPredictor
from mcdropout_server.calls import Answer, PredictCall, resolve_outputs
from mcdropout_server.logs import fields

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """One loaded model version: its store metadata and its predictor."""

    info: ModelInfo
    predictor: MCDropoutPredictor

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def version(self) -> int:
        return self.info.version


@dataclass(frozen=True)
class Limits:
    """Per-request size limits (see :class:`~mcdropout_server.settings.ServerSettings`)."""

    max_rows: int = 10_000
    max_row_samples: int = 10_000_000


@dataclass(frozen=True)
class PreparedCall:
    """A call checked against its model, ready to run."""

    call: PredictCall
    model: ServedModel
    outputs: frozenset[str]


class ModelRegistry:
    """Looks models up by name and version and runs predictions on them.

    Args:
        models: The loaded model versions (any order).
        limits: Request size limits applied before any work starts.
    """

    def __init__(self, models: Iterable[ServedModel], limits: Limits = Limits()) -> None:
        self.limits = limits
        self._models: dict[str, dict[int, ServedModel]] = {}
        for served in models:
            self._models.setdefault(served.name, {})[served.version] = served

    @classmethod
    def load(cls, store: ModelStore, *, limits: Limits = Limits(),
             memory_budget_bytes: int = 256 * 2**20, max_samples: int = 10_000,
             max_raw_sample_values: int = 10_000_000, warmup: bool = True) -> ModelRegistry:
        """Load (and by default warm up) every version of every model in ``store``.

        Args:
            memory_budget_bytes: Passed to each predictor: memory one request may use, bytes.
            max_samples: Ceiling on passes per request; a model's own lower limit wins.
            max_raw_sample_values: Largest passes x rows x outputs returned as raw samples.
            warmup: Trace the model graphs now rather than on the first request.

        Raises:
            ModelLoadError: the store holds no model, or a version cannot be loaded (the message
                names it); the server should not start half-populated.
        """
        served = []
        for name in store.names():
            for version in store.versions(name):
                started = time.monotonic()
                info = store.read_info(name, version)
                try:
                    predictor = MCDropoutPredictor.from_info(
                        store.load_model(name, version), info,
                        memory_budget_bytes=memory_budget_bytes,
                        max_samples=min(info.max_samples, max_samples),
                        default_samples=min(info.default_samples, max_samples),
                        max_raw_sample_values=max_raw_sample_values)
                    if warmup:
                        predictor.warmup()
                except ModelLoadError:
                    raise
                except Exception as exc:
                    raise ModelLoadError(f"model {name!r} version {version} cannot be served: "
                                         f"{type(exc).__name__}: {exc}") from exc
                log.info("loaded model", extra=fields(
                    model=name, version=version, task=info.task,
                    seconds=round(time.monotonic() - started, 3)))
                served.append(ServedModel(info, predictor))
        if not served:
            raise ModelLoadError(f"no models found in model store {store.root}; expected "
                                 "<root>/<name>/<version>/{model.keras,metadata.json}")
        return cls(served, limits)

    def models(self) -> list[ServedModel]:
        """Every served model version, by name then version (to build another registry)."""
        return [self._models[name][v] for name in self.names() for v in self.versions(name)]

    def names(self) -> list[str]:
        """Served model names, sorted."""
        return sorted(self._models)

    def versions(self, name: str) -> list[int]:
        """Served versions of ``name``, ascending.

        Raises:
            NotFoundError: no model of that name.
        """
        return sorted(self._versions(name))

    def get(self, name: str, version: int | None = None) -> ServedModel:
        """The model version answering for ``(name, version)``; version None or 0 is the latest.

        Raises:
            InvalidArgumentError: empty name or negative version.
            NotFoundError: unknown model or version (the message lists what exists).
        """
        versions = self._versions(name)
        if version is not None and version < 0:
            raise InvalidArgumentError(f"model_version must be >= 0 (0 for the latest), "
                                       f"got {version}")
        if not version:
            return versions[max(versions)]
        if version not in versions:
            raise NotFoundError(f"model {name!r} has no version {version}; available versions: "
                                f"{sorted(versions)}")
        return versions[version]

    def prepare(self, call: PredictCall) -> PreparedCall:
        """Check ``call`` against its model and the size limits, before any work is queued.

        Raises:
            InvalidArgumentError, NotFoundError: see :meth:`get` and
                :func:`~mcdropout_server.calls.resolve_outputs`; samples outside 1..max_samples.
            ResourceLimitError: rows above max_rows, or rows x samples above max_row_samples.
        """
        served = self.get(call.model, call.version)
        predictor = served.predictor
        outputs = resolve_outputs(call, predictor.task, predictor.tau is not None)
        samples = call.samples or predictor.default_samples
        if not 1 <= samples <= predictor.max_samples:
            raise InvalidArgumentError(
                f"samples must be in 1..{predictor.max_samples} for model {served.name!r} "
                f"(0 for the default, {predictor.default_samples}), got {samples}")
        rows, limits = call.rows, self.limits
        if rows > limits.max_rows:
            raise ResourceLimitError(f"inputs have {rows} rows; at most {limits.max_rows} rows "
                                     "per request are allowed, split the batch")
        if rows * samples > limits.max_row_samples:
            raise ResourceLimitError(
                f"rows x samples = {rows} x {samples} = {rows * samples} is above the limit of "
                f"{limits.max_row_samples} row-passes per request; send fewer rows or samples")
        return PreparedCall(call, served, outputs)

    def run(self, prepared: PreparedCall, should_stop: Callable[[], bool] | None = None) -> Answer:
        """Run a prepared call's passes (blocking; call from a worker thread).

        Raises:
            CancelledError: ``should_stop`` returned True, before the first pass or between chunks.
            InvalidArgumentError, ResourceLimitError: raised by the engine for bad inputs.
        """
        if should_stop is not None and should_stop():
            raise CancelledError("the request was cancelled before it started")
        call = prepared.call
        prediction = prepared.model.predictor.predict(
            call.x, call.samples, call.seed, tolerance=call.tolerance,
            interval_levels=call.interval_levels, return_samples="samples" in prepared.outputs,
            should_stop=should_stop)
        return Answer(prepared.model.name, prepared.model.version, prediction, prepared.outputs)

    def predict(self, call: PredictCall,
                should_stop: Callable[[], bool] | None = None) -> Answer:
        """Check and run ``call`` (blocking): :meth:`prepare` then :meth:`run`."""
        return self.run(self.prepare(call), should_stop)

    def _versions(self, name: str) -> dict[int, ServedModel]:
        if not name:
            raise InvalidArgumentError(f"model_name is required; served models: {self.names()}")
        versions = self._models.get(name)
        if versions is None:
            raise NotFoundError(f"model {name!r} not found; served models: {self.names()}")
        return versions
