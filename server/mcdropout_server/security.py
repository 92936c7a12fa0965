"""Transport security: TLS credentials from files, and bearer-token authentication.

TLS (optionally mutual) is configured from PEM files named in the settings. Authentication: every
RPC except the health checks must carry ``authorization: Bearer <token>`` metadata with one of
the configured tokens, checked by :mod:`mcdropout_server.front` as grpc.aio looks up the call's
handler. A missing or malformed header is refused with UNAUTHENTICATED, a token that is not on
the list with PERMISSION_DENIED, in both cases before the request's body is read (see
:func:`refusing`). Tokens are compared as
SHA-256 digests with :func:`hmac.compare_digest` against every configured token, so the time taken
says nothing about how close a guess was; the token values themselves are not kept.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc

from mcdropout import MCDropoutError
from mcdropout_server.logs import fields
from mcdropout_server.settings import ServerSettings

log = logging.getLogger(__name__)

# Liveness and readiness stay open so that orchestrators can probe without a token; they tell a
# caller nothing beyond "the server is up".
OPEN_METHODS: frozenset[str] = frozenset({
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
})
AUTHORIZATION = "authorization"
_SCHEME = "bearer"


class SecurityConfigError(MCDropoutError):
    """A TLS or token setting names a file that cannot be used; the server does not start."""


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS credentials for the gRPC port, or None when TLS is off (no certificate configured).

    With ``tls_client_ca_file`` set, clients must present a certificate signed by one of its CAs.

    Raises:
        SecurityConfigError: a certificate or key file cannot be read or is not PEM.
    """
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    cert = _read_pem("MCDROPOUT_TLS_CERT_FILE", settings.tls_cert_file, b"CERTIFICATE")
    key = _read_pem("MCDROPOUT_TLS_KEY_FILE", settings.tls_key_file, b"PRIVATE KEY")
    client_ca = None
    if settings.tls_client_ca_file is not None:
        client_ca = _read_pem("MCDROPOUT_TLS_CLIENT_CA_FILE", settings.tls_client_ca_file,
                              b"CERTIFICATE")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def read_tokens(settings: ServerSettings) -> frozenset[str]:
    """The accepted bearer tokens: the lines of ``auth_tokens_file`` and the ``auth_tokens`` list.

    Returns:
        The tokens; empty when authentication is off (neither setting given).

    Raises:
        SecurityConfigError: the file cannot be read, a token contains whitespace or control
            characters, or authentication was asked for and no token was found. Messages name
            the file and line, never a token.
    """
    tokens: set[str] = set()
    for number, token in enumerate(settings.auth_tokens.split(","), start=1):
        if token.strip():
            tokens.add(_checked(token.strip(), f"MCDROPOUT_AUTH_TOKENS item {number}"))
    if settings.auth_tokens.strip() and not tokens:
        raise SecurityConfigError("MCDROPOUT_AUTH_TOKENS is set but lists no token (expected "
                                  "comma-separated tokens)")
    path = settings.auth_tokens_file
    if path is not None:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise SecurityConfigError(f"MCDROPOUT_AUTH_TOKENS_FILE {path} cannot be read: "
                                      f"{exc}") from None
        listed = {_checked(line.strip(), f"line {number} of {path}")
                  for number, line in enumerate(lines, start=1)
                  if line.strip() and not line.strip().startswith("#")}
        tokens |= listed
        if not listed:
            raise SecurityConfigError(f"MCDROPOUT_AUTH_TOKENS_FILE {path} holds no token (one per "
                                      "line); refusing to start with authentication unsatisfiable")
    return frozenset(tokens)


class TokenAuth:
    """The accepted bearer tokens, and the check of a call's metadata against them.

    Args:
        tokens: The accepted tokens (at least one).

    Raises:
        ValueError: no tokens.
    """

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests: tuple[bytes, ...] = ()
        self.set_tokens(tokens)

    def set_tokens(self, tokens: Iterable[str]) -> None:
        """Accept exactly ``tokens`` from now on (one reference swap; calls in flight unaffected).

        Raises:
            ValueError: no tokens.
        """
        digests = tuple(sorted({_digest(t) for t in tokens}))
        if not digests:
            raise ValueError("token authentication needs at least one token, got none")
        self._digests = digests

    def check(self, metadata: Sequence[tuple[str, str | bytes]] | None
              ) -> tuple[grpc.StatusCode, str] | None:
        """None when ``metadata`` carries an accepted token, else the refusal code and message."""
        values = [value for key, value in (metadata or ()) if key.lower() == AUTHORIZATION]
        if not values:
            return (grpc.StatusCode.UNAUTHENTICATED,
                    "this server needs a bearer token: send the metadata "
                    "'authorization: Bearer <token>'")
        value = values[0]
        scheme, _, token = (value if isinstance(value, str) else "").strip().partition(" ")
        token = token.strip()
        if len(values) > 1 or scheme.lower() != _SCHEME or not token:
            return (grpc.StatusCode.UNAUTHENTICATED,
                    f"the authorization metadata must be one 'Bearer <token>' value; got "
                    f"{len(values)} value(s), the first with scheme {scheme[:16]!r} and "
                    f"{'a' if token else 'no'} token")
        presented = _digest(token)
        accepted = False
        for digest in self._digests:  # no early exit: every token is compared every time
            accepted |= hmac.compare_digest(digest, presented)
        if not accepted:
            return grpc.StatusCode.PERMISSION_DENIED, "the bearer token is not accepted here"
        return None


def token_auth(settings: ServerSettings) -> TokenAuth | None:
    """The check of the configured tokens, or None when authentication is off.

    Raises:
        SecurityConfigError: see :func:`read_tokens`.
    """
    tokens = read_tokens(settings)
    return TokenAuth(tokens) if tokens else None


def refresh_tokens(auth: TokenAuth, settings: ServerSettings) -> None:
    """Re-read the tokens (on SIGHUP); on any problem keep the current ones and log why."""
    try:
        tokens = read_tokens(settings)
        auth.set_tokens(tokens)
    except (SecurityConfigError, ValueError) as exc:
        log.error("auth tokens not reloaded; the current ones stay", extra=fields(error=str(exc)))
        return
    log.info("auth tokens reloaded", extra=fields(tokens=len(tokens)))


def refusing(method: str, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler that aborts with ``code`` without reading, let alone parsing, the request.

    gRPC reads a unary request's whole message before a unary handler runs; a request-streaming
    handler runs first and reads only what it asks for. So the refusal is request-streaming with
    no deserializer, whatever the method's kind: it never asks for the body, and the client (of
    any kind) sees only the status. Unknown methods get the same answer, so it reveals nothing.
    """

    async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> None:
        log.warning("rpc refused", extra=fields(method=method, code=code.name,
                                                peer=context.peer(), error=message))
        await context.abort(code, message)

    return grpc.stream_unary_rpc_method_handler(refuse)


def _read_pem(setting: str, path: Path, label: bytes) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"{setting} {path} cannot be read: {exc}") from None
    if b"-----BEGIN " not in data or label not in data:
        raise SecurityConfigError(f"{setting} {path} is not a PEM file holding a {label.decode()}")
    return data


def _checked(token: str, where: str) -> str:
    # Header values cannot carry whitespace or control characters; such a token could never match.
    if any(c.isspace() or not c.isprintable() for c in token):
        raise SecurityConfigError(f"the token at {where} contains whitespace or control "
                                  "characters; tokens must be printable and contain no spaces")
    return token


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()
