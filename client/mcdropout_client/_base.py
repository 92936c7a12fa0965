"""Connection settings shared by :class:`Client` and :class:`AsyncClient` (one constructor)."""

from __future__ import annotations

from collections.abc import Sequence
from types import EllipsisType
from typing import Any

import grpc

from mcdropout_client._retry import RetryPolicy
from mcdropout_client._target import SERVICE_CONFIG, grpc_target

Metadata = Sequence[tuple[str, str | bytes]]
# A per-call ``timeout=...`` (the default) means "the client's timeout"; None means no deadline.
Timeout = float | None | EllipsisType


class ClientBase:
    """Settings common to the sync and asyncio clients; subclasses open the channel."""

    def __init__(
        self,
        target: str | Sequence[str],
        *,
        timeout: float | None = 30.0,
        retries: int = 3,
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        metadata: Metadata = (),
        token: str | None = None,
        max_message_bytes: int = 64 * 2**20,
        initial_backoff: float = 0.1,
        max_backoff: float = 5.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """Configure a client; the connection is made lazily on the first call.

        Args:
            target: ``"host:port"``; a gRPC URI such as ``"dns:///name:port"``; or several
                ``"ip:port"`` addresses (a list or a comma-separated string). Calls are spread
                over every address with gRPC's ``round_robin`` policy.
            timeout: default deadline of each call in seconds, retries included; ``None`` for
                no deadline. Each method takes ``timeout=`` to override it.
            retries: how many times a call that never ran on a server is retried, with
                exponential backoff and full jitter: UNAVAILABLE, and CANCELLED without a
                request id (a call cut as a draining server closed). No other status is retried.
            tls: use TLS even when no certificate is given (the system roots verify the server).
            root_certificates: PEM roots that verify the server; implies TLS.
            private_key: PEM client key for mutual TLS (with ``certificate_chain``).
            certificate_chain: PEM client certificate chain for mutual TLS.
            metadata: ``(key, value)`` pairs sent with every call.
            token: bearer token, sent as ``authorization: Bearer <token>`` with every call.
            max_message_bytes: largest message sent or received, bytes.
            initial_backoff: ceiling of the first retry wait, seconds.
            max_backoff: largest ceiling of a retry wait, seconds.
            options: extra gRPC channel options, e.g. ``("grpc.ssl_target_name_override", h)``.

        Raises:
            ValueError: a bad target, timeout, retry setting, message size or key pair.
        """
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds or None, got {timeout}")
        if max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be > 0, got {max_message_bytes}")
        if (private_key is None) != (certificate_chain is None):
            raise ValueError("mutual TLS needs both private_key and certificate_chain, got one")
        self.target = grpc_target(target)
        self.timeout = timeout
        self.retry_policy = RetryPolicy(retries, initial_backoff, max_backoff)
        pairs = [*metadata, *([("authorization", f"Bearer {token}")] if token else [])]
        self._metadata = _normalize(pairs)
        self._options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.service_config", SERVICE_CONFIG),
            *options,
        ]
        self._credentials: grpc.ChannelCredentials | None = None
        if tls or root_certificates or private_key:
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates, private_key, certificate_chain
            )
        self._open()

    def _open(self) -> None:
        """Create the channel and stubs (sync or asyncio)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r})"

    def _call_timeout(self, timeout: Timeout) -> float | None:
        if timeout is ...:
            return self.timeout
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds or None, got {timeout}")
        return timeout

    def _call_metadata(self, metadata: Metadata) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata + _normalize(metadata) if metadata else self._metadata


def _normalize(metadata: Metadata) -> tuple[tuple[str, str | bytes], ...]:
    # gRPC rejects upper-case keys with an unhelpful error; HTTP/2 header names are
    # case-insensitive, so lower-casing changes nothing on the wire.
    return tuple((key.lower(), value) for key, value in metadata)
