"""Logging for the server, configured in one place: JSON lines or key=value lines on stderr.

Modules log through ``logging.getLogger(__name__)`` and pass structured fields as
``extra={"fields": {...}}`` (see :func:`fields`); the formatter puts them on the same line.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

_FIELDS = "fields"
OWN_LOGGERS = ("mcdropout", "mcdropout_server")
# grpcio's aio server logs a request body that its deserializer cannot parse as an ERROR with a
# traceback, under this logger, before any handler of ours runs.
GRPC_SERVER_LOGGER = "grpc._cython.cygrpc"
_GRPC_PARSE_FAILURE = "Unexpected [DecodeError]"


def fields(**values: Any) -> dict[str, dict[str, Any]]:
    """The ``extra=`` argument carrying structured fields: ``extra=fields(rows=3)``."""
    return {_FIELDS: values}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the structured fields, exc if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, _FIELDS, {}))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=... logger=... msg="..." key=value ...`` lines (logfmt)."""

    def format(self, record: logging.LogRecord) -> str:
        pairs: dict[str, Any] = {"ts": _timestamp(record), "level": record.levelname,
                                 "logger": record.name, "msg": record.getMessage()}
        pairs.update(getattr(record, _FIELDS, {}))
        text = " ".join(f"{key}={_quote(value)}" for key, value in pairs.items())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class RateLimiter:
    """Lets one event per key through every ``interval`` seconds and counts those it holds back.

    For log lines that a client can cause at will (bodies that do not parse, for one): one line
    per client per interval still says what happened, without letting one client fill the disk.
    Thread-safe. At most ``max_keys`` keys are remembered; beyond that the stale ones are dropped.

    Args:
        interval: Seconds between two events let through for the same key.
        max_keys: Keys remembered at once.
        clock: Monotonic seconds (a stand-in in tests).
    """

    def __init__(self, interval: float, *, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._max_keys = max_keys
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}  # key -> (last let through, held since)
        self._lock = threading.Lock()

    def allow(self, key: str) -> int | None:
        """None to hold this event back; else how many ``key`` had held back since the last."""
        with self._lock:
            now = self._clock()
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.interval:
                self._seen[key] = (seen[0], seen[1] + 1)
                return None
            if seen is None and len(self._seen) >= self._max_keys:
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.interval}
                if len(self._seen) >= self._max_keys:  # all recent: forget them, never grow
                    self._seen.clear()
            self._seen[key] = (now, 0)
            return 0 if seen is None else seen[1]


class GrpcParseFailureFilter(logging.Filter):
    """grpcio's "Unexpected [DecodeError] raised by servicer method [m]" ERROR: one line per
    method per interval, without its traceback, with ``held_back`` saying how many were dropped.

    Our intake parses unary requests itself (see :mod:`mcdropout_server.intake`); this covers
    those grpcio still parses (request-streaming methods such as reflection).
    """

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self._limiter = RateLimiter(interval)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(_GRPC_PARSE_FAILURE):
            return True
        held = self._limiter.allow(message)
        if held is None:
            return False
        record.exc_info, record.exc_text = None, None
        setattr(record, _FIELDS, {**getattr(record, _FIELDS, {}), "held_back": held})
        return True


def configure_logging(level: str = "INFO", fmt: str = "json",
                      stream: IO[str] | None = None) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr) in format ``fmt``.

    Args:
        level: "DEBUG", "INFO", "WARNING" or "ERROR" for mcdropout's own loggers; other
            libraries log at INFO or above.
        fmt: "json" (one JSON object per line) or "keyvalue" (logfmt).
        stream: Where lines go; stderr by default.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # DEBUG is for our own per-request lines; other libraries (TensorFlow, h5py, asyncio, ...)
    # stay at INFO or above so that their debug chatter does not drown them.
    root.setLevel(max(logging.getLevelName(level), logging.INFO))
    for ours in OWN_LOGGERS:
        logging.getLogger(ours).setLevel(level)
    # matplotlib: Keras imports it when installed (the dev and report installs, not the image).
    for noisy in ("tensorflow", "absl", "grpc", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    grpc_server = logging.getLogger(GRPC_SERVER_LOGGER)
    if not any(isinstance(f, GrpcParseFailureFilter) for f in grpc_server.filters):
        grpc_server.addFilter(GrpcParseFailureFilter())


def _timestamp(record: logging.LogRecord) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{stamp}.{int(record.msecs):03d}Z"


def _quote(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return json.dumps(text)
    return text
