"""The evidence gate: promote a round's candidate only when held-out judgments say it is better.

The evidence. A share of the queue (setting ``gate_share``) is pairs sampled from the active
version on *held-out* prompts. People judge them like any pair; they never become training rows
(train/dataset.py keeps held-out prompts out). So every round has fresh judgments of its parent's
own answers on prompts it never trained on, and they accumulate while the parent stays active.

The test. For each such judgment, the candidate "agrees" when its implicit reward prefers the
answer people chose, with the reward taken per token:

    r(y) = (log p_candidate(y | x) - log p_parent(y | x)) / |y|,   agree  <=>  r(chosen) > r(rejected)

Per token, because a summed reward is confounded by length: a round that lowers every token's
log-prob a little falls more on the longer answer, so under a judge who prefers shorter answers
plain drift would count as agreement (issue 14). Divided by length, a uniform drift cancels.

Promotion needs all of:
* at least ``gate_min_rows`` judgments (fewer: the verdict is "wait", nothing is promoted);
* the one-sided Wilson lower bound of the agreement rate, at confidence ``gate_confidence``
  (default 99%), above 0.5. A candidate that agrees by chance passes 1% of the time, whatever the
  count (at 30 rows it needs 22 agreements, at 40 it needs 28). Why 99% and not 95%: a parent's
  held-out judgments are re-used by every round that trains on it, so one coin-flip judge meets
  the test once per round: at 95% a coin got a round promoted in an early run (25 of 38), both
  coin seeds of docs/runs would have had their third round promoted (67 of 114, 68 of 112), and
  null adapters passed 1-2 of 20 trials, where the issue asks for at most 1; at 99% a coin passes
  at most about 3% of 3-round runs (union bound). Real concise rounds still clear it (27 of 37,
  26 of 35, README) but one that won 70% of its battles did not (23 of 34): 99% costs power;
* drift guards, measured on the same held-out prompts:
  - ``length_ratio``: the candidate's mean response tokens over the parent's, from fresh samples
    with the production sampling settings, within [gate_min_length_ratio, gate_max_length_ratio]
    (a judge's length bias, people's included, is the cheapest thing for a round to learn);
  - ``chosen_logp_drop``: how many nats per token the answers people chose lost under the
    candidate (DPO can raise the margin by lowering both answers; a large drop is degeneration);
  - ``kl``: KL(parent || candidate) per token on the parent's own held-out samples (the gate
    pairs' answers), exact over the vocabulary at every position they visit. Not the sampled
    estimate E_y[log p_parent(y) - log p_candidate(y)]: the answers were drawn with temperature and
    top-p, so that estimate is biased, went negative in docs/runs, and equalled the chosen log-prob
    drop to two digits in every round, a second copy of that guard rather than a measure of drift;
  - ``cutoff_increase``: the candidate's cut-off rate on the length guard's fresh samples minus the
    parent's on its gate samples. A round must not learn to ramble past ``max_new_tokens`` (a
    cut-off answer is a broken one, whatever a judge made of it). The default 0.15 is about three
    standard deviations of that difference at 32 samples and a 5% rate, so chance rarely trips it;
    the largest increase measured in docs/runs was +0.094 (a concise round rejected on agreement).

Candidate and parent are scored with the weights the sampler runs (prefloop.engine.models:
float32 merge, one cast to the sampling dtype), upcast to float32 for the arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

from prefloop.db.settings import DEFAULT_SETTINGS
from prefloop.db.store import Store
from prefloop.engine.generation import SamplingParams, derive_seed, generate
from prefloop.engine.heldout import encode_answers, paired_scores

Z_95_ONE_SIDED = 1.6448536269514722


def z_one_sided(confidence: float) -> float:
    """The normal quantile of a one-sided test at ``confidence`` (0.95 -> 1.645, 0.99 -> 2.326)."""
    return NormalDist().inv_cdf(confidence)


LENGTH_PROMPTS = 32  # held-out prompts the length guard samples the candidate on (one answer each)


@dataclass
class GateSettings:
    """The gate's settings; the defaults are the ``gate_*`` settings' own, so each lives once."""

    min_rows: int = DEFAULT_SETTINGS["gate_min_rows"]
    confidence: float = DEFAULT_SETTINGS["gate_confidence"]
    max_length_ratio: float = DEFAULT_SETTINGS["gate_max_length_ratio"]
    min_length_ratio: float = DEFAULT_SETTINGS["gate_min_length_ratio"]
    max_chosen_logp_drop: float = DEFAULT_SETTINGS["gate_max_chosen_logp_drop"]
    max_kl: float = DEFAULT_SETTINGS["gate_max_kl"]
    max_cutoff_increase: float = DEFAULT_SETTINGS["gate_max_cutoff_increase"]

    @classmethod
    def from_store(cls, store: Store) -> "GateSettings":
        return cls(
            min_rows=int(store.get_setting("gate_min_rows")),
            confidence=float(store.get_setting("gate_confidence")),
            max_length_ratio=float(store.get_setting("gate_max_length_ratio")),
            min_length_ratio=float(store.get_setting("gate_min_length_ratio")),
            max_chosen_logp_drop=float(store.get_setting("gate_max_chosen_logp_drop")),
            max_kl=float(store.get_setting("gate_max_kl")),
            max_cutoff_increase=float(store.get_setting("gate_max_cutoff_increase")),
        )


def wilson_lower_bound(successes: int, n: int, z: float = Z_95_ONE_SIDED) -> float | None:
    """One-sided Wilson score lower bound of a binomial proportion (None when n is 0)."""
    if n <= 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / denominator


# --------------------------------------------------------------------------------------------
# scoring (the numbers a verdict is made of)
# --------------------------------------------------------------------------------------------
def score_rows(candidate, parent, tokenizer, rows: list[dict], *, max_length: int = 512, batch_size: int = 8) -> list[dict]:
    """Per row: summed log-probs and token counts of chosen and rejected under both models, and the
    exact KL(parent || candidate) summed over each answer's positions (engine/heldout.paired_scores).

    ``parent`` may be a context manager factory instead of a model (a PEFT model's
    ``disable_adapter``): then ``candidate`` is scored once with and once without its adapter.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    chosen, rejected = (
        paired_scores(candidate, parent, encode_answers(tokenizer, rows, side, max_length), pad, batch_size)
        for side in ("chosen", "rejected")
    )
    return [
        {"cand_chosen": c["candidate"], "par_chosen": c["parent"], "n_chosen": c["tokens"], "kl_chosen": c["kl"],
         "cand_rejected": r["candidate"], "par_rejected": r["parent"], "n_rejected": r["tokens"], "kl_rejected": r["kl"]}
        for c, r in zip(chosen, rejected)
    ]


def per_token_margins(scored: list[dict]) -> list[float]:
    """r(chosen) - r(rejected), each r the per-token log-ratio candidate / parent."""
    return [
        (s["cand_chosen"] - s["par_chosen"]) / max(s["n_chosen"], 1)
        - (s["cand_rejected"] - s["par_rejected"]) / max(s["n_rejected"], 1)
        for s in scored
    ]


def chosen_logp_drop(scored: list[dict]) -> float | None:
    """Nats per token the chosen answers lost under the candidate (negative: they gained)."""
    tokens = sum(s["n_chosen"] for s in scored)
    if not tokens:
        return None
    return sum(s["par_chosen"] - s["cand_chosen"] for s in scored) / tokens


def kl_per_token(scored: list[dict]) -> float | None:
    """KL(parent || candidate) per token over the parent's own samples (both answers of each row),
    exact over the vocabulary at each position they visit."""
    tokens = sum(s["n_chosen"] + s["n_rejected"] for s in scored)
    if not tokens:
        return None
    return sum(s["kl_chosen"] + s["kl_rejected"] for s in scored) / tokens


# --------------------------------------------------------------------------------------------
# the verdict
# --------------------------------------------------------------------------------------------
def verdict(scored: list[dict], settings: GateSettings, lengths: dict | None = None) -> dict:
    """promote / reject / wait, with every number behind it.

    ``lengths``: {"candidate": mean tokens, "parent": mean tokens, ...} from held-out samples, or
    None when not measured (the length guard then counts as not passed: no promotion without it).
    """
    n = len(scored)
    margins = per_token_margins(scored)
    agree = sum(1 for m in margins if m > 0)
    accuracy = agree / n if n else None
    lower = wilson_lower_bound(agree, n, z_one_sided(settings.confidence))
    level = f"{settings.confidence:.0%}"
    drop = chosen_logp_drop(scored)
    kl = kl_per_token(scored)
    ratio = cut = None
    if lengths and lengths.get("parent"):
        ratio = lengths["candidate"] / lengths["parent"]
    if lengths and lengths.get("candidate_cutoff_rate") is not None and lengths.get("parent_cutoff_rate") is not None:
        cut = lengths["candidate_cutoff_rate"] - lengths["parent_cutoff_rate"]
    guards = {
        "length_ratio": {
            "value": _round(ratio), "min": settings.min_length_ratio, "max": settings.max_length_ratio,
            "ok": ratio is not None and settings.min_length_ratio <= ratio <= settings.max_length_ratio,
            **({k: _round(v) for k, v in lengths.items()} if lengths else {}),
        },
        "chosen_logp_drop": {"value": _round(drop), "max": settings.max_chosen_logp_drop,
                             "ok": drop is not None and drop <= settings.max_chosen_logp_drop},
        "kl": {"value": _round(kl), "max": settings.max_kl, "ok": kl is not None and kl <= settings.max_kl},
        "cutoff_increase": {"value": _round(cut), "max": settings.max_cutoff_increase,
                            "ok": cut is not None and cut <= settings.max_cutoff_increase},
    }
    result: dict[str, Any] = {
        "rows": n, "agree": agree, "accuracy": _round(accuracy), "lower_bound": _round(lower),
        "margin": "per-token implicit reward (log p_candidate - log p_parent) / tokens",
        "mean_margin": _round(sum(margins) / n) if n else None,
        "guards": guards, "settings": asdict(settings),
    }
    failed = [name for name, guard in guards.items() if not guard["ok"]]
    if n < settings.min_rows:
        decision = "wait"
        reason = (f"too little evidence: {n} held-out judgments of the parent's answers, "
                  f"{settings.min_rows} needed (setting gate_min_rows)")
    elif lower is None or lower <= 0.5:
        decision = "reject"
        reason = (f"held-out agreement {agree}/{n} = {accuracy:.1%} ({level} lower bound {lower:.1%}) "
                  "does not clear chance (50%)")
    elif failed:
        decision = "reject"
        reason = "drift guard failed: " + "; ".join(_guard_text(name, guards[name]) for name in failed)
    else:
        decision = "promote"
        reason = (f"held-out agreement {agree}/{n} = {accuracy:.1%} ({level} lower bound {lower:.1%} > 50%) "
                  "and every drift guard holds")
    result.update(decision=decision, promoted=decision == "promote", reason=reason, failed_guards=failed)
    return result


def numbers_line(verdict: dict) -> str:
    """Every number behind a verdict on one line: rows, agreement, its bound, each guard."""
    g = verdict["guards"]

    def f(value, spec):
        return "-" if value is None else format(value, spec)

    level = f"{verdict['settings'].get('confidence', 0.95):.0%}"
    return (f"rows {verdict['rows']}, agreement {f(verdict['accuracy'], '.3f')}, {level} low {f(verdict['lower_bound'], '.3f')}, "
            f"length x{f(g['length_ratio']['value'], '.2f')}, chosen log-prob drop {f(g['chosen_logp_drop']['value'], '.3f')}"
            f"/token, KL {f(g['kl']['value'], '.3f')}/token"
            + (f", cut-off {f(g['cutoff_increase']['value'], '+.3f')}" if "cutoff_increase" in g else ""))


def _guard_text(name: str, guard: dict) -> str:
    value = guard["value"]
    if value is None:
        return f"{name} not measured"
    if name == "length_ratio":
        return f"length ratio {value:.2f} outside [{guard['min']}, {guard['max']}]"
    if name == "cutoff_increase":
        return f"cut-off rate up {value:+.1%} vs the parent (at most +{guard['max']:.0%})"
    return f"{name} {value:.3f} > {guard['max']}"


def _round(value, digits: int = 4):
    return None if value is None else round(float(value), digits)


# --------------------------------------------------------------------------------------------
# length guard samples
# --------------------------------------------------------------------------------------------
def sample_lengths(store: Store, candidate_model, tokenizer, parent: dict, rows: list[dict], *, seed: int = 0) -> dict | None:
    """Mean response tokens of the candidate (fresh samples, production settings) and of the
    parent (its stored samples) on up to LENGTH_PROMPTS of the gate rows' prompts, and the
    candidate's cut-off rate there."""

    prompt_ids = sorted({row["prompt_id"] for row in rows})[:LENGTH_PROMPTS]
    if not prompt_ids:
        return None
    parent_rows = [g for g in store.generation_texts(split="heldout", version=parent["name"])
                   if g["prompt_id"] in set(prompt_ids)]
    if not parent_rows:
        return None
    parent_tokens = [  # token counts as sampled; counted from the text where none was recorded
        g["completion_tokens"] if g["completion_tokens"] is not None
        else len(tokenizer(g["text"], add_special_tokens=False)["input_ids"])
        for g in parent_rows
    ]
    params = SamplingParams.from_dict(store.get_setting("sampling"))
    prompts = [store.prompt(pid) for pid in prompt_ids]
    conversations = [p.get("messages") or [{"role": "user", "content": p["text"]}] for p in prompts]
    outputs = generate(candidate_model, tokenizer, conversations, params,
                       [derive_seed(seed, pid, "gate") for pid in prompt_ids], batch_size=32)
    candidate_tokens = [o.completion_tokens for o in outputs]
    return {
        "candidate": sum(candidate_tokens) / len(candidate_tokens),
        "parent": sum(parent_tokens) / len(parent_tokens),
        "prompts": len(prompt_ids),
        "candidate_cutoff_rate": sum(o.finish_reason == "length" for o in outputs) / len(outputs),
        "parent_cutoff_rate": sum(g["finish_reason"] == "length" for g in parent_rows) / len(parent_rows),
    }
