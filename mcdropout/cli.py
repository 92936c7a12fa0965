"""The ``mcdropout`` command line: wiring only; the work lives in training, metrics, defaults.

Sub-commands from other distributions plug in through the entry-point group
``mcdropout.commands``: each entry point is a ``register(subparsers)`` function that adds its
parser and sets ``func=callable(args) -> int`` as its default (the server adds ``serve``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

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
    _add_train(sub)
    _add_predict(sub)
    _add_evaluate(sub)
    _add_info(sub)
    _add_defaults(sub)
    _add_plugins(sub)
    return parser


# -- sub-command parsers ---------------------------------------------------------------------------
def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train", help="train an MC dropout MLP on a CSV/NPZ file and save it in a model store",
        description="Train the standard MC dropout MLP (dropout on the inputs and after each "
                    "hidden layer, weight decay l^2 (1-p) / (2 N tau)) with early stopping on a "
                    "validation split, and save it as a new version in the store with its "
                    "standardisation, tau and provenance.")
    p.add_argument("--data", required=True, type=Path,
                   help="CSV with a header line, or NPZ with arrays x (rows, features) and y")
    _store_args(p, required=True)
    p.add_argument("--task", choices=("regression", "classification"), default="regression",
                   help="regression (numeric target) or classification (class labels); "
                        "default %(default)s")
    p.add_argument("--target", nargs="+", metavar="COLUMN",
                   help="CSV target column(s); default the last column (classification: one)")
    p.add_argument("--hidden", nargs="*", type=int, default=[50], metavar="WIDTH",
                   help="hidden layer widths, e.g. --hidden 50 50; default 50")
    p.add_argument("--activation", default="relu", help="hidden activation; default relu")
    p.add_argument("--dropout", type=float, default=0.05,
                   help="dropout rate p of every Dropout layer, in (0, 1); default 0.05")
    p.add_argument("--no-input-dropout", dest="input_dropout", action="store_false",
                   help="no Dropout layer on the inputs")
    p.add_argument("--length-scale", type=float, default=1e-2,
                   help="prior length-scale l for the weight decay; default 0.01")
    p.add_argument("--tau", type=float,
                   help="regression noise precision in standardised target units (1 = noise as "
                        "large as the target's spread); default: estimated from the validation "
                        "residuals")
    p.add_argument("--max-norm", type=float, help="max-norm constraint on incoming weights")
    p.add_argument("--epochs", type=int, default=200, help="most epochs; default 200")
    p.add_argument("--batch-size", type=int, default=32, help="default 32")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="Adam; default 0.001")
    p.add_argument("--validation-fraction", type=float, default=0.2,
                   help="share of rows held out for early stopping and metrics; default 0.2")
    p.add_argument("--patience", type=int, default=20,
                   help="epochs without a better validation loss before stopping; default 20")
    p.add_argument("--seed", type=int,
                   help="seed for split, initialisation, shuffling, dropout; default random "
                        "(recorded in the metadata)")
    p.add_argument("--description", default="", help="free text stored with the model")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    p.set_defaults(func=_train)


def _add_predict(sub: Any) -> None:
    p = sub.add_parser(
        "predict", help="predict rows of a file with a stored model (mean ± std per row)",
        description="Run T stochastic passes of a stored model over the rows of a file and "
                    "print, per row, mean ± std (regression) or class, probability, predictive "
                    "entropy and mutual information (classification).")
    _store_args(p, required=False)
    p.add_argument("--input", required=True, type=Path,
                   help="rows to predict: .npy, .npz (array x) or .csv (a header naming the "
                        "model's features picks those columns)")
    _sampling_args(p)
    p.add_argument("--interval", type=float, default=0.95,
                   help="level of the central predictive interval; default 0.95")
    p.add_argument("--json", action="store_true", help="print one JSON document instead")
    p.set_defaults(func=_predict)


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate", help="score a stored model on labelled data (RMSE, NLL, test LL, ECE...)",
        description="Regression: RMSE, Gaussian NLL, MC-mixture test log-likelihood, 95% "
                    "interval coverage (PICP) and width, in the target's units. "
                    "Classification: accuracy, NLL, expected calibration error (15 bins), "
                    "Brier score. With --report, also plots: a calibration curve, error "
                    "against predicted std and (one input) the mean with +-2 std bands for "
                    "regression; a reliability diagram and mutual-information histograms of "
                    "right and wrong predictions for classification.")
    _store_args(p, required=False)
    p.add_argument("--data", required=True, type=Path,
                   help="CSV with a header (the columns the model was trained on) or NPZ x/y")
    p.add_argument("--target", nargs="+", metavar="COLUMN",
                   help="CSV target column(s); default those the model was trained on")
    _sampling_args(p)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--report", type=Path, metavar="DIR",
                   help="also write the plots as PNG files and an index.html showing them with "
                        "the metrics into DIR")
    p.set_defaults(func=_evaluate)


def _add_info(sub: Any) -> None:
    p = sub.add_parser("info", help="list the models of a store, or describe one",
                       description="Without --name: every model and its versions. With "
                                   "--name: the metadata and the model's stochastic layers.")
    p.add_argument("--model-root", type=Path,
                   help="model store directory; default the built-in default store")
    p.add_argument("--name", help="model to describe")
    p.add_argument("--version", type=int, help="version; default the latest")
    p.set_defaults(func=_info)


def _add_defaults(sub: Any) -> None:
    p = sub.add_parser(
        "make-default-models", help="train the built-in default models (diabetes, iris)",
        description="Train the built-in models from data shipped in the package (seconds, no "
                    "download) into a store, unless it already holds them.")
    p.add_argument("--model-root", type=Path,
                   help="store directory; default $XDG_CACHE_HOME/mcdropout/default-store")
    p.set_defaults(func=_make_defaults)
    p = sub.add_parser(
        "demo", help="predict held-out diabetes rows with uncertainty (trains on first use)",
        description="Make sure the default models exist, then predict rows of the diabetes "
                    "data that training never saw, printing the truth, mean ± predictive std "
                    "and the 95%% predictive interval.")
    p.add_argument("--model-root", type=Path,
                   help="store directory; default $XDG_CACHE_HOME/mcdropout/default-store")
    p.add_argument("--model", default="diabetes", choices=("diabetes", "iris"),
                   help="default model to demonstrate; default diabetes")
    p.add_argument("--rows", type=int, default=5, help="held-out rows to predict; default 5")
    p.add_argument("--samples", type=int, default=100, help="MC passes T; default 100")
    p.add_argument("--seed", type=int, default=0, help="dropout seed; default 0")
    p.set_defaults(func=_demo)


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


def _store_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--model-root", type=Path, required=required,
                   help="model store directory" if required else
                   "model store directory; default the built-in default store")
    p.add_argument("--name", required=True, help="model name in the store")
    if not required:
        p.add_argument("--version", type=int, help="model version; default the latest")


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=int, help="MC passes T; default the model's (usually 100)")
    p.add_argument("--seed", type=int, default=0, help="dropout seed; default 0")


# -- handlers ------------------------------------------------------------------------------------
def _train(args: argparse.Namespace) -> int:
    from mcdropout.modeling import training

    config = training.TrainConfig(
        task=args.task, hidden=tuple(args.hidden), activation=args.activation,
        dropout=args.dropout, input_dropout=args.input_dropout, length_scale=args.length_scale,
        tau=args.tau, max_norm=args.max_norm, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, validation_fraction=args.validation_fraction,
        patience=args.patience, seed=args.seed, verbose=0 if args.quiet else 2)
    version, info = training.train_file(args.data, config, name=args.name,
                                        model_root=args.model_root, target=args.target,
                                        description=args.description)
    run = info.provenance["training"]
    print(f"saved {info.name} version {version} in {args.model_root} "
          f"({run['epochs_run']} epochs, best {run['best_epoch']})")
    if info.tau is not None:
        print(f"tau = {info.tau:.4g} (standardised target units)")
    print("validation: " + _format_metrics(info.provenance["validation_metrics"]))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from mcdropout.evaluation import scores
    from mcdropout.modeling import tables

    predictor, info = _open(args.model_root, args.name, args.version)
    x = tables.load_inputs(args.input, feature_names=info.provenance.get("data", {})
                         .get("features", ()), n_features=int(np.prod(info.input_shape)))
    levels = (args.interval,) if info.task == "regression" else ()
    prediction = scores.predict_chunked(predictor, x, args.samples, args.seed,
                                         interval_levels=levels)
    if args.json:
        print(json.dumps(_prediction_json(prediction, info)))
    else:
        print(_header(info, prediction))
        print("\n".join(_prediction_lines(prediction, info)))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from mcdropout.evaluation import scores
    from mcdropout.modeling import tables

    predictor, info = _open(args.model_root, args.name, args.version)
    # By default the columns the model was trained on, where the file has them.
    recorded = info.provenance.get("data", {})
    header = set(tables.csv_header(args.data)) if args.data.suffix.lower() == ".csv" else set()

    def present(names: list[str] | None) -> list[str] | None:
        return list(names) if names and set(names) <= header else None

    target = args.target or present(recorded.get("target"))
    features = None if args.target else present(recorded.get("features"))
    table = tables.load_table(args.data, task=info.task, target=target, features=features)
    y = tables.encode_labels(table.y, info.labels)[0] if info.task == "classification" else table.y
    result = scores.evaluate(predictor, table.x, y, samples=args.samples, seed=args.seed)
    print(json.dumps(result, indent=2) if args.json else
          f"{info.name} v{info.version} on {args.data}: " + _format_metrics(result))
    if args.report is not None:
        from mcdropout.evaluation import report

        index = report.write_report(args.report, predictor, table.x, y, samples=args.samples,
                                    seed=args.seed, metrics_table=result,
                                    title=f"{info.name} v{info.version} on {args.data.name}")
        print(f"wrote {index} and its plots", file=sys.stderr if args.json else sys.stdout)
    return 0


def _info(args: argparse.Namespace) -> int:
    from mcdropout.store import ModelStore

    store = ModelStore(_root(args.model_root))
    if not args.name:
        for name in store.names():
            print(f"{name}: versions {store.versions(name)}")
        return 0
    info = store.read_info(args.name, args.version)
    from mcdropout.engine.layers import find_stochastic_layers

    layers = find_stochastic_layers(store.load_model(info.name, info.version))
    print(f"{info.name} v{info.version} ({info.task}, input {info.input_shape} "
          f"{info.input_dtype}, labels {list(info.labels)})")
    print("stochastic layers: " + ", ".join(f"{s.name} ({s.kind}, p={s.rate:g})" for s in layers))
    print(info.to_json())
    return 0


def _make_defaults(args: argparse.Namespace) -> int:
    from mcdropout.modeling.defaults import ensure_default_store
    from mcdropout.store import ModelStore

    _show_progress()
    root = ensure_default_store(args.model_root)
    store = ModelStore(root)
    for name in store.names():
        info = store.read_info(name)
        test = info.provenance.get("default_model", {}).get("test_metrics", {})
        print(f"{name} v{info.version} ({info.task}) in {root}; held-out test: "
              + _format_metrics(test))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from mcdropout.modeling import defaults

    _show_progress()
    result = defaults.demo(args.model_root, model=args.model, rows=args.rows,
                           samples=args.samples, seed=args.seed)
    print(f"{result.info.name} v{result.info.version}: {result.info.description}")
    print(_header(result.info, result.prediction))
    print("\n".join(_prediction_lines(result.prediction, result.info, truth=result.y)))
    return 0


def _unavailable(name: str, reason: str) -> int:
    print(f"mcdropout {name} is not available here ({reason}); install its package, e.g. "
          "pip install 'mcdropout[server]'", file=sys.stderr)
    return 1


# -- output --------------------------------------------------------------------------------------
def _header(info: Any, prediction: Any) -> str:
    spread = ("mean ± predictive std (MC spread and noise 1/tau)"
              if prediction.predictive_std is not None else "mean ± MC std")
    what = spread if info.task == "regression" else "class, probability, entropy, MI (nats)"
    return (f"{info.name} v{info.version}: {prediction.samples} MC dropout passes, "
            f"seed {prediction.seed}; {what}")


def _prediction_lines(prediction: Any, info: Any, truth: np.ndarray | None = None) -> list[str]:
    lines = []
    interval = prediction.intervals[0] if prediction.intervals else None
    for i in range(prediction.rows):
        if info.task == "classification":
            k = int(prediction.predicted_class[i])
            label = info.labels[k] if k < len(info.labels) else str(k)
            text = (f"row {i}: {label}  p={prediction.mean[i, k]:.3f}  "
                    f"entropy {prediction.predictive_entropy[i]:.3f}  "
                    f"MI {prediction.mutual_information[i]:.3f}")
            if truth is not None:
                text += f"  (true {truth[i, 0]})"
            lines.append(text)
            continue
        spread = (prediction.predictive_std if prediction.predictive_std is not None
                  else prediction.std)
        parts = []
        for j in range(prediction.mean.shape[1]):
            name = info.labels[j] if j < len(info.labels) else f"y{j}"
            part = f"{name} = {prediction.mean[i, j]:.4g} ± {spread[i, j]:.3g}"
            if interval is not None:
                part += (f"  {interval.level:.0%} [{interval.lower[i, j]:.4g}, "
                         f"{interval.upper[i, j]:.4g}]")
            if prediction.predictive_std is not None:
                part += f"  (MC std {prediction.std[i, j]:.3g})"
            if truth is not None:
                part += f"  true {truth[i, j]:.4g}"
            parts.append(part)
        lines.append(f"row {i}: " + "; ".join(parts))
    return lines


def _prediction_json(prediction: Any, info: Any) -> dict[str, Any]:
    keys = ("mean", "std", "standard_error", "predictive_std", "predicted_class",
            "predictive_entropy", "expected_entropy", "mutual_information", "variation_ratio")
    out: dict[str, Any] = {"model": info.name, "version": info.version, "task": info.task,
                           "labels": list(info.labels), "samples": prediction.samples,
                           "seed": prediction.seed}
    for key in keys:
        value = getattr(prediction, key)
        if value is not None:
            out[key] = np.asarray(value).tolist()
    out["intervals"] = {f"{iv.level:g}": {"lower": iv.lower.tolist(), "upper": iv.upper.tolist()}
                        for iv in prediction.intervals}
    return out


# -- helpers -------------------------------------------------------------------------------------
def _open(root: Path | None, name: str, version: int | None) -> tuple[Any, Any]:
    from mcdropout.engine import MCDropoutPredictor
    from mcdropout.store import ModelStore

    store = ModelStore(_root(root))
    info = store.read_info(name, version)
    return MCDropoutPredictor.from_info(store.load_model(name, info.version), info), info


def _root(root: Path | None) -> Path:
    if root is not None:
        return root
    from mcdropout.modeling.defaults import ensure_default_store

    _show_progress()
    return ensure_default_store()


def _show_progress() -> None:
    # Only our own logger: the root logger belongs to whoever runs us (the server sets its own).
    logger = logging.getLogger("mcdropout.modeling.defaults")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _format_metrics(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in values.items())


def _version() -> str:
    try:
        return metadata.version("mcdropout")
    except metadata.PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
