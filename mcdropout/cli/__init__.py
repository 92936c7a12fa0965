"""The ``mcdropout`` command line: wiring only; the work lives in training, metrics, defaults.

The package keeps one concern a module: this one runs the command and plugs in sub-commands,
:mod:`~mcdropout.cli.parsers` declares the built-in sub-commands' arguments,
:mod:`~mcdropout.cli.commands` holds their handlers and :mod:`~mcdropout.cli.output` prints
predictions.

Sub-commands from other distributions plug in through the entry-point group
``mcdropout.commands``: each entry point is a ``register(subparsers)`` function that adds its
parser and sets ``func=callable(args) -> int`` as its default (the server adds ``serve``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from mcdropout.cli import parsers
from mcdropout.errors import MCDropoutError

ENTRY_POINT_GROUP = "mcdropout.commands"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failed, 2 bad usage)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (MCDropoutError, OSError) as exc:
        print(f"mcdropout {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The parser with the built-in sub-commands and those plugged in by entry points."""
    parser = argparse.ArgumentParser(
        prog="mcdropout",
        description="Monte Carlo dropout: train Keras models with dropout and predict with "
                    "uncertainty (mean, std, intervals, entropy, mutual information).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parsers.add_builtin_commands(sub)
    _add_plugins(sub)
    return parser


def _add_plugins(sub: Any) -> None:
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in sub.choices:
            continue
        try:
            ep.load()(sub)
        except Exception as exc:  # a broken plug-in must not take the built-in commands down
            reason = f"{type(exc).__name__}: {exc}"
            if ep.name not in sub.choices:
                p = sub.add_parser(ep.name, help=f"(unavailable: {reason})")
                p.set_defaults(func=lambda _args, r=reason, n=ep.name: _unavailable(n, r))


def _unavailable(name: str, reason: str) -> int:
    print(f"mcdropout {name} is not available here ({reason}); install its package, e.g. "
          "pip install 'mcdropout[server]'", file=sys.stderr)
    return 1


def _version() -> str:
    try:
        return metadata.version("mcdropout")
    except metadata.PackageNotFoundError:
        return "unknown"
