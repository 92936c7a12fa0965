"""The models users bring, end to end: built in plain Keras, imported with the CLI, served by one
real server, and answered through the Python client and the Open Inference Protocol.

Each served answer (T = 1,000 passes, fixed seed) is held to an independent reference of 2,000
passes of ``model(x, training=True)`` with only the dropout layers stochastic
(:mod:`zoo_reference`), per head, row and output:

- mean: ``|served - ref| <= 5 * sqrt(s_served**2 / 1000 + s_ref**2 / 2000) + 1e-5 * (1 + |ref|)``;
- std: ``|log(s_served / s_ref)| <= 5 * sqrt((kurt - 1) / 4 * (1 / 1000 + 1 / 2000))``, with the
  kurtosis of the reference's passes (about ±0.11 for normal-like outputs, kurt = 3).

The zoo (:mod:`zoo_models`): a CNN with BatchNormalization, SpatialDropout2D and Dropout; an LSTM
with dropout and recurrent_dropout; stacked LSTM and GRU cells; a two-input model (float features
and integer ids through an Embedding); a two-head model (regression and softmax); a subclassed
model with a registered custom layer (served through ``--import-module``); Gaussian and Alpha
dropout; a variable-length token model, asked at two lengths; token ids padded with 0 to a fixed
length behind Embedding(mask_zero=True), so that the LSTM must skip the padding.
"""

from __future__ import annotations

import hashlib
from typing import Any

import keras
import numpy as np
import pytest
from mcdropout_client.proto.inference import grpc_predict_v2_pb2 as oip
from zoo_models import NAMES, Inputs, ZooModel
from zoo_reference import (
    Estimate,
    batch_norm_statistics,
    compare,
    correlation,
    correlation_bound,
)
from zoo_serving import (
    Store,
    Zoo,
    client_estimates,
    infer_request,
    oip_estimates,
    oip_output_names,
)

from mcdropout import ModelStore
from mcdropout.engine.validate import validate_model

SAMPLES = 1000
SEED = 20261


def _x(probe: Inputs) -> Any:
    """What ``Client.predict`` takes: the array of a one-input model, else the mapping."""
    return next(iter(probe.values())) if len(probe) == 1 else probe


def _native(zoo: Zoo, model: ZooModel, probe: Inputs, seed: int) -> dict[str, Estimate]:
    result = zoo.client.predict(_x(probe), model=model.name, samples=SAMPLES, seed=seed,
                                outputs=["mean", "std"])
    assert (result.samples_used, result.seed) == (SAMPLES, seed)
    return client_estimates(result, model)


def _agree(api: str, model: ZooModel, served: dict[str, Estimate],
           expected: dict[str, Estimate]) -> None:
    """Every head of ``served`` agrees with the reference (printed, for ``pytest -s``)."""
    assert served.keys() == expected.keys()
    for head, estimate in served.items():
        agreement = compare(estimate, expected[head], f"{model.name}/{head}")
        print(f"{api} {model.name}/{head}: {agreement}")
        assert not agreement.failures, str(agreement)


@pytest.mark.parametrize("name", NAMES)
def test_import_infers_inputs_and_heads(name: str, zoo: dict[str, ZooModel], store: Store) -> None:
    outcome = store.imported[name]
    assert outcome.status == 0, f"mcdropout import {name} exited {outcome.status}:\n{outcome.output}"
    model = zoo[name]
    stored = ModelStore(store.root)
    info = stored.read_info(name)
    probe = model.probes[0]
    inputs = info.input_infos()
    assert [i.dtype for i in inputs] == [str(x.dtype) for x in probe.values()]
    if name == "varlen":
        assert [i.shape for i in inputs] == [(None,)]
    else:
        assert [i.shape for i in inputs] == [x.shape[1:] for x in probe.values()]
    if not model.custom:  # a subclassed model names no input of its own
        assert [i.name for i in inputs] == list(probe)
    heads = info.head_infos()
    if len(model.heads) > 1:
        assert {h.name: h.task for h in heads} == model.heads
    else:
        assert [h.task for h in heads] == list(model.heads.values())
    # Readable by other users: the image's uid serves a store someone else wrote.
    version = stored.path(name, info.version)
    assert version.stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in version.iterdir()} == {0o644}


@pytest.mark.parametrize("name", NAMES)
def test_client_answers_agree_with_the_reference(name: str, served: Zoo) -> None:
    model = served.imported(name)
    _agree("client", model, _native(served, model, model.probes[0], SEED),
           served.references[name][0])


@pytest.mark.parametrize("name", NAMES)
def test_oip_answers_agree_with_the_reference_and_the_native_api(name: str, served: Zoo) -> None:
    model = served.imported(name)
    probe = model.probes[-1]  # the variable-length model: another length than the client's
    response = served.oip.ModelInfer(infer_request(model, probe, samples=SAMPLES, seed=SEED + 1),
                                     timeout=120)
    answered = oip_estimates(response, model)
    assert {o.name for o in response.outputs} == {n for pair in oip_output_names(model).values()
                                                  for n in pair}
    _agree("oip", model, answered, served.references[name][-1])
    # The same seed through the native API runs the same passes: the same answer, bit for bit.
    native = _native(served, model, probe, SEED + 1)
    for head, estimate in answered.items():
        np.testing.assert_array_equal(estimate.mean, native[head].mean, err_msg=f"{name}/{head}")
        np.testing.assert_array_equal(estimate.std, native[head].std, err_msg=f"{name}/{head}")


@pytest.mark.parametrize("name", NAMES)
def test_metadata_describes_every_input_and_head(name: str, served: Zoo) -> None:
    model = served.imported(name)
    probe = model.probes[0]
    described = served.client.metadata(name)
    shapes = [(-1, *(-1 if name == "varlen" else d for d in x.shape[1:])) for x in probe.values()]
    assert [(i.dtype, i.shape) for i in described.inputs] == [
        (str(x.dtype), s) for x, s in zip(probe.values(), shapes, strict=True)]
    assert [h.task for h in described.heads] == [model.heads[h.name] if len(model.heads) > 1
                                                 else next(iter(model.heads.values()))
                                                 for h in described.heads]
    meta = served.oip.ModelMetadata(oip.ModelMetadataRequest(name=name))
    assert [list(i.shape) for i in meta.inputs] == [list(s) for s in shapes]
    if not model.custom:
        assert [i.name for i in described.inputs] == [i.name for i in meta.inputs] == list(probe)
    outputs = {o.name for o in meta.outputs}
    assert {n for pair in oip_output_names(model).values() for n in pair} <= outputs


def test_the_heads_come_from_the_same_passes(served: Zoo) -> None:
    """The raw passes of "price" and "kind" are joint: per row, the correlation of the price
    with each class probability across passes matches the reference's within 5 standard errors
    of Fisher's z (``|atanh r_served - atanh r_ref| <= 5 sqrt(1/(T-3) + 1/(N-3))``). Heads drawn
    from separate passes would show no correlation at all."""
    model = served.imported("two_heads")
    result = served.client.predict(_x(model.probes[0]), model="two_heads", samples=SAMPLES,
                                   seed=SEED + 2, outputs=["samples"])
    price, kind = (result.heads[head].raw_samples for head in ("price", "kind"))
    assert price is not None and kind is not None
    assert price.shape == (SAMPLES, 3, 1) and kind.shape == (SAMPLES, 3, 3)
    ref = served.references["two_heads"][0]
    ref_price, ref_kind = ref["price"].samples, ref["kind"].samples
    assert ref_price is not None and ref_kind is not None
    expected = correlation(ref_price, ref_kind)
    answered = correlation(price.astype(np.float64), kind.astype(np.float64))
    bound = correlation_bound(SAMPLES, ref_price.shape[0])
    # The check can tell: some correlation is far from 0 in Fisher's z.
    assert np.max(np.abs(np.arctanh(expected))) > 2 * bound, expected
    gap = np.abs(np.arctanh(answered) - np.arctanh(expected))
    assert np.all(gap <= bound), f"served {answered.round(3)}\nreference {expected.round(3)}"


def _digest(path: Any) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_batch_normalization_statistics_are_unchanged_by_serving(served: Zoo) -> None:
    """The CNN's BN moving statistics: the same in the user's file, the stored file after
    serving, and a predictor's model after 1,000 passes (the engine the server runs)."""
    model = served.imported("cnn")
    stored = ModelStore(served.store.root)
    stored_file = stored.path("cnn", 1) / "model.keras"
    before = _digest(stored_file)
    served.client.predict(_x(model.probes[0]), model="cnn", samples=SAMPLES, seed=SEED)
    assert _digest(stored_file) == before  # serving never writes the store

    original = batch_norm_statistics(keras.saving.load_model(model.path))
    # Trained: the moving statistics left their initial zeros and ones (else a BN run in
    # training mode, or not at all, could go unnoticed).
    assert len(original) == 2 and all(np.all((v != 0) & (v != 1)) for v in original.values())
    loaded = stored.load_model("cnn", 1)
    assert _same(batch_norm_statistics(loaded), original)
    predictor = validate_model(loaded, stored.read_info("cnn", 1))
    predictor.predict(model.probes[0], samples=SAMPLES, seed=SEED)
    assert _same(batch_norm_statistics(loaded), original)


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
