"""Judgments -> preference rows: aggregation, splits, better answers, hashing, snapshots, exports.

``add_judged_pairs`` is the shared helper the round and CLI tests import to fill a store with
prompts, pairs and real judgments (served through assignments, recorded by annotators).
"""

from __future__ import annotations

import json

import pytest

from prefloop.annotate import auth
from prefloop.db.store import Store
from prefloop.errors import PrefloopError

PASSWORD = "correct-horse"


def annotator(store: Store, name: str, role: str = "annotator") -> int:
    found = store.annotator_by_name(name)
    return found["id"] if found else auth.create_user(store, name, PASSWORD, role)


def add_pair(store: Store, prompt: str, text_a: str, text_b: str, *, split="train", purpose="train", wanted=1) -> int:
    """One prompt and one pair whose two generations come from the active (or first) version."""
    version = store.active_version() or _ensure_version(store)
    store.add_prompts([{"text": prompt, "split": split, "source": "test"}])
    prompt_id = next(p["id"] for p in store.list_prompts() if p["text"] == prompt)
    gen = lambda text, seed: {"version_id": version["id"], "text": text, "seed": seed, "params": {}}  # noqa: E731
    return store.add_pair(prompt_id, gen(text_a, 1), gen(text_b, 2), purpose=purpose, judgments_wanted=wanted)


def _ensure_version(store: Store) -> dict:
    if store.version("v0") is None:
        store.add_version("v0", "base", "nowhere", card={"method": "base"})
    return store.require_version("v0")


def judge(store: Store, pair_id: int, name: str, choice: str, better: str | None = None) -> int:
    annotator_id = annotator(store, name)
    pair = store.pair(pair_id)
    store.assign_pair(annotator_id, pair_id, pair["generation_a_id"])
    judgment_id, created = store.record_judgment(annotator_id, pair_id, choice, better_answer=better)
    assert created
    return judgment_id


def add_judged_pairs(store: Store, n: int = 8, *, split: str = "train", tag: str = "p", rule: str = "shorter") -> list[int]:
    """n pairs on distinct prompts, each judged once, preferring the shorter answer."""
    pair_ids = []
    for i in range(n):
        short, long = f"Answer {i}.", f"A much longer and rambling answer number {i} that goes on."
        pair_id = add_pair(store, f"{tag} question {i} ({split})?", short if i % 2 else long, long if i % 2 else short, split=split)
        choice = ("b" if i % 2 == 0 else "a") if rule == "shorter" else "a"
        judge(store, pair_id, "ann", choice)
        pair_ids.append(pair_id)
    return pair_ids


# --------------------------------------------------------------------------------------------
def test_single_votes_become_conversational_rows(store):
    from prefloop.train.dataset import build_preference_rows

    add_judged_pairs(store, 4)
    rows = build_preference_rows(store)
    assert len(rows) == 4
    row = rows[0]
    assert row["prompt"] == [{"role": "user", "content": "p question 0 (train)?"}]
    assert row["chosen"] == [{"role": "assistant", "content": "Answer 0."}]
    assert row["rejected"][0]["role"] == "assistant" and "rambling" in row["rejected"][0]["content"]
    assert row["source"] == "vote:b" and row["judgment_ids"] and row["pair_id"]


def test_heldout_prompts_never_enter_training(store):
    from prefloop.train.dataset import build_preference_rows

    add_judged_pairs(store, 3, split="train")
    add_judged_pairs(store, 2, split="heldout")
    train_rows = build_preference_rows(store)
    heldout_rows = build_preference_rows(store, split="heldout")
    assert len(train_rows) == 3 and len(heldout_rows) == 2
    assert all("(train)" in r["prompt"][0]["content"] for r in train_rows)
    assert all("(heldout)" in r["prompt"][0]["content"] for r in heldout_rows)
    with pytest.raises(PrefloopError, match="split must be"):
        build_preference_rows(store, split="test")


def vote_rule_cases(store) -> tuple[int, int, int, int]:
    """The pairs every row builder's rules are checked on: a 2-1 majority for b, a 1-1 draw, a tie
    alone and a both-bad vote alone (their ids, in that order)."""
    majority = add_pair(store, "majority?", "A text", "B text", wanted=3)
    for name, choice in [("x", "b"), ("y", "b"), ("z", "a")]:
        judge(store, majority, name, choice)
    drawn = add_pair(store, "draw?", "A2", "B2", wanted=2)
    judge(store, drawn, "x", "a")
    judge(store, drawn, "y", "b")
    tie = add_pair(store, "tie?", "A3", "B3")
    judge(store, tie, "x", "tie")
    bad = add_pair(store, "both bad?", "A4", "B4")
    judge(store, bad, "x", "both_bad")
    return majority, drawn, tie, bad


def test_majority_ties_and_both_bad(store):
    from prefloop.train.dataset import build_preference_rows

    majority, drawn, tie, bad = vote_rule_cases(store)
    rescued = add_pair(store, "both bad, fixed?", "A5", "B5")
    judge(store, rescued, "x", "both_bad", better="A proper answer.")
    rows = build_preference_rows(store)
    by_pair = {}
    for r in rows:
        by_pair.setdefault(r["pair_id"], []).append(r)
    assert set(by_pair) == {majority, rescued}
    assert by_pair[majority][0]["chosen"][0]["content"] == "B text"
    assert len(by_pair[majority][0]["judgment_ids"]) == 3
    fixed = by_pair[rescued]
    assert [r["chosen"][0]["content"] for r in fixed] == ["A proper answer."] * 2
    assert sorted(r["rejected"][0]["content"] for r in fixed) == ["A5", "B5"]


def test_better_answer_with_a_vote_adds_rows(store):
    from prefloop.train.dataset import build_preference_rows

    pair = add_pair(store, "improve?", "okay", "worse")
    judge(store, pair, "x", "a", better="best")
    rows = build_preference_rows(store)
    assert [r["source"] for r in rows] == ["vote:a", "better_answer_vs_a", "better_answer_vs_b"]


def test_arena_and_gold_pairs_are_not_training_data(store):
    from prefloop.train.dataset import build_preference_rows

    arena = add_pair(store, "arena?", "a", "b", purpose="arena", split="heldout")
    judge(store, arena, "x", "a")
    gold = add_pair(store, "gold?", "a", "b", purpose="gold")
    judge(store, gold, "x", "a")
    assert build_preference_rows(store) == []
    assert [r["pair_id"] for r in build_preference_rows(store, split="heldout")] == [arena]


def test_since_judgment_id_and_hash(store):
    from prefloop.train.dataset import build_preference_rows, dataset_hash

    add_judged_pairs(store, 3)
    rows = build_preference_rows(store)
    assert dataset_hash(rows) == dataset_hash(build_preference_rows(store))
    assert len(dataset_hash(rows)) == 64
    later = build_preference_rows(store, since_judgment_id=rows[0]["judgment_ids"][0])
    assert len(later) == 2 and dataset_hash(later) != dataset_hash(rows)


def test_snapshot_round_trip(store, tmp_path):
    from prefloop.train.dataset import (
        build_preference_rows,
        dataset_hash,
        load_snapshot,
        save_snapshot,
    )

    add_judged_pairs(store, 2)
    rows = build_preference_rows(store)
    path, digest = save_snapshot(rows, tmp_path / "round")
    assert load_snapshot(path) == rows
    assert digest == dataset_hash(rows)
    assert (tmp_path / "round" / "dataset.sha256").read_text().startswith(digest)


def test_trl_accepts_rows_with_lineage(store, tiny_v0):
    """DPOTrainer tokenises conversational rows and drops the extra lineage columns itself."""
    from datasets import Dataset
    from trl.data_utils import is_conversational

    from prefloop.train.dataset import build_preference_rows

    add_judged_pairs(store, 2)
    rows = build_preference_rows(store)
    dataset = Dataset.from_list(rows)
    assert is_conversational(dataset[0])
    assert set(dataset.column_names) >= {"prompt", "chosen", "rejected", "pair_id", "judgment_ids"}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "hf"])
def test_exports(store, tmp_path, fmt):
    from datasets import Dataset, load_from_disk

    from prefloop.train.dataset import export_rows

    add_judged_pairs(store, 3)
    target = tmp_path / f"out.{fmt}"
    path, count = export_rows(store, target, fmt=fmt)
    assert count == 3
    if fmt == "jsonl":
        loaded = [json.loads(line) for line in path.read_text().splitlines()]
    elif fmt == "parquet":
        loaded = Dataset.from_parquet(str(path)).to_list()
    else:
        loaded = load_from_disk(str(path)).to_list()
    assert len(loaded) == 3 and loaded[0]["chosen"][0]["role"] == "assistant"
    with pytest.raises(PrefloopError, match="not empty"):
        export_rows(store, target, fmt=fmt)


def test_export_plain_and_bad_targets(store, tmp_path):
    from prefloop.train.dataset import export_rows

    add_judged_pairs(store, 1)
    path, _ = export_rows(store, tmp_path / "plain.jsonl", conversational=False)
    row = json.loads(path.read_text())
    assert row["prompt"] == "p question 0 (train)?" and row["chosen"] == "Answer 0."
    with pytest.raises(PrefloopError, match="does not exist"):
        export_rows(store, tmp_path / "missing" / "x.jsonl")
    with pytest.raises(PrefloopError, match="format must be"):
        export_rows(store, tmp_path / "x.csv", fmt="csv")


def test_cut_off_answers_are_marked_in_rows_and_exports(store, tmp_path):
    """Issue 14: a response that hit max_new_tokens is marked wherever the data leaves the store."""
    from prefloop.train.dataset import export_rows

    version = _ensure_version(store)
    store.add_prompts([{"text": "Cut?", "split": "train", "source": "test"}])
    prompt_id = store.list_prompts()[0]["id"]
    gen = lambda text, seed, reason: {"version_id": version["id"], "text": text, "seed": seed,  # noqa: E731
                                      "params": {}, "finish_reason": reason}
    pair = store.add_pair(prompt_id, gen("It stops in the mid", 1, "length"), gen("Done.", 2, "stop"), judgments_wanted=1)
    judge(store, pair, "ann", "a", better="A written answer.")
    path, n = export_rows(store, tmp_path / "prefs.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert n == 3
    vote = next(r for r in rows if r["source"] == "vote:a")
    assert vote["chosen_cut_off"] is True and vote["rejected_cut_off"] is False
    written = {r["source"]: r for r in rows if r["source"].startswith("better")}
    assert written["better_answer_vs_a"]["rejected_cut_off"] is True
    assert written["better_answer_vs_b"]["chosen_cut_off"] is False
