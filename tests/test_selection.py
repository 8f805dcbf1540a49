"""Choosing what people judge (issue 15): k candidates per prompt, active pair choice, the random
share, lineage on every queued pair, and the migration that stores it. Tiny random model."""

from __future__ import annotations

import random
import shutil

import pytest

from prefloop.annotate import selection
from prefloop.annotate.sampler import sample_pairs
from prefloop.annotate.selection import Scores, choose, near_identical
from prefloop.engine import generation, heldout, models
from prefloop.engine.engines import TorchEngine
from prefloop.engine.generation import SamplingParams
from prefloop.errors import SamplerError, StoreError

FAST = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=6)


@pytest.fixture
def loop(tiny_v0, monkeypatch):
    """tiny v0 active, eight train prompts, two held-out, short sampling, float32 (so scores
    computed here match the sampler's to float rounding)."""
    monkeypatch.setenv("PREFLOOP_SAMPLING_DTYPE", "float32")
    store = tiny_v0
    store.add_prompts([{"text": f"Train prompt number {i}", "source": "test"} for i in range(8)])
    store.add_prompts([{"text": f"Held-out prompt {i}", "source": "test", "split": "heldout"} for i in range(2)])
    store.set_setting("sampling", FAST.to_dict())
    return store


@pytest.fixture
def spy(monkeypatch):
    """Every TorchEngine.generate call: (conversations, seeds, outputs)."""
    calls = []
    original = TorchEngine.generate

    def generate(self, conversations, params, seeds, batch_size=16):
        outputs = original(self, conversations, params, seeds, batch_size=batch_size)
        calls.append((conversations, seeds, outputs))
        return outputs

    monkeypatch.setattr(TorchEngine, "generate", generate)
    return calls


def make_v1(store):
    """v1: a LoRA with random, non-zero weights on v0, promoted, so v1 and its parent differ."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model, _ = models.load_fresh(store, "v0")
    config = LoraConfig(r=4, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    models.register_adapter_version(store, "v0", peft_model.save_pretrained, {"method": "test"}, status="ready")
    models.promote(store, "v1")


def texts_of(store, pair_id) -> tuple[str, str]:
    pair = store.pair(pair_id)
    return pair["text_a"], pair["text_b"]


def groups(call, k):
    conversations, _, outputs = call
    return [(conversations[i], outputs[i : i + k]) for i in range(0, len(outputs), k)]


# --------------------------------------------------------------------------------------------
# k candidates in one batch
# --------------------------------------------------------------------------------------------
def test_k_candidates_share_one_decode_batch_and_one_prefill_per_prompt(loop, spy, monkeypatch):
    store = loop
    prefills = []
    original = generation.Decoding._prefill

    def prefill(self, input_ids, mask, positions):
        prefills.append(input_ids.shape[0])
        return original(self, input_ids, mask, positions)

    monkeypatch.setattr(generation.Decoding, "_prefill", prefill)
    store.set_setting("selection", "active")
    store.set_setting("random_pair_share", 0.0)
    pair_ids = sample_pairs(store, "v0", n_prompts=4, seed=3)

    assert len(spy) == 1 and len(spy[0][0]) == 16  # 4 prompts x 4 candidates, one generate call
    assert prefills == [4]  # one decode batch; its prefill ran once per distinct prompt, not per row
    assert len(pair_ids) == 4
    assert len({store.pair(p)["prompt_id"] for p in pair_ids}) == 4  # one pair per prompt
    for pair_id in pair_ids:
        lineage = store.pair(pair_id)["selection"]
        assert lineage["method"] == "active" and lineage["k"] == 4
        assert lineage["criterion"] == "dissimilarity"  # v0 has no parent: the fallback
        assert lineage["prompt_criterion"] == "entropy" and lineage["prompt_score"] > 0
        assert not near_identical(*texts_of(store, pair_id))


def test_random_selection_samples_two_as_before_and_records_it(loop, spy):
    store = loop
    pair_ids = sample_pairs(store, "v0", n_prompts=3, seed=5)
    assert len(spy[0][0]) == 6 and len(pair_ids) == 3  # two rows per prompt, slots a and b
    conversations, seeds, outputs = spy[0]
    for pair_id in pair_ids:
        pair = store.pair(pair_id)
        assert pair["selection"] == {"method": "random", "k": 2, "criterion": "uniform", "score": None}
        a, b = store.generation(pair["generation_a_id"]), store.generation(pair["generation_b_id"])
        assert seeds.index(a["seed"]) + 1 == seeds.index(b["seed"])  # a then b of the same prompt
    gate = sample_pairs(store, "v0", n_prompts=2, split="heldout", seed=5, selection="active")
    assert len(spy[1][0]) == 4  # held-out (gate) pairs stay two random answers, and carry no lineage
    assert all(store.pair(p)["selection"] is None for p in gate)


# --------------------------------------------------------------------------------------------
# which pair
# --------------------------------------------------------------------------------------------
def test_active_picks_the_pair_with_the_widest_implicit_reward_margin(loop, spy):
    store = loop
    make_v1(store)
    store.set_setting("selection", "active")
    store.set_setting("random_pair_share", 0.0)
    pair_ids = sample_pairs(store, "v1", n_prompts=6, seed=11)
    assert len(pair_ids) == 6

    # Recompute the criterion here, one answer at a time, from the candidates the sampler drew.
    device = models.default_device()
    policy, tokenizer = models.load_version(store, "v1", device=device, dtype=generation.sampling_dtype(device))
    parent, _ = models.load_version(store, "v0", device=device, dtype=generation.sampling_dtype(device))

    def reward(messages, out):  # teacher-forced under both models, one answer at a time
        prompt_ids = generation.encode_conversation(tokenizer, messages)
        row = [(prompt_ids + out.token_ids, len(prompt_ids))]
        (lp, n), = heldout.encoded_logps(policy, row, tokenizer.pad_token_id)
        (lr, _), = heldout.encoded_logps(parent, row, tokenizer.pad_token_id)
        assert out.logprob == pytest.approx(lp, abs=1e-3)  # the decode's own log-prob is the model's
        return (lp - lr) / max(n, 1)

    stored = {frozenset(texts_of(store, p)): store.pair(p) for p in pair_ids}
    expected_pairs = []
    for messages, outs in groups(spy[0], 4):
        r = [reward(messages, out) for out in outs]
        valid = [(i, j) for i in range(4) for j in range(i + 1, 4) if not near_identical(outs[i].text, outs[j].text)]
        best = max(valid, key=lambda ij: abs(r[ij[0]] - r[ij[1]]))
        expected_pairs.append(best)
        key = frozenset((outs[best[0]].text, outs[best[1]].text))
        assert key in stored, "the queued pair is not the widest-margin pair"
        lineage = stored[key]["selection"]
        assert lineage["method"] == "active" and lineage["criterion"] == "implicit_reward_margin"
        assert lineage["reference"] == "v0"
        assert lineage["score"] == pytest.approx(abs(r[best[0]] - r[best[1]]), abs=1e-4)
    # random selection would queue slots a and b, the pair (0, 1), of every prompt
    assert any(pair != (0, 1) for pair in expected_pairs)


def test_v0_fallback_picks_the_most_dissimilar_pair(loop, spy):
    store = loop
    store.set_setting("selection", "active")
    store.set_setting("random_pair_share", 0.0)
    pair_ids = sample_pairs(store, "v0", n_prompts=4, seed=2)
    stored = {frozenset(texts_of(store, p)) for p in pair_ids}
    for _, outs in groups(spy[0], 4):
        texts = [o.text for o in outs]
        valid = selection.distinct_pairs(texts)
        best = max(valid, key=lambda ij: selection.dissimilarity(texts[ij[0]], texts[ij[1]]))
        assert frozenset((texts[best[0]], texts[best[1]])) in stored


def test_near_identical_pairs_are_never_chosen():
    texts = ["The cat sat.", "the cat  sat.", "Dogs bark loudly at night", "Quantum fields fluctuate"]
    rewards = Scores(rewards=[[5.0, -5.0, 0.0, 0.1]])  # widest margin: 0 vs 1, which are the same text
    [choice] = choose([texts], [random.Random(0)], method="active", scores=rewards, random_share=0.0)
    assert choice.pair == (1, 3)  # the widest margin among distinct pairs (5.1)
    for seed in range(50):  # random pairs too
        for method in ("random", "active"):
            for c in choose([texts], [random.Random(seed)], method=method, random_share=0.5):
                assert c.pair != (0, 1)
    same = ["Yes.", "yes.", " Yes. "]
    assert choose([same], [random.Random(0)], method="active") == []  # nothing worth a judgment


def test_identical_answers_queue_nothing(loop, monkeypatch):
    store = loop

    def same(self, conversations, params, seeds, batch_size=16):
        return [generation.Generated("Same answer.", 5, 3, "stop", 1.0, seed) for seed in seeds]

    monkeypatch.setattr(TorchEngine, "generate", same)
    for method in ("random", "active"):
        assert sample_pairs(store, "v0", n_prompts=4, seed=1, selection=method) == []


# --------------------------------------------------------------------------------------------
# the random share and prompt choice
# --------------------------------------------------------------------------------------------
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november".split()


def synthetic_batches(n_batches, per_batch=8, k=4, seed=0):
    rng = random.Random(seed)
    for b in range(n_batches):
        candidates = [[" ".join(rng.choice(WORDS) for _ in range(5)) for _ in range(k)] for _ in range(per_batch)]
        entropy = [rng.random() for _ in range(per_batch)]
        rngs = [random.Random(f"{seed}:{b}:{p}") for p in range(per_batch)]
        yield candidates, Scores(entropy=entropy), rngs


@pytest.mark.parametrize("prompt_share", [1.0, 0.5])
def test_the_random_share_of_queued_pairs_is_honoured(prompt_share):
    chosen = []
    prompts = 0
    for candidates, scores, rngs in synthetic_batches(250):  # 2000 prompts, seeded
        prompts += len(candidates)
        chosen += choose(candidates, rngs, method="active", scores=scores, random_share=0.25,
                         prompt_share=prompt_share)
    share = sum(c.lineage["method"] == "random" for c in chosen) / len(chosen)
    assert share == pytest.approx(0.25, abs=0.03)
    expected = selection.random_probability(0.25, prompt_share)
    assert len(chosen) / prompts == pytest.approx(expected + (1 - expected) * prompt_share, abs=0.04)


def test_prompt_choice_keeps_the_most_uncertain_prompts():
    candidates = [[f"{w} one", f"{w} two three four", f"{w} five six", f"{w} seven"] for w in WORDS[:8]]
    entropy = [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6]
    rngs = [random.Random(p) for p in range(8)]
    chosen = choose(candidates, rngs, method="active", scores=Scores(entropy=entropy), random_share=0.0,
                    prompt_share=0.5)
    assert [c.prompt_index for c in chosen] == [1, 3, 5, 7]


# --------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------
def test_selection_settings_are_checked(store):
    from prefloop.errors import SettingError
    from prefloop.service.settings import parse_setting

    assert store.get_setting("selection") == "random"  # until a measurement says otherwise
    assert store.get_setting("candidates_per_prompt") == 4
    assert store.get_setting("random_pair_share") == 0.25
    for key, value in [("candidates_per_prompt", 1), ("candidates_per_prompt", 17), ("candidates_per_prompt", 4.0),
                       ("selection", "greedy"), ("selection", 1), ("random_pair_share", 1.5),
                       ("random_pair_share", -0.1), ("active_prompt_share", 0.0), ("active_prompt_share", 2)]:
        with pytest.raises(StoreError):
            store.set_setting(key, value)
    with pytest.raises(SettingError):
        parse_setting(store, "selection", "best")
    assert parse_setting(store, "selection", "active") == "active"
    store.set_setting("candidates_per_prompt", 16)
    assert store.get_setting("candidates_per_prompt") == 16


def test_sample_pairs_refuses_an_unknown_selection(loop):
    with pytest.raises(SamplerError, match="selection must be one of"):
        sample_pairs(loop, "v0", n_prompts=1, selection="best")
    with pytest.raises(SamplerError, match="candidates per prompt"):
        sample_pairs(loop, "v0", n_prompts=1, selection="active", candidates=17)


# --------------------------------------------------------------------------------------------
# lineage in the store, export and import
# --------------------------------------------------------------------------------------------
def test_a_home_made_before_m006_migrates_and_keeps_its_pairs(home, tmp_path):
    import sqlite_utils

    from prefloop.db.migrations import migrations
    from prefloop.db.rows import insert_generation
    from prefloop.db.store import Store

    old = tmp_path / "old.db"
    db = sqlite_utils.Database(old)
    migrations.apply(db, stop_before="m006_pair_selection")
    assert "selection" not in db["pairs"].columns_dict
    db.execute("insert into prompts (text, source, split, content_hash, created_at) values ('Hi', 't', 'train', 'h', 'now')")
    db.execute("insert into model_versions (name, kind, path, status, card, created_at) "
               "values ('v0', 'base', '', 'ready', '{}', 'now')")
    ids = [insert_generation(db, {"prompt_id": 1, "version_id": 1, "text": t, "seed": s}) for s, t in ((1, "A"), (2, "B"))]
    db.execute("insert into pairs (prompt_id, generation_a_id, generation_b_id, purpose, judgments_wanted, "
               "judgments_count, status, created_at) values (1, ?, ?, 'train', 1, 0, 'open', 'now')", ids)
    db.conn.commit()
    db.close()
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(old, home / "prefloop.db")

    store = Store()
    assert store.table_columns("pairs")["selection"] is str
    assert store.scalar("select count(*) from _sqlite_migrations") == len(migrations._migrations)  # m006 and later
    assert store.pair(1)["selection"] is None and store.pair(1)["text_a"] == "A"
    lineage = {"method": "active", "k": 4, "criterion": "implicit_reward_margin", "score": 0.5}
    pair_id = store.add_pair(1, ids[0], ids[1], selection=lineage)
    assert store.pair(pair_id)["selection"] == lineage


def test_judgment_export_and_import_carry_the_lineage(loop, tmp_path):
    from prefloop.annotate import transfer
    from prefloop.db.store import Store

    store = loop
    store.set_setting("selection", "active")
    store.set_setting("random_pair_share", 0.0)
    [pair_id] = sample_pairs(store, "v0", n_prompts=1, seed=4)
    annotator = store.add_annotator("ana", "annotator", "x")
    pair = store.pair(pair_id)
    store.assign_pair(annotator, pair_id, pair["generation_a_id"])
    store.record_judgment(annotator, pair_id, "a")

    [record] = transfer.judgment_records(store)
    assert record["pair"]["selection"] == pair["selection"] and record["pair"]["selection"]["method"] == "active"
    transfer.check_record(record)
    bad = {**record, "pair": {**record["pair"], "selection": {"method": "clever"}}}
    with pytest.raises(Exception, match="pair.selection.method"):
        transfer.check_record(bad)
    old = {**record, "pair": {k: v for k, v in record["pair"].items() if k != "selection"}}
    transfer.check_record(old)  # files written before issue 15 still import

    other = Store(tmp_path / "other.db")
    other.import_judgment_records([record])
    assert other.scalar("select selection from pairs") is not None
    assert other.pair(1)["selection"] == pair["selection"]


def test_random_draws_are_not_scored(loop, monkeypatch):
    """The parent pass is the one cost active selection adds; prompts drawn for a random pair skip it."""
    store = loop
    make_v1(store)
    store.set_setting("selection", "active")
    store.set_setting("random_pair_share", 1.0)

    def no_pass(*args, **kwargs):
        raise AssertionError("a random draw was scored")

    monkeypatch.setattr(selection, "implicit_rewards", no_pass)
    pair_ids = sample_pairs(store, "v1", n_prompts=4, seed=8)
    assert pair_ids and all(store.pair(p)["selection"]["method"] == "random" for p in pair_ids)
    assert all(store.pair(p)["selection"]["k"] == 4 for p in pair_ids)
