"""Models, limits and helpers shared by the server tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
from mcdropout_server.registry import Limits
from mcdropout_server.settings import ServerSettings

from mcdropout import ModelInfo, ModelStore
from mcdropout.engine import MCDropoutPredictor

REG_FEATURES = 3
CLS_FEATURES = 4
CLASSES = ("red", "green", "blue")
MAX_SAMPLES = 5000
LIMITS = Limits(max_rows=256, max_row_samples=1_000_000)
MAX_MESSAGE_BYTES = 2**20
MAX_RAW_SAMPLE_VALUES = 100_000
MCDROPOUT = str(Path(sys.executable).parent / "mcdropout")


def regression(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((REG_FEATURES,)),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(1),
    ], name="reg")


def classifier() -> keras.Model:
    keras.utils.set_random_seed(7)
    return keras.Sequential([
        keras.Input((CLS_FEATURES,)),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(len(CLASSES), activation="softmax"),
    ], name="cls")


REG_INFO = ModelInfo(
    name="reg", task="regression", input_shape=(REG_FEATURES,), labels=("y",),
    target_mean=(10.0,), target_std=(2.0,), tau=4.0, default_samples=50,
    max_samples=MAX_SAMPLES, description="test regression MLP")
CLS_INFO = ModelInfo(
    name="cls", task="classification", input_shape=(CLS_FEATURES,), labels=CLASSES,
    default_samples=40, max_samples=MAX_SAMPLES, description="test classifier")


def load_options() -> dict[str, Any]:
    """Predictor options the test registry uses (tests build the same predictor to compare)."""
    return {"memory_budget_bytes": 16 * 2**20, "max_samples": MAX_SAMPLES,
            "max_raw_sample_values": MAX_RAW_SAMPLE_VALUES}


def free_port() -> int:
    """A loopback port nobody listens on right now (metrics need one: port 0 turns them off)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings(**changes: object) -> ServerSettings:
    """Loopback, free ports, short grace; ``changes`` override."""
    base = ServerSettings(host="127.0.0.1", port=0, metrics_port=free_port(), workers=2,
                          max_concurrent_rpcs=64, grace_seconds=5.0,
                          max_message_bytes=MAX_MESSAGE_BYTES)
    return replace(base, **changes)  # type: ignore[arg-type]


@contextmanager
def serving_client(store_root: Path) -> Iterator[Any]:
    """A real server on a free loopback port over the store at ``store_root`` (loaded as the
    test registry loads), and a client of it; the server stops on exit."""
    from mcdropout_client import Client
    from mcdropout_server.app import ServerThread
    from mcdropout_server.registry import ModelRegistry

    registry = ModelRegistry.load(ModelStore(store_root), limits=LIMITS, **load_options())
    thread = ServerThread(settings(), registry)
    app = thread.start()
    try:
        with Client(f"127.0.0.1:{app.port}", timeout=30.0, retries=0) as client:
            yield client
    finally:
        thread.stop(grace=1.0)


def predictor(store_root: Path, name: str, version: int) -> MCDropoutPredictor:
    """An in-process predictor configured exactly as the test registry configures its models
    (with the version's calibration, when it has one)."""
    store = ModelStore(store_root)
    return MCDropoutPredictor.from_info(store.load_model(name, version),
                                        store.read_info(name, version),
                                        calibration=store.read_calibration(name, version),
                                        **load_options())


def padded(request: Any, padding: int) -> bytes:
    """``request`` serialised with an unknown field of ``padding`` bytes (parsed, then ignored)."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while n > 0x7F:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        return bytes(out + bytes([n]))

    # Field 1000, wire type 2 (length-delimited): the tag, the length, the bytes.
    return request.SerializeToString() + varint(1000 << 3 | 2) + varint(padding) + b"\0" * padding


def reg_inputs(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, REG_FEATURES)).astype(np.float32)


def cls_inputs(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, CLS_FEATURES)).astype(np.float32)


@dataclass
class ServeProcess:
    """A running ``mcdropout serve``: the process, its bound port, and its log lines so far."""

    process: subprocess.Popen[str]
    port: int
    lines: list[str]
    started: dict[str, Any]  # the JSON record of the "listening on" line


@contextmanager
def serve_process(store: Path, *flags: str) -> Iterator[ServeProcess]:
    """Run ``mcdropout serve`` on a free loopback port until the block ends.

    Log lines are collected in the background; once the block ends the process is killed if it
    still runs, and ``lines`` holds everything it wrote.
    """
    command = [MCDROPOUT, "serve", "--model-root", str(store), "--port", "0", "--host",
               "127.0.0.1", "--metrics-port", "0", *flags]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               text=True)
    lines: list[str] = []
    listening = threading.Event()

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "listening on" in line:
                listening.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        if not listening.wait(180):
            raise AssertionError("the server did not start:\n" + "".join(lines[-20:]))
        started = json.loads(next(line for line in lines if "listening on" in line))
        yield ServeProcess(process, started["port"], lines, started)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        reader.join(timeout=10)  # the pipe is closed: every line is in once the reader ends
