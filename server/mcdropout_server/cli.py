"""The ``mcdropout serve`` sub-command, plugged into the ``mcdropout`` CLI by entry point.

Importing this module is cheap (no TensorFlow, no gRPC), so ``mcdropout --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from mcdropout_server.settings import ServerSettings, add_arguments

_DESCRIPTION = """\
Serve every model of a model store over gRPC (mcdropout.v1.PredictionService), with standard
health checking, server reflection and Prometheus metrics. SIGTERM or SIGINT drains the server
(health NOT_SERVING, new requests refused, in-flight ones finish within the grace period) and
exits 0.

With --processes N above 1, a supervisor runs N server processes on the one port (SO_REUSEPORT:
the kernel spreads connections among them), each loading every model and taking connections only
once loaded. They start and drain together; SIGHUP is forwarded to each; the metrics endpoint
sums their counters, histograms and counts (a per-process label on the rolling calibration and
drift gauges); a Feedback finds its answer whichever process kept it. A process that dies makes
the others drain and the server exit 1, for the orchestrator to restart it whole.

A version that fails to load (corrupt, an unknown custom class, metadata naming another model than
its folder) is logged with its reason and reported not ready while the others serve; with
--on-load-error exit the server exits 1 listing every such version instead, and with nothing
servable at all it exits 1 either way. Custom layers resolve once their module is imported with
--import-module (its code runs in the server: trusted modules only); Keras safe mode stays on.

Every flag can also be set by the environment variable named in its help; a flag wins over the
variable, the variable over the default."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``serve`` sub-command to the ``mcdropout`` CLI's sub-parsers."""
    parser = subparsers.add_parser(
        "serve", help="serve the models of a model store over gRPC",
        description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the server with settings from ``args`` and the environment; returns the exit code."""
    from mcdropout import MCDropoutError
    from mcdropout_server.logs import configure_logging

    try:
        settings = ServerSettings.from_args(args, os.environ)
    except ValueError as exc:
        print(f"mcdropout serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        if settings.processes > 1:  # a supervisor: its processes load TensorFlow, not it
            from mcdropout_server.processes import supervise

            return supervise(settings)
        from mcdropout_server.app import serve  # deferred: imports TensorFlow and gRPC

        return serve(settings)
    except (MCDropoutError, OSError, RuntimeError) as exc:
        logging.getLogger(__name__).error(f"cannot serve: {exc}")
        return 1


def main(argv: list[str] | None = None) -> int:
    """``python -m mcdropout_server [serve] ...``: the serve command without the core CLI."""
    parser = argparse.ArgumentParser(prog="mcdropout")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))

