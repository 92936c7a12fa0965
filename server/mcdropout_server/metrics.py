"""Prometheus metrics of the server, served on their own port.

Each server gets its own CollectorRegistry, so several servers in one process (tests, benchmarks)
do not collide. Model labels are only ever names the server serves: a client sending random model
names must not be able to grow the label set without bound.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.registry import Collector

UNKNOWN_MODEL = "_unknown"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                    60)
_PASS_BUCKETS = (1, 3, 10, 30, 100, 300, 1000, 3000, 10_000)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16_384)
_MERGED_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
_QUEUE_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                  5, 10)


class ServerMetrics:
    """The server's counters, histograms and gauge.

    Args:
        models: Names of the served models; any other model label is recorded as "_unknown"
            until :meth:`add_models` adds it (a reload that serves a new model).
    """

    def __init__(self, models: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry()
        self._models = frozenset(models)
        self.requests = Counter(
            "mcdropout_requests", "RPCs answered, by model, method and gRPC status code.",
            ["model", "method", "code"], registry=self.registry)
        self.latency = Histogram(
            "mcdropout_request_seconds", "Time from receiving an RPC to answering it, seconds.",
            ["model", "method"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.passes = Histogram(
            "mcdropout_passes_per_request", "Stochastic forward passes run per Predict.",
            ["model"], buckets=_PASS_BUCKETS, registry=self.registry)
        self.rows = Histogram(
            "mcdropout_batch_rows", "Input rows per Predict.", ["model"], buckets=_ROW_BUCKETS,
            registry=self.registry)
        self.in_flight = Gauge(
            "mcdropout_in_flight_requests", "RPCs being handled now.", registry=self.registry)
        self.engine_call_requests = Histogram(
            "mcdropout_engine_call_requests",
            "Predict requests answered by one engine call (more than 1: dynamic batching merged "
            "them).", ["model"], buckets=_MERGED_BUCKETS, registry=self.registry)
        self.engine_call_rows = Histogram(
            "mcdropout_engine_call_rows", "Input rows of one engine call, merged requests summed.",
            ["model"], buckets=_ROW_BUCKETS, registry=self.registry)
        self.queue_seconds = Histogram(
            "mcdropout_queue_seconds", "Time a Predict waited in the queue for a worker, seconds.",
            ["model"], buckets=_QUEUE_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge(
            "mcdropout_queue_depth", "Predict requests waiting for a worker now.",
            registry=self.registry)
        self.rejections = Counter(
            "mcdropout_admission_rejections",
            "Requests refused at once by admission control: QueueFullError (queue at "
            "MCDROPOUT_MAX_QUEUE) or DeadlineExceededError (deadline shorter than the expected "
            "queue wait).", ["reason"], registry=self.registry)
        self.feedback_rows = Counter(
            "mcdropout_feedback_rows_matched", "Fed-back rows matched with a kept answer and "
            "counted in the feedback gauges, by model and the version that answered.",
            ["model", "version"], registry=self.registry)
        self.feedback_unmatched = Counter(
            "mcdropout_feedback_requests_unmatched", "Feedback calls that found no kept answer, "
            "by reason: unknown, used (fed back already), expired, evicted (dropped for room), "
            "too_large (more rows than the store holds).", ["model", "reason"],
            registry=self.registry)
        self.feedback_store_rows = Gauge(
            "mcdropout_feedback_store_rows", "Rows of answers kept for Feedback now (at most "
            "MCDROPOUT_FEEDBACK_STORE_ROWS).", registry=self.registry)
        self.feedback_store_bytes = Gauge(
            "mcdropout_feedback_store_bytes", "Bytes of the arrays of the answers kept for "
            "Feedback now.", registry=self.registry)
        self._http: Any = None
        # Label children by label values: prometheus_client's labels() checks and joins the
        # values and takes a lock on every call, which every Predict paid several times over.
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per label set and then kept."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def add_models(self, models: Iterable[str]) -> None:
        """Give ``models`` (names now served, e.g. after a reload) labels of their own.

        Names are only ever added: a model a reload stopped serving keeps its label, so its
        series stay (Prometheus counters must not vanish mid-run) and a later request for it is
        still counted under its name. The set stays bounded by the names the store ever served.
        Call from one thread at a time; readers in other threads see the old or the new set.
        """
        self._models = self._models | frozenset(models)

    def model_label(self, model: str) -> str:
        """``model`` if it is or was served, else "_unknown"."""
        return model if model in self._models else UNKNOWN_MODEL

    def observe_rpc(self, model: str, method: str, code: str, seconds: float) -> None:
        """Record one finished RPC with its status code name (e.g. "OK") and latency."""
        label = self.model_label(model)
        self.child(self.requests, label, method, code).inc()
        self.child(self.latency, label, method).observe(seconds)

    def observe_prediction(self, model: str, rows: int, passes: int) -> None:
        """Record the size of one completed prediction."""
        label = self.model_label(model)
        self.child(self.rows, label).observe(rows)
        self.child(self.passes, label).observe(passes)

    def observe_engine_call(self, model: str, requests: int, rows: int) -> None:
        """Record one engine call about to run: how many requests it merges and their rows."""
        label = self.model_label(model)
        self.child(self.engine_call_requests, label).observe(requests)
        self.child(self.engine_call_rows, label).observe(rows)

    def observe_rejection(self, reason: str) -> None:
        """Count one request refused by admission control (``reason``: the exception's name)."""
        self.rejections.labels(reason).inc()

    def add_collector(self, collector: Collector) -> None:
        """Serve what ``collector`` reports (e.g. the monitoring windows) with the rest."""
        self.registry.register(collector)

    def start_http(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` (0 picks a free port) and return the bound port."""
        self._http, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_address[1])

    def stop_http(self) -> None:
        """Stop the metrics endpoint, if it runs."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
