"""Shared benchmark helpers: timing, FLOP counting, machine facts, peak memory, report output,
and the command line of the scripts that are also their own comparison servers.

Benchmarks report figures; they assert nothing. Every script prints one markdown table, writes
its raw figures to ``bench/results/<name>-<timestamp>.json`` and, with ``--update-readme``,
replaces its block of ``bench/README.md`` (between ``<!-- <name>:begin -->`` and
``<!-- <name>:end -->``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
README = BENCH_DIR / "README.md"


# -- timing ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated runs of one call (warm-up runs excluded)."""

    runs: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) of the runs, linear interpolation, seconds."""
        return float(np.percentile(self.runs, q))


def time_call(fn: Callable[[], Any], *, warmup: int, repeats: int) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed (perf_counter)."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return Timing(tuple(runs))


def interleave(calls: Mapping[str, Callable[[], Any]], *, rounds: int,
               per_round: Mapping[str, int]) -> dict[str, Timing]:
    """Time several calls in alternating rounds: ``per_round[name]`` runs of each per round.

    Methods compared in one table then meet the same bursts of other load on a shared machine,
    which makes their ratios far steadier than back-to-back blocks would. No warm-up is done here.
    """
    runs: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            for _ in range(per_round[name]):
                start = time.perf_counter()
                fn()
                runs[name].append(time.perf_counter() - start)
    return {name: Timing(tuple(values)) for name, values in runs.items()}


def matmul_ceiling(size: int = 2048, repeats: int = 7) -> float:
    """The machine's dense float32 FLOP rate, GFLOP/s: the fastest of ``size``-cubed TF matmuls.

    This is what TensorFlow's own kernels reach on this machine with its default threads. The
    fastest run, not the median, because other load on a shared machine only ever slows a run
    down: the ceiling is what the hardware gives when nothing else gets in the way.
    """
    import tensorflow as tf

    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    matmul = tf.function(tf.linalg.matmul)
    timing = time_call(lambda: matmul(a, b).numpy(), warmup=2, repeats=repeats)
    return 2 * size**3 / min(timing.runs) / 1e9


# -- FLOP counting -------------------------------------------------------------------------------
def layer_flops(layer: Any, input_shape: tuple[int | None, ...]) -> int:
    """Floating-point operations of one row through ``layer``: 2 per multiply-add.

    Counts the multiply-adds of Dense, Conv1D/2D/3D and SimpleRNN/GRU/LSTM layers, which dominate;
    bias adds, activations, pooling and dropout masks are not counted (so achieved GFLOP/s is a
    slight under-estimate).

    Args:
        layer: A built Keras layer.
        input_shape: The layer's input shape with a leading batch dimension (None).
    """
    import keras

    out_shape = tuple(layer.compute_output_shape(input_shape))
    if isinstance(layer, keras.layers.Dense):
        positions = math.prod(d or 1 for d in out_shape[1:-1])
        return 2 * positions * int(input_shape[-1] or 0) * int(layer.units)
    if isinstance(layer, keras.layers.Conv1D | keras.layers.Conv2D | keras.layers.Conv3D):
        kernel = tuple(layer.kernel.shape)  # (*spatial, in_channels / groups, filters)
        return 2 * math.prod(d or 1 for d in out_shape[1:]) * math.prod(kernel[:-1])
    if isinstance(layer, keras.layers.RNN):
        gates = {"LSTMCell": 4, "GRUCell": 3}.get(type(layer.cell).__name__, 1)
        units, features, steps = int(layer.cell.units), int(input_shape[-1] or 0), input_shape[1]
        return 2 * int(steps or 1) * gates * units * (features + units)
    return 0


def model_flops(model: Any, cut: int) -> tuple[int, int]:
    """FLOPs per row of a Sequential model's layers before index ``cut`` and from ``cut`` on."""
    shape: tuple[int | None, ...] = (None, *tuple(model.inputs[0].shape[1:]))
    before = after = 0
    for i, layer in enumerate(model.layers):
        flops = layer_flops(layer, shape)
        if i < cut:
            before += flops
        else:
            after += flops
        shape = tuple(layer.compute_output_shape(shape))
    return before, after


# -- memory ------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def rss_bytes() -> int:
    """This process's resident set size now, bytes (Linux)."""
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """This process's peak resident set size (VmHWM) since start or the last reset, bytes."""
    return _status_kib("VmHWM") * 1024


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: writing 5 to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


# -- machine and output --------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    """Date, CPU model, core count, load average and library versions, for the report header."""
    import keras
    import tensorflow as tf

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def header_line(info: dict[str, Any], load_after: float) -> str:
    """One markdown line naming when and where the figures were taken."""
    return (f"Measured {info['date']} on {info['cpu']}, {info['cores']} cores "
            f"(1-min load average {info['load_average_1min']:.1f} before, {load_after:.1f} after), "
            f"Python {info['python']}, TensorFlow {info['tensorflow']}, Keras {info['keras']}.")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table; the first column left-aligned, the others right-aligned."""
    align = [":--"] + ["--:"] * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def write_results(name: str, data: dict[str, Any]) -> Path:
    """Write ``data`` as JSON to bench/results/<name>-<UTC timestamp>.json; returns the path."""
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def update_readme(name: str, block: str, readme: Path = README) -> None:
    """Replace the text between ``<!-- name:begin -->`` and ``<!-- name:end -->`` with ``block``.

    Raises:
        ValueError: the README lacks either marker.
    """
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = readme.read_text()
    if begin not in text or end not in text:
        raise ValueError(f"{readme} must contain the markers {begin!r} and {end!r}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{begin}\n{block.strip()}\n{end}{tail}")


def publish(name: str, info: dict[str, Any], parts: Sequence[str], data: dict[str, Any],
            update: bool) -> None:
    """Print a benchmark's block (header line, then ``parts``), save ``data`` with the machine
    and load average, and with ``update`` write the block into bench/README.md."""
    load_after = os.getloadavg()[0]
    block = "\n\n".join([header_line(info, load_after), *parts])
    print(block)
    path = write_results(name, {"machine": info, "load_average_1min_after": load_after, **data})
    print(f"raw figures: {path}", file=sys.stderr)
    if update:
        update_readme(name, block)


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for a table cell; an en dash when there is none."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:,.{digits}f}"


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def script_main(argv: Sequence[str] | None, *, name: str, doc: str,
                add_options: Callable[[argparse.ArgumentParser], None], server_flag: str,
                serve: Callable[[int, Path], int],
                measure: Callable[[argparse.Namespace], tuple[list[str], dict[str, Any]]]) -> int:
    """The ``main`` of a benchmark script that can also run as its own comparison server.

    With the hidden ``server_flag PORT ROOT`` (what :func:`module_server` passes) it returns
    ``serve(port, root)``; otherwise it runs ``measure(args)`` for the block's parts and raw
    figures and hands them to :func:`publish` under ``name`` (README markers, results file).
    ``add_options`` adds the script's own options; ``doc``'s first paragraph describes it.
    """
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--update-readme", action="store_true",
                        help=f"write the table into bench/README.md between the {name} markers")
    add_options(parser)
    parser.add_argument(server_flag, nargs=2, metavar=("PORT", "ROOT"), dest="server",
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.server:
        return serve(int(args.server[0]), Path(args.server[1]))
    info = machine_info()
    parts, data = measure(args)
    publish(name, info, parts, data, args.update_readme)
    return 0


@contextmanager
def module_server(module: str, flag: str, root: Path) -> Iterator[str]:
    """Run ``python -m <module> <flag> PORT ROOT`` (a comparison server a benchmark defines);
    yield its loopback target once it prints "serving", and stop it when the block ends.

    Raises:
        RuntimeError: the server exited before it was serving.
    """
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", module, flag, str(port), str(root)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               cwd=BENCH_DIR.parent)
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "serving":
            raise RuntimeError(f"`python -m {module} {flag}` exited with code {process.wait()}")
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)
