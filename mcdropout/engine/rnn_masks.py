"""Recurrent layers in Monte Carlo mode, and the stream layout that keeps every mask apart.

Every mask of a model is drawn from its own random stream (see :func:`.rng.stream_key`), and
:func:`mask_stream` names the stream of each (stochastic layer, cell, role, sub-mask). A recurrent
cell draws one mask per sequence for all time steps (variational RNN dropout, Gal & Ghahramani
2016): one for its inputs and one for its recurrent state, each split into ``dropout_mask_count``
sub-masks (one per gate) where the cell asks for them, as Keras' ``_create_dropout_mask`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import keras
import tensorflow as tf

from mcdropout.errors import InvalidArgumentError

Role = Literal["input", "recurrent"]

# Field widths of a recurrent stream: flag (1) | layer (15) | cell (11) | role (1) | sub-mask (4).
_LAYER_BITS, _CELL_BITS, _SUB_BITS = 15, 11, 4
_RECURRENT = 1 << 31
_PLAIN_STRIDE = 16  # moving plain layers' streams would change every dropout-only model's answers

_ROLES: tuple[tuple[Role, str, str], ...] = (
    ("input", "dropout", "get_dropout_mask"),
    ("recurrent", "recurrent_dropout", "get_recurrent_dropout_mask"),
)  # (role, rate attribute, Keras' mask getter)

MAX_LAYERS = 1 << _LAYER_BITS
MAX_CELLS = 1 << _CELL_BITS
MAX_SUB_MASKS = 1 << _SUB_BITS

# draw(stream, step_input, rate) -> scaled keep mask shaped like step_input, passes folded in.
DrawMask = Callable[[int, tf.Tensor, float], tf.Tensor]


def _check(what: str, value: int, limit: int) -> None:
    if not 0 <= value < limit:
        raise InvalidArgumentError(f"MC dropout supports at most {limit} {what}; "
                                   f"got index {value}")


def mask_stream(layer_index: int, cell: int | None = None, role: Role = "input",
                sub: int = 0) -> int:
    """The random stream of one dropout mask: an integer in [0, 2**32).

    Args:
        layer_index: The stochastic layer's position among the model's stochastic layers.
        cell: None for a Dropout, GaussianDropout or AlphaDropout layer; for a recurrent layer,
            the cell's position in its ``StackedRNNCells`` (0 for a single cell).
        role: Recurrent layers: whether the mask drops the cell's inputs or its recurrent state.
        sub: Recurrent layers: which of the cell's ``dropout_mask_count`` sub-masks.

    A plain layer's stream is ``layer_index * 16``, below 2**19 with bit 31 clear. A recurrent
    mask's stream has bit 31 set and its layer, cell, role and sub-mask in disjoint bit fields
    (15, 11, 1 and 4 bits), each checked to fit. So the stream determines the tuple: no two
    masks of any model share a stream, and as the stream salt is a bijection on uint32, no two
    share a key.

    Raises:
        InvalidArgumentError: The model has more than 2**15 stochastic layers, a stack more than
            2**11 cells, or a cell more than 16 sub-masks.
    """
    _check("stochastic layers", layer_index, MAX_LAYERS)
    if cell is None:
        return layer_index * _PLAIN_STRIDE
    _check("cells in a recurrent layer", cell, MAX_CELLS)
    _check("dropout sub-masks in a recurrent cell", sub, MAX_SUB_MASKS)
    role_bit = {"input": 0, "recurrent": 1}[role]
    fields = ((layer_index << _CELL_BITS | cell) << 1 | role_bit) << _SUB_BITS | sub
    return _RECURRENT | fields


def _stacked_cells(layer: Any) -> list[Any]:
    if not isinstance(layer, keras.layers.RNN):
        return []
    return layer.cell.cells if isinstance(layer.cell, keras.layers.StackedRNNCells) else [layer.cell]


def _drops(cell: Any) -> bool:
    return float(getattr(cell, "dropout", 0.0)) > 0 or float(getattr(cell, "recurrent_dropout", 0.0)) > 0


def rnn_cells(layer: Any) -> list[Any]:
    """The cells of recurrent ``layer`` that drop inputs or state; [] for any other layer."""
    return [c for c in _stacked_cells(layer) if _drops(c)]


def _mask_getter(cell: Any, rate_attr: str, streams: list[int], single: bool,
                 draw: DrawMask) -> Callable[[tf.Tensor], Any]:
    cache = f"_{rate_attr}_mask"  # where Keras' own getter caches it, reset by RNN.call

    def get(step_input: tf.Tensor) -> Any:
        rate = float(getattr(cell, rate_attr))
        if getattr(cell, cache, None) is None and rate > 0:
            masks = [draw(s, step_input, rate) for s in streams]
            setattr(cell, cache, masks[0] if single else masks)
        return getattr(cell, cache, None)

    return get


def rnn_patches(layer: Any, layer_index: int, draw: DrawMask) -> list[tuple[Any, str, Any]]:
    """(object, attribute, replacement) patches that make recurrent ``layer`` draw MC masks.

    The layer runs in training mode (only the dropout masks make it differ from inference
    mode), and each dropping cell's mask getters draw with ``draw`` on the streams
    :func:`mask_stream` gives it.
    """
    original_call = type(layer).call.__get__(layer)

    def call(*args: Any, **kwargs: Any) -> Any:
        kwargs["training"] = True
        return original_call(*args, **kwargs)

    patches: list[tuple[Any, str, Any]] = [(layer, "call", call)]
    for position, cell in enumerate(_stacked_cells(layer)):
        if not _drops(cell):
            continue
        count = getattr(cell, "dropout_mask_count", None)
        for role, rate_attr, method in _ROLES:
            streams = [mask_stream(layer_index, position, role, sub) for sub in range(count or 1)]
            patches.append((cell, method, _mask_getter(cell, rate_attr, streams, count is None,
                                                       draw)))
    return patches
