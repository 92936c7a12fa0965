"""Evaluation metrics for MC dropout predictions, and the evaluation of a predictor on a data set.

The metric functions are pure numpy and take plain arrays; :func:`evaluate` runs a predictor on
labelled rows and reports them. Regression metrics are in the target's original units; averages
run over rows (and outputs). The standard benchmark quantities follow Gal & Ghahramani (2016):
RMSE of the MC mean and the MC-mixture test log-likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mcdropout.errors import InvalidArgumentError

# Probabilities are clipped to [_EPS, 1] in log-likelihoods so one confident mistake gives a large
# finite loss (log 1e-12 = -27.6) instead of infinity.
_EPS = 1e-12
# Rows x passes x outputs held in memory at once while evaluating (~32 MiB of float32 samples).
_SAMPLE_VALUES_PER_CHUNK = 8_000_000


def rmse(y: np.ndarray, mean: np.ndarray) -> float:
    """Root mean squared error between targets and predicted means (same shape)."""
    y, mean = _pair(y, mean)
    return float(np.sqrt(np.mean((y - mean) ** 2)))


def gaussian_nll(y: np.ndarray, mean: np.ndarray, std: np.ndarray) -> float:
    """Mean negative log density of ``y`` under N(mean, std**2), in nats per value.

    Raises:
        InvalidArgumentError: a std is not > 0.
    """
    y, mean = _pair(y, mean)
    std = np.broadcast_to(np.asarray(std, dtype=np.float64), y.shape)
    if not np.all(std > 0):
        raise InvalidArgumentError(f"std must be > 0 everywhere, got minimum {float(std.min())}")
    z = (y - mean) / std
    return float(np.mean(0.5 * math.log(2 * math.pi) + np.log(std) + 0.5 * z**2))


def mc_log_likelihood(y: np.ndarray, samples: np.ndarray, tau: float | np.ndarray) -> float:
    """Mean test log-likelihood of ``y`` under the MC dropout mixture of Gaussians: the mean of
    :func:`mc_log_likelihood_rows`."""
    return float(np.mean(mc_log_likelihood_rows(y, samples, tau)))


def mc_log_likelihood_rows(y: np.ndarray, samples: np.ndarray,
                           tau: float | np.ndarray) -> np.ndarray:
    """Per-row log-likelihood of ``y`` under the MC dropout mixture of Gaussians.

    Each of the T passes gives a Gaussian N(yhat_t, 1/tau_t); the predictive density is their
    average: ``logsumexp_t(-tau_t/2 (y - yhat_t)**2 + log(tau_t)/2) - log T - log(2 pi)/2``.

    Args:
        y: Targets, (rows, outputs) or (rows,).
        samples: Per-pass predictions, (T, rows, outputs) or (T, rows), in y's units.
        tau: Noise precision in y's units (1 / variance), > 0: a scalar, one per output, or
            one per pass and value, the shape of ``samples`` (a learned noise).

    Returns:
        (rows,) float64, each row's mean over its outputs, in nats.
    """
    y = np.asarray(y, dtype=np.float64)
    samples = np.asarray(samples, dtype=np.float64)
    if samples.shape[1:] != y.shape:
        raise InvalidArgumentError(
            f"samples must have shape (T, {', '.join(map(str, y.shape))}) to match y, "
            f"got {samples.shape}")
    tau_arr = np.asarray(tau, dtype=np.float64)
    if not np.all(np.isfinite(tau_arr) & (tau_arr > 0)):
        raise InvalidArgumentError(f"tau must be finite and > 0, got {tau!r}")
    per_pass = tau_arr.ndim == samples.ndim
    log_terms = -0.5 * tau_arr * (y[None] - samples) ** 2
    if per_pass:  # each pass its own precision: its normalising term sits inside the sum
        log_terms = log_terms + 0.5 * np.log(tau_arr)
    peak = log_terms.max(axis=0)
    lse = peak + np.log(np.exp(log_terms - peak[None]).sum(axis=0))
    ll = lse - math.log(samples.shape[0]) - 0.5 * math.log(2 * math.pi)
    if not per_pass:
        ll = ll + 0.5 * np.log(tau_arr)
    return np.asarray(ll).reshape(len(y), -1).mean(axis=1)


def interval_coverage(y: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Prediction interval coverage probability (PICP): the fraction of y inside [lower, upper]."""
    y, lower = _pair(y, lower)
    upper = np.asarray(upper, dtype=np.float64).reshape(y.shape)
    return float(np.mean((y >= lower) & (y <= upper)))


def mean_interval_width(lower: np.ndarray, upper: np.ndarray) -> float:
    """Mean of ``upper - lower``, in the target's units."""
    return float(np.mean(np.asarray(upper, dtype=np.float64) - np.asarray(lower, np.float64)))


def accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    """Fraction of rows whose most probable class is the true class.

    Args:
        labels: True class indices, (rows,).
        probs: Class probabilities, (rows, classes); a single column is P(class 1) of a binary
            (sigmoid) classifier.
    """
    labels, probs = _classes(labels, probs)
    return float(np.mean(probs.argmax(axis=1) == labels))


def classification_nll(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log probability of the true class, in nats (probabilities clipped at 1e-12)."""
    return float(np.mean(classification_nll_rows(labels, probs)))


def classification_nll_rows(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per row, the negative log probability of the true class (see :func:`classification_nll`)."""
    labels, probs = _classes(labels, probs)
    picked = probs[np.arange(len(labels)), labels]
    return -np.log(np.clip(picked, _EPS, 1.0))


def brier_score(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean over rows of the squared distance between probs and the one-hot label, in [0, 2]."""
    labels, probs = _classes(labels, probs)
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top-class confidence (Guo et al. 2017).

    Rows are grouped by confidence ``max(probs)`` into ``bins`` equal-width bins (lo, hi] of
    [0, 1]; the ECE is the row-weighted mean of |accuracy - mean confidence| over the bins.

    Args:
        labels: True class indices, (rows,).
        probs: Class probabilities, (rows, classes).
        bins: Number of bins, >= 1.

    Returns:
        The ECE, in [0, 1].
    """
    labels, probs = _classes(labels, probs)
    return calibration_error(probs.max(axis=1), probs.argmax(axis=1) == labels, bins)


def calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """The ECE of rows given by their top-class confidence and whether the top class was right.

    The binning of :func:`expected_calibration_error`, for callers that keep only these two
    numbers per row (the server's rolling feedback window).

    Args:
        confidence: Top-class probability per row, (rows,), in [0, 1].
        correct: Whether the top class was the true one, (rows,) bool or 0/1.
        bins: Number of equal-width bins, >= 1.

    Returns:
        The ECE, in [0, 1]; NaN for no rows.
    """
    if bins < 1:
        raise InvalidArgumentError(f"bins must be >= 1, got {bins}")
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if not len(confidence):
        return math.nan
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    gap = np.bincount(index, weights=correct - confidence, minlength=bins)
    # sum over bins of (n_b / n) * |mean(correct - confidence) in b| = sum |sum_b(...)| / n
    return float(np.sum(np.abs(gap[count > 0])) / len(confidence))


def regression_metrics(y: np.ndarray, prediction: Any, tau: float | None,
                       level: float = 0.95) -> dict[str, float]:
    """The regression report of one prediction (see :func:`evaluate`)."""
    y = np.asarray(y, dtype=np.float64).reshape(prediction.mean.shape)
    std = prediction.predictive_std if prediction.predictive_std is not None else prediction.std
    report = {"rows": float(y.shape[0]), "samples": float(prediction.samples),
              "rmse": rmse(y, prediction.mean)}
    if np.all(std > 0):
        report["gaussian_nll"] = gaussian_nll(y, prediction.mean, std)
    if prediction.raw_noise_var is not None and prediction.raw_samples is not None:
        report["mc_log_likelihood"] = mc_log_likelihood(y, prediction.raw_samples,
                                                        1.0 / prediction.raw_noise_var)
    elif tau is not None and prediction.raw_samples is not None:
        report["mc_log_likelihood"] = mc_log_likelihood(y, prediction.raw_samples, tau)
    for interval in prediction.intervals:
        if math.isclose(interval.level, level):
            report["picp"] = interval_coverage(y, interval.lower, interval.upper)
            report["mean_interval_width"] = mean_interval_width(interval.lower, interval.upper)
    return report


def classification_metrics(labels: np.ndarray, probs: np.ndarray, bins: int = 15
                           ) -> dict[str, float]:
    """Accuracy, NLL, ECE (``bins`` bins) and Brier score of class probabilities."""
    return {"rows": float(len(labels)), "accuracy": accuracy(labels, probs),
            "nll": classification_nll(labels, probs),
            "ece": expected_calibration_error(labels, probs, bins),
            "brier": brier_score(labels, probs)}


def risk_coverage(measure: np.ndarray, loss: np.ndarray, *, root: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The risk of the rows kept against the share kept, rows kept by increasing ``measure``.

    Args:
        measure: Each row's uncertainty, (rows,); the least uncertain rows are kept first.
        loss: Each row's loss, (rows,): 0/1 errors, or squared errors (averaged over outputs).
        root: Report the root of the mean loss (RMSE, for squared errors).

    Returns:
        (share kept (rows,) in (0, 1], risk of the kept rows (rows,), the measure sorted
        ascending (rows,)): entry k is for the k + 1 least uncertain rows.
    """
    order = np.argsort(np.asarray(measure, dtype=np.float64), kind="stable")
    kept = np.arange(1, len(order) + 1)
    risk = np.cumsum(np.asarray(loss, dtype=np.float64)[order]) / kept
    return kept / len(order), np.sqrt(risk) if root else risk, np.asarray(measure)[order]


def evaluate(predictor: Any, x: np.ndarray, y: np.ndarray, *, samples: int | None = None,
             seed: int | None = 0, level: float = 0.95, calibrated: bool = False
             ) -> dict[str, float]:
    """Run an MC dropout predictor on labelled rows and report its metrics.

    Regression: ``rmse``, ``gaussian_nll`` (Gaussian with the predictive std, or the MC std when
    the model has no tau), ``mc_log_likelihood`` (needs tau or a learned noise), ``picp`` and
    ``mean_interval_width`` of the central ``level`` interval. Classification: ``accuracy``,
    ``nll``, ``ece`` (15 bins), ``brier``. Both also give ``rows`` and ``samples``.

    Args:
        predictor: A :class:`mcdropout.MCDropoutPredictor`.
        x: Inputs in original units, (rows, ...).
        y: Regression: targets in original units, (rows, outputs) or (rows,). Classification:
            class indices, (rows,).
        samples: Passes T; None uses the predictor's default.
        seed: Dropout seed; the same seed is used for every chunk of rows, so the result does
            not depend on the chunking.
        level: Interval level for PICP and width, in (0, 1).
        calibrated: Score the version's calibrated answers (conformal intervals,
            temperature-scaled passes); the predictor must hold a calibration.

    Returns:
        Metric name -> value.
    """
    regression = predictor.task == "regression"
    knows_noise = predictor.tau is not None or predictor.heads[0].learned_noise
    prediction = predict_chunked(predictor, x, samples, seed, interval_levels=(level,),
                                 return_samples=regression and knows_noise,
                                 calibrated=calibrated)
    if regression:
        return regression_metrics(y, prediction, predictor.tau, level)
    report = classification_metrics(np.asarray(y), prediction.mean)
    report["samples"] = float(prediction.samples)
    return report


def predict_chunked(predictor: Any, x: np.ndarray, samples: int | None = None,
                    seed: int | None = 0, *, interval_levels: Sequence[float] = (),
                    return_samples: bool = False, calibrated: bool = False) -> Any:
    """``predictor.predict`` over any number of rows, in blocks that keep the raw passes small.

    The engine refuses requests whose raw passes (kept for intervals and samples) exceed its
    limit; a data set is cut into row blocks instead. Dropout masks depend on the seed and pass,
    not on the rows, so the result is the same as one call would give.

    Raises:
        InvalidArgumentError: no rows, or what ``predict`` raises.
    """
    x = np.asarray(x)
    rows = int(x.shape[0]) if x.ndim else 0
    if rows == 0:
        raise InvalidArgumentError("there are no rows to predict")
    passes = samples or predictor.default_samples
    chunk = max(1, _SAMPLE_VALUES_PER_CHUNK // (passes * max(1, predictor.output_dim)))
    # Only a calibrated call names the flag, so predictors without it still serve the rest.
    options = {"calibrated": True} if calibrated else {}
    parts = [predictor.predict(x[i:i + chunk], passes, seed, interval_levels=interval_levels,
                               return_samples=return_samples, **options)
             for i in range(0, rows, chunk)]
    return parts[0] if len(parts) == 1 else _concatenate(parts)


def _concatenate(parts: list[Any]) -> Any:
    from dataclasses import fields, replace

    from mcdropout.engine.prediction import Interval

    merged: dict[str, Any] = {}
    for f in fields(parts[0]):
        values = [getattr(p, f.name) for p in parts]
        if f.name in ("task", "samples", "seed") or isinstance(values[0], bool):
            continue
        if f.name == "prediction_sets":
            merged[f.name] = tuple(
                replace(group[0], members=np.concatenate([g.members for g in group]))
                for group in zip(*values, strict=True))
        elif f.name in ("raw_samples", "raw_noise_var"):
            merged[f.name] = None if values[0] is None else np.concatenate(values, axis=1)
        elif f.name == "intervals":
            merged[f.name] = tuple(
                Interval(group[0].level, np.concatenate([g.lower for g in group]),
                         np.concatenate([g.upper for g in group]))
                for group in zip(*values, strict=True))
        elif values[0] is not None:
            merged[f.name] = np.concatenate(values, axis=0)
    return replace(parts[0], **merged)


def _pair(y: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    if y.size != other.size:
        raise InvalidArgumentError(
            f"targets and predictions differ in size: {y.shape} vs {other.shape}")
    return y.reshape(other.shape), other


def _classes(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(np.int64).ravel()
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1 or probs.shape[1] == 1:
        p1 = probs.reshape(-1)
        probs = np.stack([1.0 - p1, p1], axis=1)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise InvalidArgumentError(
            f"probs must be (rows, classes) with rows = {labels.shape[0]} labels, "
            f"got {probs.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise InvalidArgumentError(
            f"labels must be class indices in 0..{probs.shape[1] - 1}, got range "
            f"{labels.min()}..{labels.max()}")
    return labels, probs
