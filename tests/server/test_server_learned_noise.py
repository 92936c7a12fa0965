"""A learned-noise version served end to end: the server answers with the predictive std and
the intervals of the mixture of the passes' own Gaussians, as the engine computes them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest
from mcdropout_client import Client, _table
from server_testkit import predictor, serving_client

from mcdropout import ModelStore
from mcdropout.metadata import ModelInfo
from mcdropout.modeling import builders

INFO = ModelInfo(name="het", task="regression", input_shape=(4,), target_mean=(3.0,),
                 target_std=(2.0,), noise="learned", default_samples=50, max_samples=2000)


@pytest.fixture(scope="module")
def learned_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("learned")
    keras.utils.set_random_seed(5)  # random weights are enough to test serving
    model = builders.build_mlp(4, 1, hidden=(16,), dropout=0.2, noise="learned")
    ModelStore(root).save(model, INFO)
    fixed = builders.build_mlp(4, 1, hidden=(16,), dropout=0.2)
    ModelStore(root).save(fixed, ModelInfo(name="fix", task="regression", input_shape=(4,),
                                           target_mean=(3.0,), target_std=(2.0,), tau=4.0))
    return root


@pytest.fixture(scope="module")
def learned_client(learned_store: Path) -> Iterator[Client]:
    with serving_client(learned_store) as client:
        yield client


def test_served_answers_carry_the_learned_noise(learned_client: Client,
                                                learned_store: Path) -> None:
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    result = learned_client.predict(x, model="het", samples=200, seed=9, interval_levels=[0.9],
                                    outputs=["mean", "std", "predictive_std"])
    local = predictor(learned_store, "het", 1).predict(x, 200, 9, interval_levels=[0.9])
    assert result.mean.shape == (5, 1)
    np.testing.assert_array_equal(result.mean, local.mean)
    np.testing.assert_array_equal(result.std, local.std)
    np.testing.assert_array_equal(result.predictive_std, local.predictive_std)
    # the noise the head predicts is in the predictive std, beside the epistemic spread
    assert np.all(result.predictive_std > result.std)
    lower, upper = result.intervals[0.9]
    np.testing.assert_array_equal(lower, local.intervals[0].lower)
    np.testing.assert_array_equal(upper, local.intervals[0].upper)
    assert learned_client.metadata("het").output.shape[-1] == 1


def test_metadata_says_the_noise_model(learned_client: Client) -> None:
    learned, fixed = learned_client.metadata("het"), learned_client.metadata("fix")
    assert (learned.noise, learned.tau) == ("learned", None)
    assert [(h.noise, h.tau) for h in learned.heads] == [("learned", None)]
    assert fixed.noise == "fixed" and fixed.tau is not None and fixed.tau > 0
    assert [h.noise for h in fixed.heads] == ["fixed"]
    summaries = {m.name: m for m in learned_client.models()}
    assert [h.noise for h in summaries["het"].heads] == ["learned"]
    assert [h.noise for h in summaries["fix"].heads] == ["fixed"]
    text = _table.description(learned)
    assert "learned (a variance per row)" in text and "tau" in text
