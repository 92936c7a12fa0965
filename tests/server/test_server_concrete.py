"""A concrete-dropout version served end to end: the server loads its own layer classes without
any module named, samples each layer at its learned rate, and says the rates in the metadata."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import pytest
from server_testkit import predictor, serving_client

from mcdropout import ModelStore
from mcdropout.metadata import ModelInfo
from mcdropout.modeling import builders

RATES = {"hidden_1": 0.07, "hidden_2": 0.31, "output": 0.18}


@pytest.fixture
def concrete_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("concrete")
    keras.utils.set_random_seed(8)  # random weights are enough to test serving
    model = builders.build_mlp(4, 1, hidden=(16, 8), dropout=0.1, concrete=True, n_train=100)
    for name, rate in RATES.items():
        model.get_layer(name).dropout.p_logit.assign(math.log(rate / (1 - rate)))
    ModelStore(root).save(model, ModelInfo(name="cd", task="regression", input_shape=(4,),
                                           tau=3.0, default_samples=50, max_samples=2000))
    return root


def test_served_concrete_model_samples_at_its_learned_rates(concrete_store: Path) -> None:
    with serving_client(concrete_store) as client:
        meta = client.metadata("cd")
        x = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)
        result = client.predict(x, model="cd", samples=300, seed=5,
                                outputs=["mean", "std", "predictive_std"])
    assert [(d.kind, round(d.rate, 6)) for d in meta.dropout_layers] == [
        ("ConcreteDropout", rate) for rate in RATES.values()]
    local = predictor(concrete_store, "cd", 1).predict(x, 300, 5)
    np.testing.assert_array_equal(result.mean, local.mean)
    np.testing.assert_array_equal(result.std, local.std)
    assert np.all(result.std > 0) and np.all(result.predictive_std > result.std)
