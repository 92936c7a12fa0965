"""The handlers of the built-in ``mcdropout`` sub-commands: each takes the parsed arguments,
calls the library and prints; each returns the exit status.

Heavy modules (TensorFlow through the engine, training, plotting) are imported inside the
handler that needs them, so that building the parser, ``--help`` included, stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mcdropout.cli import output


def train(args: argparse.Namespace) -> int:
    """``mcdropout train``: train on a file and save a new version in the store."""
    from mcdropout.modeling import training

    config = training.TrainConfig(
        task=args.task, hidden=tuple(args.hidden), activation=args.activation,
        dropout=args.dropout, input_dropout=args.input_dropout, length_scale=args.length_scale,
        tau=args.tau, max_norm=args.max_norm, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, validation_fraction=args.validation_fraction,
        patience=args.patience, seed=args.seed, noise=args.noise, concrete=args.concrete,
        verbose=0 if args.quiet else 2)
    version, info = training.train_file(args.data, config, name=args.name,
                                        model_root=args.model_root, target=args.target,
                                        description=args.description)
    run = info.provenance["training"]
    print(f"saved {info.name} version {version} in {args.model_root} "
          f"({run['epochs_run']} epochs, best {run['best_epoch']})")
    if info.tau is not None:
        print(f"tau = {info.tau:.4g} (standardised target units)")
    if info.noise == "learned":
        print("noise: learned (a variance per row, predicted beside the mean)")
    if "learned_dropout" in run:
        print("learned dropout rates: " + ", ".join(
            f"{layer} {rate:.3g}" for layer, rate in run["learned_dropout"].items()))
    print("validation: " + output.format_metrics(info.provenance["validation_metrics"]))
    return 0


def import_model(args: argparse.Namespace) -> int:
    """``mcdropout import``: check a .keras file and write it as a version in the store."""
    from mcdropout import importing
    from mcdropout.store import ModelStore

    choices = importing.parse_choices(args.task, args.labels, args.tau)
    _import_modules(args)
    done = importing.import_model(
        args.model, ModelStore(args.model_root), args.name, choices=choices,
        version=args.version, default_samples=args.default_samples,
        max_samples=args.max_samples, description=args.description)
    print(f"imported {args.model} as {args.name} version {done.version} in {args.model_root} "
          "(loaded in safe mode, 2 MC passes ran)")
    print("\n".join(output.model_lines(done.info, done.predictor,
                                       done.predictor.stochastic_layers)[1:]))
    return 0


def predict(args: argparse.Namespace) -> int:
    """``mcdropout predict``: T passes over the rows of a file, printed per row or as JSON."""
    from mcdropout.evaluation import scores
    from mcdropout.modeling import tables

    predictor, info = _open(args)
    x = tables.load_inputs(args.input, feature_names=info.provenance.get("data", {})
                         .get("features", ()), n_features=int(np.prod(info.input_shape)))
    levels = (args.interval,) if info.task == "regression" else ()
    prediction = scores.predict_chunked(predictor, x, args.samples, args.seed,
                                         interval_levels=levels)
    if args.json:
        print(json.dumps(output.prediction_json(prediction, info)))
    else:
        print(output.header(info, prediction))
        print("\n".join(output.prediction_lines(prediction, info)))
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """``mcdropout evaluate``: score a stored model on labelled data, optionally with plots."""
    from mcdropout.evaluation import scores
    from mcdropout.modeling import tables

    predictor, info = _open(args, calibrated=args.calibrated)
    # By default the columns the model was trained on, where the file has them.
    recorded = info.provenance.get("data", {})
    header = set(tables.csv_header(args.data)) if args.data.suffix.lower() == ".csv" else set()

    def present(names: list[str] | None) -> list[str] | None:
        return list(names) if names and set(names) <= header else None

    target = args.target or present(recorded.get("target"))
    features = None if args.target else present(recorded.get("features"))
    table = tables.load_table(args.data, task=info.task, target=target, features=features)
    y = tables.encode_labels(table.y, info.labels)[0] if info.task == "classification" else table.y
    result = scores.evaluate(predictor, table.x, y, samples=args.samples, seed=args.seed,
                             calibrated=args.calibrated)
    print(json.dumps(result, indent=2) if args.json else
          f"{info.name} v{info.version} on {args.data}: " + output.format_metrics(result))
    if args.report is not None:
        from mcdropout.evaluation import report

        index = report.write_report(args.report, predictor, table.x, y, samples=args.samples,
                                    seed=args.seed, metrics_table=result,
                                    title=f"{info.name} v{info.version} on {args.data.name}"
                                    + (" (calibrated)" if args.calibrated else ""),
                                    calibrated=args.calibrated)
        print(f"wrote {index} and its plots", file=sys.stderr if args.json else sys.stdout)
    return 0


def show_info(args: argparse.Namespace) -> int:
    """``mcdropout info``: the store's models and versions, or one model's metadata and layers."""
    from mcdropout.store import ModelStore

    store = ModelStore(_root(args.model_root))
    if not args.name:
        for name in store.names():
            print(f"{name}: versions {store.versions(name)}")
        return 0
    info = store.read_info(args.name, args.version)
    from mcdropout.engine import MCDropoutPredictor
    from mcdropout.engine.layers import find_stochastic_layers
    from mcdropout.errors import MCDropoutError

    _import_modules(args)
    model = store.load_model(info.name, info.version)
    try:
        predictor, problem = MCDropoutPredictor.from_info(model, info), ""
    except MCDropoutError as exc:  # still describe what the store holds
        predictor, problem = None, f"cannot be served: {exc}"
    print("\n".join(output.model_lines(info, predictor, find_stochastic_layers(model))))
    calibration = store.read_calibration(info.name, info.version)
    print("\n".join(output.calibration_lines(calibration)) if calibration is not None else
          "calibration: none (`mcdropout calibrate` makes a calibrated version)")
    if problem:
        print(problem)
    print(info.to_json())
    return 1 if problem else 0


def make_defaults(args: argparse.Namespace) -> int:
    """``mcdropout make-default-models``: train the built-in models unless the store has them."""
    from mcdropout.modeling.defaults import ensure_default_store
    from mcdropout.store import ModelStore

    _show_progress()
    root = ensure_default_store(args.model_root)
    store = ModelStore(root)
    for name in store.names():
        info = store.read_info(name)
        test = info.provenance.get("default_model", {}).get("test_metrics", {})
        print(f"{name} v{info.version} ({info.task}) in {root}; held-out test: "
              + output.format_metrics(test))
    return 0


def demo(args: argparse.Namespace) -> int:
    """``mcdropout demo``: predict held-out rows of a default model beside their truth."""
    from mcdropout.modeling import defaults

    _show_progress()
    result = defaults.demo(args.model_root, model=args.model, rows=args.rows,
                           samples=args.samples, seed=args.seed)
    print(f"{result.info.name} v{result.info.version}: {result.info.description}")
    print(output.header(result.info, result.prediction))
    print("\n".join(output.prediction_lines(result.prediction, result.info, truth=result.y)))
    return 0


def _import_modules(args: argparse.Namespace) -> None:
    # The `mcdropout` command is the program here, so it reads its variable itself.
    from mcdropout.loading import import_modules, modules_setting

    import_modules(modules_setting(getattr(args, "import_module", None), os.environ))


def _open(args: argparse.Namespace, calibrated: bool = False) -> tuple[Any, Any]:
    """The stored version's predictor (with its calibration when ``calibrated``) and metadata.

    Raises:
        NotCalibratedError: ``calibrated`` and the version has no calibration.
    """
    from mcdropout.engine import MCDropoutPredictor
    from mcdropout.errors import NotCalibratedError
    from mcdropout.store import ModelStore

    root, name, version = args.model_root, args.name, args.version
    _import_modules(args)

    store = ModelStore(_root(root))
    info = store.read_info(name, version)
    calibration = store.read_calibration(name, info.version) if calibrated else None
    if calibrated and calibration is None:
        raise NotCalibratedError(
            f"model {name!r} version {info.version} has no calibration; `mcdropout calibrate` "
            f"makes a calibrated version (versions: {store.versions(name)})")
    return MCDropoutPredictor.from_info(store.load_model(name, info.version), info,
                                        calibration=calibration), info


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
