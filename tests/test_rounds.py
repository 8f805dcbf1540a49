"""Training rounds on a tiny random model: DPO, ORPO, gates, crashes, a killed child, accuracy."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest
import torch
from safetensors.torch import load_file
from test_dataset import add_judged_pairs
from training_checks import assert_unchanged, base_state, learned, trainer_spy

from prefloop.errors import ConfigError, PrefloopError
from prefloop.train import recipe

FAST = dict(max_steps=3, batch_size=2, gradient_accumulation=1, max_length=96, max_prompt_length=64, lora_rank=4, lora_alpha=8, learning_rate=1e-3)


def fast_config(**overrides):
    from prefloop.train.config import RoundConfig

    return RoundConfig(**{**FAST, "min_new_pairs": 1, **overrides})


def ready_store(store, n=6, heldout=2):
    store.set_setting("min_new_pairs", 4)
    add_judged_pairs(store, n)
    if heldout:
        add_judged_pairs(store, heldout, split="heldout", tag="h")
    return store


def new_round(store, **overrides) -> int:
    from prefloop.train.rounds import create_round

    return create_round(store, fast_config(**overrides))


def state_of(store):
    return store.active_version()["name"], [v["name"] for v in store.list_versions()]


def base_weights(store, name="v0"):
    from prefloop.engine import models

    model, _ = models.load_version(store, name)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_round_trains_an_adapter(tiny_v0, method):
    from prefloop.engine import models
    from prefloop.train.rounds import run_round

    store = ready_store(tiny_v0)
    before = base_weights(store)
    round_id = new_round(store, method=method)
    summary = run_round(store, round_id)

    done = store.round(round_id)
    assert done["status"] in ("promoted", "trained") and done["progress"] == 1.0
    assert done["dataset_size"] == 6 and len(done["dataset_hash"]) == 64
    version = store.require_version(done["new_version_id"])
    assert version["name"] == summary["version"] == "v1"
    card = version["card"]
    assert card["parent"] == "v0" and card["method"] == method
    assert card["dataset_hash"] == done["dataset_hash"] and card["dataset_size"] == 6
    assert card["judgment_id_range"] == [1, 6]
    # adapter weights moved off their init (LoRA B starts at zero)
    adapter = load_file(str(models.version_path(version) / "adapter_model.safetensors"))
    lora_b = [t for k, t in adapter.items() if "lora_B" in k]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)
    # the parent (shared cached model) did not change
    after = base_weights(store)
    assert all(torch.equal(before[k], after[k]) for k in before)
    names = {m["name"] for m in store.round_metrics(round_id)}
    assert {"loss", "rewards/margins", "rewards/accuracies"} <= names
    assert (models.prefloop_home() / "rounds" / str(round_id) / "dataset.jsonl").exists()
    assert done["metrics"]["heldout_rows"] == 2 and 0 <= done["metrics"]["heldout_accuracy"] <= 1
    if method == "dpo":
        assert {"logps/chosen", "logps/rejected"} <= names


def test_gate_waits_on_thin_evidence_and_decides_on_enough(tiny_v0):
    from prefloop.train.rounds import run_round

    store = ready_store(tiny_v0)  # 2 held-out judgments of v0's own answers
    round_id = new_round(store)
    run_round(store, round_id)
    done = store.round(round_id)
    verdict = done["metrics"]["gate"]
    assert verdict["decision"] == "wait" and verdict["rows"] == 2 and not verdict["promoted"]
    assert "2 held-out judgments" in verdict["reason"] and "30 needed" in verdict["reason"]
    assert done["status"] == "trained" and store.active_version()["name"] == "v0"
    assert store.require_version("v1")["status"] == "candidate"
    assert store.require_version("v1")["card"]["metrics"]["gate"]["decision"] == "wait"  # on the version card
    assert verdict["verdict"].startswith("wait: too little evidence") and "rows 2" in verdict["verdict"]

    store.set_setting("gate_min_rows", 2)  # enough now: a verdict, with every number behind it
    second = new_round(store, all_judgments=True)
    run_round(store, second)
    done = store.round(second)
    verdict = done["metrics"]["gate"]
    assert verdict["decision"] in ("promote", "reject") and verdict["rows"] == 2
    assert set(verdict["guards"]) == {"length_ratio", "chosen_logp_drop", "kl", "cutoff_increase"}
    assert verdict["guards"]["length_ratio"]["candidate"] > 0 and verdict["guards"]["kl"]["value"] is not None
    assert verdict["guards"]["cutoff_increase"]["value"] is not None  # measured on the real round's samples
    assert 0 <= verdict["lower_bound"] <= verdict["accuracy"] <= 1
    expected = {"promote": ("promoted", "v2"), "reject": ("rejected", "v0")}[verdict["decision"]]
    assert (done["status"], store.active_version()["name"]) == expected


def test_no_heldout_judgments_wait_and_the_next_round_learns_only_new_pairs(tiny_v0):
    from prefloop.engine import models
    from prefloop.train.rounds import run_round

    store = ready_store(tiny_v0, heldout=0)
    round_id = new_round(store)
    run_round(store, round_id)
    done = store.round(round_id)
    assert done["metrics"]["gate"]["rows"] == 0 and done["metrics"]["gate"]["decision"] == "wait"
    assert done["status"] == "trained" and store.active_version()["name"] == "v0"
    models.promote(store, "v1")  # a maintainer's call
    add_judged_pairs(store, 2, tag="more")
    second = new_round(store)
    run_round(store, second)
    assert store.round(second)["dataset_size"] == 2  # v1's own data was learned once, by round 1
    assert store.require_version("v2")["card"]["parent"] == "v1"


def test_refusals_change_nothing(tiny_v0):
    from prefloop.train.config import RoundConfig
    from prefloop.train.rounds import create_round

    store = tiny_v0
    with pytest.raises(PrefloopError, match="no new preference rows"):
        create_round(store, RoundConfig())
    store.set_setting("min_new_pairs", 10)
    add_judged_pairs(store, 3)
    with pytest.raises(PrefloopError, match=r"need 7 more pairs \(have 3 of 10\)"):
        create_round(store, RoundConfig())
    with pytest.raises(PrefloopError, match="learning_rate must be in"):
        create_round(store, RoundConfig(learning_rate=5.0))
    with pytest.raises(PrefloopError, match="method must be one of"):
        create_round(store, RoundConfig(method="ppo"))
    with pytest.raises(PrefloopError, match="full fine-tuning is not supported"):
        create_round(store, RoundConfig(full_finetune=True))
    assert store.list_rounds() == [] and state_of(store) == ("v0", ["v0"])


def test_crash_marks_failed_and_next_round_works(tiny_v0, monkeypatch):
    import trl

    from prefloop.train.rounds import run_round

    store = ready_store(tiny_v0)

    def boom(self, *args, **kwargs):
        raise RuntimeError("simulated trainer crash")

    round_id = new_round(store)
    with monkeypatch.context() as patch:  # undo only this, not the home fixture's env
        patch.setattr(trl.DPOTrainer, "train", boom)
        with pytest.raises(PrefloopError, match="simulated trainer crash"):
            run_round(store, round_id)
    failed = store.round(round_id)
    assert failed["status"] == "failed" and "RuntimeError: simulated trainer crash" in failed["error"]
    assert state_of(store) == ("v0", ["v0"])
    with pytest.raises(PrefloopError, match="not pending"):
        run_round(store, round_id)
    result = run_round(store, new_round(store))
    assert result["version"] == "v1"


def test_sigkill_child_is_reaped(tiny_v0):
    """A real child process, killed mid-round: failed, nothing listed, the next round works."""
    from prefloop.train.rounds import (
        reap_dead_rounds,
        run_round,
        start_round,
        wait_round,
    )

    store = ready_store(tiny_v0)
    round_id = start_round(store, fast_config(max_steps=400))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        current = store.round(round_id)
        if current["status"] == "running" and current["progress"] > 0.05:
            break
        assert current["status"] in ("pending", "running"), current
        time.sleep(0.2)
    else:
        pytest.fail(f"the child never reported progress: {store.round(round_id)}")
    os.killpg(current["pid"], signal.SIGKILL)
    final = wait_round(store, round_id, timeout=30, poll_s=0.2)
    assert final["status"] == "failed" and final["error"] == "the training process died (killed or crashed)"
    assert reap_dead_rounds(store) == []
    assert state_of(store) == ("v0", ["v0"])
    assert store.integrity_check() == "ok"
    result = run_round(store, new_round(store))
    assert result["version"] == "v1"


def test_child_process_round_finishes(tiny_v0):
    from prefloop.train.rounds import start_round, wait_round

    store = ready_store(tiny_v0)
    round_id = start_round(store, fast_config())
    seen = []
    final = wait_round(store, round_id, timeout=150, poll_s=0.5, on_progress=lambda r: seen.append(r["progress"]))
    assert final["status"] in ("promoted", "trained"), final
    assert final["new_version_id"] and seen[-1] == 1.0
    assert learned(store, store.require_version(final["new_version_id"])["name"])
    # the child stores the round's status first and prints its result line after: under load the
    # line can reach the log a moment after wait_round returns (a CI run read the log too early)
    log = store.path.parent / "rounds" / str(round_id) / "log.txt"
    deadline = time.monotonic() + 60
    while '"round_id"' not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert '"round_id"' in log.read_text()


def test_one_round_at_a_time(tiny_v0):
    from prefloop.train.rounds import create_round

    store = ready_store(tiny_v0)
    new_round(store)
    with pytest.raises(PrefloopError, match="still pending"):
        create_round(store, fast_config())


def test_auto_train_starts_after_enough_judgments(tiny_v0, monkeypatch):
    from prefloop.service import scheduler

    store = ready_store(tiny_v0, heldout=0)
    started = []
    monkeypatch.setattr(scheduler, "start_round", lambda s, c: started.append(c) or 99)
    assert scheduler.maybe_auto_train(store) is None  # off by default
    store.set_setting("auto_train_every", 5)
    assert scheduler.maybe_auto_train(store) == 99
    store.set_setting("auto_train_every", 50)
    assert scheduler.maybe_auto_train(store) is None


def test_accelerate_env_does_not_break_the_entry_point(tiny_v0, monkeypatch, capsys):
    """`accelerate launch -m prefloop.train --round ID` sets these on a single CPU process."""
    from prefloop.train.__main__ import main, make_parser

    store = ready_store(tiny_v0, heldout=0)
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "ACCELERATE_MIXED_PRECISION": "no",
                       "ACCELERATE_USE_CPU": "true", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517"}.items():
        monkeypatch.setenv(key, value)
    assert make_parser().parse_args(["--round", "3"]).round_id == 3
    round_id = new_round(store)
    before = base_state(store)
    assert main(["--round", str(round_id)]) == 0
    assert store.round(round_id)["new_version_id"] and learned(store, "v1")
    assert_unchanged(before, base_state(store))
    assert main(["--config-json", "{not json"]) == 1
    assert "not valid JSON" in capsys.readouterr().err


def test_dpo_reference_runs_once_per_round_not_per_step(tiny_v0, monkeypatch):
    """prefloop precomputes the parent's log-probs in one pass; TRL's default redoes them every step."""
    import trl.trainer.dpo_trainer as dpo_trainer

    from prefloop.train import rounds

    calls = []
    real = dpo_trainer.use_adapter

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(dpo_trainer, "use_adapter", counting)
    store = ready_store(tiny_v0)
    summary = rounds.run_round(store, new_round(store, max_steps=3))
    assert summary["steps"] == 3 and learned(store, summary["version"])
    # 6 rows in reference batches of the training batch (FAST: 2) is 3 passes, all before training;
    # a reference run in each of the 3 steps (TRL's default) would make it 6 or more
    assert len(calls) == 3

    def per_step(config, on_gpu, folder):  # TRL's default: the reference runs inside every step
        return {**recipe.recipe_settings(config, folder), "use_cpu": True, "per_device_train_batch_size": 2,
                "max_length": 96}

    calls.clear()
    rounds.run_round(store, new_round(store, max_steps=3, all_judgments=True), settings=per_step)
    assert len(calls) == 3  # the baseline: one reference forward inside every step


def test_round_records_phase_times_and_peak_memory(tiny_v0):
    from prefloop.train.rounds import run_round

    store = ready_store(tiny_v0)
    round_id = new_round(store)
    run_round(store, round_id)
    metrics = store.round(round_id)["metrics"]
    assert learned(store, "v1")
    assert set(metrics["phase_s"]) == {"load", "prepare", "train", "save", "gate"}
    assert all(seconds >= 0 for seconds in metrics["phase_s"].values()) and metrics["phase_s"]["train"] > 0
    assert 50 < metrics["peak_rss_mb"] < 64 * 1024  # torch alone is more than 50 MiB


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_trainer_settings_reach_the_trainer(tiny_v0, method, monkeypatch):
    """The speed settings are what the real trainer runs with; bf16 follows RoundConfig.precision."""
    from prefloop.train import rounds
    from prefloop.train.config import RoundConfig

    store = ready_store(tiny_v0)
    seen = trainer_spy(monkeypatch)
    before = base_state(store)
    summary = rounds.run_round(store, new_round(store, method=method, precision="bf16", max_steps=1))
    assert learned(store, summary["version"])  # its one step ran at full rate (no warmup step at lr 0)
    assert_unchanged(before, base_state(store))
    args = seen["trainer"].args
    assert args.bf16 is True and args.use_cpu is (not torch.cuda.is_available())
    assert args.activation_checkpointing is False and args.per_device_train_batch_size == 2
    assert args.max_length == 96 and args.logging_steps == 1 and args.dataloader_num_workers == 0
    assert getattr(args, "precompute_ref_log_probs", False) is (method == "dpo")
    assert rounds.trainer_settings(RoundConfig(precision="fp32"), False, rounds.round_dir(1))["bf16"] is False
    from prefloop.engine.models import cpu_has_native_bf16

    assert rounds.use_bf16(RoundConfig(precision="auto"), False) == cpu_has_native_bf16()
    # TRL zeroes every dropout unless told otherwise: a nonzero lora_dropout must survive
    assert args.disable_dropout is True
    assert rounds.trainer_settings(RoundConfig(lora_dropout=0.1), False, rounds.round_dir(1))["disable_dropout"] is False
    gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    assert rounds.use_bf16(RoundConfig(precision="auto"), True) is gpu_bf16


def test_precision_is_validated():
    from prefloop.train.config import RoundConfig

    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, bf16"):
        RoundConfig(precision="fp16").validate()


def test_sequence_logps_sorted_batches_keep_the_callers_order(tiny_model_dir):
    """Held-out scoring batches rows by length; each row's log-prob must not depend on its batch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefloop.engine.heldout import sequence_logps

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    prompt = [{"role": "user", "content": "Say something."}]
    answers = ["ok " * n for n in (9, 1, 5, 14, 2)]
    examples = [(prompt, [{"role": "assistant", "content": a}]) for a in answers]
    together = sequence_logps(model, tokenizer, examples, batch_size=2)
    alone = [sequence_logps(model, tokenizer, [example], batch_size=1)[0] for example in examples]
    assert together == pytest.approx(alone, rel=1e-4, abs=1e-3)
    assert len(set(round(v, 3) for v in alone)) == len(alone)  # distinct values: a shuffle would show


def test_lm_head_on_completions_only_gives_the_same_log_probs(tiny_model_dir):
    """The CPU shortcut (score only labelled positions) changes the cost, not the numbers or gradients."""
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from prefloop.train.recipe import completion_tokens_only as _completion_tokens_only

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    input_ids = torch.randint(5, 200, (3, 12))
    labels = input_ids.clone()
    labels[:, :5] = -100  # the prompt
    labels[1, 9:] = -100  # padding

    def run(compact: bool):
        model.zero_grad()
        with _completion_tokens_only(compact):
            assert trl_utils._use_triton(torch.device("cpu")) is compact
            out = model(input_ids=input_ids, labels=labels, fused_lm_head=True)
        out.log_probs.sum().backward()
        return out, model.lm_head.weight.grad.clone()

    full, full_grad = run(False)
    only, only_grad = run(True)
    for name in ("log_probs", "entropy", "mean_logits"):
        mask = labels[:, 1:] != -100
        assert torch.allclose(getattr(full, name)[mask], getattr(only, name)[mask], atol=1e-5), name
    assert torch.equal(full.is_top1[labels[:, 1:] != -100], only.is_top1[labels[:, 1:] != -100])
    assert torch.allclose(full_grad, only_grad, atol=1e-5)
    assert not trl_utils._use_triton(torch.device("cpu"))  # restored


# --------------------------------------------------------------------------------------------
# issue 14: windows by pair, cut-off answers, learning checks
# --------------------------------------------------------------------------------------------
def _snapshot_rows(store, round_id, pair_id):
    from prefloop.train.dataset import load_snapshot
    from prefloop.train.rounds import round_dir

    path = round_dir(round_id) / "dataset.jsonl"
    return [r for r in load_snapshot(path) if r["pair_id"] == pair_id] if path.exists() else []


def test_a_pairs_votes_are_learned_together_once(tiny_v0):
    """Vote a, run a round, vote b twice: on 83dfaf7 round 1 learned a>b and round 2 b>a."""
    from test_dataset import add_pair, judge

    from prefloop.engine import models
    from prefloop.errors import StoreError
    from prefloop.train.rounds import run_round

    store = ready_store(tiny_v0, heldout=0)
    live = add_pair(store, "A live prompt?", "Short.", "A much longer answer that rambles on.", purpose="live", wanted=3)
    judge(store, live, "ann1", "a")
    first = new_round(store)
    run_round(store, first)
    if store.active_version()["name"] == "v0":
        models.promote(store, "v1")  # today's gate waits (no held-out judgments): promote by hand
    for name in ("ann2", "ann3"):
        with contextlib.suppress(StoreError):  # a retired pair takes no more votes
            judge(store, live, name, "b")
    add_judged_pairs(store, 2, tag="more")
    second = new_round(store)
    run_round(store, second)
    learned_rows = _snapshot_rows(store, first, live) + _snapshot_rows(store, second, live)
    votes = [j["id"] for j in store.judgments() if j["pair_id"] == live]
    assert len(learned_rows) == 1, learned_rows  # once, not split across rounds
    assert sorted(learned_rows[0]["judgment_ids"]) == votes  # with every vote the pair got
    assert store.pair(live)["status"] == "retired"  # live pairs retire on promotion like the rest


def test_an_open_pair_waits_for_its_last_vote(tiny_v0):
    """A pair still wanting votes is in no window; closed, it joins the next one with all its votes."""
    from test_dataset import add_pair, judge

    from prefloop.train.dataset import build_preference_rows, window_pair_ids

    store = ready_store(tiny_v0, heldout=0)
    pair = add_pair(store, "Three votes wanted?", "Short.", "A much longer answer that goes on.", wanted=3)
    judge(store, pair, "ann1", "a")
    first = new_round(store)
    assert pair not in store.round_pair_ids(first) and len(store.round_pair_ids(first)) == 6
    judge(store, pair, "ann2", "b")
    judge(store, pair, "ann3", "b")
    store.update_round(first, status="trained")
    assert window_pair_ids(store) == [pair]
    second = new_round(store)
    [row] = build_preference_rows(store, pair_ids=store.round_pair_ids(second))
    assert row["source"] == "vote:b" and len(row["judgment_ids"]) == 3
    # a failed round gives its window back
    store.update_round(second, status="failed")
    assert window_pair_ids(store) == [pair]


def _cut_off_pair(store, prompt, chosen_cut, rejected_cut):
    from test_dataset import judge

    version = store.active_version()
    store.add_prompts([{"text": prompt, "split": "train", "source": "test"}])
    prompt_id = next(p["id"] for p in store.list_prompts() if p["text"] == prompt)
    gen = lambda text, seed, cut: {"version_id": version["id"], "text": text, "seed": seed, "params": {},  # noqa: E731
                                    "finish_reason": "length" if cut else "stop", "completion_tokens": 9}
    pair = store.add_pair(prompt_id, gen("Chosen answer that", 1, chosen_cut),
                          gen("Rejected answer which also", 2, rejected_cut), judgments_wanted=1)
    judge(store, pair, "ann", "a")
    return pair


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_cut_off_answers_train_without_an_end_of_turn_token(tiny_v0, monkeypatch, method):
    from prefloop.train import rounds
    from prefloop.train.dataset import build_preference_rows

    store = tiny_v0
    store.set_setting("min_new_pairs", 1)
    cases = {_cut_off_pair(store, f"Cut case {i}?", c, r): (c, r)
             for i, (c, r) in enumerate([(True, False), (False, True), (False, False), (True, True)])}
    rows = {r["pair_id"]: r for r in build_preference_rows(store)}
    assert {p: (rows[p]["chosen_cut_off"], rows[p]["rejected_cut_off"]) for p in cases} == cases
    seen = trainer_spy(monkeypatch)
    rounds.run_round(store, new_round(store, max_steps=1, method=method))
    eos = 2  # <|im_end|>
    data = seen["trainer"].train_dataset
    assert len(data) == 4

    def answer(row, side):  # the trained answer tokens: DPO keeps them apart, ORPO labels them
        if method == "dpo":
            return row[f"{side}_ids"]
        return [t for t in row[f"{side}_labels"] if t != -100]

    ends = sorted((eos in answer(row, "chosen"), eos in answer(row, "rejected")) for row in data)
    # a finished answer ends with <|im_end|>; a cut-off one where it was cut
    assert ends == sorted((not c, not r) for c, r in cases.values())
    if method == "dpo":
        assert "chosen_cut_off" not in data.column_names


def test_heldout_scoring_leaves_the_end_of_turn_off_cut_off_answers(tiny_model_dir):
    from transformers import AutoTokenizer

    from prefloop.engine.heldout import _encode

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    prompt = [{"role": "user", "content": "Hi?"}]
    answer = [{"role": "assistant", "content": "Hello there"}]
    finished, start = _encode(tokenizer, prompt, answer, 512, True)
    cut, start_cut = _encode(tokenizer, prompt, answer, 512, False)
    assert start == start_cut and finished[: len(cut)] == cut
    assert cut[-1] != tokenizer.eos_token_id and tokenizer.eos_token_id in finished[start:]


def test_warmup_never_takes_a_rounds_only_step():
    from prefloop.train.config import RoundConfig
    from prefloop.train.recipe import warmup_steps

    assert warmup_steps(RoundConfig(epochs=1.0), 8) == 0  # one step: at full rate (TRL's ceil gave 1)
    assert warmup_steps(RoundConfig(epochs=2.0), 48) == 1  # 12 steps
    assert warmup_steps(RoundConfig(max_steps=3), 999) == 0
