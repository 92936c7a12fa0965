"""``mcdropout-client``: call a running mcdropout server from the shell.

Exit codes: 0 success, 1 the server answered with an error (or is not SERVING for ``health``),
2 bad usage or bad input (argparse errors, unreadable files, values rejected before sending).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

from mcdropout_client import _io, _table
from mcdropout_client.client import Client
from mcdropout_client.errors import ClientError
from mcdropout_client.feedback import integral_as_labels
from mcdropout_client.outputs import OUTPUT_NAMES
from mcdropout_client.ranking import ACQUISITION_NAMES
from mcdropout_client.results import CLASSIFICATION

EXIT_SERVER_ERROR = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mcdropout-client`` with its sub-commands."""
    common = argparse.ArgumentParser(add_help=False)
    conn = common.add_argument_group("connection")
    conn.add_argument("--target", default="localhost:50051",
                      help="HOST:PORT, comma-separated IP:PORT list, or dns:///NAME:PORT "
                           "(default: %(default)s)")
    conn.add_argument("--timeout", type=float, default=30.0,
                      help="deadline of the call in seconds, retries included (default: 30)")
    conn.add_argument("--retries", type=int, default=3,
                      help="retries of a call that fails with UNAVAILABLE (default: 3)")
    conn.add_argument("--tls", action="store_true",
                      help="use TLS, verifying the server with the system root certificates")
    conn.add_argument("--ca-cert", type=Path, help="PEM root certificates (implies --tls)")
    conn.add_argument("--client-cert", type=Path, help="PEM client certificate for mutual TLS")
    conn.add_argument("--client-key", type=Path, help="PEM client key for mutual TLS")
    conn.add_argument("--token", help="bearer token sent as 'authorization: Bearer TOKEN'")
    conn.add_argument("--header", action="append", default=[], metavar="KEY=VALUE",
                      help="extra gRPC metadata; repeatable")

    parser = argparse.ArgumentParser(
        prog="mcdropout-client", description="Call a mcdropout server: Monte Carlo dropout "
        "predictions with their uncertainty.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser("predict", parents=[common], help="predict with uncertainty")
    predict.add_argument("--model", required=True, help="model name")
    predict.add_argument("--version", type=int, help="model version (default: latest)")
    predict.add_argument("--input", required=True, action="append", metavar="[NAME=]FILE",
                         help="input rows: .npy array or numeric .csv (header row optional); "
                              "for a model with several inputs, NAME=FILE once per input "
                              "(`metadata` lists them)")
    predict.add_argument("--samples", type=int, help="stochastic passes T (default: the model's)")
    predict.add_argument("--seed", type=int, help="seed of the dropout masks (reproducible)")
    predict.add_argument("--tolerance", type=float,
                         help="stop early once every mean's standard error is <= this")
    predict.add_argument("--interval", type=float, nargs="+", action="extend", default=[],
                         metavar="LEVEL", help="central interval levels in (0, 1), e.g. 0.95")
    predict.add_argument("--calibrated", action="store_true",
                         help="use the version's calibration (conformal intervals, temperature-"
                              "scaled classifier passes); `metadata` shows what a version has")
    predict.add_argument("--set-level", type=float, action="append", default=[],
                         metavar="LEVEL", help="classification: conformal prediction set level, "
                                               "e.g. 0.9 (implies --calibrated); repeatable")
    predict.add_argument("--outputs", nargs="+", action="extend", choices=OUTPUT_NAMES,
                         metavar="NAME", help=f"statistics to return: {', '.join(OUTPUT_NAMES)}")
    predict.add_argument("--output", type=Path,
                         help="also write the result to this .json or .csv file")
    predict.set_defaults(func=_predict)

    feedback = commands.add_parser(
        "feedback", parents=[common], help="send the observed targets of an answered predict")
    feedback.add_argument("--model", required=True, help="model name of the answer")
    feedback.add_argument("--request-id", required=True,
                          help="the answer's request id (printed by predict, in its JSON output)")
    feedback.add_argument("--targets", required=True, action="append", metavar="[HEAD=]FILE",
                          help="observed targets: .npy or .csv (as --input of predict); "
                               "regression values, or integer class indices; for a model with "
                               "several heads, HEAD=FILE once per head fed back")
    feedback.add_argument("--rows", type=int, nargs="+", metavar="ROW",
                          help="the answer's rows the targets are for, 0-based (default: all, "
                               "in order)")
    feedback.set_defaults(func=_feedback)

    rank = commands.add_parser(
        "rank", parents=[common], help="rank a pool of unlabelled rows for labelling",
        description="Stream a pool of rows to the server in chunks and print the --top rows "
                    "by an acquisition function, best first (docs/acquisition.md). A .npy pool "
                    "is memory-mapped: it may be larger than memory.")
    rank.add_argument("--model", required=True, help="model name")
    rank.add_argument("--version", type=int, help="model version (default: latest)")
    rank.add_argument("--input", required=True, action="append", metavar="[NAME=]FILE",
                      help="the pool: .npy array (memory-mapped) or numeric .csv; for a model "
                           "with several inputs, NAME=FILE once per input")
    rank.add_argument("--top", type=int, required=True, metavar="K", help="rows to return")
    rank.add_argument("--acquisition", choices=ACQUISITION_NAMES, default="bald",
                      help="bald, predictive_entropy, variation_ratio (classification) or "
                           "predictive_std (regression) (default: %(default)s)")
    rank.add_argument("--chunk-rows", type=int, default=1024, metavar="N",
                      help="rows per message (default: %(default)s)")
    rank.add_argument("--samples", type=int, help="stochastic passes T (default: the model's)")
    rank.add_argument("--seed", type=int, help="seed of the first chunk (reproducible)")
    rank.add_argument("--head", help="the head to score (models with several heads)")
    rank.add_argument("--calibrated", action="store_true",
                      help="score with the version's calibration")
    rank.set_defaults(func=_rank, timeout=None)

    models = commands.add_parser("models", parents=[common], help="list the served models")
    models.set_defaults(func=_models)

    metadata = commands.add_parser("metadata", parents=[common], help="describe a model")
    metadata.add_argument("--model", required=True, help="model name")
    metadata.add_argument("--version", type=int, help="model version (default: latest)")
    metadata.set_defaults(func=_metadata)

    health = commands.add_parser("health", parents=[common], help="check the server's health")
    health.add_argument("--service", default="",
                        help="service or model name (default: the whole server)")
    health.set_defaults(func=_health)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mcdropout-client`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "output", None) is not None:
            _check_output(args.output)
        with _connect(args) as client:
            return int(args.func(client, args))
    except ClientError as error:
        request = f" (request id {error.request_id})" if error.request_id else ""
        print(f"error: {error.code.name}: {error.message}{request}", file=sys.stderr)
        return EXIT_SERVER_ERROR
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE


def _connect(args: argparse.Namespace) -> Client:
    metadata = []
    for header in args.header:
        key, sep, value = header.partition("=")
        if not sep or not key:
            raise ValueError(f"--header must be KEY=VALUE, got {header!r}")
        metadata.append((key, value))
    return Client(
        args.target, timeout=args.timeout, retries=args.retries, tls=args.tls,
        root_certificates=_read(args.ca_cert), private_key=_read(args.client_key),
        certificate_chain=_read(args.client_cert), metadata=metadata, token=args.token,
    )


def _predict(client: Client, args: argparse.Namespace) -> int:
    x = _io.load_inputs(args.input)
    result = client.predict(
        x, model=args.model, version=args.version, samples=args.samples, seed=args.seed,
        tolerance=args.tolerance, interval_levels=args.interval, outputs=args.outputs,
        calibrated=args.calibrated, set_levels=args.set_level,
    )
    labels: tuple[str, ...] = ()
    head_labels: dict[str, tuple[str, ...]] = {}
    # Labels only decorate the table: a failure here must not hide the prediction.
    with contextlib.suppress(ClientError):
        meta = client.metadata(result.model, result.version)
        labels, head_labels = meta.labels, {head.name: head.labels for head in meta.heads}
    print(_table.prediction(result, head_labels if result.heads else labels))
    if args.output is not None:
        # Files carry class labels only: a regression head's labels name its columns instead.
        tasks = {name: head.task for name, head in result.heads.items()}
        class_labels = {name: head_labels.get(name, ()) for name, task in tasks.items()
                        if task == CLASSIFICATION}
        _io.write_output(args.output, result, class_labels if result.heads else
                         labels if result.task == CLASSIFICATION else ())
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _feedback(client: Client, args: argparse.Namespace) -> int:
    targets = _io.load_inputs(args.targets)
    result = client.feedback(args.model, args.request_id, integral_as_labels(targets),
                             rows=args.rows)
    print(f"matched {result.rows_matched} rows of {args.model} v{result.version} "
          f"(request id {args.request_id})")
    return 0


def _rank(client: Client, args: argparse.Namespace) -> int:
    pool = _io.load_inputs(args.input, mmap=True)
    ranked = client.rank_pool(
        pool, model=args.model, top_k=args.top, acquisition=args.acquisition,
        chunk_rows=args.chunk_rows, samples=args.samples, seed=args.seed, head=args.head,
        calibrated=args.calibrated, version=args.version, timeout=args.timeout)
    print("rank\tindex\tscore")
    for rank, (index, score) in enumerate(zip(ranked.indices, ranked.scores, strict=True), 1):
        print(f"{rank}\t{index}\t{score:.6g}")
    print(f"scored {ranked.rows_scored} rows with {args.model} version {ranked.model_version} "
          f"({args.acquisition}), seed {ranked.seed}", file=sys.stderr)
    return 0


def _models(client: Client, args: argparse.Namespace) -> int:
    print(_table.models(client.models()))
    return 0


def _metadata(client: Client, args: argparse.Namespace) -> int:
    print(_table.description(client.metadata(args.model, args.version)))
    return 0


def _health(client: Client, args: argparse.Namespace) -> int:
    status = client.health(args.service)
    print(status)
    return 0 if status == "SERVING" else EXIT_SERVER_ERROR


def _check_output(path: Path) -> None:
    # Checked before the call so a typo does not cost a full prediction.
    if path.suffix.lower() not in _io.OUTPUT_SUFFIXES:
        raise ValueError(
            f"--output must end in {' or '.join(_io.OUTPUT_SUFFIXES)}, got {str(path)!r}"
        )


def _read(path: Path | None) -> bytes | None:
    return None if path is None else path.read_bytes()


if __name__ == "__main__":
    sys.exit(main())
