"""Fitting calibration: conformal intervals, temperature, LAC sets, abstention, refusals.

Statistical claims are checked by simulation with a known model (a stand-in predictor whose
passes are drawn from known distributions), with tolerances from the standard error of the
simulated mean.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from mcdropout.calibration import AbstentionTarget, calibrate
from mcdropout.calibration.abstention import choose
from mcdropout.calibration.fit import class_statistics
from mcdropout.calibration.model import Calibration, conformal_rank
from mcdropout.calibration.temperature import fit_temperature, scale_probabilities
from mcdropout.engine.prediction import Interval, Prediction
from mcdropout.errors import InvalidArgumentError

Z = {0.8: 1.2815515655446004, 0.9: 1.6448536269514722, 0.95: 1.959963984540054}


class KnownModel:
    """A predictor stand-in. Regression: row x = (mean, spread) gives mean and predictive std
    (tau 1) and Gaussian intervals. Classification: row x = logits; pass t's probabilities
    are softmax(x + noise_t) (noise fixed by the seed and pass, not the rows) or their
    sigmoid-like multi-label version."""

    def __init__(self, task: str, width: int = 1, *, noise: float = 0.0,
                 multilabel: bool = False, heads: int = 1) -> None:
        self.heads = tuple(SimpleNamespace(name=f"h{i}" if heads > 1 else "out", task=task,
                                           width=width, space=SimpleNamespace(tau=1.0),
                                           has_tau=True)
                           for i in range(heads))
        self.output_dim = width * heads
        self.default_samples = 8
        self.limits = SimpleNamespace(max_raw_sample_values=10_000)  # forces several blocks
        self.noise, self.multilabel, self.calls = noise, multilabel, 0

    def predict(self, x: np.ndarray, samples: int, seed: int, *, interval_levels: Any = (),
                return_samples: bool = False) -> Any:
        self.calls += 1
        x = np.asarray(x, dtype=np.float64)
        if self.heads[0].task == "regression":
            mean, spread = x[:, :1], x[:, 1:2]
            intervals = tuple(Interval(lv, mean - Z[lv] * spread, mean + Z[lv] * spread)
                              for lv in interval_levels)
            p = Prediction("regression", samples, seed, mean, spread * 0.5, spread,
                           predictive_std=spread, intervals=intervals)
        else:
            noise = np.random.default_rng(seed).normal(size=(samples, 1, x.shape[1]))
            logits = x[None] + self.noise * noise
            passes = (1 / (1 + np.exp(-logits)) if self.multilabel else
                      np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))
            mean = passes.mean(axis=0)
            p = Prediction("classification", samples, seed, mean, passes.std(axis=0),
                           passes.std(axis=0), raw_samples=passes.astype(np.float32))
        if len(self.heads) == 1:
            return p
        return SimpleNamespace(heads={h.name: p for h in self.heads})


def regression_rows(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Heteroscedastic rows whose predictive std is off by a factor 1.7 (under-dispersed)."""
    mean, spread = rng.normal(size=n), rng.uniform(0.2, 2.0, size=n)
    y = mean + 1.7 * spread * rng.standard_t(5, size=n)
    return np.column_stack([mean, spread]), y[:, None]


def test_the_conformal_quantile_is_the_finite_sample_rank() -> None:
    rng = np.random.default_rng(1)
    x, y = regression_rows(rng, 39)
    head = calibrate(KnownModel("regression"), x, y, report_levels=(0.9,)).heads["out"]
    assert head.regression is not None and head.regression.scale == "predictive_std"
    scores = np.sort(np.abs(y[:, 0] - x[:, 0]) / x[:, 1])
    assert conformal_rank(39, 0.9) == 36
    assert head.regression.quantile(0.9)[0] == pytest.approx(scores[35])
    assert head.after["coverage@0.9"] >= 0.9
    assert head.before["coverage@0.9"] < 0.8  # the stand-in's raw intervals are too narrow
    with pytest.raises(InvalidArgumentError, match=r"highest level it supports is 0\.975"):
        head.regression.quantile(0.98)


def test_conformal_intervals_cover_new_rows_at_the_level_on_average() -> None:
    # Over many calibration/test draws the mean coverage is at least the level, and at most
    # level + 1/(n+1) (continuous scores); tolerances are 4 standard errors of the mean.
    rng = np.random.default_rng(2)
    n, draws, level = 40, 300, 0.9
    model = KnownModel("regression")
    covered = []
    for _ in range(draws):
        x, y = regression_rows(rng, n)
        q = calibrate(model, x, y, report_levels=(level,)).heads["out"].regression.quantile(level)
        xt, yt = regression_rows(rng, 200)
        covered.append(np.mean(np.abs(yt[:, 0] - xt[:, 0]) <= q[0] * xt[:, 1]))
    mean, se = float(np.mean(covered)), float(np.std(covered) / math.sqrt(draws))
    assert level - 4 * se <= mean <= level + 1 / (n + 1) + 4 * se, (mean, se)


def test_the_temperature_of_known_passes_is_recovered() -> None:
    # Labels drawn from softmax(z); every pass says softmax(2.5 z): T = 2.5 undoes it.
    rng = np.random.default_rng(3)
    z = rng.normal(size=(20_000, 3)) * 1.5
    truth = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = (rng.random(len(z))[:, None] > truth.cumsum(1)).sum(1)
    sharp = np.exp(2.5 * z) / np.exp(2.5 * z).sum(1, keepdims=True)
    passes = np.repeat(sharp[None], 4, axis=0)
    assert fit_temperature(passes, labels) == pytest.approx(2.5, rel=0.05)
    calibrated = scale_probabilities(sharp, 2.5)
    assert np.allclose(calibrated, truth, atol=1e-6)


def classifier_rows(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    z = rng.normal(size=(n, 4)) * 2.0
    truth = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return 2.0 * z, (rng.random(n)[:, None] > truth.cumsum(1)).sum(1)  # over-confident x2


def test_temperature_and_lac_sets_cover_new_rows_at_the_level() -> None:
    rng = np.random.default_rng(4)
    model = KnownModel("classification", 4, noise=0.3)
    n, draws, level = 60, 150, 0.9
    covered = []
    for i in range(draws):
        x, labels = classifier_rows(rng, n)
        head = calibrate(model, x, labels, seed=i, report_levels=(level,)).heads["out"]
        xt, lt = classifier_rows(rng, 200)
        p = model.predict(xt, 8, i, return_samples=True).raw_samples
        mean = scale_probabilities(p.astype(np.float64), head.temperature).mean(0)
        covered.append(np.mean(mean[np.arange(200), lt] >= head.sets.threshold(level)))
    mean, se = float(np.mean(covered)), float(np.std(covered) / math.sqrt(draws))
    assert level - 4 * se <= mean <= level + 1 / (n + 1) + 4 * se, (mean, se)
    assert head.temperature > 1.2  # the stand-in is over-confident
    assert head.after["ece"] < head.before["ece"] or head.before["ece"] < 0.05
    assert head.drift.measure == "mutual_information" and head.drift.p95 <= head.drift.p99


def test_abstention_meets_its_target_on_the_calibration_rows() -> None:
    rng = np.random.default_rng(5)
    x, labels = classifier_rows(rng, 400)
    model = KnownModel("classification", 4, noise=0.5)
    for aim in (AbstentionTarget("predictive_entropy", "risk", 0.15),
                AbstentionTarget("mutual_information", "coverage", 0.7)):
        head = calibrate(model, x, labels, abstention=aim).heads["out"]
        policy = head.abstention
        assert policy is not None and policy.measure == aim.measure
        stats = class_statistics(model.predict(x, 8, 0, return_samples=True).raw_samples,
                                 head.temperature)
        kept = stats[aim.measure] <= policy.threshold
        risk = float(np.mean(stats["mean"][kept].argmax(1) != labels[kept]))
        assert policy.coverage == pytest.approx(kept.mean())
        assert policy.risk == pytest.approx(risk)
        if aim.target == "risk":
            assert risk <= 0.15
        else:
            assert policy.coverage == pytest.approx(0.7, abs=0.01)
    # Regression: RMSE of the kept rows.
    xr, yr = regression_rows(rng, 300)
    policy = calibrate(KnownModel("regression"), xr, yr, abstention=AbstentionTarget(
        "predictive_std", "risk", 1.5)).heads["out"].abstention
    kept = xr[:, 1] <= policy.threshold
    assert math.sqrt(np.mean((yr[kept, 0] - xr[kept, 0]) ** 2)) == pytest.approx(policy.risk)
    assert policy.risk <= 1.5


def test_ties_are_kept_together_and_an_unreachable_risk_says_the_lowest() -> None:
    aim = AbstentionTarget("std", "coverage", 0.5)
    policy = choose(aim, np.array([1.0, 1.0, 1.0, 2.0]), np.zeros(4), regression=True)
    assert policy.coverage == 0.75 and policy.threshold == 1.0
    with pytest.raises(InvalidArgumentError, match=r"the lowest reachable is 0\.5"):
        choose(AbstentionTarget("std", "risk", 0.1), np.array([1.0, 2.0]),
               np.array([0.25, 1.0]), regression=True)


def test_a_calibration_survives_its_file() -> None:
    rng = np.random.default_rng(6)
    x, labels = classifier_rows(rng, 50)
    cal = calibrate(KnownModel("classification", 4), x, labels,
                    abstention=AbstentionTarget("variation_ratio", "coverage", 0.9))
    again = Calibration.from_json(cal.to_json())
    head, back = cal.heads["out"], again.heads["out"]
    assert back.temperature == head.temperature and back.abstention == head.abstention
    assert np.array_equal(back.sets.scores, head.sets.scores) and back.after == head.after


@pytest.mark.parametrize("model, x, targets, kwargs, message", [
    (KnownModel("regression"), np.ones((30, 2)), np.ones((29, 1)), {}, "one per input row (30)"),
    (KnownModel("regression"), np.ones((30, 2)), np.ones((30, 2)), {}, "shape (30, 1)"),
    (KnownModel("regression"), np.ones((30, 2)), np.full((30, 1), np.nan), {}, "finite"),
    (KnownModel("classification", 3), np.ones((30, 3)), np.full(30, 3), {}, "in 0..2"),
    (KnownModel("classification", 3), np.ones((30, 3)), np.full(30, 0.5), {}, "integer class"),
    (KnownModel("classification", 3, multilabel=True), np.ones((30, 3)), np.zeros(30), {},
     "do not sum to 1"),
    (KnownModel("regression", heads=2), np.ones((30, 2)), np.ones((30, 1)), {},
     "must be a mapping"),
    (KnownModel("regression", heads=2), np.ones((30, 2)), {"h0": np.ones((30, 1))}, {},
     "missing ['h1']"),
    (KnownModel("regression", heads=2), np.ones((30, 2)),
     {"h0": np.ones(30), "h1": np.ones(30), "h2": np.ones(30)}, {}, "unknown heads ['h2']"),
    (KnownModel("regression"), np.ones((10, 2)), np.ones(10), {}, "needs more calibration rows"),
    (KnownModel("regression"), np.ones((30, 2)), np.ones(30),
     {"abstention": AbstentionTarget("mutual_information", "risk", 0.1)},
     "does not apply to regression head"),
    (KnownModel("classification", 3), np.ones((30, 3)), np.zeros(30),
     {"abstention": AbstentionTarget("std", "coverage", 0.5)},
     "does not apply to classification head"),
])
def test_refusals_say_what_is_wrong(model: KnownModel, x: np.ndarray, targets: Any,
                                    kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        calibrate(model, x, targets, **kwargs)
    assert message in str(refused.value)


def test_blocks_keep_memory_bounded_and_results_unchanged() -> None:
    rng = np.random.default_rng(7)
    x, y = regression_rows(rng, 3000)
    model = KnownModel("regression")
    head = calibrate(model, x, y).heads["out"]
    assert model.calls > 1 and head.rows == 3000  # 10,000 raw values a block: 1,250 rows
