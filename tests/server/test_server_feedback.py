"""Feedback: answers kept by request id, targets matched with them, the live calibration gauges.

One real server (small answer store, small window) with the real client; the gauges are read
from its /metrics page and compared with values computed here from the answers and the labels.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import tracemalloc
import uuid
from collections.abc import Iterator
from statistics import NormalDist

import grpc
import numpy as np
import pytest
from gated_testkit import scrape
from mcdropout_client import AsyncClient, Client, PredictResult, tensors
from mcdropout_client.cli import main as client_main
from mcdropout_client.errors import InvalidArgument, NotFound
from mcdropout_client.proto.inference import grpc_predict_v2_pb2 as oip
from mcdropout_client.proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2_grpc
from mcdropout_server import feedback as feedback_module
from mcdropout_server.app import ServerApp, ServerThread
from mcdropout_server.feedback import (
    AnswerNotFoundError,
    AnswerStore,
    FeedbackCall,
    FeedbackOffError,
    StoredAnswer,
    StoredHead,
)
from mcdropout_server.metrics import ServerMetrics
from mcdropout_server.registry import ModelRegistry
from mcdropout_server.rpc import status_for
from mcdropout_server.settings import ServerSettings, add_arguments
from server_testkit import CLASSES, cls_inputs, reg_inputs, settings

WINDOW = 150
STORE_ROWS = 200
TTL = 600.0
LEVELS = (0.9, 0.95)


@pytest.fixture(scope="module")
def app(registry: ModelRegistry) -> Iterator[ServerApp]:
    thread = ServerThread(settings(feedback_store_rows=STORE_ROWS, feedback_ttl_seconds=TTL,
                                   feedback_window=WINDOW, monitored_levels=LEVELS,
                                   batching=False), registry)
    yield thread.start()
    thread.stop(grace=1.0)


@pytest.fixture(scope="module")
def fb_client(app: ServerApp) -> Iterator[Client]:
    with Client(f"127.0.0.1:{app.port}", timeout=30.0, retries=0) as c:
        yield c


def gauge(app: ServerApp, name: str, **labels: str) -> float | None:
    wanted = tuple(sorted(labels.items()))
    return scrape(app).get((name, wanted))


def head_of(client: Client, model: str) -> str:
    return client.metadata(model).heads[0].name


def test_regression_coverage_and_nll_follow_the_last_window_of_fed_back_rows(
        app: ServerApp, fb_client: Client) -> None:
    head = head_of(fb_client, "reg")
    rng = np.random.default_rng(1)
    answers: list[tuple[PredictResult, np.ndarray]] = []
    for i in range(2):  # 200 rows through a window of 150: the gauges must forget the oldest
        result = fb_client.predict(reg_inputs(100, seed=i), model="reg", samples=20, seed=i,
                                   outputs=["mean", "predictive_std"], request_id=f"reg-{i}")
        assert result.version == 2
        # Targets partly inside, partly outside the intervals: spread 1.3 predictive stds.
        y = result.mean + 1.3 * result.predictive_std * rng.standard_normal(result.mean.shape)
        fed = fb_client.feedback("reg", f"reg-{i}", y)
        assert (fed.rows_matched, fed.version) == (100, 2)
        answers.append((result, y))

    mean = np.concatenate([r.mean for r, _ in answers])[-WINDOW:]
    sd = np.concatenate([r.predictive_std for r, _ in answers])[-WINDOW:]
    y = np.concatenate([t for _, t in answers])[-WINDOW:]
    series = {"model": "reg", "version": "2", "head": head, "calibrated": "false"}
    for level in LEVELS:
        z = NormalDist().inv_cdf((1 + level) / 2)
        expected = float(np.mean(np.abs(y - mean) <= z * sd))
        assert gauge(app, "mcdropout_feedback_interval_coverage", **series,
                     level=f"{level:g}") == pytest.approx(expected, abs=1e-12)
    nll = np.mean(0.5 * np.log(2 * math.pi * sd**2) + 0.5 * ((y - mean) / sd) ** 2)
    assert gauge(app, "mcdropout_feedback_nll", **series) == pytest.approx(nll, rel=1e-9)
    assert gauge(app, "mcdropout_feedback_window_rows", **series) == WINDOW
    assert gauge(app, "mcdropout_feedback_rows_matched_total", model="reg", version="2") == 200


def ece(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    total = 0.0
    for b in range(bins):
        inside = (confidence > b / bins) & (confidence <= (b + 1) / bins)
        if inside.any():
            total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return total / len(labels)


def test_classifier_accuracy_ece_and_nll_gauges(app: ServerApp, fb_client: Client) -> None:
    head = head_of(fb_client, "cls")
    result = fb_client.predict(cls_inputs(120, seed=3), model="cls", samples=20, seed=3,
                               outputs=["mean"], request_id="cls-1")
    rng = np.random.default_rng(3)
    labels = rng.integers(0, len(CLASSES), size=120)
    assert fb_client.feedback("cls", "cls-1", labels).rows_matched == 120

    series = {"model": "cls", "version": "1", "head": head, "calibrated": "false"}
    probs = result.mean
    assert gauge(app, "mcdropout_feedback_accuracy", **series) == pytest.approx(
        np.mean(probs.argmax(axis=1) == labels), abs=1e-12)
    assert gauge(app, "mcdropout_feedback_ece", **series) == pytest.approx(ece(labels, probs),
                                                                        abs=1e-12)
    nll = -np.mean(np.log(probs[np.arange(120), labels]))
    assert gauge(app, "mcdropout_feedback_nll", **series) == pytest.approx(nll, rel=1e-9)
    # Uncalibrated answers serve no prediction sets: no set gauges for them.
    assert gauge(app, "mcdropout_feedback_set_coverage", **series, level="0.9") is None


def test_rows_pick_the_answered_rows_the_targets_are_for(app: ServerApp,
                                                         fb_client: Client) -> None:
    fb_client.predict(cls_inputs(6, seed=4), model="cls", samples=5, request_id="cls-rows")
    fed = fb_client.feedback("cls", "cls-rows", np.array([2, 0]), rows=[4, 1])
    assert fed.rows_matched == 2


def test_an_oip_answer_is_fed_back_by_its_id(app: ServerApp, fb_client: Client) -> None:
    x = reg_inputs(5, seed=5)
    request = oip.ModelInferRequest(model_name="reg", id="oip-1")
    request.inputs.add(name="inputs", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert fb_client.feedback("reg", "oip-1", np.zeros((5, 1))).rows_matched == 5


def test_unknown_used_and_expired_ids_are_not_found(app: ServerApp, fb_client: Client) -> None:
    with pytest.raises(NotFound, match="never answered"):
        fb_client.feedback("reg", "no-such-id", np.zeros(3))
    fb_client.predict(reg_inputs(3), model="reg", samples=5, request_id="once")
    fb_client.feedback("reg", "once", np.zeros(3))
    with pytest.raises(NotFound, match="already fed back"):
        fb_client.feedback("reg", "once", np.zeros(3))
    store = app.feedback.store
    assert store is not None
    fb_client.predict(reg_inputs(3), model="reg", samples=5, request_id="late")
    real = store.clock
    store.clock = lambda: real() + TTL + 1
    try:
        with pytest.raises(NotFound, match=r"expired.*FEEDBACK_TTL"):
            fb_client.feedback("reg", "late", np.zeros(3))
    finally:
        store.clock = real
    unmatched = "mcdropout_feedback_requests_unmatched_total"
    for reason in ("unknown", "used", "expired"):
        assert gauge(app, unmatched, model="reg", reason=reason) >= 1  # type: ignore[operator]


def test_the_store_keeps_the_newest_rows_within_its_bound(app: ServerApp,
                                                          fb_client: Client) -> None:
    fb_client.predict(reg_inputs(10), model="reg", samples=5, request_id="oldest")
    for i in range(5):
        fb_client.predict(reg_inputs(60, seed=i), model="reg", samples=5, request_id=f"bulk-{i}")
        assert gauge(app, "mcdropout_feedback_store_rows") <= STORE_ROWS  # type: ignore[operator]
    with pytest.raises(NotFound, match="dropped to make room"):
        fb_client.feedback("reg", "oldest", np.zeros(10))
    assert fb_client.feedback("reg", "bulk-4", np.zeros(60)).rows_matched == 60
    fb_client.predict(reg_inputs(STORE_ROWS + 1), model="reg", samples=5, request_id="huge")
    with pytest.raises(NotFound, match="more rows than the store holds"):
        fb_client.feedback("reg", "huge", np.zeros(STORE_ROWS + 1))


@pytest.mark.parametrize(("model", "targets", "rows", "message"), [
    ("reg", np.zeros((4, 1)), None, r"shape \(3, 1\) or \(3,\) for 3 rows, got float64 \(4, 1\)"),
    ("reg", np.zeros((3, 2)), None, r"shape \(3, 1\)"),
    ("reg", np.array([0.0, np.nan, 1.0]), None, "finite"),
    ("cls", np.array([0.0, 1.0, 2.0]), None, "integer class indices"),
    ("cls", np.array([0, 1, 3]), None, r"labels must be in 0..2, got 0..3"),
    ("cls", np.array([0, 1]), [0, 3], r"rows must be distinct row indices of the answer, in 0..2"),
    ("cls", np.array([0, 1]), [1, 1], r"distinct"),
    ("cls", {"nope": np.array([0, 1, 2])}, None, r"named_targets must name heads of the answer"),
])
def test_bad_targets_are_invalid_and_leave_the_answer_to_feed_back(
        app: ServerApp, fb_client: Client, model: str, targets: object, rows: list[int] | None,
        message: str) -> None:
    request_id = f"bad-{uuid.uuid4().hex}"
    x = reg_inputs(3) if model == "reg" else cls_inputs(3)
    fb_client.predict(x, model=model, samples=5, request_id=request_id)
    with pytest.raises(InvalidArgument, match=message):
        fb_client.feedback(model, request_id, targets, rows=rows)
    good = np.zeros(3, dtype=np.int64) if model == "cls" else np.zeros(3)
    assert fb_client.feedback(model, request_id, good).rows_matched == 3


def test_targets_and_named_targets_exactly_one(app: ServerApp) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = mcdropout_pb2_grpc.PredictionServiceStub(channel)
        both = pb.FeedbackRequest(model_name="reg", request_id="x",
                                  targets=tensors.to_proto(np.zeros(1)))
        both.named_targets["y"].CopyFrom(tensors.to_proto(np.zeros(1)))
        for request, says in ((both, "got both"),
                              (pb.FeedbackRequest(model_name="reg", request_id="x"), "neither"),
                              (pb.FeedbackRequest(model_name="reg", targets=tensors.to_proto(
                                  np.zeros(1))), "needs model_name and request_id")):
            with pytest.raises(grpc.RpcError) as caught:
                stub.Feedback(request, timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert says in caught.value.details()


def test_the_cli_sends_targets_from_a_file(app: ServerApp, fb_client: Client, tmp_path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    fb_client.predict(cls_inputs(4), model="cls", samples=5, request_id="cli-1")
    path = tmp_path / "labels.csv"
    path.write_text("label\n0\n2\n1\n1\n")
    code = client_main(["feedback", "--target", f"127.0.0.1:{app.port}", "--model", "cls",
                        "--request-id", "cli-1", "--targets", str(path)])
    assert code == 0
    assert "matched 4 rows of cls v1" in capsys.readouterr().out


def test_without_a_store_feedback_is_a_failed_precondition() -> None:
    off = feedback_module.Feedback.off(ServerMetrics())
    with pytest.raises(FeedbackOffError, match="FEEDBACK_STORE_ROWS=0") as caught:
        off.apply(FeedbackCall("reg", "x", np.zeros(1), {}))
    assert status_for(caught.value, "x")[0] == grpc.StatusCode.FAILED_PRECONDITION


def test_store_memory_stays_bounded_over_many_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    remembered = 500  # ids of dropped answers kept to say why (MAX_DROPPED_IDS in the server)
    monkeypatch.setattr(feedback_module, "MAX_DROPPED_IDS", remembered)
    store = AnswerStore(max_rows=1000, ttl=0)
    row_bytes = 2 * 8 * 4  # mean and scale, 4 outputs, float64

    def answer(i: int) -> StoredAnswer:
        mean = np.full((10, 4), float(i))
        return StoredAnswer(1, 10, 0.0, (StoredHead("y", "regression", mean, mean.copy(), None),))

    tracemalloc.start()
    held, start = [], 0
    for checkpoint in (2_000, 8_000, 14_000):
        for i in range(start, checkpoint):
            store.put("m", f"id-{i:06d}", answer(i))
        start = checkpoint
        held.append(tracemalloc.get_traced_memory()[0])
        assert store.rows == 1000 and store.nbytes == 1000 * row_bytes
    tracemalloc.stop()
    with pytest.raises(AnswerNotFoundError, match="dropped to make room"):
        store.get("m", f"id-{14_000 - 200:06d}")
    with pytest.raises(AnswerNotFoundError, match="never answered"):  # too old to remember
        store.get("m", "id-000000")
    # 100 answers of 640 bytes of arrays plus 500 remembered ids: well under 1 MB, and the same
    # after 6,000 more answers as before them.
    assert max(held) < 2**20, held
    assert abs(held[2] - held[1]) < 64 * 1024, held


def test_wide_answers_are_bounded_by_bytes_not_only_rows() -> None:
    # A classifier's row holds one value per class: rows alone would not bound memory.
    store = AnswerStore(max_rows=10_000, ttl=0, max_bytes=3 * 1000 * 8)  # three 1000-class rows

    def wide(i: int) -> StoredAnswer:
        return StoredAnswer(1, 1, 0.0, (StoredHead("c", "classification",
                                                   np.full((1, 1000), i / 1e4), None, None),))

    for i in range(5):
        store.put("m", f"w{i}", wide(i))
    assert store.rows == 3 and store.nbytes == 3 * 1000 * 8
    with pytest.raises(AnswerNotFoundError, match="dropped to make room"):
        store.get("m", "w1")
    assert store.get("m", "w4").rows == 1
    store.put("m", "huge", StoredAnswer(1, 4, 0.0, (StoredHead(
        "c", "classification", np.zeros((4, 1000)), None, None),)))
    with pytest.raises(AnswerNotFoundError):  # larger than the whole bound: not kept
        store.get("m", "huge")
    assert store.nbytes == 3 * 1000 * 8


@pytest.mark.parametrize(("env", "message"), [
    ({"MCDROPOUT_MONITORED_LEVELS": "0.9,1.5"}, "MCDROPOUT_MONITORED_LEVELS must each be in (0, 1), "
                                               "got 0.9,1.5"),
    ({"MCDROPOUT_MONITORED_LEVELS": "high"}, "MCDROPOUT_MONITORED_LEVELS must be comma-separated "
                                             "numbers, got 'high'"),
    ({"MCDROPOUT_FEEDBACK_STORE_ROWS": "-1"}, "MCDROPOUT_FEEDBACK_STORE_ROWS must be >= 0, got -1"),
    ({"MCDROPOUT_FEEDBACK_WINDOW": "0"}, "MCDROPOUT_FEEDBACK_WINDOW must be >= 1, got 0"),
])
def test_bad_feedback_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ServerSettings.from_env(env)


def test_monitored_levels_come_from_the_environment_or_repeated_flags() -> None:
    assert ServerSettings.from_env({"MCDROPOUT_MONITORED_LEVELS": "0.8, 0.99"}
                                   ).monitored_levels == (0.8, 0.99)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--monitored-levels", "0.5", "--monitored-levels", "0.9,0.95",
                              "--feedback-ttl", "5"])
    got = ServerSettings.from_args(args, {})
    assert (got.monitored_levels, got.feedback_ttl_seconds) == ((0.5, 0.9, 0.95), 5.0)
    assert "monitored_levels=0.5,0.9,0.95" in got.describe()


def test_the_asyncio_client_sends_feedback_too(app: ServerApp, fb_client: Client) -> None:
    fb_client.predict(reg_inputs(4), model="reg", samples=5, request_id="aio-1")

    async def send() -> tuple[int, int]:
        async with AsyncClient(f"127.0.0.1:{app.port}", retries=0) as client:
            fed = await client.feedback("reg", "aio-1", np.zeros((4, 1)), rows=[0, 1, 2, 3])
            return fed.rows_matched, fed.version

    assert asyncio.run(send()) == (4, 2)
