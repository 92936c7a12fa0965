"""Engine throughput on four workloads, against the naive loop and the machine's matmul ceiling;
and, on a fifth with two inputs and two heads, an MC pass against a deterministic one.

Run from the repository root (one to three minutes on 2 cores, depending on other load)::

    .venv/bin/python -m bench.core [--update-readme] [--only ace]

For each workload of :mod:`bench.workloads` it times, in one process, the engine
(``MCDropoutPredictor.predict``), the engine without prefix caching where the model has a
deterministic prefix, and the naive approach of the MC-dropout articles: a Python loop of T calls
``model(x, training=True)``; the methods alternate in rounds. Workload (b)'s engine runs in fresh
subprocesses, one per memory budget, so each one's peak RSS growth (VmHWM) is its own. A
2048-cubed float32 matmul, timed at the start and after every workload, gives the FLOP ceiling:
its fastest run over all of them, so the fraction of the ceiling is conservative on a machine
shared with other work. Workload (e) is :mod:`bench.multi_io`.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from bench import common, multi_io
from bench.workloads import WORKLOADS, Workload, count_flops, uci_b
from mcdropout.engine import MCDropoutPredictor

DEFAULT_BUDGET = 256 * 2**20
# (b) runs at these memory budgets: a small one, the default, and one large enough for all
# 10,000 passes in one chunk (what an engine without chunking would hold).
PROBE_BUDGETS = (16 * 2**20, DEFAULT_BUDGET, 4 * 2**30)
ENGINE_WARMUP = 2
# Methods alternate in ROUNDS rounds: one naive loop and about ROUND_SECONDS of engine requests
# of each kind per round, so that bursts of other load on a shared machine hit them alike.
ROUNDS = 3
ROUND_SECONDS = 0.7
MIN_PER_ROUND, MAX_PER_ROUND = 3, 30


@dataclass(frozen=True)
class Row:
    """One measured method on one workload."""

    workload: str
    method: str
    flops: int
    samples: int
    timing: common.Timing
    peak_rss_growth: int | None = None
    budget: int | None = None

    def to_json(self, ceiling: float) -> dict[str, Any]:
        return {"workload": self.workload, "method": self.method, "flops": self.flops,
                "samples": self.samples, "runs_s": list(self.timing.runs),
                "median_s": self.timing.median, "gflops": self.gflops,
                "fraction_of_ceiling": self.gflops / ceiling,
                "peak_rss_growth_bytes": self.peak_rss_growth, "memory_budget_bytes": self.budget}

    @property
    def gflops(self) -> float:
        return self.flops / self.timing.median / 1e9


def naive_loop(model: Any, x: tf.Tensor, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """The articles' MC dropout: T eager calls in training mode, then mean and std."""
    passes = np.stack([model(x, training=True).numpy() for _ in range(samples)])
    return passes.mean(axis=0), passes.std(axis=0)


def naive_label(w: Workload) -> str:
    if w.naive_samples == w.samples:
        return "naive loop"
    return f"naive loop (timed over {w.naive_samples:,} passes, scaled)"


def scale_naive(w: Workload, timing: common.Timing) -> common.Timing:
    """Naive-loop times over ``w.naive_samples`` passes scaled to ``w.samples`` passes.

    Each naive pass is an independent eager call, so the loop's time is linear in T.
    """
    return common.Timing(tuple(t * w.samples / w.naive_samples for t in timing.runs))


def _runs_per_round(fn: Callable[[], Any]) -> int:
    """How many runs of ``fn`` fill ROUND_SECONDS, from one timed run (after warm-up)."""
    once = common.time_call(fn, warmup=0, repeats=1).median
    return max(MIN_PER_ROUND, min(MAX_PER_ROUND, math.ceil(ROUND_SECONDS / once)))


def measure(w: Workload) -> list[Row]:
    """Engine, engine without prefix caching (if the model has a prefix) and the naive loop.

    The methods run in ROUNDS alternating rounds: each round holds one naive loop and as many
    engine requests of each kind as fill about ROUND_SECONDS.
    """
    model = w.build()
    x = w.inputs(model)
    xt = tf.constant(x)
    flops = count_flops(model)
    engines = {"engine": MCDropoutPredictor(model)}
    if flops.prefix_per_row:
        engines["engine, prefix_caching=False"] = MCDropoutPredictor(model, prefix_caching=False)
    calls: dict[str, Callable[[], Any]] = {}
    per_round: dict[str, int] = {}
    for name, engine in engines.items():
        engine.warmup()
        calls[name] = functools.partial(engine.predict, x, samples=w.samples, seed=1)
        for _ in range(ENGINE_WARMUP):
            calls[name]()
        per_round[name] = _runs_per_round(calls[name])
    naive = naive_label(w)
    naive_loop(model, xt, 3)  # warm-up: the first eager calls build kernels and caches
    calls[naive] = functools.partial(naive_loop, model, xt, w.naive_samples)
    per_round[naive] = 1
    timings = common.interleave(calls, rounds=ROUNDS, per_round=per_round)
    timings[naive] = scale_naive(w, timings[naive])
    return [Row(w.key, name, flops.whole(w.batch, w.samples) if name != "engine"
                else flops.cached(w.batch, w.samples), w.samples, timing)
            for name, timing in timings.items()]


def memory_probe(budget: int) -> dict[str, Any]:
    """Workload (b) at one memory budget, in this (fresh) process: timings and peak RSS growth.

    The baseline RSS is read after the graphs are traced but before any full-size request, and
    the peak (VmHWM, reset just before) covers every full-size request, warm-up included.
    """
    w = next(w for w in WORKLOADS if w.key == "b")
    model = uci_b()
    x = w.inputs(model)
    engine = MCDropoutPredictor(model, memory_budget_bytes=budget)
    engine.warmup()
    baseline = common.rss_bytes()
    common.reset_peak_rss()
    timing = common.time_call(lambda: engine.predict(x, samples=w.samples, seed=1),
                              warmup=1, repeats=5)
    return {"runs_s": list(timing.runs), "baseline_rss": baseline,
            "peak_rss": common.peak_rss_bytes()}


def measure_b() -> list[Row]:
    """Workload (b): the engine at each probe budget (subprocesses), then the naive loop here."""
    w = next(w for w in WORKLOADS if w.key == "b")
    model = uci_b()
    flops = count_flops(model)
    rows = []
    for budget in PROBE_BUDGETS:
        out = subprocess.run([sys.executable, "-m", "bench.core", "--memory-probe", str(budget)],
                             check=True, capture_output=True, text=True,
                             cwd=common.BENCH_DIR.parent).stdout
        probe = json.loads(out.strip().splitlines()[-1])
        label = f"engine, budget {budget // 2**20:,} MiB" + (" (default)" if budget == DEFAULT_BUDGET
                                                            else "")
        rows.append(Row(w.key, label, flops.cached(w.batch, w.samples), w.samples,
                        common.Timing(tuple(probe["runs_s"])),
                        peak_rss_growth=probe["peak_rss"] - probe["baseline_rss"], budget=budget))
    x = w.inputs(model)
    xt = tf.constant(x)
    naive_loop(model, xt, 3)
    naive = common.time_call(functools.partial(naive_loop, model, xt, w.naive_samples), warmup=0,
                             repeats=ROUNDS)
    rows.append(Row(w.key, naive_label(w), flops.whole(w.batch, w.samples), w.samples,
                    scale_naive(w, naive)))
    return rows


def render(rows: list[Row], ceiling: float) -> str:
    naive = {r.workload: r.timing.median for r in rows if r.method.startswith("naive loop")}
    titles = {w.key: f"({w.key}) {w.title}, batch {w.batch}, T={w.samples:,}" for w in WORKLOADS}
    body = []
    for r in rows:
        median = r.timing.median
        growth = None if r.peak_rss_growth is None else r.peak_rss_growth / 2**20
        body.append([titles[r.workload], r.method, common.fmt(median * 1e3, 2),
                     common.fmt(r.samples / median, 0), common.fmt(r.gflops, 1),
                     common.fmt(100 * r.gflops / ceiling, 0) + "%",
                     common.fmt(naive[r.workload] / median, 1) + "x", common.fmt(growth, 0)])
    body.append(["dense matmul 2048^3 float32 (ceiling)", "tf.linalg.matmul", "-", "-",
                 common.fmt(ceiling, 1), "100%", "-", "-"])
    return common.markdown_table(
        ["workload", "method", "ms / request", "passes / s", "GFLOP/s", "of ceiling",
         "speed-up vs naive", "peak RSS growth (MiB)"], body)


def verdicts(rows: list[Row], ceiling: float) -> list[str]:
    """One line per target of the issue, with the measured figure."""
    def find(workload: str, method: str) -> Row | None:
        return next((r for r in rows if r.workload == workload and r.method.startswith(method)), None)

    lines = []
    engine_a, naive_a = find("a", "engine"), find("a", "naive loop")
    if engine_a and naive_a:
        speedup = naive_a.timing.median / engine_a.timing.median
        fraction = engine_a.gflops / ceiling
        ok = speedup >= 40 and fraction >= 0.5
        lines.append(f"- (a) >= 40x naive and >= 50% of the ceiling: {speedup:.1f}x and "
                     f"{100 * fraction:.0f}% - {'met' if ok else 'MISSED'}")
    small, large = find("b", "engine, budget 16 MiB"), find("b", "engine, budget 4,096 MiB")
    if small and large and small.peak_rss_growth is not None and large.peak_rss_growth is not None:
        ratio = small.peak_rss_growth / (small.budget or 1)
        ok = ratio <= 2
        lines.append(f"- (b) memory bounded: peak RSS growth {small.peak_rss_growth / 2**20:.0f} MiB "
                     f"with a 16 MiB budget ({ratio:.1f}x the budget) against "
                     f"{large.peak_rss_growth / 2**20:.0f} MiB with all passes in one chunk - "
                     f"{'met' if ok else 'MISSED'}")
    cached_c, whole_c = find("c", "engine"), find("c", "engine, prefix_caching=False")
    if cached_c and whole_c:
        gain = whole_c.timing.median / cached_c.timing.median
        lines.append(f"- (c) prefix caching >= 10x faster than tiling the whole model: {gain:.1f}x - "
                     f"{'met' if gain >= 10 else 'MISSED'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update-readme", action="store_true",
                        help="write the table into bench/README.md between the core markers")
    parser.add_argument("--only", default="abcde",
                        help="workloads to run, e.g. 'ac' (default: all of abcde)")
    parser.add_argument("--memory-probe", type=int, metavar="BYTES", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe is not None:
        print(json.dumps(memory_probe(args.memory_probe)))
        return 0
    info = common.machine_info()
    ceilings = [common.matmul_ceiling()]
    rows: list[Row] = []
    for w in WORKLOADS:
        if w.key in args.only:
            print(f"measuring ({w.key}) {w.title} ...", file=sys.stderr, flush=True)
            rows.extend(measure_b() if w.key == "b" else measure(w))
            ceilings.append(common.matmul_ceiling())
    ceiling = max(ceilings)
    lines = verdicts(rows, ceiling)
    parts, two_heads = [render(rows, ceiling)], None
    if "e" in args.only:
        print(f"measuring {multi_io.TITLE} ...", file=sys.stderr, flush=True)
        two_heads = multi_io.measure()
        table, verdict = multi_io.render(two_heads)
        parts.append(table)
        lines.append(verdict)
    common.publish("core", info, [*parts, "\n".join(lines)],
                   {"ceiling_gflops": {"measured": ceilings, "used": ceiling},
                    "rows": [r.to_json(ceiling) for r in rows], "two_heads": two_heads},
                   args.update_readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
