"""The engine of this tree against the engine of another checkout, in interleaved rounds.

For a change that should not move the engine's speed (a refactoring): each side runs in its own
process, importing its own tree; the rounds alternate between them, so drift in the machine's
speed hits both alike. Run from the repository root::

    git worktree add /tmp/before <commit>
    .venv/bin/python -m bench.engine_ab /tmp/before [--only ac] [--rounds 12]

Prints, per workload of :mod:`bench.workloads`, the median seconds of one ``predict`` on each
side and their ratio (this tree / the other).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CALLS_PER_ROUND = 10


def _worker(keys: str) -> None:
    """Serve rounds on stdin: each line names a workload; answer with the seconds per call."""
    from bench.workloads import WORKLOADS
    from mcdropout.engine import MCDropoutPredictor

    ready = {}
    for w in WORKLOADS:
        if w.key in keys:
            model = w.build()
            predictor = MCDropoutPredictor(model)
            x = w.inputs(model)
            for _ in range(3):
                predictor.predict(x, w.samples, seed=0)
            ready[w.key] = (predictor, x, w.samples)
    print("ready", flush=True)
    for line in sys.stdin:
        predictor, x, samples = ready[line.strip()]
        started = time.perf_counter()
        for i in range(CALLS_PER_ROUND):
            predictor.predict(x, samples, seed=i)
        print(json.dumps((time.perf_counter() - started) / CALLS_PER_ROUND), flush=True)


def _start(tree: Path, keys: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tree), str(tree / "server"), str(tree / "client")]))
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    # Run by path, so that `bench` and `mcdropout` both come from ``tree``.
    process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", keys],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env=env, cwd=tree)
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the worker for {tree} did not start")
    return process


def _round(process: subprocess.Popen[str], key: str) -> float:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(key + "\n")
    process.stdin.flush()
    return float(json.loads(process.stdout.readline()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("other", nargs="?", type=Path, help="the other checkout's root")
    parser.add_argument("--only", default="ac", help="workloads to time; default %(default)s")
    parser.add_argument("--rounds", type=int, default=12, help="rounds per side")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        _worker(args.worker)
        return 0
    if args.other is None:
        parser.error("name the other checkout")
    sides = {"this": _start(ROOT, args.only), "other": _start(args.other.resolve(), args.only)}
    times: dict[tuple[str, str], list[float]] = {}
    for i in range(args.rounds):
        order = list(sides) if i % 2 == 0 else list(reversed(sides))
        for key in args.only:
            for side in order:
                times.setdefault((key, side), []).append(_round(sides[side], key))
    for process in sides.values():
        assert process.stdin is not None
        process.stdin.close()
        process.wait()
    print(f"| workload | this tree (ms) | {args.other} (ms) | ratio |")
    print("|---|---|---|---|")
    for key in args.only:
        this, other = (statistics.median(times[(key, s)]) for s in ("this", "other"))
        print(f"| ({key}) | {this * 1e3:.2f} | {other * 1e3:.2f} | {this / other:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
