"""Admission control through a real server: a bounded queue, and deadlines that fail fast.

The model's gate holds the only worker so that the queue fills exactly as the test says.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gated_testkit import gated, gated_registry, hold_worker, running, scrape, wait_until
from mcdropout_client import Client
from mcdropout_client.errors import DeadlineExceeded, ResourceExhausted
from mcdropout_server.registry import ModelRegistry
from server_testkit import reg_inputs

DELAY = 0.05  # seconds each engine call takes at least, in the deadline tests
SAMPLES = 50


@pytest.fixture(scope="module")
def registry(store_root: Path) -> ModelRegistry:
    return gated_registry(store_root)


@pytest.fixture()
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(8) as executor:
        yield executor


@pytest.fixture()
def slow(registry: ModelRegistry) -> Iterator[None]:
    """Every engine call of "reg" takes at least DELAY seconds."""
    gated(registry, "reg").delay = DELAY
    yield
    gated(registry, "reg").delay = 0.0


def rejections(app, reason: str) -> float:
    return scrape(app).get(("mcdropout_admission_rejections_total", (("reason", reason),)), 0.0)


def test_a_full_queue_refuses_at_once_and_drops_nothing(registry, pool) -> None:
    with running(registry, workers=1, max_queue=2, batching=False) as app, \
            Client(f"127.0.0.1:{app.port}", retries=0, timeout=30.0) as client:
        model = gated(registry, "reg")
        running_call = hold_worker(registry, client, pool, seed=1)
        started = model.started
        queued = [pool.submit(client.predict, reg_inputs(2), model="reg", samples=5, seed=s)
                  for s in (2, 3)]
        wait_until(lambda: app.runner.scheduler.queued == 2, what="two requests to queue")

        began = time.monotonic()
        with pytest.raises(ResourceExhausted) as refused:
            client.predict(reg_inputs(1), model="reg", samples=5, seed=4)
        assert time.monotonic() - began < 5.0  # at once: the gate is still shut
        assert "2 requests are already waiting" in refused.value.message
        assert "MCDROPOUT_MAX_QUEUE) is 2" in refused.value.message
        assert model.started == started  # the refused request never reached the engine

        model.gate.set()
        assert running_call.result(timeout=30).samples_used == 5
        assert [f.result(timeout=30).seed for f in queued] == [2, 3]
        assert rejections(app, "QueueFullError") == 1.0
        # Room again once the queue drains.
        assert client.predict(reg_inputs(1), model="reg", samples=5, seed=5).seed == 5


def test_a_deadline_shorter_than_the_expected_wait_fails_fast(registry, pool, slow) -> None:
    with running(registry, workers=1, batching=False) as app, \
            Client(f"127.0.0.1:{app.port}", retries=0, timeout=30.0) as client:
        # Teach the server its service rate: each call of 1 x SAMPLES row-passes takes >= DELAY,
        # so it measures at most SAMPLES / DELAY = 1000 row-passes per second.
        for seed in range(3):
            client.predict(reg_inputs(1), model="reg", samples=SAMPLES, seed=seed)
        model = gated(registry, "reg")
        running_call = hold_worker(registry, client, pool, samples=SAMPLES, seed=10)
        queued = [pool.submit(client.predict, reg_inputs(1), model="reg", samples=SAMPLES,
                              seed=s) for s in (11, 12, 13, 14)]
        wait_until(lambda: app.runner.scheduler.queued == 4, what="four requests to queue")

        # Four queued calls of SAMPLES row-passes: an expected wait of at least 0.2 s.
        began = time.monotonic()
        with pytest.raises(DeadlineExceeded) as refused:
            client.predict(reg_inputs(1), model="reg", samples=SAMPLES, seed=20, timeout=0.15)
        assert time.monotonic() - began < 0.15  # refused by the server, not timed out
        assert "expected queue wait" in refused.value.message
        assert "4 requests ahead" in refused.value.message
        # A deadline that leaves room is admitted and answered.
        patient = pool.submit(client.predict, reg_inputs(1), model="reg", samples=SAMPLES,
                              seed=21, timeout=30.0)
        wait_until(lambda: app.runner.scheduler.queued == 5, what="the patient request to queue")

        model.gate.set()
        assert running_call.result(timeout=30).seed == 10
        assert [f.result(timeout=30).seed for f in queued] == [11, 12, 13, 14]
        assert patient.result(timeout=30).seed == 21
        assert rejections(app, "DeadlineExceededError") == 1.0


def test_a_request_whose_deadline_passes_in_the_queue_is_never_run(registry, pool) -> None:
    with running(registry, workers=1, batching=False) as app, \
            Client(f"127.0.0.1:{app.port}", retries=0, timeout=30.0) as client:
        model = gated(registry, "reg")
        running_call = hold_worker(registry, client, pool, seed=1)
        started = model.started
        with pytest.raises(DeadlineExceeded):
            client.predict(reg_inputs(1), model="reg", samples=5, seed=2, timeout=0.2)
        model.gate.set()
        assert running_call.result(timeout=30).seed == 1
        wait_until(lambda: app.runner.scheduler.queued == 0, what="the queue to empty")
        assert model.started == started  # the expired request never reached the engine
