"""Simulated judges, loading them, and the unattended loop end to end on the tiny model."""

from __future__ import annotations

import json
import random

import pytest
from training_checks import assert_unchanged, base_state, learned

from prefloop.errors import JudgeError, PrefloopError
from prefloop.evaluate import judges
from prefloop.train.config import RoundConfig
from tests.sim_judges import always_tie, decisive

LIST = "Here you go:\n- first\n- second\n- third"
PROSE = "Here you go: first, then second, and third, all in one sentence for you."


def test_concise_prefers_shorter_with_a_tie_margin():
    assert judges.concise("q", "short", "a much, much longer answer") == "a"
    assert judges.concise("q", "a much, much longer answer", "short") == "b"
    assert judges.concise("q", "twelve chars", "thirteen char") == "tie"
    assert judges.concise("q", "", "anything") == "b"  # empty is missing, not concise
    assert judges.concise("q", " ", "") == "both_bad"


def test_verbose_listy_polite():
    assert judges.verbose("q", "short", "a much, much longer answer") == "b"
    assert judges.listy("q", PROSE, LIST) == "b"
    assert judges.listy("q", LIST, LIST) == "tie"
    assert judges.has_list("1. one\n2. two") and not judges.has_list("- only one")
    assert judges.polite("q", "Thank you for asking! Happy to help.", "Fine.") == "a"


def test_plain_and_personal_are_not_length_tastes():
    # plain: shorter words win, whatever the answers' lengths
    assert judges.plain("q", "It is a big red dog and it can run far.", "Magnificent") == "a"
    assert judges.plain("q", "Extraordinary circumstances necessitate", "The cat sat on the mat all day long") == "b"
    assert judges.plain("q", "one two six", "ten big dog") == "tie"
    assert judges.plain("q", "", "words") == "b" and judges.plain("q", "...", "!") == "both_bad"
    # personal: more reader words per 100 wins; the longer answer may win or lose
    assert judges.personal("q", "The method works.", "You can do it your way, and you will see.") == "b"
    assert judges.personal("q", "You should try it.", "You should try it and then also look at the rest of it.") == "a"
    assert judges.personal("q", "Cats purr.", "Dogs bark loudly.") == "tie"


def test_noisy_flips_about_the_right_share():
    rng = random.Random(0)
    judge = judges.noisy(judges.concise, 0.3, rng)
    votes = [judge("q", "short", "a much, much longer answer") for _ in range(4000)]
    changed = sum(v != "a" for v in votes) / len(votes)
    assert changed == pytest.approx(0.3 * 3 / 4, abs=0.03)  # a random pick is "a" 1/4 of the time
    assert judges.noisy(judges.concise, 0.0)("q", "x", "a much longer one") == "a"
    with pytest.raises(JudgeError, match="between 0 and 1"):
        judges.noisy(judges.concise, 1.5)


def test_load_judge():
    assert judges.load_judge("prefloop.evaluate.judges:concise") is judges.concise
    for spec, message in [("concise", "module:function"), ("no_such_module_xyz:f", "cannot import"),
                          ("prefloop.evaluate.judges:missing", "has no"), ("prefloop.evaluate.judges:TIE_MARGIN_CHARS", "not callable"),
                          (":concise", "module:function")]:
        with pytest.raises(JudgeError, match=message):
            judges.load_judge(spec)


def test_checked_choice_rejects_bad_answers():
    with pytest.raises(JudgeError, match="must return one of"):
        judges.checked_choice(lambda p, a, b: "left", "q", "a", "b")


def _prompts(store, train: int, heldout: int) -> None:
    store.add_prompts(
        [{"text": f"Tell me something about topic {i}.", "split": "train"} for i in range(train)]
        + [{"text": f"Explain idea number {i}.", "split": "heldout"} for i in range(heldout)]
    )


def test_simulation_refuses_without_a_model_or_prompts(store):
    from prefloop.evaluate.simulate import SimulationConfig, run_simulation

    with pytest.raises(PrefloopError, match="prefloop init"):
        run_simulation(store, SimulationConfig(rounds=1), progress=False)
    with pytest.raises(PrefloopError, match="rounds must be"):
        SimulationConfig(rounds=0).validate()


def test_simulated_loop_end_to_end_on_tiny_model(tiny_v0):
    pytest.importorskip("prefloop.annotate.sampler", reason="annotate/sampler.py not written yet")
    pytest.importorskip("prefloop.train.rounds", reason="train/rounds.py not written yet")
    from prefloop.evaluate.simulate import SimulationConfig, run_simulation

    store = tiny_v0
    _prompts(store, train=10, heldout=6)
    config = SimulationConfig(
        rounds=2, pairs_per_round=8, eval_prompts=6, max_new_tokens=12, epochs=1.0,
        learning_rate=1e-3, seed=3, bootstrap=200, precision="fp32", force_promote=True, heldout_pairs=4,
    )
    before = base_state(store)
    result = run_simulation(store, config, judge=decisive, progress=False, log=lambda m: None)
    assert result["stopped"] is None
    assert [r["version"] for r in result["rounds"]] == ["v1", "v2"]
    for r in result["rounds"]:
        assert 0.0 <= r["ci_low"] <= r["win_rate_vs_v0"] <= r["ci_high"] <= 1.0
        assert r["pairs"] > 0 and r["battles"] == 6 and r["seconds"] > 0
        assert r["mean_words"] is not None
        # too few held-out judgments for a verdict: the gate waits, --force-promote promotes anyway
        assert r["gate"]["decision"] == "wait" and r["gate"]["promoted"] is False and r["forced"] is True
        assert set(r["gate"]) >= {"promoted", "reason", "rows", "accuracy", "lower_bound", "guards"}
        assert r["heldout_pairs"] == 4 and r["cutoff_rate"] == 1.0  # a random tiny model never stops
        assert learned(store, r["version"])  # trainable parameters moved off their init
    assert result["v0"]["cutoff_rate"] == 1.0
    assert_unchanged(before, base_state(store))  # base weights did not move
    assert store.active_version()["name"] == "v2"
    # lineage is real: every vote belongs to the simulated annotator and names its pair
    voter = store.annotator_by_name("sim-decisive")
    judgments = store.judgments()
    assert judgments and {j["annotator_id"] for j in judgments} == {voter["id"]}
    arena_votes = [j for j in judgments if j["purpose"] == "arena"]
    assert len(arena_votes) == 12 and all({j["version_a"], j["version_b"]} & {"v0"} for j in arena_votes)
    rounds = store.list_rounds()
    assert len(rounds) == 2 and all(r["status"] in ("promoted", "trained") for r in rounds)
    assert {r["config"]["precision"] for r in rounds} == {"fp32"}
    assert {r["config"]["nll_weight"] for r in rounds} == {RoundConfig().nll_weight}  # production's default
    assert all(r["metrics"]["steps"] >= 1 and r["metrics"]["final"].get("learning_rate", 1) > 0 for r in rounds)
    assert [store.version(r["new_version_id"])["name"] for r in rounds] == ["v1", "v2"]
    assert store.version("v2")["parent_id"] == store.version("v1")["id"]


def test_simulation_runs_the_gate_like_production(tiny_v0):
    """Without --force-promote a candidate the gate does not pass leaves its parent active, and the
    next round trains the parent again, on new judgments only."""
    from prefloop.evaluate.simulate import SimulationConfig, run_simulation

    store = tiny_v0
    _prompts(store, train=10, heldout=6)
    config = SimulationConfig(rounds=2, pairs_per_round=4, eval_prompts=0, max_new_tokens=8, learning_rate=1e-3,
                              seed=5, heldout_pairs=3)
    result = run_simulation(store, config, judge=decisive, progress=False, log=lambda m: None)
    assert [r["gate"]["decision"] for r in result["rounds"]] == ["wait", "wait"]  # 3-6 rows < 30
    assert [r["parent"] for r in result["rounds"]] == ["v0", "v0"] and result["active"] == "v0"
    assert result["promoted"] == [] and store.active_version()["name"] == "v0"
    assert result["rounds"][1]["gate"]["rows"] > result["rounds"][0]["gate"]["rows"]  # held-out evidence accumulates
    windows = [set(store.round_pair_ids(r["id"])) for r in store.list_rounds()]
    assert windows[0] and windows[1] and not windows[0] & windows[1]  # each pair learned once


def test_a_verbose_judges_round_is_stopped_by_the_length_guard(store, ending_model_dir):
    """Issue 14: a round trained by a judge that prefers longer answers agrees with its judge on
    held-out pairs (so agreement alone would promote it), but its answers grew past the length
    guard (candidate / parent mean tokens above gate_max_length_ratio, 1.3), and that alone
    rejects it. Production's gate, production's path: sample, judge, train, gate."""
    from prefloop.engine.models import create_base_version
    from prefloop.evaluate.simulate import SimulationConfig, run_simulation

    create_base_version(store, base_model=str(ending_model_dir))
    store.add_prompts([{"text": f"Tell me something about topic {i}.", "split": "train"} for i in range(24)]
                      + [{"text": f"Explain idea number {i}.", "split": "heldout"} for i in range(56)])
    before = base_state(store)
    config = SimulationConfig(rounds=1, pairs_per_round=24, heldout_pairs=56, eval_prompts=0, max_new_tokens=40,
                              learning_rate=2e-3, epochs=2.0, precision="fp32", seed=1)
    result = run_simulation(store, config, judge=judges.verbose, progress=False, log=lambda m: None)
    gate = result["rounds"][0]["gate"]
    assert gate["rows"] >= 30 and gate["lower_bound"] > 0.5, gate  # it learned its judge's taste
    guards = gate["guards"]
    assert guards["length_ratio"]["value"] > 1.3 and not guards["length_ratio"]["ok"], guards
    assert guards["length_ratio"]["candidate"] > guards["length_ratio"]["parent"]
    assert guards["kl"]["ok"] and guards["chosen_logp_drop"]["ok"], guards  # the length guard alone stops it
    assert gate["decision"] == "reject" and "length ratio" in gate["reason"], gate
    assert store.active_version()["name"] == "v0" and store.require_version("v1")["status"] == "rejected"
    assert learned(store, "v1")
    assert_unchanged(before, base_state(store))


def test_simulation_with_all_judgments_trains_round_two_on_round_ones_pairs_too(tiny_v0):
    """`simulate --all-judgments` (issue 15's "use every vote", to be measured against the
    default): round 2's window holds round 1's pairs as well as its own, and the run records it."""
    from prefloop.evaluate.simulate import SimulationConfig, run_simulation

    store = tiny_v0
    _prompts(store, train=10, heldout=4)
    config = SimulationConfig(rounds=2, pairs_per_round=4, eval_prompts=0, max_new_tokens=8, learning_rate=1e-3,
                              seed=6, heldout_pairs=2, all_judgments=True)
    result = run_simulation(store, config, judge=decisive, progress=False, log=lambda m: None)
    assert result["round_config"]["all_judgments"] is True and len(result["rounds"]) == 2
    first, second = (set(store.round_pair_ids(r["id"])) for r in store.list_rounds())
    assert first and first < second  # round 2 learns round 1's pairs again, and new ones
    assert result["rounds"][1]["dataset_size"] > result["rounds"][0]["dataset_size"]


def test_simulation_stops_cleanly_when_the_judge_prefers_nothing(tiny_v0):
    """A round whose votes are all ties trains nothing; the rounds already run are kept."""
    from prefloop.evaluate.simulate import SimulationConfig, run_simulation

    store = tiny_v0
    _prompts(store, train=4, heldout=0)
    calls = []

    def tired(prompt, a, b):  # decisive for round 1's four pairs, then only ties
        calls.append(1)
        return decisive(prompt, a, b) if len(calls) <= 4 else "tie"

    config = SimulationConfig(rounds=3, pairs_per_round=4, eval_prompts=0, max_new_tokens=6, seed=1,
                              force_promote=True, heldout_pairs=0)
    messages = []
    result = run_simulation(store, config, judge=tired, progress=False, log=messages.append)
    assert [r["version"] for r in result["rounds"]] == ["v1"]
    assert result["stopped"].startswith("stopped before round 2: the judge preferred neither answer in any of the 4 pairs sampled from v1 (4 ties")
    assert result["stopped"].endswith("1 of 3 rounds ran") and messages[-1] == result["stopped"]
    assert store.active_version()["name"] == "v1" and len(store.list_rounds()) == 1
    assert [j["choice"] for j in store.judgments()][-4:] == ["tie"] * 4  # the votes are still recorded

    result = run_simulation(store, SimulationConfig(rounds=1, pairs_per_round=4, eval_prompts=0, max_new_tokens=6,
                                                    heldout_pairs=0),
                            judge=always_tie, progress=False, log=lambda m: None)
    assert result["rounds"] == [] and "0 of 1 rounds ran" in result["stopped"]
    assert store.active_version()["name"] == "v1" and len(store.list_rounds()) == 1


@pytest.mark.parametrize("method", ["kto", "sft", "sft-dpo"])
def test_simulation_runs_kto_and_sft_methods(tiny_v0, method, monkeypatch):
    """`prefloop simulate --method kto|sft|sft-dpo`: pairwise votes become the method's rows (sft: the
    winners with a vote margin of 1, since a simulated judge writes nothing) and a gated version."""
    from prefloop.evaluate.simulate import SimulationConfig, run_simulation
    from prefloop.train import examples

    # The random tiny model never stops, so every answer is cut off, and SFT imitates no cut-off
    # winner: here they count as finished (the bundled model's answers mostly are).
    monkeypatch.setattr(examples, "is_cut_off", lambda reason: False)
    store = tiny_v0
    _prompts(store, train=6, heldout=3)
    config = SimulationConfig(rounds=1, pairs_per_round=4, eval_prompts=0, max_new_tokens=6, learning_rate=1e-3,
                              seed=2, heldout_pairs=2, method=method, epochs=1.0)
    result = run_simulation(store, config, judge=decisive, progress=False, log=lambda m: None)
    [done] = result["rounds"]
    assert done["version"] == "v1" and done["gate"]["decision"] == "wait" and learned(store, "v1")
    assert store.list_rounds()[0]["method"] == method and done["dataset_size"] > 0
    assert (done["kto_class_weights"] is not None) is (method == "kto")
    assert result["round_config"].get("sft_chosen_margin") == (0 if method == "kto" else 1)
    with pytest.raises(PrefloopError, match="sft_chosen_margin must be at least 1 in a simulation"):
        SimulationConfig(method="sft", sft_chosen_margin=0).validate()


def test_simulation_with_active_selection_queues_chosen_pairs(tiny_v0):
    """`prefloop simulate --selection active`: train pairs are chosen from k candidates (v0 has no
    parent: the most dissimilar pair) and say so in their lineage; gate pairs stay random."""
    from prefloop.evaluate.simulate import SimulationConfig, run_simulation

    store = tiny_v0
    _prompts(store, train=6, heldout=3)
    config = SimulationConfig(rounds=1, pairs_per_round=4, eval_prompts=0, max_new_tokens=6, learning_rate=1e-3,
                              seed=2, heldout_pairs=2, epochs=1.0, selection="active", candidates=3)
    result = run_simulation(store, config, judge=decisive, progress=False, log=lambda m: None)
    assert result["selection"] == "active" and len(result["rounds"]) == 1
    rows = store.rows("select x.selection, p.split from pairs x join prompts p on p.id = x.prompt_id "
                      "where x.purpose = 'train'")
    train = [json.loads(r["selection"]) for r in rows if r["split"] == "train"]
    gate = [json.loads(r["selection"]) if r["selection"] else {"method": "random"} for r in rows if r["split"] == "heldout"]
    assert train and all(s["k"] == 3 for s in train if s["method"] == "active")
    assert any(s["method"] == "active" for s in train)
    assert gate and all(s["method"] == "random" for s in gate)
    with pytest.raises(PrefloopError, match="selection must be one of"):
        SimulationConfig(selection="clever").validate()


def test_a_run_cut_short_keeps_its_finished_rounds(tiny_v0, tmp_path):
    """`simulate --partial-json`: the file is rewritten after every round, so a run that dies in
    round 2 (here its judge fails) still leaves round 1, marked unfinished."""
    from prefloop.evaluate.simulate import SimulationConfig, partial_writer, run_simulation

    store = tiny_v0
    _prompts(store, train=6, heldout=2)
    calls = {"n": 0}

    def judge_that_breaks(prompt, a, b):
        calls["n"] += 1
        if calls["n"] > 6:  # round 1's 6 train pairs are judged; round 2's first vote fails
            raise RuntimeError("the judge's service went away")
        return decisive(prompt, a, b)

    path = tmp_path / "partial.json"
    config = SimulationConfig(rounds=2, pairs_per_round=6, heldout_pairs=0, eval_prompts=0, max_new_tokens=6,
                              epochs=1.0, precision="fp32", seed=1)
    with pytest.raises(RuntimeError, match="went away"):
        run_simulation(store, config, judge=judge_that_breaks, progress=False, log=lambda m: None,
                       on_round=partial_writer(path))
    kept = json.loads(path.read_text())
    assert kept["finished"] is False and [r["round"] for r in kept["rounds"]] == [1]
    assert kept["rounds"][0]["version"] == "v1" and kept["seed"] == 1
    assert not path.with_name(path.name + ".tmp").exists()


def _adapter(store, name: str) -> dict:
    from safetensors.torch import load_file

    from prefloop.engine import models

    return load_file(str(models.version_path(store.version(name)) / "adapter_model.safetensors"))


def test_a_resumed_run_goes_on_as_if_it_was_never_cut(tiny_v0, tiny_model_dir, tmp_path, monkeypatch):
    """A run killed after round 2 trained (its battles fail) resumes from round 1's checkpoint: the
    half round's pairs, votes, round and version folder are discarded, and the resumed round 2 is
    the round an uninterrupted run of the same seed runs, down to the trained weights. Resuming
    with other options is refused and changes nothing."""
    import torch

    from prefloop.db.store import Store
    from prefloop.engine import models
    from prefloop.evaluate import checkpoint
    from prefloop.evaluate.simulate import SimulationConfig, partial_writer, run_options, run_simulation

    config = SimulationConfig(rounds=2, pairs_per_round=6, heldout_pairs=2, eval_prompts=2, max_new_tokens=6,
                              epochs=1.0, learning_rate=1e-3, precision="fp32", seed=1, bootstrap=50,
                              force_promote=True)
    quiet = {"progress": False, "log": lambda m: None}
    _prompts(tiny_v0, train=6, heldout=2)
    whole = run_simulation(tiny_v0, config, judge=decisive, **quiet)

    monkeypatch.setenv("PREFLOOP_HOME", str(tmp_path / "cut"))
    models.clear_cache()
    store = Store()
    models.create_base_version(store, base_model=str(tiny_model_dir))
    _prompts(store, train=6, heldout=2)
    calls = {"n": 0}

    def judge_that_breaks(prompt, a, b):
        calls["n"] += 1
        if calls["n"] > 10 + 8:  # round 1: 6 + 2 gate + 2 battles; round 2 trains, then its battles fail
            raise RuntimeError("killed")
        return decisive(prompt, a, b)

    partial = tmp_path / "partial.json"
    with pytest.raises(RuntimeError, match="killed"):
        run_simulation(store, config, judge=judge_that_breaks, on_round=partial_writer(partial), **quiet)
    assert store.version("v2") is not None and len(store.list_rounds()) == 2  # round 2 had trained
    half_round = len(store.judgments())
    database = store.path
    store.close()
    assert checkpoint.checkpoint_path(database).stat().st_mode & 0o777 == 0o600  # it holds password hashes

    with pytest.raises(PrefloopError, match="seed"):
        checkpoint.restore(database, {**run_options(config), "seed": 2})
    store = Store()
    assert store.version("v2") is not None  # the refused resume changed nothing
    store.close()

    so_far = checkpoint.restore(database, run_options(config))
    assert [r["round"] for r in so_far["rounds"]] == [1]
    store = Store()
    assert store.version("v2") is None and len(store.list_rounds()) == 1
    assert not (models.models_dir() / "v2").exists() and not (tmp_path / "cut" / "rounds" / "2").exists()
    assert len(store.judgments()) < half_round
    resumed = run_simulation(store, config, judge=decisive, resume=so_far, on_round=partial_writer(partial), **quiet)

    assert [r["round"] for r in resumed["rounds"]] == [1, 2] and resumed["finished"] is True
    assert json.loads(partial.read_text())["rounds"][1]["version"] == "v2"
    for mine, theirs in zip(resumed["rounds"], whole["rounds"]):
        for key in ("version", "parent", "votes", "heldout_votes", "dataset_size", "wins", "losses", "ties"):
            assert mine[key] == theirs[key], key
    texts = "select version_id, text from generations order by version_id, text"
    assert store.rows(texts) == tiny_v0.rows(texts)
    mine, theirs = _adapter(store, "v2"), _adapter(tiny_v0, "v2")
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert any(v.abs().sum() > 0 for k, v in mine.items() if "lora_B" in k)  # round 2 learned something
