"""Gold pairs (quality control) and the automatic training trigger after votes."""

from __future__ import annotations

import random

import pytest
from click.testing import CliRunner
from test_ui_handlers import make_pairs, signed_in

from prefloop.cli import cli
from prefloop.errors import PrefloopError
from prefloop.ui import annotate as ui


def test_gold_pair_is_served_at_gold_rate_and_scored(tiny_v0):
    store = tiny_v0
    [source] = make_pairs(store, 1)
    result = CliRunner().invoke(cli, ["gold", "add", str(source), "--answer", "b"])
    assert result.exit_code == 0, result.output
    store.set_setting("gold_rate", 1.0)
    annotator = signed_in(store, "alice")
    screen = ui.next_pair(store, annotator, rng=random.Random(1))
    gold = store.pair(screen.pair["pair_id"])
    assert gold["purpose"] == "gold" and gold["gold_choice"] == "b"
    assert (gold["generation_a_id"], gold["generation_b_id"]) == (
        store.pair(source)["generation_a_id"], store.pair(source)["generation_b_id"])
    right_side = "left" if screen.pair["left_generation_id"] == gold["generation_b_id"] else "right"
    ui.vote(store, annotator, screen.pair, right_side)
    [row] = store.list_gold_pairs()
    assert (row["agreed"], row["judgments_count"]) == (1, 1)
    listing = CliRunner().invoke(cli, ["gold", "list"])
    assert "answer b" in listing.output and "1/1 agreed" in listing.output


def test_gold_refusals_change_nothing(tiny_v0):
    [source] = make_pairs(tiny_v0, 1)
    before = tiny_v0.scalar("select count(*) from pairs")
    with pytest.raises(PrefloopError, match="no pair 999"):
        tiny_v0.add_gold_pair(999, "a")
    result = CliRunner().invoke(cli, ["gold", "add", str(source), "--answer", "maybe"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert tiny_v0.scalar("select count(*) from pairs") == before


def test_a_vote_only_records_and_serves_never_starts_a_round(tiny_v0, monkeypatch):
    """The vote path records the vote and serves the next pair; training starts on the scheduler."""
    from prefloop.service import scheduler

    started = []
    monkeypatch.setattr(scheduler, "start_round", lambda store, config: started.append(config) or 99)
    tiny_v0.set_setting("auto_train_every", 1)
    make_pairs(tiny_v0, 1)
    token = signed_in(tiny_v0, "alice")
    screen = ui.next_pair(tiny_v0, token)
    ui.vote(tiny_v0, token, screen.pair, "left")
    ui.vote(tiny_v0, token, screen.pair, "left")  # double click: no new vote
    assert started == [] and tiny_v0.list_rounds() == []
    assert scheduler.tick(tiny_v0)["started"] == 99  # the scheduler's next tick starts it, once
    assert len(started) == 1


def test_a_failing_trigger_never_stops_the_scheduler(tiny_v0, monkeypatch):
    from prefloop.service import scheduler

    def broken(store):
        raise RuntimeError("boom")

    monkeypatch.setattr(scheduler, "maybe_auto_train", broken)
    done = scheduler.tick(tiny_v0)
    assert done == {"reaped": [], "started": None}
    make_pairs(tiny_v0, 1)
    token = signed_in(tiny_v0, "alice")
    screen = ui.next_pair(tiny_v0, token)
    after = ui.vote(tiny_v0, token, screen.pair, "right")
    assert "Recorded" in after.message
    assert tiny_v0.scalar("select count(*) from judgments") == 1
