"""Files for the command line: reading input rows (.csv, .npy), writing results (.json, .csv)."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mcdropout_client.results import PredictResult, Statistics

INPUT_SUFFIXES = (".csv", ".npy")
OUTPUT_SUFFIXES = (".json", ".csv")


def load_input(path: Path, *, mmap: bool = False) -> np.ndarray:
    """Read input rows from a ``.npy`` array or a numeric ``.csv`` (an optional header row).

    With ``mmap`` a ``.npy`` file is mapped read-only rather than read (rows are read from disk
    as they are used, so a file larger than memory works).

    Raises:
        ValueError: unknown suffix, unreadable file, empty or ragged CSV, a non-numeric cell.
    """
    suffix = path.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise ValueError(f"input must be a {' or '.join(INPUT_SUFFIXES)} file, got {str(path)!r}")
    try:
        if suffix == ".npy":
            return np.asarray(np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None))
        text = path.read_text()
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read input {str(path)!r}: {error}") from None
    return _parse_csv(text, str(path))


def _parse_csv(text: str, name: str) -> np.ndarray:
    rows = [row for row in csv.reader(text.splitlines()) if any(cell.strip() for cell in row)]
    if rows and not all(_is_number(cell) for cell in rows[0]):
        rows = rows[1:]  # a header: the first row has a non-numeric cell
    if not rows:
        raise ValueError(f"input {name!r} has no data rows")
    width = len(rows[0])
    values: list[list[float]] = []
    for line, row in enumerate(rows, start=1):
        if len(row) != width:
            raise ValueError(
                f"input {name!r}: data row {line} has {len(row)} columns, the first has {width}"
            )
        for cell in row:
            if not _is_number(cell):
                raise ValueError(f"input {name!r}: data row {line} has non-numeric cell {cell!r}")
        values.append([float(cell) for cell in row])
    return np.asarray(values, dtype=np.float64)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def load_inputs(specs: Sequence[str], *, mmap: bool = False
                ) -> np.ndarray | dict[str, np.ndarray]:
    """The ``--input`` values of the command line: one ``FILE``, or ``NAME=FILE`` per input.

    A value is ``NAME=FILE`` when it holds ``=`` and is not itself an existing file.

    ``mmap`` as in :func:`load_input`.

    Raises:
        ValueError: files as in :func:`load_input`; a mix of named and unnamed inputs, an
            unnamed input given twice, a name given twice or empty.
    """
    named: dict[str, np.ndarray] = {}
    plain: list[str] = []
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep or Path(spec).exists():
            plain.append(spec)
            continue
        if not name or name in named:
            raise ValueError(f"--input NAME=FILE: {'empty' if not name else 'repeated'} input "
                             f"name in {spec!r}")
        named[name] = load_input(Path(file), mmap=mmap)
    if named and plain:
        raise ValueError(f"--input: name every input (NAME=FILE) or give one unnamed FILE, not "
                         f"both; unnamed: {plain}")
    if len(plain) > 1:
        raise ValueError(f"--input: several inputs need names (NAME=FILE, see `metadata` for "
                         f"the model's inputs); got {plain}")
    return named or load_input(Path(plain[0]), mmap=mmap)


def result_to_dict(result: PredictResult,
                   labels: Mapping[str, Sequence[str]] | Sequence[str] = ()) -> dict[str, Any]:
    """A JSON-ready dict of every statistic present in ``result`` (arrays as nested lists).

    Args:
        result: The prediction.
        labels: Class labels: a sequence for a one-head model, head name -> labels for a model
            with several heads (used for classification heads only).
    """
    out: dict[str, Any] = {
        "model": result.model, "version": result.version, "task": result.task,
        "samples_used": result.samples_used, "seed": result.seed,
        "request_id": result.request_id, "calibrated": result.calibrated,
    }
    if result.heads:
        by_head = labels if isinstance(labels, Mapping) else {}
        out["heads"] = {name: {"task": head.task, **_statistics_dict(head, by_head.get(name, ()))}
                        for name, head in result.heads.items()}
    else:
        out.update(_statistics_dict(result, () if isinstance(labels, Mapping) else labels))
    return out


def _statistics_dict(stats: Statistics, labels: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _ARRAYS:
        value = getattr(stats, name)
        if value is not None:
            out[name] = value.tolist()
    if stats.intervals:
        out["intervals"] = {
            str(level): {"lower": lower.tolist(), "upper": upper.tolist()}
            for level, (lower, upper) in sorted(stats.intervals.items())
        }
    if labels and stats.predicted_class is not None:
        out["predicted_label"] = [class_label(labels, int(c)) for c in stats.predicted_class]
    if stats.prediction_sets:
        out["prediction_sets"] = {str(level): members.tolist()
                                  for level, members in sorted(stats.prediction_sets.items())}
    if stats.abstain is not None:
        out["abstain"] = stats.abstain.tolist()
    return out


def write_output(path: Path, result: PredictResult,
                 labels: Mapping[str, Sequence[str]] | Sequence[str] = ()) -> None:
    """Write ``result`` as ``.json`` (everything) or ``.csv`` (one line per input row).

    With several heads, CSV columns are named ``<head>/<column>``. ``labels`` as in
    :func:`result_to_dict`.

    Raises:
        ValueError: unknown suffix.
        OSError: the file cannot be written.
    """
    suffix = path.suffix.lower()
    if suffix == ".json":
        path.write_text(json.dumps(result_to_dict(result, labels), indent=2) + "\n")
    elif suffix == ".csv":
        if result.heads:
            by_head = labels if isinstance(labels, Mapping) else {}
            columns = [(f"{name}/{column}", values) for name, head in result.heads.items()
                       for column, values in _columns(head, by_head.get(name, ()))]
        else:
            columns = _columns(result, () if isinstance(labels, Mapping) else labels)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["row", *(name for name, _ in columns)])
            writer.writerows([i, *(_cell(values[i]) for _, values in columns)]
                             for i in range(result.rows))
    else:
        raise ValueError(f"output must be a {' or '.join(OUTPUT_SUFFIXES)} file, got {str(path)!r}")


_ARRAYS = ("mean", "std", "predictive_std", "standard_error", "predicted_class",
           "predictive_entropy", "expected_entropy", "mutual_information", "variation_ratio",
           "raw_samples")
# Per-row statistics with one column each; the (rows, outputs) ones get one column per output.
_PER_ROW = ("predicted_class", "predictive_entropy", "expected_entropy", "mutual_information",
            "variation_ratio")
_PER_OUTPUT = ("mean", "std", "predictive_std", "standard_error")


def _columns(stats: Statistics, labels: Sequence[str]) -> list[tuple[str, Any]]:
    columns: list[tuple[str, Any]] = []
    for name in _PER_OUTPUT:
        value = getattr(stats, name)
        if value is not None:
            columns += _split(name, value)
    for level, (lower, upper) in sorted(stats.intervals.items()):
        columns += _split(f"lower_{level:g}", lower) + _split(f"upper_{level:g}", upper)
    for name in _PER_ROW:
        value = getattr(stats, name)
        if value is not None:
            columns.append((name, value))
    if labels and stats.predicted_class is not None:
        columns.append(("predicted_label",
                        [class_label(labels, int(c)) for c in stats.predicted_class]))
    for level, members in sorted(stats.prediction_sets.items()):
        columns.append((f"set_{level:g}", ["|".join(class_label(labels, int(k))
                                                    for k in np.flatnonzero(row))
                                           for row in members]))
    if stats.abstain is not None:
        columns.append(("abstain", stats.abstain))
    return columns


def _cell(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _split(name: str, value: np.ndarray) -> list[tuple[str, Any]]:
    matrix = value.reshape(value.shape[0], -1)
    if matrix.shape[1] == 1:
        return [(name, matrix[:, 0])]
    return [(f"{name}_{j}", matrix[:, j]) for j in range(matrix.shape[1])]


def class_label(labels: Sequence[str], cls: int) -> str:
    """The label of class ``cls``, or its index when there is no such label."""
    return labels[cls] if 0 <= cls < len(labels) else str(cls)
