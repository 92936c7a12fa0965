"""The asyncio client against the same fake server: every method, errors, retries, routing."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
from client_fakes import LABELS, FakeServer
from mcdropout_client import AsyncClient, Client, errors

pytestmark = pytest.mark.asyncio

X = np.array([[0.5, 0.1, -0.3], [2.0, 1.0, 0.0]], dtype=np.float64)


async def test_every_method(fake: FakeServer) -> None:
    async with AsyncClient(fake.address) as client:
        reg = await client.predict(X, model="reg", samples=20, seed=5, interval_levels=[0.8],
                                   outputs=["mean", "std", "intervals", "samples"],
                                   request_id="async-1")
        clf = await client.predict(X, model="clf", seed=5)
        meta = await client.metadata("clf", version=1)
        listed = await client.models()
        statuses = [await client.health(), await client.health("clf"),
                    await client.health("nope")]
    assert (reg.task, reg.seed, reg.samples_used, reg.request_id) == ("regression", 5, 20,
                                                                      "async-1")
    assert reg.raw_samples is not None and reg.mean is not None
    np.testing.assert_allclose(reg.mean, reg.raw_samples.mean(axis=0), rtol=1e-5, atol=1e-5)
    assert list(reg.intervals) == [0.8] and reg.predictive_std is None
    assert clf.predicted_class is not None and clf.mutual_information is not None
    assert meta.labels == LABELS and meta.version == 1
    assert [m.name for m in listed] == ["clf", "reg", "shop"]
    assert statuses == ["SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"]


async def test_results_match_the_sync_client(fake: FakeServer) -> None:
    with Client(fake.address) as sync_client:
        expected = sync_client.predict(X, model="clf", samples=15, seed=99,
                                       outputs=["mean", "variation_ratio", "expected_entropy"])
    async with AsyncClient(fake.address) as client:
        result = await client.predict(X, model="clf", samples=15, seed=99,
                                      outputs=["mean", "variation_ratio", "expected_entropy"])
    for name in ("mean", "variation_ratio", "expected_entropy"):
        np.testing.assert_array_equal(getattr(result, name), getattr(expected, name))


async def test_typed_errors_and_no_retry_of_other_codes(fake: FakeServer) -> None:
    fake.service.fail_with = [grpc.StatusCode.RESOURCE_EXHAUSTED]
    async with AsyncClient(fake.address, retries=4, initial_backoff=0.001) as client:
        with pytest.raises(errors.ResourceExhausted) as caught:
            await client.predict(X, model="reg")
        with pytest.raises(errors.NotFound, match="model 'nope' version 0 not found"):
            await client.metadata("nope")
    assert caught.value.request_id == "rid-failed"
    assert fake.service.calls == 2


async def test_unavailable_is_retried(fake: FakeServer) -> None:
    fake.service.fail_with = [grpc.StatusCode.UNAVAILABLE] * 2
    async with AsyncClient(fake.address, retries=2, initial_backoff=0.001) as client:
        assert len(await client.models()) == 3
        assert fake.service.calls == 3
        fake.service.fail_with = [grpc.StatusCode.UNAVAILABLE] * 3
        with pytest.raises(errors.Unavailable):
            await client.models()
    assert fake.service.calls == 6


async def test_cancelled_before_any_handler_ran_is_retried(fake: FakeServer) -> None:
    fake.service.drop_with = [grpc.StatusCode.CANCELLED] * 2
    async with AsyncClient(fake.address, retries=2, initial_backoff=0.001) as client:
        assert len(await client.models()) == 3
        assert fake.service.calls == 3
        fake.service.fail_with = [grpc.StatusCode.CANCELLED]  # with a request id: an answer
        with pytest.raises(errors.Cancelled) as caught:
            await client.models()
    assert caught.value.request_id == "rid-failed"
    assert fake.service.calls == 4


async def test_timeout_raises_deadline_exceeded(fake: FakeServer) -> None:
    fake.service.delay = 1.0
    start = time.monotonic()
    async with AsyncClient(fake.address, timeout=0.2) as client:
        with pytest.raises(errors.DeadlineExceeded):
            await client.models()
    assert time.monotonic() - start < 0.9


async def test_concurrent_calls_and_metadata(fake: FakeServer) -> None:
    async with AsyncClient(fake.address, token="tok", metadata=[("x-team", "a")]) as client:
        results = await asyncio.gather(*(
            client.predict(X, model="reg", seed=i, metadata=[("x-call", str(i))])
            for i in range(8)))
    assert [r.seed for r in results] == list(range(8))
    seen = fake.service.seen_metadata
    assert all(m["authorization"] == "Bearer tok" and m["x-team"] == "a" for m in seen)
    assert sorted(int(m["x-call"]) for m in seen) == list(range(8))


async def test_round_robin_spreads_calls(fake_pair) -> None:
    first, second = fake_pair
    async with AsyncClient([first.address, second.address]) as client:
        for _ in range(40):
            await client.models()
    counts = (first.service.calls, second.service.calls)
    assert sum(counts) == 40 and min(counts) >= 10, counts
