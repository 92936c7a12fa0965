"""Batch-1 throughput and burst latency of ``mcdropout serve`` under h2load, against a bare
``grpc.aio`` floor, with batching on and off and with several server processes.

Run from the repository root (about 10 minutes on 2 cores with every configuration)::

    .venv/bin/python -m bench.throughput [--update-readme] [--rounds 3] [--configs on,floor]

It installs h2load (Debian's ``nghttp2-client``) when missing, makes sure the default models
exist (``diabetes`` is trained on first use), and starts, each in its own subprocess on a free
loopback port: the floor (:mod:`bench.floor_server`: Predict answered with a canned reply of the
real reply's size), ``mcdropout serve`` with batching on, with batching off, and with
``--processes 2`` (skipped, with a line saying so, where the flag does not exist). The load is
h2load sending one pre-encoded batch-1 ``Predict`` to ``diabetes`` at T=100 (no seed, default
outputs) on 16 connections, one call in flight each, for ``--duration`` seconds; the
configurations take turns in ``--rounds`` rounds so that other load on a shared machine falls on
all of them alike, and each figure is the median over the rounds. Answered calls are read from
each server's own counters (``mcdropout_requests_total`` by code; the floor counts its own),
since h2load sees only HTTP status 200. Server CPU is the user and system time of the server's
processes (children included) over the run, over the run's wall time, in cores.

Bursts: h2load ``--rps 20`` on 16 connections sends 16 calls at once every 50 ms; the p99 of
their latencies (h2load's per-request log) is set against the p50 of one call alone (1
connection at the same rate). An engine-bound workload (bench.core's MLP (a), batch 32, T=100,
16 connections) compares 1 and 2 processes where the flag exists.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mcdropout_client import tensors
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb
from prometheus_client.parser import text_string_to_metric_families

from bench import common, e2e, floor_server, h2load

SAMPLES = 100
CONNECTIONS = 16
BURST_RPS = 20.0
MLP_ROWS = 32
START_TIMEOUT = 300.0


@dataclass(frozen=True)
class Config:
    """One server configuration measured."""

    key: str
    label: str
    workload: str  # "diabetes" (batch 1) or "mlp" (batch 32)
    serve_args: tuple[str, ...] = ()  # None for the floor
    bursts: bool = True


CONFIGS = (
    Config("floor", "bare grpc.aio floor (canned reply)", "diabetes"),
    Config("on", "mcdropout serve, batching on", "diabetes", ("--batching", "true")),
    Config("off", "mcdropout serve, batching off", "diabetes", ("--batching", "false")),
    Config("procs2", "mcdropout serve, batching on, --processes 2", "diabetes",
           ("--batching", "true", "--processes", "2")),
    Config("mlp1", "MLP (a) batch 32: mcdropout serve, 1 process", "mlp", ("--batching", "true"),
           bursts=False),
    Config("mlp2", "MLP (a) batch 32: mcdropout serve, --processes 2", "mlp",
           ("--batching", "true", "--processes", "2"), bursts=False),
)


@dataclass
class Server:
    """A running server: its process, port and a reader of its answered-call counts by code."""

    config: Config
    process: subprocess.Popen[bytes]
    port: int
    counts: Callable[[], dict[str, float]]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{floor_server.PREDICT}"


@dataclass
class Figures:
    """What the rounds measured of one configuration."""

    per_second: list[float] = field(default_factory=list)
    cores: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    codes: dict[str, float] = field(default_factory=dict)
    burst_p50: list[float] = field(default_factory=list)
    burst_p99: list[float] = field(default_factory=list)
    lone_p50: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"answered_per_s": self.per_second, "server_cores": self.cores,
                "server_rss_bytes": self.rss, "codes": self.codes, "burst_p50_ms": self.burst_p50,
                "burst_p99_ms": self.burst_p99, "lone_p50_ms": self.lone_p50}


def median(values: list[float] | list[int]) -> float | None:
    return statistics.median(values) if values else None


# -- servers -------------------------------------------------------------------------------------
def has_processes_flag() -> bool:
    """Whether ``mcdropout serve`` has the ``--processes`` setting."""
    shown = subprocess.run([*e2e._serve_command(), "--help"], capture_output=True, text=True)
    return "--processes" in shown.stdout


def scrape(metrics_port: int) -> dict[str, float]:
    """Predict calls answered so far by status code, from the server's Prometheus endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text.decode()):
        if family.name != "mcdropout_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("method") == "Predict":
                code = sample.labels["code"]
                counts[code] = counts.get(code, 0.0) + sample.value
    return counts


def floor_counts(port: int) -> dict[str, float]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answered = channel.unary_unary(floor_server.ANSWERED)(b"", timeout=10)
    return {"OK": float(answered.decode())}


def wait_serving(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited ({process.returncode}): "
                                   f"{log.read_text()[-1500:]}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise RuntimeError(f"the server was not SERVING within {START_TIMEOUT:.0f} s")


def start_serve(config: Config, root: Path, logs: Path) -> Server:
    port, metrics_port = common.free_port(), common.free_port()
    command = [*e2e._serve_command(), "--model-root", str(root), "--host", "127.0.0.1",
               "--port", str(port), "--metrics-host", "127.0.0.1",
               "--metrics-port", str(metrics_port), "--log-level", "WARNING", *config.serve_args]
    log = logs / f"{config.key}.log"
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return Server(config, process, port, lambda: scrape(metrics_port))


def start_floor(config: Config, reply: Path, logs: Path) -> Server:
    port = common.free_port()
    log = logs / "floor.log"
    process = subprocess.Popen([sys.executable, "-m", "bench.floor_server", "--port", str(port),
                                "--reply", str(reply)], stdout=log.open("wb"),
                               stderr=subprocess.STDOUT, cwd=common.BENCH_DIR.parent)
    return Server(config, process, port, lambda: floor_counts(port))


@contextlib.contextmanager
def stopping(servers: list[Server]) -> Iterator[list[Server]]:
    try:
        yield servers
    finally:
        for server in servers:
            server.process.terminate()
        for server in servers:
            try:
                server.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()


def canned_reply(port: int, message: bytes) -> bytes:
    """The serialized reply of one real Predict of ``message``, as the server sent it."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply: bytes = channel.unary_unary(floor_server.PREDICT)(message, timeout=30)
    return reply


# -- workloads ------------------------------------------------------------------------------------
def diabetes_request() -> tuple[Path, bytes]:
    """The default store's root and a batch-1 ``diabetes`` PredictRequest (a held-out row)."""
    from mcdropout.modeling import defaults

    root = defaults.ensure_default_store()
    spec = next(m for m in defaults.DEFAULT_MODELS if m.name == "diabetes")
    table = defaults.load_default_table(spec)
    row = table.x[defaults.held_out(table)[1][:1]].astype(np.float32)
    request = pb.PredictRequest(model_name="diabetes", samples=SAMPLES,
                                inputs=tensors.to_proto(row))
    return root, request.SerializeToString()


def mlp_request(root: Path) -> bytes:
    """Workload (a)'s MLP saved under ``root``; a batch-32 PredictRequest for it."""
    e2e.make_store(root)
    x = np.random.default_rng(0).normal(size=(MLP_ROWS, 64)).astype(np.float32)
    return pb.PredictRequest(model_name=e2e.MODEL, samples=SAMPLES,
                             inputs=tensors.to_proto(x)).SerializeToString()


# -- measuring ------------------------------------------------------------------------------------
def closed_loop(server: Server, body: Path, seconds: float, into: Figures) -> None:
    tree = h2load.process_tree(server.process.pid)
    before_counts, before_cpu = server.counts(), h2load.cpu_seconds(tree)
    started = time.monotonic()
    load = h2load.run(server.url, body, clients=CONNECTIONS, seconds=seconds)
    wall = time.monotonic() - started
    tree = h2load.process_tree(server.process.pid)
    cpu, after_counts = h2load.cpu_seconds(tree), server.counts()
    delta = {code: after_counts.get(code, 0.0) - before_counts.get(code, 0.0)
             for code in after_counts}
    into.per_second.append(delta.get("OK", 0.0) / load.seconds)
    into.cores.append((cpu - before_cpu) / wall)
    into.rss.append(h2load.rss_bytes(tree))
    for code, count in delta.items():
        into.codes[code] = into.codes.get(code, 0.0) + count


def bursts(server: Server, body: Path, seconds: float, logs: Path, round_: int,
           into: Figures) -> None:
    for clients, target in ((CONNECTIONS, into.burst_p99), (1, into.lone_p50)):
        log = logs / f"{server.config.key}-r{round_}-c{clients}.tsv"
        load = h2load.run(server.url, body, clients=clients, seconds=seconds, rps=BURST_RPS,
                          log_file=log)
        if clients == CONNECTIONS:
            into.burst_p50.append(load.percentile(50) or float("nan"))
            target.append(load.percentile(99) or float("nan"))
        else:
            target.append(load.percentile(50) or float("nan"))


def measure(args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    h2load.ensure_h2load()
    wanted = [c for c in CONFIGS if c.key in args.configs.split(",")]
    notes = []
    if any("--processes" in c.serve_args for c in wanted) and not has_processes_flag():
        wanted = [c for c in wanted if "--processes" not in c.serve_args]
        notes.append("- 2 processes: not measured, `mcdropout serve` has no `--processes` "
                     "setting in this tree yet")
    root, message = diabetes_request()
    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    bodies = {"diabetes": work / "diabetes.bin", "mlp": work / "mlp.bin"}
    bodies["diabetes"].write_bytes(h2load.grpc_body(message))
    mlp_root = work / "mlp-store"
    if any(c.workload == "mlp" for c in wanted):
        bodies["mlp"].write_bytes(h2load.grpc_body(mlp_request(mlp_root)))
    figures = {c.key: Figures() for c in wanted}
    served = [start_serve(c, mlp_root if c.workload == "mlp" else root, work)
              for c in wanted if c.key != "floor"]
    with stopping(served):
        for server in served:
            wait_serving(server.process, server.port, work / f"{server.config.key}.log")
        servers = {s.config.key: s for s in served}
        floor = next((c for c in wanted if c.key == "floor"), None)
        with stopping([]) as extra:
            if floor is not None:
                first = next(s for s in served if s.config.workload == "diabetes")
                (work / "reply.bin").write_bytes(canned_reply(first.port, message))
                extra.append(start_floor(floor, work / "reply.bin", work))
                wait_serving_floor(extra[0])
                servers["floor"] = extra[0]
            for config in wanted:  # warm-up, not counted
                h2load.run(servers[config.key].url, bodies[config.workload],
                           clients=CONNECTIONS, seconds=2)
            for round_ in range(args.rounds):
                print(f"round {round_ + 1} of {args.rounds} ...", file=sys.stderr, flush=True)
                for config in wanted:
                    server = servers[config.key]
                    closed_loop(server, bodies[config.workload], args.duration,
                                figures[config.key])
                    if config.bursts and args.burst_duration > 0:
                        bursts(server, bodies[config.workload], args.burst_duration, work,
                               round_, figures[config.key])
    parts = [render(wanted, figures, args), "\n".join(verdicts(figures) + notes)]
    return parts, {"configs": {c.key: {"label": c.label, **figures[c.key].to_json()}
                               for c in wanted},
                   "rounds": args.rounds, "duration_s": args.duration,
                   "burst_duration_s": args.burst_duration, "connections": CONNECTIONS,
                   "samples": SAMPLES, "work_dir": str(work)}


def wait_serving_floor(server: Server) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            server.counts()
            return
        except grpc.RpcError:
            time.sleep(0.2)
    raise RuntimeError("the floor server did not start within 60 s")


# -- report ---------------------------------------------------------------------------------------
def render(wanted: list[Config], figures: dict[str, Figures], args: argparse.Namespace) -> str:
    rows = []
    for c in wanted:
        f = figures[c.key]
        # h2load cancels the calls in flight when its time is up (one per connection and run
        # at most): not the server's doing; any CANCELLED beyond that counts.
        not_ok = sum(v for code, v in f.codes.items() if code not in ("OK", "CANCELLED"))
        not_ok += max(0.0, f.codes.get("CANCELLED", 0.0) - CONNECTIONS * len(f.per_second))
        p99, lone = median(f.burst_p99), median(f.lone_p50)
        rows.append([c.label, common.fmt(median(f.per_second), 0), f"{not_ok:.0f}",
                     common.fmt(median(f.cores), 2),
                     common.fmt(max(f.rss) / 2**20 if f.rss else None, 0),
                     common.fmt(median(f.burst_p50), 1), common.fmt(p99, 1),
                     common.fmt(lone, 2),
                     common.fmt(p99 / lone if p99 and lone else None, 1)])
    head = (f"Batch-1 `Predict` to `diabetes`, T={SAMPLES} (MLP rows: batch {MLP_ROWS}), h2load "
            f"on {CONNECTIONS} connections x 1 stream, {args.rounds} rounds of {args.duration:g} s "
            f"each; bursts: `--rps {BURST_RPS:g}` on {CONNECTIONS} connections and on 1, "
            f"{args.burst_duration:g} s; medians over the rounds.")
    table = common.markdown_table(
        ["configuration", "answered / s", "not OK", "server CPU (cores)", "server RSS (MiB)",
         "burst p50 ms", "burst p99 ms", "lone p50 ms", "burst p99 / lone p50"], rows)
    return head + "\n\n" + table


def verdicts(figures: dict[str, Figures]) -> list[str]:
    """The issue's three ratios, for 1 process and (where measured) for 2."""
    rate = {k: median(f.per_second) for k, f in figures.items()}
    lines = []
    for key, who in (("on", "1 process"), ("procs2", "2 processes")):
        if key not in figures:
            continue
        on, floor, off = rate[key], rate.get("floor"), rate.get("off")
        if on and floor:
            lines.append(f"- {who}: batching on / floor >= 0.5: {on / floor:.2f} - "
                         f"{'met' if on / floor >= 0.5 else 'MISSED'}")
        if on and off:
            lines.append(f"- {who}: batching on / off (1 process) >= 3: {on / off:.2f} - "
                         f"{'met' if on / off >= 3 else 'MISSED'}")
        p99, lone = median(figures[key].burst_p99), median(figures[key].lone_p50)
        if p99 and lone:
            lines.append(f"- {who}: burst p99 / lone p50 <= 4: {p99:.1f} ms / {lone:.2f} ms = "
                         f"{p99 / lone:.1f} - {'met' if p99 / lone <= 4 else 'MISSED'}")
    if rate.get("mlp1") and rate.get("mlp2"):
        lines.append(f"- engine-bound MLP (a), batch 32: 2 processes / 1 = "
                     f"{rate['mlp2'] / rate['mlp1']:.2f}x the throughput")  # type: ignore[operator]
    return lines


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=float, default=15.0,
                        help="seconds of closed-loop load per configuration and round")
    parser.add_argument("--burst-duration", type=float, default=5.0,
                        help="seconds of bursts (and of lone calls) per round; 0: no bursts")
    parser.add_argument("--configs", default=",".join(c.key for c in CONFIGS),
                        help="which configurations, comma-separated (default: all of "
                             f"{','.join(c.key for c in CONFIGS)})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update-readme", action="store_true",
                        help="write the table into bench/README.md between the throughput markers")
    add_options(parser)
    args = parser.parse_args(argv)
    info = common.machine_info()
    parts, data = measure(args)
    common.publish("throughput", info, parts, data, args.update_readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
