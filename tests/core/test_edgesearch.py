"""The grid search that extends its grid past an edge holding the best setting."""

from __future__ import annotations

import math

import pytest

from mcdropout.errors import InvalidArgumentError
from mcdropout.modeling.edgesearch import Axis, EdgeSearch, run_searches


def log_distance(setting: tuple[float, ...], optimum: tuple[float, ...]) -> float:
    return -sum((math.log(v) - math.log(o)) ** 2 for v, o in zip(setting, optimum, strict=True))


def run(search: EdgeSearch, optimum: tuple[float, ...]) -> list[list[tuple[float, ...]]]:
    """Run one search; the settings scored in each round."""
    rounds: list[list[tuple[float, ...]]] = []

    def score(todo: list[tuple[int, tuple[float, ...]]]) -> list[float]:
        rounds.append([s for _, s in todo])
        return [log_distance(s, optimum) for _, s in todo]

    run_searches([search], score)
    return rounds


def test_a_best_on_the_top_edge_extends_that_axis_until_the_best_is_inside() -> None:
    search = EdgeSearch((Axis.of("dropout", [0.01, 0.05, 0.1]), Axis.of("tau", [0.5, 1.0])))
    rounds = run(search, (0.05, 20.0))
    # the given grid, dropout-major, then one new tau (x2, the edge's ratio) per round
    assert rounds[0] == [(0.01, 0.5), (0.01, 1.0), (0.05, 0.5), (0.05, 1.0), (0.1, 0.5),
                         (0.1, 1.0)]
    assert [sorted({s[1] for s in r}) for r in rounds[1:]] == [[2.0], [4.0], [8.0], [16.0],
                                                               [32.0]]
    assert all(len(r) == 3 for r in rounds[1:])  # the new tau with every dropout rate
    log = search.log()
    assert log["best"] == {"dropout": 0.05, "tau": 16.0} and log["best_round"] == 4
    assert log["stop_reason"] == "the best setting lies inside the grid on every axis"
    assert log["axes"][1]["tried"] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert log["axes"][1]["given"] == [0.5, 1.0]
    assert log["rounds"] == 5 and log["settings"] == 21 == len(search.trials)
    assert [t.round for t in search.trials] == [0] * 6 + [r for r in range(1, 6) for _ in "abc"]


def test_the_step_is_the_edge_ratio_within_two_to_four_and_both_edges_can_move() -> None:
    search = EdgeSearch((Axis.of("dropout", [0.01, 0.1]), Axis.of("tau", [1.0, 1.5])),
                        max_rounds=1)
    rounds = run(search, (1e-3, 100.0))  # beyond the low dropout edge and the high tau edge
    # dropout: ratio 10 capped at 4; tau: ratio 1.5 raised to 2
    assert sorted(set(rounds[1])) == sorted({(0.0025, 1.0), (0.0025, 1.5), (0.0025, 3.0),
                                             (0.01, 3.0), (0.1, 3.0)})
    assert search.stop_reason.startswith("budget: 1 extension rounds spent, the best still on "
                                         "an edge (dropout, tau)")


def test_an_edge_at_its_bound_stops_the_search_and_says_so() -> None:
    search = EdgeSearch((Axis.of("dropout", [0.1, 0.3]),))
    rounds = run(search, (0.9,))
    assert [s for r in rounds for s in r] == [(0.1,), (0.3,), (0.5,)]
    assert search.stop_reason == "the best dropout 0.5 is on the high edge, at the bound 0.5"
    assert Axis.of("tau", [2.0, 5.0]).low == pytest.approx(2e-3)
    assert Axis.of("tau", [2.0, 5.0]).high == pytest.approx(5e3)


def test_the_settings_budget_stops_the_search_before_it_overspends() -> None:
    search = EdgeSearch((Axis.of("dropout", [0.01, 0.05, 0.1]), Axis.of("tau", [0.5, 1.0])),
                        max_settings=10)
    rounds = run(search, (0.05, 20.0))
    assert sum(len(r) for r in rounds) == 9  # 6, then 3; a third tau column would make 12
    assert search.stop_reason == "budget: extending would make 12 settings, more than 10"


def test_grid_only_one_value_axes_and_minimising() -> None:
    fixed = EdgeSearch((Axis.of("dropout", [0.01, 0.1]), Axis.of("tau", [1.0])), extend=False)
    assert len(run(fixed, (1e-3, 100.0))) == 1
    assert fixed.stop_reason == "the given grid only (extension off)"
    one = EdgeSearch((Axis.of("dropout", [0.1]), Axis.of("tau", [1.0, 2.0, 4.0])))
    rounds = run(one, (1e-3, 2.0))  # tau's best is inside; dropout's single value is fixed
    assert len(rounds) == 1 and one.stop_reason.startswith("the best setting lies inside")
    lower = EdgeSearch((Axis.of("weight_decay", [1e-4, 1e-3]),), maximize=False)
    run_searches([lower], lambda todo: [s[0] for _, s in todo])  # smaller is better
    assert lower.best().setting == (lower.log()["axes"][0]["tried"][0],)
    assert lower.log()["axes"][0]["tried"][0] < 1e-4


def test_several_searches_are_scored_together_and_each_goes_its_own_way() -> None:
    searches = [EdgeSearch((Axis.of("tau", [1.0, 2.0, 4.0]),)) for _ in range(2)]
    optima = [2.0, 10.0]
    calls = []

    def score(todo: list[tuple[int, tuple[float, ...]]]) -> list[float]:
        calls.append(todo)
        return [log_distance(s, (optima[i],)) for i, s in todo]

    run_searches(searches, score)
    assert calls[0] == [(i, (t,)) for i in (0, 1) for t in (1.0, 2.0, 4.0)]
    assert calls[1:] == [[(1, (8.0,))], [(1, (16.0,))]]
    assert searches[0].log()["settings"] == 3
    assert searches[1].best().setting == (8.0,)


def test_failed_runs_never_win_and_bad_arguments_are_refused() -> None:
    search = EdgeSearch((Axis.of("tau", [1.0, 2.0, 4.0]),))
    run_searches([search], lambda todo: [math.nan if s[0] == 2.0 else -abs(s[0] - 2.0)
                                         for _, s in todo])
    assert search.best().setting != (2.0,)
    with pytest.raises(InvalidArgumentError, match=r"tau values must be one or more finite "
                                                   r"numbers > 0, got \[0\.0\]"):
        Axis.of("tau", [0.0])
    with pytest.raises(InvalidArgumentError, match="max_rounds must be an integer >= 0, got -1"):
        EdgeSearch((Axis.of("tau", [1.0]),), max_rounds=-1)
    with pytest.raises(InvalidArgumentError, match="max_settings must be at least the first "
                                                   "grid's size 3, got 2"):
        EdgeSearch((Axis.of("tau", [1.0, 2.0, 4.0]),), max_settings=2)
    pending = EdgeSearch((Axis.of("tau", [1.0, 2.0]),))
    with pytest.raises(InvalidArgumentError, match="2 settings are not scored yet"):
        pending.advance()
