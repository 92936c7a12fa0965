"""Calibrated predictions through the client against the fake server: prediction sets,
abstention, the calibrated flag, calibration metadata, and their CLI and file forms."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from client_fakes import LABELS, FakeServer
from mcdropout_client import AsyncClient, Client, errors
from mcdropout_client.cli import main
from mcdropout_client.outputs import reply_bytes
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb

X = np.array([[0.5, 0.1, -0.3], [2.0, 1.0, 0.0], [-1.0, 0.0, 3.0]], dtype=np.float64)


def test_sets_abstain_and_the_flag_are_parsed_and_the_request_says_calibrated(fake) -> None:
    with Client(fake.address) as client:
        result = client.predict(X, model="clf", seed=3, set_levels=[0.9, 0.5],
                                outputs=["mean", "predicted_class", "abstain"])
        plain = client.predict(X, model="clf", seed=3)
    sent = fake.service.requests[0]
    assert isinstance(sent, pb.PredictRequest)
    assert list(sent.set_levels) == [0.9, 0.5] and not sent.calibrated
    assert pb.ABSTAIN in sent.outputs
    assert result.calibrated and not plain.calibrated
    assert sorted(result.prediction_sets) == [0.5, 0.9]
    for level, members in result.prediction_sets.items():
        assert members.dtype == np.bool_ and members.shape == (3, len(LABELS))
        np.testing.assert_array_equal(members, result.mean >= 1 - level)
    assert result.abstain is not None and result.abstain.dtype == np.bool_
    assert result.abstain.shape == (3,)
    assert plain.prediction_sets == {} and plain.abstain is None


def test_calibrated_alone_reaches_the_server(fake: FakeServer) -> None:
    with Client(fake.address) as client:
        result = client.predict(X, model="clf", calibrated=True)
    assert fake.service.requests[0].calibrated and result.calibrated
    assert result.prediction_sets == {}


def test_an_uncalibrated_version_is_a_failed_precondition(fake: FakeServer) -> None:
    with Client(fake.address, retries=0) as client, pytest.raises(
            errors.FailedPrecondition, match="has no calibration"):
        client.predict(X, model="clf", version=1, calibrated=True)


@pytest.mark.asyncio
async def test_the_async_client_sends_and_parses_the_same(fake: FakeServer) -> None:
    async with AsyncClient(fake.address) as client:
        result = await client.predict(X, model="clf", seed=3, set_levels=[0.9],
                                      outputs=["mean", "abstain"])
    with Client(fake.address) as client:
        expected = client.predict(X, model="clf", seed=3, set_levels=[0.9],
                                  outputs=["mean", "abstain"])
    np.testing.assert_array_equal(result.prediction_sets[0.9], expected.prediction_sets[0.9])
    np.testing.assert_array_equal(result.abstain, expected.abstain)
    assert result.calibrated


def test_metadata_carries_each_heads_calibration(fake: FakeServer) -> None:
    with Client(fake.address) as client:
        latest, first = client.metadata("clf"), client.metadata("clf", version=1)
    assert latest.calibrated and not first.calibrated and first.calibration == ()
    (cal,) = latest.calibration
    assert (cal.head, cal.method, cal.rows, cal.temperature) == ("y", "temperature+lac", 500,
                                                                 1.5)
    assert cal.before == {"ece": 0.12, "nll": 0.9} and cal.after["ece"] == 0.03
    assert cal.abstention is not None and cal.abstention.measure == "mutual_information"
    assert (cal.drift_measure, cal.drift_p95) == ("mutual_information", 0.04)


def test_cli_prints_sets_abstain_and_writes_them(fake, tmp_path: Path, capsys) -> None:
    rows = tmp_path / "rows.npy"
    np.save(rows, X)
    out = tmp_path / "out.json"
    code = main(["predict", "--target", fake.address, "--model", "clf", "--input", str(rows),
                 "--seed", "3", "--set-level", "0.9", "--set-level", "0.5", "--outputs", "mean",
                 "predicted_class", "abstain", "--output", str(out)])
    table = capsys.readouterr().out
    assert code == 0
    assert "calibrated" in table.splitlines()[0]
    assert "0.5 set" in table and "0.9 set" in table and "abstain" in table
    with Client(fake.address) as client:
        expected = client.predict(X, model="clf", seed=3, set_levels=[0.9, 0.5],
                                  outputs=["mean", "predicted_class", "abstain"])
    first = "{" + ", ".join(LABELS[k] for k in np.flatnonzero(expected.prediction_sets[0.9][0]))
    assert first + "}" in table.splitlines()[2]
    data = json.loads(out.read_text())
    assert data["calibrated"] is True
    assert data["prediction_sets"]["0.9"] == expected.prediction_sets[0.9].tolist()
    assert data["abstain"] == expected.abstain.tolist()
    code = main(["predict", "--target", fake.address, "--model", "clf", "--input", str(rows),
                 "--seed", "3", "--calibrated", "--set-level", "0.9", "--output", str(tmp_path / "out.csv")])
    predicts = [r for r in fake.service.requests if isinstance(r, pb.PredictRequest)]
    assert code == 0 and predicts[-1].calibrated
    header, first_row = (tmp_path / "out.csv").read_text().splitlines()[:2]
    assert header.endswith(",set_0.9")
    members = np.flatnonzero(expected.prediction_sets[0.9][0])
    assert first_row.endswith("," + "|".join(LABELS[k] for k in members))


def test_cli_metadata_prints_the_calibration(fake: FakeServer, capsys) -> None:
    assert main(["metadata", "--target", fake.address, "--model", "clf"]) == 0
    text = capsys.readouterr().out
    assert "temperature+lac on 500 rows, temperature 1.5" in text
    assert "ece 0.12 -> 0.03" in text
    assert "mutual_information > 0.05" in text
    assert main(["metadata", "--target", fake.address, "--model", "clf", "--version", "1"]) == 0
    assert re.search(r"^calibration +none ", capsys.readouterr().out, re.MULTILINE)


def test_reply_size_counts_sets_and_abstain() -> None:
    base = reply_bytes(["mean"], rows=10, width=3, samples=5, levels=0)
    sets = reply_bytes(["mean", "prediction_sets"], rows=10, width=3, samples=5, levels=0,
                       set_levels=2)
    abstain = reply_bytes(["mean", "abstain"], rows=10, width=3, samples=5, levels=0)
    assert sets - base >= 2 * 10 * 3 and abstain - base >= 10
