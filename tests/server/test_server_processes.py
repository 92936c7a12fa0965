"""``mcdropout serve --processes N``: a supervisor and N server processes on one port.

Real processes started by the real CLI on a free loopback port, called through the real client.
Each test connection is a connection of its own (a local subchannel pool), so that the kernel
spreads them over the processes as it spreads separate clients; which process answered is read
from the server's own record (its per-process metrics and the ``process`` field of its log
lines), never guessed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from load_testkit import Hammer
from mcdropout_client import Client
from mcdropout_client.errors import InvalidArgument, NotFound
from mcdropout_server.metrics import ServerMetrics
from mcdropout_server.metrics_merge import MergedCollector
from mcdropout_server.monitoring import DriftMonitor
from mcdropout_server.processes import reserve_port
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from server_testkit import (
    MCDROPOUT,
    REG_INFO,
    ServeProcess,
    free_port,
    reg_inputs,
    regression,
    serve_process,
)
from test_server_reload import wait_for

from mcdropout import ModelStore

PROCESSES = 2
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Served:
    """The supervisor, its metrics port, and what its processes logged so far."""

    run: ServeProcess
    metrics_port: int

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.run.lines) if line.startswith("{")]

    def samples(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """The samples named ``name`` of the merged endpoint, by their sorted labels."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=10) as reply:
            text = reply.read().decode()
        return {tuple(sorted(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples
                if s.name == name}


def connection(port: int, **options: Any) -> Client:
    """A client on a TCP connection of its own (not shared with other clients of this process)."""
    return Client(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)],
                  **options)


@contextmanager
def supervisor(store: Path, *flags: str) -> Iterator[Served]:
    metrics_port = free_port()
    with serve_process(store, "--processes", str(PROCESSES), "--metrics-port", str(metrics_port),
                       "--log-level", "DEBUG", *flags) as run:
        yield Served(run, metrics_port)


@pytest.fixture(scope="module")
def live_store(store_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the test store that a test may add versions to."""
    return Path(shutil.copytree(store_root, tmp_path_factory.mktemp("processes") / "store"))


@pytest.fixture(scope="module")
def served(live_store: Path) -> Iterator[Served]:
    """One supervisor for the module; its last test drains it with SIGTERM."""
    with supervisor(live_store, "--reload-interval-seconds", "0", "--grace-seconds", "30") as s:
        yield s


def predict_rpcs(served: Served) -> dict[int, str]:
    """request id -> the process (index) that answered that Predict, from the log."""
    return {r["request_id"]: r["process"] for r in served.records()
            if r.get("method") == "Predict" and r.get("code") == "OK"}


# -- without a server --------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["flag", "env"])
def test_processes_below_1_are_refused(how: str) -> None:
    command = [MCDROPOUT, "serve", *(["--processes", "0"] if how == "flag" else [])]
    env = {**os.environ, **({"MCDROPOUT_PROCESSES": "0"} if how == "env" else {})}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert "MCDROPOUT_PROCESSES must be >= 1, got 0" in done.stderr


def test_the_supervisor_imports_no_tensorflow() -> None:
    # It holds no model: N processes of TensorFlow, not N + 1.
    code = ("import sys, mcdropout_server.processes, mcdropout_server.metrics_merge; "
            "print(sorted({'tensorflow', 'keras'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("which", ["--port", "--metrics-port"])
def test_a_port_in_use_is_refused_with_exit_1(store_root: Path, which: str) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        ports = {"--port": "0", "--metrics-port": "0", which: str(port)}
        done = subprocess.run([MCDROPOUT, "serve", "--model-root", str(store_root), "--host",
                               "127.0.0.1", *(a for pair in ports.items() for a in pair),
                               "--processes", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "cannot serve" in done.stderr and "Address already in use" in done.stderr


def test_the_reserved_port_is_shared_only_with_so_reuseport() -> None:
    with reserve_port("127.0.0.1", 0) as port:
        with socket.socket() as sibling:  # what each server process does
            sibling.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sibling.bind(("127.0.0.1", port))
        with socket.socket() as stranger, pytest.raises(OSError):
            stranger.bind(("127.0.0.1", port))


def test_metrics_merge_sums_counts_and_labels_rolling_gauges_per_process() -> None:
    expositions = []
    for process in range(2):
        metrics = ServerMetrics(["reg"])
        drift = DriftMonitor(window=10)
        metrics.add_collector(drift)
        for _ in range(process + 1):
            metrics.observe_rpc("reg", "Predict", "OK", 0.003)
        metrics.in_flight.inc(process + 1)
        drift.observe("reg", 1, "y", [0.1, 0.2, 5.0][:process + 2], (0.5, 1.0), None)
        expositions.append(generate_latest(metrics.registry).decode())
    registry = CollectorRegistry()
    registry.register(MergedCollector(2, lambda process: expositions[process]))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(generate_latest(registry).decode())
               for s in family.samples}
    ok = (("code", "OK"), ("method", "Predict"), ("model", "reg"))
    assert samples["mcdropout_requests_total", ok] == 3
    assert samples["mcdropout_request_seconds_count", ok[1:]] == 3
    assert samples["mcdropout_in_flight_requests", ()] == 3
    series = (("head", "y"), ("model", "reg"), ("version", "1"))
    assert samples["mcdropout_drift_rows_compared_total", series] == 5  # 2 + 3 rows
    shares = {dict(labels)["process"]: value for (name, labels), value in samples.items()
              if name == "mcdropout_drift_share_above_p95"}
    assert shares == {"0": 0.0, "1": pytest.approx(1 / 3)}
    assert samples["mcdropout_process_requests_total", (("process", "0"),)] == 1
    assert samples["mcdropout_process_requests_total", (("process", "1"),)] == 2


# -- one supervisor, two processes -------------------------------------------------------------
def test_both_processes_answer_and_the_metrics_sum_them(served: Served) -> None:
    calls = 0
    for i in range(40):
        with connection(served.run.port) as client:
            assert client.health() == "SERVING"
            assert client.predict(reg_inputs(2, seed=i), model="reg", samples=8).samples_used == 8
            calls += 1
        if i >= 3 and len(set(predict_rpcs(served).values())) == PROCESSES:
            break
    assert set(predict_rpcs(served).values()) == set(range(PROCESSES)), "one process took all"
    per_process = served.samples("mcdropout_process_requests_total")
    assert len(per_process) == PROCESSES and all(v > 0 for v in per_process.values())
    ok = served.samples("mcdropout_requests_total")[
        (("code", "OK"), ("method", "Predict"), ("model", "reg"))]
    assert ok == calls == len(predict_rpcs(served))
    assert served.samples("mcdropout_in_flight_requests") == {(): 0.0}
    assert served.samples("mcdropout_process_up") == {
        (("process", str(i)),): 1.0 for i in range(PROCESSES)}
    # Each process bounded TensorFlow's pools to its share of the cores.
    share = max(1, len(os.sched_getaffinity(0)) // PROCESSES)
    assert {r["process"]: (r["intra_op"], r["inter_op"]) for r in served.records()
            if r["msg"] == "TensorFlow threads bounded"} == {
        i: (share, share) for i in range(PROCESSES)}


def test_feedback_finds_the_answer_kept_by_the_other_process(served: Served) -> None:
    rows = 3
    crossed: list[str] = []
    for i in range(20):
        request_id = f"fb-{i}"
        with connection(served.run.port) as client:
            client.predict(reg_inputs(rows, seed=i), model="reg", samples=8,
                           request_id=request_id)
        # Bad targets are refused wherever the answer is; it stays for a corrected call.
        with connection(served.run.port, retries=0) as client, pytest.raises(InvalidArgument):
            client.feedback("reg", request_id, [9.0, 10.0])
        with connection(served.run.port) as client:
            assert client.feedback("reg", request_id, [9.0, 10.0, 11.0]).rows_matched == rows
            with pytest.raises(NotFound, match="already fed back"):  # whichever process asks
                client.feedback("reg", request_id, [9.0, 10.0, 11.0])
        answered_by = predict_rpcs(served)[request_id]
        fed_back_by = [r["process"] for r in served.records()
                       if r.get("method") == "Feedback" and r.get("request_id") == request_id]
        if fed_back_by[0] != answered_by:
            crossed.append(request_id)
        if crossed and i >= 3:
            break
    assert crossed, "every Feedback landed on the process that answered; nothing was shown"
    matched = served.samples("mcdropout_feedback_rows_matched_total")
    assert sum(matched.values()) == rows * (i + 1)
    with connection(served.run.port, retries=0) as client, \
            pytest.raises(NotFound, match="never answered"):
        client.feedback("reg", "never-given", [1.0])
    # The rolling gauges are per process: a window of one process's rows.
    assert {dict(labels)["process"] for labels in
            served.samples("mcdropout_feedback_window_rows")} <= {"0", "1"}


def test_sighup_reloads_every_process(served: Served, live_store: Path) -> None:
    ModelStore(live_store).save(regression(3), REG_INFO)
    served.run.process.send_signal(signal.SIGHUP)

    def loaded() -> set[int]:
        return {r["process"] for r in served.records()
                if r["msg"] == "served model versions swapped" and "reg:v3" in r["loaded"]}

    wait_for(lambda: loaded() == set(range(PROCESSES)), timeout=120)
    for i in range(4):
        with connection(served.run.port) as client:
            assert client.predict(reg_inputs(1, seed=i), model="reg", samples=4).version == 3


def test_sigterm_drains_every_process_and_loses_no_accepted_call(served: Served) -> None:
    own = [("grpc.use_local_subchannel_pool", 1)]  # six connections, spread over the processes
    channels = [grpc.insecure_channel(f"127.0.0.1:{served.run.port}", options=own)
                for _ in range(6)]
    watches = [health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(),
                                                         timeout=120) for channel in channels]
    assert [next(watch).status for watch in watches] == [SERVING] * len(watches)
    # Passes enough that a call spends most of its time in the server, not in the six client
    # threads sharing this test's GIL: the signal must find calls in flight, and it is sent
    # only once the merged gauge shows one.
    with Hammer(served.run.port, 6, own, samples=2000).running() as load:
        wait_for(lambda: len(load.answered) >= 12)
        wait_for(lambda: served.samples("mcdropout_in_flight_requests")[()] >= 1)
        served.run.process.send_signal(signal.SIGTERM)
        assert served.run.process.wait(timeout=120) == 0
    answered, failed = load.answered, load.failed
    # Every process turned NOT_SERVING and ended its Watch streams as it drained.
    assert [list(watch)[-1].status for watch in watches] == [NOT_SERVING] * len(watches)
    for channel in channels:
        channel.close()

    records = served.records()
    calls = [r for r in records if r.get("method") == "Predict" and r.get("code")
             and re.fullmatch(r"c\d+-\d+", r.get("request_id", ""))]
    assert {r["code"] for r in calls} <= {"OK", "UNAVAILABLE"}
    assert sorted(answered) == sorted(r["request_id"] for r in calls if r["code"] == "OK")
    refused = [e for e in failed if e.request_id is not None]
    assert all(e.code.name == "UNAVAILABLE" and "shutting down" in e.message for e in refused)
    assert set(Counter(e.code.name for e in failed if e.request_id is None)) <= {
        "UNAVAILABLE", "CANCELLED"}
    signalled = next(i for i, r in enumerate(records) if r["msg"] == "shutdown signal received")
    assert any(r.get("code") == "OK" for r in records[signalled:]), "nothing was in flight"
    stopped = {r.get("process"): r["drained"] for r in records if r["msg"] == "stopped"}
    assert stopped == {0: True, 1: True, None: True}  # each process, then the supervisor


# -- a process that dies -------------------------------------------------------------------------
def test_a_process_that_dies_drains_the_others_and_exits_1(store_root: Path) -> None:
    with supervisor(store_root, "--grace-seconds", "5") as served:
        victim = served.run.started["pids"][1]
        os.kill(victim, signal.SIGKILL)
        assert served.run.process.wait(timeout=120) == 1
    records = served.records()
    assert any(r["msg"] == f"process 1 (pid {victim}) was killed by SIGKILL; stopping the "
                          "others" for r in records)
    assert {r.get("process"): r["drained"] for r in records if r["msg"] == "stopped"} == {
        0: True, None: False}


def test_sigterm_while_the_processes_load_stops_them_all_with_exit_0(store_root: Path) -> None:
    command = [MCDROPOUT, "serve", "--model-root", str(store_root), "--host", "127.0.0.1",
               "--port", "0", "--metrics-port", "0", "--processes", str(PROCESSES)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    lines = []
    for line in process.stderr:  # until a process is up but not yet serving
        lines.append(line)
        if "TensorFlow threads bounded" in line:
            process.send_signal(signal.SIGTERM)
            break
    lines += process.stderr.readlines()
    assert process.wait(timeout=120) == 0
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert not any("listening on" in r["msg"] for r in records)
    assert [r["drained"] for r in records if r["msg"] == "stopped" and "process" not in r] == [
        True]

