"""Client-side load balancing, as the headless Service sets it up: one client, two servers.

Two real servers run on loopback (each on its own free port, as two pods behind the headless
Service would); one client is given both addresses and must spread its requests over both. Each
server counts the requests it answered in its own Prometheus registry, which is what the test
reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest
from mcdropout_client import Client
from mcdropout_server.app import ServerApp, ServerThread
from mcdropout_server.registry import ModelRegistry
from mcdropout_server.settings import ServerSettings

from mcdropout import ModelInfo, ModelStore

MODEL = "rr"
FEATURES = 3
REQUESTS = 40


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(1),
    ], name=MODEL)


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root: Path = tmp_path_factory.mktemp("store")
    info = ModelInfo(name=MODEL, task="regression", input_shape=(FEATURES,), labels=("y",),
                     default_samples=10, max_samples=100, description="round-robin test model")
    ModelStore(root).save(_model(), info)
    return root


@pytest.fixture(scope="module")
def servers(store_root: Path) -> Iterator[list[ServerApp]]:
    """Two replicas: each loads the store itself, as two pods would."""
    settings = ServerSettings(host="127.0.0.1", port=0, metrics_port=0, workers=1,
                              grace_seconds=1.0)
    threads = [
        ServerThread(settings, ModelRegistry.load(ModelStore(store_root),
                                                  memory_budget_bytes=4 * 2**20, max_samples=100))
        for _ in range(2)]
    apps = [thread.start() for thread in threads]
    yield apps
    for thread in threads:
        thread.stop(grace=1.0)


def _predictions_answered(app: ServerApp) -> float:
    value = app.metrics.registry.get_sample_value(
        "mcdropout_requests_total", {"model": MODEL, "method": "Predict", "code": "OK"})
    return value or 0.0


def test_one_client_spreads_requests_over_both_servers(servers: list[ServerApp]) -> None:
    assert servers[0].port != servers[1].port
    addresses = [f"127.0.0.1:{app.port}" for app in servers]
    x = np.random.default_rng(0).normal(size=(2, FEATURES)).astype(np.float32)

    with Client(addresses, timeout=30.0, retries=0) as client:
        results = [client.predict(x, model=MODEL, samples=5, seed=i) for i in range(REQUESTS)]

    assert all(r.mean is not None and r.mean.shape == (2, 1) for r in results)
    counts = [_predictions_answered(app) for app in servers]
    assert sum(counts) == REQUESTS, counts
    # round_robin alternates over the ready connections; only the first call or two can land on
    # one server before the other connection is up, so each must get close to half.
    assert min(counts) >= REQUESTS // 2 - 3, f"requests per server: {counts}"


def test_same_seed_gives_the_same_answer_from_either_server(servers: list[ServerApp]) -> None:
    # Replicas are interchangeable: a seeded request gives the same answer whichever replica
    # (loaded independently from the same store) answers it.
    x = np.random.default_rng(1).normal(size=(3, FEATURES)).astype(np.float32)
    means = []
    for app in servers:
        with Client(f"127.0.0.1:{app.port}", timeout=30.0, retries=0) as client:
            means.append(client.predict(x, model=MODEL, samples=20, seed=123).mean)
    np.testing.assert_array_equal(means[0], means[1])
