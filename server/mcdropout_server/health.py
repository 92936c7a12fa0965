"""The standard health service (``grpc.health.v1.Health``) with bounded Watch streams and a drain.

grpc_health's asyncio servicer is used as it is for the statuses and for Check; this subclass adds
what a production server needs around it:

- ``Watch`` streams are open by design (no deadline) and need no token, so they are bounded: at
  most ``max_watches`` at once, and ``max_watches_per_peer`` from one client address (IP, any
  port); beyond either, RESOURCE_EXHAUSTED naming the limit. They never count against the
  server's concurrent RPC limit (see :mod:`mcdropout_server.concurrency`).
- :meth:`HealthService.drain` turns every name NOT_SERVING and *ends* every Watch stream (grpc_health's
  own Watch never returns, so one idle stream used to hold a shutdown for its whole grace period).
  Each stream's last message is NOT_SERVING; Watch calls made after it get that one message too.
- With bearer tokens on, only the server-wide names (``""`` and the prediction service) are open;
  a per-model name answers only a caller with a token, so that an anonymous caller cannot list
  the models by probing names (SERVING versus NOT_FOUND).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# What the token check answers: None (accepted) or the refusal's code and message.
TokenCheck = Callable[[Sequence[tuple[str, str | bytes]] | None],
                      tuple[grpc.StatusCode, str] | None]


class HealthService(health_aio.HealthServicer):  # type: ignore[misc]
    """grpc_health's asyncio servicer with bounded Watch streams, a drain that ends them, and
    per-model names behind the token check.

    Args:
        max_watches: Most Watch streams open at once, all peers together (0: Watch refused).
        max_watches_per_peer: Most Watch streams open at once from one client address.
        check_token: The bearer-token check (``TokenAuth.check``), or None when
            authentication is off (every name is then open).
        open_names: Names anyone may ask about when tokens are on.
    """

    def __init__(self, max_watches: int, max_watches_per_peer: int,
                 check_token: TokenCheck | None = None, open_names: Iterable[str] = ("",)) -> None:
        super().__init__()
        self.max_watches = max_watches
        self.max_watches_per_peer = max_watches_per_peer
        self._check_token = check_token
        self._open_names = frozenset(open_names)
        self._watches: collections.Counter[str] = collections.Counter()
        self._draining = asyncio.Event()

    @property
    def watches(self) -> int:
        """Watch streams open now."""
        return sum(self._watches.values())

    async def drain(self) -> None:
        """Every name NOT_SERVING from now on; every Watch stream sends it and ends."""
        await self.enter_graceful_shutdown()
        self._draining.set()

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        await self._refuse_hidden(request.service, context)
        return await super().Check(request, context)

    async def Watch(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> None:
        await self._refuse_hidden(request.service, context)
        peer = peer_address(context.peer())
        if self.watches >= self.max_watches:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.watches} health Watch streams are open, the most this server keeps "
                f"(MCDROPOUT_MAX_HEALTH_WATCHES={self.max_watches}); use Check, or retry later")
        if self._watches[peer] >= self.max_watches_per_peer:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self._watches[peer]} health Watch streams are open from {peer}, the most one "
                f"client address may keep (MCDROPOUT_MAX_HEALTH_WATCHES_PER_PEER="
                f"{self.max_watches_per_peer}); close one or use Check")
        self._watches[peer] += 1
        try:
            await self._watch_until_drained(request, context)
        finally:
            self._watches[peer] -= 1
            if not self._watches[peer]:
                del self._watches[peer]

    async def _watch_until_drained(self, request: health_pb2.HealthCheckRequest,
                                   context: grpc.aio.ServicerContext) -> None:
        sent = _SentStatus(context)
        watching = asyncio.ensure_future(super().Watch(request, sent))
        drained = asyncio.ensure_future(self._draining.wait())
        try:
            await asyncio.wait((watching, drained), return_when=asyncio.FIRST_COMPLETED)
        finally:  # the client went away (this task is cancelled) or the drain began
            watching.cancel()
            drained.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
            await sent.settled()
        if sent.status != NOT_SERVING:
            await context.write(health_pb2.HealthCheckResponse(status=NOT_SERVING))

    async def _refuse_hidden(self, name: str, context: grpc.aio.ServicerContext) -> None:
        if self._check_token is None or name in self._open_names:
            return
        refusal = self._check_token(context.invocation_metadata())
        if refusal is not None:
            code, message = refusal
            await context.abort(code, f"the health of a model needs a bearer token on this "
                                      f"server (open names: {sorted(self._open_names)}); {message}")


class _SentStatus:
    """The servicer context as grpc_health's Watch sees it: records the status last written.

    Writes are shielded, so cancelling the Watch never cuts a message in half; :meth:`settled`
    waits for the one in progress before anyone else writes to the stream.
    """

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context
        self._writing: asyncio.Future[Any] | None = None
        self.status: int | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def write(self, message: health_pb2.HealthCheckResponse) -> None:
        self.status = message.status
        self._writing = asyncio.ensure_future(self._context.write(message))
        await asyncio.shield(self._writing)

    async def settled(self) -> None:
        if self._writing is not None:
            await asyncio.gather(self._writing, return_exceptions=True)


def peer_address(peer: str) -> str:
    """The client address of a gRPC peer string, without its port: ``ipv4:10.0.0.7:53122`` ->
    ``ipv4:10.0.0.7``, ``ipv6:[::1]:53122`` -> ``ipv6:[::1]``; other kinds (``unix:``) as given."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rpartition(":")[0]
    return peer
