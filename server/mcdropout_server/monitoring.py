"""Rolling windows of rows and what Prometheus reads of them: live calibration and drift.

Two collectors, each registered once in the server's metrics registry:

- :class:`LiveCalibration`: per model, version, head and ``calibrated`` flag, the last ``window``
  rows fed back through the Feedback RPC (:mod:`mcdropout_server.feedback` scores each row), and
  the gauges taken over them: interval coverage per monitored level and Gaussian NLL
  (regression); accuracy, ECE (15 equal-width bins), NLL, and for calibrated answers prediction-
  set coverage and mean set size per monitored level (classification).
- :class:`DriftMonitor`: per model, version and head, every served row's drift measure
  (regression: predictive_std, std when the head has no tau, mean over the outputs;
  classification: mutual information) in a histogram with fixed log-spaced buckets, counters of
  the rows compared with the version calibration's 95th and 99th percentiles and of those above
  them, the shares above them over the last ``window`` compared rows, and the abstention rate
  of the last ``window`` served rows of answers that carried ``abstain``.

Updates run on the worker threads, once per answer, as a few vectorised numpy operations under
one lock; nothing is summarised until Prometheus scrapes (then under the same lock). A
``prometheus_client.Histogram.observe`` per row would cost a lock and a Python call per row.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from mcdropout.evaluation.scores import calibration_error

# 1e-5 .. 1e5, three buckets a decade: a regression spread in any target unit, and a mutual
# information in nats (at most log(classes)), both land inside.
DRIFT_BUCKETS: np.ndarray = np.logspace(-5, 5, 31)
_BUCKET_LABELS = [f"{bound:.4g}" for bound in DRIFT_BUCKETS] + ["+Inf"]
_SERIES = ["model", "version", "head"]
_FED_BACK = [*_SERIES, "calibrated"]


class RollingRows:
    """The last ``capacity`` rows of ``columns`` float64 values, in a ring (not thread-safe).

    Args:
        capacity: Rows kept, >= 1; pushing more drops the oldest.
        columns: Values per row.
    """

    def __init__(self, capacity: int, columns: int) -> None:
        self._ring = np.full((capacity, columns), np.nan)
        self._next = 0
        self.filled = 0

    def push(self, values: np.ndarray) -> None:
        """Append ``values`` (rows, columns); only the last ``capacity`` rows of it count."""
        capacity = len(self._ring)
        values = values[-capacity:]
        n = len(values)
        first = min(n, capacity - self._next)
        self._ring[self._next:self._next + first] = values[:first]
        self._ring[:n - first] = values[first:]
        self._next = (self._next + n) % capacity
        self.filled = min(capacity, self.filled + n)

    def values(self) -> np.ndarray:
        """The rows kept, (filled, columns), oldest first not guaranteed (order is irrelevant
        to the means taken of them)."""
        return self._ring[:self.filled]


def level_label(level: float) -> str:
    """How a level appears in a ``level`` label: ``0.95``."""
    return f"{level:g}"


def _mean(column: np.ndarray) -> float | None:
    # A level a calibration cannot serve leaves NaN in its rows; no rows: no sample at all.
    kept = column[~np.isnan(column)]
    return float(kept.mean()) if len(kept) else None


@dataclass
class _FedBack:
    task: str
    rows: RollingRows


class LiveCalibration(Collector):
    """Gauges over the last ``window`` fed-back rows of each model, version, head, calibrated.

    Args:
        window: Rows per series the gauges average over.
        levels: The monitored levels: one coverage (and set size) gauge each.

    Row layouts (see :func:`mcdropout_server.feedback.score_rows`): regression
    ``[nll, covered@level...]``; classification ``[correct, confidence, nll, set covered@level...,
    set size@level...]``.
    """

    def __init__(self, window: int, levels: Sequence[float]) -> None:
        self.window = window
        self.levels = tuple(levels)
        self._series: dict[tuple[str, str, str, str], _FedBack] = {}
        self._lock = threading.Lock()

    def add(self, model: str, version: int, head: str, calibrated: bool, task: str,
            values: np.ndarray) -> None:
        """Push the scored rows of one head of one Feedback call, (rows, columns) float64."""
        key = (model, str(version), head, "true" if calibrated else "false")
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _FedBack(task, RollingRows(self.window,
                                                                        values.shape[1]))
            series.rows.push(values)

    def collect(self) -> Iterator[Metric]:
        rows = _gauge("feedback_window_rows", "Fed-back rows the feedback gauges average over "
                      "now (at most MCDROPOUT_FEEDBACK_WINDOW).")
        nll = _gauge("feedback_nll", "Mean negative log-likelihood of the fed-back targets, nats "
                     "per value: Gaussian N(mean, predictive_std^2) (std without tau) for "
                     "regression, -log p(label) of the served mean probabilities for a "
                     "classifier.")
        coverage = _gauge("feedback_interval_coverage", "Share of fed-back regression targets "
                          "inside the interval at `level`: mean +- q*scale as served for a "
                          "calibrated answer, the Gaussian mean +- z*predictive_std otherwise.",
                          level=True)
        accuracy = _gauge("feedback_accuracy", "Share of fed-back rows whose most probable "
                          "class was the label.")
        ece = _gauge("feedback_ece", "Expected calibration error of the fed-back rows (top-class "
                     "confidence, 15 equal-width bins).")
        set_coverage = _gauge("feedback_set_coverage", "Share of fed-back labels inside the "
                              "calibrated prediction set at `level`.", level=True)
        set_size = _gauge("feedback_set_size", "Mean size of the calibrated prediction sets at "
                          "`level` of the fed-back rows.", level=True)
        with self._lock:
            for key, series in self._series.items():
                values = series.rows.values()
                rows.add_metric(list(key), len(values))
                k = len(self.levels)
                if series.task == "regression":
                    _add(nll, key, _mean(values[:, 0]))
                    for i, level in enumerate(self.levels):
                        _add(coverage, key, _mean(values[:, 1 + i]), level)
                    continue
                _add(accuracy, key, _mean(values[:, 0]))
                if len(values):
                    ece.add_metric(list(key), calibration_error(values[:, 1], values[:, 0]))
                _add(nll, key, _mean(values[:, 2]))
                for i, level in enumerate(self.levels):
                    _add(set_coverage, key, _mean(values[:, 3 + i]), level)
                    _add(set_size, key, _mean(values[:, 3 + k + i]), level)
        yield from (rows, nll, coverage, accuracy, ece, set_coverage, set_size)


def _gauge(name: str, documentation: str, *, level: bool = False) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"mcdropout_{name}", documentation,
                             labels=[*_FED_BACK, *(["level"] if level else [])])


def _add(family: GaugeMetricFamily, key: tuple[str, ...], value: float | None,
         level: float | None = None) -> None:
    if value is not None:
        family.add_metric([*key, *([] if level is None else [level_label(level)])], value)


@dataclass
class _Served:
    buckets: np.ndarray = field(default_factory=lambda: np.zeros(len(DRIFT_BUCKETS) + 1,
                                                                 dtype=np.int64))
    total: float = 0.0
    compared: int = 0
    above_p95: int = 0
    above_p99: int = 0
    shares: RollingRows | None = None
    abstained: RollingRows | None = None


class DriftMonitor(Collector):
    """The drift measure of every served row, and how many lie above the calibration's p95/p99.

    Args:
        window: Compared (or abstain-carrying) rows the rolling shares are taken over.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self._series: dict[tuple[str, str, str], _Served] = {}
        self._lock = threading.Lock()

    def observe(self, model: str, version: int, head: str, measure: np.ndarray,
                reference: tuple[float, float] | None, abstain: np.ndarray | None) -> None:
        """Count one answer's rows of one head.

        Args:
            measure: The drift measure per row, (rows,).
            reference: The version calibration's (p95, p99) when these rows are compared with
                it (see the module docstring), else None: histogram only.
            abstain: The answer's per-row abstain flags, (rows,) bool, when it carried them.
        """
        measure = np.asarray(measure, dtype=np.float64)
        index = np.searchsorted(DRIFT_BUCKETS, measure, side="left")  # bucket: value <= le
        counts = np.bincount(index, minlength=len(DRIFT_BUCKETS) + 1)
        total = float(measure.sum())
        above = None if reference is None else measure[:, None] > np.asarray(reference)
        flags = None if above is None else above.sum(axis=0)
        with self._lock:
            series = self._series.get((model, str(version), head))
            if series is None:
                series = self._series[(model, str(version), head)] = _Served()
            series.buckets += counts
            series.total += total
            if above is not None and flags is not None:
                series.shares = series.shares or RollingRows(self.window, 2)
                series.shares.push(above)
                series.compared += len(above)
                series.above_p95 += int(flags[0])
                series.above_p99 += int(flags[1])
            if abstain is not None:
                series.abstained = series.abstained or RollingRows(self.window, 1)
                series.abstained.push(np.asarray(abstain, dtype=np.float64)[:, None])

    def collect(self) -> Iterator[Metric]:
        histogram = HistogramMetricFamily(
            "mcdropout_drift_measure", "Drift measure of every served row: predictive_std (std "
            "without tau) mean over outputs for regression, mutual information (nats) for a "
            "classifier.", labels=_SERIES)
        compared = CounterMetricFamily(
            "mcdropout_drift_rows_compared", "Served rows compared with the version "
            "calibration's drift percentiles: regression rows of every answer, classifier rows "
            "of calibrated answers.", labels=_SERIES)
        counters = {q: CounterMetricFamily(f"mcdropout_drift_rows_above_{q}",
                                           f"Compared rows whose drift measure is above the "
                                           f"calibration rows' {q}.", labels=_SERIES)
                    for q in ("p95", "p99")}
        shares = {q: GaugeMetricFamily(f"mcdropout_drift_share_above_{q}",
                                       f"Share of the last MCDROPOUT_FEEDBACK_WINDOW compared rows "
                                       f"above the calibration rows' {q} (about "
                                       f"{0.05 if q == 'p95' else 0.01} without drift).",
                                       labels=_SERIES)
                  for q in ("p95", "p99")}
        abstention = GaugeMetricFamily(
            "mcdropout_abstention_rate", "Share of the last MCDROPOUT_FEEDBACK_WINDOW served rows "
            "(of answers that asked for abstain) abstained on.", labels=_SERIES)
        with self._lock:
            for key, series in self._series.items():
                labels = list(key)
                cumulative = np.cumsum(series.buckets)
                histogram.add_metric(labels, list(zip(_BUCKET_LABELS, cumulative.tolist(),
                                                      strict=True)), series.total)
                if series.shares is not None:
                    compared.add_metric(labels, series.compared)
                    counters["p95"].add_metric(labels, series.above_p95)
                    counters["p99"].add_metric(labels, series.above_p99)
                    recent = series.shares.values().mean(axis=0)
                    shares["p95"].add_metric(labels, float(recent[0]))
                    shares["p99"].add_metric(labels, float(recent[1]))
                if series.abstained is not None:
                    abstention.add_metric(labels, float(series.abstained.values().mean()))
        yield from (histogram, compared, *counters.values(), *shares.values(), abstention)


def gaussian_multiplier(level: float) -> float:
    """z such that mean +- z * sd holds ``level`` of a Gaussian: the uncalibrated interval."""
    return NormalDist().inv_cdf(0.5 + level / 2)
