"""Load test: N concurrent clients against a running server on loopback, for a fixed time.

Run from the repository root against a server you started (``mcdropout serve --host 127.0.0.1``)::

    .venv/bin/python -m bench.load --target 127.0.0.1:50051 --clients 32 --duration 60 \\
        --server-pid "$(pgrep -n -f 'mcdropout serve')"

Each client is an :class:`mcdropout_client.AsyncClient` with its own connection, sending Predict
calls back to back (closed loop: the next call leaves when the last answer arrives; after a
refusal the client waits ``--backoff`` seconds). The run is bounded: at most 1024 clients, at most
600 seconds, and optionally at most ``--max-requests`` calls. It prints throughput, latency
percentiles of the answered calls, every status code with its count and median latency, and,
with ``--server-pid``, the server's resident memory sampled once a second from
``/proc/<pid>/status``. Codes other than OK count as unexpected unless named with ``--expect``
(e.g. ``--expect RESOURCE_EXHAUSTED`` for an overload run); the exit status is 1 when any
unexpected code was seen. Raw figures go to ``bench/results/load-<UTC timestamp>.json``.

With ``--probes-per-second`` it also sends ``grpc.health.v1.Health/Check`` calls on a connection
of their own, as an orchestrator's probe would (1 s deadline each), and counts how many were
answered SERVING in time; with ``--idle-watches N`` it first opens N ``Health/Watch`` streams on
one connection without a token and keeps them open for the run (the streams a slow or hostile
peer can hold), reporting how many the server accepted and how many it refused.

Only loopback targets are accepted: this tool is for measuring a server on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mcdropout_client import AsyncClient
from mcdropout_client.errors import ClientError

from bench import common

MAX_CLIENTS = 1024
MAX_DURATION = 600.0
RSS_INTERVAL = 1.0  # seconds between memory samples
PROBE_DEADLINE = 1.0  # seconds, a typical kubelet probe timeout


@dataclass
class Tally:
    """Latencies (seconds) by status code name, and when each call ended (for the warm-up cut)."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    messages: dict[str, str] = field(default_factory=dict)  # one example message per code

    def add(self, code: str, seconds: float, message: str = "") -> None:
        self.latencies[code].append(seconds)
        if message and code not in self.messages:
            self.messages[code] = message

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.latencies.values())


def loopback_target(target: str) -> str:
    """``target`` if its host is a loopback address (or "localhost"), else ValueError."""
    host = target.rsplit(":", 1)[0].strip("[]")
    if host != "localhost":
        try:
            if ipaddress.ip_address(host).is_loopback:
                return target
        except ValueError:
            pass
        raise ValueError(f"--target must be a loopback address such as 127.0.0.1:50051, "
                         f"got {target!r}")
    return target


def rss_bytes(pid: int) -> int | None:
    """Resident memory of process ``pid`` in bytes, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


async def sample_rss(pid: int, until: float, samples: list[tuple[float, int]]) -> None:
    started = time.monotonic()
    while time.monotonic() < until:
        value = rss_bytes(pid)
        if value is not None:
            samples.append((time.monotonic() - started, value))
        await asyncio.sleep(RSS_INTERVAL)


async def one_client(args: argparse.Namespace, x: np.ndarray, model: str, measure_from: float,
                     until: float, tally: Tally, budget: list[int]) -> None:
    async with AsyncClient(args.target, retries=0, timeout=args.timeout, token=args.token,
                           root_certificates=args.ca_cert_pem,
                           options=[("grpc.use_local_subchannel_pool", 1)]) as client:
        while time.monotonic() < until and budget[0] > 0:
            started = time.monotonic()
            try:
                await client.predict(x, model=model, samples=args.samples or None)
                code, message = "OK", ""
            except ClientError as exc:
                code, message = exc.code.name, exc.message
            if started >= measure_from:
                budget[0] -= 1
                tally.add(code, time.monotonic() - started, message)
            if code != "OK" and args.backoff:
                await asyncio.sleep(args.backoff)


async def probe_health(target: str, per_second: float, measure_from: float, until: float,
                       tally: Tally) -> None:
    """Health/Check at a steady rate on a connection of its own; each answer or refusal counted."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < until:
            started = time.monotonic()
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""),
                                         timeout=PROBE_DEADLINE)
                code = ("SERVING" if reply.status == health_pb2.HealthCheckResponse.SERVING
                        else health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
                message = ""
            except grpc.aio.AioRpcError as exc:
                code, message = exc.code().name, exc.details() or ""
            if started >= measure_from:
                tally.add(code, time.monotonic() - started, message)
            await asyncio.sleep(max(0.0, 1.0 / per_second - (time.monotonic() - started)))


async def hold_watches(target: str, count: int, until: float, tally: Tally) -> None:
    """Open ``count`` Health/Watch streams on one connection and hold them until ``until``."""

    async def hold(stub: health_pb2_grpc.HealthStub) -> None:
        call = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        try:
            await call.read()  # the first status: the stream was accepted
            tally.add("accepted", 0.0)
            await asyncio.wait_for(call.read(), max(0.0, until - time.monotonic()))
        except TimeoutError:
            pass
        except grpc.aio.AioRpcError as exc:
            tally.add(exc.code().name, 0.0, exc.details() or "")
        finally:
            call.cancel()

    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        await asyncio.gather(*(hold(stub) for _ in range(count)))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with AsyncClient(args.target, retries=2, timeout=30, token=args.token,
                           root_certificates=args.ca_cert_pem) as probe:
        model = args.model or (await probe.models())[0].name
        meta = await probe.metadata(model)
    shape = (args.rows, *meta.input.shape[1:])
    x = np.random.default_rng(0).normal(size=shape).astype(meta.input.dtype)
    start = time.monotonic()
    measure_from = start + args.warmup
    until = measure_from + args.duration
    tally, rss, probes, watches = Tally(), list[tuple[float, int]](), Tally(), Tally()
    budget = [args.max_requests or sys.maxsize]
    tasks = [one_client(args, x, model, measure_from, until, tally, budget)
             for _ in range(args.clients)]
    if args.server_pid:
        tasks.append(sample_rss(args.server_pid, until, rss))
    if args.probes_per_second:
        tasks.append(probe_health(args.target, args.probes_per_second, measure_from, until,
                                  probes))
    if args.idle_watches:
        tasks.append(hold_watches(args.target, args.idle_watches, until, watches))
    await asyncio.gather(*tasks)
    elapsed = min(time.monotonic(), until) - measure_from
    result = summarize(args, model, shape, tally, rss, elapsed)
    if args.probes_per_second:
        result["probes"] = {code: {"count": len(v), "p50_ms": 1000 * statistics.median(v),
                                   "max_ms": 1000 * max(v), "example": probes.messages.get(code, "")}
                            for code, v in sorted(probes.latencies.items())}
    if args.idle_watches:
        result["idle_watches"] = {code: len(v) for code, v in sorted(watches.latencies.items())}
        result["idle_watch_refusal"] = next(iter(watches.messages.values()), "")
    return result


def summarize(args: argparse.Namespace, model: str, shape: tuple[int, ...], tally: Tally,
              rss: list[tuple[float, int]], elapsed: float) -> dict[str, Any]:
    ok = tally.latencies.get("OK", [])
    codes = {code: {"count": len(v), "median_ms": 1000 * statistics.median(v),
                    "p95_ms": 1000 * float(np.percentile(v, 95)),
                    "example": tally.messages.get(code, "")}
             for code, v in sorted(tally.latencies.items())}
    unexpected = {c: v["count"] for c, v in codes.items() if c != "OK" and c not in args.expect}
    result: dict[str, Any] = {
        "target": args.target, "model": model, "input_shape": list(shape),
        "samples": args.samples or "model default", "clients": args.clients,
        "duration_s": round(elapsed, 2), "requests": tally.total,
        "answered_per_s": len(ok) / elapsed if elapsed > 0 else 0.0,
        "latency_ms": ({f"p{q}": float(np.percentile(ok, q)) * 1000 for q in (50, 95, 99)}
                       if ok else {}),
        "codes": codes, "expected_codes": sorted(args.expect), "unexpected": unexpected,
        "load_average": os.getloadavg(), "cpus": os.cpu_count(),
    }
    if rss:
        values = np.array([v for _, v in rss], dtype=float)
        times = np.array([t for t, _ in rss])
        half = len(values) // 2
        slope = (np.polyfit(times[half:], values[half:], 1)[0] * 60 / 2**20
                 if len(values) - half >= 3 else None)
        result["server_rss_mib"] = {
            "first": values[0] / 2**20, "max": values.max() / 2**20, "last": values[-1] / 2**20,
            "growth_second_half_mib_per_min": slope, "samples": len(values)}
    return result


def report(result: dict[str, Any]) -> str:
    lat = result["latency_ms"]
    head = (f"{result['clients']} clients, {result['duration_s']:.0f} s, model "
            f"{result['model']} {tuple(result['input_shape'])}, samples {result['samples']}; "
            f"load average after {result['load_average'][0]:.1f} on {result['cpus']} CPUs")
    table = common.markdown_table(
        ["requests", "answered / s", "p50 ms", "p95 ms", "p99 ms", "unexpected"],
        [[str(result["requests"]), f"{result['answered_per_s']:.1f}",
          *(f"{lat[k]:.1f}" if lat else "-" for k in ("p50", "p95", "p99")),
          str(sum(result["unexpected"].values()))]])
    codes = common.markdown_table(
        ["code", "count", "median ms", "p95 ms", "example message"],
        [[code, str(v["count"]), f"{v['median_ms']:.1f}", f"{v['p95_ms']:.1f}", v["example"][:80]]
         for code, v in result["codes"].items()])
    lines = [head, "", table, "", codes]
    if "server_rss_mib" in result:
        m = result["server_rss_mib"]
        slope = m["growth_second_half_mib_per_min"]
        lines += ["", f"server RSS: first {m['first']:.0f} MiB, max {m['max']:.0f} MiB, last "
                      f"{m['last']:.0f} MiB ({m['samples']} samples); second-half trend "
                      f"{'n/a' if slope is None else f'{slope:+.1f} MiB/min'}"]
    if "probes" in result:
        lines += ["", "health probes (Health/Check, 1 s deadline): " + ", ".join(
            f"{code} {v['count']} (p50 {v['p50_ms']:.1f} ms, max {v['max_ms']:.1f} ms)"
            for code, v in result["probes"].items())]
    if "idle_watches" in result:
        lines += ["", "idle Health/Watch streams: " + ", ".join(
            f"{code} {n}" for code, n in result["idle_watches"].items())
            + (f" ({result['idle_watch_refusal'][:100]})" if result["idle_watch_refusal"] else "")]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:50051", help="loopback host:port")
    parser.add_argument("--clients", type=int, default=32, help=f"1..{MAX_CLIENTS}")
    parser.add_argument("--duration", type=float, default=60.0,
                        help=f"measured seconds, at most {MAX_DURATION:.0f}")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of load before measuring starts")
    parser.add_argument("--max-requests", type=int, default=0,
                        help="stop after this many measured calls (0: no count limit)")
    parser.add_argument("--model", help="model name (default: the first the server lists)")
    parser.add_argument("--rows", type=int, default=8, help="input rows per request")
    parser.add_argument("--samples", type=int, default=0, help="passes T (0: model default)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-call deadline, s")
    parser.add_argument("--backoff", type=float, default=0.01,
                        help="seconds a client waits after a refused call")
    parser.add_argument("--expect", action="append", default=[], metavar="CODE",
                        help="a status code that is not an error here (repeatable)")
    parser.add_argument("--server-pid", type=int, help="sample this process's RSS")
    parser.add_argument("--token", help="bearer token, if the server needs one")
    parser.add_argument("--ca-cert", type=Path, help="PEM roots, if the server speaks TLS")
    parser.add_argument("--probes-per-second", type=float, default=0.0,
                        help="also send Health/Check probes at this rate and count them")
    parser.add_argument("--idle-watches", type=int, default=0,
                        help="hold this many Health/Watch streams open on one connection")
    parser.add_argument("--label", default="", help="stored with the results")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= MAX_CLIENTS:
        parser.error(f"--clients must be in 1..{MAX_CLIENTS}, got {args.clients}")
    if not 0 < args.duration <= MAX_DURATION:
        parser.error(f"--duration must be in (0, {MAX_DURATION:.0f}] seconds, got {args.duration}")
    if not 0 <= args.warmup <= 60:
        parser.error(f"--warmup must be in 0..60 seconds, got {args.warmup}")
    try:
        loopback_target(args.target)
    except ValueError as exc:
        parser.error(str(exc))
    args.expect = {code.upper() for code in args.expect}
    args.ca_cert_pem = args.ca_cert.read_bytes() if args.ca_cert else None
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = asyncio.run(run(args))
    result["label"] = args.label
    print(report(result))
    path = common.write_results("load", result)
    print(f"\nraw figures: {path}")
    return 1 if result["unexpected"] else 0


if __name__ == "__main__":
    sys.exit(main())
