"""`mcdropout tune`: the grid search finds a known best setting and saves the winner."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from mcdropout import cli
from mcdropout.errors import InvalidArgumentError
from mcdropout.modeling import tables, tuning
from mcdropout.modeling.training import TrainConfig
from mcdropout.store import ModelStore

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NOISE = 0.5


def linear_table(tmp_path: Path, rows: int = 300) -> tuple[Path, tables.Table]:
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=rows)
    y = x + rng.normal(0, NOISE, size=rows)
    path = tmp_path / "linear.csv"
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header="x,y", comments="")
    return path, tables.load_table(path, task="regression")


def test_regression_grid_picks_the_true_noise_precision(tmp_path: Path) -> None:
    """y = x + N(0, 0.5^2): in standardised units the true tau is var(y) / 0.25. A tau 30 times
    too small or too large costs validation log-likelihood, so the middle one must win."""
    _, table = linear_table(tmp_path)
    true_tau = float(table.y.var()) / NOISE**2
    taus = [true_tau / 30, true_tau, true_tau * 30]
    config = TrainConfig(epochs=15, batch_size=64, learning_rate=0.01, patience=15, seed=1,
                         validation_samples=50)
    seen: list[tuning.GridPoint] = []
    model, info, result = tuning.grid_search(table, config, "linear", dropout_rates=[0.05],
                                             taus=taus, on_point=seen.append)
    assert [p.tau for p in result.points] == pytest.approx(taus)
    assert seen == list(result.points)
    assert result.best == 1 and result.metric == "mc_log_likelihood" and result.axis == "tau"
    scores = [p.score for p in result.points]
    assert scores[1] > max(scores[0], scores[2])
    assert info.tau == pytest.approx(true_tau)
    assert info.provenance["tuning"]["best"] == 1
    assert len(info.provenance["tuning"]["grid"]) == 3
    version = ModelStore(tmp_path / "store").save(model, info)
    assert ModelStore(tmp_path / "store").read_info("linear", version).provenance["tuning"][
        "seed"] == 1


def test_a_point_added_past_the_grid_must_win_by_the_margin(tmp_path: Path) -> None:
    """taus 1/30 and 1/10 of the true one: the best, 1/10, is on the top edge, so 0.3 of it is
    added and scores higher. An impossible margin keeps the given grid's point (and its model)
    while the search still explores; margin 0 takes the higher score."""
    _, table = linear_table(tmp_path)
    true_tau = float(table.y.var()) / NOISE**2
    config = TrainConfig(epochs=15, batch_size=64, learning_rate=0.01, patience=15, seed=1,
                         validation_samples=50)
    grid = {"dropout_rates": [0.05], "taus": [true_tau / 30, true_tau / 10]}
    model, info, kept = tuning.grid_search(table, config, "linear", margin=1e9, max_rounds=1,
                                           **grid)
    assert [p.round for p in kept.points] == [0, 0, 1]
    assert kept.points[2].score > kept.points[1].score and kept.best == 1
    assert info.tau == pytest.approx(true_tau / 10)
    assert kept.search is not None and kept.search["margin"] == 1e9
    assert kept.search["highest"] == {"dropout": 0.05, "tau": pytest.approx(true_tau * 0.3),
                                      "round": 1}
    # the per-row scores the margin weighs are the rows of the point's own validation score
    _, val_idx = tables.split_indices(table.rows, config.validation_fraction, 1)
    rows = tuning._row_scores(model, info, *tuning._validation_rows(table, "regression", val_idx),
                              config, 1)
    assert rows.shape == (60,) and rows.mean() == pytest.approx(kept.points[1].score)
    _, info, plain = tuning.grid_search(table, config, "linear", margin=0.0, max_rounds=1,
                                        **grid)
    assert plain.best == 2 and plain.search is not None and plain.search["highest"] is None
    assert info.tau == pytest.approx(plain.points[plain.best].tau)


def test_classification_grid_picks_the_weight_decay_that_lets_it_learn(tmp_path: Path) -> None:
    """Two separated blobs: a decay of 10 pins the weights near 0 (NLL about log 2), a decay of
    1e-5 does not; the grid chooses by NLL and trains with exactly the decays asked for."""
    rng = np.random.default_rng(2)
    labels = np.arange(200) % 2
    x = rng.normal(size=(200, 2)) + 3.0 * labels[:, None]
    path = tmp_path / "blobs.npz"
    np.savez(path, x=x, y=labels)
    table = tables.load_table(path, task="classification")
    config = TrainConfig(task="classification", epochs=10, batch_size=64, learning_rate=0.01,
                         patience=10, seed=3, validation_samples=30)
    _, info, result = tuning.grid_search(table, config, "blobs", dropout_rates=[0.1, 0.2],
                                         weight_decays=[10.0, 1e-5], extend=False)
    assert result.metric == "nll" and not result.higher_is_better
    assert [p.weight_decay for p in result.points] == pytest.approx([10.0, 1e-5] * 2, rel=1e-6)
    assert all(p.tau is None for p in result.points)
    chosen = result.points[result.best]
    assert chosen.weight_decay == pytest.approx(1e-5)
    assert chosen.score == min(p.score for p in result.points)
    heavy = [p.score for p in result.points if p.weight_decay > 1]
    assert min(heavy) > 0.5 * math.log(2) and chosen.score < 0.25
    assert info.provenance["hyperparameters"]["dropout"] == chosen.dropout


@pytest.mark.parametrize(
    ("task", "kwargs", "message"),
    [
        ("regression", {"dropout_rates": []}, "dropout rates must be a non-empty list"),
        ("regression", {"dropout_rates": [0.0]}, r"dropout rates must be .* in \(0, 1\), got \[0.0\]"),
        ("regression", {"taus": [1.0], "weight_decays": [1e-4]}, "taus or weight decays, not both"),
        ("classification", {"taus": [1.0]}, "taus apply to regression only"),
        ("regression", {"taus": [-1.0]}, r"taus must be finite numbers > 0, got \[-1.0\]"),
    ],
)
def test_bad_grids_are_rejected(tmp_path: Path, task: str, kwargs: dict, message: str) -> None:
    _, table = linear_table(tmp_path, rows=20)
    with pytest.raises(InvalidArgumentError, match=message):
        tuning.grid_search(table, TrainConfig(task=task), "m", **kwargs)  # type: ignore[arg-type]


def test_tune_command_saves_the_best_model_and_writes_the_grid(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = linear_table(tmp_path, rows=120)
    out = tmp_path / "grid"
    status = cli.main(["tune", "--data", str(path), "--model-root", str(tmp_path / "store"),
                       "--name", "lin", "--dropout-rates", "0.05", "0.2", "--taus", "0.5", "5",
                       "--epochs", "3", "--seed", "4", "--grid-only", "--output", str(out)])
    assert status == 0
    printed = capsys.readouterr().out
    assert "saved lin version 1" in printed and printed.count("*") == 1
    info = ModelStore(tmp_path / "store").read_info("lin")
    grid = json.loads((out / "grid.json").read_text())
    assert len(grid["points"]) == 4 and grid["best"] == info.provenance["tuning"]["best"]
    with open(out / "grid.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["best"] for r in rows].count("True") == 1
    assert [float(r["dropout"]) for r in rows] == [0.05, 0.05, 0.2, 0.2]
    assert (out / "dropout_sweep.png").read_bytes()[:8] == PNG_SIGNATURE
