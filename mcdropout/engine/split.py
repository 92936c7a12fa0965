"""Splitting a model at its first stochastic layer (prefix caching).

Everything upstream of the first dropout-family layer gives the same result on every pass, so it
runs once per input row (the prefix); only the rest (the suffix) runs T times. Sequential models
split at the first stochastic layer; Functional models split along their graph (every input and
every output), so deterministic side branches stay in the prefix too. Subclassed models have no
graph to split and run whole.

Variable dimensions (None in a row shape) are found by running the model at two probe sizes: a
frontier or output dimension that differs between them is variable too. The probe sizes are 16
and 32: each halving (a stride-2 pooling) keeps them apart, and a valid convolution shortens both
alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras.src.backend import get_keras_mask, set_keras_mask  # Keras exports no public form

from mcdropout.engine.layers import contains_stochastic

PROBE_SIZES = (16, 32)
"""The sizes a variable dimension takes when the model is probed; the memory plan is measured at
the first (see :attr:`SplitModel.per_row_bytes`)."""

# run(list of input tensors) -> list of tensors
Run = Callable[[Sequence[tf.Tensor]], list[tf.Tensor]]


@dataclass(frozen=True)
class SplitModel:
    """A model cut into a deterministic prefix and a stochastic suffix.

    Attributes:
        prefix: Maps the input tensors, each (B, ...), to the frontier tensors, each (B, ...).
        suffix: Maps frontier tensors with passes folded into the batch (T*B, ...) to the
            output tensors, in the model's output order.
        frontier: Specs of the frontier tensors (batch dimension and variable dimensions None).
        outputs: Specs of the outputs (variable dimensions None).
        output_keys: Names of a subclassed model's dict outputs (sorted), else None.
        prefix_layers: How many layers run once per row instead of once per pass.
        per_row_bytes: Upper bound of the suffix's activation bytes for one (pass, row), with
            every variable dimension at its first probe size.
        masks: How many of the frontier's tensors, at its end, are Keras masks of others (see
            :func:`_carry_masks`).
    """

    prefix: Run
    suffix: Run
    frontier: tuple[tf.TensorSpec, ...]
    outputs: tuple[tf.TensorSpec, ...]
    output_keys: tuple[str, ...] | None
    prefix_layers: int
    per_row_bytes: int
    masks: int = 0


@dataclass(frozen=True)
class _Cut:
    """prefix, suffix(hs, sizes) (appending each suffix activation's row bytes to ``sizes``
    where it can see them), and whether the activations are hidden (a subclassed model)."""

    prefix: Run
    suffix: Callable[[Sequence[tf.Tensor], list[int] | None], list[tf.Tensor]]
    prefix_layers: int
    output_keys: tuple[str, ...] | None = None
    hidden: bool = False
    masks: int = 0


def _run_layers(layers: Sequence[Any], x: Any, sizes: list[int] | None = None) -> Any:
    for layer in layers:
        x = layer(x)
        if sizes is not None:
            sizes.append(_row_bytes(x))
    return x


def _row_bytes(t: Any) -> int:
    shape = tuple(t.shape[1:])
    return int(np.prod([d or 1 for d in shape], dtype=np.int64)) * tf.as_dtype(t.dtype).size


def _sequential(model: keras.Sequential, cache: bool) -> _Cut:
    layers = list(model.layers)
    first = next(i for i, layer in enumerate(layers) if contains_stochastic(layer)) if cache else 0
    head, tail = layers[:first], layers[first:]
    return _Cut(lambda xs: [_run_layers(head, xs[0])],
                lambda hs, sizes: [_run_layers(tail, hs[0], sizes)], len(head))


def ordered_nodes(model: Any) -> list[Any]:
    """The operation nodes of a Functional model, inputs first."""
    nodes: list[Any] = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        nodes.extend(n for n in model._nodes_by_depth[depth] if n.operation and not n.is_input)
    return nodes


def _run_nodes(nodes: Sequence[Any], values: dict[int, Any], sizes: list[int] | None = None
               ) -> None:
    for node in nodes:
        args, kwargs = node.arguments.fill_in(values)
        outputs = tf.nest.flatten(node.operation(*args, **kwargs))
        for ref, value in zip(node.outputs, outputs, strict=True):
            values[id(ref)] = value
            if sizes is not None:
                sizes.append(_row_bytes(value))


def _functional(model: keras.Model, cache: bool) -> _Cut:
    stochastic_ids: set[int] = set()
    suffix_nodes, prefix_nodes = [], []
    for node in ordered_nodes(model):
        upstream = any(id(t) in stochastic_ids for t in node.input_tensors)
        if not cache or upstream or contains_stochastic(node.operation):
            suffix_nodes.append(node)
            stochastic_ids.update(id(t) for t in node.outputs)
        else:
            prefix_nodes.append(node)
    frontier_refs: dict[int, Any] = {}
    for node in suffix_nodes:
        for t in node.input_tensors:
            if id(t) not in stochastic_ids:
                frontier_refs.setdefault(id(t), t)
    refs, input_refs, out_refs = list(frontier_refs.values()), model.inputs, model.outputs

    def prefix(xs: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        values = {id(ref): x for ref, x in zip(input_refs, xs, strict=True)}
        _run_nodes(prefix_nodes, values)
        return [values[id(r)] for r in refs]

    def suffix(hs: Sequence[tf.Tensor], sizes: list[int] | None) -> list[tf.Tensor]:
        values = {id(r): h for r, h in zip(refs, hs, strict=True)}
        _run_nodes(suffix_nodes, values, sizes)
        return [values[id(r)] for r in out_refs]

    return _Cut(prefix, suffix, len(prefix_nodes))


def _subclassed(model: Any, dummies: Sequence[tf.Tensor], names: Sequence[str]) -> _Cut:
    """A subclassed model runs whole: one input as a tensor, several as a dict by name (or, if
    its ``call`` refuses a dict, as a list in order)."""
    def as_tensor(xs: Sequence[tf.Tensor]) -> Any:
        return model(xs[0])

    def as_dict(xs: Sequence[tf.Tensor]) -> Any:
        return model(dict(zip(names, xs, strict=True)))

    def as_list(xs: Sequence[tf.Tensor]) -> Any:
        return model(list(xs))

    call: Callable[[Sequence[tf.Tensor]], Any] = as_tensor
    if len(dummies) > 1:
        try:
            as_dict(dummies)
            call = as_dict
        except Exception:  # its call takes a list, or neither (then as_list fails with the cause)
            call = as_list
    probe = call(dummies)
    keys = tuple(sorted(probe)) if isinstance(probe, dict) else None
    return _Cut(lambda xs: list(xs), lambda hs, sizes: tf.nest.flatten(call(hs)), 0, keys,
                hidden=True)


def _variable(a: Sequence[Any], b: Sequence[Any]) -> tuple[tf.TensorSpec, ...]:
    """Specs of tensors computed at both probe sizes: a dimension that differs is variable."""
    specs = []
    for x, y in zip(a, b, strict=True):
        dims = [d if d == e else None for d, e in zip(x.shape[1:], y.shape[1:], strict=True)]
        specs.append(tf.TensorSpec((None, *dims), tf.as_dtype(x.dtype)))
    return tuple(specs)


def _dummies(signature: Sequence[tuple[tuple[int | None, ...], str]], size: int
             ) -> list[tf.Tensor]:
    return [tf.zeros((1, *(size if d is None else d for d in shape)), dtype=dtype)
            for shape, dtype in signature]


def split_model(model: Any, signature: Sequence[tuple[tuple[int | None, ...], str]],
                prefix_caching: bool = True, names: Sequence[str] = ()) -> SplitModel:
    """Cut ``model`` for MC sampling.

    Args:
        model: A Keras model holding at least one stochastic layer.
        signature: (row shape, dtype) of every input, in the model's input order; None marks a
            variable dimension.
        prefix_caching: False runs the whole model T times (for comparison and testing).
        names: The inputs' names (a subclassed model with several inputs is called with a dict).
    """
    small, large = (_dummies(signature, size) for size in PROBE_SIZES)
    if isinstance(model, keras.Sequential):
        cut = _sequential(model, prefix_caching)
    elif getattr(model, "_nodes_by_depth", None) and getattr(model, "inputs", None):
        cut = _functional(model, prefix_caching)
    else:
        cut = _subclassed(model, small, names)
    cut = _carry_masks(cut, cut.prefix(small))
    frontier = cut.prefix(small)
    sizes: list[int] = []
    outputs = cut.suffix(frontier, sizes)
    if any(None in shape for shape, _ in signature):
        large_frontier = cut.prefix(large)
        frontier_specs = _variable(frontier, large_frontier)
        output_specs = _variable(outputs, cut.suffix(large_frontier, None))
    else:
        frontier_specs, output_specs = _variable(frontier, frontier), _variable(outputs, outputs)
    if cut.hidden:
        # A subclassed model hides its activations; budget as if each weight matrix's width
        # were live.
        widths = sum(int(w.shape[-1]) for w in model.weights if len(w.shape) >= 2)
        per_row = 4 * (widths + sum(int(np.prod(d.shape[1:])) for d in small)) + \
            sum(_row_bytes(o) for o in outputs)
    else:
        per_row = sum(sizes) + sum(_row_bytes(h) for h in frontier)
    return SplitModel(cut.prefix, lambda hs: cut.suffix(hs, None), frontier_specs,
                      output_specs, cut.output_keys, cut.prefix_layers, per_row, cut.masks)


def _carry_masks(cut: _Cut, probe: Sequence[tf.Tensor]) -> _Cut:
    """``cut`` with the Keras masks of its frontier (Embedding(mask_zero=True), Masking) passed
    on as tensors of their own.

    Keras carries a mask as an attribute of the tensor it masks; a tensor that leaves a traced
    graph, or is tiled into passes, loses it, and an LSTM in the suffix would then read the
    padding as data. The masks are appended to the frontier and set back on their tensors in
    the suffix, after the tiling.
    """
    masked = [i for i, t in enumerate(probe) if get_keras_mask(t) is not None]
    if not masked:
        return cut

    def prefix(xs: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        values = cut.prefix(xs)
        return [*values, *(get_keras_mask(values[i]) for i in masked)]

    def suffix(hs: Sequence[tf.Tensor], sizes: list[int] | None) -> list[tf.Tensor]:
        values = list(hs[:len(hs) - len(masked)])
        for i, mask in zip(masked, hs[len(values):], strict=True):
            set_keras_mask(values[i], mask)  # values[i] is the tiled tensor, made for this call
        return cut.suffix(values, sizes)

    return _Cut(prefix, suffix, cut.prefix_layers, cut.output_keys, cut.hidden, len(masked))
