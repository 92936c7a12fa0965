"""Domain exceptions of the mcdropout library.

Every error a caller can cause is one of these; the server maps each class to one gRPC status
code in a single place, so messages must say what was received and what is allowed.
"""

from __future__ import annotations


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


class ModelLoadError(MCDropoutError):
    """A stored model is missing, corrupt, or would need unsafe deserialisation to load."""


class CancelledError(MCDropoutError):
    """The caller cancelled the prediction (or its deadline passed) before it finished."""
