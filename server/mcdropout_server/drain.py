"""Tracks the RPCs in flight and refuses new ones once the server starts draining."""

from __future__ import annotations

import asyncio

from mcdropout_server.errors import ShuttingDownError


class DrainGate:
    """Counts RPCs in flight; after :meth:`close` new RPCs are refused.

    Used from the server's event loop only (no locking needed).
    """

    def __init__(self) -> None:
        self._in_flight = 0
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def closed(self) -> bool:
        return self._closed

    def enter(self) -> None:
        """Admit one RPC.

        Raises:
            ShuttingDownError: the server is draining.
        """
        if self._closed:
            raise ShuttingDownError()
        self._in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        """Mark one admitted RPC as finished."""
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    def close(self) -> None:
        """Refuse every RPC from now on."""
        self._closed = True

    async def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the RPCs in flight to finish; True if they did."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
