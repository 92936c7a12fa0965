"""The KServe SDK's gRPC client (kserve 0.21, ``kserve.InferenceGRPCClient``), unmodified, drives
the Open Inference Protocol service.

kserve pins protobuf < 7, so it runs in its own virtual environment (scripts/kserve-venv.sh,
created on first use from PyPI) as a subprocess against the real server of this session; its
answers must equal the native API's for the same seed. Its InferParameter knows only bool, int64
and string values: numbers that are not integers go as strings, and the seed comes back as the
string parameter ``seed_string`` (the uint64 ``seed`` is invisible to it). Skipped, with the
reason, when that environment cannot be created (no network).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mcdropout_client import Client
from mcdropout_client.errors import ClientError
from oip_testkit import client_python
from server_testkit import MAX_SAMPLES, cls_inputs, reg_inputs

PROBE = Path(__file__).with_name("kserve_probe.py")


@pytest.fixture(scope="module")
def probe(target: str) -> dict[str, Any]:
    python = client_python("kserve-venv.sh", "kserve==0.21.*")
    spec = {"target": target, "reg_x": reg_inputs(6).tolist(), "cls_x": cls_inputs(5).tolist(),
            "too_many_samples": MAX_SAMPLES + 1}
    done = subprocess.run([python, str(PROBE), json.dumps(spec)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout))


def values(answer: dict[str, Any], name: str) -> np.ndarray:
    return np.asarray(answer["outputs"][name]["values"])


def test_readiness(probe: dict[str, Any]) -> None:
    assert probe["server_live"] and probe["server_ready"] and probe["model_ready"]
    assert probe["unknown_model_ready"] is False


def test_regression_with_the_level_as_a_string_equals_the_native_api(
        probe: dict[str, Any], client: Client) -> None:
    reg = probe["reg"]
    native = client.predict(reg_inputs(6), model="reg", samples=300, seed=42,
                            interval_levels=[0.9], outputs=["mean", "std", "predictive_std"])
    assert (reg["model_version"], reg["id"]) == ("2", "probe")
    # What kserve reads of the response parameters: the int64 and string ones; the seed is
    # there only as seed_string (uint64 "seed" and double "interval_level" it cannot decode).
    assert reg["parameters"] == {"samples": 300, "seed_string": "42"}
    assert list(reg["outputs"]) == ["mean", "std", "predictive_std", "lower", "upper"]
    for name in ("mean", "std", "predictive_std"):
        assert reg["outputs"][name]["dtype"] == "float64"
        np.testing.assert_array_equal(values(reg, name), getattr(native, name), err_msg=name)
    np.testing.assert_array_equal(values(reg, "lower"), native.intervals[0.9][0])
    np.testing.assert_array_equal(values(reg, "upper"), native.intervals[0.9][1])


def test_classifier_with_typed_contents_and_string_integers_equals_the_native_api(
        probe: dict[str, Any], client: Client) -> None:
    cls = probe["cls"]
    native = client.predict(cls_inputs(5), model="cls", samples=200, seed=7,
                            outputs=["mean", "predicted_class", "predictive_entropy",
                                     "mutual_information"])
    assert cls["parameters"] == {"samples": 200, "seed_string": "7"}
    np.testing.assert_array_equal(values(cls, "probabilities"), native.mean)
    np.testing.assert_array_equal(values(cls, "entropy"), native.predictive_entropy)
    np.testing.assert_array_equal(values(cls, "mutual_information"), native.mutual_information)
    assert cls["outputs"]["predicted_class"]["dtype"] == "int64"
    assert values(cls, "predicted_class").tolist() == native.predicted_class.tolist()


def test_tolerance_as_a_string_stops_where_the_native_api_stops(probe: dict[str, Any],
                                                                client: Client) -> None:
    adaptive = probe["adaptive"]
    native = client.predict(reg_inputs(6), model="reg", samples=4000, seed=11, tolerance=0.05,
                            outputs=["mean", "standard_error"])
    assert adaptive["parameters"]["samples"] == native.samples_used < 4000
    np.testing.assert_array_equal(values(adaptive, "mean"), native.mean)
    assert np.all(values(adaptive, "standard_error") <= 0.05)


def test_a_drawn_seed_read_back_repeats_the_answer(probe: dict[str, Any],
                                                   client: Client) -> None:
    fresh, repeat = probe["fresh"], probe["repeat"]
    seed = fresh["parameters"]["seed_string"]
    assert 0 <= int(seed) < 2**64 and repeat["parameters"]["seed_string"] == seed
    for name in ("mean", "lower"):
        np.testing.assert_array_equal(values(repeat, name), values(fresh, name), err_msg=name)
    native = client.predict(reg_inputs(6), model="reg", samples=30, seed=int(seed))
    np.testing.assert_array_equal(values(fresh, "mean"), native.mean)


def test_a_seed_above_int64_goes_and_comes_back_as_a_string(probe: dict[str, Any],
                                                            client: Client) -> None:
    large = probe["large_seed"]
    assert large["parameters"]["seed_string"] == str(2**64 - 1)
    native = client.predict(reg_inputs(6), model="reg", samples=30, seed=2**64 - 1)
    np.testing.assert_array_equal(values(large, "mean"), native.mean)


def test_refusals(probe: dict[str, Any], client: Client) -> None:
    # The SDK itself refuses a float parameter, before sending: why levels go as strings.
    assert probe["float_parameter"] == {"status": "refused by the client",
                                        "message": "to_grpc: invalid parameter value: 0.9"}
    not_a_number = probe["not_a_number"]
    assert not_a_number["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "parameter 'interval_level' must be a number" in not_a_number["message"]
    assert "'ninety'" in not_a_number["message"]
    with pytest.raises(ClientError) as native:
        client.predict(reg_inputs(6), model="reg", samples=MAX_SAMPLES + 1)
    assert probe["too_many_samples"] == {"status": str(native.value.code),
                                         "message": native.value.message}
