"""The Open Inference Protocol with several named inputs and heads: ``<head>/<statistic>`` outputs.

Served by the same kind of real server as the native tests of "shop" (multi_testkit.py); every
answer equals the native client's for the same seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from mcdropout_client import Client
from mcdropout_client.proto.inference import grpc_predict_v2_pb2 as oip
from mcdropout_client.proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from multi_testkit import FEATURES, KINDS, ShopServer, shop_inputs, shop_server
from oip_testkit import infer_request, outputs_of
from server_testkit import reg_inputs


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShopServer]:
    with shop_server(tmp_path_factory.mktemp("shop")) as running:
        yield running


@pytest.fixture(scope="module")
def shop_oip(shop: ShopServer) -> Iterator[oip_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(shop.target) as channel:
        yield oip_grpc.GRPCInferenceServiceStub(channel)


def refused(stub: Any, request: oip.ModelInferRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    return caught.value


@pytest.mark.parametrize("raw", [True, False])
def test_outputs_are_named_head_slash_statistic(shop, shop_oip, raw: bool) -> None:
    x = shop_inputs(4, length=3, seed=2)
    names = ("price/mean", "price/predictive_std", "price/lower", "price/upper",
             "kind/probabilities", "kind/predicted_class", "kind/entropy", "kind/raw_samples")
    reply = shop_oip.ModelInfer(infer_request("shop", x, names, raw=raw, samples=60, seed=8,
                                              interval_level=0.8), timeout=60)
    got = outputs_of(reply)
    assert [o.name for o in reply.outputs] == list(names)
    with Client(shop.target, retries=0) as client:
        native = client.predict(x, model="shop", samples=60, seed=8, interval_levels=[0.8],
                                outputs=["mean", "predictive_std", "predicted_class",
                                         "predictive_entropy", "samples"])
    price, kind = native.heads["price"], native.heads["kind"]
    np.testing.assert_array_equal(got["price/mean"], price.mean)
    np.testing.assert_array_equal(got["price/predictive_std"], price.predictive_std)
    np.testing.assert_array_equal(got["price/lower"], price.intervals[0.8][0])
    np.testing.assert_array_equal(got["price/upper"], price.intervals[0.8][1])
    np.testing.assert_array_equal(got["kind/probabilities"], kind.mean)
    np.testing.assert_array_equal(got["kind/predicted_class"], kind.predicted_class)
    np.testing.assert_array_equal(got["kind/entropy"], kind.predictive_entropy)
    np.testing.assert_array_equal(got["kind/raw_samples"], kind.raw_samples)


def test_default_outputs_are_each_heads_defaults(shop_oip) -> None:
    reply = shop_oip.ModelInfer(infer_request("shop", shop_inputs(2), seed=1), timeout=60)
    assert [o.name for o in reply.outputs] == [
        "price/mean", "price/std", "price/predictive_std", "kind/probabilities", "kind/std",
        "kind/predicted_class", "kind/entropy", "kind/mutual_information"]


def test_metadata_lists_every_input_and_head_output(shop_oip) -> None:
    meta = shop_oip.ModelMetadata(oip.ModelMetadataRequest(name="shop"))
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("features", "FP32", [-1, FEATURES]), ("ids", "INT32", [-1, -1])]
    described = {o.name: (o.datatype, list(o.shape)) for o in meta.outputs}
    assert described["price/mean"] == ("FP64", [-1, 1])
    assert described["price/raw_samples"] == ("FP32", [-1, -1, 1])
    assert described["kind/probabilities"] == ("FP64", [-1, len(KINDS)])
    assert described["kind/predicted_class"] == ("INT64", [-1])
    assert "mean" not in described and "kind/predictive_std" not in described


def test_an_output_of_another_task_or_without_a_head_is_refused(shop_oip) -> None:
    for name in ("price/entropy", "mean", "colour/mean"):
        error = refused(shop_oip, infer_request("shop", shop_inputs(2), (name,)))
        assert f"outputs ['{name}'] do not apply to this 2-head model" in error.details()
        assert "price/mean" in error.details() and "kind/predicted_class" in error.details()


def test_input_names_are_checked_against_the_model(shop_oip) -> None:
    x = shop_inputs(2)
    error = refused(shop_oip, infer_request("shop", {"features": x["features"]}))
    assert "ids" in error.details()
    error = refused(shop_oip, infer_request("shop", {**x, "colour": x["features"]}))
    assert "colour" in error.details() and "features" in error.details()
    request = infer_request("shop", x)
    request.inputs[1].name = "features"
    error = refused(shop_oip, request)
    assert "each input must be named once" in error.details()


def test_raw_contents_need_one_entry_per_input(shop_oip) -> None:
    request = infer_request("shop", shop_inputs(2))
    del request.raw_input_contents[1]
    error = refused(shop_oip, request)
    assert "one entry per input, got 1 for 2 inputs" in error.details()


def test_a_one_input_model_keeps_the_name_inputs(oip_stub, client) -> None:
    x = reg_inputs(2)
    name = client.metadata("reg").inputs[0].name
    first = outputs_of(oip_stub.ModelInfer(infer_request("reg", x, ("mean",), seed=3)))
    again = outputs_of(oip_stub.ModelInfer(infer_request("reg", {name: x}, ("mean",), seed=3)))
    np.testing.assert_array_equal(first["mean"], again["mean"])
