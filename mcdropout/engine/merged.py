"""Several requests answered by the same graph calls (a merged batch), each as if it ran alone.

Answer i is what request i gets alone, bit for bit wherever the model's kernels compute a row the
same way whatever its position in the batch: each row gets the masks of its own request's seed
(element (pass, unit) of a mask depends only on the seed, the layer, the pass and the unit), and
requests are grouped so that each one's passes fall in the chunks it would use alone (chunk
boundaries decide how the float64 statistics are merged). Dense, convolution-free models with
ReLU, tanh or softmax meet that; sigmoid, exp and log kernels in TensorFlow round a value
differently depending on where in a vector it falls (by about 1e-7 relative), and so may the
answers.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from mcdropout.engine import heads
from mcdropout.engine.passes import PassRunner
from mcdropout.engine.prediction import ROW_STATISTICS, AnyPrediction, MultiHeadPrediction, Prediction
from mcdropout.engine.request import Request
from mcdropout.engine.rng import seed_words
from mcdropout.engine.sampling import StopCheck
from mcdropout.errors import InvalidArgumentError, shorten

Rows = Sequence[np.ndarray]  # one request's checked arrays, one per input


def answer(runner: PassRunner, requests: Sequence[Request],
           check: Callable[[Sequence[np.ndarray]], tuple[np.ndarray, ...]],
           should_stop: StopCheck) -> list[AnyPrediction | InvalidArgumentError]:
    """Answer resolved requests: one alone, several merged (see ``MCDropoutPredictor.run``).

    ``check`` checks and standardises one request's input arrays; a request it refuses gets
    its :class:`InvalidArgumentError` in place of an answer and the others run without it.
    Requests whose rows differ in shape (:attr:`Request.shape_key`) never share a graph call:
    each shape runs as a group of its own.
    """
    if not requests:
        raise InvalidArgumentError("at least one request is needed, got none")
    first = requests[0]
    if len(requests) > 1 and not all(r.mergeable and r.samples == first.samples
                                     and r.calibrated == first.calibrated for r in requests):
        raise InvalidArgumentError("merged requests must share samples and calibration and ask "
                                   "for no adaptive sampling, raw samples or intervals taken "
                                   "from the passes")
    out: list[Any] = []
    shapes: dict[tuple[tuple[int, ...], ...], list[int]] = {}
    for i, request in enumerate(requests):
        try:
            out.append(check(request.inputs))
            shapes.setdefault(request.shape_key, []).append(i)
        except InvalidArgumentError as exc:
            out.append(exc)
    for shape, members in shapes.items():
        answers: list[Any]
        try:
            if len(members) == 1:
                answers = [runner.run_one(out[members[0]], requests[members[0]], should_stop)]
            else:
                answers = run_merged(runner, [requests[i] for i in members],
                                     [out[i] for i in members], should_stop)
        except tf.errors.InvalidArgumentError as exc:
            # Only a variable dimension lets a row shape reach the graphs unchecked (e.g. a
            # sequence shorter than a convolution's kernel): that shape's requests fail alone.
            refusal = InvalidArgumentError(
                f"the model cannot run on rows of shape {shape}: {_graph_error(exc)}")
            answers = [refusal] * len(members)
        for i, one in zip(members, answers, strict=True):
            out[i] = _finite(one, shape)
    return out


def _graph_error(exc: tf.errors.InvalidArgumentError) -> str:
    """TensorFlow's own reason, without its node names and traceback lines."""
    lines = [re.sub(r"\{\{function_node [^}]*\}\}\s*", "", line).strip()
             for line in str(exc.message).splitlines()]
    noise = ("Graph execution error", "Detected at node", "File ", "[[", "Traceback")
    useful = [line for line in lines if line and not line.startswith(noise)]
    return shorten(useful[0] if useful else lines[0], 200, quote=False)


def _finite(one: Any, shape: tuple[tuple[int, ...], ...]) -> Any:
    """``one``, or a refusal when the model's mean is NaN or Inf for these finite inputs.

    A variable dimension can reach the graphs at a length the model has nothing to compute on
    (a sequence shorter than its convolutions leaves an empty axis to average): the passes then
    give NaN, which must not go back as an answer.
    """
    if isinstance(one, InvalidArgumentError):
        return one
    parts = one.heads.values() if isinstance(one, MultiHeadPrediction) else (one,)
    if all(np.isfinite(p.mean).all() for p in parts):
        return one
    return InvalidArgumentError(
        f"the model gives NaN or Inf for rows of shape {shape} (finite inputs; e.g. a sequence "
        "too short for the model's convolutions or pooling); send rows the model can compute on")


def run_merged(runner: PassRunner, requests: Sequence[Request], rows: Sequence[Rows],
               should_stop: StopCheck) -> list[AnyPrediction]:
    """Answer mergeable ``requests`` (same ``samples`` and ``shape_key``) whose checked rows are
    ``rows``.

    Returns:
        One prediction per request, in order.
    """
    samples = requests[0].samples
    groups: dict[int, list[int]] = {}
    for i, arrays in enumerate(rows):
        chunk = runner.plan(arrays[0].shape[0], samples, shape_key=requests[i].shape_key)[1]
        groups.setdefault(chunk, []).append(i)
    results: dict[int, AnyPrediction] = {}
    for chunk, members in groups.items():
        results.update(_run_group(runner, chunk, [requests[i] for i in members],
                                  [rows[i] for i in members], members, should_stop))
    return [results[i] for i in range(len(requests))]


def _run_group(runner: PassRunner, chunk: int, requests: list[Request], rows: list[Rows],
               indices: list[int], should_stop: StopCheck) -> dict[int, AnyPrediction]:
    samples = requests[0].samples
    sizes = [arrays[0].shape[0] for arrays in rows]
    xs = [np.concatenate(parts) for parts in zip(*rows, strict=True)]
    segments = np.repeat(np.arange(len(requests), dtype=np.int32), sizes)
    words = np.array([seed_words(r.seed) for r in requests], dtype=np.uint32)
    row_bytes = runner.request_row_bytes(requests[0].shape_key)
    block = max(1, min(xs[0].shape[0], runner.memory_budget_bytes // (chunk * row_bytes)))
    graphs = runner.graphs

    def run_chunk(block_rows: slice, frontier: list[tf.Tensor], first: int, count: int
                  ) -> np.ndarray:
        return graphs.chunk(frontier, words, segments[block_rows], first, count)

    sampled = runner.sample(xs, samples, block, chunk, run_chunk,
                            lambda: graphs.whole(xs, words, segments, samples),
                            should_stop=should_stop, calibrated=requests[0].calibrated)
    # Every statistic is per row, so all rows are summarised at once and then split; what a
    # calibration adds (intervals, sets, abstention) is per row too, and per request's levels.
    together = heads.summarise(runner.heads, sampled, 0, (), False)
    out, start = {}, 0
    for i, request, size in zip(indices, requests, sizes, strict=True):
        out[i] = runner.finish(_rows_of(together, slice(start, start + size), request.seed),
                               request)
        start += size
    return out


def _rows_of(prediction: AnyPrediction, rows: slice, seed: int) -> AnyPrediction:
    """The prediction for some rows of a merged batch (it has no intervals or raw samples)."""
    if isinstance(prediction, MultiHeadPrediction):
        return MultiHeadPrediction(prediction.samples, seed, {
            name: _head_rows(head, rows, seed) for name, head in prediction.heads.items()})
    return _head_rows(prediction, rows, seed)


def _head_rows(prediction: Prediction, rows: slice, seed: int) -> Prediction:
    arrays: dict[str, Any] = {name: np.array(getattr(prediction, name)[rows])
                              for name in ROW_STATISTICS if getattr(prediction, name) is not None}
    return dataclasses.replace(prediction, seed=seed, **arrays)
