"""KTO rounds (issue 16): labelled answers from votes, both-bad, thumbs and better answers; class
weights as TRL advises; cut-off answers without an end-of-turn token; a real KTO round on the tiny
model and on the bundled one. Every test name contains ``kto``: ``pytest -k kto`` runs them."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from test_dataset import _ensure_version, add_judged_pairs, add_pair, judge, vote_rule_cases
from test_rounds import FAST, fast_config, ready_store
from training_checks import assert_unchanged, base_state, learned, trainer_spy

from prefloop.errors import ConfigError, PrefloopError
from prefloop.train import recipe


def _by_pair(rows):
    out = {}
    for row in rows:
        out.setdefault(row["pair_id"], []).append(row)
    return out


def _labelled(rows):
    return sorted((r["completion"][0]["content"], r["label"], r["source"]) for r in rows)


# --------------------------------------------------------------------------------------------
# rows
# --------------------------------------------------------------------------------------------
def test_kto_rows_follow_the_rules(store):
    from prefloop.train.examples import build_kto_rows

    majority, drawn, tie, bad = vote_rule_cases(store)
    rescued = add_pair(store, "tie, fixed?", "A5", "B5", wanted=2)
    judge(store, rescued, "x", "tie", better="A proper answer.")
    judge(store, rescued, "y", "tie", better="A proper answer.")  # the same text twice: one row
    repeat = add_pair(store, "better is a repeat?", "A6", "B6")
    judge(store, repeat, "x", "b", better="B6")
    heldout = add_pair(store, "held out?", "A7", "B7", split="heldout")
    judge(store, heldout, "x", "a")

    rows = _by_pair(build_kto_rows(store))
    assert set(rows) == {majority, bad, rescued, repeat}  # a draw, a tie alone and held-out prompts: nothing
    assert _labelled(rows[majority]) == [("A text", False, "loser:a"), ("B text", True, "winner:b")]
    assert len(rows[majority][0]["judgment_ids"]) == 3  # every vote of the pair
    assert _labelled(rows[bad]) == [("A4", False, "both_bad:a"), ("B4", False, "both_bad:b")]
    assert _labelled(rows[rescued]) == [("A proper answer.", True, "better_answer")]
    assert _labelled(rows[repeat]) == [("A6", False, "loser:a"), ("B6", True, "winner:b")]
    written = rows[rescued][0]
    assert written["version"] is None and written["generation_id"] is None and written["cut_off"] is False
    row = rows[majority][0]
    assert row["prompt"] == [{"role": "user", "content": "majority?"}]
    assert row["completion"][0]["role"] == "assistant" and row["version"] == "v0" and row["generation_id"]
    assert build_kto_rows(store, pair_ids=[bad]) == rows[bad]  # a round's window
    assert [r["pair_id"] for r in build_kto_rows(store, split="heldout")] == [heldout, heldout]


def test_kto_rows_mark_cut_off_answers(store):
    from prefloop.train.examples import build_kto_rows

    version = _ensure_version(store)
    store.add_prompts([{"text": "Cut?", "split": "train", "source": "test"}])
    prompt_id = store.list_prompts()[0]["id"]
    gen = lambda text, seed, reason: {"version_id": version["id"], "text": text, "seed": seed,  # noqa: E731
                                      "params": {}, "finish_reason": reason}
    pair = store.add_pair(prompt_id, gen("It stops in the mid", 1, "length"), gen("Done.", 2, "stop"),
                          judgments_wanted=1)
    judge(store, pair, "ann", "a", better="A written answer.")
    cut = {r["completion"][0]["content"]: r["cut_off"] for r in build_kto_rows(store)}
    assert cut == {"It stops in the mid": True, "Done.": False, "A written answer.": False}


def test_kto_rows_round_trip_through_hash_and_snapshot(store, tmp_path):
    from prefloop.train.dataset import dataset_hash, load_snapshot, save_snapshot, training_columns
    from prefloop.train.examples import build_kto_rows

    add_judged_pairs(store, 2)
    rows = build_kto_rows(store)
    assert [set(r) for r in training_columns(rows)] == [{"prompt", "completion", "label"}] * 4
    assert set(training_columns(rows, cut_off_flags=True)[0]) == {"prompt", "completion", "label", "cut_off"}
    path, digest = save_snapshot(rows, tmp_path)
    assert load_snapshot(path) == rows and digest == dataset_hash(rows) != dataset_hash(rows[:3])
    flipped = [{**rows[0], "label": not rows[0]["label"]}] + rows[1:]
    assert dataset_hash(flipped) != digest


# --------------------------------------------------------------------------------------------
# class weights
# --------------------------------------------------------------------------------------------
def _trl_would_warn(n_d, n_u, w_d, w_u):
    """TRL's own check (KTOTrainer._prepare_dataset), copied: EITHER weight in its advised range."""
    if n_d == n_u:
        return False
    d_low, d_high = round(n_u * w_u / n_d, 2), round(n_u * w_u / n_d * 1.33, 2)
    u_low, u_high = round(n_d * w_d / n_u / 1.33, 2), round(n_d * w_d / n_u, 2)
    return not (d_low <= w_d <= d_high or u_low <= w_u <= u_high)


@pytest.mark.parametrize("n_d,n_u", [(5, 5), (4, 3), (1, 3), (3, 10), (10, 2), (7, 1), (13, 11), (6, 0), (0, 4)])
def test_kto_class_weights_follow_trls_guidance(n_d, n_u):
    weights = recipe.kto_class_weights(n_d, n_u)
    w_d, w_u = weights["desirable_weight"], weights["undesirable_weight"]
    assert (weights["desirable"], weights["undesirable"]) == (n_d, n_u)
    if not (n_d and n_u):
        assert (w_d, w_u) == (1.0, 1.0)  # one class only: nothing to balance
        return
    assert 1.0 <= weights["weighted_ratio"] <= 4 / 3 + 1e-3  # the KTO paper's range
    assert min(w_d, w_u) == 1.0  # only the minority class is weighted
    if 1 <= n_d / n_u <= 4 / 3:
        assert (w_d, w_u) == (1.0, 1.0)  # already in range: untouched
    assert not _trl_would_warn(n_d, n_u, w_d, w_u)


# --------------------------------------------------------------------------------------------
# rounds
# --------------------------------------------------------------------------------------------
def test_kto_round_trains_an_adapter(tiny_v0):
    from prefloop.engine import models
    from prefloop.train.dataset import load_snapshot
    from prefloop.train.rounds import round_dir, run_round

    store = ready_store(tiny_v0)  # 6 a/b votes and 2 held-out judgments
    bad = add_pair(store, "Both bad here?", "Nope.", "Also nope.")
    judge(store, bad, "ann", "both_bad")
    before = base_state(store)
    round_id = store_round = _new_round(store, method="kto")
    summary = run_round(store, round_id)

    done = store.round(store_round)
    assert done["status"] in ("promoted", "trained") and done["progress"] == 1.0
    assert done["dataset_size"] == 14  # 6 winners, 6 losers, both answers of the both-bad pair
    weights = done["metrics"]["kto_class_weights"]
    assert weights == recipe.kto_class_weights(6, 8) and weights["desirable_weight"] > 1
    version = store.require_version(summary["version"])
    assert version["card"]["method"] == "kto" and version["card"]["metrics"]["kto_class_weights"] == weights
    assert learned(store, summary["version"])  # trainable LoRA weights moved
    assert_unchanged(before, base_state(store))  # the parent's did not
    names = {m["name"] for m in store.round_metrics(round_id)}
    assert {"loss", "kl", "rewards/chosen", "rewards/rejected", "logps/chosen"} <= names
    assert done["metrics"]["gate"]["rows"] == 2 and done["metrics"]["gate"]["decision"] == "wait"
    snapshot = load_snapshot(round_dir(round_id) / "dataset.jsonl")
    assert sorted(r["label"] for r in snapshot) == [False] * 8 + [True] * 6
    assert models.version_path(version).joinpath("adapter_model.safetensors").exists()


def _new_round(store, **overrides):
    from prefloop.train.rounds import create_round

    return create_round(store, fast_config(**overrides))


def test_kto_reads_both_bad_votes_that_dpo_cannot(tiny_v0):
    """Readiness counts the method's own rows: both-bad pairs are no preference rows, but KTO rows."""
    from prefloop.train.rounds import readiness

    store = tiny_v0
    for i in range(3):
        judge(store, add_pair(store, f"Bad {i}?", f"Bad answer {i}.", f"Worse answer {i}."), "ann", "both_bad")
    assert readiness(store, fast_config())["have"] == 0
    assert readiness(store, fast_config(method="kto"))["have"] == 6
    with pytest.raises(PrefloopError, match="no new preference rows"):
        _new_round(store)
    round_id = _new_round(store, method="kto")
    assert store.round(round_id)["method"] == "kto" and len(store.round_pair_ids(round_id)) == 3


def test_kto_refusals_are_clear(tiny_v0):
    store = tiny_v0
    with pytest.raises(ConfigError, match="kto needs batch_size of at least 2"):
        fast_config(method="kto", batch_size=1).validate()
    with pytest.raises(ConfigError, match="nll_weight applies to DPO only"):
        fast_config(method="kto", nll_weight=0.5).validate()
    with pytest.raises(ConfigError, match="sft_chosen_margin applies to sft and sft-dpo only"):
        fast_config(method="kto", sft_chosen_margin=1).validate()
    judge(store, add_pair(store, "Tied?", "One.", "Two."), "ann", "tie")
    with pytest.raises(PrefloopError, match="no KTO rows: only ties"):
        _new_round(store, method="kto")
    assert store.list_rounds() == []


def test_kto_cut_off_answers_train_without_an_end_of_turn_token(tiny_v0, monkeypatch):
    from test_rounds import _cut_off_pair

    from prefloop.train import rounds

    store = tiny_v0
    store.set_setting("min_new_pairs", 1)
    for i, (c, r) in enumerate([(True, False), (False, True), (False, False), (True, True)]):
        _cut_off_pair(store, f"Cut case {i}?", c, r)
    seen = trainer_spy(monkeypatch)
    summary = rounds.run_round(store, _new_round(store, method="kto", max_steps=1))
    assert learned(store, summary["version"])
    data = seen["trainer"].train_dataset
    assert len(data) == 8 and "cut_off" not in data.column_names
    eos = 2  # <|im_end|>
    texts = {"Chosen answer that": "chosen", "Rejected answer which also": "rejected"}
    ends = {}
    tokenizer = rounds.models.load_tokenizer(store, "v0")
    for row in data:
        text = tokenizer.decode([t for t in row["completion_ids"] if t != eos]).strip()
        prompt = tokenizer.decode(row["prompt_ids"])
        case = int(prompt.split("Cut case ")[1][0])
        ends[(case, texts[text])] = eos in row["completion_ids"]
    cases = [(True, False), (False, True), (False, False), (True, True)]
    assert ends == {(i, side): not cut for i, pair in enumerate(cases) for side, cut in zip(("chosen", "rejected"), pair)}
    # the KL answers are the batch neighbours' answers, stripped the same way
    for start in range(0, len(data), 2):
        batch = data[start:start + 2]
        assert batch["KL_completion_ids"] == [batch["completion_ids"][-1]] + batch["completion_ids"][:-1]


def test_kto_train_command_end_to_end(tiny_v0):
    from prefloop.cli import cli

    store = tiny_v0
    add_judged_pairs(store, 4)
    judge(store, add_pair(store, "Both bad cli?", "No.", "Nah."), "ann", "both_bad")
    before = base_state(store)
    result = CliRunner().invoke(cli, ["train", "--method", "kto", "--in-process", "--min-new-pairs", "1",
                                      "--config-json", json.dumps(FAST)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "round 1 trained: version v1, 10 rows" in result.output and "gate: wait" in result.output
    assert store.round(1)["method"] == "kto" and learned(store, "v1")
    assert_unchanged(before, base_state(store))
    help_text = CliRunner().invoke(cli, ["train", "--help"]).output
    assert "kto" in help_text and "sft-dpo" in help_text and "--sft-chosen-margin" in help_text
    simulate_help = CliRunner().invoke(cli, ["simulate", "--help"]).output
    assert "dpo|orpo|kto|sft|sft-dpo" in simulate_help.replace("\n", "").replace(" ", "")


@pytest.mark.slow
def test_kto_round_on_the_bundled_model(store):
    """A short KTO round on SmolLM2-135M: a version is produced and the evidence gate ran."""
    from prefloop.engine import models
    from prefloop.train.rounds import run_round

    models.create_base_version(store)
    ready_store(store, n=8, heldout=2)
    round_id = _new_round(store, method="kto", max_steps=2, max_length=128, max_prompt_length=64, lora_rank=8,
                          lora_alpha=16)
    summary = run_round(store, round_id)
    done = store.round(round_id)
    assert summary["version"] == "v1" and learned(store, "v1")
    verdict = done["metrics"]["gate"]
    assert verdict["decision"] == "wait" and verdict["rows"] == 2 and verdict["verdict"].startswith("wait:")
    assert done["status"] == "trained" and done["metrics"]["kto_class_weights"]["desirable"] == 8


# --------------------------------------------------------------------------------------------
# thumbs (single answers judged up or down)
# --------------------------------------------------------------------------------------------
def _single(store, prompt, text, votes, better=None, finish_reason="stop"):
    from test_dataset import annotator

    version = _ensure_version(store)
    store.add_prompts([{"text": prompt, "split": "train", "source": "test"}])
    prompt_id = next(p["id"] for p in store.list_prompts() if p["text"] == prompt)
    item = store.add_single(prompt_id, {"version_id": version["id"], "text": text, "seed": 1, "params": {},
                                        "finish_reason": finish_reason}, judgments_wanted=len(votes))
    for i, choice in enumerate(votes):
        who = annotator(store, f"thumb{i}")
        store.assign_pair(who, item, store.pair(item)["generation_a_id"])
        store.record_judgment(who, item, choice, better_answer=better if i == 0 else None)
    return item


def test_thumbs_become_kto_rows(store):
    from prefloop.train.dataset import build_preference_rows
    from prefloop.train.examples import build_kto_rows, build_sft_rows

    up = _single(store, "Thumbs up?", "Fine answer.", ["up"])
    down = _single(store, "Thumbs down?", "Poor answer.", ["down", "down", "up"])
    drawn = _single(store, "Thumbs drawn?", "Meh answer.", ["up", "down"])
    rescued = _single(store, "Thumbs down, fixed?", "Bad answer.", ["down"], better="Written answer.")
    cut = _single(store, "Thumbs up, cut?", "Cut off in the", ["up", "up"], finish_reason="length")

    rows = {}
    for row in build_kto_rows(store):
        rows.setdefault(row["pair_id"], []).append(row)
    assert set(rows) == {up, down, rescued, cut}  # a draw gives nothing
    assert _labelled(rows[up]) == [("Fine answer.", True, "thumbs:up")]
    assert _labelled(rows[down]) == [("Poor answer.", False, "thumbs:down")]
    assert len(rows[down][0]["judgment_ids"]) == 3 and rows[down][0]["version"] == "v0"
    assert _labelled(rows[rescued]) == [("Bad answer.", False, "thumbs:down"), ("Written answer.", True, "better_answer")]
    assert rows[cut][0]["cut_off"] is True and rows[up][0]["cut_off"] is False
    assert drawn not in rows
    # a thumbs vote compares nothing: no preference row, except a written answer against the one answer
    assert [(r["pair_id"], r["chosen"][0]["content"], r["rejected"][0]["content"])
            for r in build_preference_rows(store)] == [(rescued, "Written answer.", "Bad answer.")]
    # SFT imitates a thumbs-up answer with a clear margin, never a cut-off one
    assert {(r["pair_id"], r["source"]) for r in build_sft_rows(store, chosen_margin=1)} == {
        (up, "thumbs:up"), (rescued, "better_answer")}
    assert {r["pair_id"] for r in build_sft_rows(store, chosen_margin=2)} == {rescued}


def test_kto_round_learns_from_thumbs_alone(tiny_v0):
    from prefloop.train.rounds import readiness, run_round

    store = tiny_v0
    for i in range(3):
        _single(store, f"Thumb item {i}?", f"Answer number {i}.", ["up" if i % 2 else "down"])
    assert readiness(store, fast_config())["have"] == 0  # nothing for DPO
    assert readiness(store, fast_config(method="kto"))["have"] == 3
    before = base_state(store)
    summary = run_round(store, _new_round(store, method="kto", max_steps=2))
    done = store.round(summary["round_id"])
    assert done["dataset_size"] == 3 and done["metrics"]["kto_class_weights"]["desirable"] == 1
    assert learned(store, summary["version"])
    assert_unchanged(before, base_state(store))
