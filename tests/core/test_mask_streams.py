"""Every dropout mask of a model has a random stream of its own, so no two masks are the same.

Stacked recurrent cells once shared streams: cell 2's input mask was cell 0's recurrent mask, and
cells past the second spilled into the next layer's streams.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from mcdropout import InvalidArgumentError
from mcdropout.engine import MCDropoutPredictor, layers, rng
from mcdropout.engine.rnn_masks import mask_stream

PASSES, UNITS = 512, 64  # 32768 mask elements per mask for the correlation test


def _stacked_cells(count: int) -> keras.layers.RNN:
    cells = [keras.layers.LSTMCell(4, dropout=0.3, recurrent_dropout=0.3) for _ in range(count)]
    return keras.layers.RNN(keras.layers.StackedRNNCells(cells), return_sequences=True)


def _stacked_cells_model() -> keras.Model:
    """Four stacked LSTM cells, then more dropout and recurrent layers, each kind of mask."""
    keras.utils.set_random_seed(5)
    return keras.Sequential([
        keras.Input((3, 3)),
        _stacked_cells(4),
        keras.layers.Dropout(0.2),
        keras.layers.GRU(4, dropout=0.2, recurrent_dropout=0.1, return_sequences=True),
        keras.layers.GaussianDropout(0.2),
        keras.layers.SimpleRNN(3, dropout=0.25),
        keras.layers.Dropout(0.1),
        keras.layers.Dense(2),
    ])


def _window(passes: int) -> layers.PassWindow:
    return layers.PassWindow(tf.constant(rng.seed_words(7), tf.uint32), tf.constant(0),
                             tf.constant(passes))


def _cells(layer: Any) -> list[Any]:
    if not isinstance(layer, keras.layers.RNN):
        return []
    return layer.cell.cells if isinstance(layer.cell, keras.layers.StackedRNNCells) else [layer.cell]


def _expected_mask_count(model: keras.Model) -> int:
    """Masks a model draws per pass, counted from its structure alone."""
    count = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dropout | keras.layers.GaussianDropout):
            count += 1
        for cell in _cells(layer):
            roles = (cell.dropout > 0) + (cell.recurrent_dropout > 0)
            count += roles * (getattr(cell, "dropout_mask_count", None) or 1)
    return count


# -- the layout ----------------------------------------------------------------------------------
def test_plain_layers_keep_their_streams() -> None:
    """Answers of models without recurrent layers must not change: stream index * 16."""
    assert [mask_stream(k) for k in (0, 1, 2, 2**15 - 1)] == [0, 16, 32, (2**15 - 1) * 16]


def test_mask_streams_are_injective_and_apart_from_plain_layers() -> None:
    layer_ids = [*range(40), 2**10, 2**14 + 3, 2**15 - 2, 2**15 - 1]
    cell_ids = [*range(20), 255, 256, 2**11 - 1]
    grid = list(itertools.product(layer_ids, cell_ids, ("input", "recurrent"), range(16)))
    streams = [mask_stream(*key) for key in grid]
    assert len(set(streams)) == len(grid)
    assert all(0 <= s < 2**32 for s in streams)
    plain = {mask_stream(k) for k in range(2**15)}
    assert plain.isdisjoint(streams)
    salts = {rng._stream_salt(s) for s in [*streams, *plain]}  # distinct streams, distinct keys
    assert len(salts) == len(streams) + len(plain)


@pytest.mark.parametrize("args, what", [
    ((2**15,), "stochastic layers"), ((-1,), "stochastic layers"),
    ((2**15, 0), "stochastic layers"), ((0, 2**11), "cells"),
    ((0, 0, "recurrent", 16), "sub-masks"),
])
def test_models_beyond_the_layout_are_refused(args, what) -> None:
    with pytest.raises(InvalidArgumentError, match=what):
        mask_stream(*args)


# -- the streams a model really uses --------------------------------------------------------------
@pytest.fixture()
def used_streams(monkeypatch) -> Iterator[list[int]]:
    """The stream of every mask drawn while the test runs (one seed, no merged batch)."""
    used: list[int] = []
    pass_keep, stream_key = rng.pass_keep, rng.stream_key

    def recording_pass_keep(seed: Any, stream: int, *args: Any) -> tf.Tensor:
        used.append(stream)
        return pass_keep(seed, stream, *args)

    def recording_stream_key(seed: Any, stream: int) -> tf.Tensor:
        used.append(stream)
        return stream_key(seed, stream)

    monkeypatch.setattr(rng, "pass_keep", recording_pass_keep)
    monkeypatch.setattr(rng, "stream_key", recording_stream_key)
    yield used


def test_every_mask_of_a_model_with_stacked_cells_has_its_own_stream(used_streams) -> None:
    model = _stacked_cells_model()
    passes = 3
    x = tf.tile(tf.random.stateless_normal((2, 3, 3), seed=[1, 2]), [passes, 1, 1])
    with layers.mc_mode(model, _window(passes)):
        model(x)
    expected = _expected_mask_count(model)
    assert expected == 4 * 2 * 4 + 1 + 2 * 3 + 1 + 1 + 1  # LSTM and GRU cells: a mask per gate
    assert len(used_streams) == expected
    assert len(set(used_streams)) == expected, sorted(used_streams)


def _masks_of_every_cell(model: keras.Model) -> dict[str, np.ndarray]:
    """Each mask MC mode gives the model's cells and Dropout layers, (PASSES, UNITS) for one row."""
    ones = tf.ones((PASSES, UNITS))
    masks: dict[str, np.ndarray] = {}
    with layers.mc_mode(model, _window(PASSES)):
        for layer in model.layers:
            if isinstance(layer, keras.layers.Dropout):
                masks[layer.name] = layer.call(ones).numpy()
            for c, cell in enumerate(_cells(layer)):
                for role in ("dropout", "recurrent_dropout"):
                    setattr(cell, f"_{role}_mask", None)
                    getter = getattr(cell, "get_dropout_mask" if role == "dropout"
                                     else "get_recurrent_dropout_mask")
                    drawn = getter(ones)
                    setattr(cell, f"_{role}_mask", None)
                    if drawn is None:
                        continue
                    for sub, mask in enumerate(drawn if isinstance(drawn, list) else [drawn]):
                        masks[f"{layer.name}/cell{c}/{role}/{sub}"] = mask.numpy()
    return masks


def test_masks_of_different_cells_and_layers_are_uncorrelated() -> None:
    model = _stacked_cells_model()
    masks = _masks_of_every_cell(model)
    assert len(masks) == _expected_mask_count(model) - 1  # all but GaussianDropout's noise
    names = sorted(masks)
    kept = np.stack([(masks[n] > 0).ravel() for n in names]).astype(np.float64)
    corr = np.corrcoef(kept)
    bound = 5 / np.sqrt(PASSES * UNITS)  # five standard errors of a zero correlation
    rnn = model.layers[0].name
    cell0_state = names.index(f"{rnn}/cell0/recurrent_dropout/0")
    cell2_input = names.index(f"{rnn}/cell2/dropout/0")
    assert abs(corr[cell0_state, cell2_input]) < bound  # once the same mask: correlation 1
    off_diagonal = np.abs(corr - np.eye(len(names)))
    worst = np.unravel_index(off_diagonal.argmax(), off_diagonal.shape)
    assert off_diagonal.max() < bound, (names[worst[0]], names[worst[1]], off_diagonal.max())
    for n in names:  # and each mask keeps about 1 - rate of its units
        assert 0.6 < (masks[n] > 0).mean() < 0.95


def test_a_model_with_stacked_cells_predicts() -> None:
    keras.utils.set_random_seed(6)
    model = keras.Sequential([keras.Input((4, 3)), _stacked_cells(3), keras.layers.Flatten(),
                              keras.layers.Dropout(0.2), keras.layers.Dense(2)])
    x = np.random.default_rng(0).normal(size=(3, 4, 3)).astype(np.float32)
    predictor = MCDropoutPredictor(model, task="regression")
    assert [s.kind for s in predictor.stochastic_layers] == ["RNN", "Dropout"]
    a, b = predictor.predict(x, samples=40, seed=2), predictor.predict(x, samples=40, seed=2)
    assert a.mean.shape == (3, 2) and np.all(np.isfinite(a.mean)) and np.all(np.isfinite(a.std))
    assert np.all(a.std > 0)
    np.testing.assert_array_equal(a.mean, b.mean)
