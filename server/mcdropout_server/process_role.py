"""Who a server process of ``--processes`` N is, and where the processes find each other.

Shared by the supervisor (:mod:`mcdropout_server.processes`, which imports no TensorFlow) and
the server processes (:mod:`mcdropout_server.child`, :mod:`mcdropout_server.siblings`). Each
process serves a private gRPC service on its unix socket in a folder only the server's user may
enter: ``Metrics`` (read by the supervisor) and ``TakeAnswer`` (asked by the other processes).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

SIBLINGS_SERVICE = "mcdropout.internal.v1.Siblings"
METRICS_METHOD = f"/{SIBLINGS_SERVICE}/Metrics"
TAKE_ANSWER_METHOD = f"/{SIBLINGS_SERVICE}/TakeAnswer"
# Channels to a private socket retry within a second: a sibling still starting (its socket not
# there yet) must not leave the channel in gRPC's default backoff, which grows to two minutes.
PRIVATE_CHANNEL_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 100),
                           ("grpc.min_reconnect_backoff_ms", 100),
                           ("grpc.max_reconnect_backoff_ms", 1000))


@dataclass(frozen=True)
class ProcessRole:
    """What a child process is told besides its settings.

    Attributes:
        index, count: This process is number ``index`` of ``count`` (0-based).
        run_dir: The private folder (mode 0700) holding every process's socket.
        ready_fd: The pipe on which the child reports, once serving, its models.
        supervisor: The supervisor's process id.
    """

    index: int
    count: int
    run_dir: Path
    ready_fd: int
    supervisor: int

    def socket(self, index: int) -> str:
        """The gRPC target of process ``index``'s private socket."""
        return socket_target(self.run_dir, index)

    @property
    def siblings(self) -> list[int]:
        """The other processes' indices."""
        return [i for i in range(self.count) if i != self.index]


def socket_target(run_dir: Path, index: int) -> str:
    """The gRPC target of process ``index``'s private socket in ``run_dir``."""
    return f"unix:{run_dir / f'process-{index}.sock'}"


def report_ready(role: ProcessRole, models: str) -> None:
    """Tell the supervisor (from the child) that this process serves, and its models."""
    os.write(role.ready_fd, json.dumps({"pid": os.getpid(), "models": models}).encode() + b"\n")
    os.close(role.ready_fd)
