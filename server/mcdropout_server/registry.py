"""The served models: every version of every model in the store, loaded and warmed up at start.

:meth:`ModelRegistry.prepare` resolves a decoded call against its model version, once, into the
:class:`PreparedCall` that the scheduler queues and the engine runs. The set of served versions
can be swapped at run time (:meth:`ModelRegistry.replace`, used by
:mod:`mcdropout_server.reload`); a call holds on to the version it resolved, so calls in flight
finish on it. Versions that failed to load are remembered with their reason, so that lookups say
"failed to load" rather than "no such version" (:mod:`mcdropout_server.startup` has the policy).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from mcdropout import (
    InvalidArgumentError,
    ModelInfo,
    ModelStore,
    NotFoundError,
)
from mcdropout.calibration import Calibration
from mcdropout.engine import MCDropoutPredictor
from mcdropout.engine.request import Limits as RequestLimits
from mcdropout.engine.request import Request
from mcdropout.store import validate_name
from mcdropout_server.calls import (
    HeadOutputs,
    PredictCall,
    check_reply_size,
    resolve_outputs,
)

log = logging.getLogger(__name__)
# Most entries in each of the registry's per-version caches (see ModelRegistry._prune).
_MAX_CACHED = 256
# Versions that failed to load: the reason (exception type and message) by (name, version).
FailedVersions = dict[tuple[str, int], str]


@dataclass(frozen=True)
class ServedModel:
    """One loaded model version: its store metadata and its predictor (which holds the
    version's calibration, if it has one)."""

    info: ModelInfo
    predictor: MCDropoutPredictor

    @property
    def calibration(self) -> Calibration | None:
        return self.predictor.calibration

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
class LoadOptions:
    """How model versions are turned into predictors (the same at start and on reload).

    Attributes:
        memory_budget_bytes: Memory one request's passes may use at once, bytes.
        max_samples: Ceiling on passes per request; a model's own lower limit wins.
        max_raw_sample_values: Largest passes x rows x outputs returned as raw samples.
        safe_mode: Keras safe mode; False loads model files that run arbitrary code.
        warmup: Trace the model graphs at load rather than on the first request.
        warmup_sample_classes: Also compile every pass-count class's mask kernels at load
            (see :meth:`MCDropoutPredictor.warmup`); needs ``warmup``.
    """

    memory_budget_bytes: int = 256 * 2**20
    max_samples: int = 10_000
    max_raw_sample_values: int = 10_000_000
    safe_mode: bool = True
    warmup: bool = True
    warmup_sample_classes: bool = False


@dataclass(frozen=True)
class ModelSource:
    """Where a registry's models came from, so that the store can be read again on reload."""

    store: ModelStore
    options: LoadOptions


@dataclass(frozen=True)
class PreparedCall:
    """A call resolved against its model version, once: what the scheduler and engine read.

    Attributes:
        model: The model version that answers.
        request: Samples, seed, tolerance and levels with every default applied and limit
            checked; the inputs are checked by the engine when they run.
        outputs: The output names to send, per head.
        request_id: The call's id, for logs.
        monitored: Whether the answer is recorded for Feedback and drift (see
            :attr:`PredictCall.monitored`).
    """

    model: ServedModel
    request: Request
    outputs: HeadOutputs
    request_id: str = ""
    monitored: bool = True


class ModelRegistry:
    """Looks models up by name and version and runs predictions on them.

    Args:
        models: The loaded model versions (any order).
        limits: Request size limits applied before any work starts.
        source: The store and options the models were loaded with; None when the registry was
            built from models directly (it cannot be reloaded then).
        failed: Versions in the store that failed to load, with their reasons: not ready.
    """

    def __init__(self, models: Iterable[ServedModel], limits: Limits = Limits(),
                 source: ModelSource | None = None,
                 failed: Mapping[tuple[str, int], str] | None = None) -> None:
        self.limits = limits
        self.source = source
        self._models = _by_name(models)
        self._failed: FailedVersions = dict(failed or {})
        # What prepare derives from a version alone, or from it and the kind of call, made
        # once rather than per call (keyed by the ServedModel's identity, which a reload
        # changes; the served object is kept with it so that an id is never reused wrongly).
        self._limits_of: dict[int, tuple[ServedModel, RequestLimits]] = {}
        self._outputs_of: dict[tuple[Any, ...], tuple[ServedModel, dict[str, frozenset[str]]]] = {}

    def replace(self, models: Iterable[ServedModel],
                failed: Mapping[tuple[str, int], str] | None = None) -> None:
        """Serve exactly ``models`` from now on, swapped in at once (one reference assignment).

        Calls already prepared keep the :class:`ServedModel` they resolved and finish on it.
        ``failed`` replaces the versions reported as failed to load, when given.
        """
        self._models = _by_name(models)
        if failed is not None:
            self._failed = dict(failed)

    def failed(self) -> FailedVersions:
        """The store's versions that failed to load (and are not served), with their reasons."""
        return dict(self._failed)

    @classmethod
    def load(cls, store: ModelStore, *, limits: Limits = Limits(),
             memory_budget_bytes: int = 256 * 2**20, max_samples: int = 10_000,
             max_raw_sample_values: int = 10_000_000, warmup: bool = True,
             safe_mode: bool = True, on_load_error: str = "serve",
             warmup_sample_classes: bool = False) -> ModelRegistry:
        """Load (and by default warm up) every version of every model in ``store``.

        Args:
            memory_budget_bytes: Passed to each predictor: memory one request may use, bytes.
            max_samples: Ceiling on passes per request; a model's own lower limit wins.
            max_raw_sample_values: Largest passes x rows x outputs returned as raw samples.
            warmup: Trace the model graphs now rather than on the first request.
            safe_mode: Keras safe mode: refuse model files that need arbitrary code to load.
            on_load_error: "serve": a version that fails to load is logged and reported not
                ready while the others serve; "exit": it fails the load (see
                :mod:`mcdropout_server.startup`).
            warmup_sample_classes: With ``warmup``, also compile the mask kernels of every
                pass-count class up to ``max_samples``, so no request compiles one later.

        Raises:
            ModelLoadError: nothing servable, or (``on_load_error="exit"``) a version that
                cannot be loaded; the message lists every bad version.
        """
        from mcdropout_server.startup import load_store  # it builds on this module

        options = LoadOptions(memory_budget_bytes, max_samples, max_raw_sample_values, safe_mode,
                              warmup, warmup_sample_classes)
        served, failed = load_store(store, options, on_load_error)
        return cls(served, limits, ModelSource(store, options), failed)

    def models(self) -> list[ServedModel]:
        """Every served model version, by name then version (to build another registry)."""
        current = self._models
        return [current[name][v] for name in sorted(current) for v in sorted(current[name])]

    def names(self) -> list[str]:
        """Served model names, sorted."""
        return sorted(self._models)

    def versions(self, name: str) -> list[int]:
        """Served versions of ``name``, ascending.

        Raises:
            InvalidArgumentError: empty name, or one the store would not accept.
            NotFoundError: no model of that name.
        """
        return sorted(self._versions(name))

    def get(self, name: str, version: int | None = None) -> ServedModel:
        """The model version answering for ``(name, version)``; version None or 0 is the latest.

        Raises:
            InvalidArgumentError: empty name, a name the store would not accept (the message
                says which are), or a negative version.
            NotFoundError: unknown model or version (the message lists what exists).
        """
        versions = self._versions(name)
        if version is not None and version < 0:
            raise InvalidArgumentError(f"model_version must be >= 0 (0 for the latest), "
                                       f"got {version}")
        if not version:
            return versions[max(versions)]
        if version not in versions:
            why = (f"version {version} is not served: it failed to load (the server log says "
                   "why)" if (name, version) in self._failed else f"has no version {version}")
            raise NotFoundError(f"model {name!r} {why}; available versions: {sorted(versions)}")
        return versions[version]

    def prepare(self, call: PredictCall, max_reply_bytes: int | None = None) -> PreparedCall:
        """Resolve ``call`` against its model and the size limits, before any work is queued.

        Raises:
            InvalidArgumentError, NotFoundError: see :meth:`get` and
                :func:`~mcdropout_server.calls.resolve_outputs`; samples, seed, tolerance,
                interval or set levels out of range (a level above n/(n+1) of the version's
                calibration set among them).
            NotCalibratedError: a calibrated call to a version without calibration, or
                "abstain" asked of one without an abstention policy.
            ResourceLimitError: rows above max_rows, rows x samples above max_row_samples, raw
                passes above the model's limit, or a reply that would be larger than
                ``max_reply_bytes`` (checked before any pass runs).
        """
        served = self.get(call.model, call.version)
        predictor = served.predictor
        outputs = self._outputs(served, call)
        request = predictor.resolve(
            call.x, call.samples,
            call.seed, tolerance=call.tolerance, interval_levels=call.interval_levels,
            return_samples=any("samples" in sent for sent in outputs.values()),
            limits=self._request_limits(served), calibrated=call.uses_calibration,
            set_levels=call.set_levels, abstain="abstain" in call.outputs)
        if max_reply_bytes is not None:
            check_reply_size(outputs, {head.name: head.width for head in predictor.heads},
                             rows=request.rows, samples=request.samples,
                             levels=len(request.interval_levels),
                             set_levels=len(request.set_levels), limit=max_reply_bytes)
        return PreparedCall(served, request, outputs, call.request_id, call.monitored)

    def _request_limits(self, served: ServedModel) -> RequestLimits:
        known = self._limits_of.get(id(served))
        if known is not None and known[0] is served:
            return known[1]
        limits = replace(served.predictor.limits, max_rows=self.limits.max_rows,
                         max_row_samples=self.limits.max_row_samples)
        self._limits_of = {**self._prune(self._limits_of), id(served): (served, limits)}
        return limits

    def _outputs(self, served: ServedModel, call: PredictCall) -> dict[str, frozenset[str]]:
        # The outputs depend on the version's heads, the outputs named (their order and
        # repeats aside) and whether levels were given; a refusal is never kept.
        key = (id(served), frozenset(call.outputs), bool(call.interval_levels),
               bool(call.set_levels))
        known = self._outputs_of.get(key)
        if known is not None and known[0] is served:
            return known[1]
        outputs = resolve_outputs(call, served.predictor.heads)
        self._outputs_of = {**self._prune(self._outputs_of), key: (served, outputs)}
        return outputs

    def _prune(self, cache: dict[Any, tuple[ServedModel, Any]]) -> dict[Any, tuple[ServedModel, Any]]:
        """``cache`` without the entries of versions no longer served, and emptied when it
        has grown past _MAX_CACHED entries (a bound whatever combinations clients send)."""
        if len(cache) >= _MAX_CACHED:
            return {}
        served = {id(m) for versions in self._models.values() for m in versions.values()}
        return {k: v for k, v in cache.items() if id(v[0]) in served}

    def _versions(self, name: str) -> dict[int, ServedModel]:
        if not name:
            raise InvalidArgumentError(f"model_name is required; served models: {self.names()}")
        # Served names follow the store's rule: a name that breaks it is refused before any
        # lookup, with a bounded echo (a 20,000-character name must not come back whole).
        validate_name(name)
        versions = self._models.get(name)  # one read: a concurrent replace() swaps the whole map
        if versions is None:
            failed = sorted(v for n, v in self._failed if n == name)
            why = (f"is not served: its version(s) {failed} failed to load (the server log says "
                   "why)" if failed else "not found")
            raise NotFoundError(f"model {name!r} {why}; served models: {self.names()}")
        return versions


def _by_name(models: Iterable[ServedModel]) -> dict[str, dict[int, ServedModel]]:
    by_name: dict[str, dict[int, ServedModel]] = {}
    for served in models:
        by_name.setdefault(served.name, {})[served.version] = served
    return by_name
