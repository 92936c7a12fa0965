"""The blocking Client against a fake server: every method, parsing, errors, retries, routing."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from client_fakes import DEFAULT_SAMPLES, LABELS, FakeServer
from mcdropout_client import OUTPUT_NAMES, Client, errors
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb

X = np.array([[0.1, 0.2, 0.3], [1.0, -1.0, 2.0], [0.0, 0.0, 0.0]], dtype=np.float32)


def test_predict_regression_parses_every_statistic(fake: FakeServer) -> None:
    with Client(fake.address) as client:
        result = client.predict(
            X, model="reg", samples=40, seed=7, interval_levels=[0.5, 0.9],
            outputs=["mean", "std", "predictive_std", "standard_error", "samples"],
            request_id="my-id",
        )
    assert (result.model, result.version, result.samples_used, result.seed) == ("reg", 2, 40, 7)
    assert (result.request_id, result.task, result.rows) == ("my-id", "regression", 3)
    raw = result.raw_samples
    assert raw is not None and raw.shape == (40, 3, 2) and raw.dtype == np.float32
    # The fake derived every statistic from the raw samples it returned (float32 on the wire).
    np.testing.assert_allclose(result.mean, raw.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.std, raw.std(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.predictive_std, np.sqrt(raw.std(axis=0) ** 2 + 0.25),
                               rtol=1e-4)
    np.testing.assert_allclose(result.standard_error, raw.std(axis=0) / np.sqrt(40), rtol=1e-4)
    assert sorted(result.intervals) == [0.5, 0.9]
    lower, upper = result.intervals[0.9]
    assert lower.shape == upper.shape == (3, 2) and np.all(lower < upper)
    inner_lower, inner_upper = result.intervals[0.5]
    assert np.all(lower <= inner_lower) and np.all(inner_upper <= upper)
    assert result.predicted_class is None and result.mutual_information is None


def test_request_fields_reach_the_server(fake: FakeServer) -> None:
    with Client(fake.address) as client:
        client.predict(X, model="reg", version=1, samples=5, seed=2**64 - 1, tolerance=0.01,
                       outputs=["mean", "variation_ratio"], request_id="abc")
        client.predict(X, model="reg")
    sent, defaults = fake.service.requests
    assert sent.model_name == "reg" and sent.model_version == 1
    assert sent.samples == 5 and sent.seed == 2**64 - 1 and sent.tolerance == 0.01
    assert list(sent.outputs) == [pb.MEAN, pb.VARIATION_RATIO] and sent.request_id == "abc"
    assert list(sent.inputs.shape) == [3, 3] and sent.inputs.dtype == pb.FLOAT32
    # Unset options stay unset on the wire, so the server applies its own defaults.
    assert not defaults.HasField("seed") and defaults.samples == 0 and defaults.model_version == 0
    assert list(defaults.outputs) == [] and defaults.request_id == ""


def test_same_seed_gives_identical_results_and_the_server_seed_is_returned(fake) -> None:
    with Client(fake.address) as client:
        first = client.predict(X, model="reg", seed=11)
        again = client.predict(X, model="reg", seed=11)
        unseeded = client.predict(X, model="reg")
    np.testing.assert_array_equal(first.mean, again.mean)
    assert unseeded.seed == 1234 and unseeded.samples_used == DEFAULT_SAMPLES
    assert unseeded.request_id == "server-made-id"


def test_predict_classification_defaults(fake: FakeServer) -> None:
    with Client(fake.address) as client:
        result = client.predict(X, model="clf", samples=30, seed=3)
    assert result.task == "classification"
    assert result.mean is not None and result.predicted_class is not None
    np.testing.assert_allclose(result.mean.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(result.predicted_class, result.mean.argmax(axis=1))
    assert result.predicted_class.dtype == np.int64
    assert result.predictive_entropy is not None and result.mutual_information is not None
    assert np.all(result.mutual_information >= 0)
    assert np.all(result.predictive_entropy <= np.log(3) + 1e-12)
    assert result.predictive_std is None and result.raw_samples is None


def test_metadata_and_models(fake: FakeServer) -> None:
    with Client(fake.address) as client:
        meta = client.metadata("clf")
        old = client.metadata("reg", version=1)
        listed = client.models()
    assert (meta.name, meta.version, meta.versions, meta.task) == ("clf", 2, (1, 2),
                                                                   "classification")
    assert meta.labels == LABELS and meta.tau is None and meta.max_rows == 100
    assert meta.input.dtype == "float32" and meta.input.shape == (-1, 3)
    assert (meta.default_samples, meta.max_samples) == (10, 50)
    assert meta.dropout_layers[1].kind == "LSTM" and meta.dropout_layers[1].recurrent_rate == 0.3
    assert old.version == 1 and old.tau == 4.0 and old.task == "regression"
    assert [(m.name, m.task, m.versions) for m in listed] == [
        ("clf", "classification", (1, 2)), ("reg", "regression", (1, 2)),
        ("shop", "regression", (1,))]


def test_health(fake: FakeServer) -> None:
    with Client(fake.address) as client:
        assert client.health() == "SERVING"
        assert client.health("mcdropout.v1.PredictionService") == "SERVING"
        assert client.health("clf") == "NOT_SERVING"
        assert client.health("no-such-model") == "SERVICE_UNKNOWN"


@pytest.mark.parametrize(("code", "error_type"), [
    (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhausted),
    (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),
    (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated),
    (grpc.StatusCode.INTERNAL, errors.Internal),
    (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPrecondition),
    (grpc.StatusCode.ABORTED, errors.ClientError),
    (grpc.StatusCode.CANCELLED, errors.Cancelled),  # with a request id: the server ran it
])
def test_status_codes_become_typed_errors_without_retry(fake, code, error_type) -> None:
    fake.service.fail_with = [code]
    with Client(fake.address, retries=5, initial_backoff=0.001) as client, \
            pytest.raises(error_type) as caught:
        client.models()
    assert caught.value.code == code
    assert caught.value.message == f"fake failure {code.name}"
    assert caught.value.request_id == "rid-failed"
    assert fake.service.calls == 1  # no status other than UNAVAILABLE is retried


def test_server_messages_are_kept(fake: FakeServer) -> None:
    with Client(fake.address) as client:
        with pytest.raises(errors.NotFound, match="model 'nope' not found"):
            client.predict(X, model="nope")
        with pytest.raises(errors.InvalidArgument) as caught:
            client.predict(X, model="reg", samples=51)
        with pytest.raises(errors.NotFound):
            client.metadata("reg", version=9)
    assert caught.value.message == "samples must be in 1..50, got 51"
    assert str(caught.value) == "INVALID_ARGUMENT: samples must be in 1..50, got 51"


@pytest.mark.parametrize("failures", [1, 3])
def test_unavailable_is_retried_until_success(fake: FakeServer, failures: int) -> None:
    fake.service.fail_with = [grpc.StatusCode.UNAVAILABLE] * failures
    with Client(fake.address, retries=3, initial_backoff=0.001) as client:
        assert client.health() == "SERVING"  # health is not the fake: no failure there
        result = client.predict(X, model="reg", seed=1)
    assert result.seed == 1
    assert fake.service.calls == failures + 1


def test_unavailable_gives_up_after_the_configured_retries(fake: FakeServer) -> None:
    fake.service.fail_with = [grpc.StatusCode.UNAVAILABLE] * 10
    with Client(fake.address, retries=2, initial_backoff=0.001) as client, \
            pytest.raises(errors.Unavailable, match="fake failure UNAVAILABLE"):
        client.models()
    assert fake.service.calls == 3


def test_cancelled_before_any_handler_ran_is_retried(fake: FakeServer) -> None:
    # What a client sees for a call that reached a server in the last instant of its drain.
    fake.service.drop_with = [grpc.StatusCode.CANCELLED] * 2
    with Client(fake.address, retries=3, initial_backoff=0.001) as client:
        assert client.predict(X, model="reg", seed=3).seed == 3
    assert fake.service.calls == 3
    fake.service.drop_with = [grpc.StatusCode.CANCELLED] * 5
    with Client(fake.address, retries=1, initial_backoff=0.001) as client, \
            pytest.raises(errors.Cancelled) as caught:
        client.models()
    assert caught.value.request_id is None
    assert fake.service.calls == 5


def test_retries_zero_disables_retrying(fake: FakeServer) -> None:
    fake.service.fail_with = [grpc.StatusCode.UNAVAILABLE]
    with Client(fake.address, retries=0) as client, pytest.raises(errors.Unavailable):
        client.models()
    assert fake.service.calls == 1


def test_no_server_is_unavailable_after_backing_off(free_port: int) -> None:
    start = time.monotonic()
    with Client(f"127.0.0.1:{free_port}", retries=2, initial_backoff=0.05,
                max_backoff=0.05) as client, pytest.raises(errors.Unavailable):
        client.models()
    # Three refused connections and two jittered waits of at most 50 ms each.
    assert time.monotonic() - start < 5.0


def test_timeout_raises_deadline_exceeded(fake: FakeServer) -> None:
    fake.service.delay = 1.0
    with Client(fake.address, timeout=10) as client:
        start = time.monotonic()
        with pytest.raises(errors.DeadlineExceeded):
            client.models(timeout=0.2)
        assert time.monotonic() - start < 0.9
    with Client(fake.address, timeout=0.2) as client, pytest.raises(errors.DeadlineExceeded):
        client.metadata("reg")


def test_timeout_bounds_the_retries_too(fake: FakeServer) -> None:
    fake.service.fail_with = [grpc.StatusCode.UNAVAILABLE] * 1000
    start = time.monotonic()
    with Client(fake.address, timeout=0.5, retries=1000, initial_backoff=0.05,
                max_backoff=0.05) as client, \
            pytest.raises((errors.Unavailable, errors.DeadlineExceeded)):
        client.models()
    assert time.monotonic() - start < 1.5
    assert 2 < fake.service.calls < 100


def test_default_and_per_call_metadata_and_bearer_token_reach_the_server(fake) -> None:
    with Client(fake.address, token="s3cret", metadata=[("X-Tenant", "acme")]) as client:
        client.models(metadata=[("x-trace", "t-1")])
        client.predict(X, model="reg")
    first, second = fake.service.seen_metadata
    assert first["authorization"] == "Bearer s3cret"
    assert first["x-tenant"] == "acme" and first["x-trace"] == "t-1"
    assert second["authorization"] == "Bearer s3cret" and "x-trace" not in second


@pytest.mark.parametrize("as_string", [False, True])
def test_round_robin_spreads_calls_over_replicas(fake_pair, as_string: bool) -> None:
    first, second = fake_pair
    addresses = [first.address, second.address]
    with Client(",".join(addresses) if as_string else addresses) as client:
        assert client.target.startswith("ipv4:")
        for _ in range(40):
            client.models()
    counts = (first.service.calls, second.service.calls)
    assert sum(counts) == 40
    assert min(counts) >= 10, f"calls were not spread over both replicas: {counts}"


def test_local_argument_errors_are_value_errors(fake: FakeServer) -> None:
    with Client(fake.address) as client:
        with pytest.raises(ValueError, match="unknown output 'means'; allowed: mean, std"):
            client.predict(X, model="reg", outputs=["means"])
        with pytest.raises(ValueError, match=r"seed must be in 0..2\*\*64-1, got -1"):
            client.predict(X, model="reg", seed=-1)
        with pytest.raises(ValueError, match="cannot be sent as a Tensor"):
            client.predict(np.array([["a", "b", "c"]]), model="reg")
        with pytest.raises(ValueError, match="timeout must be > 0 seconds or None, got 0"):
            client.models(timeout=0)
    assert fake.service.calls == 0
    assert set(OUTPUT_NAMES) == {name.lower() for name, _ in pb.Output.items()} - {
        "output_unspecified"}


@pytest.mark.parametrize(("target", "message"), [
    ("", "target must be"),
    (["10.0.0.1:1", "[::1]:2"], "mix IPv4 and IPv6"),
    (["10.0.0.1:1", "example.com:2"], "dns:///name:port"),
    (["10.0.0.1", "10.0.0.2:2"], "with a port in 1..65535"),
])
def test_bad_targets_are_refused(target, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Client(target)


def test_target_forms() -> None:
    cases = {
        "localhost:50051": "localhost:50051",
        "dns:///mcdropout.svc:50051": "dns:///mcdropout.svc:50051",
        "localhost:1,localhost:2": "ipv4:127.0.0.1:1,127.0.0.1:2",
        ("[::1]:1", "::1:2"): "ipv6:[::1]:1,[::1]:2",
        ("10.1.2.3:7",): "10.1.2.3:7",
    }
    for target, expected in cases.items():
        with Client(target) as client:
            assert client.target == expected


def test_mutual_tls_needs_both_halves() -> None:
    with pytest.raises(ValueError, match="both private_key and certificate_chain"):
        Client("localhost:1", private_key=b"key")
