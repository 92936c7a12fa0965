"""Choosing a search's setting on noisy validation scores: an added setting must win clearly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mcdropout import cli
from mcdropout.errors import InvalidArgumentError
from mcdropout.evaluation import scores
from mcdropout.modeling.edgesearch import Axis, EdgeSearch, run_searches
from mcdropout.modeling.selection import Trial, beats, check_margin, choose, highest

ROWS = 50


def rows_with(mean: float, spread: float, seed: int) -> np.ndarray:
    """Per-row scores of exactly this mean and sample SD (ddof 1)."""
    z = np.random.default_rng(seed).normal(size=ROWS)
    z = (z - z.mean()) / z.std(ddof=1)
    return mean + spread * z


def trial(setting: float, rows: np.ndarray | None, round_: int, score: float | None = None
          ) -> Trial:
    return Trial((setting,), float(np.mean(rows)) if score is None else score, round_, rows)


def test_a_later_setting_must_lead_by_more_than_the_standard_error_of_the_paired_difference(
        ) -> None:
    base = rows_with(-1.0, 0.5, 0)
    noise = rows_with(0.0, 0.7, 1)  # the paired difference's SD: SE = 0.7 / sqrt(50) = 0.099
    grid = trial(1.0, base, 0)
    narrow = trial(2.0, base + 0.05 + noise, 1)  # leads by 0.05 < 1 SE
    clear = trial(4.0, base + 0.15 + noise, 2)  # leads by 0.15 > 1 SE
    se = 0.7 / math.sqrt(ROWS)
    assert narrow.score - grid.score == pytest.approx(0.05) and 0.05 < se < 0.15
    assert not beats(narrow, grid) and beats(clear, grid)
    assert beats(narrow, grid, margin=0.4) and not beats(clear, grid, margin=2.0)
    assert choose([grid, narrow]) is grid
    assert choose([grid, narrow, clear]) is clear
    assert choose([grid, narrow], margin=0.0) is narrow is highest([grid, narrow])
    # the margin compares the paired difference: a lead that every row shares is clear, however
    # spread out the rows' scores themselves are
    shared = trial(2.0, base + 0.05, 1)
    assert beats(shared, grid) and choose([grid, shared]) is shared


def test_the_given_grid_is_chosen_by_score_alone_and_means_only_fall_back_to_the_highest(
        ) -> None:
    a, b = trial(1.0, rows_with(-1.0, 1.0, 2), 0), trial(2.0, rows_with(-0.99, 1.0, 3), 0)
    assert choose([a, b]) is b  # round 0: no margin among the given grid's settings
    c = Trial((4.0,), -0.98, 1)  # no per-row scores: any lead wins
    assert choose([a, b, c]) is c
    failed = Trial((8.0,), math.nan, 1)
    assert choose([a, b, failed]) is b and not beats(failed, b) and beats(b, failed)
    lower = [Trial((1.0,), 2.0, 0, np.full(3, 2.0)), Trial((2.0,), 1.0, 1, np.full(3, 1.0))]
    assert choose(lower, maximize=False).setting == (2.0,)  # a constant lead has SE 0


def test_bad_margins_and_mismatched_rows_are_refused() -> None:
    for bad in (-1.0, math.inf, math.nan, True, "1"):
        with pytest.raises(InvalidArgumentError, match="margin must be a finite number of "
                                                       "standard errors >= 0, got"):
            check_margin(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=r"per-row scores must cover the same rows, "
                                                   r"got \(3,\) and \(2,\)"):
        beats(Trial((1.0,), 1.0, 1, np.ones(3)), Trial((2.0,), 0.0, 0, np.zeros(2)))
    with pytest.raises(InvalidArgumentError, match="no setting has been scored yet"):
        choose([])
    with pytest.raises(InvalidArgumentError, match="margin must be"):
        EdgeSearch((Axis.of("tau", [1.0, 2.0]),), margin=-0.5)


def search_of(lead: dict[float, float], margin: float = 1.0) -> EdgeSearch:
    """A tau search over (0.5, 1, 2) whose validation rows score tau by ``lead`` plus noise."""
    noise = {t: rows_with(0.0, 0.5, int(t * 10)) for t in lead}

    def score(todo: list[tuple[int, tuple[float, ...]]]) -> list[tuple[float, np.ndarray]]:
        out = []
        for _, (tau,) in todo:
            rows = rows_with(-1.0, 0.3, 9) + lead[tau] + noise[tau]
            out.append((float(rows.mean()), rows))
        return out

    search = EdgeSearch((Axis.of("tau", [0.5, 1.0, 2.0]),), margin=margin)
    run_searches([search], score)
    return search


def test_an_extension_that_only_ties_leaves_the_given_grid_chosen_and_logs_the_highest(
        ) -> None:
    """Validation rows that do not tell tau 2 from tau 4: the extension's lead is noise."""
    lead = {0.5: -0.3, 1.0: -0.1, 2.0: 0.0, 4.0: 0.02, 8.0: 0.01}
    tied = search_of(lead)
    # the search explores toward the highest score (4, on the edge, so 8 is tried too) ...
    assert [t.setting[0] for t in tied.trials] == [0.5, 1.0, 2.0, 4.0, 8.0]
    # ... and chooses tau 4 only if it leads by more than a standard error: it does not
    assert tied.best().setting == (2.0,) and tied.done
    assert tied.stop_reason == "the best setting lies inside the grid on every axis"
    log = tied.log()
    assert log["best"] == {"tau": 2.0} and log["margin"] == 1.0
    assert log["highest"] == {"tau": 4.0, "round": 1}
    plain = search_of(lead, margin=0.0)  # the same trials; the tie's lead wins
    assert plain.best().setting == (4.0,) and plain.log()["highest"] is None
    assert [t.setting for t in plain.trials] == [t.setting for t in tied.trials]


def test_a_step_that_only_ties_does_not_stop_the_search_from_a_clear_win_past_it() -> None:
    """tau 4 leads tau 2 by noise only, tau 8 by far: exploring follows the highest score past
    the tie, and the choice takes tau 8 (a rule that stopped where a step failed the margin
    would have kept tau 2 without trying 8)."""
    lead = {0.5: -0.3, 1.0: -0.1, 2.0: 0.0, 4.0: 0.05, 8.0: 0.4, 16.0: 0.3}
    found = search_of(lead)
    assert [t.setting[0] for t in found.trials][3:] == [4.0, 8.0, 16.0]
    assert found.best().setting == (8.0,) and found.log()["highest"] is None
    assert found.log()["best_round"] == 2


def test_per_row_log_likelihoods_are_the_rows_of_the_mean() -> None:
    rng = np.random.default_rng(4)
    y = rng.normal(size=(7, 2))
    samples = y + rng.normal(size=(30, 7, 2))
    rows = scores.mc_log_likelihood_rows(y, samples, 2.0)
    by_hand = [np.mean([math.log(np.mean(np.exp(-(y[r, o] - samples[:, r, o]) ** 2)))
                        + 0.5 * math.log(2.0 / (2 * math.pi)) for o in range(2)])
               for r in range(7)]
    assert rows.shape == (7,) and np.allclose(rows, by_hand)
    assert scores.mc_log_likelihood(y, samples, 2.0) == pytest.approx(rows.mean())
    one = scores.mc_log_likelihood_rows(y[:, 0], samples[..., 0], 2.0)
    assert one.shape == (7,)


def test_the_command_line_names_the_flag_in_its_errors(
        capsys: pytest.CaptureFixture[str]) -> None:
    for command, flag, value, allowed in (
            ("benchmark uci --data-dir . --dataset x", "--search-margin", "-1",
             "must be a finite number of standard errors >= 0, got '-1'"),
            ("benchmark uci --data-dir . --dataset x", "--search-rounds", "-1",
             "must be an integer >= 0, got '-1'"),
            ("tune --data d.csv --target y --name m", "--search-rounds", "two",
             "must be an integer >= 0, got 'two'")):
        with pytest.raises(SystemExit) as exited:
            cli.main([*command.split(), flag, value])
        assert exited.value.code == 2
        assert f"argument {flag}: {allowed}" in capsys.readouterr().err
