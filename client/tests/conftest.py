"""Fixtures: fake mcdropout servers on free loopback ports (see client_fakes.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from client_fakes import FakeServer, start_fake_server


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    """A fake server for one test."""
    running = start_fake_server()
    yield running
    running.server.stop(grace=None)


@pytest.fixture
def fake_pair() -> Iterator[tuple[FakeServer, FakeServer]]:
    """Two independent fake servers (replicas) on two ports."""
    first, second = start_fake_server(), start_fake_server()
    yield first, second
    first.server.stop(grace=None)
    second.server.stop(grace=None)


@pytest.fixture
def free_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
