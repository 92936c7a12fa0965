"""One Prometheus endpoint for several server processes (``--processes`` N > 1).

The supervisor's endpoint reads every process's own exposition at each scrape (over the
process's private socket: :class:`Scraper`) and merges them (:class:`MergedCollector`):

- counters, histograms and summaries are summed sample by sample (of their ``_created``
  samples, when a series began, the earliest is kept), so ``mcdropout_requests_total`` counts
  the RPCs of every process;
- the gauges :class:`~mcdropout_server.metrics.ServerMetrics` declares itself (RPCs in flight,
  queue depth, answers kept for Feedback) count things that exist now, and are summed too;
- every other gauge (the rolling live-calibration and drift gauges of
  :mod:`mcdropout_server.monitoring`, or any a collector adds) is kept per process, with a
  ``process`` label (0..N-1): a rolling mean over one process's rows does not add up with
  another's, and averaging them would need weights they do not publish.

Two families are the supervisor's own: ``mcdropout_process_up`` (1 when the process answered this
scrape) and ``mcdropout_process_requests_total`` (the RPCs each process answered: how evenly the
kernel spread the connections). A process that does not answer a scrape (busy, or gone while
draining) is counted with its last exposition, so that summed counters never go down.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from mcdropout_server.metrics import ServerMetrics
from mcdropout_server.process_role import (
    METRICS_METHOD,
    PRIVATE_CHANNEL_OPTIONS,
    socket_target,
)

log = logging.getLogger(__name__)
PROCESS_LABEL = "process"
REQUESTS = "mcdropout_requests"
SCRAPE_TIMEOUT_SECONDS = 5.0
_SUMMED_TYPES = frozenset({"counter", "histogram", "summary", "gaugehistogram"})
# Labels that tell samples of one series apart (a histogram's buckets, a summary's quantiles).
_WITHIN_SERIES = frozenset({"le", "quantile"})


def additive_gauges() -> frozenset[str]:
    """The gauges :class:`ServerMetrics` declares itself: counts of things now, which add up
    across processes (a collector's gauges are not among them)."""
    return frozenset(family.name for family in ServerMetrics().registry.collect()
                     if family.type == "gauge")


def parse(text: str) -> list[Metric]:
    """The families of one Prometheus text exposition."""
    return list(text_string_to_metric_families(text))


def merge(processes: Mapping[int, Sequence[Metric]], additive: frozenset[str]) -> list[Metric]:
    """Merge the families of several processes into one exposition's families.

    Args:
        processes: Process index -> its parsed families.
        additive: Gauge names summed across processes (others get a ``process`` label).

    Returns:
        One family per name, in the order first seen.
    """
    merged: dict[str, Metric] = {}
    totals: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Sample]] = {}
    for process, families in sorted(processes.items()):
        for family in families:
            if family.name not in merged:
                merged[family.name] = Metric(family.name, family.documentation, family.type,
                                             family.unit)
                totals[family.name] = {}
            if _summed(family, additive):
                _add(totals[family.name], family.samples)
            else:
                merged[family.name].samples.extend(
                    Sample(s.name, {**s.labels, PROCESS_LABEL: str(process)}, s.value)
                    for s in family.samples)
    for name, family in merged.items():
        family.samples.extend(_grouped(list(totals[name].values())))
    return list(merged.values())


def process_requests(processes: Mapping[int, Sequence[Metric]]) -> Metric:
    """``mcdropout_process_requests``: the RPCs each process answered, all labels summed."""
    family = Metric("mcdropout_process_requests",
                    "RPCs answered by each server process (--processes), by process index.",
                    "counter")
    for process, families in sorted(processes.items()):
        total = sum(s.value for f in families if f.name == REQUESTS for s in f.samples
                    if s.name == REQUESTS + "_total")
        family.add_sample("mcdropout_process_requests_total", {PROCESS_LABEL: str(process)},
                          total)
    return family


def _summed(family: Metric, additive: frozenset[str]) -> bool:
    # The text format gives a counter's or histogram's ``_created`` samples a gauge family of
    # their own; they are merged as the earliest, not labelled per process.
    return family.type in _SUMMED_TYPES or (family.type == "gauge" and (
        family.name in additive or family.name.endswith("_created")))


def _add(totals: dict[tuple[str, tuple[tuple[str, str], ...]], Sample],
         samples: Sequence[Sample]) -> None:
    for sample in samples:
        key = (sample.name, tuple(sorted(sample.labels.items())))
        seen = totals.get(key)
        if seen is None:
            totals[key] = Sample(sample.name, sample.labels, sample.value)
        elif sample.name.endswith("_created"):  # when the series began: the earliest process
            totals[key] = seen._replace(value=min(seen.value, sample.value))
        else:
            totals[key] = seen._replace(value=seen.value + sample.value)


def _grouped(samples: list[Sample]) -> list[Sample]:
    """``samples`` with each series' samples together (a label set one process lacked was
    appended after the others), otherwise in the order first seen."""
    first: dict[tuple[tuple[str, str], ...], int] = {}
    for sample in samples:
        first.setdefault(_series(sample), len(first))
    return sorted(samples, key=lambda sample: first[_series(sample)])


def _series(sample: Sample) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in sample.labels.items() if k not in _WITHIN_SERIES))


class MergedCollector(Collector):
    """Reads every process's exposition at collect time and yields the merge.

    Args:
        count: Processes, numbered 0..count-1.
        fetch: Process index -> its exposition text; raises when the process does not answer.
    """

    def __init__(self, count: int, fetch: Callable[[int], str]) -> None:
        self.count, self.fetch = count, fetch
        self.additive = additive_gauges()
        self._last: dict[int, list[Metric]] = {}
        self._lock = threading.Lock()  # scrapes may come on several HTTP threads

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            up = Metric("mcdropout_process_up", "1 when the server process answered this "
                        "scrape; 0: its last exposition is counted instead.", "gauge")
            for process in range(self.count):
                try:
                    self._last[process] = parse(self.fetch(process))
                    answered = 1.0
                except Exception as exc:  # a process gone or busy: its last exposition stays
                    log.debug(f"process {process} did not answer the metrics scrape: {exc}")
                    answered = 0.0
                up.add_sample("mcdropout_process_up", {PROCESS_LABEL: str(process)}, answered)
            merged = merge(self._last, self.additive)
            requests = process_requests(self._last)
        yield from merged
        yield requests
        yield up


class Scraper:
    """Reads each child's Prometheus exposition over its private socket.

    Args:
        run_dir: Where the sockets are.
        serving: Whether a child serves yet (its socket exists only then).
    """

    def __init__(self, run_dir: Path, serving: Callable[[int], bool]) -> None:
        self.run_dir, self.serving = run_dir, serving
        self._channels: dict[int, Any] = {}

    def fetch(self, index: int) -> str:
        """Process ``index``'s exposition.

        Raises:
            LookupError: it does not serve yet.
            grpc.RpcError: it did not answer.
        """
        import grpc  # deferred: the supervisor needs it only once metrics are scraped

        if not self.serving(index):
            # Never asked before it serves: its socket is not there yet.
            raise LookupError(f"process {index} does not serve yet")
        if index not in self._channels:
            self._channels[index] = grpc.insecure_channel(socket_target(self.run_dir, index),
                                                          PRIVATE_CHANNEL_OPTIONS)
        call = self._channels[index].unary_unary(METRICS_METHOD)
        return bytes(call(b"", timeout=SCRAPE_TIMEOUT_SECONDS)).decode()
