"""Health, reflection, deadlines, draining on shutdown, concurrency, metrics and request logs."""

from __future__ import annotations

import logging
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from mcdropout_client import Client
from mcdropout_client import tensors as wire
from mcdropout_client.errors import DeadlineExceeded
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2_grpc as pb_grpc
from mcdropout_server.app import SERVICE_NAME, ServerApp, ServerThread
from mcdropout_server.registry import Limits, ModelRegistry
from prometheus_client.parser import text_string_to_metric_families
from server_testkit import cls_inputs, predictor, reg_inputs, settings

from mcdropout.engine.determinism import rows_are_batch_invariant

HEALTH_NAMES = ("", SERVICE_NAME, "reg", "cls")
# Big enough to keep one worker busy for seconds: 4096 rows x 5000 passes.
HEAVY_ROWS, HEAVY_SAMPLES = 4096, 5000


@pytest.fixture
def heavy_server(registry: ModelRegistry) -> Iterator[ServerThread]:
    """A server of its own (one worker, limits that admit the heavy request), for tests that
    occupy or stop it."""
    roomy = ModelRegistry(registry.models(), Limits(max_rows=HEAVY_ROWS, max_row_samples=10**9))
    thread = ServerThread(settings(workers=1, grace_seconds=30.0), roomy)
    thread.start()
    yield thread
    if thread.app.gate is not None and not thread.app.gate.closed:
        thread.stop(grace=0)


def heavy_request(samples: int = HEAVY_SAMPLES) -> pb.PredictRequest:
    return pb.PredictRequest(model_name="reg", inputs=wire.to_proto(reg_inputs(HEAVY_ROWS)),
                             samples=samples, seed=1)


def small_request() -> pb.PredictRequest:
    return pb.PredictRequest(model_name="reg", inputs=wire.to_proto(reg_inputs(2)), samples=10)


def stubs(app: ServerApp) -> tuple[grpc.Channel, Any, Any]:
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    return channel, pb_grpc.PredictionServiceStub(channel), health_pb2_grpc.HealthStub(channel)


def health_of(health: Any, name: str) -> str:
    reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    ends = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < ends, "condition not met in time"
        time.sleep(0.01)


def test_health_serving_for_server_service_and_each_model(client: Client, channel: Any) -> None:
    for name in HEALTH_NAMES:
        assert client.health(name) == "SERVING", name
    with pytest.raises(grpc.RpcError) as info:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(channel: Any) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="mcdropout.v1.Tensor")]
    listed, described = list(stub.ServerReflectionInfo(iter(requests), timeout=5))
    names = {s.name for s in listed.list_services_response.service}
    assert names == {SERVICE_NAME, "grpc.health.v1.Health", "inference.GRPCInferenceService",
                     "grpc.reflection.v1alpha.ServerReflection"}
    assert described.file_descriptor_response.file_descriptor_proto  # the .proto is served


def test_shutdown_drains_in_flight_and_refuses_new(heavy_server: ServerThread) -> None:
    app = heavy_server.app
    channel, stub, health = stubs(app)
    with channel, ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(stub.Predict, heavy_request(HEAVY_SAMPLES // 4), timeout=60)
        wait_for(lambda: app.gate.in_flight == 1)
        stopped = heavy_server.begin_stop(grace=30.0)

        wait_for(lambda: health_of(health, "") == "NOT_SERVING")
        assert all(health_of(health, name) == "NOT_SERVING" for name in HEALTH_NAMES)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(small_request(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "server is shutting down" in info.value.details()
        assert not in_flight.done()  # still running: the drain waits for it

        answer = in_flight.result(timeout=60)
        assert answer.samples_used == HEAVY_SAMPLES // 4
        stopped.result(timeout=30)
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as after:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.PredictionServiceStub(after).Predict(small_request(), timeout=2)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # nothing listens any more


def test_grace_period_bounds_the_shutdown(heavy_server: ServerThread) -> None:
    channel, stub, _ = stubs(heavy_server.app)
    with channel, ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(stub.Predict, heavy_request(), timeout=60)
        wait_for(lambda: heavy_server.app.gate.in_flight == 1)
        started = time.monotonic()
        heavy_server.stop(grace=0.3)
        stopped_after = time.monotonic() - started
        with pytest.raises(grpc.RpcError) as info:
            in_flight.result(timeout=10)
    # The heavy request needs seconds; the server gave up on it after the grace period.
    assert stopped_after < 1.5
    assert info.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)


def test_calls_above_max_concurrent_rpcs_are_resource_exhausted(
        registry: ModelRegistry) -> None:
    roomy = ModelRegistry(registry.models(), Limits(max_rows=HEAVY_ROWS, max_row_samples=10**9))
    with ServerThread(settings(workers=1, max_concurrent_rpcs=1), roomy) as app:
        channel, stub, _ = stubs(app)
        with channel, ThreadPoolExecutor(1) as pool:
            busy = pool.submit(stub.Predict, heavy_request(HEAVY_SAMPLES // 4), timeout=60)
            wait_for(lambda: app.gate.in_flight == 1)
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(small_request(), timeout=5)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert busy.result(timeout=60).samples_used == HEAVY_SAMPLES // 4


def test_deadline_stops_the_work_and_the_server_keeps_serving(
        heavy_server: ServerThread, registry: ModelRegistry,
        monkeypatch: pytest.MonkeyPatch) -> None:
    engine = registry.get("reg").predictor
    runs: list[int] = []
    real_run = engine.run

    def counted(requests: Any, *args: Any, **kwargs: Any) -> Any:
        runs.extend(request.rows for request in requests)
        return real_run(requests, *args, **kwargs)

    monkeypatch.setattr(engine, "run", counted)
    channel, stub, _ = stubs(heavy_server.app)
    with channel, ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        stub.Predict(heavy_request(), timeout=60)
        full = time.monotonic() - started
        assert full > 1.0, f"the heavy request took only {full:.2f} s; make it heavier"

        # A deadline shorter than the work: DEADLINE_EXCEEDED, and the single worker is freed
        # long before the passes would have finished.
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(heavy_request(), timeout=0.2)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert stub.Predict(small_request(), timeout=full).samples_used == 10
        assert time.monotonic() - started < full / 2

        # A call whose deadline passes while it waits behind a busy worker never runs.
        runs.clear()
        busy = pool.submit(stub.Predict, heavy_request(HEAVY_SAMPLES // 4), timeout=60)
        wait_for(lambda: runs == [HEAVY_ROWS])
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(small_request(), timeout=0.1)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert busy.result(timeout=60).samples_used == HEAVY_SAMPLES // 4
        assert runs == [HEAVY_ROWS]  # the small call never reached the engine


def test_client_timeout_maps_to_deadline_exceeded(heavy_server: ServerThread) -> None:
    with Client(f"127.0.0.1:{heavy_server.app.port}", retries=0) as client, \
            pytest.raises(DeadlineExceeded):
        client.predict(reg_inputs(HEAVY_ROWS), model="reg", samples=HEAVY_SAMPLES, timeout=0.2)


def test_concurrent_clients_all_get_correct_answers(client: Client, store_root: Path) -> None:
    threads, per_thread = 16, 20
    local = {"reg": predictor(store_root, "reg", 2), "cls": predictor(store_root, "cls", 1)}
    jobs = [(t, i, "reg" if (t + i) % 2 else "cls") for t in range(threads)
            for i in range(per_thread)]
    inputs = {"reg": reg_inputs, "cls": cls_inputs}
    expected = {(t, i): local[m].predict(inputs[m](3, seed=t), 20, 1000 * t + i).mean
                for t, i, m in jobs}

    def worker(t: int) -> list[tuple[tuple[int, int], np.ndarray]]:
        return [((t, i), client.predict(inputs[m](3, seed=t), model=m, samples=20,
                                        seed=1000 * t + i).mean)
                for tt, i, m in jobs if tt == t]

    with ThreadPoolExecutor(threads) as pool:
        answers = [pair for chunk in pool.map(worker, range(threads)) for pair in chunk]
    assert len(answers) == threads * per_thread
    exact = rows_are_batch_invariant()  # else merged calls differ by rounding (determinism)
    for key, mean in answers:
        np.testing.assert_allclose(mean, expected[key], rtol=0 if exact else 1e-6, atol=0,
                                   err_msg=str(key))


def scrape(app: ServerApp) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{app.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_requests_by_model_method_and_code(server: ServerApp,
                                                         client: Client) -> None:
    ok = ("mcdropout_requests_total", (("code", "OK"), ("method", "Predict"), ("model", "cls")))
    missing = ("mcdropout_requests_total",
               (("code", "NOT_FOUND"), ("method", "Predict"), ("model", "_unknown")))
    before = scrape(server)
    for _ in range(3):
        client.predict(cls_inputs(5), model="cls", samples=30)
    with pytest.raises(Exception, match="not found"):
        client.predict(cls_inputs(1), model="no-such-model")
    after = scrape(server)

    assert after[ok] - before.get(ok, 0) == 3
    assert after[missing] - before.get(missing, 0) == 1
    rows = ("mcdropout_batch_rows_bucket", (("le", "8.0"), ("model", "cls")))
    assert after[rows] - before.get(rows, 0) == 3  # 5 rows each
    passes = ("mcdropout_passes_per_request_sum", (("model", "cls"),))
    assert after[passes] - before.get(passes, 0) == 90
    latency = ("mcdropout_request_seconds_count", (("method", "Predict"), ("model", "cls")))
    assert after[latency] - before.get(latency, 0) == 3
    assert after[("mcdropout_in_flight_requests", ())] == 0


def test_one_debug_line_per_request(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="mcdropout_server"):
        client.predict(reg_inputs(4), model="reg", samples=12, seed=99, request_id="rid-log-1")
    [line] = [r for r in caplog.records if getattr(r, "fields", {}).get("request_id")
              == "rid-log-1"]
    assert line.levelno == logging.DEBUG
    got = line.fields  # type: ignore[attr-defined]
    assert {k: got[k] for k in ("method", "model", "version", "rows", "samples", "seed",
                                "code")} == {"method": "Predict", "model": "reg", "version": 2,
                                             "rows": 4, "samples": 12, "seed": 99, "code": "OK"}
    assert got["ms"] > 0
