"""Plain-text tables for the command line."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mcdropout_client._io import class_label
from mcdropout_client.results import (
    CLASSIFICATION,
    HeadCalibration,
    ModelDescription,
    ModelSummary,
    PredictResult,
    Statistics,
    TensorSpec,
)


def render(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = [header, *rows]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def prediction(result: PredictResult,
               labels: Mapping[str, Sequence[str]] | Sequence[str] = ()) -> str:
    """A summary line and one table row per input row (per output for regression).

    A model with several heads gets one titled table per head. ``labels``: a sequence for a
    one-head model, head name -> labels for several heads.
    """
    kind = f"{len(result.heads)} heads" if result.heads else result.task
    kind += ", calibrated" if result.calibrated else ""
    title = (f"model {result.model} v{result.version} ({kind}), "
             f"{result.samples_used} passes, seed {result.seed}, request {result.request_id}")
    if not result.heads:
        return title + "\n" + _statistics(result, result.task, () if isinstance(
            labels, Mapping) else labels)
    by_head = labels if isinstance(labels, Mapping) else {}
    return title + "".join(f"\n\nhead {name} ({head.task})\n"
                           + _statistics(head, head.task, by_head.get(name, ()))
                           for name, head in result.heads.items())


def _statistics(stats: Statistics, task: str, labels: Sequence[str]) -> str:
    if task == CLASSIFICATION and stats.predicted_class is not None:
        return _classification(stats, labels)
    return _regression(stats, labels)


def _regression(result: Statistics, labels: Sequence[str]) -> str:
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
    header += ["abstain"] if result.abstain is not None else []
    rows = []
    for i in range(mean.shape[0]):
        for j in range(mean.shape[1]):
            center = _num(mean[i, j]) + (f" ± {_num(std[i, j])}" if std is not None else "")
            cells = [str(i), labels[j] if j < len(labels) else str(j), center]
            cells += [_num(pstd[i, j])] if pstd is not None else []
            cells += [f"[{_num(lo[i, j])}, {_num(hi[i, j])}]" for _, lo, hi in intervals]
            cells += [_yes(result.abstain[i])] if result.abstain is not None else []
            rows.append(cells)
    return render(header, rows)


def _classification(result: Statistics, labels: Sequence[str]) -> str:
    assert result.predicted_class is not None
    header = ["row", "class", "probability"]
    optional = [("entropy", result.predictive_entropy),
                ("mutual_info", result.mutual_information),
                ("variation_ratio", result.variation_ratio)]
    present = [(name, values) for name, values in optional if values is not None]
    header += [name for name, _ in present]
    sets = sorted(result.prediction_sets.items())
    header += [f"{level:.4g} set" for level, _ in sets]
    header += ["abstain"] if result.abstain is not None else []
    rows = []
    for i, cls in enumerate(int(c) for c in result.predicted_class):
        label = f"{cls} ({labels[cls]})" if 0 <= cls < len(labels) else str(cls)
        prob = _num(_matrix(result.mean)[i, cls]) if result.mean is not None else "-"
        cells = [str(i), label, prob, *(_num(values[i]) for _, values in present)]
        cells += ["{" + ", ".join(class_label(labels, int(k)) for k in np.flatnonzero(members[i]))
                  + "}" for _, members in sets]
        cells += [_yes(result.abstain[i])] if result.abstain is not None else []
        rows.append(cells)
    return render(header, rows)


def models(summaries: Sequence[ModelSummary]) -> str:
    """One row per model: name, task, versions."""
    rows = [[m.name, m.task, ", ".join(map(str, m.versions)),
             ", ".join(i.name for i in m.inputs) or "-",
             ", ".join(f"{h.name} ({h.task})" for h in m.heads) or "-"] for m in summaries]
    header = ["model", "task", "versions", "inputs", "heads"]
    return render(header, rows) if rows else "(no models)"


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
        *_inputs_and_heads(meta),
        ("dropout layers", layers or "-"),
        ("default samples", str(meta.default_samples)), ("max samples", str(meta.max_samples)),
        ("max rows", str(meta.max_rows) if meta.max_rows else "unlimited"),
        ("tau", f"{meta.tau:.6g}" if meta.tau is not None else "unknown"),
        ("noise", "learned (a variance per row)" if meta.noise == "learned" else meta.noise),
        ("description", meta.description or "-"),
        *_calibration(meta.calibration, several=len(meta.heads) > 1),
    ]
    width = max(len(key) for key, _ in pairs)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in pairs)


def _inputs_and_heads(meta: ModelDescription) -> list[tuple[str, str]]:
    # One input and one head (or an older server that lists none): today's lines.
    if len(meta.inputs) <= 1 and len(meta.heads) <= 1:
        return [("input", _tensor(meta.input)), ("output", _tensor(meta.output)),
                ("labels", ", ".join(meta.labels) or "-")]
    lines = [(f"input {spec.name}", _tensor(spec)) for spec in meta.inputs]
    for head in meta.heads:
        tau = f", tau {head.tau:.6g}" if head.tau is not None else ""
        tau += ", learned noise" if head.noise == "learned" else ""
        labels = f", labels {', '.join(head.labels)}" if head.labels else ""
        lines.append((f"head {head.name}", f"{head.task} {_tensor(head.output)}{tau}{labels}"))
    return lines


def _calibration(calibration: Sequence[HeadCalibration], several: bool) -> list[tuple[str, str]]:
    if not calibration:
        return [("calibration", "none (`mcdropout calibrate` makes a calibrated version)")]
    lines = []
    for cal in calibration:
        suffix = f" {cal.head}" if several else ""
        how = f"{cal.method} on {cal.rows} rows"
        how += f", temperature {cal.temperature:.4g}" if cal.temperature is not None else ""
        how += f", scale {cal.scale}" if cal.scale else ""
        lines.append((f"calibration{suffix}", how))
        scores = [f"{key} {_num(cal.before[key])} -> {_num(cal.after[key])}"
                  for key in sorted(cal.before) if key in cal.after]
        if scores:
            lines.append((f"calibration scores{suffix}", "; ".join(scores)))
        policy = cal.abstention
        if policy is not None:
            lines.append((f"abstention{suffix}", (
                f"{policy.measure} > {policy.threshold:.4g} (for {policy.target} "
                f"{policy.target_value:g}: risk {_num(policy.risk)}, keeps "
                f"{policy.coverage:.1%} of the calibration rows)")))
        if cal.drift_measure:
            lines.append((f"drift reference{suffix}", f"{cal.drift_measure} p95 "
                          f"{_num(cal.drift_p95)}, p99 {_num(cal.drift_p99)}"))
    return lines


def _yes(value: object) -> str:
    return "yes" if value else "no"


def _tensor(spec: TensorSpec) -> str:
    return f"{spec.dtype} {list(spec.shape)}"


def _matrix(value: np.ndarray) -> np.ndarray:
    return value.reshape(value.shape[0], -1)


def _num(value: float) -> str:
    return f"{float(value):.4g}"
