"""A real server whose model can be held at a gate, so tests can fill its queue on purpose.

The predictor is the real engine with a gate in front: while the gate is shut, an engine call
that starts waits there, occupying its worker, and every later request queues behind it. Tests
then look at what the queue does (merging, refusing, expiring) and open the gate.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mcdropout_server.app import ServerApp, ServerThread
from mcdropout_server.registry import ModelRegistry, ServedModel
from prometheus_client.parser import text_string_to_metric_families
from server_testkit import LIMITS, cls_inputs, load_options, reg_inputs, settings

from mcdropout import ModelStore
from mcdropout.engine import MCDropoutPredictor


class GatedPredictor(MCDropoutPredictor):
    """The real predictor; engine calls wait at ``gate`` and then take at least ``delay`` s."""

    gate: threading.Event
    delay: float
    started: int

    def _enter(self) -> None:
        self.started += 1
        began = time.monotonic()
        self.gate.wait(timeout=60)
        time.sleep(max(0.0, self.delay - (time.monotonic() - began)))

    def run(self, *args: Any, **kwargs: Any) -> Any:  # the one entry every request takes
        self._enter()
        return super().run(*args, **kwargs)


def gated_registry(store_root: Path) -> ModelRegistry:
    """The test store's models ("reg" v1, v2 and "cls") behind open gates, with no delay."""
    store = ModelStore(store_root)
    served = []
    for name in store.names():
        for version in store.versions(name):
            info = store.read_info(name, version)
            predictor = GatedPredictor.from_info(store.load_model(name, version), info,
                                                 **load_options())
            assert isinstance(predictor, GatedPredictor)
            predictor.gate, predictor.delay, predictor.started = threading.Event(), 0.0, 0
            predictor.gate.set()
            served.append(ServedModel(info, predictor))
    return ModelRegistry(served, LIMITS)


def gated(registry: ModelRegistry, name: str, version: int | None = None) -> GatedPredictor:
    predictor = registry.get(name, version).predictor
    assert isinstance(predictor, GatedPredictor)
    return predictor


@contextmanager
def running(registry: ModelRegistry, **changes: Any) -> Iterator[ServerApp]:
    """A fresh server over ``registry`` with settings(``changes``); every gate opens at the end."""
    thread = ServerThread(settings(**changes), registry)
    app = thread.start()
    try:
        yield app
    finally:
        for served in registry.models():
            gate = getattr(served.predictor, "gate", None)
            if gate is not None:
                gate.set()
        thread.stop(grace=5.0)


def hold_worker(registry: ModelRegistry, client: Any, pool: ThreadPoolExecutor,
                model: str = "reg", *, samples: int = 5, seed: int = 0) -> Future[Any]:
    """Shut the model's gate and send one request that occupies the only worker there.

    Returns once that request has reached the engine; its future resolves when the gate opens.
    """
    gate = gated(registry, model)
    gate.gate.clear()
    before = gate.started
    x = reg_inputs(1) if model == "reg" else cls_inputs(1)
    blocker = pool.submit(client.predict, x, model=model, samples=samples, seed=seed)
    wait_until(lambda: gate.started > before, what="the blocking request to reach the engine")
    return blocker


def wait_until(condition: Any, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``condition()`` every 5 ms until it is true; fail after ``timeout`` seconds."""
    ends = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > ends:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def scrape(app: ServerApp) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the server's /metrics page, as a user's Prometheus would see it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{app.metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}
