"""Splitting a model at its first stochastic layer (prefix caching).

Everything upstream of the first dropout-family layer gives the same result on every pass, so it
runs once per input row (the prefix); only the rest (the suffix) runs T times. Sequential models
split at the first stochastic layer; Functional models split along their graph, so deterministic
side branches stay in the prefix too. Subclassed models have no graph to split and run whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mcdropout.engine.layers import contains_stochastic


@dataclass(frozen=True)
class SplitModel:
    """A model cut into a deterministic prefix and a stochastic suffix.

    Attributes:
        prefix: Maps input rows (B, ...) to the frontier tensors, each (B, ...).
        suffix: Maps frontier tensors with passes folded into the batch (T*B, ...) to the output.
        frontier: Specs of the frontier tensors (batch dimension None).
        prefix_layers: How many layers run once per row instead of once per pass.
        per_row_bytes: Upper bound of the suffix's activation bytes for one (pass, row).
    """

    prefix: Callable[[tf.Tensor], list[tf.Tensor]]
    suffix: Callable[[Sequence[tf.Tensor]], tf.Tensor]
    frontier: tuple[tf.TensorSpec, ...]
    prefix_layers: int
    per_row_bytes: int


def _run_layers(layers: Sequence[Any], x: Any, sizes: list[int] | None = None) -> Any:
    for layer in layers:
        x = layer(x)
        if sizes is not None:
            sizes.append(_row_bytes(x))
    return x


def _row_bytes(t: Any) -> int:
    shape = tuple(t.shape[1:])
    return int(np.prod([d or 1 for d in shape], dtype=np.int64)) * tf.as_dtype(t.dtype).size


def _spec(t: Any) -> tf.TensorSpec:
    return tf.TensorSpec((None, *tuple(t.shape[1:])), tf.as_dtype(t.dtype))


def _split_sequential(model: keras.Sequential, dummy: tf.Tensor, cache: bool) -> SplitModel:
    layers = list(model.layers)
    first = next(i for i, layer in enumerate(layers) if contains_stochastic(layer)) if cache else 0
    head, tail = layers[:first], layers[first:]
    h = _run_layers(head, dummy)
    sizes: list[int] = []
    _run_layers(tail, h, sizes)
    return SplitModel(
        prefix=lambda x: [_run_layers(head, x)],
        suffix=lambda hs: _run_layers(tail, hs[0]),
        frontier=(_spec(h),),
        prefix_layers=len(head),
        per_row_bytes=sum(sizes) + _row_bytes(h),
    )


def _ordered_nodes(model: Any) -> list[Any]:
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


def _split_functional(model: keras.Model, dummy: tf.Tensor, cache: bool) -> SplitModel:
    nodes = _ordered_nodes(model)
    stochastic_ids: set[int] = set()
    suffix_nodes, prefix_nodes = [], []
    for node in nodes:
        upstream = any(id(t) in stochastic_ids for t in node.input_tensors)
        if not cache or upstream or contains_stochastic(node.operation):
            suffix_nodes.append(node)
            stochastic_ids.update(id(t) for t in node.outputs)
        else:
            prefix_nodes.append(node)
    out_ref = model.outputs[0]
    frontier_refs: dict[int, Any] = {}
    for node in suffix_nodes:
        for t in node.input_tensors:
            if id(t) not in stochastic_ids:
                frontier_refs.setdefault(id(t), t)
    refs = list(frontier_refs.values())
    input_ref = model.inputs[0]

    def prefix(x: tf.Tensor) -> list[tf.Tensor]:
        values = {id(input_ref): x}
        _run_nodes(prefix_nodes, values)
        return [values[id(r)] for r in refs]

    def suffix(hs: Sequence[tf.Tensor]) -> tf.Tensor:
        values = {id(r): h for r, h in zip(refs, hs, strict=True)}
        _run_nodes(suffix_nodes, values)
        return values[id(out_ref)]

    frontier_values = prefix(dummy)
    sizes: list[int] = []
    values = {id(r): h for r, h in zip(refs, frontier_values, strict=True)}
    _run_nodes(suffix_nodes, values, sizes)
    return SplitModel(
        prefix=prefix,
        suffix=suffix,
        frontier=tuple(_spec(h) for h in frontier_values),
        prefix_layers=len(prefix_nodes),
        per_row_bytes=sum(sizes) + sum(_row_bytes(h) for h in frontier_values),
    )


def _whole(model: Any, dummy: tf.Tensor) -> SplitModel:
    out = model(dummy)
    # A subclassed model hides its activations; budget as if each weight matrix's width were live.
    widths = sum(int(w.shape[-1]) for w in model.weights if len(w.shape) >= 2)
    per_row = 4 * (widths + int(np.prod(dummy.shape[1:]))) + _row_bytes(out)
    return SplitModel(
        prefix=lambda x: [x],
        suffix=lambda hs: model(hs[0]),
        frontier=(_spec(dummy),),
        prefix_layers=0,
        per_row_bytes=per_row,
    )


def split_model(model: Any, input_shape: tuple[int, ...], dtype: str,
                prefix_caching: bool = True) -> SplitModel:
    """Cut ``model`` for MC sampling.

    Args:
        model: A Keras model holding at least one stochastic layer.
        input_shape: Shape of one input row.
        dtype: The input dtype.
        prefix_caching: False runs the whole model T times (for comparison and testing).
    """
    dummy = tf.zeros((1, *input_shape), dtype=dtype)
    if isinstance(model, keras.Sequential):
        return _split_sequential(model, dummy, prefix_caching)
    if getattr(model, "_nodes_by_depth", None) and len(model.inputs or []) == 1:
        return _split_functional(model, dummy, prefix_caching)
    return _whole(model, dummy)
