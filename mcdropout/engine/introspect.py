"""What a Keras model tells about itself: its inputs (names, row shapes, dtypes, id ranges) and its
output heads (names, the layer that makes each, hence its task).

Names follow Keras: an input is named by its ``keras.Input(name=...)`` (a one-input model whose
input Keras named on its own answers to "inputs", today's name), a Functional model's heads by
its ``output_names``. Keras names what the user did not (``keras_tensor_3``, ``input_layer_1``)
anew when a model is saved and loaded back, so metadata that names inputs or heads is matched to
the model by name, and by position where the model's names are such generated ones.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from mcdropout.engine.inputs import LEGACY_NAME, InputSpec
from mcdropout.engine.prediction import Task
from mcdropout.errors import InvalidArgumentError
from mcdropout.metadata import INPUT_DTYPES, InputInfo
from mcdropout.store import as_array

_GENERATED = re.compile(r"^(keras_tensor|input_layer|input)(_\d+)?$")
LEGACY_HEAD = "output"


def infer_task(layer: Any) -> Task:
    """"classification" when ``layer`` is a softmax or ends in a softmax or sigmoid, else
    "regression" (also when the layer is unknown, None)."""
    if isinstance(layer, keras.layers.Softmax):
        return "classification"
    activation = getattr(getattr(layer, "activation", None), "__name__", "")
    return "classification" if activation in ("softmax", "sigmoid") else "regression"


def generated(name: str) -> bool:
    """Whether Keras made ``name`` up (it may change when the model is saved and loaded)."""
    return bool(_GENERATED.match(name))


def declared_inputs(model: Any) -> list[tuple[str, tuple[int | None, ...], str]] | None:
    """(Keras name, row shape, dtype) of each input the model declares, in order; None if it
    declares none (a subclassed or unbuilt model)."""
    inputs = getattr(model, "inputs", None)
    if not inputs:
        return _built_inputs(model)
    return [(str(getattr(t, "name", "") or f"input_{i}"), tuple(t.shape[1:]), str(t.dtype))
            for i, t in enumerate(inputs)]


def _built_inputs(model: Any) -> list[tuple[str, tuple[int | None, ...], str]] | None:
    """A built subclassed model's inputs, from the shapes it was built with (Keras keeps them in
    its build config, also across saving and loading): a dict of shapes names the inputs; the
    dtype is the model's input dtype."""
    if not getattr(model, "built", False) or not hasattr(model, "get_build_config"):
        return None
    shapes = (model.get_build_config() or {}).get("input_shape")
    dtype = str(getattr(model, "input_dtype", None) or "float32")

    def row(shape: Any) -> tuple[int | None, ...]:
        return tuple(None if d is None else int(d) for d in list(shape)[1:])

    if isinstance(shapes, dict):
        return [(str(name), row(shape), dtype) for name, shape in shapes.items()]
    if isinstance(shapes, (list, tuple)) and shapes and all(
            isinstance(s, (list, tuple)) for s in shapes):
        return [(f"input_{i}", row(shape), dtype) for i, shape in enumerate(shapes)]
    if isinstance(shapes, (list, tuple)) and shapes:
        return [(LEGACY_NAME, row(shapes), dtype)]
    return None


def match(kind: str, given: Sequence[str], found: Sequence[str], positional: bool) -> list[int]:
    """For each name in ``found`` (the model's), the index of the matching ``given`` one.

    By name when every given name is one of the model's; else, when ``positional`` (the model's
    names are generated or unknown) and the counts agree, by position.

    Raises:
        InvalidArgumentError: the names and counts do not match; the message lists the model's.
    """
    if sorted(given) == sorted(found):
        return [list(given).index(name) for name in found]
    if positional and len(given) == len(found):
        return list(range(len(found)))
    raise InvalidArgumentError(
        f"the model has {len(found)} {kind}(s) {list(found)}; the {kind}s given are "
        f"{list(given)}: name each of the model's {kind}s exactly once")


def embedding_limits(model: Any) -> list[int | None]:
    """Per input: the smallest ``input_dim`` of the Embeddings reading it directly, else None.

    Ids outside an Embedding's range would fail inside the graph (or read another row); knowing
    the range lets a request's ids be refused with a message first.
    """
    inputs = getattr(model, "inputs", None) or []
    limits: list[int | None] = [None] * len(inputs)
    if isinstance(model, keras.Sequential):
        if inputs and isinstance(model.layers[0], keras.layers.Embedding):
            limits[0] = int(model.layers[0].input_dim)
        return limits
    if not getattr(model, "_nodes_by_depth", None):
        return limits
    from mcdropout.engine.split import ordered_nodes  # split imports TensorFlow

    for node in ordered_nodes(model):
        if not isinstance(node.operation, keras.layers.Embedding):
            continue
        for i, ref in enumerate(inputs):
            if any(t is ref for t in node.input_tensors):
                dim = int(node.operation.input_dim)
                limits[i] = dim if limits[i] is None else min(dim, limits[i])  # type: ignore[type-var]
    return limits


def head_layers(model: Any, count: int, keys: tuple[str, ...] | None
                ) -> tuple[list[str], list[Any], bool]:
    """Names of the model's ``count`` heads, the layer making each (None when unknown), and
    whether the names are the model's own (else generated here: match metadata by position).

    Functional models: ``output_names``. Sequential: "output". Subclassed: "output" for one
    tensor, ``output_<i>`` for a list, the keys (sorted) for a dict.
    """
    if isinstance(model, keras.Sequential):
        return [LEGACY_HEAD], [model.layers[-1]], False
    outputs = getattr(model, "outputs", None)
    names = getattr(model, "output_names", None)
    if outputs and names and len(names) == count and getattr(model, "_nodes_by_depth", None):
        layers = [getattr(o, "_keras_history", (None,))[0] for o in outputs]
        return [str(n) for n in names], layers, True
    if keys is not None:
        return list(keys), [None] * count, True
    if count == 1:
        return [LEGACY_HEAD], [None], False
    return [f"output_{i}" for i in range(count)], [None] * count, False


def build_inputs(model: Any, given: Sequence[InputInfo] | None,
                 input_shape: Sequence[int | None] | None, feature_mean: Any, feature_std: Any
                 ) -> tuple[InputSpec, ...]:
    """The model's inputs, in its input order.

    Args:
        model: The Keras model.
        given: One :class:`InputInfo` per input (matched by name or, where the model's names are
            generated, by position; a subclassed model takes them in the order given); None
            takes everything from the model.
        input_shape, feature_mean, feature_std: A one-input model's row shape (when the model
            does not declare it) and standardisation, when ``given`` is None.

    Raises:
        InvalidArgumentError: names, shapes or dtypes that do not match the model's, a shape
            that cannot be told, or standardisation for an integer or several-input model.
    """
    declared = declared_inputs(model)
    limits = embedding_limits(model)
    if declared is not None and len(limits) != len(declared):  # declared by its build config
        limits = [None] * len(declared)
    if given is not None:
        if input_shape is not None or feature_mean is not None or feature_std is not None:
            raise InvalidArgumentError("give either inputs=[InputInfo, ...] or input_shape/"
                                       "feature_mean/feature_std (one input), not both")
        if declared is None:
            specs = [_spec(g, g.shape, g.dtype, None) for g in given]
        else:
            names = [name for name, _, _ in declared]
            order = match("input", [g.name for g in given], names,
                          len(names) == 1 or all(generated(n) for n in names))
            specs = [_spec(given[order[i]], shape, dtype, limits[i])
                     for i, (_, shape, dtype) in enumerate(declared)]
    elif declared is None:
        if input_shape is None:
            raise InvalidArgumentError(
                "cannot tell the model's input shape (a subclassed or unbuilt model); pass "
                "input_shape=(...) for one row, or inputs=[InputInfo(name, shape, dtype), ...]")
        specs = [_spec(InputInfo(LEGACY_NAME, tuple(input_shape), "float32", feature_mean,
                                 feature_std), tuple(input_shape), "float32", None)]
    else:
        if len(declared) > 1 and (input_shape is not None or feature_mean is not None
                                  or feature_std is not None):
            raise InvalidArgumentError(
                f"the model has {len(declared)} inputs {[n for n, _, _ in declared]}; describe "
                "them with inputs=[InputInfo, ...], not input_shape/feature_mean/feature_std")
        specs = []
        for (name, shape, dtype), limit in zip(declared, limits, strict=True):
            row = shape if input_shape is None else tuple(input_shape)
            name = LEGACY_NAME if len(declared) == 1 and generated(name) else name
            specs.append(_spec(InputInfo(name, row, _dtype_name(dtype), feature_mean,
                                         feature_std), row, dtype, limit))
    return tuple(specs)


def _dtype_name(dtype: str) -> str:
    return dtype if dtype in INPUT_DTYPES else "float32"  # the InputInfo is only a carrier here


def _spec(info: InputInfo, shape: tuple[int | None, ...], dtype: str, limit: int | None
          ) -> InputSpec:
    """The spec of ``info`` for a model input of row ``shape`` and ``dtype``."""
    where = f"input {info.name!r}"
    if len(info.shape) != len(shape) or any(a is not None and b is not None and a != b
                                            for a, b in zip(info.shape, shape, strict=True)):
        raise InvalidArgumentError(f"{where}: the row shape given is {info.shape}, the model "
                                   f"declares {shape} (None: variable)")
    if info.dtype != _dtype_name(dtype):
        raise InvalidArgumentError(f"{where}: the dtype given is {info.dtype}, the model takes "
                                   f"{dtype}")
    row = tuple(b if b is not None else a for a, b in zip(info.shape, shape, strict=True))
    mean, std = as_array(info.feature_mean), as_array(info.feature_std)
    if np.dtype(dtype).kind in "iu" and (mean is not None or std is not None):
        raise InvalidArgumentError(f"{where} takes integer ids; it cannot be standardised")
    return InputSpec(info.name, row, dtype, mean, std, limit)
