"""Quieting TensorFlow's "frequent retracing" warning where the traces are by design."""

from __future__ import annotations

import logging


class _ExpectedRetracing(logging.Filter):
    def __init__(self, owner: str) -> None:
        super().__init__()
        self.owner = owner

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("triggered tf.function retracing" in text and self.owner in text)


def expect_retracing(owner: str) -> None:
    """Drop TensorFlow's retracing warnings about the functions of ``owner`` (a qualified name).

    TensorFlow counts traces per Python function across instances and calls and warns after five
    in a short window, which reads like a per-request retrace to a user.
    """
    logging.getLogger("tensorflow").addFilter(_ExpectedRetracing(owner))
