"""The Open Inference Protocol tests run against the same real server as tests/server.

Its fixtures (a tiny model store, the loaded registry, a server on a free loopback port, the
native client) are taken from tests/server/conftest.py rather than written twice.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from mcdropout_client.proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc

SERVER_TESTS = Path(__file__).resolve().parent.parent / "server"
sys.path.insert(0, str(SERVER_TESTS))  # server_testkit, imported by the fixtures below
_spec = importlib.util.spec_from_file_location("_server_fixtures", SERVER_TESTS / "conftest.py")
assert _spec is not None and _spec.loader is not None
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

store_root = _fixtures.store_root
registry = _fixtures.registry
server = _fixtures.server
target = _fixtures.target
channel = _fixtures.channel
stub = _fixtures.stub
client = _fixtures.client


@pytest.fixture(scope="session")
def oip_stub(channel: grpc.Channel) -> Iterator[oip_grpc.GRPCInferenceServiceStub]:
    yield oip_grpc.GRPCInferenceServiceStub(channel)
