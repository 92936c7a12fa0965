"""``mcdropout serve --processes N``: a supervisor and N server processes on one gRPC port.

One gRPC Python process answers small requests only as fast as its one interpreter (the GIL)
allows; gRPC's answer is several processes on one port. The supervisor (this module; it never
imports TensorFlow):

1. Reserves the port: binds it with ``SO_REUSEPORT`` and does not listen (port 0: the kernel
   picks one, logged). A fixed port that another program holds fails here, loudly. The children
   bind the same port with ``SO_REUSEPORT`` and the kernel spreads new connections among them.
2. Starts N children (:mod:`mcdropout_server.child`). Each loads every model, then binds: a
   process takes connections only once its models are loaded. Health is each process's own:
   SERVING from when it takes connections, NOT_SERVING for all of them together once the drain
   begins (they get SIGTERM at once). When every child has said it serves, the supervisor
   logs ``listening on`` and opens the one metrics endpoint, which merges the children's own
   (:mod:`mcdropout_server.metrics_merge`).
3. SIGTERM or SIGINT: forwarded to every child; each drains as a single server does (health
   NOT_SERVING, new calls refused, accepted calls finish within the grace) and exits 0; then the
   supervisor exits 0. SIGHUP is forwarded: each child reloads its models and tokens.
4. A child that exits on its own (a crash, the OOM killer, a failed start): the others are
   drained and the supervisor exits 1 naming it. The orchestrator then restarts the whole
   server, as it would a single process; a server that went on with fewer processes would hide
   the failure behind a lower capacity.

Children run in their own session (Ctrl-C reaches the supervisor, which forwards SIGTERM) and are
sent SIGTERM by the kernel if the supervisor dies. They talk to each other and to the supervisor
over unix sockets in a private folder (:mod:`mcdropout_server.siblings`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from mcdropout_server.logs import fields
from mcdropout_server.process_role import ProcessRole
from mcdropout_server.settings import ServerSettings

log = logging.getLogger(__name__)
# How long the supervisor waits for a draining child beyond its grace before killing it.
STOP_MARGIN_SECONDS = 30.0


def supervise(settings: ServerSettings) -> int:
    """Run ``settings.processes`` server processes on one port until SIGTERM/SIGINT; returns the
    exit code: 0 when every process drained and exited 0, 1 when one failed.

    Raises:
        OSError: the port cannot be bound (another program holds it).
    """
    with tempfile.TemporaryDirectory(prefix="mcdropout-") as run_dir, \
            reserve_port(settings.host, settings.port) as port:
        return Supervisor(settings, port, Path(run_dir)).run()


@contextlib.contextmanager
def reserve_port(host: str, port: int) -> Iterator[int]:
    """Hold ``host:port`` bound with SO_REUSEPORT, not listening, until the block ends; yields
    the port (the kernel's choice when ``port`` is 0).

    Raises:
        OSError: a fixed port is in use (by a listening socket, SO_REUSEPORT or not).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    address = host.strip("[]")
    if port:  # without SO_REUSEPORT, so that a server already on the port is refused
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
            try:
                probe.bind((address, port))
            except OSError as exc:
                raise OSError(exc.errno, f"cannot bind {host}:{port}: {exc.strerror}") from None
    reserved = socket.socket(family, socket.SOCK_STREAM)
    try:
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserved.bind((address, port))
        yield int(reserved.getsockname()[1])
    finally:
        reserved.close()


@dataclass
class _Child:
    index: int
    process: subprocess.Popen[bytes]
    ready_pipe: int  # read end; -1 once closed
    received: bytes = b""
    report: dict[str, Any] | None = None  # what it said once serving


class Supervisor:
    """Starts, watches and drains the server processes (see the module docstring).

    Args:
        settings: The server's settings; each child gets them with ``port`` set to the
            reserved one and its own metrics endpoint off.
        port: The reserved gRPC port.
        run_dir: A private folder for the processes' sockets.
    """

    def __init__(self, settings: ServerSettings, port: int, run_dir: Path) -> None:
        self.settings, self.port, self.run_dir = settings, port, run_dir
        self.count = settings.processes
        self._child_settings = dataclasses.replace(settings, port=port, metrics_port=0,
                                                   processes=1)
        self._stop = threading.Event()
        self._stop_signal: int | None = None
        self._children: list[_Child] = []
        self._http: Any = None

    def run(self) -> int:
        """Start every child, serve until a signal or a child's exit, drain; the exit code."""
        log.info("settings: " + self.settings.describe())
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hangup)
        self._open_metrics()  # first: a metrics port in use fails before any model loads
        try:
            self._children = [self._start(index) for index in range(self.count)]
            failed = self._wait_ready()
            if failed is None and not self._stop.is_set():
                self._log_listening()
                failed = self._watch()
            if failed is None:
                log.info("shutdown signal received")
            else:
                log.error(f"process {failed.index} (pid {failed.process.pid}) "
                          f"{_exit_reason(failed.process.returncode)}; stopping the others",
                          extra=fields(process=failed.index, pid=failed.process.pid))
        finally:  # whatever ended the wait, even an error here, no child is left running
            clean = self._drain()
            if self._http is not None:
                self._http.shutdown()
                self._http.server_close()
            for child in self._children:
                _close(child)
        log.info("stopped", extra=fields(drained=clean and failed is None))
        return 0 if clean and failed is None else 1

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stop_signal = signum
        self._stop.set()

    def _on_hangup(self, signum: int, frame: FrameType | None) -> None:
        # A process still loading reads the store as it is anyway; SIGHUP is for those serving.
        log.info("reload requested; forwarded to every process serving")
        self._signal_all(signal.SIGHUP, serving_only=True)

    def _start(self, index: int) -> _Child:
        read, write = os.pipe()
        role = ProcessRole(index, self.count, self.run_dir, write, os.getpid())
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "mcdropout_server.child"], stdin=subprocess.PIPE,
                pass_fds=(write,), start_new_session=True)
        finally:
            os.close(write)
        assert process.stdin is not None
        # Settings and role travel pickled over the child's stdin: parent to its own child.
        process.stdin.write(pickle.dumps((self._child_settings, role)))
        process.stdin.close()
        return _Child(index, process, read)

    def _wait_ready(self) -> _Child | None:
        """Wait until every child serves; the first child that exits first, if one does."""
        while not self._stop.is_set():
            waiting = [c for c in self._children if c.report is None]
            if not waiting:
                return None
            readable, _, _ = select.select([c.ready_pipe for c in waiting if c.ready_pipe >= 0],
                                           [], [], 0.2)
            for child in waiting:
                if child.ready_pipe in readable:
                    _read_report(child)
            exited = self._exited()
            if exited is not None:
                return exited
        return None

    def _watch(self) -> _Child | None:
        while not self._stop.wait(0.2):
            exited = self._exited()
            if exited is not None:
                return exited
        return None

    def _exited(self) -> _Child | None:
        return next((c for c in self._children if c.process.poll() is not None), None)

    def _drain(self) -> bool:
        """SIGTERM every child still running and wait for it; True if every one exited 0."""
        self._signal_all(signal.SIGTERM)
        ends = time.monotonic() + self.settings.grace_seconds + STOP_MARGIN_SECONDS
        clean = True
        for child in self._children:
            try:
                code = child.process.wait(max(0.0, ends - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error(f"process {child.index} did not stop in time; killed",
                          extra=fields(process=child.index, pid=child.process.pid))
                child.process.kill()
                code = child.process.wait()
            # A child stopped before it served (still loading) ends by the SIGTERM itself.
            clean &= code == 0 or (child.report is None and code == -signal.SIGTERM
                                   and self._stop_signal is not None)
        return clean

    def _signal_all(self, sig: int, serving_only: bool = False) -> None:
        for child in self._children:
            if child.process.poll() is None and (child.report is not None or not serving_only):
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(sig)

    def _open_metrics(self) -> None:
        s = self.settings
        if not s.metrics_port:
            return
        from prometheus_client import CollectorRegistry, start_http_server

        from mcdropout_server.metrics_merge import MergedCollector, Scraper

        registry = CollectorRegistry()
        registry.register(MergedCollector(self.count, Scraper(self.run_dir, self._serving).fetch))
        self._http, _ = start_http_server(s.metrics_port, addr=s.metrics_host or s.host,
                                          registry=registry)

    def _serving(self, index: int) -> bool:
        children = self._children  # read on the metrics thread while run() fills it
        return index < len(children) and children[index].report is not None

    def _log_listening(self) -> None:
        s = self.settings
        metrics_port = int(self._http.server_address[1]) if self._http is not None else None
        metrics = f"metrics on :{metrics_port}" if metrics_port else "metrics off"
        pids = [c.process.pid for c in self._children]
        first = self._children[0].report or {}
        log.info(f"listening on {s.host}:{self.port}; {metrics}; {self.count} processes "
                 f"(pids {', '.join(map(str, pids))}); models: {first.get('models', '')}",
                 extra=fields(port=self.port, metrics_port=metrics_port, pids=pids))


def _read_report(child: _Child) -> None:
    data = os.read(child.ready_pipe, 65536)
    child.received += data
    if b"\n" in child.received:
        child.report = json.loads(child.received.split(b"\n", 1)[0])
    if not data or child.report is not None:
        _close(child)


def _close(child: _Child) -> None:
    if child.ready_pipe >= 0:
        os.close(child.ready_pipe)
        child.ready_pipe = -1


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"
