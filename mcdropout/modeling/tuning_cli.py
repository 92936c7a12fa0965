"""``mcdropout tune``: the command line of :mod:`mcdropout.modeling.tuning` (an entry point of
the ``mcdropout.commands`` group): its arguments, and the run that trains the grid, saves the best
model and prints and writes the grid."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mcdropout.evaluation import plotting
from mcdropout.modeling import search_cli, tables, training
from mcdropout.modeling.builders import CONCRETE_INITIAL_RATE
from mcdropout.modeling.tuning import (
    DEFAULT_DROPOUT_RATES,
    GridPoint,
    format_rates,
    format_table,
    grid_search,
    write_outputs,
)
from mcdropout.store import ModelStore


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``mcdropout tune`` (entry point of the ``mcdropout.commands`` group)."""
    p = subparsers.add_parser(
        "tune", help="grid-search dropout rate and tau (or weight decay) on your data; save the "
                     "best model",
        description="Train the MC dropout MLP (the `mcdropout train` recipe) for every dropout "
                    "rate crossed with every tau (regression) or weight decay, on one seeded "
                    "train/validation split; choose by validation MC log-likelihood "
                    "(regression) or NLL (classification); while the best point lies on an edge "
                    "of the grid, extend that axis geometrically and train the new points "
                    "(unless --grid-only); save the best model as a new version "
                    "in the store, print the grid and write grid.csv, grid.json and "
                    "dropout_sweep.png.")
    p.add_argument("--data", required=True, type=Path,
                   help="CSV with a header line, or NPZ with arrays x (rows, features) and y")
    p.add_argument("--model-root", required=True, type=Path, help="model store directory")
    p.add_argument("--name", required=True, help="model name in the store")
    p.add_argument("--task", choices=("regression", "classification"), default="regression",
                   help="default %(default)s")
    p.add_argument("--target", nargs="+", metavar="COLUMN",
                   help="CSV target column(s); default the last column")
    p.add_argument("--dropout-rates", nargs="+", type=float, metavar="P",
                   help=f"dropout rates to try (with --concrete-dropout, the rates training "
                        f"starts from); default {list(DEFAULT_DROPOUT_RATES)}, with "
                        f"--concrete-dropout {CONCRETE_INITIAL_RATE}")
    search_cli.add_concrete_argument(p)
    grid = p.add_mutually_exclusive_group()
    grid.add_argument("--taus", nargs="+", type=float, metavar="TAU",
                      help="regression precisions to try, in standardised target units (1 = "
                           "noise as large as the target's spread); default: estimate tau per "
                           "point")
    grid.add_argument("--weight-decays", nargs="+", type=float, metavar="L2",
                      help="L2 coefficients to try instead of deriving them from tau")
    search_cli.add_arguments(p, "points", "--taus then set the weight decay only")
    p.add_argument("--hidden", nargs="*", type=int, default=[50], metavar="WIDTH",
                   help="hidden layer widths; default 50")
    p.add_argument("--epochs", type=int, default=200, help="most epochs; default 200")
    p.add_argument("--batch-size", type=int, default=32, help="default 32")
    p.add_argument("--patience", type=int, default=20,
                   help="early-stopping patience in epochs; default 20")
    p.add_argument("--validation-fraction", type=float, default=0.2,
                   help="share of rows held out for scoring; default 0.2")
    p.add_argument("--seed", type=int, help="one seed for every point; default random")
    p.add_argument("--description", default="", help="free text stored with the model")
    p.add_argument("--output", type=Path,
                   help="folder for grid.csv, grid.json and dropout_sweep.png")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    if args.output:
        plotting.require_plotting()  # matplotlib (the report extra) missing: say so before training
    config = training.TrainConfig(
        task=args.task, noise=args.noise, hidden=tuple(args.hidden), epochs=args.epochs,
        batch_size=args.batch_size, patience=args.patience,
        validation_fraction=args.validation_fraction, seed=args.seed, concrete=args.concrete)
    rates = args.dropout_rates or ([CONCRETE_INITIAL_RATE] if args.concrete
                                   else list(DEFAULT_DROPOUT_RATES))
    table = tables.load_table(args.data.resolve(), task=args.task, target=args.target)

    def show(point: GridPoint) -> None:
        tau = "" if point.tau is None else f" tau={point.tau:.4g}"
        print(f"round {point.round}: p={point.dropout:g}{tau}{_decay(point)}: "
              f"{point.score:.4f}", file=sys.stderr, flush=True)

    model, info, result = grid_search(
        table, config, args.name, dropout_rates=rates, taus=args.taus,
        weight_decays=args.weight_decays, description=args.description, on_point=show,
        extend=not args.grid_only, max_rounds=args.search_rounds, margin=args.search_margin)
    version = ModelStore(args.model_root).save(model, info)
    print(format_table(result))
    best = result.points[result.best]
    tau = "" if best.tau is None else f" tau={best.tau:.4g}"
    print(f"best by validation {result.metric}: p={best.dropout:g}{tau}{_decay(best)}; "
          f"saved {args.name} version {version} in {args.model_root}")
    if result.search is not None:
        print(f"search: {len(result.points)} points in {result.search['rounds'] + 1} round(s); "
              f"stopped: {result.search['stop_reason']}")
    if args.output:
        files = write_outputs(result, args.output, title=f"{args.name} on {args.data.name}")
        print("wrote " + ", ".join(str(f) for f in files))
    return 0


def _decay(point: GridPoint) -> str:
    if point.learned_dropout:
        return " learned dropout " + format_rates(point.learned_dropout)
    return "" if point.weight_decay is None else f" weight decay {point.weight_decay:.3g}"
