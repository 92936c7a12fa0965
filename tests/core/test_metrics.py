"""Evaluation metrics against values worked out by hand, and the evaluation of a predictor."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mcdropout.engine import MCDropoutPredictor
from mcdropout.errors import InvalidArgumentError
from mcdropout.evaluation import scores
from mcdropout.modeling.builders import build_mlp

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)  # 0.918939


def test_rmse() -> None:
    assert scores.rmse(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0])) == \
        pytest.approx(math.sqrt(4 / 3))


def test_gaussian_nll_by_hand() -> None:
    # N(0, 1) at 0: log(2 pi)/2; N(0, 4) at 2: log(2 pi)/2 + log 2 + 1/2
    value = scores.gaussian_nll(np.array([0.0, 2.0]), np.zeros(2), np.array([1.0, 2.0]))
    assert value == pytest.approx(((HALF_LOG_2PI) + (HALF_LOG_2PI + math.log(2) + 0.5)) / 2)
    with pytest.raises(InvalidArgumentError, match="std must be > 0"):
        scores.gaussian_nll(np.zeros(2), np.zeros(2), np.array([1.0, 0.0]))


def test_mc_log_likelihood_by_hand() -> None:
    # passes at 0 and 2, y = 1, tau = 1: both terms -1/2, so logsumexp - log 2 = -1/2
    samples = np.array([[[0.0]], [[2.0]]])
    assert scores.mc_log_likelihood(np.array([[1.0]]), samples, 1.0) == \
        pytest.approx(-0.5 - HALF_LOG_2PI)
    # passes at 0 and 1, y = 0, tau = 4: log(1 + e^-2) - log 2 - log(2 pi)/2 + log(4)/2
    samples = np.array([[[0.0]], [[1.0]]])
    assert scores.mc_log_likelihood(np.array([[0.0]]), samples, 4.0) == \
        pytest.approx(math.log(1 + math.exp(-2)) - HALF_LOG_2PI, abs=1e-12)


def test_mc_log_likelihood_is_the_log_of_the_gaussian_mixture_density() -> None:
    rng = np.random.default_rng(0)
    y, samples, tau = rng.normal(size=(5, 2)), rng.normal(size=(7, 5, 2)), 3.0
    density = stats.norm.pdf(y[None], loc=samples, scale=tau**-0.5).mean(axis=0)
    assert scores.mc_log_likelihood(y, samples, tau) == pytest.approx(np.log(density).mean())
    # one pass: the Gaussian log density, i.e. minus the Gaussian NLL with std tau^-1/2
    assert scores.mc_log_likelihood(y, samples[:1], tau) == pytest.approx(
        -scores.gaussian_nll(y, samples[0], np.full(y.shape, tau**-0.5)))


def test_mc_log_likelihood_stays_finite_for_a_far_target_and_a_large_tau() -> None:
    value = scores.mc_log_likelihood(np.array([[100.0]]), np.zeros((3, 1, 1)), 1e6)
    assert value == pytest.approx(-0.5e6 * 1e4 - HALF_LOG_2PI + 0.5 * math.log(1e6))
    with pytest.raises(InvalidArgumentError, match=r"samples must have shape \(T, 1, 1\)"):
        scores.mc_log_likelihood(np.array([[1.0]]), np.zeros((3, 2, 1)), 1.0)
    with pytest.raises(InvalidArgumentError, match="tau must be finite and > 0, got 0"):
        scores.mc_log_likelihood(np.array([[1.0]]), np.zeros((3, 1, 1)), 0)


def test_interval_coverage_and_width() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    lower, upper = np.array([0.0, 2.5, 2.0, 5.0]), np.array([2.0, 3.0, 3.0, 6.0])
    assert scores.interval_coverage(y, lower, upper) == 0.5  # rows 0 and 2 (bound included)
    assert scores.mean_interval_width(lower, upper) == pytest.approx((2 + 0.5 + 1 + 1) / 4)


PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.4, 0.5, 0.1]])
LABELS = np.array([0, 2, 0])


def test_accuracy_nll_brier_by_hand() -> None:
    assert scores.accuracy(LABELS, PROBS) == pytest.approx(2 / 3)
    assert scores.classification_nll(LABELS, PROBS) == pytest.approx(
        -(math.log(0.7) + math.log(0.6) + math.log(0.4)) / 3)
    # (0.3^2 + 0.2^2 + 0.1^2, 0.1^2 + 0.3^2 + 0.4^2, 0.6^2 + 0.5^2 + 0.1^2) = (0.14, 0.26, 0.62)
    assert scores.brier_score(LABELS, PROBS) == pytest.approx(1.02 / 3)


def test_expected_calibration_error_by_hand() -> None:
    probs = np.array([[0.9, 0.1], [0.92, 0.08], [0.55, 0.45]])
    labels = np.array([0, 1, 0])
    # 15 bins: 0.9 and 0.92 share (13/15, 14/15] with accuracy 1/2, confidence 0.91; 0.55 is
    # alone in (8/15, 9/15] with accuracy 1.
    assert scores.expected_calibration_error(labels, probs) == pytest.approx(
        2 / 3 * abs(0.5 - 0.91) + 1 / 3 * abs(1 - 0.55))
    # one bin: |overall accuracy - mean confidence|
    assert scores.expected_calibration_error(labels, probs, bins=1) == pytest.approx(
        abs(2 / 3 - (0.9 + 0.92 + 0.55) / 3))


def test_a_calibrated_classifier_has_zero_ece() -> None:
    probs = np.tile([0.75, 0.25], (4, 1))
    assert scores.expected_calibration_error(np.array([0, 0, 0, 1]), probs) == \
        pytest.approx(0.0, abs=1e-12)


def test_a_single_probability_column_is_a_binary_classifier() -> None:
    probs, labels = np.array([[0.8], [0.3]]), np.array([1, 1])
    assert scores.accuracy(labels, probs) == 0.5
    assert scores.classification_nll(labels, probs) == pytest.approx(
        -(math.log(0.8) + math.log(0.3)) / 2)
    assert scores.brier_score(labels, probs) == pytest.approx((2 * 0.2**2 + 2 * 0.7**2) / 2)


def test_class_indices_out_of_range_are_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match=r"class indices in 0..2, got range 0..3"):
        scores.accuracy(np.array([0, 3, 1]), PROBS)


@pytest.fixture(scope="module")
def regressor() -> MCDropoutPredictor:
    import keras

    keras.utils.set_random_seed(0)
    model = build_mlp(3, 1, hidden=(16,), dropout=0.2)
    return MCDropoutPredictor(model, tau=4.0, target_mean=[10.0], target_std=[2.0])


def test_evaluate_regression_reports_every_metric_from_the_raw_passes(
        regressor: MCDropoutPredictor) -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 3)), 10 + 2 * rng.normal(size=(20, 1))
    report = scores.evaluate(regressor, x, y, samples=50, seed=7)
    assert set(report) == {"rows", "samples", "rmse", "gaussian_nll", "mc_log_likelihood",
                           "picp", "mean_interval_width"}
    p = regressor.predict(x, 50, 7, interval_levels=(0.95,), return_samples=True)
    assert p.predictive_std is not None and p.raw_samples is not None
    assert report["rmse"] == pytest.approx(scores.rmse(y, p.mean))
    assert report["gaussian_nll"] == pytest.approx(scores.gaussian_nll(y, p.mean,
                                                                         p.predictive_std))
    # tau 4 in standardised units is 4 / 2^2 = 1 in target units
    assert regressor.tau == pytest.approx(1.0)
    assert report["mc_log_likelihood"] == pytest.approx(
        scores.mc_log_likelihood(y, p.raw_samples, 1.0), rel=1e-6)
    iv = p.intervals[0]
    assert report["picp"] == scores.interval_coverage(y, iv.lower, iv.upper)
    assert report["rows"] == 20 and report["samples"] == 50


def test_evaluate_does_not_depend_on_how_rows_are_chunked(
        regressor: MCDropoutPredictor, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(25, 3)), rng.normal(size=(25, 1))
    whole = scores.evaluate(regressor, x, y, samples=40, seed=3)
    monkeypatch.setattr(scores, "_SAMPLE_VALUES_PER_CHUNK", 40 * 7)  # 7 rows per chunk
    chunked = scores.evaluate(regressor, x, y, samples=40, seed=3)
    assert chunked == pytest.approx(whole, rel=1e-6)


def test_evaluate_classification() -> None:
    import keras

    keras.utils.set_random_seed(0)
    predictor = MCDropoutPredictor(build_mlp(2, 3, hidden=(8,), task="classification"))
    x, labels = np.random.default_rng(0).normal(size=(10, 2)), np.arange(10) % 3
    report = scores.evaluate(predictor, x, labels, samples=20, seed=1)
    probs = predictor.predict(x, 20, 1).mean
    assert report == pytest.approx({"rows": 10, "samples": 20,
                                    "accuracy": scores.accuracy(labels, probs),
                                    "nll": scores.classification_nll(labels, probs),
                                    "ece": scores.expected_calibration_error(labels, probs),
                                    "brier": scores.brier_score(labels, probs)})
