"""Pictures of how far a model's uncertainty can be trusted, as PNG files and an ``index.html``.

Regression: the calibration curve (observed against nominal coverage of central predictive
intervals at ten levels), the error against the predicted standard deviation, and, for a model
with one input, the mean with a band of two predictive standard deviations. Classification: the
reliability diagram (accuracy against confidence) and histograms of the mutual information of
right and wrong predictions. Both: the risk-coverage curve (the risk of the rows kept when only
the least uncertain are kept, against the share kept), which shows what abstaining would buy.
:func:`plot_dropout_sweep` draws a grid search's validation metric against the dropout rate.

Plots are drawn by :mod:`mcdropout.evaluation.plotting` (matplotlib's Agg canvas, the optional
``report`` extra, imported only when a plot is drawn).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mcdropout.errors import InvalidArgumentError
from mcdropout.evaluation import scores
from mcdropout.evaluation.plotting import DPI, new_figure, require_plotting

# Nominal coverages of the calibration curve: ten evenly spaced levels.
CALIBRATION_LEVELS: tuple[float, ...] = tuple(round(0.05 + 0.1 * i, 2) for i in range(10))
RELIABILITY_BINS = 10


def write_report(directory: str | Path, predictor: Any, x: np.ndarray, y: np.ndarray, *,
                 samples: int | None = None, seed: int | None = 0,
                 metrics_table: Mapping[str, float] | None = None, title: str = "",
                 calibrated: bool = False) -> Path:
    """Predict labelled rows, draw the uncertainty plots and write them with an index page.

    Args:
        directory: Output folder; created if needed. Existing files of the same names are
            replaced.
        predictor: A :class:`mcdropout.MCDropoutPredictor`.
        x: Inputs in original units, (rows, *input_shape).
        y: Regression: targets in original units, (rows,) or (rows, outputs). Classification:
            class indices, (rows,).
        samples: MC passes T; None uses the predictor's default.
        seed: Dropout seed (None draws one).
        metrics_table: Metric name -> value shown on the page (e.g. from
            :func:`mcdropout.evaluation.scores.evaluate`).
        title: Page heading, e.g. "diabetes v3 on test.csv".
        calibrated: Plot the version's calibrated answers (the predictor holds a calibration).

    Returns:
        The path of ``index.html``; the PNG files lie beside it.

    Raises:
        InvalidArgumentError: no rows, or y does not match x.
        PlottingUnavailableError: matplotlib (the ``report`` extra) is not installed.
    """
    require_plotting()  # before the predictions
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[0] == 0 or len(y) != x.shape[0]:
        raise InvalidArgumentError(
            f"x and y must hold the same, non-zero number of rows, got {x.shape[0] if x.ndim else 0}"
            f" and {len(y)}")
    if predictor.task == "regression":
        figures = _regression_figures(predictor, x, np.asarray(y, np.float64), samples, seed,
                                      calibrated)
    else:
        figures = _classification_figures(predictor, x, np.asarray(y).astype(np.int64).ravel(),
                                          samples, seed, calibrated)
    for name, (figure, _) in figures.items():
        figure.savefig(folder / name, dpi=DPI)
    index = folder / "index.html"
    index.write_text(_page(title or "MC dropout evaluation", metrics_table or {},
                           [(name, caption) for name, (_, caption) in figures.items()]))
    return index


def coverage_curve(y: np.ndarray, intervals: Sequence[tuple[np.ndarray, np.ndarray]]
                   ) -> np.ndarray:
    """Observed coverage of each (lower, upper) interval pair: the share of ``y`` inside.

    Args:
        y: Targets, any shape the bounds share.
        intervals: One (lower, upper) pair per nominal level.

    Returns:
        One share in [0, 1] per pair, float64.
    """
    return np.array([scores.interval_coverage(y, lo, hi) for lo, hi in intervals])


def plot_dropout_sweep(points: Sequence[tuple[float, str, float]], path: str | Path, *,
                       metric: str, title: str = "", best: int | None = None) -> Path:
    """Draw a validation metric against the dropout rate, one line per other setting.

    Args:
        points: (dropout rate, series label such as "tau=0.5", metric value) per grid point.
        path: The PNG file to write.
        metric: The metric's name for the axis, e.g. "validation log-likelihood".
        title: Figure title.
        best: Index in ``points`` of the chosen setting, marked with a star.

    Returns:
        ``path``.

    Raises:
        PlottingUnavailableError: matplotlib (the ``report`` extra) is not installed.
    """
    if not points:
        raise InvalidArgumentError("points must not be empty")
    figure, ax = new_figure()
    labels = list(dict.fromkeys(label for _, label, _ in points))
    for label in labels:
        series = sorted((p, v) for p, lab, v in points if lab == label)
        ax.plot([p for p, _ in series], [v for _, v in series], marker="o",
                label=label or None)
    if best is not None:
        ax.plot(points[best][0], points[best][2], marker="*", markersize=16, color="gold",
                markeredgecolor="k", linestyle="none", label="chosen")
    rates = sorted({p for p, _, _ in points})
    if len(rates) > 1 and rates[0] > 0 and rates[-1] / rates[0] >= 10:
        ax.set_xscale("log")
    ax.set_xlabel("dropout rate p")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} against dropout rate")
    if any(labels) or best is not None:
        ax.legend()
    ax.grid(alpha=0.3)
    figure.savefig(Path(path), dpi=DPI)
    return Path(path)


# -- regression ------------------------------------------------------------------------------------
def _regression_figures(predictor: Any, x: np.ndarray, y: np.ndarray, samples: int | None,
                        seed: int | None, calibrated: bool) -> dict[str, tuple[Any, str]]:
    part = _predict(predictor, x, samples, seed, CALIBRATION_LEVELS, calibrated)
    mean = part["mean"]
    y = y.reshape(mean.shape)
    std = part["predictive_std"] if part["predictive_std"] is not None else part["std"]
    noise = "predictive std (MC spread and noise)" if part["predictive_std"] is not None \
        else "MC std (the model knows no noise: no noise term)"
    figures = {}

    observed = coverage_curve(y, part["intervals"])
    figure, ax = new_figure()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="ideal")
    ax.plot(CALIBRATION_LEVELS, observed, marker="o", label="observed")
    ax.set_xlabel("nominal coverage of the central interval")
    ax.set_ylabel("share of targets inside")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"Calibration ({len(y)} rows)")
    ax.legend()
    ax.grid(alpha=0.3)
    figures["calibration.png"] = (figure, "Observed against nominal coverage of central "
                                          "predictive intervals at ten levels; on the diagonal "
                                          "the intervals are calibrated, below it too narrow.")

    error = np.abs(y - mean).ravel()
    spread = std.ravel()
    figure, ax = new_figure()
    ax.scatter(spread, error, s=8, alpha=0.35, label="rows: |error|")
    order = np.argsort(spread)
    bins = [b for b in np.array_split(order, min(10, len(order))) if b.size]
    binned_std = [float(np.sqrt(np.mean(spread[b] ** 2))) for b in bins]
    binned_rmse = [float(np.sqrt(np.mean(error[b] ** 2))) for b in bins]
    ax.plot(binned_std, binned_rmse, marker="o", color="C1", label="RMSE per std decile")
    top = max(max(binned_std), max(binned_rmse)) * 1.1
    ax.plot([0, top], [0, top], color="grey", linestyle="--", label="RMSE = std")
    ax.set_xlabel(noise)
    ax.set_ylabel("absolute error")
    ax.set_title("Error against predicted uncertainty")
    ax.legend()
    ax.grid(alpha=0.3)
    figures["error_vs_std.png"] = (figure, "Absolute errors against the predicted standard "
                                           "deviation; the binned RMSE should follow the diagonal.")

    if tuple(predictor.input_shape) == (1,):
        inputs = x.reshape(len(x)).astype(np.float64)
        order = np.argsort(inputs)
        figure, ax = new_figure()
        ax.fill_between(inputs[order], (mean[:, 0] - 2 * std[:, 0])[order],
                        (mean[:, 0] + 2 * std[:, 0])[order], alpha=0.25, label="mean ± 2 std")
        ax.plot(inputs[order], mean[order, 0], color="C0", label="MC mean")
        ax.scatter(inputs, y[:, 0], s=8, color="k", alpha=0.6, label="targets")
        ax.set_xlabel("input")
        ax.set_ylabel("target" if mean.shape[1] == 1 else "target (first output)")
        ax.set_title("Predictive mean and ± 2 standard deviations")
        ax.legend()
        ax.grid(alpha=0.3)
        figures["mean_band.png"] = (figure, "The MC mean with a band of two predictive standard "
                                            "deviations over the one input.")
    which = "predictive std" if part["predictive_std"] is not None else "MC std"
    figures["risk_coverage.png"] = _risk_coverage(
        {which: std.mean(axis=1)}, np.mean((y - mean) ** 2, axis=1), "RMSE of the rows kept")
    return figures


# -- classification --------------------------------------------------------------------------------
def _classification_figures(predictor: Any, x: np.ndarray, labels: np.ndarray,
                            samples: int | None, seed: int | None, calibrated: bool
                            ) -> dict[str, tuple[Any, str]]:
    part = _predict(predictor, x, samples, seed, (), calibrated)
    probs = part["mean"]
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    figures = {}

    edges = np.linspace(0.0, 1.0, RELIABILITY_BINS + 1)
    index = np.clip(np.ceil(confidence * RELIABILITY_BINS).astype(np.int64) - 1, 0,
                    RELIABILITY_BINS - 1)
    count = np.bincount(index, minlength=RELIABILITY_BINS)
    hits = np.bincount(index, weights=correct.astype(np.float64), minlength=RELIABILITY_BINS)
    used = count > 0
    centres = (edges[:-1] + edges[1:]) / 2
    figure, ax = new_figure()
    ax.bar(centres[used], hits[used] / count[used], width=1.0 / RELIABILITY_BINS,
           edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="ideal")
    ece = scores.expected_calibration_error(labels, probs, bins=RELIABILITY_BINS)
    ax.set_xlabel("confidence (largest mean class probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability diagram ({len(labels)} rows, ECE {ece:.3f} over "
                 f"{RELIABILITY_BINS} bins)")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    figures["reliability.png"] = (figure, "Accuracy per confidence bin; bars below the diagonal "
                                          "are over-confident.")

    info = part["mutual_information"]
    figure, ax = new_figure()
    bins = np.linspace(0.0, max(float(info.max()), 1e-6), 30)
    for mask, label, colour in ((correct, "correct", "C2"), (~correct, "wrong", "C3")):
        if mask.any():
            ax.hist(info[mask], bins=bins, alpha=0.55, color=colour, density=True,
                    label=f"{label} ({int(mask.sum())})")
    ax.set_xlabel("mutual information (nats)")
    ax.set_ylabel("density")
    ax.set_title("Epistemic uncertainty of right and wrong predictions")
    ax.legend()
    ax.grid(alpha=0.3)
    figures["mutual_information.png"] = (figure, "Mutual information (BALD) of correct and "
                                                 "wrong predictions; wrong ones should sit "
                                                 "further right.")
    figures["risk_coverage.png"] = _risk_coverage(
        {"predictive entropy": part["predictive_entropy"], "mutual information": info},
        (~correct).astype(np.float64), "error rate of the rows kept")
    return figures


def _risk_coverage(measures: Mapping[str, np.ndarray], loss: np.ndarray, risk: str
                   ) -> tuple[Any, str]:
    figure, ax = new_figure()
    root = risk.startswith("RMSE")
    for name, measure in measures.items():
        share, values, _ = scores.risk_coverage(measure, loss, root=root)
        ax.plot(share, values, label=f"kept by lowest {name}")
    everyone = float(np.sqrt(loss.mean()) if root else loss.mean())
    ax.axhline(everyone, color="grey", linestyle="--", label="all rows")
    ax.set_xlabel("share of rows kept (the least uncertain)")
    ax.set_ylabel(risk)
    ax.set_xlim(0, 1)
    ax.set_title("Risk against coverage")
    ax.legend()
    ax.grid(alpha=0.3)
    return figure, (f"The {risk} when only the least uncertain rows are kept, against the "
                    "share kept; a useful uncertainty falls towards the left.")


# -- helpers ---------------------------------------------------------------------------------------
def _predict(predictor: Any, x: np.ndarray, samples: int | None, seed: int | None,
             levels: Sequence[float], calibrated: bool) -> dict[str, Any]:
    p = scores.predict_chunked(predictor, x, samples, seed, interval_levels=levels,
                               calibrated=calibrated)
    return {"mean": p.mean, "std": p.std, "predictive_std": p.predictive_std,
            "mutual_information": p.mutual_information,
            "predictive_entropy": p.predictive_entropy,
            "intervals": [(i.lower, i.upper) for i in p.intervals]}


def _page(title: str, table: Mapping[str, float], images: list[tuple[str, str]]) -> str:
    rows = "\n".join(f"<tr><td>{html.escape(k)}</td><td>{_number(v)}</td></tr>"
                     for k, v in table.items())
    pictures = "\n".join(
        f'<figure><img src="{html.escape(name)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>" for name, caption in images)
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1300px;margin:2em auto}}
table{{border-collapse:collapse}}td{{border:1px solid #ccc;padding:2px 8px}}
figure{{display:inline-block;margin:1em;width:600px;vertical-align:top}}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<table>
{rows}
</table>
{pictures}
</body>
</html>
"""


def _number(value: float) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return html.escape(str(value))
    return f"{number:.4g}" if math.isfinite(number) else html.escape(str(number))
