"""`prefloop eval`, `prefloop battles create`, `prefloop simulate` and the evaluate/demo handlers."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from prefloop.cli import cli
from prefloop.errors import AuthError, PrefloopError


def _battle_store(store, votes: dict[str, int]):
    """v0, v1 and a judged arena pair per vote; ``votes`` maps choice (v1's view) to count."""
    store.add_prompts([{"text": f"held {i}", "split": "heldout"} for i in range(sum(votes.values()))])
    v0 = store.add_version("v0", "base", "/nowhere")
    v1 = store.add_version("v1", "adapter", "/nowhere", parent_id=v0)
    judge = store.add_annotator("ann", "annotator", "x")
    prompts = iter(p["id"] for p in store.list_prompts())
    rng = random.Random(0)
    for choice, count in votes.items():
        for _ in range(count):
            flip = rng.random() < 0.5  # v1 is sometimes generation a, sometimes b
            gens = [{"version_id": v1, "text": "short", "seed": 0},
                    {"version_id": v0, "text": "a longer answer", "seed": 0}]
            pair_id = store.add_pair(next(prompts), *(gens[::-1] if flip else gens), purpose="arena")
            recorded = {"a": "b", "b": "a"}.get(choice, choice) if flip else choice
            store.assign_pair(judge, pair_id, store.pair(pair_id)["generation_a_id"])
            store.record_judgment(judge, pair_id, recorded)
    return store


def test_eval_prints_leaderboard_and_writes_json_and_plots(store, tmp_path):
    _battle_store(store, {"a": 12, "b": 4, "tie": 3, "both_bad": 1})
    out = tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["eval", "--json", str(out), "--png", str(tmp_path / "plots"),
                                      "--bootstrap", "100", "--no-accuracy"])
    assert result.exit_code == 0, result.output
    assert "Leaderboard (20 battles, v0 = 1000)" in result.output
    assert "v0 vs v1: 4-12 (3 ties, 1 both bad)" in result.output
    report = json.loads(out.read_text())
    (v1_rate,) = report["leaderboard"]["win_rate_vs_base"]
    assert v1_rate["win_rate"] == pytest.approx((12 + 2) / 20)
    ratings = {r["version"]: r for r in report["leaderboard"]["ratings"]}
    assert ratings["v1"]["rating"] > 1000 and ratings["v1"]["ci_low"] < ratings["v1"]["rating"]
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {
        "win_rate_by_round.png", "heldout_accuracy_by_round.png", "response_length_by_round.png"}
    assert (tmp_path / "plots" / "win_rate_by_round.png").stat().st_size > 5000


def test_eval_on_an_empty_store(store):
    result = CliRunner().invoke(cli, ["eval", "--no-accuracy"])
    assert result.exit_code == 0, result.output
    assert "no battles judged yet" in result.output


def test_battles_create_refuses_bad_input(store):
    store.add_version("v0", "base", "/nowhere")
    runner = CliRunner()
    result = runner.invoke(cli, ["battles", "create", "--a", "v0", "--b", "v9"])
    assert result.exit_code == 1 and "no model version 'v9'" in result.output
    result = runner.invoke(cli, ["battles", "create", "--a", "v0", "--b", "v0"])
    assert result.exit_code == 1 and "two different versions" in result.output
    assert store.stats()["pairs"] == 0


def test_battles_create_queues_blind_pairs(tiny_v0):
    pytest.importorskip("prefloop.annotate.sampler", reason="annotate/sampler.py not written yet")

    store = tiny_v0
    store.add_prompts([{"text": f"Explain idea {i}.", "split": "heldout"} for i in range(3)])
    store.set_setting("sampling", {"temperature": 0.9, "top_p": 0.95, "max_new_tokens": 6})
    _fake_v1(store)
    result = CliRunner().invoke(cli, ["battles", "create", "--a", "v1", "--b", "v0", "--prompts", "3", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "queued 3 battle pairs v1 vs v0" in result.output
    pairs = store.rows("select * from pairs where purpose = 'arena'")
    assert len(pairs) == 3


def _fake_v1(store):
    """A v1 adapter (a fresh, untrained LoRA) so two versions exist without a training round."""
    from peft import LoraConfig, get_peft_model

    from prefloop.engine import models

    model, _ = models.load_fresh(store, "v0")
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    return models.register_adapter_version(store, "v0", peft_model.save_pretrained, {"method": "test"},
                                           status="ready")


def test_simulate_cli_json_shape(tiny_v0, tmp_path):
    tiny_v0.add_prompts([{"text": f"Say something about {i}.", "split": "train"} for i in range(6)]
                        + [{"text": f"Explain idea {i}.", "split": "heldout"} for i in range(4)])
    result = CliRunner().invoke(cli, [
        "simulate", "--judge", "tests.sim_judges:decisive", "--rounds", "1", "--pairs-per-round", "6",
        "--eval-prompts", "4", "--max-new-tokens", "8", "--epochs", "1", "--json",
        "--partial-json", str(tmp_path / "runs" / "partial.json")])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)  # the whole of stdout is one JSON object: nothing else
    assert payload["finished"] is True
    assert json.loads((tmp_path / "runs" / "partial.json").read_text()) == payload  # the last rewrite is the result
    (first,) = payload["rounds"]
    for key in ("version", "win_rate_vs_v0", "ci_low", "ci_high", "pairs", "seconds", "cutoff_rate", "gate"):
        assert key in first
    assert first["version"] == "v1" and 0 <= first["cutoff_rate"] <= 1
    assert set(first["gate"]) == {"promoted", "decision", "reason", "rows", "accuracy", "lower_bound", "guards"}
    assert first["gate"]["decision"] == "wait" and first["heldout_pairs"] == 4  # 4 held-out prompts < 30 rows
    assert 0 <= payload["v0"]["cutoff_rate"] <= 1 and payload["active"] == "v0"


def test_simulate_cli_resume_adds_rounds_and_refuses_other_options(tiny_v0, tmp_path):
    """`simulate --resume` goes on from the checkpoint the last finished round left (here adding a
    round to a finished run); other options, or a home with no checkpoint, are one clear line."""
    from prefloop.db.store import Store

    tiny_v0.add_prompts([{"text": f"Say something about {i}.", "split": "train"} for i in range(4)]
                        + [{"text": f"Explain idea {i}.", "split": "heldout"} for i in range(2)])
    run = ["simulate", "--judge", "tests.sim_judges:decisive", "--pairs-per-round", "4", "--eval-prompts", "2",
           "--heldout-pairs", "2", "--max-new-tokens", "6", "--epochs", "1", "--force-promote", "--json"]
    nothing = CliRunner().invoke(cli, [*run, "--rounds", "1", "--resume"])
    assert nothing.exit_code == 1 and "no simulation checkpoint" in nothing.stderr and "Traceback" not in nothing.output
    first = CliRunner().invoke(cli, [*run, "--rounds", "1"])
    assert first.exit_code == 0, first.output
    other = CliRunner().invoke(cli, [*run, "--rounds", "2", "--seed", "5", "--resume"])
    assert other.exit_code == 1 and "seed: 0 there, 5 now" in other.stderr and "Traceback" not in other.output
    more = CliRunner().invoke(cli, [*run, "--rounds", "2", "--resume"])
    assert more.exit_code == 0, more.output
    payload = json.loads(more.stdout)
    assert [r["version"] for r in payload["rounds"]] == ["v1", "v2"] and payload["finished"] is True
    assert payload["rounds"][0] == json.loads(first.stdout)["rounds"][0]  # round 1 is the first run's, kept
    store = Store()
    assert store.active_version()["name"] == "v2" and len(store.list_rounds()) == 2
    store.close()


def test_simulate_cli_seeds_report_mean_and_spread(tiny_v0):
    tiny_v0.add_prompts([{"text": f"Say something about {i}.", "split": "train"} for i in range(4)]
                        + [{"text": f"Explain idea {i}.", "split": "heldout"} for i in range(2)])
    result = CliRunner().invoke(cli, [
        "simulate", "--judge", "tests.sim_judges:decisive", "--rounds", "1", "--pairs-per-round", "4",
        "--eval-prompts", "2", "--heldout-pairs", "2", "--max-new-tokens", "6", "--seeds", "2", "--force-promote",
        "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [run["seed"] for run in payload["seeds"]] == [0, 1]
    assert all(run["rounds"][0]["version"] == "v1" and run["active"] == "v1" for run in payload["seeds"])
    (round_1,) = payload["summary"]["rounds"]
    win = round_1["win_rate_vs_v0"]
    assert win["n"] == 2 and win["min"] <= win["mean"] <= win["max"] and win["sd"] is not None
    assert tiny_v0.active_version()["name"] == "v0" and tiny_v0.stats()["rounds"] == 0  # fresh homes per seed


def test_simulate_cli_reports_an_early_stop(tiny_v0):
    tiny_v0.add_prompts([{"text": f"Say something about {i}.", "split": "train"} for i in range(3)])
    result = CliRunner().invoke(cli, [
        "simulate", "--judge", "tests.sim_judges:always_tie", "--rounds", "2", "--pairs-per-round", "3",
        "--eval-prompts", "0", "--max-new-tokens", "4", "--json"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Error: stopped before round 1: the judge preferred neither answer" in result.stderr
    payload = json.loads(result.stdout)
    assert payload["rounds"] == [] and payload["stopped"].endswith("0 of 2 rounds ran")
    assert tiny_v0.stats()["rounds"] == 0 and tiny_v0.active_version()["name"] == "v0"


def test_simulate_cli_bad_judge_changes_nothing(store):
    result = CliRunner().invoke(cli, ["simulate", "--judge", "prefloop.evaluate.judges:nope"])
    assert result.exit_code == 1 and "has no 'nope'" in result.output
    assert store.stats()["rounds"] == 0 and store.list_annotators() == []


# --------------------------------------------------------------------------------------------
# UI handlers (plain functions; role checks first)
# --------------------------------------------------------------------------------------------
def _token(store, role: str) -> str:
    from prefloop.annotate import auth

    if store.annotator_by_name(f"user-{role}") is None:
        auth.create_user(store, f"user-{role}", "password123", role)
    token, _ = auth.sign_in(store, f"user-{role}", "password123")
    return token


def test_evaluate_handlers_check_roles(store):
    from prefloop.ui import evaluate as ui

    _battle_store(store, {"a": 5, "b": 2})
    annotator, maintainer = _token(store, "annotator"), _token(store, "maintainer")
    for token in (None, annotator):
        with pytest.raises(AuthError):
            ui.evaluation_tables(store, token)
        with pytest.raises(AuthError):
            ui.queue_battles(store, token, "v1", "v0", 3)
    with pytest.raises(AuthError):
        next(ui.demo_compare(store, None, "hi", "v0", "v1"))
    tables = ui.evaluation_tables(store, maintainer, bootstrap=50)
    assert [row[0] for row in tables["ratings"]] == ["v1", "v0"]
    assert len(tables["versions"]) == 2 and tables["agreement"][0][0] == "ann"
    assert set(ui.evaluation_figures(store, annotator)) == {"win_rate", "heldout_accuracy", "length"}
    assert ui.demo_leaderboard(store, annotator)[0][0] == "v1"

    with pytest.raises(PrefloopError, match="two different"):
        ui.queue_battles(store, maintainer, "v0", "v0", 3)
    with pytest.raises(PrefloopError, match="type a prompt"):
        next(ui.demo_compare(store, annotator, "  ", "v0", "v1"))


def test_demo_compare_streams_both_sides(tiny_v0):
    from prefloop.ui import evaluate as ui

    store = tiny_v0
    store.set_setting("sampling", {"temperature": 0.9, "top_p": 0.95, "max_new_tokens": 5})
    _fake_v1(store)
    token = _token(store, "annotator")
    updates = list(ui.demo_compare(store, token, "Hello there", "v0", "v1", seed=1))
    assert len(updates) >= 2
    final_a, final_b = updates[-1]
    assert final_a and final_b
    assert ui.version_names(store, token) == ["v0", "v1"]


def test_tabs_build_inside_blocks(store):
    import gradio as gr

    from prefloop.ui import evaluate as ui

    with gr.Blocks():
        evaluate_parts = ui.build_evaluate_tab(store)
        demo_parts = ui.build_demo_tab(store)
    assert "refresh" in evaluate_parts and "compare" in demo_parts
    first = evaluate_parts["refresh"](None)
    assert "sign in" in first[0]
    _battle_store(store, {"a": 3, "b": 1})
    shown = evaluate_parts["refresh"](_token(store, "maintainer"))
    assert shown[0].startswith("4 battles judged") and shown[1][0][0] == "v1"
    assert "only maintainers" in evaluate_parts["refresh"](_token(store, "annotator"))[0]
    assert "only maintainers" in evaluate_parts["queue"](_token(store, "annotator"), "v1", "v0", 2)
    loaded = demo_parts["load"](_token(store, "annotator"))
    assert loaded[2][0][0] == "v1" and loaded[-1] == ""


def test_eval_computes_heldout_accuracy_where_no_round_recorded_it(tiny_v0, tmp_path):
    store = tiny_v0
    store.add_prompts([{"text": f"Explain idea {i}.", "split": "heldout"} for i in range(4)])
    v1 = _fake_v1(store)
    v0 = store.version("v0")
    judge = store.add_annotator("ann", "annotator", "x")
    for prompt in store.list_prompts(split="heldout"):
        pair_id = store.add_pair(prompt["id"], {"version_id": v1["id"], "text": "Short.", "seed": 0},
                                 {"version_id": v0["id"], "text": "A much longer answer here.", "seed": 0},
                                 purpose="arena")
        store.assign_pair(judge, pair_id, store.pair(pair_id)["generation_a_id"])
        store.record_judgment(judge, pair_id, "a")
    out = tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["eval", "--json", str(out), "--bootstrap", "50"])
    assert result.exit_code == 0, result.output
    rows = {v["version"]: v for v in json.loads(out.read_text())["versions"]}
    assert rows["v0"]["heldout_accuracy"] is None  # the base has no parent to compare with
    assert 0.0 <= rows["v1"]["heldout_accuracy"] <= 1.0
    assert rows["v1"]["win_rate_vs_base"] == 1.0
