"""h2load (nghttp2's HTTP/2 load generator, in C) as a gRPC load generator, and the process
figures the throughput benchmark reads around each run.

A gRPC unary call is an HTTP/2 POST whose body is one length-prefixed message: a 0 byte (not
compressed), the message's length as 4 big-endian bytes, then the serialized message. h2load
sends such a pre-encoded body as fast as the server answers, using no Python at all, so the
load generator takes little of the cores the server needs. h2load sees only the HTTP status
(200 for every gRPC answer, errors included): the benchmark reads success from the servers' own
counters.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PACKAGE = "nghttp2-client"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def grpc_body(message: bytes) -> bytes:
    """``message`` framed as a gRPC request body: flag byte 0, 4-byte big-endian length."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def ensure_h2load() -> str:
    """The path of ``h2load``, installing Debian's ``nghttp2-client`` when it is missing.

    Raises:
        RuntimeError: h2load is missing and cannot be installed (not root, or apt-get failed).
    """
    found = shutil.which("h2load")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"h2load is not installed: run `sudo apt-get install -y {PACKAGE}`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", PACKAGE]):
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(command)}` failed: {done.stderr.strip()[-500:]}")
    found = shutil.which("h2load")
    if not found:
        raise RuntimeError(f"{PACKAGE} installed but h2load is not on PATH")
    return found


@dataclass(frozen=True)
class LoadRun:
    """What h2load reported for one run.

    Attributes:
        seconds: The measured duration.
        done: Streams completed (any HTTP status).
        failed: Streams h2load counted failed or errored.
        latencies_ms: Per-request times from the log file, if one was asked for (warm-up cut).
    """

    seconds: float
    done: int
    failed: int
    latencies_ms: tuple[float, ...] = ()

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0..100) of the logged latencies, ms; None without a log."""
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None


_FINISHED = re.compile(r"finished in ([\d.]+)(us|ms|s),")
_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored")
_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def run(url: str, body: Path, *, clients: int, seconds: float, rps: float | None = None,
        log_file: Path | None = None, skip_seconds: float = 0.5) -> LoadRun:
    """One h2load run of ``clients`` connections, one stream each, for ``seconds``.

    Args:
        url: ``http://host:port/package.Service/Method``.
        body: The pre-encoded gRPC request body (see :func:`grpc_body`).
        clients: Connections (each keeps one call in flight, or sends at ``rps``).
        seconds: Measured duration.
        rps: Requests per second per connection (all connections start together, so their
            requests arrive in bursts of ``clients``); None: closed loop, as fast as answered.
        log_file: Where h2load writes per-request times (a new file: h2load appends).
        skip_seconds: Logged requests that started this soon after the first one are left out
            (connection warm-up).

    Raises:
        RuntimeError: h2load failed or printed nothing parsable.
    """
    command = ["h2load", "-c", str(clients), "-m", "1", "-t", "1", "-D", f"{seconds:g}",
               "--data", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers"]
    if rps is not None:
        command += ["--rps", f"{rps:g}"]
    if log_file is not None:
        command += ["--log-file", str(log_file)]
    done = subprocess.run([*command, url], capture_output=True, text=True)
    finished, requests = _FINISHED.search(done.stdout), _REQUESTS.search(done.stdout)
    if done.returncode != 0 or finished is None or requests is None:
        raise RuntimeError(f"h2load failed (exit {done.returncode}): "
                           f"{(done.stdout + done.stderr).strip()[-800:]}")
    latencies: tuple[float, ...] = ()
    if log_file is not None:
        latencies = read_log(log_file, skip_seconds)
    return LoadRun(float(finished.group(1)) * _UNIT[finished.group(2)], int(requests.group(3)),
                   int(requests.group(5)) + int(requests.group(6)), latencies)


def read_log(path: Path, skip_seconds: float) -> tuple[float, ...]:
    """Latencies (ms) of the HTTP-200 rows of an h2load log, those that started within
    ``skip_seconds`` of the first one left out."""
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    ok = [(int(start), int(micros)) for start, status, micros, *_ in rows if status == "200"]
    if not ok:
        return ()
    first = min(start for start, _ in ok)
    return tuple(micros / 1000 for start, micros in ok if start - first >= skip_seconds * 1e6)


# -- the servers' processes ----------------------------------------------------------------------
def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants alive now (Linux /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, ()))
    return tree


def cpu_seconds(pids: Iterable[int]) -> float:
    """User plus system CPU seconds used so far by ``pids`` (those still alive)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / _CLOCK_TICKS


def rss_bytes(pids: Sequence[int]) -> int:
    """Resident memory of ``pids`` summed, bytes (shared pages counted in each)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as statm:
                total += int(statm.read().split()[1]) * _PAGE
        except OSError:
            continue
    return total
