"""The independent reference: Keras' own dropout, pass after pass, and the bounds it is held to.

The reference shares no code with the engine. It calls the model eagerly with ``training=True``,
so that Keras itself draws every dropout mask (independently for every row and pass, from its own
seed generator), after setting every BatchNormalization layer non-trainable: a non-trainable BN
runs in inference mode in Keras 3 even when training=True, so only the dropout family is
stochastic, which is exactly what MC dropout serving claims to compute. BN moving statistics are
not touched (a non-trainable BN never updates them), and the trainable flags are restored.

Bounds (``Z`` = 5, for every row and output of every head):

- mean: ``|m_a - m_b| <= Z * sqrt(s_a**2 / n_a + s_b**2 / n_b) + ATOL * (1 + |m_b|)``, the
  standard errors of two independent Monte Carlo means; ``ATOL`` covers float32 arithmetic that
  differs between a traced graph and Keras' eager ops.
- std: ``|log(s_a / s_b)| <= Z * sqrt((kurt - 1) / 4 * (1 / n_a + 1 / n_b))``, the delta-method
  standard error of a log sample standard deviation (``Var(s**2) ~ sigma**4 (kurt - 1) / n``),
  with ``kurt = mu_4 / sigma**4`` estimated from the reference's passes, so heavy-tailed or
  two-valued outputs get the wider bound they need. Outputs whose reference std is below
  ``STD_FLOOR`` (no spread to speak of) must instead differ by at most ``STD_FLOOR``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

Z = 5.0
ATOL = 1e-5
STD_FLOOR = 1e-6
REFERENCE_SEED = 777


@dataclass(frozen=True)
class Estimate:
    """Monte Carlo mean and std of one head, per row and output.

    Attributes:
        mean: (rows, outputs) mean over passes, float64.
        std: (rows, outputs) standard deviation over passes (ddof 0), float64.
        passes: The number of passes behind them; ``math.inf`` for exact values.
        kurtosis: (rows, outputs) ``mu_4 / sigma**4`` of the passes, when known.
        samples: (passes, rows, outputs) the passes themselves, when kept.
    """

    mean: np.ndarray
    std: np.ndarray
    passes: float
    kurtosis: np.ndarray | None = None
    samples: np.ndarray | None = None


@dataclass(frozen=True)
class Agreement:
    """How two estimates of one head compare (see the module docstring for the bounds).

    Attributes:
        max_z: The largest ``|m_a - m_b| / sqrt(s_a**2/n_a + s_b**2/n_b)`` over rows and outputs.
        std_ratios: The smallest and largest ``s_a / s_b`` over outputs with spread.
        failures: One line per row and output outside a bound; empty when they agree.
    """

    max_z: float
    std_ratios: tuple[float, float]
    failures: tuple[str, ...]

    def __str__(self) -> str:
        head = (f"max |z| {self.max_z:.2f}, std ratio "
                f"{self.std_ratios[0]:.3f}..{self.std_ratios[1]:.3f}")
        return head if not self.failures else head + "\n  " + "\n  ".join(self.failures)


@contextmanager
def only_dropout_stochastic(model: Any) -> Iterator[None]:
    """Within the block, every BatchNormalization of ``model`` runs in inference mode."""
    # Keras' private walk, the one that also reaches layers nested in custom layers and models.
    norms = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
             if isinstance(layer, keras.layers.BatchNormalization)]
    before = [layer.trainable for layer in norms]
    for layer in norms:
        layer.trainable = False
    try:
        yield
    finally:
        for layer, trainable in zip(norms, before, strict=True):
            layer.trainable = trainable


def reference(model: Any, inputs: Mapping[str, np.ndarray], heads: Sequence[str],
              passes: int = 2000, batch: int = 6000) -> dict[str, Estimate]:
    """Mean, std and kurtosis of ``passes`` calls of ``model(x, training=True)``, per head.

    Rows are tiled so that one call runs many passes (Keras draws a mask for every row of a
    batch, so every copy of a row is an independent pass).

    Args:
        model: A Keras model; its BatchNormalization layers run in inference mode.
        inputs: Input name -> rows, all with the same number of rows.
        heads: The model's head names, in the order of its outputs when it returns a list;
            looked up by name when it returns a dict.
        passes: Passes per row.
        batch: About how many rows one call takes (bounds the memory).

    Returns:
        Head name -> :class:`Estimate` with shapes (rows, outputs).
    """
    rows = len(next(iter(inputs.values())))
    per_call = max(1, batch // rows)
    drawn: dict[str, list[np.ndarray]] = {head: [] for head in heads}
    with only_dropout_stochastic(model):
        done = 0
        while done < passes:
            k = min(per_call, passes - done)
            tiled = {name: np.tile(x, (k,) + (1,) * (x.ndim - 1)) for name, x in inputs.items()}
            feed: Any = next(iter(tiled.values())) if len(tiled) == 1 else tiled
            for head, out in _by_head(model(feed, training=True), heads).items():
                drawn[head].append(np.asarray(out, np.float64).reshape(k, rows, -1))
            done += k
    return {head: _moments(np.concatenate(chunks)) for head, chunks in drawn.items()}


class References:
    """The reference estimates of each zoo model, one per probe, computed on first use."""

    def __init__(self, zoo: Mapping[str, Any], passes: int = 2000) -> None:
        self._zoo = zoo  # name -> zoo_models.ZooModel
        self._passes = passes
        self._done: dict[str, tuple[dict[str, Estimate], ...]] = {}

    def __getitem__(self, name: str) -> tuple[dict[str, Estimate], ...]:
        if name not in self._done:
            model = self._zoo[name]
            # The masks' seed generators are seeded as the layers load: the same reference
            # whatever ran before it.
            keras.utils.set_random_seed(REFERENCE_SEED)
            # A fresh copy from the user's file, the one that was imported and served.
            loaded = keras.saving.load_model(model.path)
            self._done[name] = tuple(reference(loaded, probe, list(model.heads), self._passes)
                                     for probe in model.probes)
        return self._done[name]


def _by_head(outputs: Any, heads: Sequence[str]) -> dict[str, Any]:
    if isinstance(outputs, Mapping):
        return {head: outputs[head] for head in heads}
    if isinstance(outputs, (list, tuple)):
        return dict(zip(heads, outputs, strict=True))
    [head] = heads
    return {head: outputs}


def _moments(samples: np.ndarray) -> Estimate:
    """The estimate of (passes, rows, outputs) samples."""
    mean = samples.mean(axis=0)
    centred = samples - mean
    var = (centred**2).mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        kurtosis = np.where(var > 0, (centred**4).mean(axis=0) / var**2, 3.0)
    return Estimate(mean, np.sqrt(var), samples.shape[0], kurtosis, samples)


def correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation over passes of every output of ``a`` with every output of ``b``.

    Args:
        a, b: (passes, rows, outputs_a) and (passes, rows, outputs_b), the same passes.

    Returns:
        (rows, outputs_a, outputs_b).
    """
    a = (a - a.mean(axis=0)) / a.std(axis=0)
    b = (b - b.mean(axis=0)) / b.std(axis=0)
    return np.einsum("pra,prb->rab", a, b) / a.shape[0]


def correlation_bound(passes_a: int, passes_b: int) -> float:
    """The largest ``|atanh(r_a) - atanh(r_b)|`` two estimates of one correlation may differ by:
    ``Z`` standard errors of Fisher's z, ``1 / sqrt(n - 3)`` each."""
    return Z * math.sqrt(1 / (passes_a - 3) + 1 / (passes_b - 3))


def compare(got: Estimate, ref: Estimate, what: str = "") -> Agreement:
    """Whether ``got`` agrees with ``ref`` within the bounds of the module docstring.

    ``ref`` must carry the kurtosis of its passes (a :func:`reference` estimate does).
    """
    assert ref.kurtosis is not None, "the reference estimate carries its kurtosis"
    got_mean, got_std = np.asarray(got.mean, np.float64), np.asarray(got.std, np.float64)
    if got_mean.shape != ref.mean.shape or got_std.shape != ref.std.shape:
        return Agreement(math.inf, (math.nan, math.nan), (
            f"{what}: shapes differ: mean {got_mean.shape} std {got_std.shape}, "
            f"reference {ref.mean.shape}",))
    se = np.sqrt(got_std**2 / got.passes + ref.std**2 / ref.passes)
    gap = np.abs(got_mean - ref.mean)
    mean_bad = gap > Z * se + ATOL * (1 + np.abs(ref.mean))
    spread = ref.std >= STD_FLOOR
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, gap / se, 0.0)
        ratio = np.where(spread, got_std / ref.std, 1.0)
        log_bound = Z * np.sqrt((ref.kurtosis - 1) / 4 * (1 / got.passes + 1 / ref.passes))
        std_bad = np.where(spread, ~(np.abs(np.log(ratio)) <= log_bound),
                           np.abs(got_std - ref.std) > STD_FLOOR)
    failures = []
    for index in zip(*np.nonzero(mean_bad | std_bad), strict=True):
        failures.append(
            f"{what} row {index[0]} output {index[1]}: mean {got_mean[index]:.6g} vs "
            f"{ref.mean[index]:.6g} (z {z[index]:.2f}); std {got_std[index]:.6g} vs "
            f"{ref.std[index]:.6g} (ratio {ratio[index]:.3f}, allowed "
            f"exp(+-{log_bound[index]:.3f}))")
    ratios = ratio[spread] if spread.any() else np.ones(1)
    return Agreement(float(np.max(z, initial=0.0)), (float(ratios.min()), float(ratios.max())),
                     tuple(failures))


def weights_of(model: Any) -> dict[str, np.ndarray]:
    """Every variable of ``model`` (moving statistics included), by path, as numpy arrays."""
    return {v.path: np.array(v.numpy()) for v in model.variables}


def batch_norm_statistics(model: Any) -> dict[str, np.ndarray]:
    """The moving mean and variance of every BatchNormalization of ``model``, by path."""
    return {v.path: np.array(v.numpy())
            for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)
            for v in (layer.moving_mean, layer.moving_variance)}
