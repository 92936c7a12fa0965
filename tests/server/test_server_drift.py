"""Drift without labels, abstention rate and calibrated feedback, on calibrated versions.

One real server over a store made here: "reg" version 1 and its calibrated copy version 2
(``calibrate`` on 2000 held-out rows, with an abstention policy), "cls" version 1 and its
calibrated copy version 2. Rows like the calibration rows must land above the calibration's
drift p95/p99 about 5%/1% of the time; inputs far outside the training range must raise the
share above p95 clearly. Gauges are read from /metrics.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from gated_testkit import scrape
from mcdropout_client import Client
from mcdropout_server.app import ServerApp, ServerThread
from mcdropout_server.registry import ModelRegistry
from server_testkit import (
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

from mcdropout import ModelStore, Prediction
from mcdropout.calibration import AbstentionTarget, calibrate

T = 30
CAL_ROWS = 2000
WINDOW = 1000
KEEP = 0.9  # the abstention policy keeps the 90% least uncertain calibration rows


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerApp]:
    root = tmp_path_factory.mktemp("calibrated")
    store = ModelStore(root)
    store.save(regression(1), REG_INFO)
    store.save(classifier(), CLS_INFO)
    rng = np.random.default_rng(0)
    reg = predictor(root, "reg", 1)
    x = reg_inputs(CAL_ROWS, seed=100)
    fitted = reg.predict(x, samples=T, seed=1)
    assert isinstance(fitted, Prediction)
    y = fitted.mean + rng.normal(scale=0.5, size=(CAL_ROWS, 1))
    store.save_calibrated("reg", 1, calibrate(
        reg, x, y, samples=T, abstention=AbstentionTarget("predictive_std", "coverage", KEEP)))
    cls = predictor(root, "cls", 1)
    store.save_calibrated("cls", 1, calibrate(
        cls, cls_inputs(CAL_ROWS, seed=100), rng.integers(0, 3, CAL_ROWS), samples=T))
    registry = ModelRegistry.load(ModelStore(root), limits=LIMITS, **load_options())
    thread = ServerThread(settings(feedback_window=WINDOW, batching=False), registry)
    yield thread.start()
    thread.stop(grace=1.0)


@pytest.fixture(scope="module")
def client(app: ServerApp) -> Iterator[Client]:
    with Client(f"127.0.0.1:{app.port}", timeout=60.0, retries=0) as c:
        yield c


def metric(app: ServerApp, name: str, **labels: str) -> float:
    return scrape(app).get((name, tuple(sorted(labels.items()))), 0.0)


def serve(client: Client, model: str, x: np.ndarray, **options: object) -> list:
    return [client.predict(x[i:i + 250], model=model, samples=T, seed=i, **options)
            for i in range(0, len(x), 250)]


def test_in_distribution_rows_sit_above_p95_and_p99_about_5_and_1_percent(
        app: ServerApp, client: Client) -> None:
    head = client.metadata("reg").heads[0].name
    series = {"model": "reg", "version": "2", "head": head}
    served = serve(client, "reg", reg_inputs(2000, seed=7))  # uncalibrated: compared all the same
    compared = metric(app, "mcdropout_drift_rows_compared_total", **series)
    assert compared == 2000
    assert metric(app, "mcdropout_drift_measure_count", **series) == 2000
    # The reference percentiles come from 2000 rows and the share is over 2000 more: the
    # share's standard error is about sqrt(2 p (1 - p) / 2000); 5 of them allowed.
    for q, p in (("p95", 0.05), ("p99", 0.01)):
        share = metric(app, f"mcdropout_drift_rows_above_{q}_total", **series) / compared
        assert abs(share - p) < 5 * np.sqrt(2 * p * (1 - p) / 2000), (q, share)
        window = metric(app, f"mcdropout_drift_share_above_{q}", **series)
        assert abs(window - p) < 5 * np.sqrt(2 * p * (1 - p) / WINDOW), (q, window)
    # The histogram holds every row's measure: predictive_std, mean over the outputs.
    measure = np.concatenate([r.predictive_std.mean(axis=1) for r in served])
    assert metric(app, "mcdropout_drift_measure_sum", **series) == pytest.approx(measure.sum())
    assert metric(app, "mcdropout_drift_measure_bucket", **series, le="+Inf") == 2000

    serve(client, "reg", 30.0 * reg_inputs(WINDOW, seed=8))  # far outside the training range
    assert metric(app, "mcdropout_drift_share_above_p95", **series) > 0.5
    assert metric(app, "mcdropout_drift_share_above_p99", **series) > 0.3


def test_classifier_rows_are_compared_only_when_calibrated(app: ServerApp,
                                                           client: Client) -> None:
    series = {"model": "cls", "version": "2", "head": client.metadata("cls").heads[0].name}
    serve(client, "cls", cls_inputs(250, seed=9))
    assert metric(app, "mcdropout_drift_rows_compared_total", **series) == 0
    serve(client, "cls", cls_inputs(250, seed=10), calibrated=True)
    assert metric(app, "mcdropout_drift_rows_compared_total", **series) == 250
    assert metric(app, "mcdropout_drift_measure_count", **series) == 500


def test_abstention_rate_is_the_share_of_served_rows_abstained_on(app: ServerApp,
                                                                  client: Client) -> None:
    head = client.metadata("reg").heads[0].name
    served = serve(client, "reg", reg_inputs(500, seed=11), outputs=["mean", "abstain"])
    abstained = np.concatenate([r.abstain for r in served])
    rate = metric(app, "mcdropout_abstention_rate", model="reg", version="2", head=head)
    assert rate == pytest.approx(abstained.mean(), abs=1e-12)
    assert abs(rate - (1 - KEEP)) < 0.1


def test_calibrated_feedback_scores_the_intervals_and_sets_as_served(
        app: ServerApp, client: Client) -> None:
    rng = np.random.default_rng(12)
    reg = client.predict(reg_inputs(200, seed=12), model="reg", samples=T, calibrated=True,
                         interval_levels=[0.9, 0.95], request_id="cal-reg")
    y = reg.mean + rng.normal(scale=0.6, size=reg.mean.shape)
    client.feedback("reg", "cal-reg", y)
    head = client.metadata("reg").heads[0].name
    labels = {"model": "reg", "version": "2", "head": head, "calibrated": "true"}
    for level, (lower, upper) in reg.intervals.items():
        inside = np.mean((y >= lower) & (y <= upper))
        assert metric(app, "mcdropout_feedback_interval_coverage", **labels,
                      level=f"{level:g}") == pytest.approx(inside, abs=1e-12)

    cls = client.predict(cls_inputs(200, seed=13), model="cls", samples=T,
                         set_levels=[0.9, 0.95], request_id="cal-cls")
    truth = rng.integers(0, 3, 200)
    client.feedback("cls", "cal-cls", truth)
    labels = {"model": "cls", "version": "2", "head": client.metadata("cls").heads[0].name,
              "calibrated": "true"}
    for level, members in cls.prediction_sets.items():
        assert metric(app, "mcdropout_feedback_set_coverage", **labels, level=f"{level:g}") == (
            pytest.approx(members[np.arange(200), truth].mean(), abs=1e-12))
        assert metric(app, "mcdropout_feedback_set_size", **labels, level=f"{level:g}") == (
            pytest.approx(members.sum(axis=1).mean(), abs=1e-12))


def test_the_calibrated_copies_are_served_as_new_versions(app: ServerApp) -> None:
    assert app.registry.versions("reg") == [1, 2] and app.registry.versions("cls") == [1, 2]
    assert app.registry.get("reg", 1).calibration is None
    assert app.registry.get("reg", 2).calibration is not None
