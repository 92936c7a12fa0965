"""The Monte Carlo engine's front: T stochastic passes, vectorised, chunked, reduced to statistics.

A request's T passes are folded into the batch dimension of compiled graph calls (no Python loop
over passes). Passes are taken in chunks, and rows in blocks, sized so the live activations stay
under a memory budget; each chunk is reduced to float64 (mean, M2) and merged across chunks with
Chan's update. The deterministic prefix of the model runs once per row.

Every request goes through :meth:`MCDropoutPredictor.run`: a batch of one request is the ordinary
case, several mergeable requests share their graph calls (:mod:`.merged`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mcdropout.calibration.model import Calibration
from mcdropout.engine import calibrated as calibrated_
from mcdropout.engine import heads as heads_
from mcdropout.engine import introspect
from mcdropout.engine.graphs import PassGraphs, mask_first
from mcdropout.engine.heads import HeadSpec
from mcdropout.engine.inputs import InputSpec, arrange, label
from mcdropout.engine.layers import StochasticLayer, require_stochastic
from mcdropout.engine.merged import answer
from mcdropout.engine.passes import PassRunner
from mcdropout.engine.prediction import AnyPrediction, Task
from mcdropout.engine.request import Limits, Request, resolve
from mcdropout.engine.sampling import StopCheck
from mcdropout.engine.split import split_model
from mcdropout.engine.warmup import warm
from mcdropout.errors import InvalidArgumentError, MCDropoutError
from mcdropout.metadata import HeadInfo, InputInfo, ModelInfo

Inputs = Any  # an array (one-input models) or a mapping from input name to array


class MCDropoutPredictor:
    """Monte Carlo dropout predictions with uncertainty for a Keras model.

    Args:
        model: A Keras model (Sequential, Functional or subclassed) with one or more inputs and
            one or more outputs (heads) that holds at least one layer of the dropout family
            (Dropout, SpatialDropout1D/2D/3D, GaussianDropout, AlphaDropout, or a recurrent
            layer with dropout/recurrent_dropout).
        task: One-head models: "regression" or "classification"; inferred from the output
            activation if None (softmax or sigmoid means classification).
        tau: One-head regression: noise precision in the model's (standardised) output units.
        feature_mean, feature_std: One-input models: inputs are standardised as
            ``(x - mean) / std`` first.
        target_mean, target_std: One-head models: the model predicts ``(y - mean) / std``;
            results are mapped back to y's units.
        input_shape: One-input models: shape of one row; needed only when the model does not
            declare it.
        labels: One-head models: class labels or target names (carried in :attr:`heads`).
        inputs: Every input (name, row shape with None for variable dimensions, dtype,
            standardisation), instead of ``input_shape``/``feature_*``; matched to the model's
            inputs by name (by position where its names are generated). A subclassed model
            declares its inputs by the shapes it was built with; one called with several is
            called with a dict by name (or, if it refuses a dict, a list).
        heads: One per model output (name, task, labels, target scaling, tau), instead of the
            one-head keywords; matched to the outputs by name (by position where the model's
            names are generated).
        memory_budget_bytes: Upper bound for the activations of one chunk of passes.
        max_samples: Largest T accepted.
        default_samples: T used when a request names none.
        max_raw_sample_values: Largest samples x rows x outputs (all heads) kept when raw passes
            are needed (intervals or ``return_samples``).
        prefix_caching: Run the deterministic prefix once per row (False: the whole model T times).
        calibration: The version's calibration (every head's), applied to the requests that ask
            for it (``calibrated``, ``set_levels``, ``abstain``); None: such requests are refused.
        described_as: How refusals name the model, e.g. "model 'x' version 2".

    Raises:
        NoStochasticLayersError: the model has no dropout-family layer with a rate above 0.
        InvalidArgumentError: an option is out of range; inputs or heads do not match the
            model's; a shape cannot be told; a head's output size depends on a variable
            input dimension; or the calibration's heads are not the model's (names, tasks,
            widths, measures).
    """

    def __init__(self, model: Any, *, task: Task | None = None, tau: float | None = None,
                 feature_mean: Any = None, feature_std: Any = None, target_mean: Any = None,
                 target_std: Any = None, input_shape: Sequence[int | None] | None = None,
                 labels: Sequence[str] = (), inputs: Sequence[InputInfo] | None = None,
                 heads: Sequence[HeadInfo] | None = None,
                 memory_budget_bytes: int = 256 * 2**20, max_samples: int = 10_000,
                 default_samples: int = 100, max_raw_sample_values: int = 10_000_000,
                 prefix_caching: bool = True, calibration: Calibration | None = None,
                 described_as: str = "this model") -> None:
        self.stochastic_layers: tuple[StochasticLayer, ...] = require_stochastic(model)
        if task not in (None, "regression", "classification"):
            raise InvalidArgumentError(f"task must be 'regression' or 'classification', got {task!r}")
        if not 1 <= default_samples <= max_samples:
            raise InvalidArgumentError(
                f"default_samples must be in 1..max_samples={max_samples}, got {default_samples}")
        if memory_budget_bytes < 2**20:
            raise InvalidArgumentError(
                f"memory_budget_bytes must be at least 1 MiB, got {memory_budget_bytes}")
        heads_.check_tau(tau)
        self.inputs: tuple[InputSpec, ...] = introspect.build_inputs(
            model, inputs, input_shape, feature_mean, feature_std)
        signature = [(spec.shape, spec.dtype) for spec in self.inputs]
        self.split = split = split_model(model, signature, prefix_caching,
                                         [spec.name for spec in self.inputs])
        one_head = heads_.keywords(task=task, tau=tau, target_mean=target_mean,
                                   target_std=target_std, labels=tuple(labels))
        self.heads: tuple[HeadSpec, ...] = heads_.build(model, split.outputs,
                                                        split.output_keys, heads, one_head)
        self.task: Task = self.heads[0].task
        self.tau = self.heads[0].tau
        self.output_dim = sum(head.width for head in self.heads)
        self.limits = Limits(int(default_samples), int(max_samples), int(max_raw_sample_values),
                             self.output_dim)
        self.graphs = PassGraphs(model, split, signature, mask_first(model, split, prefix_caching),
                                 [head.binary for head in self.heads])
        self.calibration = calibration
        self.described_as = described_as
        bound = None if calibration is None else calibrated_.bind(self.heads, calibration)
        self._conformal_only = calibrated_.conformal_only(self.heads, bound)
        self._passes = PassRunner(self.graphs, self.heads,
                                  split.per_row_bytes + 16 * self.output_dim,
                                  int(memory_budget_bytes), [spec.shape for spec in self.inputs],
                                  bound)

    @classmethod
    def from_info(cls, model: Any, info: ModelInfo, calibration: Calibration | None = None,
                  **options: Any) -> MCDropoutPredictor:
        """A predictor configured from a store entry's metadata (inputs, heads, standardisation,
        tau, limits) and the version's calibration, if it has one."""
        options.setdefault("described_as", f"model {info.name!r} version {info.version}")
        options.setdefault("max_samples", info.max_samples)
        options.setdefault("default_samples", info.default_samples)
        if info.inputs:
            options.setdefault("inputs", info.inputs)
        else:
            options.update(input_shape=info.input_shape, feature_mean=info.feature_mean,
                           feature_std=info.feature_std)
        if info.heads:
            options.setdefault("heads", info.heads)
        else:
            options.update(task=info.task, tau=info.tau, target_mean=info.target_mean,
                           target_std=info.target_std, labels=info.labels)
        return cls(model, calibration=calibration, **options)

    # -- what the model accepts --------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int | None, ...]:
        """The first input's row shape (None: a variable dimension)."""
        return self.inputs[0].shape

    @property
    def input_dtype(self) -> str:
        """The first input's dtype."""
        return self.inputs[0].dtype

    @property
    def default_samples(self) -> int:
        return self.limits.default_samples

    @property
    def max_samples(self) -> int:
        return self.limits.max_samples

    @property
    def memory_budget_bytes(self) -> int:
        return self._passes.memory_budget_bytes

    @property
    def row_bytes(self) -> int:
        """Activation bytes of one (pass, row), the unit of the memory budget (variable
        dimensions at their probe size; see :mod:`.passes` for how requests scale it)."""
        return self._passes.row_bytes

    def plan(self, rows: int, samples: int, adaptive: bool = False,
             shape_key: tuple[tuple[int, ...], ...] | None = None) -> tuple[int, int]:
        """Rows per block and passes per chunk a request of this size (and row shapes, see
        :attr:`Request.shape_key`) runs in."""
        return self._passes.plan(rows, samples, adaptive, shape_key)

    @property
    def trace_count(self) -> int:
        """Graph traces so far (each graph traces once; a later trace would be a retrace)."""
        return self.graphs.trace_count

    def check_inputs(self, x: Inputs) -> tuple[np.ndarray, ...]:
        """Arrange a request's inputs (see :func:`.inputs.arrange`), check their values and
        standardise them (see :meth:`InputSpec.check`): one array per input, in model order."""
        return self._check(arrange(self.inputs, x))

    def _check(self, arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        return tuple(spec.check(a, label(self.inputs, spec))
                     for spec, a in zip(self.inputs, arrays, strict=True))

    def resolve(self, x: Inputs, samples: int | None = None, seed: int | None = None, *,
                tolerance: float | None = None, interval_levels: Sequence[float] = (),
                return_samples: bool = False, limits: Limits | None = None,
                calibrated: bool = False, set_levels: Sequence[float] = (),
                abstain: bool = False) -> Request:
        """Resolve a request against this model's inputs, limits and calibration (see
        :func:`request.resolve` and :func:`.calibrated.check`).

        Args:
            x: An array (one-input models) or a mapping from input name to array.
            limits: Limits to apply instead of the model's own (a server adds its row limits).
            calibrated, set_levels, abstain: See :meth:`predict`.

        Raises:
            NotCalibratedError: a calibrated request and no calibration (or no abstention
                policy for ``abstain``).
        """
        calibrated = bool(calibrated or set_levels or abstain)
        request = resolve(x, limits or self.limits, samples=samples, seed=seed,
                          tolerance=tolerance, interval_levels=interval_levels,
                          return_samples=return_samples, inputs=self.inputs,
                          calibrated=calibrated, set_levels=set_levels, abstain=abstain,
                          conformal_intervals=self._conformal_only)
        if request.calibrated:
            calibrated_.check(self.heads, self._passes.calibration, request, self.described_as)
        return request

    # -- running -----------------------------------------------------------------------------------
    def run(self, requests: Sequence[Request], should_stop: StopCheck = None
            ) -> list[AnyPrediction | InvalidArgumentError]:
        """Answer resolved requests, sharing graph calls when there are several.

        Several requests must be mergeable (:attr:`Request.mergeable`) and have the same
        ``samples``; those of the same :attr:`Request.shape_key` share graph calls. Each
        request's input values are checked first; a request whose values are refused gets its
        :class:`InvalidArgumentError` in place of an answer and the others run without it.

        Args:
            requests: At least one request, resolved against this model.
            should_stop: Polled between chunks; True abandons all the work.

        Returns:
            One answer (or refusal) per request, in order: a :class:`Prediction` for a one-head
            model, a :class:`MultiHeadPrediction` for several heads.

        Raises:
            InvalidArgumentError: no request, or several that cannot be merged.
            CancelledError: ``should_stop`` returned True.
        """
        return answer(self._passes, requests, self._check, should_stop)

    def predict(self, x: Inputs, samples: int | None = None, seed: int | None = None, *,
                tolerance: float | None = None, interval_levels: Sequence[float] = (),
                return_samples: bool = False, should_stop: StopCheck = None,
                calibrated: bool = False, set_levels: Sequence[float] = (),
                abstain: bool = False) -> AnyPrediction:
        """Run T stochastic passes over the rows of ``x`` and summarise them.

        Args:
            x: Input rows: an array (rows, *input_shape) for a one-input model, or a mapping
                from each input's name to its rows (every input, the same number of rows).
            samples: Number of passes T, 1..max_samples (default: default_samples). With
                ``tolerance``, the most passes to run.
            seed: 0 <= seed < 2**64. The same seed, inputs and model give identical results;
                None draws a fresh seed (returned in the result).
            tolerance: Adaptive sampling: stop once the Monte Carlo standard error of every mean
                of every head is at most this (each in its head's units). None runs exactly
                ``samples`` passes.
            interval_levels: Coverage levels in (0, 1) of central predictive intervals
                (calibrated regression heads: conformal, at most n/(n+1) of the calibration).
            return_samples: Also return the raw per-pass outputs (joint across heads).
            should_stop: Polled between chunks; returning True abandons the work.
            calibrated: Apply the version's calibration: classifier passes temperature-scaled
                before every statistic, regression intervals ``mean +- q(level) * scale``.
            set_levels: Coverage levels in (0, n/(n+1)] of conformal prediction sets of the
                classifier heads (implies ``calibrated``).
            abstain: Flag the rows whose uncertainty is above each head's abstention policy
                (implies ``calibrated``).

        Returns:
            A :class:`Prediction` (one head) or :class:`MultiHeadPrediction` (several).

        Raises:
            InvalidArgumentError: bad names, shape, dtype, ids, NaN/Inf, samples, seed,
                tolerance or levels; set levels for a model without a classifier head.
            NotCalibratedError: a calibrated request and no calibration, or ``abstain`` and no
                abstention policy.
            ResourceLimitError: keeping the raw passes would exceed ``max_raw_sample_values``.
            CancelledError: ``should_stop`` returned True.
        """
        request = self.resolve(x, samples, seed, tolerance=tolerance,
                               interval_levels=interval_levels, return_samples=return_samples,
                               calibrated=calibrated, set_levels=set_levels, abstain=abstain)
        return _answers(self.run([request], should_stop))[0]

    def predict_many(self, inputs: Sequence[Inputs], samples: int | None = None,
                     seeds: Sequence[int | None] | None = None, *,
                     should_stop: StopCheck = None, calibrated: bool = False,
                     set_levels: Sequence[float] = (), abstain: bool = False
                     ) -> list[AnyPrediction]:
        """Answer several independent requests with shared graph calls (a merged batch).

        Answer i is what ``predict(inputs[i], samples, seeds[i])`` returns (see
        :mod:`mcdropout.engine.merged` for when that holds bit for bit).

        Args:
            inputs: One request's inputs each (an array or a mapping, as for :meth:`predict`);
                requests whose rows differ in shape (variable dimensions) run in separate calls.
            samples: Passes T for every request, 1..max_samples (default: default_samples).
            seeds: One seed per request (0 <= seed < 2**64) or None for a fresh one; None for
                all fresh.
            should_stop: Polled between chunks; returning True abandons all the work.
            calibrated, set_levels, abstain: For every request, as for :meth:`predict`.

        Raises:
            InvalidArgumentError: an input (named by its index), samples, a seed or a level is
                invalid.
            NotCalibratedError: as for :meth:`predict`.
            CancelledError: ``should_stop`` returned True.
        """
        if len(inputs) == 0:
            raise InvalidArgumentError("predict_many needs at least one input array, got none")
        seeds = [None] * len(inputs) if seeds is None else list(seeds)
        if len(seeds) != len(inputs):
            raise InvalidArgumentError(f"predict_many needs one seed per input: got "
                                       f"{len(seeds)} seeds for {len(inputs)} inputs")
        requests = [self.resolve(x, samples, seed, calibrated=calibrated, set_levels=set_levels,
                                 abstain=abstain) for x, seed in zip(inputs, seeds, strict=True)]
        answers = self.run(requests, should_stop)
        for i, one in enumerate(answers):
            if isinstance(one, MCDropoutError):
                raise InvalidArgumentError(f"inputs[{i}]: {one}") from None
        return _answers(answers)

    def warmup(self, batch_rows: int = 0, every_sample_class: bool = False) -> None:
        """Trace and run the graphs once so the first real request pays no compile time.

        Args:
            batch_rows: Also prepare merged batches of up to this many rows at
                ``default_samples`` passes (their mask kernels compile per size class).
            every_sample_class: Also compile the mask kernels of every power-of-two class of
                passes a request up to ``max_samples`` can run at (see
                :func:`.warmup.sample_classes`): slower to load, and then no request pays the
                60-120 ms compile of a new class.
        """
        warm(self, self.graphs, batch_rows, every_sample_class)

def _answers(answers: Sequence[Any]) -> list[AnyPrediction]:
    for one in answers:
        if isinstance(one, Exception):
            raise one
    return list(answers)
