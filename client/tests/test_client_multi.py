"""Models with several named inputs and heads, against the fake "shop" model (client_fakes.py).

The fake answers "price" with the statistics it gives "reg" and "kind" with those of "clf", so
every head's fields can be checked to land in the right HeadResult attribute.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from client_fakes import FEATURES, LABELS, SHOP_HEADS, FakeServer
from mcdropout_client import AsyncClient, Client, HeadResult
from mcdropout_client.cli import main

FEATURES_X = np.array([[0.1, 0.2, 0.3], [1.0, -1.0, 2.0]], dtype=np.float32)
IDS = np.array([[1, 2], [3, 0]], dtype=np.int32)
INPUTS = {"features": FEATURES_X, "ids": IDS}


def test_mapping_inputs_go_as_named_inputs_and_heads_come_back(fake: FakeServer) -> None:
    with Client(fake.address, retries=0) as client:
        result = client.predict(INPUTS, model="shop", samples=20, seed=5, interval_levels=[0.9],
                                outputs=["mean", "std", "predicted_class", "samples"])
    sent = fake.service.requests[0]
    assert not sent.HasField("inputs") and sorted(sent.named_inputs) == ["features", "ids"]
    assert list(sent.named_inputs["ids"].shape) == [2, 2]
    assert (result.model, result.task, result.rows, list(result.heads)) == (
        "shop", "unspecified", 2, list(SHOP_HEADS))
    assert result.mean is None and result.intervals == {}  # a multi-head answer is in heads
    price, kind = result.heads["price"], result.heads["kind"]
    assert isinstance(price, HeadResult) and (price.name, price.task) == ("price", "regression")
    assert price.mean.shape == (2, 2) and price.std.shape == (2, 2)
    assert price.predicted_class is None and sorted(price.intervals) == [0.9]
    assert kind.task == "classification" and kind.predicted_class.dtype == np.int64
    assert kind.mean.shape == (2, 3) and kind.intervals == {}
    # Joint passes: both heads' raw samples have one entry per pass.
    assert price.raw_samples.shape == (20, 2, 2) and kind.raw_samples.shape == (20, 2, 3)


def test_a_mapping_for_a_one_input_model_goes_as_named_inputs(fake: FakeServer) -> None:
    with Client(fake.address, retries=0) as client:
        client.predict({"x": FEATURES_X}, model="reg", samples=2)
    sent = fake.service.requests[0]
    assert not sent.HasField("inputs") and list(sent.named_inputs) == ["x"]


@pytest.mark.parametrize(("x", "message"), [
    ({"": FEATURES_X}, "input names must be non-empty strings"),
    ({1: FEATURES_X}, "input names must be non-empty strings, got 1"),
    ({"features": np.array(["a"])}, "cannot be sent as a Tensor"),
])
def test_bad_mappings_are_refused_before_sending(fake: FakeServer, x, message: str) -> None:
    with Client(fake.address, retries=0) as client, pytest.raises(ValueError, match=message):
        client.predict(x, model="shop")
    assert fake.service.calls == 0


def test_metadata_and_models_list_inputs_and_heads(fake: FakeServer) -> None:
    with Client(fake.address, retries=0) as client:
        meta = client.metadata("shop")
        summaries = {m.name: m for m in client.models()}
    assert [(i.name, i.dtype, i.shape) for i in meta.inputs] == [
        ("features", "float32", (-1, FEATURES)), ("ids", "int32", (-1, -1))]
    assert [(h.name, h.task, h.output.shape, h.tau) for h in meta.heads] == [
        ("price", "regression", (-1, 2), 4.0), ("kind", "classification", (-1, 3), None)]
    assert meta.heads[1].labels == LABELS
    assert summaries["shop"].heads == meta.heads and summaries["shop"].inputs == meta.inputs
    assert summaries["reg"].inputs == () and summaries["reg"].heads == ()  # an older server


async def test_async_client_takes_mappings_and_returns_heads(fake: FakeServer) -> None:
    async with AsyncClient(fake.address, retries=0) as client:
        result = await client.predict(INPUTS, model="shop", samples=10, seed=5)
        meta = await client.metadata("shop")
    with Client(fake.address, retries=0) as sync:
        expected = sync.predict(INPUTS, model="shop", samples=10, seed=5)
    for name in SHOP_HEADS:
        np.testing.assert_array_equal(result.heads[name].mean, expected.heads[name].mean)
    assert [h.name for h in meta.heads] == list(SHOP_HEADS)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def input_files(tmp_path: Path) -> list[str]:
    np.save(tmp_path / "f.npy", FEATURES_X)
    np.save(tmp_path / "ids.npy", IDS)
    return ["--input", f"features={tmp_path / 'f.npy'}", "--input", f"ids={tmp_path / 'ids.npy'}"]


def test_cli_named_inputs_print_a_table_per_head(fake, input_files, tmp_path, capsys) -> None:
    out = tmp_path / "out.json"
    code, stdout, _ = _run(capsys, "predict", "--target", fake.address, "--model", "shop",
                           *input_files, "--seed", "3", "--output", str(out))
    assert code == 0
    assert "(2 heads)" in stdout
    assert "head price (regression)" in stdout and "head kind (classification)" in stdout
    assert "mean ± std" in stdout and "mutual_info" in stdout
    with Client(fake.address) as client:
        expected = client.predict(INPUTS, model="shop", seed=3)
    data = json.loads(out.read_text())
    assert list(data["heads"]) == list(SHOP_HEADS) and "mean" not in data
    np.testing.assert_allclose(data["heads"]["price"]["mean"], expected.heads["price"].mean)
    kind = expected.heads["kind"].predicted_class
    assert data["heads"]["kind"]["predicted_label"] == [LABELS[int(c)] for c in kind]
    assert "predicted_label" not in data["heads"]["price"]  # a regression head's labels name targets
    assert f"({LABELS[int(kind[0])]})" in stdout


def test_cli_csv_columns_are_named_by_head(fake, input_files, tmp_path, capsys) -> None:
    out = tmp_path / "out.csv"
    code, _, _ = _run(capsys, "predict", "--target", fake.address, "--model", "shop",
                      *input_files, "--output", str(out))
    assert code == 0
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    assert list(rows[0])[:4] == ["row", "price/mean_0", "price/mean_1", "price/std_0"]
    assert {"kind/mean_2", "kind/predicted_class", "kind/predicted_label"} <= set(rows[0])


def test_cli_metadata_and_models_show_inputs_and_heads(fake, capsys) -> None:
    code, out, _ = _run(capsys, "metadata", "--target", fake.address, "--model", "shop")
    assert code == 0
    lines = [line.split(None, 2) for line in out.splitlines()]
    assert ["input", "features", "float32 [-1, 3]"] in lines
    assert ["input", "ids", "int32 [-1, -1]"] in lines
    assert ["head", "kind", "classification float64 [-1, 3], labels setosa, versicolor, "
            "virginica"] in lines
    code, out, _ = _run(capsys, "models", "--target", fake.address)
    assert code == 0 and "features, ids" in out and "price (regression), kind (classification)" in out


def test_cli_mixed_or_repeated_inputs_exit_2(fake, input_files, tmp_path, capsys) -> None:
    base = ["predict", "--target", fake.address, "--model", "shop"]
    plain = str(tmp_path / "f.npy")
    code, _, err = _run(capsys, *base, *input_files, "--input", plain)
    assert code == 2 and "name every input (NAME=FILE) or give one unnamed FILE" in err
    code, _, err = _run(capsys, *base, "--input", plain, "--input", plain)
    assert code == 2 and "several inputs need names" in err
    code, _, err = _run(capsys, *base, *input_files[:2], *input_files[:2])
    assert code == 2 and "repeated input name" in err
    assert fake.service.calls == 0
