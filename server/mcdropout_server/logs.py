"""Logging for the server, configured in one place: JSON lines or key=value lines on stderr.

Modules log through ``logging.getLogger(__name__)`` and pass structured fields as
``extra={"fields": {...}}`` (see :func:`fields`); the formatter puts them on the same line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any

_FIELDS = "fields"
OWN_LOGGERS = ("mcdropout", "mcdropout_server")


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
    for noisy in ("tensorflow", "absl", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _timestamp(record: logging.LogRecord) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{stamp}.{int(record.msecs):03d}Z"


def _quote(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return json.dumps(text)
    return text
