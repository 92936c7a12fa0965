"""The floor of the throughput benchmark: a bare ``grpc.aio`` server that answers
``/mcdropout.v1.PredictionService/Predict`` with one canned reply.

Run by :mod:`bench.throughput` in a subprocess (from the repository root)::

    .venv/bin/python -m bench.floor_server --port PORT --reply REPLY_FILE

The handler parses the request (any server must) and returns the bytes of ``REPLY_FILE``, a
serialized ``PredictResponse`` taken from the real server, so the floor sends replies of the
real size. There are no interceptors, checks, queue, engine, metrics or logs: what it costs is
what grpcio and the loopback connection cost per call. It counts the calls it answered; the
benchmark reads the count with ``/bench.Floor/Answered`` (the reply is the decimal count), as it
reads ``mcdropout serve``'s request counters, because h2load sees only HTTP status 200.
It prints "serving" once bound and exits on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb

PREDICT = "/mcdropout.v1.PredictionService/Predict"
ANSWERED = "/bench.Floor/Answered"


class FloorHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Predict answered with ``reply`` (serialized bytes); Answered with the count so far."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.answered = 0
        self._predict = grpc.unary_unary_rpc_method_handler(
            self._answer, request_deserializer=pb.PredictRequest.FromString)
        self._count = grpc.unary_unary_rpc_method_handler(self._report)

    async def _answer(self, request: pb.PredictRequest, context: Any) -> bytes:
        self.answered += 1
        return self.reply

    async def _report(self, request: bytes, context: Any) -> bytes:
        return str(self.answered).encode()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method == PREDICT:
            return self._predict
        if details.method == ANSWERED:
            return self._count
        return None


async def serve(port: int, reply: bytes) -> None:
    """Serve on 127.0.0.1:``port`` until SIGTERM or SIGINT."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((FloorHandler(reply),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("serving", flush=True)
    await stop.wait()
    await server.stop(grace=1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="loopback port to bind")
    parser.add_argument("--reply", type=Path, required=True,
                        help="file holding the serialized PredictResponse to send")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.reply.read_bytes()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
