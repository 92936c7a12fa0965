"""A real mcdropout server on a free loopback port, over a tiny model store built here.

The store holds two small Keras models with Dropout, built directly (not trained; random weights
are enough to test serving): "reg", a regression MLP with a known tau and target scaling, in
versions 1 and 2, and "cls", a 3-class softmax classifier. Models load once per session; servers
that need other settings reuse the loaded models.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from mcdropout_client import Client, tensors
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2_grpc
from mcdropout_server.app import ServerApp, ServerThread
from mcdropout_server.registry import ModelRegistry
from server_testkit import (
    CLS_INFO,
    LIMITS,
    REG_INFO,
    classifier,
    load_options,
    reg_inputs,
    regression,
    settings,
)

from mcdropout import ModelStore


@pytest.fixture(scope="session")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    store = ModelStore(root)
    store.save(regression(1), REG_INFO)
    store.save(regression(2), REG_INFO)
    store.save(classifier(), CLS_INFO)
    return root


@pytest.fixture(scope="session")
def registry(store_root: Path) -> ModelRegistry:
    return ModelRegistry.load(ModelStore(store_root), limits=LIMITS, **load_options())


@pytest.fixture(scope="session")
def server(registry: ModelRegistry) -> Iterator[ServerApp]:
    """The shared server; tests must not stop it (lifecycle tests start their own)."""
    thread = ServerThread(settings(), registry)
    app = thread.start()
    yield app
    thread.stop(grace=1.0)


@pytest.fixture(scope="session")
def target(server: ServerApp) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="session")
def channel(target: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(target) as chan:
        yield chan


@pytest.fixture(scope="session")
def stub(channel: grpc.Channel) -> mcdropout_pb2_grpc.PredictionServiceStub:
    return mcdropout_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="session")
def client(target: str) -> Iterator[Client]:
    with Client(target, timeout=30.0, retries=0) as c:
        yield c


@pytest.fixture
def server_keeps_serving(stub: mcdropout_pb2_grpc.PredictionServiceStub) -> Iterator[None]:
    """After the test, the session server still answers a good request."""
    yield
    ok = stub.Predict(pb.PredictRequest(model_name="reg", inputs=tensors.to_proto(reg_inputs(1)),
                                        samples=2), timeout=10)
    assert ok.samples_used == 2
