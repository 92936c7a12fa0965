"""Dynamic batching through a real server: queued requests merge, and each answer is unchanged.

Each test holds the only worker at the model's gate with one request, queues more behind it, and
opens the gate: the queued requests are then taken together, as they would be under load. Every
answer is compared bit for bit with the same request run alone in this process.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gated_testkit import gated, gated_registry, hold_worker, running, scrape, wait_until
from mcdropout_client import Client
from mcdropout_client.errors import DeadlineExceeded, InvalidArgument
from mcdropout_server.registry import ModelRegistry
from server_testkit import cls_inputs, predictor, reg_inputs

from mcdropout.engine import MCDropoutPredictor
from mcdropout.engine.determinism import rows_are_batch_invariant

REG_STATS = ("mean", "std", "predictive_std")
CLS_STATS = ("mean", "std", "predicted_class", "predictive_entropy", "mutual_information")


@pytest.fixture(scope="module")
def registry(store_root: Path) -> ModelRegistry:
    return gated_registry(store_root)


@pytest.fixture(scope="module")
def alone(store_root: Path) -> dict[str, MCDropoutPredictor]:
    """Ungated in-process predictors configured like the served ones, to compare with."""
    return {"reg": predictor(store_root, "reg", 2), "cls": predictor(store_root, "cls", 1)}


@pytest.fixture()
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(16) as executor:
        yield executor


def engine_calls(app: Any, model: str) -> tuple[float, float, float]:
    """(engine calls, requests they answered, rows they took) for ``model``, from /metrics."""
    samples = scrape(app)
    label = (("model", model),)
    return (samples.get(("mcdropout_engine_call_requests_count", label), 0.0),
            samples.get(("mcdropout_engine_call_requests_sum", label), 0.0),
            samples.get(("mcdropout_engine_call_rows_sum", label), 0.0))


def queue(app: Any, pool: ThreadPoolExecutor, client: Client, requests: list[dict[str, Any]]
          ) -> list[Future[Any]]:
    before = app.runner.scheduler.queued
    futures = [pool.submit(client.predict, **r) for r in requests]
    wait_until(lambda: app.runner.scheduler.queued == before + len(requests),
               what=f"{len(requests)} requests to queue")
    return futures


def assert_alone(result: Any, engine: MCDropoutPredictor, request: dict[str, Any],
                 names: tuple[str, ...]) -> None:
    expected = engine.predict(request["x"], request["samples"], request["seed"])
    assert (result.seed, result.samples_used) == (request["seed"], request["samples"])
    for name in names:  # bit for bit where this CPU's kernels allow it (engine.determinism)
        if rows_are_batch_invariant():
            np.testing.assert_array_equal(getattr(result, name), getattr(expected, name),
                                          err_msg=name)
        else:
            np.testing.assert_allclose(getattr(result, name), getattr(expected, name),
                                       rtol=1e-5, atol=1e-12, err_msg=name)


def release(registry: ModelRegistry, blocker: Future[Any], model: str = "reg") -> None:
    """Open the model's gate again and let the blocking request finish."""
    gated(registry, model).gate.set()
    blocker.result(timeout=30)


def assert_all_alone(requests: list[dict[str, Any]], futures: list[Future[Any]],
                     engine: MCDropoutPredictor, names: tuple[str, ...]) -> None:
    """Every queued request got exactly the answer it gets alone."""
    for request, future in zip(requests, futures, strict=True):
        assert_alone(future.result(timeout=30), engine, request, names)


def test_queued_requests_merge_and_each_answer_is_unchanged(registry, alone, pool) -> None:
    with running(registry, workers=1, batch_max_wait_ms=0.0) as app, \
            Client(f"127.0.0.1:{app.port}", retries=0) as client:
        requests = [{"x": reg_inputs(rows, seed=i), "model": "reg", "samples": 60,
                     "seed": 1000 + i} for i, rows in enumerate([1, 3, 1, 2, 1, 1, 4, 1])]
        blocker = hold_worker(registry, client, pool)
        futures = queue(app, pool, client, requests)
        release(registry, blocker)
        assert_all_alone(requests, futures, alone["reg"], REG_STATS)
        # The blocker ran alone; the eight queued requests (14 rows) in one engine call.
        assert engine_calls(app, "reg") == (2.0, 9.0, 15.0)


def test_classifier_answers_are_unchanged_too(registry, alone, pool) -> None:
    with running(registry, workers=1, batch_max_wait_ms=0.0) as app, \
            Client(f"127.0.0.1:{app.port}", retries=0) as client:
        requests = [{"x": cls_inputs(rows, seed=i), "model": "cls", "samples": 40,
                     "seed": 7 * i, "outputs": list(CLS_STATS)}
                    for i, rows in enumerate([1, 2, 1, 1])]
        blocker = hold_worker(registry, client, pool, "cls")
        futures = queue(app, pool, client, requests)
        release(registry, blocker, "cls")
        assert_all_alone(requests, futures, alone["cls"], CLS_STATS)
        assert engine_calls(app, "cls")[:2] == (2.0, 5.0)


def test_the_row_budget_splits_a_queue_into_several_calls(registry, alone, pool) -> None:
    with running(registry, workers=1, batch_max_wait_ms=0.0, batch_max_rows=4) as app, \
            Client(f"127.0.0.1:{app.port}", retries=0) as client:
        requests = [{"x": reg_inputs(1, seed=i), "model": "reg", "samples": 30, "seed": i}
                    for i in range(8)]
        blocker = hold_worker(registry, client, pool)
        futures = queue(app, pool, client, requests)
        release(registry, blocker)
        assert_all_alone(requests, futures, alone["reg"], REG_STATS)
        assert engine_calls(app, "reg") == (3.0, 9.0, 9.0)  # blocker, then 4 + 4


def test_only_compatible_requests_merge(registry, alone, pool) -> None:
    """Different T run apart; adaptive sampling, intervals and raw samples always run alone."""
    with running(registry, workers=1, batch_max_wait_ms=0.0) as app, \
            Client(f"127.0.0.1:{app.port}", retries=0) as client:
        plain = [{"x": reg_inputs(1, seed=i), "model": "reg", "samples": t, "seed": i}
                 for i, t in enumerate([50, 20, 50, 20, 50])]
        special = [{"x": reg_inputs(1), "model": "reg", "samples": 50, "seed": 1,
                    "tolerance": 10.0},
                   {"x": reg_inputs(1), "model": "reg", "samples": 50, "seed": 1,
                    "interval_levels": [0.9]},
                   {"x": reg_inputs(1), "model": "reg", "samples": 50, "seed": 1,
                    "outputs": ["mean", "samples"]}]
        blocker = hold_worker(registry, client, pool)
        futures = queue(app, pool, client, plain + special)
        release(registry, blocker)
        assert_all_alone(plain, futures[:len(plain)], alone["reg"], REG_STATS)
        assert futures[-1].result(timeout=30).raw_samples.shape == (50, 1, 1)
        assert futures[-2].result(timeout=30).intervals
        # blocker; T=50 x3 merged; T=20 x2 merged; the three special requests one by one.
        assert engine_calls(app, "reg")[:2] == (6.0, 9.0)


def test_batching_can_be_turned_off(registry, alone, pool) -> None:
    with running(registry, workers=1, batching=False) as app, \
            Client(f"127.0.0.1:{app.port}", retries=0) as client:
        requests = [{"x": reg_inputs(1, seed=i), "model": "reg", "samples": 30, "seed": i}
                    for i in range(4)]
        blocker = hold_worker(registry, client, pool)
        futures = queue(app, pool, client, requests)
        release(registry, blocker)
        assert_all_alone(requests, futures, alone["reg"], REG_STATS)
        assert engine_calls(app, "reg")[:2] == (5.0, 5.0)


def test_an_expired_request_leaves_its_batch_unharmed(registry, alone, pool) -> None:
    with running(registry, workers=1, batch_max_wait_ms=0.0) as app, \
            Client(f"127.0.0.1:{app.port}", retries=0) as client:
        requests = [{"x": reg_inputs(2, seed=i), "model": "reg", "samples": 40, "seed": i}
                    for i in range(3)]
        blocker = hold_worker(registry, client, pool)
        futures = queue(app, pool, client, requests)
        doomed = queue(app, pool, client, [{"x": reg_inputs(1), "model": "reg", "samples": 40,
                                            "seed": 9, "timeout": 0.3}])[0]
        with pytest.raises(DeadlineExceeded):
            doomed.result(timeout=30)
        release(registry, blocker)
        assert_all_alone(requests, futures, alone["reg"], REG_STATS)
        assert engine_calls(app, "reg")[:2] == (2.0, 4.0)


def test_a_bad_input_fails_alone_and_the_batch_it_was_merged_into_is_answered(
        registry, alone, pool) -> None:
    with running(registry, workers=1, batch_max_wait_ms=0.0) as app, \
            Client(f"127.0.0.1:{app.port}", retries=0) as client:
        good = [{"x": reg_inputs(rows, seed=i), "model": "reg", "samples": 40, "seed": i}
                for i, rows in enumerate([2, 1, 3])]
        nan = reg_inputs(2, seed=9)
        nan[1, 0] = np.nan
        bad = {"x": nan, "model": "reg", "samples": 40, "seed": 9}
        blocker = hold_worker(registry, client, pool)
        futures = queue(app, pool, client, [good[0], bad, good[1], good[2]])
        release(registry, blocker)
        with pytest.raises(InvalidArgument, match=r"NaN or Inf \(first in row 1\)"):
            futures[1].result(timeout=30)
        assert_all_alone(good, [futures[0], *futures[2:]], alone["reg"], REG_STATS)
        assert engine_calls(app, "reg")[:2] == (2.0, 5.0)  # the four queued ones were merged


def test_an_idle_server_starts_a_lone_request_at_once(registry) -> None:
    """No other work: the batching wait does not apply, even with a long max wait."""
    with running(registry, workers=1, batch_max_wait_ms=5000.0) as app, \
            Client(f"127.0.0.1:{app.port}", retries=0, timeout=4.0) as client:
        result = client.predict(reg_inputs(1), model="reg", samples=20, seed=3)
        assert result.samples_used == 20
        samples = scrape(app)
        waited = samples[("mcdropout_queue_seconds_sum", (("model", "reg"),))]
        assert waited < 1.0
