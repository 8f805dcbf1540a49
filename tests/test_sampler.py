"""annotate/sampler.py on the tiny model with a real SQLite store."""

from __future__ import annotations

import time

import pytest

from prefloop.annotate import sampler
from prefloop.annotate.sampler import (
    QueueFiller,
    near_identical,
    sample_battle_pairs,
    sample_pairs,
    stream_live_pair,
)
from prefloop.engine import generation, models
from prefloop.engine.generation import SamplingParams

FAST = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=6)


@pytest.fixture
def loop(tiny_v0):
    """tiny v0 active, eight train prompts, two held-out, short fast sampling settings."""
    store = tiny_v0
    store.add_prompts([{"text": f"Train prompt number {i}", "source": "test"} for i in range(8)])
    store.add_prompts([{"text": f"Held-out prompt {i}", "source": "test", "split": "heldout"} for i in range(2)])
    store.set_setting("sampling", FAST.to_dict())
    return store


def generations_of(store, pair_id):
    pair = store.pair(pair_id)
    return store.generation(pair["generation_a_id"]), store.generation(pair["generation_b_id"])


def sampling_dtype_name() -> str:
    """What the sampler loads a version in on this machine (float32 or bfloat16)."""
    from prefloop.engine.generation import sampling_dtype

    return str(sampling_dtype("cpu")).removeprefix("torch.")


def test_pairs_record_version_params_and_two_seeds(loop):
    store = loop
    pair_ids = sample_pairs(store, "v0", n_prompts=4, params=FAST, seed=1)
    assert len(pair_ids) == 4
    v0 = store.version("v0")["id"]
    for pair_id in pair_ids:
        pair = store.pair(pair_id)
        assert pair["purpose"] == "train" and pair["status"] == "open" and pair["split"] == "train"
        a, b = generations_of(store, pair_id)
        for g in (a, b):
            assert g["version_id"] == v0
            assert g["params"] == {**FAST.to_dict(), "engine": "torch", "dtype": sampling_dtype_name()}
            assert g["completion_tokens"] == 6 and g["finish_reason"] == "length" and g["prompt_tokens"] > 0
            assert g["latency_ms"] > 0
        assert a["seed"] != b["seed"] and a["text"] != b["text"]
    assert len({store.pair(p)["prompt_id"] for p in pair_ids}) == 4  # fewest-pairs prompts first
    assert store.queued_pairs(v0) == 4


def test_same_seed_reproduces_the_same_texts(loop):
    store = loop
    first = sample_pairs(store, "v0", prompt_ids=[1, 2], params=FAST, seed=42)
    again = sample_pairs(store, "v0", prompt_ids=[2], params=FAST, seed=42, batch_size=1)
    other = sample_pairs(store, "v0", prompt_ids=[2], params=FAST, seed=43)
    texts = lambda pid: [g["text"] for g in generations_of(store, pid)]  # noqa: E731
    assert texts(first[1]) == texts(again[0])  # same prompt, seed: same texts, whatever the batch
    assert texts(first[1]) != texts(other[0])


def test_near_identical_pairs_are_not_queued(loop):
    store = loop
    greedy = SamplingParams(temperature=0, max_new_tokens=6)  # both seeds give the same text
    assert sample_pairs(store, "v0", n_prompts=3, params=greedy, seed=1) == []
    assert store.stats()["generations"] == 0 and store.stats()["pairs"] == 0


def test_near_identical_rule():
    assert near_identical("Paris is the capital.", "  paris IS the   capital. ")
    assert near_identical("The capital of France is Paris.", "The capital of France is Paris!")
    assert not near_identical("The capital of France is Paris.", "I do not know, sorry.")
    assert sampler.NEAR_IDENTICAL_RATIO == 0.9


def test_one_batched_decode_serves_many_prompts(loop):
    store = loop
    model, _ = sampler.load_for_sampling(store, "v0")  # the cached model the sampler will use
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        pair_ids = sample_pairs(store, "v0", n_prompts=6, params=FAST, seed=5, batch_size=16)
    finally:
        handle.remove()
    assert len(pair_ids) == 6
    # 12 rows (6 prompts): a few prefill passes of PREFILL_ROWS prompts, then one forward per
    # token for all of them
    assert len(calls) <= FAST.max_new_tokens - 1 + -(-6 // generation.PREFILL_ROWS)


def test_progress_is_reported_per_batch(loop):
    seen = []
    sample_pairs(loop, "v0", n_prompts=5, params=FAST, seed=1, batch_size=4, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(0, 5), (2, 5), (4, 5), (5, 5)]  # (0, n) first: a bar's clock starts with the work


def test_unknown_prompt_or_version_is_a_clear_error(loop):
    with pytest.raises(sampler.SamplerError, match="no prompt with id 999"):
        sample_pairs(loop, "v0", prompt_ids=[999], params=FAST)
    with pytest.raises(Exception, match="no model version 'v7'"):
        sample_pairs(loop, "v7", n_prompts=1)
    assert loop.stats()["generations"] == 0


def test_battle_pairs_take_one_response_from_each_version_in_random_order(loop, tiny_model_dir):
    store = loop
    models.create_base_version(store, base_model=str(tiny_model_dir), name="v1")
    store.add_prompts([{"text": f"Another held-out prompt {i}", "source": "test", "split": "heldout"} for i in range(6)])
    pair_ids = sample_battle_pairs(store, "v0", "v1", n_prompts=8, params=FAST, seed=3)
    assert len(pair_ids) == 8
    firsts = []
    for pair_id in pair_ids:
        pair = store.pair(pair_id)
        assert pair["purpose"] == "arena" and pair["split"] == "heldout"
        assert {pair["version_a_id"], pair["version_b_id"]} == {1, 2}
        firsts.append(pair["version_a_id"])
    assert set(firsts) == {1, 2}  # which version is "a" varies
    with pytest.raises(sampler.SamplerError, match="two different versions"):
        sample_battle_pairs(store, "v0", "v0", n_prompts=1, params=FAST)


def test_live_prompt_streams_both_responses_then_stores_and_assigns(loop):
    store = loop
    annotator = store.add_annotator("ann", "annotator", "x")
    events = list(stream_live_pair(store, annotator, "Write a haiku about tests", params=FAST))
    partials, done = events[:-1], events[-1]
    assert len(partials) == FAST.max_new_tokens and all(len(p) == 2 for p in partials)
    assert done[0] == "__done__"
    pair = store.pair(done[1])
    assert (pair["text_a"], pair["text_b"]) == partials[-1]
    assert pair["purpose"] == "live" and pair["created_by"] == annotator and pair["judgments_wanted"] == 1
    prompt = store.prompt(pair["prompt_id"])
    assert (prompt["text"], prompt["source"], prompt["split"]) == ("Write a haiku about tests", "live", "train")
    assignment = store.assignment(annotator, done[1])
    # the response that streamed on the left stays on the left once the pair is votable
    assert assignment["left_generation_id"] == pair["generation_a_id"]
    with pytest.raises(sampler.SamplerError, match="type a prompt first"):
        next(stream_live_pair(store, annotator, "   "))


def wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_queue_filler_fills_to_target_and_follows_a_promotion(loop, tiny_model_dir):
    store = loop
    store.set_setting("queue_target", 3)
    filler = QueueFiller(store, batch_size=4, poll_s=0.2).start()
    try:
        assert wait_for(lambda: store.queued_pairs(1) >= 3)
        assert wait_for(lambda: filler.status()["state"] == "idle")
        assert filler.status()["version"] == "v0" and filler.status()["queued"] == 3
        time.sleep(0.5)
        assert store.queued_pairs(1) == 3  # full: it stops sampling

        models.create_base_version(store, base_model=str(tiny_model_dir), name="v1")
        models.promote(store, "v1")
        filler.wake()
        assert wait_for(lambda: store.queued_pairs(2) >= 3)
        assert wait_for(lambda: filler.status()["version"] == "v1" and filler.status()["state"] == "idle")
        assert store.queued_pairs(1) == 0  # v0's pairs were retired by the promotion
    finally:
        filler.stop()
    assert not filler.is_alive() and filler.status()["state"] == "stopped"


def test_queue_filler_survives_errors_and_recovers(loop, monkeypatch):
    store = loop
    store.set_setting("queue_target", 2)
    real = sampler.sample_pairs
    failures = []

    def flaky(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(sampler, "sample_pairs", flaky)
    states = []
    filler = QueueFiller(store, batch_size=4, poll_s=0.2)
    original_set = filler._set
    filler._set = lambda **f: (states.append(f.get("state")), original_set(**f))
    filler.start()
    try:
        assert wait_for(lambda: store.queued_pairs(1) >= 2)
    finally:
        filler.stop()
    assert "error: disk on fire" in states


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_sampler_runs_versions_in_the_sampling_dtype(loop, monkeypatch, dtype):
    import torch

    monkeypatch.setenv("PREFLOOP_SAMPLING_DTYPE", dtype)
    model, _ = sampler.load_for_sampling(loop, "v0")
    assert next(model.parameters()).dtype == getattr(torch, dtype)
    assert sampler.load_for_sampling(loop, "v0")[0] is model  # cached: one copy per dtype
    pair_ids = sample_pairs(loop, "v0", n_prompts=2, params=FAST, seed=4)
    assert len(pair_ids) == 2
    for pair_id in pair_ids:
        first, second = generations_of(loop, pair_id)
        assert first["completion_tokens"] > 0 and first["text"] != second["text"]


def test_a_share_of_the_queue_is_gate_pairs_on_heldout_prompts(store):
    """Issue 14: every round needs fresh held-out judgments of the active version's own answers."""
    from test_dataset import add_pair

    from prefloop.annotate.sampler import gate_queue_plan

    store.add_version("v0", "base", "nowhere", card={"method": "base"})
    store.set_active_version("v0")
    store.set_setting("queue_target", 20)
    version_id = store.active_version()["id"]
    store.add_prompts([{"text": "a held-out prompt", "split": "heldout"}])
    assert gate_queue_plan(store, version_id, 20) == ("heldout", 3)  # round(20 x 0.15)
    for i in range(3):
        add_pair(store, f"held {i}?", "x", "y", split="heldout")
    assert gate_queue_plan(store, version_id, 20) == ("train", 17)
    for i in range(17):
        add_pair(store, f"train {i}?", "x", "y")
    assert gate_queue_plan(store, version_id, 20) is None
    store.set_setting("gate_share", 0.0)
    assert gate_queue_plan(store, version_id, 23) == ("train", 3)
