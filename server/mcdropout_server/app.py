"""Server lifecycle: build, start, serve until SIGTERM/SIGINT, drain, stop.

Draining: health turns NOT_SERVING for every name and every health Watch stream ends, new RPCs
are refused with UNAVAILABLE ("server is shutting down"), RPCs in flight get up to
``grace_seconds`` to finish, then the server stops and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2_grpc as pb_grpc

from mcdropout import ModelStore
from mcdropout.loading import import_modules
from mcdropout_server.batching import BatchPolicy
from mcdropout_server.concurrency import ConcurrencyLimit
from mcdropout_server.drain import DrainGate
from mcdropout_server.feedback import Feedback
from mcdropout_server.front import Front
from mcdropout_server.health import HealthService
from mcdropout_server.intake import intake_for
from mcdropout_server.logs import fields
from mcdropout_server.metrics import ServerMetrics
from mcdropout_server.oip_servicer import add_to_server as add_oip_to_server
from mcdropout_server.process_role import ProcessRole, report_ready
from mcdropout_server.registry import Limits, ModelRegistry
from mcdropout_server.reload import ModelReloader, ReloadLoop, ReloadReport
from mcdropout_server.runner import PredictionRunner
from mcdropout_server.security import OPEN_METHODS, refresh_tokens, server_credentials, token_auth
from mcdropout_server.servicers import PredictionServicer
from mcdropout_server.settings import ServerSettings
from mcdropout_server.siblings import ProcessServicer, Siblings

log = logging.getLogger(__name__)
SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["PredictionService"].full_name
HEALTH_SERVICE_NAME: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def load_registry(settings: ServerSettings) -> ModelRegistry:
    """Import the configured modules, then load every model of the configured store (the
    built-in default store when unset) under the start-up policy ``settings.on_load_error``.

    Raises:
        InvalidArgumentError: a module of ``settings.import_modules`` cannot be imported.
        ModelLoadError: nothing servable, or (policy "exit") any version that cannot be served
            (including one whose metadata names another model than its folder, or a link out
            of the root while allow_store_symlinks is off); the message lists every one.
    """
    import_modules(settings.import_modules)  # before any model loads: they register classes
    root = settings.model_root
    if root is None:
        from mcdropout.modeling.defaults import ensure_default_store  # deferred: may train on first use

        root = ensure_default_store()
    return ModelRegistry.load(
        ModelStore(Path(root), allow_outside_links=settings.allow_store_symlinks),
        limits=Limits(max_rows=settings.max_rows, max_row_samples=settings.max_row_samples),
        memory_budget_bytes=settings.memory_budget_mb * 2**20,
        max_samples=settings.max_samples,
        max_raw_sample_values=settings.max_raw_sample_values,
        safe_mode=not settings.allow_unsafe_models, on_load_error=settings.on_load_error,
        warmup_sample_classes=settings.warmup_sample_classes)


class ServerApp:
    """One gRPC server over a loaded registry: prediction (native and OIP), health, reflection, metrics.

    Args:
        settings: Ports, limits and worker counts (model_root is not read here).
        registry: The loaded models.
        role: Set when this is one of several processes on one port (``--processes``): the
            port is bound with SO_REUSEPORT, and the private service the supervisor and the
            other processes use is served too (:mod:`mcdropout_server.siblings`).

    Attributes:
        port: The bound gRPC port, once started (the real one when settings.port is 0).
        metrics_port: The bound metrics port, or None when metrics are off.
    """

    def __init__(self, settings: ServerSettings, registry: ModelRegistry,
                 role: ProcessRole | None = None) -> None:
        self.settings = settings
        self.role = role
        self.registry = registry
        self.metrics = ServerMetrics(registry.names())
        self.feedback = Feedback.from_settings(
            self.metrics, store_rows=settings.feedback_store_rows,
            ttl=settings.feedback_ttl_seconds, window=settings.feedback_window,
            store_bytes=settings.feedback_store_mb * 2**20,
            levels=settings.monitored_levels)
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._server: Any = None
        # Read here so that a bad certificate or token file fails before anything is bound.
        self.credentials = server_credentials(settings)
        self.auth = token_auth(settings)
        self.reloads: ReloadLoop | None = None
        self.siblings = Siblings(role, self.feedback, self.metrics) if role else None

    async def start(self) -> None:
        """Bind, start serving, and mark every health name SERVING.

        Raises:
            RuntimeError: the port cannot be bound.
        """
        s = self.settings
        self.gate = DrainGate()
        self.runner = PredictionRunner(
            self.registry, s.workers, max_queue=s.max_queue, metrics=self.metrics,
            batching=BatchPolicy(s.batching, s.batch_max_rows, s.batch_max_wait_ms / 1000),
            max_reply_bytes=s.max_message_bytes, feedback=self.feedback)
        # The RPC limit is ours, not grpcio's maximum_concurrent_rpcs (which counts health
        # checks too, so probes starved under load). Authentication runs first: a call without
        # a token never takes a slot. Every service registers with the front, which guards
        # its methods (mcdropout_server.front), and the server serves the front alone.
        self.limit = ConcurrencyLimit(s.max_concurrent_rpcs, unlimited=OPEN_METHODS)
        front = Front(intake_for(s), self.limit, self.auth, OPEN_METHODS)
        self._server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", s.max_message_bytes),
                     ("grpc.max_send_message_length", s.max_message_bytes),
                     # Alone, a port already in use fails loudly; one of several processes
                     # shares the port the supervisor reserved.
                     ("grpc.so_reuseport", int(self.siblings is not None))])
        pb_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.runner, self.gate, self.metrics) if self.siblings is None
            else ProcessServicer(self.runner, self.gate, self.metrics, self.siblings),
            front.server)
        # The Open Inference Protocol (KServe v2): a second codec over the same runner and gate.
        oip_service = add_oip_to_server(front.server, self.runner, self.gate, self.metrics)
        self.health = HealthService(s.max_health_watches, s.max_health_watches_per_peer,
                                    check_token=self.auth.check if self.auth else None,
                                    open_names=("", SERVICE_NAME))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, front.server)
        # enable_server_reflection picks the asyncio servicer only for a grpc.aio.Server.
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(
                (SERVICE_NAME, oip_service, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME)),
            front.server)
        self._server.add_generic_rpc_handlers((front,))
        host = f"[{s.host}]" if ":" in s.host else s.host
        try:
            address = f"{host}:{s.port}"
            self.port = (self._server.add_secure_port(address, self.credentials) if self.credentials
                         else self._server.add_insecure_port(address))
            await self._server.start()
            if self.siblings is not None:
                await self.siblings.start()
            if s.metrics_port:
                self.metrics_port = self.metrics.start_http(s.metrics_host or s.host,
                                                            s.metrics_port)
        except BaseException:
            await self._server.stop(0)
            if self.siblings is not None:
                await self.siblings.stop()
            self.runner.shutdown()
            raise
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._model_health: dict[str, int] = {}
        await self._publish_model_health()
        if self.registry.source is not None:  # a store to watch for new versions
            self.reloads = ReloadLoop(self._reloader(), s.reload_interval_seconds,
                                      self._models_changed)
            self.reloads.start()
        metrics = f"metrics on :{self.metrics_port}" if self.metrics_port else "metrics off"
        # One of several processes: the supervisor says "listening on" once every one serves.
        where = (f"process {self.role.index} of {self.role.count} serving" if self.role
                 else "listening")
        log.info(f"{where} on {s.host}:{self.port}; {metrics}; models: {self.describe_models()}",
                 extra=fields(port=self.port, metrics_port=self.metrics_port))

    def describe_models(self) -> str:
        """The served versions, and those that failed to load, for the start-up line."""
        models = ", ".join(f"{name} (v{', v'.join(map(str, self.registry.versions(name)))})"
                           for name in self.registry.names())
        failed = sorted(self.registry.failed())
        return models + (("; not ready (failed to load, see above): "
                          + ", ".join(f"{name} v{version}" for name, version in failed))
                         if failed else "")

    async def stop(self, grace: float | None = None) -> None:
        """Drain and stop: NOT_SERVING, refuse new RPCs, let in-flight ones finish, stop.

        Args:
            grace: Seconds in-flight RPCs may take; settings.grace_seconds when None. RPCs still
                running after it are cancelled (their passes stop at the next chunk).
        """
        grace = self.settings.grace_seconds if grace is None else grace
        ends = time.monotonic() + grace
        if self.reloads is not None:
            await self.reloads.stop()
        await self.health.drain()  # Watch streams end now: they would hold server.stop
        self.gate.close()
        log.info("draining", extra=fields(in_flight=self.gate.in_flight, grace_seconds=grace))
        drained = await self.gate.wait_idle(grace)
        await self._server.stop(max(0.0, ends - time.monotonic()))
        if self.siblings is not None:  # after the public port: a draining call may still ask
            await self.siblings.stop()
        await asyncio.to_thread(self.runner.shutdown)
        self.metrics.stop_http()
        log.info("stopped", extra=fields(drained=drained))

    def request_reload(self) -> None:
        """Re-read the model store and the token file now (on SIGHUP; call on the event loop)."""
        log.info("reload requested")
        if self.reloads is not None:
            self.reloads.trigger()
        if self.auth is not None:
            refresh_tokens(self.auth, self.settings)

    async def _models_changed(self, report: ReloadReport) -> None:
        await self._publish_model_health()

    async def _publish_model_health(self) -> None:
        """Each model name's health: SERVING while any version of it serves; NOT_SERVING when
        its versions failed to load, or when it left the store after serving."""
        names = set(self.registry.names())
        # Before health says SERVING. Removed models keep their label (see add_models).
        self.metrics.add_models(names)
        wanted = {name: health_pb2.HealthCheckResponse.NOT_SERVING
                  for name in {*self._model_health, *(n for n, _ in self.registry.failed())}}
        wanted.update((name, health_pb2.HealthCheckResponse.SERVING) for name in names)
        for name, status in sorted(wanted.items()):
            if self._model_health.get(name) != status:
                await self.health.set(name, status)
        self._model_health = wanted

    def _reloader(self) -> ModelReloader:
        # New versions get the same warm-up as those loaded at start, merged batches included.
        rows = self.settings.batch_max_rows if self.settings.batching else 0
        return ModelReloader(self.registry,
                             prepare=lambda served: served.predictor.warmup(batch_rows=rows))


def serve(settings: ServerSettings, role: ProcessRole | None = None) -> int:
    """Load the models, serve until SIGTERM or SIGINT, drain, and return the exit code (0).

    Args:
        settings: The server's settings.
        role: Set in one of several processes (:mod:`mcdropout_server.child`): it reports to
            the supervisor once it serves.
    """
    return asyncio.run(_serve(settings, role))


async def _serve(settings: ServerSettings, role: ProcessRole | None) -> int:
    if role is None:  # the supervisor logged them for all its processes
        log.info("settings: " + settings.describe())
    # SIGHUP's default action ends the process; while the models load it is ignored instead.
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: None)
    app = ServerApp(settings, load_registry(settings), role)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    if role is not None:
        report_ready(role, app.describe_models())
    loop.add_signal_handler(signal.SIGHUP, app.request_reload)
    await stop.wait()
    log.info("shutdown signal received")
    await app.stop()
    return 0


class ServerThread:
    """Runs a :class:`ServerApp` on its own event loop in a background thread.

    For tests, benchmarks and notebooks: ``with ServerThread(settings, registry) as app: ...``.

    Args:
        settings: As for :class:`ServerApp`.
        registry: The loaded models (reusable across servers).
    """

    def __init__(self, settings: ServerSettings, registry: ModelRegistry) -> None:
        self.app = ServerApp(settings, registry)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mcdropout-server",
                                        daemon=True)

    def start(self, timeout: float = 60.0) -> ServerApp:
        """Start the server and wait until it serves; returns the app (see ``app.port``)."""
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.app.start(), self._loop).result(timeout)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            self._loop.close()
            raise
        return self.app

    def begin_stop(self, grace: float | None = None) -> Any:
        """Start draining without waiting; returns a concurrent Future done when stopped."""
        future = asyncio.run_coroutine_threadsafe(self.app.stop(grace), self._loop)
        future.add_done_callback(lambda _: self._loop.call_soon_threadsafe(self._loop.stop))
        return future

    def stop(self, grace: float | None = None, timeout: float = 60.0) -> None:
        """Drain and stop the server, then end the thread."""
        self.begin_stop(grace).result(timeout)
        self._thread.join(timeout)
        self._loop.close()

    def __enter__(self) -> ServerApp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
