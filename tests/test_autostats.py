"""Per-version text statistics, on hand-made answers and on generations in a real store."""

from __future__ import annotations

import pytest

from prefloop.evaluate import autostats


def test_distinct_n_and_refusals():
    assert autostats.distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert autostats.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert autostats.distinct_n([""], 2) == 0.0
    assert autostats.is_refusal("I'm sorry, but I can't help with that.")
    assert autostats.is_refusal("As an AI language model, I cannot do that")
    assert not autostats.is_refusal("Sure! Here is a poem.")


def test_text_stats_lengths():
    stats = autostats.text_stats(["one two three", "one", "I cannot do that."], [3, 1, None])
    assert stats["answers"] == 3
    assert stats["mean_words"] == pytest.approx((3 + 1 + 5) / 3)
    assert stats["median_words"] == 3
    assert stats["mean_tokens"] == pytest.approx(2.0)
    assert stats["refusal_rate"] == pytest.approx(1 / 3)


def test_autostats_from_store_with_length_drift(store):
    store.add_prompts([{"text": "held", "split": "heldout"}, {"text": "train me"}])
    held, train = (p["id"] for p in store.list_prompts())
    v0 = store.add_version("v0", "base", "/nowhere")
    v1 = store.add_version("v1", "adapter", "/nowhere", parent_id=v0)
    for version, text in ((v0, "short answer"), (v0, "short answer too"), (v1, "a much longer answer "
                          "than before, as DPO likes to do")):
        store.add_generation({"prompt_id": held, "version_id": version, "text": text, "seed": 0,
                              "completion_tokens": len(text.split())})
    store.add_generation({"prompt_id": train, "version_id": v0, "text": "x " * 50, "seed": 0})
    table = {row["version"]: row for row in autostats.autostats(store)}
    assert table["v0"]["answers"] == 2  # the train-split generation is not counted
    assert table["v0"]["length_ratio"] == pytest.approx(1.0)
    assert table["v1"]["length_ratio"] == pytest.approx(12 / 2.5)  # 11 words and a comma
    every_split = {row["version"]: row for row in autostats.autostats(store, split=None)}
    assert every_split["v0"]["answers"] == 3
