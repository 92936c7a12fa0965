"""Replies larger than the message limit are refused before any work, and counted as refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from mcdropout_client import Client
from mcdropout_client import tensors as wire
from mcdropout_client.errors import ResourceExhausted
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb
from mcdropout_server import servicers
from mcdropout_server.app import ServerApp, ServerThread
from mcdropout_server.registry import ModelRegistry
from server_testkit import MAX_MESSAGE_BYTES, cls_inputs, reg_inputs, settings

pytestmark = pytest.mark.usefixtures("server_keeps_serving")


def _count(app: ServerApp, model: str, code: str) -> float:
    value = app.metrics.registry.get_sample_value(
        "mcdropout_requests_total", {"model": model, "method": "Predict", "code": code})
    return value or 0.0


SMALL_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def small(registry: ModelRegistry) -> Iterator[ServerApp]:
    """A server whose messages may hold 64 KiB (the raw-sample limit stays 100,000 values)."""
    thread = ServerThread(settings(max_message_bytes=SMALL_LIMIT), registry)
    yield thread.start()
    thread.stop(grace=1.0)


def test_a_reply_over_the_limit_is_refused_before_any_pass(
        small: ServerApp, registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = registry.get("cls").predictor
    runs: list[int] = []
    real_run = engine.run
    monkeypatch.setattr(engine, "run", lambda *a, **k: runs.append(1) or real_run(*a, **k))
    before = _count(small, "cls", "RESOURCE_EXHAUSTED")
    with Client(f"127.0.0.1:{small.port}", retries=0, timeout=30) as client:
        # 100 rows x 100 passes x 3 classes of float32 raw samples: 120,000 bytes.
        with pytest.raises(ResourceExhausted) as caught:
            client.predict(cls_inputs(100), model="cls", samples=100,
                           outputs=["mean", "samples"])
        message = str(caught.value)
        assert "reply would hold about" in message and f"{SMALL_LIMIT} bytes" in message
        assert "100 rows x 3 outputs and raw samples" in message
        assert runs == []  # refused before any pass
        assert _count(small, "cls", "RESOURCE_EXHAUSTED") == before + 1
        # The largest replies that fit are answered: 40 rows, 48,000 bytes of raw samples.
        fits = client.predict(cls_inputs(40), model="cls", samples=100, outputs=["samples"])
        assert fits.raw_samples is not None and fits.raw_samples.shape == (100, 40, 3)
        # The same call without the raw samples is small and answered.
        assert client.predict(cls_inputs(100), model="cls", samples=100).mean.shape == (100, 3)


def test_a_reply_that_outgrows_the_limit_anyway_is_counted_as_refused(
        server: ServerApp, stub: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    real = servicers.codec.encode_predict

    def bloated(*args: Any, **kwargs: Any) -> pb.PredictResponse:
        response = real(*args, **kwargs)
        response.samples.CopyFrom(wire.to_proto(np.zeros(MAX_MESSAGE_BYTES // 4 + 1, np.float32)))
        return response

    monkeypatch.setattr(servicers.codec, "encode_predict", bloated)
    ok_before = _count(server, "reg", "OK")
    refused_before = _count(server, "reg", "RESOURCE_EXHAUSTED")
    request = pb.PredictRequest(model_name="reg", inputs=wire.to_proto(reg_inputs(2)), samples=3)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "above the server's message limit" in caught.value.details()
    assert _count(server, "reg", "OK") == ok_before
    assert _count(server, "reg", "RESOURCE_EXHAUSTED") == refused_before + 1
