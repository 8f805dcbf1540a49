"""SFT rounds and the sft-dpo recipe (issue 16): demonstrations from written better answers and,
optionally, from winners with a clear vote margin; loss on the answer only; sft-dpo continues the
SFT adapter with DPO in the same round. Every test name contains ``sft``: ``pytest -k sft``."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from test_dataset import _ensure_version, add_judged_pairs, add_pair, judge
from test_rounds import FAST, fast_config, ready_store
from training_checks import assert_unchanged, base_state, learned, trainer_spy

from prefloop.errors import ConfigError, PrefloopError


def _new_round(store, **overrides):
    from prefloop.train.rounds import create_round

    return create_round(store, fast_config(**overrides))


def _texts(rows):
    return sorted((r["completion"][0]["content"], r["source"]) for r in rows)


def _with_better_answers(store, n=4):
    for i in range(n):
        pair = add_pair(store, f"Write something {i}?", f"Meh {i}.", f"Worse {i}.")
        judge(store, pair, "ann", "both_bad", better=f"A good written answer number {i}.")
    return store


# --------------------------------------------------------------------------------------------
# rows
# --------------------------------------------------------------------------------------------
def test_sft_rows_follow_the_rules(store):
    from prefloop.train.examples import build_sft_rows

    written = add_pair(store, "written?", "A1", "B1", wanted=3)
    judge(store, written, "x", "both_bad", better="Better one.")
    judge(store, written, "y", "a", better="Better one.")  # the same text again: one row
    judge(store, written, "z", "tie", better="Better two.")
    clear = add_pair(store, "clear?", "A2", "B2", wanted=3)
    for name in ("x", "y", "z"):
        judge(store, clear, name, "b")
    narrow = add_pair(store, "narrow?", "A3", "B3", wanted=3)
    for name, choice in [("x", "a"), ("y", "a"), ("z", "b")]:
        judge(store, narrow, name, choice)
    tied = add_pair(store, "plurality tie?", "A4", "B4", wanted=3)
    for name, choice in [("x", "a"), ("y", "tie"), ("z", "tie")]:
        judge(store, tied, name, choice)
    bad = add_pair(store, "both bad?", "A5", "B5")
    judge(store, bad, "x", "both_bad")
    heldout = add_pair(store, "held out?", "A6", "B6", split="heldout")
    judge(store, heldout, "x", "a", better="Held-out better.")

    assert _texts(build_sft_rows(store)) == [("Better one.", "better_answer"), ("Better two.", "better_answer")]
    assert _texts(build_sft_rows(store, chosen_margin=1)) == [
        ("A3", "chosen:a"), ("B2", "chosen:b"), ("Better one.", "better_answer"), ("Better two.", "better_answer")]
    assert _texts(build_sft_rows(store, chosen_margin=2)) == [
        ("B2", "chosen:b"), ("Better one.", "better_answer"), ("Better two.", "better_answer")]
    assert build_sft_rows(store, chosen_margin=4) == build_sft_rows(store)
    row = next(r for r in build_sft_rows(store, chosen_margin=3) if r["source"] == "chosen:b")
    assert row["prompt"] == [{"role": "user", "content": "clear?"}] and len(row["judgment_ids"]) == 3
    assert row["version"] == "v0" and row["generation_id"] and "label" not in row and "cut_off" not in row
    assert _texts(build_sft_rows(store, split="heldout", chosen_margin=1)) == [
        ("A6", "chosen:a"), ("Held-out better.", "better_answer")]


def test_sft_rows_leave_out_cut_off_winners(store):
    from prefloop.train.examples import build_sft_rows

    version = _ensure_version(store)
    store.add_prompts([{"text": "Cut?", "split": "train", "source": "test"},
                       {"text": "Whole?", "split": "train", "source": "test"}])
    gen = lambda text, seed, reason: {"version_id": version["id"], "text": text, "seed": seed,  # noqa: E731
                                      "params": {}, "finish_reason": reason}
    for prompt in store.list_prompts():
        reason = "length" if prompt["text"] == "Cut?" else "stop"
        pair = store.add_pair(prompt["id"], gen(f"{prompt['text']} winner", 1, reason), gen("Loser.", 2, "stop"),
                              judgments_wanted=1)
        judge(store, pair, "ann", "a")
    assert _texts(build_sft_rows(store, chosen_margin=1)) == [("Whole? winner", "chosen:a")]


# --------------------------------------------------------------------------------------------
# rounds
# --------------------------------------------------------------------------------------------
def test_sft_round_trains_on_completions_only(tiny_v0, monkeypatch):
    from prefloop.train.rounds import run_round

    store = _with_better_answers(ready_store(tiny_v0))  # 6 a/b votes, 4 written answers, 2 held out
    seen = trainer_spy(monkeypatch)
    before = base_state(store)
    summary = run_round(store, _new_round(store, method="sft"))
    done = store.round(summary["round_id"])
    assert done["status"] in ("promoted", "trained") and done["dataset_size"] == 4  # written answers only
    assert learned(store, summary["version"]) and store.require_version("v1")["card"]["method"] == "sft"
    assert_unchanged(before, base_state(store))
    assert done["metrics"]["gate"]["rows"] == 2 and done["metrics"]["gate"]["verdict"].startswith("wait:")
    assert "loss" in {m["name"] for m in store.round_metrics(summary["round_id"])}
    trainer = seen["trainer"]
    assert type(trainer).__name__ == "SFTTrainer" and trainer.args.completion_only_loss is True
    batch = trainer.data_collator([trainer.train_dataset[0]])
    labels, ids = batch["labels"][0].tolist(), batch["input_ids"][0].tolist()
    tokenizer = trainer.processing_class
    answer = tokenizer.decode([t for t, label in zip(ids, labels) if label != -100])
    assert answer.startswith("A good written answer number") and answer.endswith("<|im_end|>\n")
    assert "Write something" in tokenizer.decode(ids) and "Write something" not in answer  # no loss on the prompt


def test_sft_with_a_chosen_margin_learns_clear_winners(tiny_v0):
    from prefloop.train.rounds import readiness, run_round

    store = ready_store(tiny_v0, heldout=0)
    assert readiness(store, fast_config(method="sft"))["have"] == 0
    assert readiness(store, fast_config(method="sft", sft_chosen_margin=1))["have"] == 6
    summary = run_round(store, _new_round(store, method="sft", sft_chosen_margin=1))
    assert store.round(summary["round_id"])["dataset_size"] == 6 and learned(store, summary["version"])


def test_sft_refusals_are_clear(tiny_v0):
    from prefloop.train.rounds import run_round

    store = ready_store(tiny_v0, heldout=0)
    with pytest.raises(PrefloopError, match="no SFT rows: nobody wrote a better answer and sft_chosen_margin is 0"):
        _new_round(store, method="sft")
    with pytest.raises(PrefloopError, match="no SFT rows: .* no winning answer had a vote margin of 2"):
        _new_round(store, method="sft-dpo", sft_chosen_margin=2)
    with pytest.raises(ConfigError, match="sft_chosen_margin must be in"):
        fast_config(method="sft", sft_chosen_margin=-1).validate()
    with pytest.raises(ConfigError, match="nll_weight applies to DPO only"):
        fast_config(method="sft", nll_weight=1.0).validate()
    assert store.list_rounds() == []
    # rows that pass readiness but not the round's prompt-length limit: the round itself says so
    judge(store, add_pair(store, "long " * 80 + "?", "x", "y"), "ann", "a", better="A written answer.")
    round_id = _new_round(store, method="sft")
    with pytest.raises(PrefloopError, match=r"no SFT rows: .*\(1 left out: prompts longer than max_prompt_length\)"):
        run_round(store, round_id)
    assert store.round(round_id)["status"] == "failed" and store.active_version()["name"] == "v0"


def test_sft_dpo_recipe_is_one_round_one_version(tiny_v0):
    from prefloop.engine import models
    from prefloop.train.rounds import run_round

    store = _with_better_answers(ready_store(tiny_v0))
    before = base_state(store)
    round_id = _new_round(store, method="sft-dpo", max_steps=2, precision="fp32")  # fp32: the exact zero below
    summary = run_round(store, round_id)
    done = store.round(round_id)
    assert done["status"] in ("promoted", "trained") and [v["name"] for v in store.list_versions()] == ["v0", "v1"]
    phases = done["metrics"]["phases"]
    assert set(phases) == {"sft", "dpo"} and phases["sft"]["rows"] == 4 and phases["dpo"]["rows"] == 6 + 2 * 4
    assert phases["sft"]["steps"] == phases["dpo"]["steps"] == 2 and done["metrics"]["steps"] == 4
    assert done["dataset_size"] == 4 + 14 and done["metrics"]["gate"]["rows"] == 2
    assert {"prepare_sft", "train_sft", "prepare_dpo", "train_dpo", "gate"} <= set(done["metrics"]["phase_s"])
    metrics = store.round_metrics(round_id)
    steps = {name: [m["step"] for m in metrics if m["name"] == name] for name in ("sft/loss", "loss")}
    assert steps == {"sft/loss": [1, 2], "loss": [3, 4]}  # the DPO phase keeps counting
    # DPO's reference is the SFT result: its first step sees no reward difference at all
    first = {m["name"]: m["value"] for m in metrics if m["step"] == 3}
    assert first["rewards/chosen"] == pytest.approx(0, abs=1e-6) and first["rewards/margins"] == pytest.approx(0, abs=1e-6)
    folder = models.version_path(store.require_version("v1"))
    assert not (folder / "ref").exists()  # only the trained adapter is saved
    assert learned(store, summary["version"]) and store.require_version("v1")["card"]["method"] == "sft-dpo"
    assert_unchanged(before, base_state(store))


def test_sft_train_command_end_to_end(tiny_v0):
    from prefloop.cli import cli

    store = _with_better_answers(tiny_v0, n=3)
    add_judged_pairs(store, 2)
    before = base_state(store)
    result = CliRunner().invoke(cli, ["train", "--method", "sft", "--sft-chosen-margin", "1", "--in-process",
                                      "--min-new-pairs", "1", "--config-json", json.dumps(FAST)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "round 1 trained: version v1, 5 rows" in result.output and "gate: wait" in result.output
    assert store.round(1)["config"]["sft_chosen_margin"] == 1 and learned(store, "v1")
    assert_unchanged(before, base_state(store))
    add_judged_pairs(store, 1, tag="new")  # a new a/b vote, but nothing written
    refused = CliRunner().invoke(cli, ["train", "--method", "sft", "--no-wait"])
    assert refused.exit_code == 1 and "no SFT rows" in refused.output and "Traceback" not in refused.output


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sft", "sft-dpo"])
def test_sft_rounds_on_the_bundled_model(store, method):
    """Short SFT and sft-dpo rounds on SmolLM2-135M: a version is produced and the evidence gate ran."""
    from prefloop.engine import models
    from prefloop.train.rounds import run_round

    models.create_base_version(store)
    _with_better_answers(ready_store(store, n=6, heldout=2), n=4)
    round_id = _new_round(store, method=method, max_steps=2, max_length=128, max_prompt_length=64, lora_rank=8,
                          lora_alpha=16)
    summary = run_round(store, round_id)
    done = store.round(round_id)
    assert summary["version"] == "v1" and learned(store, "v1")
    verdict = done["metrics"]["gate"]
    assert verdict["decision"] == "wait" and verdict["rows"] == 2 and verdict["verdict"].startswith("wait:")
    assert done["status"] == "trained"
