"""How the ``mcdropout`` command prints predictions and metrics: text lines and JSON."""

from __future__ import annotations

from typing import Any

import numpy as np


def header(info: Any, prediction: Any) -> str:
    """The line above a prediction's rows: model, passes, seed and what each row shows."""
    spread = ("mean ± predictive std (MC spread and noise)"
              if prediction.predictive_std is not None else "mean ± MC std")
    what = spread if info.task == "regression" else "class, probability, entropy, MI (nats)"
    return (f"{info.name} v{info.version}: {prediction.samples} MC dropout passes, "
            f"seed {prediction.seed}; {what}")


def prediction_lines(prediction: Any, info: Any, truth: np.ndarray | None = None) -> list[str]:
    """One line a row: the class, its probability, entropy and MI (classification), or each
    target's mean ± spread with its interval (regression); ``truth`` beside them if given."""
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


def prediction_json(prediction: Any, info: Any) -> dict[str, Any]:
    """The prediction as one JSON-ready document: the model, every statistic it holds, and its
    intervals keyed by level."""
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


def format_metrics(values: dict[str, float]) -> str:
    """``name value`` pairs on one line, four significant digits."""
    return ", ".join(f"{k} {v:.4g}" for k, v in values.items())


def model_lines(info: Any, predictor: Any | None, layers: Any) -> list[str]:
    """A stored model described for people: every input (shape, None for a variable
    dimension, dtype, the ids an Embedding accepts), every head (task, values a row, labels,
    tau) and the stochastic layers with their rates (an RNN's recurrent rate too).

    ``predictor``: the model's ``MCDropoutPredictor``, for what only the engine knows (head
    widths, id ranges, a legacy head's name); None when the model could not be built.
    """
    from mcdropout.importing import per_row

    lines = [f"{info.name} v{info.version}: default {info.default_samples} passes, at most "
             f"{info.max_samples}" + (f"; {info.description}" if info.description else "")]
    lines.append("inputs (None: a variable dimension):")
    specs = list(predictor.inputs) if predictor is not None else []
    for i, item in enumerate(info.input_infos()):
        shape = "(" + ", ".join(str(d) for d in item.shape) + ("," if len(item.shape) == 1
                                                                else "") + ")"
        extra = "" if item.feature_mean is None and item.feature_std is None else ", standardised"
        limit = specs[i].id_limit if i < len(specs) else None
        if limit is not None:
            extra += f", ids 0..{limit - 1}"
        lines.append(f"  {specs[i].name if i < len(specs) else item.name}: shape {shape}, "
                     f"{item.dtype}{extra}")
    lines.append("heads:")
    heads = list(predictor.heads) if predictor is not None else []
    for i, head in enumerate(info.head_infos()):
        name, parts = head.name, [head.task]
        if i < len(heads):
            name = heads[i].name
            parts.append(per_row(head.task, heads[i].width))
        if head.labels:
            parts.append("labels " + ", ".join(head.labels))
        if head.tau is not None:
            parts.append(f"tau {head.tau:g}")
        if head.noise == "learned":
            parts.append("learned noise (a variance per row)")
        lines.append(f"  {name}: " + "; ".join(parts))
    lines.append("stochastic layers: " + ", ".join(
        f"{s.name} ({s.kind}, p={s.rate:g}"
        + (f", recurrent p={s.recurrent_rate:g}" if s.recurrent_rate else "") + ")"
        for s in layers))
    return lines


def calibration_lines(calibration: Any) -> list[str]:
    """A version's calibration for people: per head the method, rows and passes, temperature,
    abstention policy, drift percentiles, and a table of the scores before and after (the
    after scores are in-sample, on the calibration rows)."""
    lines = []
    for head in calibration.heads.values():
        extra = (f", scale {head.regression.scale}" if head.regression is not None else
                 f", temperature {head.temperature:.4g}" if head.temperature is not None else "")
        lines.append(f"head {head.head}: {head.task}, {head.method}{extra}; {head.rows} "
                     f"calibration rows, {head.samples} passes")
        keys = list(dict.fromkeys([*head.before, *head.after]))
        lines.append(f"  {'score':<18} {'before':>10} {'after':>10}")
        for key in keys:
            cells = [f"{d[key]:>10.4g}" if key in d else f"{'-':>10}"
                     for d in (head.before, head.after)]
            lines.append(f"  {key:<18} {cells[0]} {cells[1]}")
        lines.append(f"  drift reference ({head.drift.measure}): p95 {head.drift.p95:.4g}, "
                     f"p99 {head.drift.p99:.4g}")
        policy = head.abstention
        if policy is not None:
            lines.append(f"  abstain when {policy.measure} > {policy.threshold:.4g} (target "
                         f"{policy.target} {policy.target_value:g}; on the calibration rows: "
                         f"keeps {policy.coverage:.1%}, risk {policy.risk:.4g})")
        else:
            lines.append("  no abstention policy")
    return lines
