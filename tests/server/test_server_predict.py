"""Predict, GetModelMetadata and ListModels through the real clients and a raw stub."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mcdropout_client import AsyncClient, Client
from mcdropout_client import tensors as wire
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb
from server_testkit import CLASSES, LIMITS, MAX_SAMPLES, cls_inputs, predictor, reg_inputs

CLASSIFIER_OUTPUTS = ["mean", "std", "standard_error", "predicted_class", "predictive_entropy",
                      "expected_entropy", "mutual_information", "variation_ratio", "intervals"]


def test_regression_equals_the_in_process_engine(client: Client, store_root: Path) -> None:
    x = reg_inputs(7)
    result = client.predict(x, model="reg", samples=300, seed=42, interval_levels=[0.5, 0.9],
                            outputs=["mean", "std", "predictive_std", "standard_error"])
    local = predictor(store_root, "reg", 2).predict(x, 300, 42, interval_levels=[0.5, 0.9])

    assert (result.model, result.version, result.samples_used, result.seed) == ("reg", 2, 300, 42)
    assert result.task == "regression"
    np.testing.assert_array_equal(result.mean, local.mean)
    np.testing.assert_array_equal(result.std, local.std)
    np.testing.assert_array_equal(result.predictive_std, local.predictive_std)
    np.testing.assert_array_equal(result.standard_error, local.standard_error)
    assert sorted(result.intervals) == [0.5, 0.9]
    for interval in local.intervals:
        lower, upper = result.intervals[interval.level]
        np.testing.assert_array_equal(lower, interval.lower)
        np.testing.assert_array_equal(upper, interval.upper)


def test_classifier_equals_the_in_process_engine(client: Client, store_root: Path) -> None:
    x = cls_inputs(5)
    result = client.predict(x, model="cls", samples=200, seed=7, interval_levels=[0.8],
                            outputs=CLASSIFIER_OUTPUTS)
    local = predictor(store_root, "cls", 1).predict(x, 200, 7, interval_levels=[0.8])

    assert result.task == "classification"
    for name in ("mean", "std", "standard_error", "predictive_entropy", "expected_entropy",
                 "mutual_information", "variation_ratio", "predicted_class"):
        np.testing.assert_array_equal(getattr(result, name), getattr(local, name), err_msg=name)
    assert result.predicted_class.dtype == np.int64
    np.testing.assert_array_equal(result.intervals[0.8][0], local.intervals[0].lower)
    np.testing.assert_allclose(result.mean.sum(axis=1), 1.0, rtol=1e-6)


def test_default_outputs_follow_the_task(stub, client: Client) -> None:
    reg = stub.Predict(pb.PredictRequest(model_name="reg", inputs=wire.to_proto(reg_inputs(2))))
    sent = {f.name for f, _ in reg.ListFields() if f.message_type is not None}
    assert sent == {"mean", "std", "predictive_std"}
    assert reg.samples_used == 50  # the model's default_samples

    cls = client.predict(cls_inputs(2), model="cls")
    assert cls.samples_used == 40
    for name in ("mean", "std", "predicted_class", "predictive_entropy", "mutual_information"):
        assert getattr(cls, name) is not None, name
    assert cls.expected_entropy is None and cls.variation_ratio is None
    assert cls.predictive_std is None and cls.raw_samples is None


def test_versions_latest_by_default_and_explicit_on_request(client: Client) -> None:
    x = reg_inputs(3)
    latest = client.predict(x, model="reg", seed=1, samples=20)
    v1 = client.predict(x, model="reg", version=1, seed=1, samples=20)
    v2 = client.predict(x, model="reg", version=2, seed=1, samples=20)
    assert (latest.version, v1.version, v2.version) == (2, 1, 2)
    np.testing.assert_array_equal(latest.mean, v2.mean)
    assert not np.array_equal(v1.mean, v2.mean)  # different weights


def test_seed_is_returned_and_reproduces_the_answer(client: Client) -> None:
    x = reg_inputs(4)
    first = client.predict(x, model="reg", samples=64)
    again = client.predict(x, model="reg", samples=64, seed=first.seed)
    other = client.predict(x, model="reg", samples=64, seed=(first.seed + 1) % 2**64)
    np.testing.assert_array_equal(first.mean, again.mean)
    assert not np.array_equal(first.mean, other.mean)


def test_raw_samples_have_shape_passes_rows_outputs(client: Client) -> None:
    result = client.predict(cls_inputs(6), model="cls", samples=30, seed=3,
                            outputs=["mean", "samples"])
    assert result.raw_samples.shape == (30, 6, len(CLASSES))
    assert result.raw_samples.dtype == np.float32
    np.testing.assert_allclose(result.raw_samples.mean(axis=0), result.mean, atol=1e-6)


def test_adaptive_sampling_stops_once_the_standard_error_is_small(client: Client) -> None:
    # Passes run in chunks with a standard-error check after each; a tolerance of 0.1 (target
    # units) is met long before the 5000-pass ceiling by a model whose std is of order 1.
    result = client.predict(reg_inputs(3), model="reg", samples=MAX_SAMPLES, seed=5,
                            tolerance=0.1, outputs=["mean", "standard_error"])
    assert result.samples_used < MAX_SAMPLES
    assert np.all(result.standard_error <= 0.1)


def test_request_id_is_echoed_or_made(client: Client) -> None:
    given = client.predict(reg_inputs(1), model="reg", samples=2, request_id="trace-abc")
    made = client.predict(reg_inputs(1), model="reg", samples=2)
    assert given.request_id == "trace-abc"
    assert len(made.request_id) == 32 and made.request_id != given.request_id


def test_metadata_describes_the_model(client: Client) -> None:
    cls = client.metadata("cls")
    assert (cls.name, cls.version, cls.versions, cls.task) == ("cls", 1, (1,), "classification")
    assert cls.labels == CLASSES
    assert (cls.input.dtype, cls.input.shape) == ("float32", (-1, 4))
    assert cls.output.shape == (-1, len(CLASSES))
    assert [(d.kind, d.rate) for d in cls.dropout_layers] == [("Dropout", pytest.approx(0.3))]
    assert (cls.default_samples, cls.max_samples, cls.max_rows) == (40, MAX_SAMPLES,
                                                                    LIMITS.max_rows)
    assert cls.tau is None

    reg = client.metadata("reg", version=1)
    assert (reg.version, reg.versions, reg.description) == (1, (1, 2), "test regression MLP")
    # tau 4 in standardised units; the target std is 2, so 4 / 2**2 in target units.
    assert reg.tau == pytest.approx(1.0)
    assert len(reg.dropout_layers) == 2


def test_list_models(client: Client) -> None:
    models = {m.name: m for m in client.models()}
    assert set(models) == {"cls", "reg"}
    assert models["reg"].versions == (1, 2) and models["reg"].task == "regression"
    assert models["cls"].task == "classification"


async def test_async_client_gets_the_same_answers(target: str, client: Client) -> None:
    x = cls_inputs(3)
    expected = client.predict(x, model="cls", samples=25, seed=11)
    async with AsyncClient(target, retries=0) as aclient:
        result = await aclient.predict(x, model="cls", samples=25, seed=11)
        assert await aclient.health() == "SERVING"
        assert {m.name for m in await aclient.models()} == {"cls", "reg"}
        assert (await aclient.metadata("reg")).version == 2
    np.testing.assert_array_equal(result.mean, expected.mean)
    np.testing.assert_array_equal(result.mutual_information, expected.mutual_information)
