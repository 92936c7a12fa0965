"""Health probes through a real server: answered under any load, Watch streams bounded and ended
by a drain, model names behind the token when tokens are on, and the metrics endpoint's own bind
address. ``ServerThread.stop`` runs the same ``ServerApp.stop`` that SIGTERM does."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest
from gated_testkit import gated, gated_registry, hold_worker, running, wait_until
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mcdropout_client import Client
from mcdropout_client.errors import ResourceExhausted
from mcdropout_client.proto.inference import grpc_predict_v2_pb2 as oip
from mcdropout_client.proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from mcdropout_server.app import SERVICE_NAME, ServerThread
from mcdropout_server.health import peer_address
from mcdropout_server.registry import ModelRegistry
from server_testkit import reg_inputs, settings

TOKEN = "health-test-token"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PROBES = 64  # probes sent at once while the server is saturated


@pytest.fixture(scope="module")
def gated_models(store_root: Path) -> ModelRegistry:
    return gated_registry(store_root)


@pytest.fixture()
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(8) as executor:
        yield executor


def check(channel: grpc.Channel, name: str = "", token: str | None = None) -> Any:
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    return health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=name), timeout=5, metadata=metadata)


def open_watch(channel: grpc.Channel, name: str = "") -> Any:
    """A Watch stream, once its first message (the current status) has arrived."""
    stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=name))
    assert next(stream).status in (SERVING, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
    return stream


def refused_watch(channel: grpc.Channel) -> grpc.RpcError:
    stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=5)
    with pytest.raises(grpc.RpcError) as info:
        next(stream)
    return info.value


def test_probes_are_answered_while_slow_calls_fill_the_rpc_limit(
        gated_models: ModelRegistry, pool: ThreadPoolExecutor) -> None:
    with running(gated_models, workers=1, max_concurrent_rpcs=4, batching=False) as app, \
            Client(f"127.0.0.1:{app.port}", retries=0, timeout=30.0) as client, \
            grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        blocker = hold_worker(gated_models, client, pool)
        queued = [pool.submit(client.predict, reg_inputs(1), model="reg", samples=5, seed=seed)
                  for seed in (1, 2, 3)]
        wait_until(lambda: app.gate.in_flight == 4, what="four calls to fill the limit")

        health = health_pb2_grpc.HealthStub(channel)
        probes = [health.Check.future(health_pb2.HealthCheckRequest(service=name), timeout=1.0)
                  for name in ("", SERVICE_NAME) * (PROBES // 2)]
        live = oip_grpc.GRPCInferenceServiceStub(channel).ServerLive.future(
            oip.ServerLiveRequest(), timeout=1.0)
        # Every probe answered SERVING within its 1 s deadline (an error would raise here).
        assert [probe.result().status for probe in probes] == [SERVING] * PROBES
        assert live.result().live
        # ... while a call that would do work is refused, naming the limit.
        with pytest.raises(ResourceExhausted) as refused:
            client.predict(reg_inputs(1), model="reg", samples=5)
        assert "MCDROPOUT_MAX_CONCURRENT_RPCS=4" in refused.value.message

        gated(gated_models, "reg").gate.set()
        assert blocker.result(timeout=30).samples_used == 5
        assert [call.result(timeout=30).seed for call in queued] == [1, 2, 3]
        wait_until(lambda: app.limit.active == 0, what="the calls to leave the limit")


def test_idle_watch_streams_of_a_tokenless_peer_starve_nothing(registry: ModelRegistry) -> None:
    changes = {"auth_tokens": TOKEN, "max_concurrent_rpcs": 4, "max_health_watches": 100,
               "max_health_watches_per_peer": 64}
    with ServerThread(settings(**changes), ModelRegistry(registry.models())) as app, \
            grpc.insecure_channel(f"127.0.0.1:{app.port}") as anonymous, ExitStack() as streams:
        for _ in range(64):
            streams.callback(open_watch(anonymous).cancel)
        beyond = refused_watch(anonymous)
        assert beyond.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "64 health Watch streams are open from ipv4:127.0.0.1" in beyond.details()
        assert "MCDROPOUT_MAX_HEALTH_WATCHES_PER_PEER=64" in beyond.details()

        assert check(anonymous).status == SERVING
        with Client(f"127.0.0.1:{app.port}", token=TOKEN, retries=0, timeout=10) as client:
            for seed in range(8):  # twice the RPC limit, one after another
                assert client.predict(reg_inputs(1), model="reg", samples=3, seed=seed).seed == seed
            assert [m.name for m in client.models()] == ["cls", "reg"]
            assert client.health("reg") == "SERVING"


def test_watch_streams_are_bounded_in_total(registry: ModelRegistry) -> None:
    changes = {"max_health_watches": 3, "max_health_watches_per_peer": 8}
    with ServerThread(settings(**changes), ModelRegistry(registry.models())) as app, \
            grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel, ExitStack() as streams:
        opened = [open_watch(channel, name) for name in ("", "reg", "not-a-model")]
        for stream in opened:
            streams.callback(stream.cancel)
        beyond = refused_watch(channel)
        assert beyond.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "3 health Watch streams are open" in beyond.details()
        assert "MCDROPOUT_MAX_HEALTH_WATCHES=3" in beyond.details()
        opened[0].cancel()  # a closed stream frees its place
        wait_until(lambda: app.health.watches == 2, what="the cancelled Watch to end")
        streams.callback(open_watch(channel).cancel)


def test_model_names_answer_only_callers_with_a_token(registry: ModelRegistry) -> None:
    with ServerThread(settings(auth_tokens=TOKEN), ModelRegistry(registry.models())) as app, \
            grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        # The probes' names stay open.
        assert check(channel).status == SERVING
        assert check(channel, SERVICE_NAME).status == SERVING
        # A model that exists and one that does not get the same refusal: nothing to learn.
        details = set()
        for name in ("reg", "nosuchmodel"):
            with pytest.raises(grpc.RpcError) as info:
                check(channel, name)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            details.add(info.value.details())
        assert len(details) == 1 and "the health of a model needs a bearer token" in details.pop()
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="reg"), timeout=5)
        with pytest.raises(grpc.RpcError) as info:
            next(watch)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            check(channel, "reg", token="not-a-listed-token")
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED

        assert check(channel, "reg", token=TOKEN).status == SERVING
        with pytest.raises(grpc.RpcError) as info:
            check(channel, "nosuchmodel", token=TOKEN)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_drain_ends_every_watch_stream_and_waits_only_for_the_work(
        gated_models: ModelRegistry, pool: ThreadPoolExecutor) -> None:
    thread = ServerThread(settings(workers=1, batching=False, grace_seconds=20.0), gated_models)
    app = thread.start()
    streams: list[Any] = []
    stopped = None
    try:
        with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel, \
                Client(f"127.0.0.1:{app.port}", retries=0, timeout=30.0) as client:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", SERVICE_NAME, "reg", "not-a-model"):
                streams.append(health.Watch(health_pb2.HealthCheckRequest(service=name)))
                next(streams[-1])  # the current status: the stream is open
            rest = [pool.submit(list, stream) for stream in streams]  # what follows, to the end
            blocker = hold_worker(gated_models, client, pool)

            stopped = thread.begin_stop(grace=20.0)
            # Each stream's last word is NOT_SERVING, and it ends (OK) without waiting for stop.
            for messages in rest:
                assert [m.status for m in messages.result(timeout=5)] == [NOT_SERVING]
            late = health.Watch(health_pb2.HealthCheckRequest(), timeout=5)
            assert [m.status for m in late] == [NOT_SERVING]
            assert not stopped.done()  # the call in flight holds the drain

            gated(gated_models, "reg").gate.set()
            assert blocker.result(timeout=30).samples_used == 5
            finished = time.monotonic()
            stopped.result(timeout=10)
            assert time.monotonic() - finished < 3.0  # stopped once the work was done
    finally:
        for stream in streams:
            stream.cancel()
        gated(gated_models, "reg").gate.set()
        if stopped is None:
            thread.stop(grace=0)
        else:
            stopped.result(timeout=30)


def test_metrics_bind_to_their_own_address(registry: ModelRegistry) -> None:
    with ServerThread(settings(metrics_host="127.0.0.2"), ModelRegistry(registry.models())) as app:
        with urllib.request.urlopen(f"http://127.0.0.2:{app.metrics_port}/metrics",
                                    timeout=5) as reply:
            assert b"mcdropout_" in reply.read()
        with pytest.raises(urllib.error.URLError):  # not on the gRPC address
            urllib.request.urlopen(f"http://127.0.0.1:{app.metrics_port}/metrics", timeout=5)
        with Client(f"127.0.0.1:{app.port}", retries=0, timeout=10) as client:
            assert client.health() == "SERVING"


@pytest.mark.parametrize(("peer", "address"), [
    ("ipv4:10.0.0.7:53122", "ipv4:10.0.0.7"),
    ("ipv6:[::1]:53122", "ipv6:[::1]"),
    ("unix:/run/mcdropout.sock", "unix:/run/mcdropout.sock"),
])
def test_peers_are_counted_by_address_not_port(peer: str, address: str) -> None:
    assert peer_address(peer) == address
