"""`prefloop train / rounds / export` through CliRunner, and the Train tab's handlers."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import force_setting
from test_dataset import PASSWORD, add_judged_pairs, annotator
from test_rounds import FAST
from training_checks import assert_unchanged, base_state, learned

from prefloop.annotate import auth
from prefloop.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def fast_json(**overrides):
    return json.dumps({**FAST, **overrides})


def test_commands_have_help_with_examples():
    for args in (["train"], ["rounds"], ["rounds", "list"], ["rounds", "show"], ["rounds", "promote"],
                 ["rounds", "reject"], ["export"]):
        result = invoke(*args, "--help")
        assert result.exit_code == 0 and "Example: prefloop" in result.output, args


def test_train_in_process_then_rounds_commands(tiny_v0):
    store = tiny_v0
    add_judged_pairs(store, 4)
    add_judged_pairs(store, 2, split="heldout", tag="h")
    before = base_state(store)
    result = invoke("train", "--in-process", "--min-new-pairs", "1", "--config-json", fast_json())
    assert result.exit_code == 0, result.output
    assert "round 1 trained: version v1, 4 pairs" in result.output and "the candidate waits" in result.output
    assert "gate: wait: too little evidence: 2 held-out judgments" in result.output and "rows 2" in result.output
    assert learned(store, "v1")
    assert_unchanged(before, base_state(store))

    listing = invoke("rounds", "list")
    assert "dpo" in listing.output and "v1" in listing.output and "trained" in listing.output
    shown = json.loads(invoke("rounds", "show", "1").output)
    assert shown["dataset_size"] == 4 and "loss" in shown["last_logged"]

    assert "v1 is now active" in invoke("rounds", "promote", "1").output
    assert store.active_version()["name"] == "v1"
    refused = CliRunner().invoke(cli, ["rounds", "reject", "1"])
    assert refused.exit_code == 1 and "roll back before rejecting" in refused.output
    missing = CliRunner().invoke(cli, ["rounds", "show", "9"])
    assert missing.exit_code == 1 and "no round 9" in missing.output


def test_train_refusals_are_one_line(tiny_v0):
    gate = CliRunner().invoke(cli, ["train", "--no-wait"])
    assert gate.exit_code == 1 and "no new preference rows" in gate.output
    add_judged_pairs(tiny_v0, 2)
    gate = CliRunner().invoke(cli, ["train", "--no-wait", "--min-new-pairs", "5"])
    assert gate.exit_code == 1 and "need 3 more pairs (have 2 of 5)" in gate.output
    bad = CliRunner().invoke(cli, ["train", "--lr", "-1"])
    assert bad.exit_code == 1 and "learning_rate must be in" in bad.output
    assert "Traceback" not in bad.output and tiny_v0.list_rounds() == []


def test_train_waits_on_a_child_with_a_progress_bar(tiny_v0):
    add_judged_pairs(tiny_v0, 4)
    result = CliRunner().invoke(cli, ["train", "--min-new-pairs", "1", "--config-json", fast_json()])
    assert result.exit_code == 0, result.output
    assert "round 1 started" in result.output and "version v1" in result.output


def test_create_only_prints_the_round_id(tiny_v0):
    add_judged_pairs(tiny_v0, 2)
    result = invoke("train", "--create-only", "--min-new-pairs", "1", "--precision", "fp32")
    assert result.output.strip() == "1" and tiny_v0.round(1)["status"] == "pending"
    assert tiny_v0.round(1)["config"]["precision"] == "fp32"
    bad = CliRunner().invoke(cli, ["train", "--create-only", "--precision", "fp16"])
    assert bad.exit_code == 2 and "fp16" in bad.output and len(tiny_v0.list_rounds()) == 1


def test_export_command(tiny_v0, tmp_path):
    add_judged_pairs(tiny_v0, 3)
    add_judged_pairs(tiny_v0, 1, split="heldout", tag="h")
    out = tmp_path / "prefs.jsonl"
    assert "wrote 3 train rows" in invoke("export", str(out)).output
    assert "wrote 1 heldout rows" in invoke("export", "--split", "heldout", "--format", "parquet",
                                             str(tmp_path / "h.parquet")).output
    again = CliRunner().invoke(cli, ["export", str(out)])
    assert again.exit_code == 1 and "not empty" in again.output
    missing = CliRunner().invoke(cli, ["export", str(tmp_path / "nope" / "x.jsonl")])
    assert missing.exit_code == 1 and "does not exist" in missing.output


# --------------------------------------------------------------------------------------------
# Train tab handlers
# --------------------------------------------------------------------------------------------
def tokens(store):
    annotator(store, "boss", "maintainer")
    annotator(store, "ann")
    return auth.sign_in(store, "boss", PASSWORD)[0], auth.sign_in(store, "ann", PASSWORD)[0]


def test_ui_handlers_require_a_maintainer(tiny_v0):
    from prefloop.ui import train as ui

    store = tiny_v0
    _, annotator_token = tokens(store)
    assert "only maintainers" in ui.start_round_action(store, annotator_token, "dpo", 5e-5, 1, 0.1, 4)
    assert "please sign in" in ui.start_round_action(store, None, "dpo", 5e-5, 1, 0.1, 4)
    assert "only maintainers" in ui.decide_action(store, annotator_token, "rollback", None)
    assert "only maintainers" in ui.readiness_text(store, annotator_token)
    with pytest.raises(auth.AuthError):
        ui.rounds_table(store, annotator_token)
    assert store.list_rounds() == []


def test_ui_handlers_run_the_loop(tiny_v0):
    from prefloop.train.rounds import run_round
    from prefloop.ui import train as ui

    store = tiny_v0
    boss, _ = tokens(store)
    force_setting(store, "gate_min_rows", 10**6)  # keep the candidate waiting
    assert "Not started" in ui.start_round_action(store, boss, "dpo", 5e-5, 1, 0.1, 4)
    assert "Not started" in ui.start_round_action(store, boss, "dpo", 50.0, 1, 0.1, 4, 0)
    assert "precision must be one of" in ui.start_round_action(store, boss, "dpo", 5e-5, 1, 0.1, 4, 0, "fp16")
    add_judged_pairs(store, 4)
    text = ui.readiness_text(store, boss)  # 4 a/b votes: 4 pairs, 8 KTO examples (winner and loser), no written answer
    assert "4 new preference pairs (dpo, orpo), 8 KTO examples (kto), 0 written answers (sft)" in text, text
    assert "a round needs 32" in text and "need 28 more preference pairs" in text
    store.set_setting("min_new_pairs", 4)
    assert "ready to train: dpo, orpo, kto" in ui.readiness_text(store, boss)
    store.set_setting("min_new_pairs", 32)
    # the Train tab's sft margin reaches the round: 0 imitates nothing, 5 finds no winner that clear
    assert r"sft\_chosen\_margin is 0" in ui.start_round_action(store, boss, "sft", 5e-5, 1, 0.1, 4, 1, "auto", 0)
    assert "vote margin of 5" in ui.start_round_action(store, boss, "sft", 5e-5, 1, 0.1, 4, 1, "auto", 5)
    assert store.list_rounds() == []
    from prefloop.train.config import RoundConfig
    from prefloop.train.rounds import create_round

    round_id = create_round(store, RoundConfig(**FAST, min_new_pairs=1))
    run_round(store, round_id)
    assert learned(store, "v1")
    rows = ui.rounds_table(store, boss)
    assert rows[0][ui.ROUND_HEADERS.index("status")] == "trained"
    assert rows[0][ui.ROUND_HEADERS.index("outcome")].startswith("wait: too little evidence")  # the verdict, with numbers
    frames = ui.curve_frames(store, boss, round_id)
    assert len(frames["loss"]) >= 1 and set(frames["margin"]["metric"]) == {"rewards/margins", "rewards/accuracies"}
    assert "v1** is now active" in ui.decide_action(store, boss, "promote", round_id)
    assert "v0** is active again" in ui.decide_action(store, boss, "rollback", None)
    assert "cannot be promoted" not in ui.decide_action(store, boss, "reject", round_id)
    assert store.require_version("v1")["status"] == "rejected"
    assert "Pick a round" in ui.decide_action(store, boss, "promote", None)


def test_train_tab_builds(tiny_v0):
    import gradio as gr

    from prefloop.ui.train import build_train_tab

    with gr.Blocks():
        parts = build_train_tab(tiny_v0)
    assert parts["refresh"](None, None) == [gr.update()] * 5
