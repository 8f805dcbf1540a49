"""The annotator dashboard's numbers, checked against values worked out by hand."""

from __future__ import annotations

import json

from click.testing import CliRunner
from test_ui_handlers import make_pairs, signed_in

from prefloop.cli import cli
from prefloop.evaluate.annotators import annotator_stats
from prefloop.ui import annotate as ui


def vote(pair_id, who, choice, *, left="a", seconds=5.0, day="2026-12-01", purpose="train", gold=None):
    """A judgment row as store.judgments() returns it: generations 10*pair (a) and 10*pair+1 (b)."""
    a, b = 10 * pair_id, 10 * pair_id + 1
    return {"pair_id": pair_id, "annotator": who, "choice": choice, "generation_a_id": a,
            "generation_b_id": b, "left_generation_id": a if left == "a" else b,
            "elapsed_ms": None if seconds is None else int(seconds * 1000),
            "created_at": f"{day}T10:00:00.000+00:00", "purpose": purpose, "gold_choice": gold}


def test_dashboard_numbers_match_a_hand_computed_fixture():
    judgments = [
        # alice: 4 votes on 2 days; decisive 3, left picked 2 (a shown left & a; b shown left & b)
        vote(1, "alice", "a", left="a", seconds=4, day="2026-12-01"),
        vote(2, "alice", "b", left="b", seconds=6, day="2026-12-01"),
        vote(3, "alice", "a", left="b", seconds=10, day="2026-12-02"),
        vote(4, "alice", "tie", seconds=None, day="2026-12-02", purpose="gold", gold="tie"),
        # bob shares pairs 1, 2 and 4 with alice: agrees on 1 (a) only
        vote(1, "bob", "a", left="b", seconds=2),
        vote(2, "bob", "a", left="a", seconds=3),
        vote(4, "bob", "both_bad", seconds=1, purpose="gold", gold="tie"),
    ]
    rows = {r["annotator"]: r for r in annotator_stats(judgments)}
    alice, bob = rows["alice"], rows["bob"]
    assert alice["votes"] == 4 and alice["active_days"] == 2 and alice["votes_per_day"] == 2.0
    assert alice["votes_by_day"] == {"2026-12-01": 2, "2026-12-02": 2}
    assert alice["median_seconds"] == 6.0  # of 4, 6, 10 (one vote without a time)
    assert alice["tie_share"] == 0.25 and alice["both_bad_share"] == 0.0
    assert alice["decisive"] == 3 and alice["left_share"] == 2 / 3
    assert alice["gold_votes"] == 1 and alice["gold_accuracy"] == 1.0
    assert alice["shared_comparisons"] == 3 and alice["agreement"] == 1 / 3
    assert bob["votes"] == 3 and bob["median_seconds"] == 2.0
    assert bob["left_share"] == 0.5  # pair 1: a chosen, b shown left; pair 2: a chosen, a left
    assert bob["gold_accuracy"] == 0.0 and bob["both_bad_share"] == 1 / 3
    assert bob["agreement"] == 1 / 3 and bob["flags"] == []  # too few votes to flag anything
    assert [r["annotator"] for r in annotator_stats(judgments)] == ["alice", "bob"]


def test_dashboard_flags_outliers_only_with_enough_evidence():
    clicker = [vote(i, "carol", "a", left="a", seconds=1) for i in range(1, 25)]  # always left, 1 s
    honest = [vote(i, "dan", "a" if i % 2 else "b", left="a", seconds=8) for i in range(1, 25)]
    rows = {r["annotator"]: r for r in annotator_stats(clicker + honest)}
    carol, dan = rows["carol"], rows["dan"]
    assert any(f.startswith("position bias: picks the left side 100%") for f in carol["flags"])
    assert "fast: median 1.0 s per vote" in carol["flags"]
    assert dan["left_share"] == 0.5 and dan["flags"] == []
    assert carol["agreement"] == 0.5 and dan["agreement"] == 0.5  # agree on the odd pairs only


def test_dashboard_cli_reads_real_votes(tiny_v0):
    store = tiny_v0
    make_pairs(store, 2)
    token = signed_in(store, "erin")
    for side in ("left", "tie"):
        screen = ui.next_pair(store, token)
        ui.vote(store, token, screen.pair, side)
    result = CliRunner().invoke(cli, ["annotators", "--json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert row["annotator"] == "erin" and row["votes"] == 2 and row["tie_share"] == 0.5
    assert row["decisive"] == 1 and row["left_share"] == 1.0  # "left" always picks the left side
    assert "erin" in CliRunner().invoke(cli, ["annotators"]).output
