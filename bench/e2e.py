"""End-to-end latency through gRPC against the in-process engine, on workload (a)'s MLP.

Run from the repository root (about a minute and a half)::

    .venv/bin/python -m bench.e2e [--update-readme] [--requests 400]

The script saves workload (a)'s MLP (64-512-512-10) to a temporary model store, starts a real
server on a free loopback port in a subprocess (``mcdropout serve``, as deployed), and sends it
sequential Predict calls with :class:`mcdropout_client.Client` at T=100 for batch 1 and batch 32.
The same stored model, loaded here into an :class:`MCDropoutPredictor` the way the server loads
it, answers the same inputs and seeds in-process. The two are timed in alternating rounds so that
other load on a shared machine falls on both alike. gRPC overhead is the difference of the
medians, relative to the in-process median.

A third path shows the floor under that overhead on this machine: a bare ``grpc.aio`` server
(also a subprocess) whose Predict only decodes the inputs, runs the same engine on a worker thread
and encodes the same five outputs, with none of the service's checks, queue, metrics or logs.
What it costs over the in-process engine is what grpcio, the loopback connection and one hop to a
worker thread and back cost before any serving code of ours runs.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from mcdropout_client import Client

from bench import common
from bench.workloads import mlp_a
from mcdropout import ModelInfo, ModelStore
from mcdropout.engine import MCDropoutPredictor

MODEL = "mlp_a"
SAMPLES = 100
BATCHES = (1, 32)
ROUNDS = 20  # alternating in-process / client rounds; requests are split evenly among them
WARMUP = 20


def make_store(root: Path) -> ModelStore:
    """A model store holding workload (a)'s MLP as ``mlp_a`` version 1."""
    store = ModelStore(root)
    info = ModelInfo(name=MODEL, task="classification", input_shape=(64,),
                     labels=tuple(str(i) for i in range(10)), default_samples=SAMPLES,
                     description="bench workload (a): MLP 64-512-512-10, random weights")
    store.save(mlp_a(), info)
    return store


def _serve_command() -> list[str]:
    script = Path(sys.executable).parent / "mcdropout"
    found = str(script) if script.exists() else shutil.which("mcdropout")
    if found is None:
        raise RuntimeError("the `mcdropout` console script is not installed next to "
                           f"{sys.executable} nor on PATH; install the project first")
    return [found, "serve"]


@contextmanager
def running_server(root: Path, timeout: float = 180.0) -> Iterator[str]:
    """Start ``mcdropout serve`` on a free loopback port; yield its target until the block ends.

    Raises:
        RuntimeError: the server exited or did not report SERVING within ``timeout`` seconds.
    """
    port = common.free_port()
    command = [*_serve_command(), "--model-root", str(root), "--host", "127.0.0.1",
               "--port", str(port), "--metrics-port", "0", "--log-level", "WARNING"]
    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        target = f"127.0.0.1:{port}"
        try:
            _wait_serving(server, target, timeout, log)
            yield target
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def bare_server(port: int, root: Path) -> int:
    """The floor: a ``grpc.aio`` server that runs the engine on a worker thread and nothing else."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from mcdropout_client import tensors
    from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb
    from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2_grpc as pb_grpc

    store = ModelStore(root)
    stored = store.read_info(MODEL)
    engine = MCDropoutPredictor.from_info(store.load_model(MODEL, stored.version), stored)
    engine.warmup()
    pool = ThreadPoolExecutor(2)

    def run(request: Any) -> Any:
        p = engine.predict(tensors.from_proto(request.inputs), request.samples, request.seed)
        return pb.PredictResponse(
            model_name=MODEL, model_version=stored.version, samples_used=p.samples, seed=p.seed,
            mean=tensors.to_proto(p.mean), std=tensors.to_proto(p.std),
            predicted_class=tensors.to_proto(p.predicted_class),
            predictive_entropy=tensors.to_proto(p.predictive_entropy),
            mutual_information=tensors.to_proto(p.mutual_information))

    class Bare(pb_grpc.PredictionServiceServicer):
        async def Predict(self, request: Any, context: Any) -> Any:
            return await asyncio.get_running_loop().run_in_executor(pool, run, request)

    async def serve() -> None:
        server = grpc.aio.server()
        pb_grpc.add_PredictionServiceServicer_to_server(Bare(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("serving", flush=True)
        await server.wait_for_termination()

    asyncio.run(serve())
    return 0


def _wait_serving(server: subprocess.Popen[bytes], target: str, timeout: float, log: Any) -> None:
    deadline = time.monotonic() + timeout
    with Client(target, timeout=2.0, retries=0) as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"the server exited with code {server.returncode}:\n{log.read()}")
            try:
                if client.health() == "SERVING":
                    return
            except Exception:  # not listening yet: any failure here means "try again"
                pass
            time.sleep(0.5)
    raise RuntimeError(f"the server at {target} did not report SERVING within {timeout:.0f} s")


SERVED = "gRPC client, mcdropout serve"
BARE = "gRPC client, bare grpc.aio server (floor)"


def _calls(engine: MCDropoutPredictor, client: Client, bare: Client, x: np.ndarray
           ) -> dict[str, Callable[[], Any]]:
    seeds = itertools.count()  # a fresh seed per request, as real traffic would send

    def in_process() -> Any:
        return engine.predict(x, samples=SAMPLES, seed=next(seeds))

    def through_grpc() -> Any:
        return client.predict(x, model=MODEL, samples=SAMPLES, seed=next(seeds))

    def through_bare() -> Any:
        return bare.predict(x, model=MODEL, samples=SAMPLES, seed=next(seeds))

    return {"in-process engine": in_process, SERVED: through_grpc, BARE: through_bare}


def compare(engine: MCDropoutPredictor, client: Client, bare: Client, x: np.ndarray,
            requests: int) -> dict[str, common.Timing]:
    """Warm every path up, then time them in alternating rounds."""
    calls = _calls(engine, client, bare, x)
    for fn in calls.values():
        for _ in range(WARMUP):
            fn()
    per_round = max(1, requests // ROUNDS)
    return common.interleave(calls, rounds=ROUNDS, per_round=dict.fromkeys(calls, per_round))


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=400,
                        help="timed requests per method and batch size (default 400)")


def measure(args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """Time every path at each batch size; the block's parts and the raw figures."""
    rows: list[list[str]] = []
    raw: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mcdropout-bench-") as tmp:
        store = make_store(Path(tmp))
        stored = store.read_info(MODEL)
        engine = MCDropoutPredictor.from_info(store.load_model(MODEL, stored.version), stored)
        engine.warmup()
        with running_server(Path(tmp)) as target, \
                common.module_server("bench.e2e", "--bare-server", Path(tmp)) as bare_target, \
                Client(target, timeout=60.0, retries=0) as client, \
                Client(bare_target, timeout=60.0, retries=0) as bare:
            for batch in BATCHES:
                x = np.random.default_rng(batch).standard_normal((batch, 64)).astype(np.float32)
                same = np.array_equal(engine.predict(x, samples=SAMPLES, seed=7).mean,
                                      client.predict(x, model=MODEL, samples=SAMPLES, seed=7).mean)
                timings = compare(engine, client, bare, x, args.requests)
                base = timings["in-process engine"].median
                for name, t in timings.items():
                    overhead = (t.median - base) / base
                    rows.append([f"batch {batch}", name, common.fmt(t.median * 1e3, 2),
                                 common.fmt(t.percentile(99) * 1e3, 2),
                                 common.fmt(1 / float(np.mean(t.runs)), 0),
                                 common.fmt(batch * SAMPLES / float(np.mean(t.runs)), 0),
                                 "-" if name.startswith("in-process") else f"{100 * overhead:+.0f}%"])
                    raw[f"batch{batch}/{name}"] = {
                        "runs_s": list(t.runs), "p50_s": t.median, "p99_s": t.percentile(99),
                        "overhead_vs_in_process": overhead}
                raw[f"batch{batch}/identical_means"] = same
    table = common.markdown_table(
        ["request", "path", "p50 ms", "p99 ms", "requests / s", "row-passes / s",
         "overhead (p50)"], rows)
    b32 = raw[f"batch32/{SERVED}"]["overhead_vs_in_process"]
    floor = raw[f"batch32/{BARE}"]["overhead_vs_in_process"]
    ours = (raw[f"batch32/{SERVED}"]["p50_s"] - raw[f"batch32/{BARE}"]["p50_s"]) * 1e3
    same_all = all(raw[f"batch{b}/identical_means"] for b in BATCHES)
    notes = [f"- gRPC overhead at batch 32 <= 15% of the in-process time: {100 * b32:+.1f}% - "
             f"{'met' if b32 <= 0.15 else 'MISSED'}",
             f"- the floor on this machine (bare grpc.aio server, same engine, one worker hop): "
             f"{100 * floor:+.1f}%; mcdropout serve adds {ours:+.2f} ms (p50) over it",
             f"- client and in-process means identical for the same seed: {'yes' if same_all else 'NO'}"]
    return [table, "\n".join(notes)], {"samples": SAMPLES, "requests": args.requests, **raw}


def main(argv: list[str] | None = None) -> int:
    return common.script_main(argv, name="e2e", doc=__doc__, add_options=_options,
                              server_flag="--bare-server", serve=bare_server, measure=measure)


if __name__ == "__main__":
    sys.exit(main())
