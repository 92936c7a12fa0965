"""Model updates with no downtime: new store versions are loaded, warmed up, then swapped in.

:class:`ModelReloader` compares the model store with what the registry serves. Versions that
appeared, or whose files (model, metadata, calibration) changed, are loaded and warmed up (graphs
traced) while the old set keeps serving; then the whole set is swapped in with
:meth:`ModelRegistry.replace`. Calls in flight keep the version they resolved and finish on it.
A version that fails to load is rejected with one error log line and not retried until its files
change; what was served stays served, and the registry reports the rejected version as failed to
load (not ready), as at start under the "serve" policy (:mod:`mcdropout_server.startup`); reload
never exits, whatever the policy. Versions that disappeared from the store stop being served,
but a scan that finds nothing servable never empties the registry.

The store is only ever read. Changes are found by polling (a directory listing and three
``stat`` calls per version, every ``reload_interval_seconds``) and on SIGHUP; :class:`ReloadLoop`
runs the reloads off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mcdropout.calibration import CALIBRATION_FILE
from mcdropout.store import METADATA_FILE, MODEL_FILE
from mcdropout_server.logs import fields
from mcdropout_server.registry import FailedVersions, ModelRegistry, ServedModel
from mcdropout_server.startup import load_version

log = logging.getLogger(__name__)

Key = tuple[str, int]
# (mtime_ns, size) of the model, metadata and calibration files; -1s for a missing file.
Fingerprint = tuple[int, ...]
_FILES = (MODEL_FILE, METADATA_FILE, CALIBRATION_FILE)


@dataclass(frozen=True)
class ReloadReport:
    """What one reload did, as (model name, version) pairs.

    Attributes:
        loaded: Versions loaded and now served (new ones, and changed ones reloaded).
        removed: Versions no longer served because they left the store.
        rejected: Versions that failed to load; they are not served.
        forgotten: Versions that had failed to load and have left the store.
    """

    loaded: tuple[Key, ...] = ()
    removed: tuple[Key, ...] = ()
    rejected: tuple[Key, ...] = ()
    forgotten: tuple[Key, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether the set of served versions changed."""
        return bool(self.loaded or self.removed)

    @property
    def readiness_changed(self) -> bool:
        """Whether any version's readiness may have changed (served, or failed to load)."""
        return bool(self.changed or self.rejected or self.forgotten)


class ModelReloader:
    """Brings a registry in line with the model store it was loaded from.

    Args:
        registry: A registry made by :meth:`ModelRegistry.load` (it knows its store and options).
        prepare: Called on each newly loaded version before it is swapped in, e.g. to warm up
            the merged-batch graphs the runner uses; an exception rejects the version.

    Raises:
        ValueError: the registry was built from models directly and has no store to re-read.
    """

    def __init__(self, registry: ModelRegistry,
                 prepare: Callable[[ServedModel], None] | None = None) -> None:
        if registry.source is None:
            raise ValueError("this registry was not loaded from a model store; it cannot be "
                             "reloaded (build it with ModelRegistry.load)")
        self.registry = registry
        self._source = registry.source
        self._prepare = prepare
        self._lock = threading.Lock()
        self._served: dict[Key, Fingerprint] = {
            (m.name, m.version): self._fingerprint((m.name, m.version))
            for m in registry.models()}
        # Versions that failed at start count as rejected: retried only once their files change.
        self._reasons: FailedVersions = registry.failed()
        self._rejected: dict[Key, Fingerprint] = {key: self._fingerprint(key)
                                                  for key in self._reasons}

    def reload(self) -> ReloadReport:
        """Load what is new or changed, drop what is gone, swap atomically (blocking; thread-safe).

        Returns:
            What changed; an empty report when the store is unchanged or cannot be listed.
        """
        with self._lock:
            return self._reload()

    def _reload(self) -> ReloadReport:
        store = self._source.store
        try:
            on_disk = {(name, version): self._fingerprint((name, version))
                       for name in store.names() for version in store.versions(name)}
        except OSError as exc:
            log.warning("model store cannot be listed; serving what is loaded",
                        extra=fields(root=str(store.root), error=str(exc)))
            return ReloadReport()
        current = {(m.name, m.version): m for m in self.registry.models()}
        todo = sorted(key for key, print_ in on_disk.items()
                      if self._served.get(key) != print_ and self._rejected.get(key) != print_)
        removed = tuple(sorted(key for key in current if key not in on_disk))
        forgotten = tuple(sorted(key for key in self._rejected if key not in on_disk))
        for key in forgotten:
            del self._rejected[key], self._reasons[key]
        loaded: dict[Key, ServedModel] = {}
        rejected = []
        for key in todo:
            try:
                served = load_version(store, *key, self._source.options)
                if self._prepare is not None:
                    self._prepare(served)
                loaded[key] = served
            except Exception as exc:  # any failure: reject this version, keep serving
                self._rejected[key] = on_disk[key]
                self._reasons[key] = f"{type(exc).__name__}: {exc}"
                rejected.append(key)
                log.error("model version rejected; the served versions stay",
                          extra=fields(model=key[0], version=key[1], error=self._reasons[key]))
        kept = {key: m for key, m in current.items() if key not in removed}
        serving = {**kept, **loaded}
        if (not loaded and not removed) or not serving:
            if loaded or removed:
                log.error("model store holds nothing servable; the served versions stay",
                          extra=fields(root=str(store.root)))
            if rejected or forgotten:  # the same versions serve; only the failed ones changed
                self.registry.replace(current.values(), self._failed(current))
            return ReloadReport(rejected=tuple(rejected), forgotten=forgotten)
        for key in removed:
            self._served.pop(key, None)
        for key in loaded:
            self._served[key] = on_disk[key]
            self._rejected.pop(key, None)
            self._reasons.pop(key, None)
        self.registry.replace(serving.values(), self._failed(serving))
        report = ReloadReport(tuple(loaded), removed, tuple(rejected), forgotten)
        log.info("served model versions swapped", extra=fields(
            loaded=_names(report.loaded), removed=_names(report.removed),
            serving=_names(tuple(sorted(serving)))))
        return report

    def _failed(self, serving: dict[Key, ServedModel]) -> FailedVersions:
        # A served version whose new files failed keeps serving: it is not reported as failed.
        return {key: reason for key, reason in self._reasons.items() if key not in serving}

    def _fingerprint(self, key: Key) -> Fingerprint:
        folder = self._source.store.path(*key)
        stats: list[int] = []
        for file in _FILES:
            try:
                stat = (folder / file).stat()
                stats += [stat.st_mtime_ns, stat.st_size]
            except OSError:
                stats += [-1, -1]
        return tuple(stats)


class ReloadLoop:
    """Runs :meth:`ModelReloader.reload` every ``interval`` seconds and on :meth:`trigger`.

    Reloads run in a worker thread, one at a time, so the event loop keeps serving meanwhile.

    Args:
        reloader: What to run.
        interval: Seconds between polls; 0 polls never (only :meth:`trigger` reloads).
        on_change: Awaited on the event loop after a reload that changed the served versions or
            the versions that failed to load.
    """

    def __init__(self, reloader: ModelReloader, interval: float,
                 on_change: Callable[[ReloadReport], Awaitable[None]]) -> None:
        self.reloader = reloader
        self.interval = interval
        self._on_change = on_change
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start polling (call on the event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="model-reload")

    def trigger(self) -> None:
        """Reload as soon as possible (call on the event loop, e.g. from a SIGHUP handler)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop polling; a reload already loading finishes in its thread, unused."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval or None)
            self._wake.clear()
            try:
                report = await asyncio.to_thread(self.reloader.reload)
                if report.readiness_changed:
                    await self._on_change(report)
            except Exception:  # a reload must never end the loop (or the server)
                log.exception("model reload failed; the served versions stay")


def _names(keys: tuple[Key, ...]) -> list[str]:
    return [f"{name}:v{version}" for name, version in keys]
