"""The cost of MC dropout against a deterministic pass, and dynamic batching under load.

Run from the repository root (about three minutes)::

    .venv/bin/python -m bench.batching [--update-readme] [--seconds 8]

1. Workload (a) of the core benchmark (MLP 64-512-512-10, Dropout 0.5 after each hidden layer,
   batch 32, T=100): the engine's time per pass over a deterministic forward pass of the same
   rows (the 32 rows repeated T times, one compiled call with dropout off), beside Keras' own
   dropout (the same compiled call with ``training=True``), the engine without prefix caching,
   and a merged batch of 16 one-row requests with their own seeds.
2. Batch-1 requests at T=100 from 16 concurrent asyncio clients against a real ``mcdropout
   serve`` subprocess with dynamic batching on and off; the single-request latency is that of one
   client sending requests one after another to the batching server.
3. The same 16 clients against what a user could build alone: a plain grpcio server (a thread
   pool of 16) whose Predict loops ``model(x, training=True)`` T times and returns mean and std.

The three feed one table whose verdicts compare them with each other (load latency against a
single request, throughput against the plain loop), so they stay in one script a little over 300
lines.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench import common
from bench.e2e import MODEL, make_store, running_server
from bench.workloads import mlp_a

SAMPLES = 100
BATCH = 32
CLIENTS = 16
ROUNDS, PER_ROUND = 7, 5
BASELINE_SECONDS = 30.0


# -- 1. cost per pass -----------------------------------------------------------------------------
def pass_costs() -> dict[str, Any]:
    """Median seconds of each way to run T passes of workload (a), timed in alternating rounds."""
    import tensorflow as tf

    from mcdropout.engine import MCDropoutPredictor

    model = mlp_a()
    x = np.random.default_rng(0).standard_normal((BATCH, 64)).astype(np.float32)
    folded = tf.constant(np.tile(x, (SAMPLES, 1)))
    deterministic = tf.function(lambda v: model(v, training=False))
    keras_dropout = tf.function(lambda v: model(v, training=True))
    engine = MCDropoutPredictor(model)
    engine.warmup(batch_rows=16)
    whole = MCDropoutPredictor(model, prefix_caching=False)
    whole.warmup()
    singles = [x[i:i + 1] for i in range(16)]
    calls: dict[str, Callable[[int], Any]] = {
        "deterministic forward pass (dropout off)": lambda i: deterministic(folded).numpy(),
        "Keras Dropout, training=True": lambda i: keras_dropout(folded).numpy(),
        "engine (prefix caching)": lambda i: engine.predict(x, samples=SAMPLES, seed=i),
        "engine, prefix_caching=False": lambda i: whole.predict(x, samples=SAMPLES, seed=i),
    }
    for call in calls.values():
        for i in range(3):
            call(i)
    runs: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(ROUNDS):
        for name, call in calls.items():
            for i in range(PER_ROUND):
                start = time.perf_counter()
                call(r * PER_ROUND + i)
                runs[name].append(time.perf_counter() - start)
    # A merged batch of one-row requests, each with its own seed (per-row masks, fused kernel),
    # against the deterministic pass of the same 16 rows T times.
    folded16 = tf.constant(np.tile(x[:16], (SAMPLES, 1)))
    merged = {
        "deterministic forward pass, 16 rows": lambda i: deterministic(folded16).numpy(),
        "engine, 16 one-row requests merged": lambda i: engine.predict_many(
            singles, samples=SAMPLES, seeds=list(range(i, i + 16))),
    }
    for name, call in merged.items():
        runs[name] = list(common.time_call(functools.partial(call, 0), warmup=3,
                                           repeats=ROUNDS * PER_ROUND).runs)
    return {name: float(np.median(values)) for name, values in runs.items()}


# -- 2. and 3. load from 16 clients -------------------------------------------------------------
async def _load(target: str, clients: int, seconds: float, warmup: float) -> dict[str, Any]:
    """``clients`` concurrent loops of batch-1 Predict calls for ``warmup + seconds`` seconds.

    Throughput counts the calls that finish inside the measured window (the last ``seconds``);
    latencies are theirs. Calls still running at the end are cancelled.
    """
    from mcdropout_client import AsyncClient

    rows = np.random.default_rng(1).standard_normal((1024, 64)).astype(np.float32)
    latencies: list[float] = []
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def one_client(k: int, client: Any) -> None:
        i = k
        while True:
            began = time.perf_counter()
            await client.predict(rows[i % len(rows)][None], model=MODEL, samples=SAMPLES,
                                 seed=i, outputs=["mean", "std"])
            ended = time.perf_counter()
            if measure_from <= ended <= stop_at:
                latencies.append(ended - began)
            i += clients

    async with AsyncClient(target, retries=0, timeout=600.0) as client:
        tasks = [asyncio.create_task(one_client(k, client)) for k in range(clients)]
        await asyncio.sleep(measure_from - time.perf_counter())
        cpu_before = _cpu_seconds()
        await asyncio.sleep(stop_at - time.perf_counter())
        cpu_after = _cpu_seconds()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    out: dict[str, Any] = {"latencies_s": latencies, "seconds": seconds,
                           "requests_per_s": len(latencies) / seconds}
    if cpu_before is not None and cpu_after is not None and latencies:
        out["cpu_s_per_request"] = (cpu_after[0] - cpu_before[0]) / len(latencies)
        out["load_generator_cpu_s_per_request"] = (cpu_after[1] - cpu_before[1]) / len(latencies)
    return out


def _cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds the machine has spent running anything, CPU seconds of this process), or
    None where /proc/stat is missing (not Linux)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(ticks[:3]) + sum(ticks[5:7])  # user, nice, system, irq, softirq: not steal
    return busy / os.sysconf("SC_CLK_TCK"), time.process_time()


def load(target: str, clients: int, seconds: float, warmup: float = 2.0) -> dict[str, Any]:
    return asyncio.run(_load(target, clients, seconds, warmup))


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set MCDROPOUT_* variables for servers started inside the block."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def baseline_server(port: int, root: Path) -> int:
    """A plain grpcio server a user could write: T eager ``model(x, training=True)`` calls."""
    from concurrent import futures

    import grpc
    from mcdropout_client import tensors
    from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb
    from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2_grpc as pb_grpc

    from mcdropout import ModelStore

    model = ModelStore(root).load_model(MODEL)

    class Loop(pb_grpc.PredictionServiceServicer):
        def Predict(self, request: Any, context: Any) -> Any:
            x = tensors.from_proto(request.inputs).astype(np.float32)
            passes = np.stack([model(x, training=True).numpy()
                               for _ in range(request.samples or SAMPLES)])
            return pb.PredictResponse(model_name=MODEL, samples_used=len(passes),
                                      mean=tensors.to_proto(passes.mean(0).astype(np.float64)),
                                      std=tensors.to_proto(passes.std(0).astype(np.float64)))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=CLIENTS))
    pb_grpc.add_PredictionServiceServicer_to_server(Loop(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("serving", flush=True)
    server.wait_for_termination()
    return 0


def single_latency(target: str, requests: int = 200) -> list[float]:
    """One client, one request at a time: batch 1, T=100, after 20 warm-up requests."""
    from mcdropout_client import Client

    x = np.random.default_rng(2).standard_normal((1, 64)).astype(np.float32)
    with Client(target, retries=0, timeout=60.0) as client:
        timing = common.time_call(lambda: client.predict(x, model=MODEL, samples=SAMPLES,
                                                         outputs=["mean", "std"]),
                                  warmup=20, repeats=requests)
    return list(timing.runs)


def under_load(seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mcdropout-bench-") as tmp:
        root = Path(tmp)
        make_store(root)
        with environment(MCDROPOUT_BATCHING="true"), running_server(root) as target:
            out["single"] = {"latencies_s": single_latency(target)}
            out["batching on"] = load(target, CLIENTS, seconds)
        with environment(MCDROPOUT_BATCHING="false"), running_server(root) as target:
            out["batching off"] = load(target, CLIENTS, seconds)
        with common.module_server("bench.batching", "--baseline-server", root) as target:
            # About one call a second finishes here: a longer window for a count worth having.
            out["plain grpcio loop"] = load(target, CLIENTS, max(seconds, BASELINE_SECONDS),
                                            warmup=BASELINE_SECONDS / 2)
    return out


# -- report ------------------------------------------------------------------------------------
def report(costs: dict[str, float], served: dict[str, Any]) -> tuple[str, list[str]]:
    det = costs["deterministic forward pass (dropout off)"]
    rows = []
    for name in ("deterministic forward pass (dropout off)", "Keras Dropout, training=True",
                 "engine (prefix caching)", "engine, prefix_caching=False"):
        rows.append([f"1. (a) batch {BATCH}, T={SAMPLES}", name,
                     f"{costs[name] / SAMPLES * 1e3:.3f} ms / pass", f"{costs[name] / det:.2f}x"])
    det16 = costs["deterministic forward pass, 16 rows"]
    merged16 = costs["engine, 16 one-row requests merged"]
    rows.append(["1. (a) 16 one-row requests, T=100", "engine, merged (own seed per request)",
                 f"{merged16 / SAMPLES * 1e3:.3f} ms / pass", f"{merged16 / det16:.2f}x"])
    single = common.Timing(tuple(served["single"]["latencies_s"]))
    rows.append(["2. batch 1, T=100, 1 client", "mcdropout serve, batching on",
                 f"p50 {single.median * 1e3:.2f} ms, p99 {single.percentile(99) * 1e3:.2f} ms",
                 "-"])
    base_rate = served["plain grpcio loop"]["requests_per_s"]
    for name in ("batching on", "batching off", "plain grpcio loop"):
        load_timing = common.Timing(tuple(served[name]["latencies_s"]))
        method = name if name.startswith("plain") else f"mcdropout serve, {name}"
        rows.append([f"2./3. batch 1, T=100, {CLIENTS} clients", method,
                     f"{served[name]['requests_per_s']:,.0f} req/s; p50 "
                     f"{load_timing.median * 1e3:.1f} ms, p99 "
                     f"{load_timing.percentile(99) * 1e3:.1f} ms",
                     f"{served[name]['requests_per_s'] / base_rate:,.1f}x the plain loop"])

    engine_ratio = costs["engine (prefix caching)"] / det
    on, off = served["batching on"], served["batching off"]
    gain = on["requests_per_s"] / off["requests_per_s"]
    p99 = common.Timing(tuple(on["latencies_s"])).percentile(99)
    vs_single = p99 / single.median
    vs_plain = on["requests_per_s"] / base_rate
    cores = os.cpu_count() or 1
    for name in ("batching on", "batching off"):
        if "cpu_s_per_request" in served[name]:
            cpu = served[name]["cpu_s_per_request"]
            rows.append([f"2. batch 1, T=100, {CLIENTS} clients", f"mcdropout serve, {name}",
                         f"{cpu * 1e3:.2f} CPU-ms / request, all processes (load generator "
                         f"{served[name]['load_generator_cpu_s_per_request'] * 1e3:.2f})",
                         f"at most {cores / cpu:,.0f} req/s on {cores} cores"])
    table = common.markdown_table(["measurement", "method", "figure", "ratio"], rows)
    verdicts = [
        f"- 1. MC pass / deterministic pass <= 1.25: {engine_ratio:.2f} (Keras dropout "
        f"{costs['Keras Dropout, training=True'] / det:.2f}) - "
        f"{'met' if engine_ratio <= 1.25 else 'MISSED'}",
        f"- 2. throughput with batching >= 3x without: {gain:.1f}x - "
        f"{'met' if gain >= 3 else 'MISSED'}",
        f"- 2. p99 at {CLIENTS} clients <= 2x the single-request latency (p50): "
        f"{p99 * 1e3:.1f} ms vs {single.median * 1e3:.1f} ms = {vs_single:.1f}x - "
        f"{'met' if vs_single <= 2 else 'MISSED'}",
        f"- 3. >= 30x a plain grpcio loop of model(x, training=True): {vs_plain:.0f}x - "
        f"{'met' if vs_plain >= 30 else 'MISSED'}",
    ]
    if "cpu_s_per_request" in on:
        # Little's law: 16 requests always in flight at X req/s wait 16 / X on average, and the
        # cores cap X at cores / (CPU per request); p99 is at least that mean.
        bound = CLIENTS * on["cpu_s_per_request"] / cores
        verdicts.append(
            f"- bound on 2. from the CPU per request: {CLIENTS} clients in flight on {cores} "
            f"cores wait at least {CLIENTS} x {on['cpu_s_per_request'] * 1e3:.2f} ms / {cores} = "
            f"{bound * 1e3:.1f} ms on average (Little's law), against a p99 target of "
            f"{2 * single.median * 1e3:.1f} ms; throughput with batching is at most "
            f"{cores / on['cpu_s_per_request']:,.0f} req/s = "
            f"{cores / on['cpu_s_per_request'] / off['requests_per_s']:.1f}x the rate without")
    return table, verdicts


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="measured seconds per load test, after 2 s of warm-up (default 8)")


def measure(args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """Time the passes, then load the servers; the block's parts and the raw figures."""
    print("timing passes ...", file=sys.stderr, flush=True)
    costs = pass_costs()
    print("load tests ...", file=sys.stderr, flush=True)
    served = under_load(args.seconds)
    table, verdicts = report(costs, served)
    return [table, "\n".join(verdicts)], {"pass_costs_s": costs, "served": served}


def main(argv: list[str] | None = None) -> int:
    return common.script_main(argv, name="batching", doc=__doc__, add_options=_options,
                              server_flag="--baseline-server", serve=baseline_server,
                              measure=measure)


if __name__ == "__main__":
    sys.exit(main())
