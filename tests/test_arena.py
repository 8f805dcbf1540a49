"""Bradley-Terry ratings, bootstrap intervals and win rates on synthetic votes of known strength."""

from __future__ import annotations

import numpy as np
import pytest

from prefloop.evaluate import arena

TRUE = {"v0": 1000.0, "v1": 1100.0, "v2": 1250.0, "v3": 900.0}


def simulate_battles(n: int, seed: int, strengths=TRUE) -> list[tuple[str, str, str]]:
    """Votes drawn from the BT model itself (no ties), so the true ratings are known."""
    rng = np.random.default_rng(seed)
    names = list(strengths)
    battles = []
    for _ in range(n):
        i, j = rng.choice(len(names), 2, replace=False)
        p_a = arena.expected_score(strengths[names[i]], strengths[names[j]])
        battles.append((names[i], names[j], "a" if rng.random() < p_a else "b"))
    return battles


def test_bradley_terry_recovers_known_strengths():
    ratings = arena.bradley_terry(simulate_battles(6000, seed=1), bootstrap=0)
    assert [r.version for r in ratings] == ["v2", "v1", "v0", "v3"]
    by_name = {r.version: r.rating for r in ratings}
    assert by_name["v0"] == pytest.approx(1000.0)  # the anchor
    for name, true in TRUE.items():
        assert by_name[name] == pytest.approx(true, abs=25), name


def test_mean_anchor_when_v0_absent():
    battles = [(a.replace("v", "m"), b.replace("v", "m"), o) for a, b, o in simulate_battles(2000, 2)]
    ratings = arena.bradley_terry(battles, bootstrap=0)
    assert np.mean([r.rating for r in ratings]) == pytest.approx(1000.0)


def test_bootstrap_intervals_cover_true_values():
    covered = total = 0
    for seed in range(25):
        ratings = arena.bradley_terry(simulate_battles(800, seed=100 + seed), bootstrap=300, seed=seed)
        for r in ratings:
            if r.version == "v0":
                assert r.ci_low == pytest.approx(1000.0) and r.ci_high == pytest.approx(1000.0)
                continue
            assert r.ci_low <= r.rating <= r.ci_high
            total += 1
            covered += r.ci_low <= TRUE[r.version] <= r.ci_high
    assert covered / total >= 0.85, f"coverage {covered}/{total}"


def test_bootstrap_is_seeded():
    battles = simulate_battles(300, seed=5)
    first = arena.bradley_terry(battles, bootstrap=100, seed=3)
    second = arena.bradley_terry(battles, bootstrap=100, seed=3)
    assert [r.to_dict() for r in first] == [r.to_dict() for r in second]


def test_ties_count_half_and_both_bad_is_a_tie():
    # one win each way == two ties: the same (equal) ratings
    for battles in ([("v0", "v1", "a"), ("v0", "v1", "b")], [("v0", "v1", "tie")] * 2,
                    [("v0", "v1", "both_bad")] * 2):
        ratings = {r.version: r.rating for r in arena.bradley_terry(battles, bootstrap=0)}
        assert ratings["v1"] == pytest.approx(1000.0, abs=1e-6)
    # 3 wins + 2 ties out of 5 against v0: score 0.8 -> Elo gap 400*log10(4)
    battles = [("v1", "v0", "a")] * 3 + [("v0", "v1", "tie")] * 2
    rate = arena.win_rate(battles, "v1", "v0")
    assert rate.win_rate == pytest.approx(0.8) and (rate.wins, rate.ties, rate.losses) == (3, 2, 0)
    ratings = {r.version: r.rating for r in arena.bradley_terry(battles, bootstrap=0)}
    assert ratings["v1"] - 1000 == pytest.approx(400 * np.log10(4), abs=2)


def test_undefeated_version_gets_a_finite_rating():
    ratings = arena.bradley_terry([("v1", "v0", "a")] * 20, bootstrap=50)
    assert all(np.isfinite(r.rating) for r in ratings)
    assert ratings[0].version == "v1" and ratings[0].rating > 1400


def test_win_tie_loss_table_and_self_battles_ignored():
    battles = [("v0", "v1", "a"), ("v1", "v0", "a"), ("v1", "v0", "tie"), ("v0", "v1", "both_bad"),
               ("v1", "v1", "a")]
    (row,) = arena.win_tie_loss(battles)
    assert row == {"version_a": "v0", "version_b": "v1", "wins_a": 1, "wins_b": 1, "ties": 1,
                   "both_bad": 1, "battles": 4}


def test_win_rate_intervals():
    battles = simulate_battles(2000, seed=7)
    wilson = arena.win_rate(battles, "v2", "v0")
    boot = arena.win_rate(battles, "v2", "v0", method="bootstrap", seed=1)
    true = arena.expected_score(1250, 1000)
    assert wilson.ci_low <= true <= wilson.ci_high
    assert boot.ci_low <= true <= boot.ci_high
    assert wilson.win_rate == boot.win_rate
    perfect = arena.win_rate([("v1", "v0", "a")] * 10, "v1", "v0")
    assert perfect.win_rate == 1.0 and perfect.ci_high == 1.0 and perfect.ci_low < 0.8


def test_bad_outcome_is_refused():
    with pytest.raises(ValueError, match="outcome"):
        arena.bradley_terry([("v0", "v1", "left")])


def test_pairwise_win_rates_name_the_later_version_first():
    battles = [("v0", "v1", "b"), ("v1", "v0", "tie"), ("v2", "v1", "a")]
    rates = {(w.version, w.opponent): w for w in arena.pairwise_win_rates(battles)}
    assert set(rates) == {("v1", "v0"), ("v2", "v1")}
    assert rates[("v1", "v0")].win_rate == pytest.approx(0.75)
    assert rates[("v2", "v1")].win_rate == 1.0
