"""``mcdropout-client`` against a fake server: predict from .csv/.npy, outputs, exit codes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from client_fakes import FakeServer
from mcdropout_client import Client
from mcdropout_client.cli import main

X = np.array([[0.1, 0.2, 0.3], [1.0, -1.0, 2.0]])


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def csv_input(tmp_path: Path) -> Path:
    path = tmp_path / "rows.csv"
    path.write_text("a,b,c\n" + "\n".join(",".join(map(repr, row)) for row in X.tolist()) + "\n")
    return path


def test_predict_csv_to_json_matches_the_library(fake, csv_input, tmp_path, capsys) -> None:
    out = tmp_path / "out.json"
    code, stdout, _ = _run(capsys, "predict", "--target", fake.address, "--model", "reg",
                           "--input", str(csv_input), "--samples", "20", "--seed", "3",
                           "--interval", "0.9", "0.5", "--output", str(out))
    assert code == 0
    with Client(fake.address) as client:
        expected = client.predict(X, model="reg", samples=20, seed=3, interval_levels=[0.9, 0.5])
    data = json.loads(out.read_text())
    assert (data["model"], data["seed"], data["samples_used"], data["task"]) == (
        "reg", 3, 20, "regression")
    np.testing.assert_allclose(data["mean"], expected.mean, rtol=1e-12)
    np.testing.assert_allclose(data["predictive_std"], expected.predictive_std, rtol=1e-12)
    np.testing.assert_allclose(data["intervals"]["0.9"]["upper"], expected.intervals[0.9][1])
    assert set(data["intervals"]) == {"0.5", "0.9"}
    # The table names outputs after the model's targets (metadata labels).
    assert "mean ± std" in stdout and "0.9 interval" in stdout and "price" in stdout
    assert f"{expected.mean[1, 1]:.4g} ± {expected.std[1, 1]:.4g}" in stdout


def test_predict_npy_classification_to_csv(fake, tmp_path, capsys) -> None:
    source, out = tmp_path / "x.npy", tmp_path / "out.csv"
    np.save(source, X.astype(np.float32))
    code, stdout, _ = _run(capsys, "predict", "--target", fake.address, "--model", "clf",
                           "--input", str(source), "--seed", "8", "--output", str(out))
    assert code == 0
    with Client(fake.address) as client:
        expected = client.predict(X.astype(np.float32), model="clf", seed=8)
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    assert list(rows[0]) == ["row", "mean_0", "mean_1", "mean_2", "std_0", "std_1", "std_2",
                             "predicted_class", "predictive_entropy", "mutual_information",
                             "predicted_label"]
    for i, row in enumerate(rows):
        cls = int(expected.predicted_class[i])
        assert int(row["predicted_class"]) == cls and row["predicted_label"] == (
            "setosa", "versicolor", "virginica")[cls]
        assert float(row["mutual_information"]) == pytest.approx(expected.mutual_information[i])
        assert float(row["mean_2"]) == pytest.approx(expected.mean[i, 2])
    assert "probability" in stdout and "mutual_info" in stdout
    first_label = ("setosa", "versicolor", "virginica")[int(expected.predicted_class[0])]
    assert f"({first_label})" in stdout


def test_csv_without_header_is_all_data(fake, tmp_path, capsys) -> None:
    path = tmp_path / "plain.csv"
    path.write_text("1,2,3\n4,5,6\n\n7,8,9\n")
    code, _, _ = _run(capsys, "predict", "--target", fake.address, "--model", "reg",
                      "--input", str(path))
    assert code == 0
    assert list(fake.service.requests[0].inputs.shape) == [3, 3]


def test_models_metadata_and_health(fake, capsys) -> None:
    code, out, _ = _run(capsys, "models", "--target", fake.address)
    assert code == 0 and "clf" in out and "classification" in out and "1, 2" in out
    code, out, _ = _run(capsys, "metadata", "--target", fake.address, "--model", "clf")
    assert code == 0 and "setosa, versicolor, virginica" in out and "LSTM" in out
    assert _run(capsys, "health", "--target", fake.address)[:2] == (0, "SERVING\n")
    assert _run(capsys, "health", "--target", fake.address, "--service", "clf")[:2] == (
        1, "NOT_SERVING\n")


def test_token_and_headers_are_sent(fake, capsys) -> None:
    code, _, _ = _run(capsys, "models", "--target", fake.address, "--token", "t0k",
                      "--header", "x-env=test")
    assert code == 0
    assert fake.service.seen_metadata[0]["authorization"] == "Bearer t0k"
    assert fake.service.seen_metadata[0]["x-env"] == "test"


def test_server_errors_exit_1_with_code_and_message(fake, csv_input, capsys) -> None:
    code, _, err = _run(capsys, "predict", "--target", fake.address, "--model", "nope",
                        "--input", str(csv_input))
    assert code == 1 and err == "error: NOT_FOUND: model 'nope' not found\n"
    code, _, err = _run(capsys, "predict", "--target", fake.address, "--model", "reg",
                        "--input", str(csv_input), "--samples", "500")
    assert code == 1 and "INVALID_ARGUMENT: samples must be in 1..50, got 500" in err


def test_unreachable_server_exits_1(free_port, capsys) -> None:
    code, _, err = _run(capsys, "models", "--target", f"127.0.0.1:{free_port}", "--retries", "0")
    assert code == 1 and err.startswith("error: UNAVAILABLE:")


@pytest.mark.parametrize(("content", "message"), [
    ("a,b,c\n1,2,x\n", "data row 1 has non-numeric cell 'x'"),
    ("1,2,3\n4,5\n", "data row 2 has 2 columns, the first has 3"),
    ("a,b,c\n", "has no data rows"),
])
def test_bad_csv_exits_2(fake, tmp_path, capsys, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    code, _, err = _run(capsys, "predict", "--target", fake.address, "--model", "reg",
                        "--input", str(path))
    assert code == 2 and message in err
    assert fake.service.calls == 0


def test_bad_files_and_arguments_exit_2(fake, csv_input, tmp_path, capsys) -> None:
    base = ["predict", "--target", fake.address, "--model", "reg"]
    code, _, err = _run(capsys, *base, "--input", str(tmp_path / "missing.csv"))
    assert code == 2 and "cannot read input" in err
    code, _, err = _run(capsys, *base, "--input", str(tmp_path / "x.txt"))
    assert code == 2 and "input must be a .csv or .npy file" in err
    code, _, err = _run(capsys, *base, "--input", str(csv_input), "--output", "out.xml")
    assert code == 2 and "--output must end in .json or .csv" in err
    code, _, err = _run(capsys, *base, "--input", str(csv_input), "--seed", "-1")
    assert code == 2 and "seed must be in 0..2**64-1, got -1" in err
    code, _, err = _run(capsys, "models", "--target", "10.0.0.1:1,example.com:2")
    assert code == 2 and "dns:///name:port" in err
    assert fake.service.calls == 0
    with pytest.raises(SystemExit) as usage:
        main(["predict", "--target", fake.address, "--input", str(csv_input)])
    assert usage.value.code == 2 and "--model" in capsys.readouterr().err


def test_module_entry_point_exit_code(fake: FakeServer) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mcdropout_client.cli", "health", "--target", fake.address,
         "--service", "clf"], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (1, "NOT_SERVING\n")
