"""RankPool: a pool streamed in chunks, ranked by an acquisition function, the top k returned.

One real server for the module, whose messages may hold 3 MiB and whose received-bytes budget is
1 MiB (so that one chunk can be over the budget yet under the message limit). The reference
for every ranking is computed independently: one Predict per chunk with seed + c, then a sort.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest
from mcdropout_client import AsyncClient, Client, RankedPool, cli
from mcdropout_client import tensors as wire
from mcdropout_client.errors import FailedPrecondition, InvalidArgument, NotFound
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2_grpc as pb_grpc
from mcdropout_client.ranking import chunks
from mcdropout_server import ranking
from mcdropout_server.app import ServerApp, ServerThread
from mcdropout_server.ranking import TopK, top_k_limit
from mcdropout_server.registry import ModelRegistry, ServedModel
from server_testkit import cls_inputs, load_options, padded, reg_inputs, settings

from mcdropout import InvalidArgumentError, ModelStore
from mcdropout.calibration import model as cal
from mcdropout.engine import MCDropoutPredictor

MESSAGE_LIMIT = 3 * 2**20
MAX_TOP_K = top_k_limit(MESSAGE_LIMIT)
CLASSIFIER = {"bald": "mutual_information", "predictive_entropy": "predictive_entropy",
              "variation_ratio": "variation_ratio"}


@pytest.fixture(scope="module")
def app(registry: ModelRegistry, store_root: Path) -> Iterator[ServerApp]:
    """The session's models, and "calcls": "cls" with a calibration (temperature 3)."""
    store = ModelStore(store_root)
    info = replace(store.read_info("cls", 1), name="calcls")
    head = registry.get("cls").predictor.heads[0].name
    calibration = cal.Calibration({head: cal.HeadCalibration(
        head, "classification", rows=50, samples=20,
        drift=cal.DriftReference("mutual_information", 0.1, 0.2), temperature=3.0)})
    calibrated = MCDropoutPredictor.from_info(store.load_model("cls", 1), info,
                                              calibration=calibration, **load_options())
    served = ModelRegistry([*registry.models(), ServedModel(info, calibrated)], registry.limits)
    thread = ServerThread(settings(max_message_bytes=MESSAGE_LIMIT, received_bytes_budget_mb=1,
                                   metrics_port=0), served)
    yield thread.start()
    thread.stop(grace=1.0)


@pytest.fixture(scope="module")
def target(app: ServerApp) -> str:
    return f"127.0.0.1:{app.port}"


@pytest.fixture(scope="module")
def client(target: str) -> Iterator[Client]:
    with Client(target, timeout=30.0, retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def stub(target: str) -> Iterator[pb_grpc.PredictionServiceStub]:
    with grpc.insecure_channel(target) as channel:
        yield pb_grpc.PredictionServiceStub(channel)


def expected(client: Client, pool: np.ndarray, *, model: str, statistic: str, chunk_rows: int,
             samples: int, seed: int, top_k: int, calibrated: bool = False
             ) -> tuple[np.ndarray, np.ndarray]:
    """The top k by one Predict per chunk (seed + c), ranked by (-score, row)."""
    scores = np.concatenate([
        np.asarray(getattr(client.predict(chunk, model=model, samples=samples,
                                          seed=(seed + c) % 2**64, outputs=[statistic],
                                          calibrated=calibrated),
                           statistic), np.float64)
        .reshape(len(chunk), -1).mean(axis=1)
        for c, chunk in enumerate(chunks(pool, chunk_rows))])
    order = np.lexsort((np.arange(len(scores)), -scores))[:top_k]
    return order, scores[order]


def request(x: np.ndarray | None = None, **settings: Any) -> pb.RankPoolRequest:
    message = pb.RankPoolRequest(**settings)
    if x is not None:
        message.inputs.CopyFrom(wire.to_proto(x))
    return message


def refused(stub: pb_grpc.PredictionServiceStub, messages: list[Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        stub.RankPool(iter(messages), timeout=30)
    return caught.value  # type: ignore[return-value]


@pytest.fixture(autouse=True)
def keeps_serving(client: Client) -> Iterator[None]:
    """After each test the server still ranks a pool."""
    yield
    assert client.rank_pool(reg_inputs(3), model="reg", top_k=1, acquisition="predictive_std",
                            samples=2, seed=0).rows_scored == 3


# -- the ranking itself ------------------------------------------------------------------------
@pytest.mark.parametrize("acquisition", sorted(CLASSIFIER))
def test_a_classifier_pool_in_chunks_ranks_as_per_chunk_predicts(
        client: Client, acquisition: str) -> None:
    pool = cls_inputs(50, seed=3)
    ranked = client.rank_pool(pool, model="cls", top_k=7, acquisition=acquisition, chunk_rows=16,
                              samples=20, seed=2**64 - 2)  # chunks 2.. wrap to seeds 0, 1
    indices, scores = expected(client, pool, model="cls", statistic=CLASSIFIER[acquisition],
                               chunk_rows=16, samples=20, seed=2**64 - 2, top_k=7)
    assert isinstance(ranked, RankedPool)
    assert (ranked.rows_scored, ranked.model_version, ranked.seed) == (50, 1, 2**64 - 2)
    np.testing.assert_array_equal(ranked.indices, indices)
    np.testing.assert_array_equal(ranked.scores, scores)
    assert ranked.indices.dtype == np.int64 and ranked.scores.dtype == np.float64


def test_a_regression_pool_ranks_by_predictive_std_of_the_latest_version(client: Client) -> None:
    pool = reg_inputs(30, seed=5)
    ranked = client.rank_pool(pool, model="reg", top_k=4, acquisition="predictive_std", chunk_rows=8,
                              samples=15, seed=11)
    indices, scores = expected(client, pool, model="reg", statistic="predictive_std",
                               chunk_rows=8, samples=15, seed=11, top_k=4)
    assert ranked.model_version == 2  # the latest, resolved once
    np.testing.assert_array_equal(ranked.indices, indices)
    np.testing.assert_array_equal(ranked.scores, scores)


def test_calibrated_ranking_scores_the_temperature_scaled_passes(client: Client) -> None:
    pool = cls_inputs(30, seed=4)
    settings: dict[str, Any] = {"top_k": 5, "chunk_rows": 8, "samples": 16, "seed": 3}
    ranked = client.rank_pool(pool, model="calcls", calibrated=True, **settings)
    indices, scores = expected(client, pool, model="calcls", statistic="mutual_information",
                               calibrated=True, **settings)
    np.testing.assert_array_equal(ranked.indices, indices)
    np.testing.assert_array_equal(ranked.scores, scores)
    plain = client.rank_pool(pool, model="calcls", **settings)
    assert not np.array_equal(plain.scores, ranked.scores)


def test_ties_keep_the_earlier_row_and_k_above_the_pool_returns_every_row(
        client: Client) -> None:
    # One pass: every row's variation ratio is 0, so all rows tie.
    tied = client.rank_pool(cls_inputs(20), model="cls", top_k=5, acquisition="variation_ratio",
                            chunk_rows=6, samples=1, seed=0)
    np.testing.assert_array_equal(tied.indices, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(tied.scores, np.zeros(5))
    everything = client.rank_pool(cls_inputs(9), model="cls", top_k=100, chunk_rows=4, samples=10,
                                  seed=1)
    assert everything.rows_scored == 9 and sorted(everything.indices) == list(range(9))
    assert np.all(np.diff(everything.scores) <= 0)


def test_top_k_keeps_the_best_with_ties_to_the_earlier_row_and_never_more_than_k() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=300).astype(np.float64)  # many ties
    top = TopK(17)
    for start in range(0, 300, 23):
        top.offer(scores[start:start + 23], start)
        assert len(top.scores) <= 17
    indices, kept = top.ranked()
    order = np.lexsort((np.arange(300), -scores))[:17]
    np.testing.assert_array_equal(indices, order)
    np.testing.assert_array_equal(kept, scores[order])


def test_a_model_with_several_heads_needs_the_head_named() -> None:
    heads: Any = [SimpleNamespace(name="price", task="regression"),
                  SimpleNamespace(name="kind", task="classification")]
    with pytest.raises(InvalidArgumentError, match="head is required for a model with several "
                                                   "heads; this model's heads: price, kind"):
        ranking._head(heads, None)
    assert ranking._head(heads, "kind").name == "kind"


def test_the_server_holds_one_chunk_and_k_entries(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    held: list[int] = []
    real = TopK.offer

    def offer(self: TopK, scores: np.ndarray, first_index: int) -> None:
        real(self, scores, first_index)
        held.append(len(self.scores))

    monkeypatch.setattr(ranking.TopK, "offer", offer)
    ranked = client.rank_pool(cls_inputs(200), model="cls", top_k=3, chunk_rows=32, samples=5, seed=0)
    assert ranked.rows_scored == 200
    assert held == [3] * 7  # seven chunks, three entries kept after each


def test_each_message_is_charged_to_the_budget_and_given_back_before_the_next(
        target: str) -> None:
    # Four messages of 700 KiB each through a 1 MiB budget: only one may be held at a time.
    padding = 700 * 1024
    first = request(cls_inputs(4), model_name="cls", top_k=2, samples=3, seed=0)
    bodies = [padded(first, padding), *(padded(request(cls_inputs(4, seed=s)), padding)
                                        for s in range(1, 4))]
    with grpc.insecure_channel(target) as channel:
        reply = pb.RankPoolResponse.FromString(
            channel.stream_unary("/mcdropout.v1.PredictionService/RankPool")(
                iter(bodies), timeout=30))
    assert reply.rows_scored == 16 and len(reply.indices) == 2


# -- the clients ---------------------------------------------------------------------------------
def test_a_memory_mapped_pool_an_iterable_of_chunks_and_the_async_client_agree(
        client: Client, target: str, tmp_path: Path) -> None:
    pool = cls_inputs(40, seed=9)
    np.save(tmp_path / "pool.npy", pool)
    mapped = np.load(tmp_path / "pool.npy", mmap_mode="r")
    settings = {"top_k": 6, "chunk_rows": 10, "samples": 12, "seed": 4}
    whole = client.rank_pool(mapped, model="cls", **settings)
    # Chunks are what fix the seeds: pieces of 20 rows make the same four chunks of 10.
    pieces = client.rank_pool((pool[i:i + 20] for i in range(0, 40, 20)), model="cls", **settings)

    async def asynchronous() -> RankedPool:
        async with AsyncClient(target, retries=0) as aio:
            return await aio.rank_pool(pool, model="cls", **settings)

    for other in (pieces, asyncio.run(asynchronous())):
        np.testing.assert_array_equal(other.indices, whole.indices)
        np.testing.assert_array_equal(other.scores, whole.scores)


def test_a_chunk_the_client_cannot_send_raises_its_own_error(client: Client, target: str) -> None:
    def pool() -> Iterator[np.ndarray]:
        yield cls_inputs(4)
        yield np.array([["a", "b", "c", "d"]])  # no wire dtype

    with pytest.raises(ValueError, match="cannot be sent as a Tensor"):
        client.rank_pool(pool(), model="cls", top_k=2, samples=2)

    async def asynchronous() -> None:
        async with AsyncClient(target, retries=0) as aio:
            await aio.rank_pool(pool(), model="cls", top_k=2, samples=2)

    with pytest.raises(ValueError, match="cannot be sent as a Tensor"):
        asyncio.run(asynchronous())
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        client.rank_pool(cls_inputs(2), model="cls", top_k=0)
    with pytest.raises(ValueError, match="unknown acquisition 'entropy'"):
        client.rank_pool(cls_inputs(2), model="cls", top_k=1, acquisition="entropy")


def test_the_cli_ranks_a_npy_pool(target: str, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "pool.npy", cls_inputs(30, seed=2))
    code = cli.main(["rank", "--target", target, "--model", "cls", "--input",
                     str(tmp_path / "pool.npy"), "--top", "3", "--chunk-rows", "7",
                     "--samples", "8", "--seed", "5", "--acquisition", "predictive_entropy"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "rank\tindex\tscore" and len(lines) == 4
    with Client(target, retries=0) as client:
        ranked = client.rank_pool(cls_inputs(30, seed=2), model="cls", top_k=3, chunk_rows=7,
                                  samples=8, seed=5, acquisition="predictive_entropy")
    assert [int(line.split("\t")[1]) for line in lines[1:]] == ranked.indices.tolist()
    assert "scored 30 rows with cls version 1 (predictive_entropy), seed 5" in err


# -- refusals ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("model", "acquisition", "allowed"), [
    ("reg", "bald", "scored by: predictive_std"),
    ("cls", "predictive_std", "scored by: bald, predictive_entropy, variation_ratio"),
])
def test_an_acquisition_for_another_task_is_refused_naming_those_that_fit(
        client: Client, model: str, acquisition: str, allowed: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        client.rank_pool(cls_inputs(2) if model == "cls" else reg_inputs(2), model=model, top_k=1,
                         acquisition=acquisition)
    assert f"acquisition {acquisition!r} scores" in caught.value.message
    assert allowed in caught.value.message


@pytest.mark.parametrize(("later", "message"), [
    ({"top_k": 4}, "top_k changed in message 2 of the stream: 4 after 3"),
    ({"seed": 8}, "seed changed in message 2 of the stream: 8 after 7"),
    ({"model_name": "reg"}, "model_name changed in message 2 of the stream: 'reg' after 'cls'"),
    ({"acquisition": pb.ACQUISITION_VARIATION_RATIO},
     "acquisition changed in message 2 of the stream: 'variation_ratio' after 'bald'"),
])
def test_settings_changed_mid_stream_are_refused_naming_the_field(
        stub: pb_grpc.PredictionServiceStub, later: dict[str, Any], message: str) -> None:
    first = request(cls_inputs(3), model_name="cls", top_k=3, seed=7, samples=2)
    # Repeating the settings, and the version and acquisition the first left unset, is fine.
    same = request(cls_inputs(3), model_name="cls", top_k=3, seed=7, model_version=1,
                   acquisition=pb.ACQUISITION_BALD)
    error = refused(stub, [first, same, request(cls_inputs(3), **later)])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message.replace("message 2", "message 3") in (error.details() or "")
    assert stub.RankPool(iter([first, same]), timeout=30).rows_scored == 6


@pytest.mark.parametrize(("messages", "code", "message"), [
    ([], grpc.StatusCode.INVALID_ARGUMENT, "the RankPool stream held no message"),
    ([request(cls_inputs(2), model_name="cls")], grpc.StatusCode.INVALID_ARGUMENT,
     f"top_k must be in 1..{MAX_TOP_K} (the most rows whose reply fits the server's message "
     "limit), got 0"),
    ([request(cls_inputs(2), model_name="cls", top_k=MAX_TOP_K + 1)],
     grpc.StatusCode.INVALID_ARGUMENT, f"top_k must be in 1..{MAX_TOP_K}"),
    ([request(cls_inputs(2), model_name="nope", top_k=1)], grpc.StatusCode.NOT_FOUND,
     "model 'nope' not found; served models: ['calcls', 'cls', 'reg']"),
    ([request(cls_inputs(2), model_name="cls", model_version=9, top_k=1)],
     grpc.StatusCode.NOT_FOUND, "model 'cls' has no version 9"),
    ([request(cls_inputs(2), top_k=1)], grpc.StatusCode.INVALID_ARGUMENT,
     "model_name is required"),
    ([request(cls_inputs(2), model_name="cls", top_k=1, head="other")],
     grpc.StatusCode.INVALID_ARGUMENT, "unknown head 'other'; this model's heads: "),
    ([request(model_name="cls", top_k=1)], grpc.StatusCode.INVALID_ARGUMENT,
     "inputs is required"),
    ([request(cls_inputs(2), model_name="cls", top_k=1, acquisition=99)],
     grpc.StatusCode.INVALID_ARGUMENT, "unknown acquisition enum value 99"),
    ([request(cls_inputs(2), model_name="cls", top_k=1, samples=100_000)],
     grpc.StatusCode.INVALID_ARGUMENT, "samples must be an integer in 1..5000"),
    ([request(cls_inputs(300), model_name="cls", top_k=1)], grpc.StatusCode.RESOURCE_EXHAUSTED,
     "300 rows"),
    ([request(cls_inputs(2), model_name="cls", top_k=1, request_id="\n")],
     grpc.StatusCode.INVALID_ARGUMENT, "request_id must be 1..128 printable ASCII"),
    # Each chunk runs as a Predict: a chunk's bad values fail the stream.
    ([request(cls_inputs(2), model_name="cls", top_k=1),
      request(np.full((2, 4), np.nan, np.float32))], grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
])
def test_refusals_say_what_was_wrong(stub: pb_grpc.PredictionServiceStub, messages: list[Any],
                                     code: grpc.StatusCode, message: str) -> None:
    error = refused(stub, messages)
    assert error.code() == code, error.details()
    assert message in (error.details() or ""), error.details()


def test_calibrated_ranking_of_an_uncalibrated_version_is_refused(client: Client) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        client.rank_pool(cls_inputs(2), model="cls", top_k=1, calibrated=True)
    assert "model 'cls' version 1 has no calibration" in caught.value.message


def test_unknown_model_through_the_client_is_not_found(client: Client) -> None:
    with pytest.raises(NotFound, match="model 'nope' not found"):
        client.rank_pool(cls_inputs(2), model="nope", top_k=1)


def test_a_huge_chunk_is_refused_like_a_huge_predict(stub: pb_grpc.PredictionServiceStub,
                                                     target: str) -> None:
    # Over the 1 MiB received-bytes budget, under the 3 MiB message limit: refused by intake.
    over_budget = request(np.zeros((2**17, 4), np.float32), model_name="cls", top_k=1)
    error = refused(stub, [over_budget])
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "MCDROPOUT_RECEIVED_BYTES_BUDGET_MB" in (error.details() or "")
    # Over the message limit: refused by gRPC before any of our code, as a Predict is.
    huge = request(np.zeros((2**18, 4), np.float32), model_name="cls", top_k=1)
    error = refused(stub, [huge])
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    predict = pb.PredictRequest(model_name="cls", inputs=huge.inputs)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(predict, timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # An unparseable message in the stream: INVALID_ARGUMENT, as a Predict body gets.
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as caught:
        channel.stream_unary("/mcdropout.v1.PredictionService/RankPool")(
            iter([b"\xff" * 16]), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a valid request message for /mcdropout.v1.PredictionService/RankPool" in \
        (caught.value.details() or "")


def test_pool_rows_are_not_kept_for_feedback_as_served_answers_are(client: Client) -> None:
    # Pool chunks are candidates for labelling, not answers: they must not evict real answers
    # from the bounded answer store (nor count as served rows in the drift metrics).
    client.rank_pool(cls_inputs(12, seed=9), model="cls", top_k=3, chunk_rows=5, samples=5, seed=1,
                     request_id="pool-not-an-answer")
    with pytest.raises(NotFound, match="pool-not-an-answer"):
        client.feedback("cls", "pool-not-an-answer", np.zeros(5, dtype=np.int64))
    answered = client.predict(cls_inputs(2, seed=9), model="cls", samples=5, seed=1,
                              request_id="a-served-answer")
    assert client.feedback("cls", answered.request_id,
                           np.zeros(2, dtype=np.int64)).rows_matched == 2
