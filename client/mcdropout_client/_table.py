"""Plain-text tables for the command line."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mcdropout_client.results import (
    CLASSIFICATION,
    ModelDescription,
    ModelSummary,
    PredictResult,
)


def render(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = [header, *rows]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def prediction(result: PredictResult, labels: Sequence[str] = ()) -> str:
    """A summary line and one table row per input row (per output for regression)."""
    title = (f"model {result.model} v{result.version} ({result.task}), "
             f"{result.samples_used} passes, seed {result.seed}, request {result.request_id}")
    if result.task == CLASSIFICATION and result.predicted_class is not None:
        return title + "\n" + _classification(result, labels)
    return title + "\n" + _regression(result, labels)


def _regression(result: PredictResult, labels: Sequence[str]) -> str:
    if result.mean is None:
        return "(no mean requested)"
    mean = _matrix(result.mean)
    std = _matrix(result.std) if result.std is not None else None
    pstd = _matrix(result.predictive_std) if result.predictive_std is not None else None
    intervals = [(level, _matrix(lower), _matrix(upper))
                 for level, (lower, upper) in sorted(result.intervals.items())]
    header = ["row", "output", "mean ± std" if std is not None else "mean"]
    header += ["predictive_std"] if pstd is not None else []
    header += [f"{level:.4g} interval" for level, _, _ in intervals]
    rows = []
    for i in range(mean.shape[0]):
        for j in range(mean.shape[1]):
            center = _num(mean[i, j]) + (f" ± {_num(std[i, j])}" if std is not None else "")
            cells = [str(i), labels[j] if j < len(labels) else str(j), center]
            cells += [_num(pstd[i, j])] if pstd is not None else []
            cells += [f"[{_num(lo[i, j])}, {_num(hi[i, j])}]" for _, lo, hi in intervals]
            rows.append(cells)
    return render(header, rows)


def _classification(result: PredictResult, labels: Sequence[str]) -> str:
    assert result.predicted_class is not None
    header = ["row", "class", "probability"]
    optional = [("entropy", result.predictive_entropy),
                ("mutual_info", result.mutual_information),
                ("variation_ratio", result.variation_ratio)]
    present = [(name, values) for name, values in optional if values is not None]
    header += [name for name, _ in present]
    rows = []
    for i, cls in enumerate(int(c) for c in result.predicted_class):
        label = f"{cls} ({labels[cls]})" if 0 <= cls < len(labels) else str(cls)
        prob = _num(_matrix(result.mean)[i, cls]) if result.mean is not None else "-"
        rows.append([str(i), label, prob, *(_num(values[i]) for _, values in present)])
    return render(header, rows)


def models(summaries: Sequence[ModelSummary]) -> str:
    """One row per model: name, task, versions."""
    rows = [[m.name, m.task, ", ".join(map(str, m.versions))] for m in summaries]
    return render(["model", "task", "versions"], rows) if rows else "(no models)"


def description(meta: ModelDescription) -> str:
    """``key: value`` lines describing a model."""
    layers = "; ".join(
        f"{d.name} ({d.kind}, rate {d.rate:g}"
        + (f", recurrent {d.recurrent_rate:g})" if d.recurrent_rate else ")")
        for d in meta.dropout_layers
    )
    pairs = [
        ("name", meta.name), ("version", str(meta.version)),
        ("versions", ", ".join(map(str, meta.versions))), ("task", meta.task),
        ("input", f"{meta.input.dtype} {list(meta.input.shape)}"),
        ("output", f"{meta.output.dtype} {list(meta.output.shape)}"),
        ("labels", ", ".join(meta.labels) or "-"), ("dropout layers", layers or "-"),
        ("default samples", str(meta.default_samples)), ("max samples", str(meta.max_samples)),
        ("max rows", str(meta.max_rows) if meta.max_rows else "unlimited"),
        ("tau", f"{meta.tau:.6g}" if meta.tau is not None else "unknown"),
        ("description", meta.description or "-"),
    ]
    width = max(len(key) for key, _ in pairs)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in pairs)


def _matrix(value: np.ndarray) -> np.ndarray:
    return value.reshape(value.shape[0], -1)


def _num(value: float) -> str:
    return f"{float(value):.4g}"
