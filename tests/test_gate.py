"""The evidence gate (prefloop.train.gate): its statistics, and whether it stops what it must stop.

The adapters here are trained by a few lines of plain DPO on the tiny random model, on a
synthetic taste whose answers people "chose" and "rejected" hold the very same words: the chosen
answer lists them in alphabetical order, the rejected one shuffled. Same words and same length,
so neither a length bias nor a word bias can pass for the taste; a real adapter has to learn the
order. Each test runs in seconds.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from prefloop.train import gate

WORDS = ("apple river stone cloud music paper garden window silver doctor engine forest honey island "
         "jacket kettle lemon market number orange pencil quiet rabbit summer").split()
LOOSE = gate.GateSettings(min_rows=30, max_length_ratio=10.0, min_length_ratio=0.0, max_chosen_logp_drop=1e9, max_kl=1e9)
NO_KL = {"kl_chosen": 0.0, "kl_rejected": 0.0}  # synthetic rows whose candidate's distribution did not move
SAME_LENGTH = {"candidate": 10.0, "parent": 10.0, "candidate_cutoff_rate": 0.0, "parent_cutoff_rate": 0.0}  # the length guard is tested on its own below


def sorted_rows(n: int, rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(n):
        words = rng.sample(WORDS, 6)
        shuffled = words[:]
        while shuffled == sorted(words):
            rng.shuffle(shuffled)
        rows.append({
            "prompt": [{"role": "user", "content": "List some words."}],
            "chosen": [{"role": "assistant", "content": " ".join(sorted(words))}],
            "rejected": [{"role": "assistant", "content": " ".join(shuffled)}],
        })
    return rows


def _batch(tokenizer, rows, side):
    from prefloop.engine.heldout import _encode

    return [_encode(tokenizer, r["prompt"], r[side], 128) for r in rows]


def _logps(model, batch):
    from prefloop.engine.heldout import batch_logps

    return batch_logps(model, batch, pad=2)[0]


@pytest.fixture(autouse=True)
def one_thread():
    """The trials here are statistical but seeded. With one thread their arithmetic, hence each
    verdict, is the same on every run (with two, reduction order moved one borderline trial)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_adapter(model_dir, rows, seed: int, steps: int = 6, lr: float = 2e-2, beta: float = 0.5):
    """A LoRA adapter trained with the DPO loss (reference: the adapter switched off)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    chosen, rejected = _batch(tokenizer, rows, "chosen"), _batch(tokenizer, rows, "rejected")
    with torch.no_grad(), model.disable_adapter():
        ref_c, ref_r = _logps(model, chosen), _logps(model, rejected)
    before = {k: v.clone() for k, v in model.named_parameters()}
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        margin = beta * ((_logps(model, chosen) - ref_c) - (_logps(model, rejected) - ref_r))
        loss = -torch.nn.functional.logsigmoid(margin).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    after = dict(model.named_parameters())
    trainable = [k for k, p in after.items() if p.requires_grad]
    assert trainable and any(not torch.equal(before[k], after[k]) for k in trainable)  # it learned something
    assert all(torch.equal(before[k], after[k]) for k, p in after.items() if not p.requires_grad)  # base intact
    return model, tokenizer


def judge_adapter(model, tokenizer, heldout, lengths=SAME_LENGTH, settings=LOOSE) -> dict:
    scored = gate.score_rows(model, model.disable_adapter, tokenizer, heldout)
    return gate.verdict(scored, settings, lengths)


def shuffled_labels(rows: list[dict], rng: random.Random) -> list[dict]:
    """Half the rows keep their label, half are swapped (which half: random)."""
    flips = set(rng.sample(range(len(rows)), len(rows) // 2))
    return [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} if i in flips else r for i, r in enumerate(rows)]


def random_direction(model, seed: int) -> None:
    """Replace every LoRA update B @ A by a Gaussian one of the same Frobenius norm, in place."""
    generator = torch.Generator().manual_seed(seed)
    modules = {name.rsplit(".lora_A", 1)[0] for name, _ in model.named_parameters() if ".lora_A." in name}
    params = dict(model.named_parameters())
    with torch.no_grad():
        for prefix in modules:
            a, b = params[f"{prefix}.lora_A.default.weight"], params[f"{prefix}.lora_B.default.weight"]
            norm = (b @ a).norm()
            a.copy_(torch.randn(a.shape, generator=generator))
            b.copy_(torch.randn(b.shape, generator=generator))
            b.mul_(norm / (b @ a).norm().clamp_min(1e-12))


# --------------------------------------------------------------------------------------------
def test_wilson_lower_bound():
    assert gate.wilson_lower_bound(0, 0) is None
    assert gate.wilson_lower_bound(15, 30) < 0.5
    # 30 rows: 20 agreements clear chance, 19 do not (one-sided 95%; P(>= 20 | coin) = 4.9%)
    assert gate.wilson_lower_bound(20, 30) > 0.5 > gate.wilson_lower_bound(19, 30)
    assert gate.wilson_lower_bound(100, 100) == pytest.approx(1 / (1 + 1.6448536269514722**2 / 100), rel=1e-9)


def test_a_coin_flip_passes_at_most_the_levels_share():
    """The interval's promise, checked by simulation: a candidate that agrees by chance passes
    about 5% of the time at 95%, and about 1% at the default level (99%)."""
    rng = random.Random(0)
    default_z = gate.z_one_sided(gate.GateSettings().confidence)
    assert gate.GateSettings().confidence == 0.99
    for z, most in ((gate.z_one_sided(0.95), 0.065), (default_z, 0.02)):
        for n in (30, 44, 100):
            passed = sum(gate.wilson_lower_bound(sum(rng.random() < 0.5 for _ in range(n)), n, z) > 0.5
                         for _ in range(4000))
            assert passed / 4000 < most, (z, n)  # issue 14: 0.56 at 44 rows with the old gate (accuracy >= 0.5)


def test_thin_evidence_waits():
    scored = [{"cand_chosen": -1.0, "par_chosen": -2.0, "n_chosen": 4, "cand_rejected": -3.0, "par_rejected": -2.0,
               "n_rejected": 4, **NO_KL}] * 29
    verdict = gate.verdict(scored, gate.GateSettings(), SAME_LENGTH)
    assert verdict["decision"] == "wait" and not verdict["promoted"] and verdict["accuracy"] == 1.0
    assert "29 held-out judgments" in verdict["reason"] and "30 needed" in verdict["reason"]
    assert gate.verdict(scored * 2, gate.GateSettings(), SAME_LENGTH)["decision"] == "promote"
    assert gate.verdict(scored * 2, gate.GateSettings(), None)["decision"] == "reject"  # no length measured


def test_per_token_margin_is_not_fooled_by_a_uniform_drift():
    """A candidate that lowers every token by the same amount, judged by a concise judge (chosen
    shorter): a summed margin calls it agreement every time; per token it is no evidence at all."""
    rows = []
    for short, long in [(5, 20), (8, 30), (3, 12)] * 12:
        rows.append({"cand_chosen": -2.1 * short, "par_chosen": -2.0 * short, "n_chosen": short,
                     "cand_rejected": -2.1 * long, "par_rejected": -2.0 * long, "n_rejected": long, **NO_KL})
    summed = sum((r["cand_chosen"] - r["par_chosen"]) - (r["cand_rejected"] - r["par_rejected"]) > 0 for r in rows)
    assert summed == len(rows)  # the old margin: 100% "agreement"
    verdict = gate.verdict(rows, gate.GateSettings(), SAME_LENGTH)
    assert verdict["accuracy"] == 0.0 and not verdict["promoted"]


def test_the_gate_promotes_a_real_adapter(tiny_model_dir):
    """The tests below could pass by rejecting everything: this one shows they cannot."""
    train, heldout = sorted_rows(12, random.Random(1)), sorted_rows(40, random.Random(2))
    model, tokenizer = train_adapter(tiny_model_dir, train, seed=0)
    verdict = judge_adapter(model, tokenizer, heldout)
    assert verdict["decision"] == "promote", verdict
    assert verdict["accuracy"] >= 0.8 and verdict["lower_bound"] > 0.5


# The gate's default level is one-sided 99% (setting gate_confidence): a candidate with no real
# agreement passes about 1 time in 100, so 20 such trials give 2 or more false passes only 1.7% of
# the time. Issue 14 asks for at least 19 of 20 rejected: that is the bar. (At 95% the same trials
# passed 1 of 20 alone and 2 of 20 inside the full suite, which is why the level went up.)
MAX_FALSE_PASSES = 1


def test_the_gate_level_rejects_the_coin_round_and_keeps_the_concise_one():
    """The two measured first rounds (README, "Does the loop learn?"): a coin-flip judge's
    candidate agreed on 25 of 38 held-out rows and was promoted at 95%; the concise judge's on
    28 of 37. At the default 99% the coin's is rejected and the concise one still promoted."""
    settings = gate.GateSettings()
    assert settings.confidence == 0.99
    z = gate.z_one_sided(settings.confidence)
    assert gate.wilson_lower_bound(25, 38, gate.Z_95_ONE_SIDED) > 0.5 > gate.wilson_lower_bound(25, 38, z)
    assert gate.wilson_lower_bound(28, 37, z) > 0.5

    def rows(agree, n):
        yes = {"cand_chosen": -1.0, "par_chosen": -2.0, "n_chosen": 10, "cand_rejected": -2.1, "par_rejected": -2.0,
               "n_rejected": 10, **NO_KL}
        no = {**yes, "cand_chosen": -2.1, "cand_rejected": -1.0}
        return [yes] * agree + [no] * (n - agree)

    assert gate.verdict(rows(25, 38), settings, SAME_LENGTH)["decision"] == "reject"
    concise = gate.verdict(rows(28, 37), settings, SAME_LENGTH)
    assert concise["decision"] == "promote", concise["reason"]
    assert "99% lower bound" in concise["reason"] and "99% low" in gate.numbers_line(concise)


def test_shuffled_label_adapters_are_rejected(tiny_model_dir):
    heldout = sorted_rows(40, random.Random(2))
    promoted = []
    for trial in range(20):
        rng = random.Random(100 + trial)
        model, tokenizer = train_adapter(tiny_model_dir, shuffled_labels(sorted_rows(12, rng), rng), seed=trial)
        verdict = judge_adapter(model, tokenizer, heldout)
        promoted.append(verdict["promoted"])
    assert sum(promoted) <= MAX_FALSE_PASSES, promoted


def test_random_direction_adapters_of_matched_norm_are_rejected(tiny_model_dir):
    train, heldout = sorted_rows(12, random.Random(1)), sorted_rows(40, random.Random(2))
    model, tokenizer = train_adapter(tiny_model_dir, train, seed=0)
    assert judge_adapter(model, tokenizer, heldout)["promoted"]  # the trained direction passes
    promoted = []
    for trial in range(20):
        random_direction(model, seed=trial)
        promoted.append(judge_adapter(model, tokenizer, heldout)["promoted"])
    assert sum(promoted) <= MAX_FALSE_PASSES, promoted


def test_drift_guards_stop_a_candidate_that_agrees():
    agreeing = [{"cand_chosen": -1.0, "par_chosen": -2.0, "n_chosen": 10, "cand_rejected": -4.0, "par_rejected": -2.0,
                 "n_rejected": 10, **NO_KL}] * 40
    settings = gate.GateSettings()
    assert gate.verdict(agreeing, settings, SAME_LENGTH)["promoted"]
    longer = gate.verdict(agreeing, settings, {**SAME_LENGTH, "candidate": 14.0})
    assert longer["decision"] == "reject" and longer["failed_guards"] == ["length_ratio"]
    assert "length ratio 1.40 outside [0.5, 1.3]" in longer["reason"]
    collapsed = [dict(r, cand_chosen=-10.0, cand_rejected=-40.0) for r in agreeing]  # both answers lose a lot
    verdict = gate.verdict(collapsed, settings, SAME_LENGTH)
    assert not verdict["promoted"] and verdict["failed_guards"] == ["chosen_logp_drop"]
    assert math.isclose(verdict["guards"]["chosen_logp_drop"]["value"], 0.8)
    drifted = [dict(r, kl_chosen=2.0, kl_rejected=2.0) for r in agreeing]  # 0.2 nats a token from the parent
    verdict = gate.verdict(drifted, settings, SAME_LENGTH)
    assert not verdict["promoted"] and verdict["failed_guards"] == ["kl"]
    assert math.isclose(verdict["guards"]["kl"]["value"], 0.2)
    rambling = gate.verdict(agreeing, settings, {**SAME_LENGTH, "candidate_cutoff_rate": 0.25, "parent_cutoff_rate": 0.05})
    assert rambling["decision"] == "reject" and rambling["failed_guards"] == ["cutoff_increase"]
    assert "cut-off rate up +20.0% vs the parent (at most +15%)" in rambling["reason"]
    assert gate.verdict(agreeing, settings, {**SAME_LENGTH, "candidate_cutoff_rate": 0.15, "parent_cutoff_rate": 0.05})["promoted"]
    unmeasured = gate.verdict(agreeing, settings, {"candidate": 10.0, "parent": 10.0})  # no cut-off rates: no promotion
    assert not unmeasured["promoted"] and "cutoff_increase not measured" in unmeasured["reason"]


def test_the_kl_guard_is_exact_over_the_vocabulary(tiny_model_dir):
    """score_rows' KL(parent || candidate) equals a reference computed independently (full
    sequences, no left padding, no kept-positions trick, torch's kl_div), is zero for an adapter
    that changes nothing, and is not the sampled estimate: per position it can never be negative."""
    train, heldout = sorted_rows(12, random.Random(1)), sorted_rows(6, random.Random(2))
    model, tokenizer = train_adapter(tiny_model_dir, train, seed=0)
    scored = gate.score_rows(model, model.disable_adapter, tokenizer, heldout, batch_size=4)
    batch = _batch(tokenizer, heldout, "chosen")
    with torch.no_grad():
        for row, (ids, start) in zip(scored, batch):
            x = torch.tensor([ids])
            candidate = torch.log_softmax(model(input_ids=x).logits[0, start - 1 : -1].float(), -1)
            with model.disable_adapter():
                parent = torch.log_softmax(model(input_ids=x).logits[0, start - 1 : -1].float(), -1)
            reference = torch.nn.functional.kl_div(candidate, parent, log_target=True, reduction="sum").item()
            assert row["n_chosen"] == len(ids) - start
            assert reference > 0 and math.isclose(row["kl_chosen"], reference, rel_tol=1e-3, abs_tol=1e-5)
    kl = gate.kl_per_token(scored)
    assert kl > 0 and not math.isclose(kl, gate.chosen_logp_drop(scored), rel_tol=1e-2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.zero_()  # the adapter now adds nothing
    unchanged = gate.score_rows(model, model.disable_adapter, tokenizer, heldout)
    assert all(abs(r["kl_chosen"]) < 1e-6 and abs(r["kl_rejected"]) < 1e-6 for r in unchanged)
