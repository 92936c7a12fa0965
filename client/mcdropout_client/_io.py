"""Files for the command line: reading input rows (.csv, .npy), writing results (.json, .csv)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from mcdropout_client.results import PredictResult

INPUT_SUFFIXES = (".csv", ".npy")
OUTPUT_SUFFIXES = (".json", ".csv")


def load_input(path: Path) -> np.ndarray:
    """Read input rows from a ``.npy`` array or a numeric ``.csv`` (an optional header row).

    Raises:
        ValueError: unknown suffix, unreadable file, empty or ragged CSV, a non-numeric cell.
    """
    suffix = path.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise ValueError(f"input must be a {' or '.join(INPUT_SUFFIXES)} file, got {str(path)!r}")
    try:
        if suffix == ".npy":
            return np.asarray(np.load(path, allow_pickle=False))
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


def result_to_dict(result: PredictResult, labels: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON-ready dict of every statistic present in ``result`` (arrays as nested lists)."""
    out: dict[str, Any] = {
        "model": result.model, "version": result.version, "task": result.task,
        "samples_used": result.samples_used, "seed": result.seed,
        "request_id": result.request_id,
    }
    for name in _ARRAYS:
        value = getattr(result, name)
        if value is not None:
            out[name] = value.tolist()
    if result.intervals:
        out["intervals"] = {
            str(level): {"lower": lower.tolist(), "upper": upper.tolist()}
            for level, (lower, upper) in sorted(result.intervals.items())
        }
    if labels and result.predicted_class is not None:
        out["predicted_label"] = [_label(labels, int(c)) for c in result.predicted_class]
    return out


def write_output(path: Path, result: PredictResult, labels: tuple[str, ...] = ()) -> None:
    """Write ``result`` as ``.json`` (everything) or ``.csv`` (one line per input row).

    Raises:
        ValueError: unknown suffix.
        OSError: the file cannot be written.
    """
    suffix = path.suffix.lower()
    if suffix == ".json":
        path.write_text(json.dumps(result_to_dict(result, labels), indent=2) + "\n")
    elif suffix == ".csv":
        header, rows = _csv_table(result, labels)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
    else:
        raise ValueError(f"output must be a {' or '.join(OUTPUT_SUFFIXES)} file, got {str(path)!r}")


_ARRAYS = ("mean", "std", "predictive_std", "standard_error", "predicted_class",
           "predictive_entropy", "expected_entropy", "mutual_information", "variation_ratio",
           "raw_samples")
# Per-row statistics with one column each; the (rows, outputs) ones get one column per output.
_PER_ROW = ("predicted_class", "predictive_entropy", "expected_entropy", "mutual_information",
            "variation_ratio")
_PER_OUTPUT = ("mean", "std", "predictive_std", "standard_error")


def _csv_table(result: PredictResult, labels: tuple[str, ...]) -> tuple[list[str], list[list[Any]]]:
    columns: list[tuple[str, np.ndarray]] = []
    for name in _PER_OUTPUT:
        value = getattr(result, name)
        if value is not None:
            columns += _split(name, value)
    for level, (lower, upper) in sorted(result.intervals.items()):
        columns += _split(f"lower_{level:g}", lower) + _split(f"upper_{level:g}", upper)
    for name in _PER_ROW:
        value = getattr(result, name)
        if value is not None:
            columns.append((name, value))
    header = ["row", *(name for name, _ in columns)]
    rows: list[list[Any]] = [
        [i, *(col[i].item() for _, col in columns)] for i in range(result.rows)
    ]
    if labels and result.predicted_class is not None:
        header.append("predicted_label")
        for row, cls in zip(rows, result.predicted_class, strict=True):
            row.append(_label(labels, int(cls)))
    return header, rows


def _split(name: str, value: np.ndarray) -> list[tuple[str, np.ndarray]]:
    matrix = value.reshape(value.shape[0], -1)
    if matrix.shape[1] == 1:
        return [(name, matrix[:, 0])]
    return [(f"{name}_{j}", matrix[:, j]) for j in range(matrix.shape[1])]


def _label(labels: tuple[str, ...], cls: int) -> str:
    return labels[cls] if 0 <= cls < len(labels) else str(cls)
