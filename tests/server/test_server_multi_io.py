"""Models with several named inputs and heads, through a real server and the real client.

"shop" (multi_testkit.py) takes ``features`` and variable-length integer ``ids`` and answers with
a regression head ``price`` and a classifier head ``kind``. Answers are compared bit for bit
with the in-process engine; the single-input models of the session server check that one-input
requests keep working as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from gated_testkit import gated, gated_registry, running, wait_until
from mcdropout_client import AsyncClient, Client
from mcdropout_client import tensors as wire
from mcdropout_client.cli import main
from mcdropout_client.errors import InvalidArgument
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2_grpc
from mcdropout_server.batching import BatchPolicy
from mcdropout_server.calls import PredictCall, check_reply_size, resolve_outputs
from mcdropout_server.registry import ModelRegistry
from multi_testkit import FEATURES, KINDS, ShopServer, shop_inputs, shop_server
from server_testkit import LIMITS, load_options, reg_inputs

from mcdropout import InvalidArgumentError, ModelStore, MultiHeadPrediction, ResourceLimitError
from mcdropout.engine.determinism import rows_are_batch_invariant

PRICE_STATS = ("mean", "std", "predictive_std", "standard_error")
KIND_STATS = ("mean", "std", "standard_error", "predicted_class", "predictive_entropy",
              "expected_entropy", "mutual_information", "variation_ratio")


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShopServer]:
    with shop_server(tmp_path_factory.mktemp("shop")) as running:
        yield running


@pytest.fixture(scope="module")
def shop_client(shop: ShopServer) -> Iterator[Client]:
    with Client(shop.target, timeout=60.0, retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def shop_stub(shop: ShopServer) -> Iterator[mcdropout_pb2_grpc.PredictionServiceStub]:
    with grpc.insecure_channel(shop.target) as channel:
        yield mcdropout_pb2_grpc.PredictionServiceStub(channel)


def test_named_inputs_answer_per_head_as_the_in_process_engine(shop, shop_client) -> None:
    x = shop_inputs(5, length=4, seed=1)
    result = shop_client.predict(x, model="shop", samples=200, seed=3, interval_levels=[0.9],
                                 outputs=[*PRICE_STATS, *KIND_STATS, "samples"])
    local = shop.predictor().predict(x, 200, 3, interval_levels=[0.9], return_samples=True)
    assert isinstance(local, MultiHeadPrediction)

    assert (result.model, result.samples_used, result.seed, result.task) == (
        "shop", 200, 3, "unspecified")
    assert result.mean is None and result.rows == 5  # a multi-head answer is in heads only
    assert list(result.heads) == ["price", "kind"]
    for name, stats in (("price", PRICE_STATS), ("kind", KIND_STATS)):
        head, expected = result.heads[name], local.heads[name]
        assert head.task == expected.task
        for stat in stats:
            np.testing.assert_array_equal(getattr(head, stat), getattr(expected, stat),
                                          err_msg=f"{name}.{stat}")
        np.testing.assert_array_equal(head.intervals[0.9][0], expected.intervals[0].lower)
        np.testing.assert_array_equal(head.raw_samples, expected.raw_samples)
    # The heads come from the same passes: one joint set of draws, pass for pass.
    assert result.heads["price"].raw_samples.shape == (200, 5, 1)
    assert result.heads["kind"].raw_samples.shape == (200, 5, len(KINDS))
    assert result.heads["price"].predicted_class is None
    assert result.heads["kind"].predictive_std is None


def test_default_outputs_follow_each_heads_task(shop_stub) -> None:
    x = shop_inputs(2)
    reply = shop_stub.Predict(pb.PredictRequest(
        model_name="shop", named_inputs={k: wire.to_proto(v) for k, v in x.items()}))
    assert reply.task == pb.TASK_UNSPECIFIED and reply.samples_used == 30
    assert not any(f.message_type is not None and f.name != "heads" for f, _ in reply.ListFields())
    sent = {h.name: {f.name for f, _ in h.ListFields() if f.message_type is not None}
            for h in reply.heads}
    assert sent == {"price": {"mean", "std", "predictive_std"},
                    "kind": {"mean", "std", "predicted_class", "predictive_entropy",
                             "mutual_information"}}
    assert [(h.name, h.task) for h in reply.heads] == [("price", pb.REGRESSION),
                                                        ("kind", pb.CLASSIFICATION)]


def test_an_output_only_some_heads_have_goes_to_those(shop_client) -> None:
    result = shop_client.predict(shop_inputs(3), model="shop", samples=20, seed=0,
                                 outputs=["predictive_std", "predicted_class"])
    price, kind = result.heads["price"], result.heads["kind"]
    assert price.predictive_std is not None and price.mean is None
    assert kind.predicted_class is not None and kind.mean is None and kind.std is None


def test_variable_lengths_are_served_and_give_their_own_answers(shop, shop_client) -> None:
    engine = shop.predictor()
    for length in (1, 2, 7):
        x = shop_inputs(2, length=length, seed=length)
        result = shop_client.predict(x, model="shop", samples=50, seed=9)
        expected = engine.predict(x, 50, 9)
        np.testing.assert_array_equal(result.heads["kind"].mean, expected.heads["kind"].mean)


@pytest.mark.parametrize(("names", "phrase"), [
    (("features",), "ids"),
    (("features", "ids", "extra"), "extra"),
])
def test_missing_or_unknown_input_names_are_refused(shop_client, names, phrase) -> None:
    x = shop_inputs(2)
    x["extra"] = x["features"]
    with pytest.raises(InvalidArgument) as caught:
        shop_client.predict({name: x[name] for name in names}, model="shop", samples=2)
    message = str(caught.value)
    assert phrase in message and "features" in message and "ids" in message


def test_an_array_for_a_model_with_several_inputs_is_refused(shop_client) -> None:
    with pytest.raises(InvalidArgument) as caught:
        shop_client.predict(shop_inputs(2)["features"], model="shop", samples=2)
    assert "features" in str(caught.value) and "ids" in str(caught.value)


def test_inputs_with_different_row_counts_are_refused(shop_client) -> None:
    x = shop_inputs(3)
    x["ids"] = x["ids"][:2]
    with pytest.raises(InvalidArgument, match="rows"):
        shop_client.predict(x, model="shop", samples=2)


@pytest.mark.parametrize("change, phrase", [
    (lambda x: {**x, "ids": x["ids"][:, :0]},
     "input 'ids' has length 0 in variable dimension 1 of shape (rows, *)"),
    (lambda x: {**x, "ids": x["ids"] + 10}, "ids must be integers in 0..9"),
    (lambda x: {**x, "ids": x["ids"].astype(np.float32)}, "input 'ids' takes integer ids"),
])
def test_bad_ids_are_invalid_argument_and_the_server_keeps_serving(shop_client, change,
                                                                   phrase) -> None:
    with pytest.raises(InvalidArgument) as caught:
        shop_client.predict(change(shop_inputs(2)), model="shop", samples=2)
    assert phrase in str(caught.value)
    assert shop_client.predict(shop_inputs(2), model="shop", samples=2).heads


def test_both_inputs_and_named_inputs_is_invalid_argument(shop_stub, stub) -> None:
    x = shop_inputs(2)
    for target, model in ((shop_stub, "shop"), (stub, "reg")):
        request = pb.PredictRequest(model_name=model, inputs=wire.to_proto(reg_inputs(2)),
                                    named_inputs={"features": wire.to_proto(x["features"])})
        with pytest.raises(grpc.RpcError) as caught:
            target.Predict(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "set inputs or named_inputs, not both" in caught.value.details()


def test_a_one_input_model_takes_its_rows_by_name_too(client: Client) -> None:
    x = reg_inputs(3)
    plain = client.predict(x, model="reg", samples=40, seed=4)
    name = client.metadata("reg").inputs[0].name
    for named in ({name: x}, {"inputs": x}):
        result = client.predict(named, model="reg", samples=40, seed=4)
        np.testing.assert_array_equal(result.mean, plain.mean)
        assert result.heads == {}
    with pytest.raises(InvalidArgument) as caught:
        client.predict({"rows": x}, model="reg", samples=2)
    assert "rows" in str(caught.value) and name in str(caught.value)


def test_metadata_lists_every_input_and_head(shop_client, client: Client) -> None:
    meta = shop_client.metadata("shop")
    assert [(i.name, i.dtype, i.shape) for i in meta.inputs] == [
        ("features", "float32", (-1, FEATURES)), ("ids", "int32", (-1, -1))]
    price, kind = meta.heads
    assert (price.name, price.task, price.output.shape, price.labels) == (
        "price", "regression", (-1, 1), ("price",))
    assert price.tau == pytest.approx(4.0 / 10.0**2)  # standardised tau in target units
    assert (kind.name, kind.task, kind.output.shape, kind.labels, kind.tau) == (
        "kind", "classification", (-1, len(KINDS)), KINDS, None)
    # The older fields describe the first input and head.
    assert (meta.input, meta.output, meta.task, meta.labels) == (
        meta.inputs[0], price.output, "regression", ("price",))
    assert meta.tau == price.tau

    reg = client.metadata("reg")
    assert reg.inputs == (reg.input,) and len(reg.heads) == 1
    assert (reg.heads[0].task, reg.heads[0].output, reg.heads[0].labels) == (
        "regression", reg.output, reg.labels)


def test_list_models_lists_inputs_and_heads(shop_client) -> None:
    (summary,) = shop_client.models()
    assert (summary.name, summary.task, summary.versions) == ("shop", "regression", (1,))
    assert [i.name for i in summary.inputs] == ["features", "ids"]
    assert [(h.name, h.task) for h in summary.heads] == [("price", "regression"),
                                                          ("kind", "classification")]


async def test_async_client_takes_mappings_and_returns_heads(shop, shop_client) -> None:
    x = shop_inputs(2, seed=5)
    expected = shop_client.predict(x, model="shop", samples=25, seed=11)
    async with AsyncClient(shop.target, retries=0) as client:
        result = await client.predict(x, model="shop", samples=25, seed=11)
        meta = await client.metadata("shop")
    for name in ("price", "kind"):
        np.testing.assert_array_equal(result.heads[name].mean, expected.heads[name].mean)
    assert [h.name for h in meta.heads] == ["price", "kind"]


def test_the_cli_takes_named_inputs(shop, tmp_path: Path, capsys) -> None:
    x = shop_inputs(2)
    for name, value in x.items():
        np.save(tmp_path / f"{name}.npy", value)
    code = main(["predict", "--target", shop.target, "--model", "shop", "--seed", "1",
                 "--input", f"features={tmp_path / 'features.npy'}",
                 "--input", f"ids={tmp_path / 'ids.npy'}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "head price (regression)" in out and "head kind (classification)" in out
    assert any(kind in out for kind in KINDS)  # class labels from the metadata


# -- the output rules and the reply-size guard, per head (no server needed) ----------------------
@dataclass(frozen=True)
class FakeHead:
    name: str
    task: str
    has_tau: bool = False


TWO_REGRESSIONS = (FakeHead("price", "regression", True), FakeHead("rent", "regression"))


def _call(*outputs: str, levels: tuple[float, ...] = ()) -> PredictCall:
    return PredictCall("m", None, np.zeros((1, 1)), outputs=outputs, interval_levels=levels)


def test_outputs_go_to_the_heads_that_have_them() -> None:
    resolved = resolve_outputs(_call("mean", "predictive_std"), TWO_REGRESSIONS)
    assert resolved == {"price": {"mean", "predictive_std"}, "rent": {"mean"}}
    defaults = resolve_outputs(_call(levels=(0.9,)), TWO_REGRESSIONS)
    assert defaults == {"price": {"mean", "std", "predictive_std", "intervals"},
                        "rent": {"mean", "std", "intervals"}}


def test_an_output_no_head_has_is_refused_naming_each_heads_outputs() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        resolve_outputs(_call("mean", "predicted_class"), TWO_REGRESSIONS)
    message = str(caught.value)
    assert "outputs ['predicted_class'] apply to no head of this model" in message
    assert "price (regression): mean, std, standard_error, predictive_std" in message
    assert "rent (regression): mean, std, standard_error, intervals, samples" in message


def test_the_reply_size_guard_counts_every_head() -> None:
    outputs = {"price": frozenset({"samples"}), "kind": frozenset({"samples"})}
    widths = {"price": 1, "kind": 3}
    # 100 passes x 10 rows x (1 + 3) float32 values: 16,000 bytes of raw samples.
    check_reply_size(outputs, widths, rows=10, samples=100, levels=0, limit=20_000)
    with pytest.raises(ResourceLimitError, match="10 rows x 4 outputs and raw samples"):
        check_reply_size(outputs, widths, rows=10, samples=100, levels=0, limit=15_000)


def test_requests_of_different_input_shapes_do_not_share_a_batch_key(shop: ShopServer) -> None:
    registry = ModelRegistry.load(ModelStore(shop.store_root), limits=LIMITS, warmup=False,
                                  **load_options())
    policy = BatchPolicy()

    def key(length: int) -> object:
        x = shop_inputs(2, length=length)
        return policy.key(registry.prepare(PredictCall("shop", None, x, samples=10)))

    assert key(3) == key(3) and key(3) != key(5)


def test_queued_requests_merge_only_with_equal_input_shapes(shop: ShopServer) -> None:
    registry = gated_registry(shop.store_root)
    engine = shop.predictor()
    lengths = [3, 3, 5, 3, 5]
    requests = [shop_inputs(1 + i % 2, length=n, seed=i) for i, n in enumerate(lengths)]
    with running(registry, workers=1, batch_max_wait_ms=0.0) as app, \
            Client(f"127.0.0.1:{app.port}", retries=0) as client, ThreadPoolExecutor(8) as pool:
        gate = gated(registry, "shop")
        gate.gate.clear()
        before = gate.started  # warm-up calls count too
        blocker = pool.submit(client.predict, shop_inputs(1), model="shop", samples=5, seed=0)
        wait_until(lambda: gate.started > before, what="the blocking request to reach the engine")
        futures = [pool.submit(client.predict, x, model="shop", samples=40, seed=100 + i)
                   for i, x in enumerate(requests)]
        wait_until(lambda: app.runner.scheduler.queued == len(requests), what="5 queued requests")
        gate.gate.set()
        blocker.result(timeout=30)
        for i, (x, future) in enumerate(zip(requests, futures, strict=True)):
            expected = engine.predict(x, 40, 100 + i)
            for head in ("price", "kind"):  # bit for bit where this CPU's kernels allow it
                got, want = future.result(timeout=60).heads[head].mean, expected.heads[head].mean
                if rows_are_batch_invariant():
                    np.testing.assert_array_equal(got, want, err_msg=head)
                else:
                    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12, err_msg=head)
        # The blocker, then one engine call per length: the 3s together, the 5s together.
        assert gate.started == before + 3
