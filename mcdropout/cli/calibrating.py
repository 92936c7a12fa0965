"""``mcdropout calibrate``: fit a stored version's calibration on a labelled file and write the
calibrated copy as a new version.

The file is read as ``mcdropout evaluate`` reads it (CSV with a header, or NPZ), one target
column set per head: ``--target COL`` for a one-head model (repeat it for several outputs),
``--target HEAD=COL`` for each head of a model with several (an NPZ names arrays instead of
columns; a one-head model's NPZ uses ``y``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from mcdropout.calibration.abstention import AbstentionTarget
from mcdropout.cli import output
from mcdropout.errors import InvalidArgumentError


def calibrate(args: argparse.Namespace) -> int:
    """``mcdropout calibrate``: fit, save as a new version, print before/after per head."""
    from mcdropout.calibration import calibrate as fit
    from mcdropout.cli.commands import _open
    from mcdropout.store import ModelStore

    abstention = _abstention(args)  # refused before the model loads
    predictor, info = _open(args)
    x, targets = read_targets(args.data, predictor, info, args.target)
    calibration = fit(predictor, x, targets, samples=args.samples, seed=args.seed,
                      abstention=abstention)
    calibration.provenance.update(data=args.data.name, version=info.version)
    version = ModelStore(args.model_root).save_calibrated(info.name, info.version, calibration)
    print(f"calibrated {info.name} version {info.version} on {len(x)} rows of {args.data} "
          f"({calibration.provenance['samples']} passes, seed {args.seed}); wrote version "
          f"{version} in {args.model_root}")
    print("\n".join(output.calibration_lines(calibration)))
    return 0


def _abstention(args: argparse.Namespace) -> AbstentionTarget | None:
    given = [flag for flag, value in (("--abstain-risk", args.abstain_risk),
                                      ("--abstain-coverage", args.abstain_coverage))
             if value is not None]
    if args.abstain_measure is None and not given:
        return None
    if args.abstain_measure is None or len(given) != 1:
        raise InvalidArgumentError(
            "an abstention policy needs --abstain-measure M and exactly one of --abstain-risk R "
            f"or --abstain-coverage C; got measure {args.abstain_measure!r} and "
            f"{given or 'neither target'}")
    # The measure is checked by AbstentionTarget itself (its message lists the measures).
    if given[0] == "--abstain-risk":
        return AbstentionTarget(args.abstain_measure, "risk", args.abstain_risk)
    return AbstentionTarget(args.abstain_measure, "coverage", args.abstain_coverage)


def read_targets(path: Path, predictor: Any, info: Any, given: list[str] | None
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The inputs and each head's targets from a labelled file.

    Returns:
        (x (rows, features), head name -> targets: regression (rows, outputs) floats,
        classification (rows,) class indices).

    Raises:
        InvalidArgumentError: a model with several inputs, targets naming no or unknown heads,
            a head without targets, or what reading the file refuses.
    """
    from mcdropout.modeling import tables

    if len(predictor.inputs) != 1:
        raise InvalidArgumentError(
            f"mcdropout calibrate reads one input from a file; the model has inputs "
            f"{[spec.name for spec in predictor.inputs]}: calibrate it from Python with "
            "mcdropout.calibration.calibrate(predictor, {name: rows}, targets)")
    heads = list(predictor.heads)
    columns = _columns(heads, given, info)
    suffix = path.suffix.lower()
    x, targets = None, {}
    if suffix == ".npz" and len(heads) > 1:
        x, raw = _npz(path, columns, {head.name: head.task for head in heads})
    else:
        header = set(tables.csv_header(path)) if suffix == ".csv" else set()
        recorded = info.provenance.get("data", {}).get("features")
        every = {c for cols in columns.values() for c in cols or ()}
        features = list(recorded) if recorded and set(recorded) <= header - every else None
        if features is None and header and every:
            features = [c for c in tables.csv_header(path) if c not in every]
        raw = {}
        for head in heads:
            table = tables.load_table(path, task=head.task, target=columns[head.name],
                                      features=features)
            x, raw[head.name] = table.x, table.y
    for head in heads:
        y = raw[head.name]
        if head.task == "classification":
            labels = head.labels or tuple(str(k) for k in range(head.width))
            y = tables.encode_labels(np.asarray(y, dtype=object), labels)[0]
        targets[head.name] = y
    assert x is not None
    return x, targets


def _columns(heads: list[Any], given: list[str] | None, info: Any
             ) -> dict[str, list[str] | None]:
    names = [head.name for head in heads]
    out: dict[str, list[str]] = {}
    for item in given or []:
        head, sep, column = item.partition("=")
        if not sep:
            if len(heads) > 1:
                raise InvalidArgumentError(
                    f"the model has heads {names}, so --target must name one as HEAD=COLUMN, "
                    f"got {item!r}")
            head, column = names[0], item
        if head not in names:
            raise InvalidArgumentError(f"--target names head {head!r}, which the model does not "
                                       f"have; its heads: {names}")
        out.setdefault(head, []).append(column)
    if len(heads) == 1:
        recorded = info.provenance.get("data", {}).get("target")
        return {names[0]: out.get(names[0]) or (list(recorded) if recorded else None)}
    missing = [n for n in names if n not in out]
    if missing:
        raise InvalidArgumentError(f"every head needs its targets: give --target HEAD=COLUMN for"
                                   f" {missing} too (the heads: {names})")
    return dict(out)


def _npz(path: Path, columns: dict[str, list[str] | None], tasks: dict[str, str]
         ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    from mcdropout.modeling.fileformats import npz_array, npz_labels

    try:
        with np.load(path, allow_pickle=False) as loaded:
            x = np.asarray(npz_array(loaded, "x", path), dtype=np.float64)
            raw = {}
            for head, names in columns.items():
                arrays = [np.asarray(npz_array(loaded, name, path)) for name in names or ()]
                if len(arrays) != 1:
                    raise InvalidArgumentError(f"{path}: head {head!r} takes one array "
                                               f"(--target {head}=ARRAY), got {names}")
                y = arrays[0]
                raw[head] = npz_labels(path, y) if tasks[head] == "classification" else y
    except InvalidArgumentError:
        raise
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(f"cannot read {path}: {exc}") from exc
    return x.reshape(len(x), -1), raw
