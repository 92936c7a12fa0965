"""Calibrated answers from the engine: temperature-scaled passes, conformal intervals, prediction
sets, abstention, and every refusal (calibrations built by hand, tiny models, few passes)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from mcdropout import (
    HeadInfo,
    InvalidArgumentError,
    NotCalibratedError,
    Prediction,
    PredictionSet,
)
from mcdropout.calibration import model as cal
from mcdropout.calibration.temperature import scale_probabilities
from mcdropout.engine import MCDropoutPredictor
from mcdropout.engine.determinism import rows_are_batch_invariant

SAMPLES = 16
X = np.random.default_rng(5).normal(size=(9, 4)).astype("float32")
DRIFT = cal.DriftReference("mutual_information", 0.1, 0.2)
STATS = ("mean", "std", "standard_error", "predictive_std", "predicted_class",
         "predictive_entropy", "expected_entropy", "mutual_information", "variation_ratio",
         "abstain")


def _trunk(seed: int) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    keras.utils.set_random_seed(seed)
    inp = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(16, activation="relu")(inp)
    return inp, keras.layers.Dropout(0.4)(keras.layers.Dense(16, activation="relu")(hidden))


def _classifier() -> keras.Model:
    inp, h = _trunk(1)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="cls")(h))


def _regressor() -> keras.Model:
    inp, h = _trunk(2)
    return keras.Model(inp, keras.layers.Dense(2, name="reg")(h))


def _two_heads() -> keras.Model:
    inp, h = _trunk(3)
    return keras.Model(inp, [keras.layers.Dense(2, name="reg")(h),
                             keras.layers.Dense(3, activation="softmax", name="cls")(h)])


def _sets(n: int = 50) -> cal.ConformalSets:
    return cal.ConformalSets(np.linspace(0.0, 0.98, n))


def _cls_cal(temperature: float = 2.0, abstention: cal.AbstentionPolicy | None = None,
             name: str = "cls", sets: cal.ConformalSets | None = None) -> cal.HeadCalibration:
    return cal.HeadCalibration(name, "classification", rows=50, samples=SAMPLES, drift=DRIFT,
                           temperature=temperature, sets=sets or _sets(), abstention=abstention)


def _reg_cal(scale: str, n: int = 19, width: int = 2,
             abstention: cal.AbstentionPolicy | None = None) -> cal.HeadCalibration:
    scores = np.sort(np.random.default_rng(7).uniform(0.5, 3.0, size=(n, width)), axis=0)
    return cal.HeadCalibration("reg", "regression", rows=n, samples=SAMPLES,
                           drift=cal.DriftReference("std", 0.1, 0.2),
                           regression=cal.ConformalRegression(scale, scores),  # type: ignore[arg-type]
                           abstention=abstention)


def _policy(measure: str, threshold: float) -> cal.AbstentionPolicy:
    return cal.AbstentionPolicy(measure, threshold, "coverage", 0.8, 0.1, 0.8)  # type: ignore[arg-type]


def _entropy_median() -> float:
    # Half the rows above it, half below: both flags are exercised.
    plain = MCDropoutPredictor(_classifier(), calibration=cal.Calibration({"cls": _cls_cal()}))
    got = plain.predict(X, SAMPLES, seed=1, calibrated=True)
    assert isinstance(got, Prediction) and got.predictive_entropy is not None
    return float(np.median(got.predictive_entropy))


@pytest.fixture(scope="module")
def classifier() -> MCDropoutPredictor:
    policy = _policy("predictive_entropy", _entropy_median())
    return MCDropoutPredictor(_classifier(), calibration=cal.Calibration(
        {"cls": _cls_cal(abstention=policy)}))


@pytest.fixture(scope="module")
def two_heads() -> MCDropoutPredictor:
    heads = [HeadInfo("reg", "regression", tau=4.0, target_mean=(1.0, -1.0),
                      target_std=(2.0, 0.5)), HeadInfo("cls", "classification")]
    calibration = cal.Calibration({"reg": _reg_cal("predictive_std",
                                               abstention=_policy("predictive_std", 0.9)),
                               "cls": _cls_cal(temperature=0.5)})
    return MCDropoutPredictor(_two_heads(), heads=heads, calibration=calibration)


@pytest.fixture(scope="module")
def regressor() -> MCDropoutPredictor:
    return MCDropoutPredictor(_regressor(), calibration=cal.Calibration({"reg": _reg_cal("std")}))


def test_calibrated_statistics_are_those_of_the_temperature_scaled_passes(classifier) -> None:
    plain = classifier.predict(X, SAMPLES, seed=11, return_samples=True)
    got = classifier.predict(X, SAMPLES, seed=11, calibrated=True, return_samples=True)
    assert got.calibrated and not plain.calibrated
    scaled = scale_probabilities(plain.raw_samples, 2.0)
    np.testing.assert_array_equal(got.raw_samples, scaled)
    p = scaled.astype(np.float64)
    np.testing.assert_allclose(got.mean, p.mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got.std, p.std(axis=0, ddof=1), rtol=1e-9, atol=1e-15)
    expected = -(p * np.log(p)).sum(axis=-1).mean(axis=0)
    np.testing.assert_allclose(got.expected_entropy, expected, rtol=1e-9)
    np.testing.assert_allclose(got.predictive_entropy,
                               -(got.mean * np.log(got.mean)).sum(axis=-1), rtol=1e-9)
    votes = np.stack([(p.argmax(-1) == k).sum(0) for k in range(3)], axis=-1)
    np.testing.assert_allclose(got.variation_ratio, 1 - votes.max(-1) / SAMPLES)  # type: ignore[union-attr]
    # T = 2 softens: the calibrated answer is less confident than the plain one.
    assert (got.predictive_entropy > plain.predictive_entropy).all()


def test_a_temperature_of_one_changes_nothing() -> None:
    predictor = MCDropoutPredictor(_classifier(), calibration=cal.Calibration(
        {"cls": _cls_cal(temperature=1.0)}))
    plain = predictor.predict(X, SAMPLES, seed=2)
    got = predictor.predict(X, SAMPLES, seed=2, calibrated=True)
    for name in ("mean", "std", "predictive_entropy", "expected_entropy", "mutual_information"):
        np.testing.assert_allclose(getattr(got, name), getattr(plain, name), rtol=1e-6,
                                   atol=1e-7, err_msg=name)
    np.testing.assert_array_equal(got.variation_ratio, plain.variation_ratio)  # type: ignore[union-attr]


def test_prediction_sets_hold_exactly_the_classes_at_or_above_the_threshold(classifier) -> None:
    got = classifier.predict(X, SAMPLES, seed=3, set_levels=[0.5, 0.9])
    assert got.calibrated and [s.level for s in got.prediction_sets] == [0.5, 0.9]
    scores = _sets().scores
    for s in got.prediction_sets:
        assert isinstance(s, PredictionSet) and s.members.dtype == bool
        threshold = 1.0 - scores[math.ceil(51 * s.level) - 1]
        np.testing.assert_array_equal(s.members, got.mean >= threshold)
    small, large = got.prediction_sets
    assert (small.members <= large.members).all()  # a higher level never drops a class


def test_abstain_flags_rows_whose_measure_is_above_the_policy(classifier) -> None:
    got = classifier.predict(X, SAMPLES, seed=1, abstain=True)
    policy = classifier.calibration.heads["cls"].abstention
    np.testing.assert_array_equal(got.abstain, got.predictive_entropy > policy.threshold)
    assert got.abstain.dtype == bool and 0 < got.abstain.sum() < len(X)
    assert classifier.predict(X, SAMPLES, seed=1, calibrated=True).abstain is None


def test_conformal_intervals_are_the_mean_plus_minus_q_times_the_spread(two_heads) -> None:
    request = two_heads.resolve(X, SAMPLES, seed=4, interval_levels=[0.8, 0.95], calibrated=True)
    assert request.keep_raw  # the classifier head's intervals come from the passes
    got = two_heads.run([request])[0]
    plain = two_heads.predict(X, SAMPLES, seed=4)
    reg, conformal = got["reg"], two_heads.calibration.heads["reg"].regression
    for name in ("mean", "std", "predictive_std"):  # calibration leaves the statistics be
        np.testing.assert_array_equal(getattr(reg, name), getattr(plain["reg"], name))
    for interval in reg.intervals:
        q = conformal.scores[math.ceil(20 * interval.level) - 1]
        np.testing.assert_allclose(interval.lower, reg.mean - q * reg.predictive_std)
        np.testing.assert_allclose(interval.upper, reg.mean + q * reg.predictive_std)
    assert [i.level for i in got["cls"].intervals] == [0.8, 0.95]
    assert got.calibrated and reg.calibrated and got["cls"].calibrated


def test_abstention_is_per_head_and_a_spread_is_averaged_over_outputs(two_heads) -> None:
    got = two_heads.predict(X, SAMPLES, seed=4, abstain=True)
    np.testing.assert_array_equal(got["reg"].abstain,
                                  got["reg"].predictive_std.mean(axis=-1) > 0.9)
    assert got["cls"].abstain is None  # no policy for that head


def test_std_scaled_intervals_need_no_raw_passes_and_merge(regressor) -> None:
    calibrated = regressor.resolve(X, SAMPLES, seed=5, interval_levels=[0.9], calibrated=True)
    plain = regressor.resolve(X, SAMPLES, seed=5, interval_levels=[0.9])
    assert calibrated.mergeable and not calibrated.keep_raw
    assert plain.keep_raw and not plain.mergeable
    got = regressor.run([calibrated])[0]
    q = regressor.calibration.heads["reg"].regression.quantile(0.9)
    np.testing.assert_allclose(got.intervals[0].upper, got.mean + q * got.std)
    np.testing.assert_allclose(got.intervals[0].lower, got.mean - q * got.std)


def _assert_same(merged, alone) -> None:
    rtol = 0.0 if rows_are_batch_invariant() else 1e-5
    parts = merged.heads if hasattr(merged, "heads") else {"": merged}
    for name, head in parts.items():
        one = alone[name] if name else alone
        assert head.calibrated and one.calibrated and head.seed == one.seed
        for field in STATS:
            a, b = getattr(head, field), getattr(one, field)
            assert (a is None) == (b is None), field
            if a is not None:
                np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-12, err_msg=field)
        for s, t in zip(head.prediction_sets, one.prediction_sets, strict=True):
            np.testing.assert_array_equal(s.members, t.members)


def test_merged_calibrated_requests_answer_as_alone(classifier, two_heads) -> None:
    parts = [X[:4], X[4:]]
    for predictor in (classifier, two_heads):
        merged = predictor.predict_many(parts, SAMPLES, seeds=[8, 9], set_levels=[0.9],
                                        abstain=True)
        for x, seed, got in zip(parts, (8, 9), merged, strict=True):
            _assert_same(got, predictor.predict(x, SAMPLES, seed, set_levels=[0.9],
                                                abstain=True))


def test_calibrated_and_plain_requests_do_not_merge(regressor) -> None:
    requests = [regressor.resolve(X, SAMPLES, seed=1),
                regressor.resolve(X, SAMPLES, seed=2, calibrated=True)]
    with pytest.raises(InvalidArgumentError, match="share samples and calibration"):
        regressor.run(requests)


# -- refusals ------------------------------------------------------------------------------------
def test_a_version_without_calibration_refuses_calibrated_requests() -> None:
    plain = MCDropoutPredictor(_classifier(), described_as="model 'c' version 1")
    for options in ({"calibrated": True}, {"set_levels": [0.9]}, {"abstain": True}):
        with pytest.raises(NotCalibratedError, match="model 'c' version 1 has no calibration; "
                                                     "`mcdropout calibrate`"):
            plain.resolve(X, **options)
    assert plain.calibration is None


def test_refusals_of_a_calibrated_version(regressor, two_heads) -> None:
    with pytest.raises(NotCalibratedError, match="has no abstention policy"):
        regressor.resolve(X, abstain=True)
    with pytest.raises(InvalidArgumentError, match="prediction sets are for classifier heads"):
        regressor.resolve(X, set_levels=[0.9])
    with pytest.raises(InvalidArgumentError, match=r"interval level 0.96 .* 0.95 \(n/\(n\+1\)\)"):
        regressor.resolve(X, interval_levels=[0.96], calibrated=True)
    regressor.resolve(X, interval_levels=[0.96])  # uncalibrated intervals have no such bound
    with pytest.raises(InvalidArgumentError, match=r"prediction set level 0.99 .* 0.980392"):
        two_heads.resolve(X, set_levels=[0.99])
    with pytest.raises(InvalidArgumentError, match="at most 16 prediction set levels"):
        two_heads.resolve(X, set_levels=[0.5] * 17)
    with pytest.raises(InvalidArgumentError, match="prediction set levels must be strictly"):
        two_heads.resolve(X, set_levels=[1.0])


def test_a_calibration_of_other_heads_is_refused_at_construction() -> None:
    model = _regressor()
    cases = {
        "the calibration is of heads": {"other": _reg_cal("std")},
        "is for a classification head": {"reg": _cls_cal(name="reg")},
        r"scores must be \(rows, 2\)": {"reg": _reg_cal("std", width=3)},
        "interval scale 'predictive_std' is not one": {"reg": _reg_cal("predictive_std")},
        "abstention measure 'mutual_information'": {
            "reg": _reg_cal("std", abstention=_policy("mutual_information", 1.0))},
    }
    for message, heads in cases.items():
        with pytest.raises(InvalidArgumentError, match=message):
            MCDropoutPredictor(model, calibration=cal.Calibration(heads))
