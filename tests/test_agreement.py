"""Agreement statistics against hand-computed values, and from real judgments in a store."""

from __future__ import annotations

import pytest

from prefloop.evaluate import agreement


def test_cohen_kappa_hand_example():
    # observed 3/4; marginals (a:2, b:2) and (a:1, b:3) -> chance 1/2 -> kappa 0.5
    assert agreement.cohen_kappa(["a", "a", "b", "b"], ["a", "b", "b", "b"]) == pytest.approx(0.5)
    assert agreement.cohen_kappa(["a", "b", "tie"], ["a", "b", "tie"]) == pytest.approx(1.0)
    assert agreement.cohen_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)
    assert agreement.cohen_kappa(["a", "a"], ["a", "a"]) is None  # undefined, not 1 or 0
    assert agreement.cohen_kappa([], []) is None


def test_krippendorff_alpha_hand_example():
    # coincidences: aa=2, ab=ba=1, bb=4; n_a=3, n_b=5, n=8 -> 1 - 7*2/30
    units = [["a", "a"], ["a", "b"], ["b", "b"], ["b", "b"], ["tie"]]
    assert agreement.krippendorff_alpha_nominal(units) == pytest.approx(1 - 14 / 30)
    assert agreement.krippendorff_alpha_nominal([["a", "a"], ["b", "b", "b"]]) == pytest.approx(1.0)
    assert agreement.krippendorff_alpha_nominal([["a"]]) is None


def test_pairwise_kappa_uses_only_shared_pairs():
    votes = [(1, "ann", "a"), (2, "ann", "a"), (3, "ann", "b"), (4, "ann", "b"),
             (1, "bob", "a"), (2, "bob", "b"), (3, "bob", "b"), (4, "bob", "b"), (5, "bob", "tie")]
    (row,) = agreement.pairwise_kappas(votes)
    assert row["shared_pairs"] == 4 and row["raw_agreement"] == 0.75
    assert row["kappa"] == pytest.approx(0.5)


def _pair(store, prompt_id, version_id, purpose="train", gold=None):
    g = {"version_id": version_id, "params": {}, "seed": 0}
    return store.add_pair(prompt_id, {**g, "text": "one"}, {**g, "text": "two"}, purpose=purpose,
                          judgments_wanted=3, gold_choice=gold)


def test_agreement_report_from_store(store):
    store.add_prompts([{"text": f"prompt {i}"} for i in range(3)])
    version_id = store.add_version("v0", "base", "/nowhere")
    prompts = [p["id"] for p in store.list_prompts()]
    gold = _pair(store, prompts[0], version_id, purpose="gold", gold="a")
    shared = [_pair(store, p, version_id) for p in prompts[1:]]
    people = {name: store.add_annotator(name, "annotator", "x") for name in ("ann", "bob")}
    plan = {"ann": {gold: "a", shared[0]: "a", shared[1]: "b"},
            "bob": {gold: "b", shared[0]: "a", shared[1]: "b"}}
    for name, votes in plan.items():
        for pair_id, choice in votes.items():
            pair = store.pair(pair_id)
            store.assign_pair(people[name], pair_id, pair["generation_a_id"])
            store.record_judgment(people[name], pair_id, choice)
    report = agreement.agreement_report(store)
    rows = {r["annotator"]: r for r in report["annotators"]}
    assert rows["ann"]["gold_accuracy"] == 1.0 and rows["bob"]["gold_accuracy"] == 0.0
    assert rows["ann"]["judgments"] == 3
    (pairwise,) = report["pairwise"]
    assert pairwise["shared_pairs"] == 3 and pairwise["raw_agreement"] == pytest.approx(2 / 3)
    assert report["multiply_judged_pairs"] == 3
    assert report["krippendorff_alpha"] is not None
