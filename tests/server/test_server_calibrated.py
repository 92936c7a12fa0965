"""Calibrated answers through a real server: the native client, the Open Inference Protocol and
the in-process engine agree; prediction sets and abstention; metadata; every refusal.

The module's own store holds the session's tiny regressor ("reg") and classifier ("cls") in
version 1 (uncalibrated) and version 2 (the same model calibrated by ``calibrate`` on random
held-out rows and written by ``ModelStore.save_calibrated``; the classifier's with an
abstention policy, the regressor's without). "reg" version 3 holds a malformed calibration file,
so it fails to load under the start-up policy while everything else serves. Batching is off:
merged calibrated requests are the engine's tests' (tests/core/test_calibrated_engine.py), and
warming the merged-batch graphs of four versions would double this module's time.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from mcdropout_client import Client
from mcdropout_client.cli import main
from mcdropout_client.errors import ClientError
from mcdropout_client.proto.inference import grpc_predict_v2_pb2 as oip
from mcdropout_client.proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from mcdropout_server.app import ServerThread
from mcdropout_server.registry import ModelRegistry
from server_testkit import (
    CLASSES,
    CLS_INFO,
    LIMITS,
    REG_INFO,
    classifier,
    cls_inputs,
    load_options,
    predictor,
    reg_inputs,
    regression,
    settings,
)

from mcdropout import ModelStore, MultiHeadPrediction, Prediction
from mcdropout.calibration import CALIBRATION_FILE
from mcdropout.calibration.abstention import AbstentionTarget
from mcdropout.calibration.fit import calibrate
from mcdropout.engine import MCDropoutPredictor

CAL_ROWS = 200  # the highest set level the versions support is 200/201
SAMPLES = 30
CLS_STATS = ("mean", "std", "predicted_class", "predictive_entropy", "mutual_information")
Code = grpc.StatusCode


@dataclass
class Calibrated:
    """The running server and the in-process predictors its versions are compared with."""

    root: Path
    target: str
    registry: ModelRegistry

    def predictor(self, name: str, version: int) -> MCDropoutPredictor:
        """The version as the server loads it, calibration included."""
        return predictor(self.root, name, version)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Calibrated]:
    root = tmp_path_factory.mktemp("calibrated")
    store = ModelStore(root)
    store.save(regression(1), REG_INFO)
    store.save(classifier(), CLS_INFO)
    rng = np.random.default_rng(11)
    reg = predictor(root, "reg", 1)
    reg_x = reg_inputs(CAL_ROWS, seed=21)
    reg_y = 10.0 + 2.0 * reg_x[:, :1] + rng.normal(size=(CAL_ROWS, 1))
    store.save_calibrated("reg", 1, calibrate(reg, reg_x, reg_y, samples=SAMPLES, seed=1))
    cls = predictor(root, "cls", 1)
    cls_x = cls_inputs(CAL_ROWS, seed=22)
    cls_y = (cls_x[:, 0] > 0).astype(np.int64) + (cls_x[:, 1] > 1)
    store.save_calibrated("cls", 1, calibrate(
        cls, cls_x, cls_y, samples=SAMPLES, seed=1,
        abstention=AbstentionTarget("mutual_information", "coverage", 0.8)))
    # A version whose calibration file is cut short: it must fail to load, and only it.
    broken = store.path("reg", 3)
    shutil.copytree(store.path("reg", 1), broken)
    (broken / CALIBRATION_FILE).write_text('{"format": 1, "heads": [{"head": ')
    registry = ModelRegistry.load(store, limits=LIMITS, **load_options())
    thread = ServerThread(settings(batching=False), registry)
    app = thread.start()
    yield Calibrated(root, f"127.0.0.1:{app.port}", registry)
    thread.stop(grace=1.0)


@pytest.fixture(scope="module")
def client(served: Calibrated) -> Iterator[Client]:
    with Client(served.target, timeout=60.0, retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def infer(served: Calibrated) -> Iterator[Any]:
    with grpc.insecure_channel(served.target) as channel:
        yield oip_grpc.GRPCInferenceServiceStub(channel)


def _oip(model: str, x: np.ndarray, outputs: tuple[str, ...] = (), version: str = "2",
         **params: Any) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=model, model_version=version,
                                    outputs=[{"name": name} for name in outputs])
    request.inputs.add(name="inputs", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.astype("<f4").tobytes())
    for key, value in params.items():
        kind = {bool: "bool_param", int: "int64_param", float: "double_param",
                str: "string_param"}[type(value)]
        setattr(request.parameters[key], kind, value)
    return request


def _arrays(response: oip.ModelInferResponse) -> dict[str, np.ndarray]:
    dtypes = {"FP64": "<f8", "INT64": "<i8", "BOOL": "?", "FP32": "<f4"}
    return {t.name: np.frombuffer(raw, dtypes[t.datatype]).reshape(tuple(t.shape))
            for t, raw in zip(response.outputs, response.raw_output_contents, strict=True)}


def _one(prediction: Prediction | MultiHeadPrediction) -> Prediction:
    assert isinstance(prediction, Prediction)
    return prediction


def test_classifier_sets_and_abstain_agree_across_client_oip_and_engine(served, client,
                                                                       infer) -> None:
    x = cls_inputs(7, seed=3)
    result = client.predict(x, model="cls", version=2, samples=SAMPLES, seed=5,
                            set_levels=[0.8, 0.9], outputs=[*CLS_STATS, "abstain"])
    local = _one(served.predictor("cls", 2).predict(x, SAMPLES, 5, set_levels=[0.8, 0.9],
                                                    abstain=True))
    assert result.calibrated and local.calibrated and result.version == 2
    for stat in CLS_STATS:
        np.testing.assert_array_equal(getattr(result, stat), getattr(local, stat), stat)
    assert sorted(result.prediction_sets) == [0.8, 0.9]
    for found in local.prediction_sets:
        members = result.prediction_sets[found.level]
        assert members.dtype == np.bool_ and members.shape == (7, len(CLASSES))
        np.testing.assert_array_equal(members, found.members)
    # A set at a higher level holds every class of the set at a lower one.
    assert (result.prediction_sets[0.9] >= result.prediction_sets[0.8]).all()
    assert result.abstain is not None and result.abstain.dtype == np.bool_
    np.testing.assert_array_equal(result.abstain, local.abstain)

    response = infer.ModelInfer(_oip("cls", x, ("probabilities", "mutual_information",
                                                "prediction_set@0.8", "prediction_set@0.9",
                                                "abstain"), samples=SAMPLES, seed=5))
    got = _arrays(response)
    np.testing.assert_array_equal(got["probabilities"], result.mean)
    np.testing.assert_array_equal(got["mutual_information"], result.mutual_information)
    np.testing.assert_array_equal(got["prediction_set@0.9"], result.prediction_sets[0.9])
    np.testing.assert_array_equal(got["prediction_set@0.8"], result.prediction_sets[0.8])
    np.testing.assert_array_equal(got["abstain"], result.abstain)
    assert response.parameters["calibrated"].bool_param
    # The same through parameters alone: the default outputs and a set per level.
    by_params = infer.ModelInfer(_oip("cls", x, samples=SAMPLES, seed=5, calibrated="true",
                                      set_levels="0.8, 0.9"))
    assert [t.name for t in by_params.outputs][-2:] == ["prediction_set@0.8", "prediction_set@0.9"]
    np.testing.assert_array_equal(_arrays(by_params)["probabilities"], result.mean)

    # Calibration is applied to every statistic: the temperature moves the probabilities.
    plain = client.predict(x, model="cls", version=2, samples=SAMPLES, seed=5)
    assert not plain.calibrated and not np.array_equal(plain.mean, result.mean)


def test_regression_intervals_are_conformal_and_agree_across_apis(served, client,
                                                                  infer) -> None:
    x = reg_inputs(6, seed=4)
    result = client.predict(x, model="reg", version=2, samples=SAMPLES, seed=9,
                            interval_levels=[0.9], calibrated=True)
    engine = served.predictor("reg", 2)
    local = _one(engine.predict(x, SAMPLES, 9, interval_levels=[0.9], calibrated=True))
    (interval,) = local.intervals
    np.testing.assert_array_equal(result.intervals[0.9][0], interval.lower)
    np.testing.assert_array_equal(result.intervals[0.9][1], interval.upper)
    np.testing.assert_array_equal(result.mean, local.mean)
    assert engine.calibration is not None
    conformal = engine.calibration.heads[engine.heads[0].name].regression
    assert conformal is not None and conformal.scale == "predictive_std"
    q = conformal.quantile(0.9)  # per output column: mean +- q * predictive_std
    np.testing.assert_allclose(result.intervals[0.9][1] - result.mean,
                               q * result.predictive_std, rtol=1e-12)
    got = _arrays(infer.ModelInfer(_oip("reg", x, ("mean", "lower", "upper"), samples=SAMPLES,
                                        seed=9, interval_level=0.9, calibrated=True)))
    np.testing.assert_array_equal(got["lower"], interval.lower)
    np.testing.assert_array_equal(got["upper"], interval.upper)
    plain = client.predict(x, model="reg", version=2, samples=SAMPLES, seed=9,
                           interval_levels=[0.9])
    assert not plain.calibrated
    assert not np.array_equal(plain.intervals[0.9][0], interval.lower)


def test_metadata_shows_each_versions_calibration(client, infer, capsys) -> None:
    cls, reg = client.metadata("cls", 2), client.metadata("reg", 2)
    assert client.metadata("cls", 1).calibration == () and not client.metadata("reg", 1).calibrated
    (head,) = cls.calibration
    assert (head.method, head.rows) == ("temperature+lac", CAL_ROWS)
    assert head.temperature is not None and head.temperature > 0
    assert head.abstention is not None and head.abstention.measure == "mutual_information"
    assert head.abstention.target == "coverage" and head.drift_measure == "mutual_information"
    assert "ece" in head.before and "ece" in head.after
    (head,) = reg.calibration
    assert (head.method, head.scale, head.abstention) == ("split-conformal", "predictive_std",
                                                          None)
    assert head.drift_p99 >= head.drift_p95 > 0

    outputs = {t.name: (t.datatype, list(t.shape)) for t in infer.ModelMetadata(
        oip.ModelMetadataRequest(name="cls", version="2")).outputs}
    assert outputs["prediction_set@<level>"] == ("BOOL", [-1, len(CLASSES)])
    assert outputs["abstain"] == ("BOOL", [-1])
    reg_outputs = [t.name for t in infer.ModelMetadata(
        oip.ModelMetadataRequest(name="reg", version="2")).outputs]
    assert "abstain" not in reg_outputs  # no abstention policy
    first = [t.name for t in infer.ModelMetadata(
        oip.ModelMetadataRequest(name="cls", version="1")).outputs]
    assert not {"abstain", "prediction_set@<level>"} & set(first)

    assert main(["metadata", "--target", client.target, "--model", "cls", "--version", "2"]) == 0
    text = capsys.readouterr().out
    assert f"temperature+lac on {CAL_ROWS} rows" in text and "mutual_information >" in text


def test_cli_predicts_calibrated_sets(served, client, tmp_path: Path, capsys) -> None:
    rows = tmp_path / "rows.npy"
    np.save(rows, cls_inputs(3, seed=6))
    assert main(["predict", "--target", client.target, "--model", "cls", "--version", "2",
                 "--input", str(rows), "--seed", "1", "--set-level", "0.9"]) == 0
    table = capsys.readouterr().out
    assert "calibrated" in table.splitlines()[0] and "0.9 set" in table


# name -> (call, expected code, phrases of the message)
REFUSALS: dict[str, tuple[dict[str, Any], grpc.StatusCode, list[str]]] = {
    "calibrated, uncalibrated version": (
        {"model": "cls", "version": 1, "calibrated": True}, Code.FAILED_PRECONDITION,
        ["model 'cls' version 1 has no calibration", "mcdropout calibrate"]),
    "sets of an uncalibrated version": (
        {"model": "cls", "version": 1, "set_levels": [0.9]}, Code.FAILED_PRECONDITION,
        ["has no calibration"]),
    "set level above n/(n+1)": (
        {"model": "cls", "version": 2, "set_levels": [0.999]}, Code.INVALID_ARGUMENT,
        ["0.999", f"{CAL_ROWS} this version was calibrated on", "n/(n+1)"]),
    "interval level above n/(n+1)": (
        {"model": "reg", "version": 2, "calibrated": True, "interval_levels": [0.999]},
        Code.INVALID_ARGUMENT, ["0.999", "n/(n+1)"]),
    "set levels of a regressor": (
        {"model": "reg", "version": 2, "set_levels": [0.9]}, Code.INVALID_ARGUMENT,
        ["prediction sets are for classifier heads"]),
    "prediction_sets of a regressor": (
        {"model": "reg", "version": 2, "outputs": ["mean", "prediction_sets"]},
        Code.INVALID_ARGUMENT, ["needs set_levels"]),
    "prediction_sets without levels": (
        {"model": "cls", "version": 2, "outputs": ["prediction_sets"]}, Code.INVALID_ARGUMENT,
        ["'prediction_sets' needs set_levels"]),
    "abstain without a policy": (
        {"model": "reg", "version": 2, "outputs": ["mean", "abstain"]},
        Code.FAILED_PRECONDITION, ["model 'reg' version 2 has no abstention policy"]),
    "malformed calibration file": (
        {"model": "reg", "version": 3}, Code.NOT_FOUND, ["version 3 is not served: it failed"]),
}


def test_a_malformed_calibration_fails_its_version_alone(served: Calibrated) -> None:
    (reason,) = served.registry.failed().values()
    assert "ModelLoadError" in reason and "cannot read the calibration" in reason, reason
    assert [m.version for m in served.registry.models() if m.name == "reg"] == [1, 2]


@pytest.mark.parametrize("case", REFUSALS)
def test_refusals_say_why_and_the_server_keeps_serving(client, case: str) -> None:
    kwargs, code, phrases = REFUSALS[case]
    with pytest.raises(ClientError) as caught:
        client.predict(cls_inputs(2) if kwargs["model"] == "cls" else reg_inputs(2),
                       samples=4, **kwargs)
    assert caught.value.code == code, caught.value.message
    for phrase in phrases:
        assert phrase in caught.value.message, caught.value.message
    again = client.predict(cls_inputs(2), model="cls", version=2, samples=4, set_levels=[0.9])
    assert again.calibrated


OIP_REFUSALS: dict[str, tuple[oip.ModelInferRequest, grpc.StatusCode, list[str]]] = {
    "calibrated, uncalibrated version": (
        _oip("cls", cls_inputs(2), version="1", calibrated=True), Code.FAILED_PRECONDITION,
        ["has no calibration"]),
    "set without its level": (
        _oip("cls", cls_inputs(2), ("prediction_set",)), Code.INVALID_ARGUMENT,
        ["names its level", "prediction_set@0.9"]),
    "set level above n/(n+1)": (
        _oip("cls", cls_inputs(2), ("prediction_set@0.999",)), Code.INVALID_ARGUMENT,
        ["n/(n+1)"]),
    "level mark on another output": (
        _oip("cls", cls_inputs(2), ("probabilities@0.9",)), Code.INVALID_ARGUMENT,
        ["only prediction_set outputs name a level"]),
    "calibrated neither bool nor true/false": (
        _oip("cls", cls_inputs(2), calibrated="maybe"), Code.INVALID_ARGUMENT,
        ["'calibrated' must be a bool", "'maybe'"]),
    "set_levels not numbers": (
        _oip("cls", cls_inputs(2), set_levels="0.9,high"), Code.INVALID_ARGUMENT,
        ["'set_levels' must be a number", "separated by commas"]),
    "set of a regressor": (
        _oip("reg", reg_inputs(2), ("prediction_set@0.9",)), Code.INVALID_ARGUMENT,
        ["do not apply to this regression model"]),
    "abstain without a policy": (
        _oip("reg", reg_inputs(2), ("abstain",)), Code.FAILED_PRECONDITION,
        ["has no abstention policy"]),
}


@pytest.mark.parametrize("case", OIP_REFUSALS)
def test_oip_refusals_say_why(infer, client, case: str) -> None:
    request, code, phrases = OIP_REFUSALS[case]
    with pytest.raises(grpc.RpcError) as caught:
        infer.ModelInfer(request, timeout=30)
    error: Any = caught.value
    assert error.code() == code, error.details()
    for phrase in phrases:
        assert phrase in error.details(), error.details()
    assert client.predict(reg_inputs(1), model="reg", version=2, samples=2).samples_used == 2
