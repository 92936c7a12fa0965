"""The ``mcdropout benchmark uci`` command and its JSON, CSV and text reports.

The protocol itself lives in :mod:`mcdropout.evaluation.uci`, the data sets' reading in
:mod:`mcdropout.evaluation.uci_data`.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from mcdropout.errors import InvalidArgumentError
from mcdropout.evaluation import uci, uci_data
from mcdropout.modeling import builders, search_cli


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``mcdropout benchmark uci`` (entry point of the ``mcdropout.commands`` group)."""
    benchmark = subparsers.add_parser(
        "benchmark", help="run published benchmarks (the UCI regression protocol of MC dropout)",
        description="Run published benchmarks on data you have on disk (nothing is downloaded).")
    kinds = benchmark.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    p = kinds.add_parser(
        "uci", help="the UCI regression protocol of Gal & Ghahramani (2016)",
        description="Per split: standardise with training statistics; grid-search the dropout "
                    "rate and tau (dropout_rates.txt x tau_values.txt; without them p in "
                    "{0.005, 0.01, 0.05, 0.1} and tau in {2, 4, 8, ..., 256} / the variance of "
                    "the split's training targets) by validation MC "
                    "log-likelihood on the last 20% of the training split, extending the grid "
                    "geometrically past an edge that holds the best setting (unless "
                    "--grid-only), where an added setting is chosen only when it beats the "
                    "split's current choice by more than --search-margin standard errors; "
                    "retrain on the whole "
                    "split (weight decay l^2 (1-p) / (2 N tau), Adam, batch 128); score the test "
                    "rows with T passes (RMSE, MC-mixture log-likelihood, 95% coverage) in "
                    "original units. Prints mean ± standard error over the splits and writes "
                    "<output>/<dataset>.json and .csv.")
    p.add_argument("--data-dir", required=True, type=Path,
                   help="folder with one sub-folder per data set (data.txt, index_*.txt, ..., "
                        "there or in its data/ folder: a clone's UCI_Datasets works as it is)")
    p.add_argument("--dataset", required=True, nargs="+", metavar="NAME",
                   help="data set folder name(s), e.g. yacht bostonHousing")
    p.add_argument("--splits", type=int,
                   help="run the first N splits; default all on file (n_splits.txt, else the "
                        "index_train_<i>.txt / index_test_<i>.txt pairs)")
    p.add_argument("--epochs-multiplier", type=int, default=10,
                   help="epochs = n_epochs.txt (default 40) x this; the published runs use 10 "
                        "or 100; "
                        "default %(default)s")
    p.add_argument("--samples", type=int, default=10_000,
                   help="test-time MC passes T; default %(default)s as published")
    p.add_argument("--validation-samples", type=int,
                   help="passes for scoring the grid; default the same as --samples (published)")
    p.add_argument("--dropout-rates", type=float, nargs="+", metavar="P",
                   help="grid of dropout rates, each in [0, 1), instead of dropout_rates.txt")
    p.add_argument("--tau-values", type=float, nargs="+", metavar="TAU",
                   help="grid of noise precisions tau (> 0, in the target's units) instead of "
                        "tau_values.txt; e.g. to extend a grid whose best value is on its edge")
    search_cli.add_arguments(p, "settings", "tau then sets the weight decay only")
    search_cli.add_concrete_argument(p)
    p.add_argument("--refine-tau", action="store_true",
                   help="fixed noise: after the search, refine each split's tau for its chosen "
                        "network by a golden-section search in log tau between the grid's "
                        "neighbours of the chosen tau, on the validation rows (no training); "
                        "the test passes use it if it beats the grid's tau there, the weight "
                        "decay keeps the grid's")
    p.add_argument("--calibration-fraction", type=float, default=0.0, metavar="F",
                   help="hold out the last F of each training split (file order) before the "
                        "protocol runs on the rest, and score split-conformal 95%% and 90%% "
                        "intervals (|y - mean| / predictive_std calibrated on those rows) on "
                        "the test rows beside the uncalibrated ones; default 0: off")
    p.add_argument("--seed", type=int, default=0, help="default %(default)s")
    p.add_argument("--output", type=Path, default=Path("uci-results"),
                   help="folder for the JSON and CSV reports; default %(default)s")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    if args.concrete and args.dropout_rates:
        raise InvalidArgumentError(
            "--dropout-rates does not apply with --concrete-dropout: every layer starts at "
            f"p = {builders.CONCRETE_INITIAL_RATE} and learns its rate; the search runs over "
            "tau")
    protocol = uci.Protocol(epochs_multiplier=args.epochs_multiplier, samples=args.samples,
                            validation_samples=args.validation_samples, splits=args.splits,
                            calibration_fraction=args.calibration_fraction, seed=args.seed,
                            extend_grid=not args.grid_only, search_rounds=args.search_rounds,
                            search_margin=args.search_margin, noise=args.noise,
                            refine_tau=args.refine_tau, concrete=args.concrete)
    datasets = [_with_grids(uci_data.load_dataset(args.data_dir, name), args)
                for name in args.dataset]  # fail early
    for dataset in datasets:
        result = uci.run(dataset, protocol,
                         progress=lambda line: print(line, file=sys.stderr, flush=True))
        json_path, csv_path = write_results(result, args.output)
        print(format_summary(result))
        print(f"  wrote {json_path} and {csv_path}")
    return 0


def _with_grids(dataset: uci_data.UCIDataset, args: argparse.Namespace) -> uci_data.UCIDataset:
    """The data set with the grids given on the command line in place of its files' grids."""
    if args.dropout_rates:
        dataset = replace(dataset, dropout_rates=tuple(args.dropout_rates))
    if args.tau_values:
        dataset = replace(dataset, tau_values=tuple(args.tau_values))
    return dataset


def write_results(result: uci.BenchmarkResult, directory: str | Path) -> tuple[Path, Path]:
    """Write ``<dataset>.json`` (protocol, summary, every split and grid) and ``<dataset>.csv``.

    Returns:
        (the JSON path, the CSV path).
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    summary = {k: {"mean": m, "se": se} for k, (m, se) in result.summary().items()}
    published = uci.PUBLISHED_2016.get(result.dataset)
    document = {
        "dataset": result.dataset, "protocol": asdict(result.protocol), "epochs": result.epochs,
        "n_hidden": result.n_hidden, "splits_run": len(result.splits),
        "seconds": result.seconds, "stage_seconds": result.stage_seconds,
        "interval_level": uci.INTERVAL_LEVEL, "summary": summary,
        "published_2016": None if published is None else {
            "rmse": {"mean": published[0], "se": published[1]},
            "test_ll": {"mean": published[2], "se": published[3]}},
        "splits": [asdict(s) for s in result.splits],
    }
    json_path = folder / f"{result.dataset}.json"
    json_path.write_text(json.dumps(document, indent=2, allow_nan=True))
    csv_path = folder / f"{result.dataset}.csv"
    metrics = uci.per_split_metrics(result.splits)
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "dropout", "tau", "test_tau", "calibration_rows",
                         "settings_tried",
                         "search_rounds", "stop_reason", *metrics])
        for i, s in enumerate(result.splits):
            writer.writerow([s.split, s.dropout, s.tau, s.test_tau or s.tau, s.calibration_rows,
                             s.search.get("settings"), s.search.get("rounds"),
                             s.search.get("stop_reason"),
                             *(values[i] for values in metrics.values())])
    return json_path, csv_path


def search_lines(result: uci.BenchmarkResult) -> list[str]:
    """How the splits' searches went: values tried per axis, rounds, and why they stopped."""
    logs = [s.search for s in result.splits if s.search]
    if not logs:
        return []
    lines = []
    for k, axis in enumerate(logs[0]["axes"]):
        tried = sorted({v for log in logs for v in log["axes"][k]["tried"]})
        givens = {tuple(log["axes"][k]["given"]) for log in logs}
        if len(givens) == 1:
            lines.append(f"  {axis['name']} tried: {', '.join(f'{v:g}' for v in tried)} "
                         f"(given {', '.join(f'{v:g}' for v in axis['given'])})")
        else:  # a grid scaled to each split's targets: every value listed would be noise
            lines.append(f"  {axis['name']} tried: {tried[0]:.4g} to {tried[-1]:.4g} over "
                         f"{len(tried)} values (each split's own grid, in the JSON report)")
    rounds = [log["rounds"] for log in logs]
    lines.append(f"  search rounds per split: {min(rounds)}-{max(rounds)}; stopped because:")
    reasons: dict[str, int] = {}
    for log in logs:
        reasons[log["stop_reason"]] = reasons.get(log["stop_reason"], 0) + 1
    lines += [f"    {count} split(s): {reason}" for reason, count in reasons.items()]
    return lines


def format_summary(result: uci.BenchmarkResult) -> str:
    """Human-readable lines: mean ± SE of each metric, and the 2016 paper's figures if known."""
    summary = result.summary()
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in result.stage_seconds.items())
    lines = [f"{result.dataset}: {len(result.splits)} splits, {result.epochs} epochs, "
             f"T = {result.protocol.samples}, {result.protocol.noise} noise, "
             + ("concrete dropout, " if result.protocol.concrete else "")
             + f"{result.seconds:.0f} s ({stages})"
             + (f", {result.splits[0].calibration_rows} calibration rows held out per split"
                if result.splits and result.splits[0].calibration_rows else ""),
             *search_lines(result)]
    for name, label in (("rmse", "RMSE"), ("test_ll", "test LL"),
                        ("picp", "95% interval coverage"), ("interval_width", "95% width")):
        mean, se = summary[name]
        lines.append(f"  {label:<22} {mean:8.3f} ± {se:.3f}")
    for c in result.splits[0].conformal if result.splits else ():
        for name, label in (("raw_coverage", "uncalibrated coverage"), ("raw_width", "width"),
                            ("coverage", "conformal coverage"), ("width", "width")):
            mean, se = summary[f"{name}@{c.level:g}"]
            lines.append(f"  {c.level:.0%} {label:<18} {mean:8.3f} ± {se:.3f}")
    if result.dataset in uci.PUBLISHED_2016:
        rmse, rmse_se, ll, ll_se = uci.PUBLISHED_2016[result.dataset]
        lines.append(f"  Gal & Ghahramani 2016: RMSE {rmse:.2f} ± {rmse_se:.2f}, "
                     f"test LL {ll:.2f} ± {ll_se:.2f}")
    return "\n".join(lines)
