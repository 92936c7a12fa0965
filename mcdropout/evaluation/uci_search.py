"""The UCI benchmark's hyper-parameter search: every split's grid of (dropout rate, tau), trained
on the split's fitting rows and scored on its validation rows, extended past an edge that holds
the best setting (:mod:`mcdropout.modeling.edgesearch`) unless the protocol asks for the given
grid only.

Each round trains the new settings of every split together, as one stack
(:mod:`mcdropout.modeling.gridfit`); the first round is the whole given grid of every split, so
a search that stops there trains exactly the networks the published protocol trains.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcdropout.evaluation import scores
from mcdropout.evaluation.uci_data import DEFAULT_TAU_STANDARDISED, UCIDataset
from mcdropout.modeling import builders, edgesearch, gridfit, selection, tables

# Sampled values (networks x passes x rows) held at once while scoring the validation grid.
_VALIDATION_VALUES_PER_CHUNK = 25_000_000
# Passes x rows per log-likelihood evaluation of the tau refinement (a few float64 copies each).
_REFINE_VALUES_PER_CHUNK = 4_000_000
# Golden-section steps of the tau refinement: the bracket shrinks to 0.618**25 ~ 6e-6 of itself.
_REFINE_STEPS = 25


@dataclass(frozen=True)
class GridPoint:
    """One setting scored on the validation rows (original target units).

    Attributes:
        dropout, tau: The setting (with a learned noise, tau enters the weight decay only).
        validation_ll: Mean MC-mixture log-likelihood of the validation rows.
        validation_rmse: RMSE of the MC mean on them.
        round: The search round that added it (0: the given grid).
    """

    dropout: float
    tau: float
    validation_ll: float
    validation_rmse: float
    round: int = 0


@dataclass(frozen=True)
class Scaled:
    """Rows standardised with their own statistics (ddof 0; a constant column gets std 1)."""

    x: np.ndarray
    y: np.ndarray
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: np.ndarray
    y_std: np.ndarray

    @classmethod
    def of(cls, dataset: UCIDataset, rows: np.ndarray) -> Scaled:
        x, y = dataset.x[rows], dataset.y[rows]
        x_mean, x_std = tables.standardization(x)
        y_mean, y_std = tables.standardization(y)
        return cls((x - x_mean) / x_std, (y - y_mean) / y_std, x_mean, x_std, y_mean, y_std)

    def tau_grid(self, dataset: UCIDataset) -> tuple[float, ...]:
        """The tau values to search from, in the targets' units: the data set's grid, or without
        one :data:`~mcdropout.evaluation.uci_data.DEFAULT_TAU_STANDARDISED` over these rows'
        target variance (training rows only: the test rows do not shape the grid)."""
        if dataset.tau_values:
            return dataset.tau_values
        variance = float(self.y_std[0]) ** 2
        return tuple(float(f"{t / variance:.4g}") for t in DEFAULT_TAU_STANDARDISED)


@dataclass(frozen=True)
class Training:
    """What every network of a benchmark shares: epochs, batch, prior length-scale, noise, and
    whether each layer learns its dropout rate (concrete dropout)."""

    epochs: int
    batch_size: int
    length_scale: float
    hidden: int
    noise: str
    concrete: bool = False

    def dropout_grid(self, dataset: UCIDataset) -> tuple[float, ...]:
        """The dropout rates to search: the data set's grid, or with concrete dropout the one
        rate every layer starts from (the rates are learned, not searched)."""
        return (builders.CONCRETE_INITIAL_RATE,) if self.concrete else dataset.dropout_rates


def search(dataset: UCIDataset, training: Training, fit_sets: Sequence[Scaled],
           validation: Sequence[tuple[np.ndarray, np.ndarray]], *, extend: bool, rounds: int,
           passes: int, seeds: Sequence[int], seed: int, say: Callable[[str], None],
           refine: bool = False, margin: float = selection.DEFAULT_MARGIN
           ) -> list[tuple[GridPoint, list[GridPoint], dict[str, Any]]]:
    """Search every split's grid; per split the best point, every point tried (in the order
    tried) and the search's log (:meth:`EdgeSearch.log`).

    Args:
        dataset: Its ``dropout_rates`` (see :meth:`Training.dropout_grid`) and ``tau_values``
            (see :meth:`Scaled.tau_grid`) are the given grid.
        training: The networks' recipe.
        fit_sets: Per split, the standardised fitting rows.
        validation: Per split, the validation (inputs, targets) in original units.
        extend: Extend past edges (False: the given grid only).
        rounds: Extension rounds allowed.
        passes: MC passes T for the validation scores.
        seeds: Per split, the dropout seed of its validation passes.
        seed: Seeds the first round's training; later rounds derive theirs from it.
        say: Progress lines.
        margin: Standard errors (of the per-row validation log-likelihood difference) by
            which a setting added past the grid must beat the split's current choice
            (:func:`mcdropout.modeling.selection.choose`); 0: the highest validation score.
        refine: Fixed noise only: then refine each split's tau by :func:`refine_tau`; the log
            gets ``refined`` (the tau, its validation log-likelihood, the grid tau's on the same
            passes, the bracket).
    """
    searches = [edgesearch.EdgeSearch(
        (edgesearch.Axis.of("dropout", training.dropout_grid(dataset)),
         edgesearch.Axis.of("tau", fit.tau_grid(dataset))), extend=extend, max_rounds=rounds,
        margin=margin)
        for fit in fit_sets]
    points: list[dict[tuple[float, ...], GridPoint]] = [{} for _ in fit_sets]
    networks: list[dict[tuple[float, ...], gridfit.MLPStack]] = [{} for _ in fit_sets]
    round_seeds = iter(np.random.SeedSequence(seed).generate_state(rounds + 1)[1:])
    current = [0]

    def announce(round_: int, count: int) -> None:
        current[0] = round_
        splits = len({i for i, s in enumerate(searches) if s.pending()})
        say(f"{dataset.name}: search round {round_}: {count} networks ({splits} splits) on "
            f"{len(fit_sets[0].x)} rows, {training.epochs} epochs")

    def score(todo: list[tuple[int, tuple[float, ...]]]) -> list[edgesearch.Scored]:
        # Round 0 keeps the seed of the published protocol's single grid.
        round_seed = seed if current[0] == 0 else int(next(round_seeds))
        stack = fit(training, [fit_sets[i] for i, _ in todo], [s for _, s in todo],
                    round_seed, say)
        out: list[edgesearch.Scored] = [0.0] * len(todo)
        for split in sorted({i for i, _ in todo}):
            index = [k for k, (i, _) in enumerate(todo) if i == split]
            settings = [todo[k][1] for k in index]
            scored = _score(stack.select(index), fit_sets[split], *validation[split], settings,
                            passes, seeds[split], current[0])
            for k, (point, rows) in zip(index, scored, strict=True):
                points[split][todo[k][1]] = point
                if refine:  # kept for the refinement: a network's weights are a few KiB
                    networks[split][todo[k][1]] = stack.select([k])
                out[k] = (point.validation_ll, rows)
        return out

    edgesearch.run_searches(searches, score, announce)
    results = []
    for i, (s, found) in enumerate(zip(searches, points, strict=True)):
        tried = [found[t.setting] for t in s.trials]
        best, log = found[s.best().setting], s.log()
        if refine and training.noise == "fixed":
            taus = sorted({p.tau for p in tried})
            log["refined"] = refine_tau(networks[i][s.best().setting], fit_sets[i],
                                        *validation[i], best.tau, taus, passes, seeds[i])
        results.append((best, tried, log))
    return results


def refine_tau(network: gridfit.MLPStack, scaled: Scaled, x_val: np.ndarray, y_val: np.ndarray,
               tau: float, taus: Sequence[float], passes: int, seed: int) -> dict[str, Any]:
    """A finer tau for one trained network: the validation MC log-likelihood maximised over
    log tau between the chosen tau's neighbours on the grid (half and twice it at an edge), by
    golden-section search, the network (hence its weight decay) fixed; tau enters the
    likelihood directly, so this needs no training.

    Returns:
        ``tau`` (the refined one, or the grid's when the refinement does not beat it on the same
        passes), ``validation_ll`` (of that tau), ``grid_validation_ll`` (of the grid's tau on
        the same passes) and ``bracket`` (the interval searched).
    """
    x = (x_val - scaled.x_mean) / scaled.x_std
    rows = max(1, _REFINE_VALUES_PER_CHUNK // passes)
    parts = [(y_val[lo:lo + rows],
              network.mc_samples(x[lo:lo + rows], passes, seed)[0] * scaled.y_std + scaled.y_mean)
             for lo in range(0, len(x), rows)]

    def ll(log_tau: float) -> float:
        return sum(scores.mc_log_likelihood(y, sampled, math.exp(log_tau)) * len(y)
                   for y, sampled in parts) / len(x)

    at = list(taus).index(tau)
    bracket = (taus[at - 1] if at > 0 else tau / 2,
               taus[at + 1] if at + 1 < len(taus) else tau * 2)
    a, b = math.log(bracket[0]), math.log(bracket[1])
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = ll(c), ll(d)
    for _ in range(_REFINE_STEPS):
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = ll(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = ll(d)
    found, found_ll = (c, fc) if fc >= fd else (d, fd)
    grid_ll = ll(math.log(tau))
    better = found_ll > grid_ll
    return {"tau": math.exp(found) if better else tau,
            "validation_ll": found_ll if better else grid_ll, "grid_validation_ll": grid_ll,
            "bracket": list(bracket)}


def fit(training: Training, sets: list[Scaled], settings: list[tuple[float, ...]], seed: int,
        say: Callable[[str], None]) -> gridfit.MLPStack:
    """Train one network per (data set, (p, tau)) pair, all together (with concrete dropout p is
    where the rates start)."""
    rows = len(sets[0].x)
    entropy: list[float] | None = None
    if training.concrete:
        pairs = [builders.concrete_regularizers(training.length_scale, rows, tau)
                 for _, tau in settings]
        decays, entropy = [w for w, _ in pairs], [d for _, d in pairs]
    else:
        decays = [builders.weight_decay(training.length_scale, p, rows, tau)
                  for p, tau in settings]
    epochs = training.epochs
    tenth = max(1, epochs // 10)
    started = time.perf_counter()

    def report(done: int) -> None:
        if done % tenth == 0 or done == epochs:
            say(f"  epoch {done}/{epochs} ({time.perf_counter() - started:.0f} s)")

    return gridfit.fit_mlps(np.stack([s.x for s in sets]), np.stack([s.y for s in sets]),
                            [p for p, _ in settings], decays, hidden=(training.hidden,),
                            epochs=epochs, batch_size=training.batch_size, seed=seed,
                            on_epoch=report, noise=training.noise, concrete_regularizer=entropy)


def _score(stack: gridfit.MLPStack, scaled: Scaled, x_val: np.ndarray, y_val: np.ndarray,
           settings: list[tuple[float, ...]], passes: int, seed: int,
           round_: int) -> list[tuple[GridPoint, np.ndarray]]:
    """Validation MC log-likelihood and RMSE of each network, in original units: the mixture of
    N(yhat_t, 1/tau) for a fixed noise, of the passes' own Gaussians for a learned one; with
    each network's per-row log-likelihoods."""
    x_val = (x_val - scaled.x_mean) / scaled.x_std
    ll = np.zeros((len(settings), len(x_val)))
    sq_error = np.zeros(len(settings))
    learned = stack.noise == "learned"
    rows = max(1, _VALIDATION_VALUES_PER_CHUNK // (len(settings) * passes * (1 + learned)))
    for lo in range(0, len(x_val), rows):
        raw = stack.mc_samples(x_val[lo:lo + rows], passes, seed)
        width = raw.shape[-1] // 2 if learned else raw.shape[-1]
        samples = raw[..., :width] * scaled.y_std + scaled.y_mean
        y = y_val[lo:lo + rows]
        for i, (_, tau) in enumerate(settings):
            precision: Any = tau
            if learned:  # the passes' own variances, in original units
                precision = 1.0 / (np.exp(raw[i, ..., width:].astype(np.float64))
                                   * scaled.y_std**2)
            ll[i, lo:lo + rows] = scores.mc_log_likelihood_rows(y, samples[i], precision)
            sq_error[i] += np.sum((samples[i].mean(axis=0) - y) ** 2)
    return [(GridPoint(p, tau, float(ll[i].mean()), float(np.sqrt(sq_error[i] / len(x_val))),
                       round_), ll[i]) for i, (p, tau) in enumerate(settings)]
