"""Domain exceptions of the mcdropout library.

Every error a caller can cause is one of these; the server maps each class to one gRPC status
code in a single place, so messages must say what was received and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Collection

MAX_QUOTED_CHARS = 200


def shorten(value: object, limit: int = MAX_QUOTED_CHARS, *, quote: bool = True) -> str:
    """How a message or log line shows a value a caller sent: bounded, whatever was sent.

    A string is quoted (its ``repr``) and, when longer than ``limit`` characters, cut to its
    first ``limit`` with an ellipsis and its length: ``'aaaa…' (20000 characters)``. A list,
    tuple or set shows its items so shortened, as many as fit in about ``limit`` characters,
    then how many there were. An integer of more than about ``limit`` digits is shown by its
    size (Python refuses to convert one of over 4,300 digits to text at all). Anything else is
    its ``repr``, cut the same way. Without ``quote`` a string is shown as it is (for a log field,
    which quotes it itself), cut the same way.
    """
    if isinstance(value, (list, tuple, set, frozenset)):
        return _shorten_items(value, limit)
    if isinstance(value, int) and value.bit_length() > 3 * limit:
        return f"an integer of about {int(value.bit_length() * math.log10(2))} digits"
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(text) if quote and isinstance(value, str) else text
    cut = text[:limit] + "\u2026"
    return f"{repr(cut) if quote and isinstance(value, str) else cut} ({len(text)} characters)"


def _shorten_items(items: Collection[object], limit: int) -> str:
    shown: list[str] = []
    size = 0
    for item in items:
        text = shorten(item, limit)
        if shown and size + len(text) > limit:
            return f"[{', '.join(shown)}, \u2026] ({len(items)} items)"
        shown.append(text)
        size += len(text) + 2
    return f"[{', '.join(shown)}]"


class MCDropoutError(Exception):
    """Base class of every error raised on purpose by mcdropout."""


class InvalidArgumentError(MCDropoutError, ValueError):
    """A request or argument is malformed: wrong dtype, shape, range, NaN/Inf, ..."""


class NotFoundError(MCDropoutError, LookupError):
    """A model or model version does not exist in the store."""


class ResourceLimitError(MCDropoutError):
    """A request is larger than a configured limit (rows, samples, rows x samples, bytes)."""


class NoStochasticLayersError(MCDropoutError, ValueError):
    """A model holds no layer of the dropout family, so MC dropout would return zero spread."""


class NotCalibratedError(MCDropoutError):
    """A calibrated answer was asked of a version without calibration or without an abstention policy."""


class ModelLoadError(MCDropoutError):
    """A stored model is missing, corrupt, or would need unsafe deserialisation to load."""


class CancelledError(MCDropoutError):
    """The caller cancelled the prediction (or its deadline passed) before it finished."""
