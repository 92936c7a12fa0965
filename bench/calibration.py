"""Calibrating an over-confident MC dropout classifier, and seeing a known shift without labels.

The data: a mixture of K Gaussian classes in d dimensions whose means lie close enough that the
classes overlap (the Bayes classifier errs on about a third of the rows). The model: an MC
dropout MLP from :func:`mcdropout.modeling.builders.build_mlp`, trained without weight decay on
few rows for many epochs, so that its probabilities are over-confident. Per repetition (its own
seed: data, initialisation, dropout masks) the script

1. fits the calibration with :func:`mcdropout.calibration.calibrate` on held-out i.i.d. rows
   (temperature by NLL of the per-pass scaled predictive, LAC sets, the MI drift reference);
2. scores an i.i.d. test set of thousands of rows before and after temperature scaling
   (accuracy, NLL, ECE), and the prediction sets served by ``predict(..., calibrated=True,
   set_levels=...)`` (coverage and mean size at 90% and 95%);
3. scores a shifted test set (the same classes, each class's noise inflated by ``--shift``:
   rows drawn farther from the training rows) the same way, and the share of its rows whose
   mutual information exceeds the calibration rows' 95th and 99th percentiles, which is the
   drift signal a server exports before any label arrives.

Figures are means ± standard error over the repetitions. With ``--update-docs`` the block
replaces the text between ``<!-- calibration:begin -->`` and ``<!-- calibration:end -->`` in
docs/calibration.md; raw figures go to bench/results/calibration-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import common

NAME = "calibration"
DOC = common.BENCH_DIR.parent / "docs" / "calibration.md"
SET_LEVELS = (0.9, 0.95)


@dataclass(frozen=True)
class Setup:
    """The generated task and the deliberately over-confident training.

    Attributes:
        classes, features: K classes in d dimensions.
        separation: Standard deviation of each coordinate of the class means (unit noise).
        train_rows, calibration_rows, test_rows: Rows of each i.i.d. set (the shifted test set
            has ``test_rows`` too).
        shift: Factor on the class noise of the shifted test set.
        hidden, dropout, epochs, batch_size: The MLP and its training (Adam, no decay).
        samples: Passes T of every prediction and of the calibration.
    """

    classes: int = 4
    features: int = 8
    separation: float = 0.75
    train_rows: int = 300
    calibration_rows: int = 1000
    test_rows: int = 5000
    shift: float = 2.0
    hidden: tuple[int, ...] = (256, 256)
    dropout: float = 0.1
    epochs: int = 400
    batch_size: int = 100
    samples: int = 100


def draw(setup: Setup, means: np.ndarray, rows: int, rng: np.random.Generator,
         noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the mixture: (x (rows, d) float32, labels (rows,) int64), classes equally likely."""
    labels = rng.integers(0, setup.classes, rows)
    x = means[labels] + noise * rng.standard_normal((rows, setup.features))
    return x.astype(np.float32), labels


def train(setup: Setup, x: np.ndarray, labels: np.ndarray, seed: int) -> Any:
    """The over-confident classifier: no weight decay, ``epochs`` passes over few rows."""
    import keras

    from mcdropout.modeling import builders

    keras.utils.set_random_seed(seed)
    model = builders.build_mlp(setup.features, setup.classes, hidden=setup.hidden,
                               dropout=setup.dropout, task="classification", weight_decay=0.0)
    # The same loss and optimiser, with many steps per call: the steps are tiny and per-call
    # overhead would otherwise dominate the script's run time.
    model.compile(optimizer=model.optimizer, loss=model.loss, steps_per_execution=64)
    model.fit(x, labels, epochs=setup.epochs, batch_size=setup.batch_size, verbose=0)
    return model


def classifier_scores(labels: np.ndarray, prediction: Any) -> dict[str, float]:
    """Accuracy, NLL and ECE of a prediction's mean, and its sets' coverage and mean size."""
    from mcdropout.evaluation import scores

    out = {"accuracy": scores.accuracy(labels, prediction.mean),
           "nll": scores.classification_nll(labels, prediction.mean),
           "ece": scores.expected_calibration_error(labels, prediction.mean)}
    for found in prediction.prediction_sets:
        members = found.members
        out[f"set_coverage@{found.level:g}"] = float(members[np.arange(len(labels)), labels].mean())
        out[f"set_size@{found.level:g}"] = float(members.sum(axis=1).mean())
        out[f"empty_sets@{found.level:g}"] = float((members.sum(axis=1) == 0).mean())
    return out


def repetition(setup: Setup, seed: int) -> dict[str, Any]:
    """One repetition: data, training, calibration, and the i.i.d. and shifted scores."""
    from mcdropout.calibration import calibrate
    from mcdropout.engine import MCDropoutPredictor
    from mcdropout.engine.prediction import Prediction

    rng = np.random.default_rng(seed)
    means = setup.separation * rng.standard_normal((setup.classes, setup.features))
    x_train, y_train = draw(setup, means, setup.train_rows, rng)
    x_cal, y_cal = draw(setup, means, setup.calibration_rows, rng)
    x_test, y_test = draw(setup, means, setup.test_rows, rng)
    x_shift, y_shift = draw(setup, means, setup.test_rows, rng, noise=setup.shift)
    started = time.perf_counter()
    model = train(setup, x_train, y_train, seed)
    trained = time.perf_counter()
    plain = MCDropoutPredictor(model, task="classification", default_samples=setup.samples)
    calibration = calibrate(plain, x_cal, y_cal, samples=setup.samples, seed=seed,
                            report_levels=SET_LEVELS)
    (head,) = calibration.heads.values()
    served = MCDropoutPredictor(model, task="classification", default_samples=setup.samples,
                                calibration=calibration)
    out: dict[str, Any] = {"seed": seed, "temperature": head.temperature,
                           "drift_p95": head.drift.p95, "drift_p99": head.drift.p99}
    for name, x, y in (("iid", x_test, y_test), ("shifted", x_shift, y_shift)):
        before = plain.predict(x, setup.samples, seed + 1)
        after = served.predict(x, setup.samples, seed + 1, calibrated=True, set_levels=SET_LEVELS)
        assert isinstance(after, Prediction) and after.mutual_information is not None
        mi = after.mutual_information
        out[name] = {"uncalibrated": classifier_scores(y, before),
                     "calibrated": classifier_scores(y, after),
                     "above_p95": float(np.mean(mi > head.drift.p95)),
                     "above_p99": float(np.mean(mi > head.drift.p99))}
    out["seconds"] = {"train": trained - started, "calibrate_and_score": time.perf_counter() - trained}
    return out


def _mean_se(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    array = np.asarray(values, dtype=np.float64) * scale
    se = array.std(ddof=1) / math.sqrt(len(array)) if len(array) > 1 else math.nan
    return f"{array.mean():.{digits}f} ± {se:.{digits}f}" if math.isfinite(se) \
        else f"{array.mean():.{digits}f}"


def render(setup: Setup, runs: list[dict[str, Any]], seconds: float) -> list[str]:
    """The setup line and the two tables (i.i.d. before/after; i.i.d. against shifted)."""
    def pick(part: str, kind: str, key: str) -> list[float]:
        return [r[part][kind][key] for r in runs]

    def percent(values: list[float]) -> str:
        return _mean_se(values, 100.0, 1)

    iid_rows = [["accuracy (%)", percent(pick("iid", "uncalibrated", "accuracy")),
                 percent(pick("iid", "calibrated", "accuracy"))],
                ["NLL (nats)", _mean_se(pick("iid", "uncalibrated", "nll")),
                 _mean_se(pick("iid", "calibrated", "nll"))],
                ["ECE, 15 bins (%)", percent(pick("iid", "uncalibrated", "ece")),
                 percent(pick("iid", "calibrated", "ece"))]]
    for level in SET_LEVELS:
        iid_rows += [[f"{level:.0%} set coverage (%)", "-",
                      percent(pick("iid", "calibrated", f"set_coverage@{level:g}"))],
                     [f"{level:.0%} mean set size (classes)", "-",
                      _mean_se(pick("iid", "calibrated", f"set_size@{level:g}"), digits=2)],
                     [f"{level:.0%} empty sets (%)", "-",
                      percent(pick("iid", "calibrated", f"empty_sets@{level:g}"))]]
    shift_rows = [["accuracy (%)", *(percent(pick(p, "calibrated", "accuracy"))
                                     for p in ("iid", "shifted"))],
                  ["ECE after temperature scaling (%)",
                   *(percent(pick(p, "calibrated", "ece")) for p in ("iid", "shifted"))]]
    for level in SET_LEVELS:
        shift_rows += [[f"{level:.0%} set coverage (%)",
                        *(percent(pick(p, "calibrated", f"set_coverage@{level:g}"))
                          for p in ("iid", "shifted"))],
                       [f"{level:.0%} mean set size (classes)",
                        *(_mean_se(pick(p, "calibrated", f"set_size@{level:g}"), digits=2)
                          for p in ("iid", "shifted"))]]
    for q in ("p95", "p99"):
        shift_rows.append([f"rows with MI above the calibration {q} (%)",
                           *(percent([r[p][f"above_{q}"] for r in runs])
                             for p in ("iid", "shifted"))])
    temperatures = _mean_se([r["temperature"] for r in runs], digits=2)
    setup_line = (
        f"{len(runs)} repetitions (seeds {runs[0]['seed']}..{runs[-1]['seed']}), mean ± SE over "
        f"them; {setup.classes} Gaussian classes in {setup.features} dimensions (mean "
        f"coordinates N(0, {setup.separation}²), unit noise); MLP {list(setup.hidden)} ReLU, "
        f"dropout {setup.dropout} (inputs too), no weight decay, Adam, {setup.epochs} epochs of "
        f"batches of {setup.batch_size} on {setup.train_rows} rows; calibration on "
        f"{setup.calibration_rows} i.i.d. rows; test sets of {setup.test_rows} rows; "
        f"T = {setup.samples}. Fitted temperature "
        f"{temperatures}. Shift: the same classes with noise x{setup.shift:g}. "
        f"Wall time {seconds:.0f} s.")
    return [setup_line,
            common.markdown_table(["i.i.d. test set", "uncalibrated", "temperature-scaled + LAC"],
                                  iid_rows),
            common.markdown_table(["calibrated answers", "i.i.d. test set",
                                   f"shifted test set (noise x{setup.shift:g})"], shift_rows)]


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repetitions", type=int, default=5, help="default %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="first seed; default %(default)s")
    parser.add_argument("--epochs", type=int, default=Setup.epochs, help="default %(default)s")
    parser.add_argument("--shift", type=float, default=Setup.shift,
                        help="noise factor of the shifted test set; default %(default)s")
    parser.add_argument("--update-docs", action="store_true",
                        help=f"write the block into {DOC.relative_to(DOC.parents[1])} between "
                             f"the {NAME} markers")
    args = parser.parse_args(argv)
    setup = Setup(epochs=args.epochs, shift=args.shift)
    info = common.machine_info()
    started = time.perf_counter()
    runs = []
    for seed in range(args.seed, args.seed + args.repetitions):
        runs.append(repetition(setup, seed))
        print(f"seed {seed}: {runs[-1]['seconds']}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    load_after = os.getloadavg()[0]
    command = "python -m bench.calibration" + "".join(
        f" {flag} {value}" for flag, value, default in
        (("--repetitions", args.repetitions, 5), ("--seed", args.seed, 0),
         ("--epochs", args.epochs, Setup.epochs), ("--shift", args.shift, Setup.shift))
        if value != default)
    block = "\n\n".join([f"`{command}`. {common.header_line(info, load_after)}",
                         *render(setup, runs, seconds)])
    print(block)
    path = common.write_results(NAME, {"machine": info, "load_average_1min_after": load_after,
                                       "setup": vars(setup), "seconds": seconds, "runs": runs})
    print(f"raw figures: {path}", file=sys.stderr)
    if args.update_docs:
        common.update_readme(NAME, block, readme=Path(DOC))
    return 0


if __name__ == "__main__":
    sys.exit(main())
