"""One server process of ``mcdropout serve --processes N``, started by the supervisor
(:mod:`mcdropout_server.processes`), never by hand: ``python -m mcdropout_server.child`` reads
its settings and :class:`~mcdropout_server.processes.ProcessRole` from stdin.

Before anything loads, the process asks the kernel for SIGTERM when the supervisor dies, tags
every log line with ``process`` (its index), and bounds TensorFlow's thread pools so that N
processes do not oversubscribe the cores: intra-op and inter-op threads each
``max(1, cores // N)``, the cores being those this process may run on.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import signal
import sys

from mcdropout_server.logs import configure_logging, fields
from mcdropout_server.process_role import ProcessRole
from mcdropout_server.settings import ServerSettings

log = logging.getLogger("mcdropout_server.child")  # __name__ is "__main__" when run with -m
_PR_SET_PDEATHSIG = 1


def main() -> int:
    """Serve as one process of several until SIGTERM; the exit code."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # its default ends the process; reloads later
    settings, role = pickle.load(sys.stdin.buffer)
    assert isinstance(settings, ServerSettings) and isinstance(role, ProcessRole)
    _die_with(role.supervisor)
    configure_logging(settings.log_level, settings.log_format)
    _tag_log_lines(role.index)
    _limit_threads(role.count)
    from mcdropout import MCDropoutError
    from mcdropout_server.app import serve  # deferred: imports TensorFlow and gRPC

    try:
        return serve(settings, role)
    except (MCDropoutError, OSError, RuntimeError) as exc:
        log.error(f"cannot serve: {exc}")
        return 1


def _die_with(supervisor: int) -> None:
    """SIGTERM this process when the supervisor dies (Linux), so that no orphan keeps serving
    on the port; a supervisor already gone means exiting now."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor's own drain still stops it
        pass
    if os.getppid() != supervisor:
        sys.exit(1)


def _tag_log_lines(index: int) -> None:
    [(key, tag)] = fields(process=index).items()

    def tag_record(record: logging.LogRecord) -> bool:
        setattr(record, key, {**tag, **getattr(record, key, {})})
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(tag_record)


def _limit_threads(processes: int) -> None:
    threads = max(1, len(os.sched_getaffinity(0)) // processes)
    import tensorflow as tf  # before any model loads: the pools are sized once

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    log.info("TensorFlow threads bounded", extra=fields(intra_op=threads, inter_op=threads))


if __name__ == "__main__":
    sys.exit(main())
