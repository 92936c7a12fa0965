"""NVIDIA's own client, tritonclient[grpc], unmodified, drives the Open Inference Protocol service.

tritonclient pins protobuf < 7, so it runs in its own virtual environment
(scripts/tritonclient-venv.sh, created on first use from PyPI) as a subprocess against the real
server of this session; its answers must equal the native API's for the same seed. Skipped, with
the reason, when that environment cannot be created (no network).
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from mcdropout_client import Client
from mcdropout_client.errors import ClientError
from mcdropout_client.proto.inference import grpc_predict_v2_pb2 as oip
from multi_testkit import ShopServer, shop_inputs, shop_server
from oip_testkit import client_python
from server_testkit import MAX_SAMPLES, cls_inputs, reg_inputs

PROBE = Path(__file__).with_name("tritonclient_probe.py")


@pytest.fixture(scope="module")
def triton_python() -> str:
    return client_python("tritonclient-venv.sh", "tritonclient[grpc]")


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShopServer]:
    with shop_server(tmp_path_factory.mktemp("shop")) as running:
        yield running


SHOP_X = shop_inputs(3, length=5, seed=4)


@pytest.fixture(scope="module")
def probe(triton_python: str, target: str, shop: ShopServer) -> dict[str, Any]:
    spec = {"target": target, "reg_x": reg_inputs(6).tolist(), "cls_x": cls_inputs(5).tolist(),
            "too_many_samples": MAX_SAMPLES + 1,
            "shop": {"target": shop.target, **{k: v.tolist() for k, v in SHOP_X.items()}}}
    done = subprocess.run([triton_python, str(PROBE), json.dumps(spec)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_health_and_metadata(probe: dict[str, Any]) -> None:
    assert probe["server_live"] and probe["server_ready"] and probe["model_ready"]
    assert probe["unknown_model_ready"] is False
    assert probe["server_metadata"]["name"] == "mcdropout"
    meta = probe["model_metadata"]
    assert (meta["name"], meta["versions"], meta["platform"]) == ("reg", ["1", "2"],
                                                                  "mcdropout_keras")
    assert meta["inputs"] == [["inputs", "FP32", [-1, 3]]]
    assert ["lower", "FP64", [-1, 1]] in meta["outputs"]


def test_regression_with_raw_inputs_equals_the_native_api(probe: dict[str, Any],
                                                          client: Client) -> None:
    reg = probe["reg"]
    native = client.predict(reg_inputs(6), model="reg", samples=300, seed=42,
                            interval_levels=[0.9], outputs=["mean", "std", "predictive_std"])
    assert (reg["model_version"], reg["id"], reg["raw"]) == ("2", "probe", 5)
    assert reg["parameters"] == {"samples": 300, "seed": 42, "seed_string": "42",
                                 "interval_level": 0.9}
    outputs = reg["outputs"]
    assert list(outputs) == ["mean", "std", "predictive_std", "lower", "upper"]
    for name in ("mean", "std", "predictive_std"):
        assert outputs[name]["dtype"] == "float64"
        np.testing.assert_array_equal(outputs[name]["values"], getattr(native, name))
    np.testing.assert_array_equal(outputs["lower"]["values"], native.intervals[0.9][0])
    np.testing.assert_array_equal(outputs["upper"]["values"], native.intervals[0.9][1])


def test_classifier_equals_the_native_api(probe: dict[str, Any], client: Client) -> None:
    outputs = probe["cls"]["outputs"]
    native = client.predict(cls_inputs(5), model="cls", samples=200, seed=7,
                            outputs=["mean", "predicted_class", "predictive_entropy",
                                     "mutual_information"])
    np.testing.assert_array_equal(outputs["probabilities"]["values"], native.mean)
    np.testing.assert_array_equal(outputs["entropy"]["values"], native.predictive_entropy)
    np.testing.assert_array_equal(outputs["mutual_information"]["values"],
                                  native.mutual_information)
    assert outputs["predicted_class"]["dtype"] == "int64"
    assert outputs["predicted_class"]["values"] == native.predicted_class.tolist()


def test_two_inputs_and_two_heads_equal_the_native_api(probe: dict[str, Any],
                                                        shop: ShopServer) -> None:
    assert probe["shop_metadata"]["inputs"] == [["features", "FP32", [-1, 3]],
                                                ["ids", "INT32", [-1, -1]]]
    assert ["kind/predicted_class", "INT64", [-1]] in probe["shop_metadata"]["outputs"]
    outputs = probe["shop"]["outputs"]
    with Client(shop.target, retries=0) as client:
        native = client.predict(SHOP_X, model="shop", samples=100, seed=5,
                                outputs=["mean", "predictive_std", "predicted_class"])
    price, kind = native.heads["price"], native.heads["kind"]
    np.testing.assert_array_equal(outputs["price/mean"]["values"], price.mean)
    np.testing.assert_array_equal(outputs["price/predictive_std"]["values"], price.predictive_std)
    np.testing.assert_array_equal(outputs["kind/probabilities"]["values"], kind.mean)
    assert outputs["kind/predicted_class"]["values"] == kind.predicted_class.tolist()


@pytest.mark.parametrize(("case", "kwargs"), [
    ("too_many_samples", {"model": "reg", "samples": MAX_SAMPLES + 1}),
    ("unknown_model", {"model": "nope"})])
def test_errors_carry_the_native_code_and_message(probe: dict[str, Any], client: Client,
                                                  case: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ClientError) as native:
        client.predict(reg_inputs(6), **kwargs)
    assert probe[case] == {"status": str(native.value.code), "message": native.value.message}


def test_triton_only_rpcs_are_unimplemented(probe: dict[str, Any]) -> None:
    for case, method in (("model_config", "ModelConfig"), ("repository_index", "RepositoryIndex")):
        assert probe[case]["status"] == "StatusCode.UNIMPLEMENTED"
        assert f"inference.GRPCInferenceService/{method} is not implemented" in \
            probe[case]["message"]


def test_our_proto_matches_tritons_field_for_field(probe: dict[str, Any]) -> None:
    triton = descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(probe["descriptor"]))
    ours = descriptor_pb2.FileDescriptorProto()
    oip.DESCRIPTOR.CopyToProto(ours)
    assert ours.package == triton.package == "inference"
    theirs = _messages(triton)
    for name, message in _messages(ours).items():
        assert name in theirs, name
        fields = {f.number: f for f in theirs[name].field}
        for field in message.field:
            assert _signature(field) == _signature(fields[field.number]), f"{name}.{field.name}"
        assert [o.name for o in message.oneof_decl] == [o.name for o in theirs[name].oneof_decl]
        assert message.options.map_entry == theirs[name].options.map_entry, name
    service = next(s for s in triton.service if s.name == "GRPCInferenceService")
    methods = {m.name: m for m in service.method}
    for method in ours.service[0].method:
        assert _rpc(method) == _rpc(methods[method.name]), method.name


def _messages(file: Any) -> dict[str, Any]:
    found = {}

    def walk(prefix: str, messages: Any) -> None:
        for message in messages:
            found[prefix + message.name] = message
            walk(prefix + message.name + ".", message.nested_type)

    walk("", file.message_type)
    return found


def _signature(field: Any) -> tuple[Any, ...]:
    oneof = field.oneof_index if field.HasField("oneof_index") else None
    return field.name, field.number, field.type, field.label, field.type_name, oneof


def _rpc(method: Any) -> tuple[Any, ...]:
    return (method.input_type, method.output_type, method.client_streaming,
            method.server_streaming)
