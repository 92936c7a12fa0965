"""Clients that call Predict in a loop against a real server, for drain tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from mcdropout_client import Client
from mcdropout_client.errors import ClientError
from server_testkit import reg_inputs


@dataclass
class Hammer:
    """``clients`` threads, each with its own client, calling Predict on "reg" (64 rows,
    ``samples`` passes) until the block of :meth:`running` ends, without retries.

    Attributes:
        answered: Request ids (``c<client>-<call>``) of the calls that got an answer.
        failed: The errors of the others.
    """

    port: int
    clients: int
    options: Sequence[tuple[str, Any]] = ()  # channel options of every client
    samples: int = 200
    answered: list[str] = field(default_factory=list)
    failed: list[ClientError] = field(default_factory=list)

    @contextmanager
    def running(self) -> Iterator[Hammer]:
        """Call until the block ends; then every client finishes its call and stops."""
        done = threading.Event()
        with ThreadPoolExecutor(self.clients) as pool:
            running = [pool.submit(self._hammer, index, done) for index in range(self.clients)]
            try:
                yield self
            finally:
                done.set()
                for future in running:
                    future.result(timeout=60)

    def _hammer(self, index: int, done: threading.Event) -> None:
        with Client(f"127.0.0.1:{self.port}", retries=0, timeout=30,
                    options=self.options) as client:
            for i in range(100_000):
                if done.is_set():
                    return
                request_id = f"c{index}-{i}"
                try:
                    client.predict(reg_inputs(64, seed=i), model="reg", samples=self.samples,
                                   request_id=request_id)
                    self.answered.append(request_id)
                except ClientError as exc:
                    self.failed.append(exc)
                    time.sleep(0.01)
