"""What people judge: which two of a prompt's candidate answers, and which prompts first.

``selection = random`` (the default until a measurement says otherwise): two answers per prompt,
queued as sampled, as before issue 15.

``selection = active``: ``candidates_per_prompt`` (k) answers per prompt, sampled in one decode
batch (rows with the same prompt share one prefill, engine/generation.py), then

* **the pair** is the two candidates whose implicit rewards differ most,

      r(y) = log p_version(y | x) / |y|  -  log p_parent(y | x) / |y|

  (DPO's implicit reward against the version's parent, per token as in train/gate.py and
  engine/heldout.py, over the tokens sampled, end-of-turn left out). The version's log-probs
  come free with the decode (``Generated.logprob``); the parent scores the same token ids in
  one teacher-forced pass, the only extra compute active selection adds. That is the pair the current model's implicit preference model
  sigma(beta (r_i - r_j)) is most *certain* about; among k candidates it is the best-vs-worst
  pair. This is the preference-certainty half of the acquisition function of Muldrew, Hayes,
  Zhang and Barber, "Active Preference Learning for Large Language Models" (ICML 2024,
  arXiv:2402.08114, PMLR 235:36577-36590): their analysis finds that certainty-based selection
  surfaces pairs the implicit preference model ranks confidently and wrongly, which a human label
  corrects (and on which DPO's gradient weight sigma(r_rejected - r_chosen) is largest). Pairing
  the best and worst of k under a reward is also how iterative DPO builds pairs (Xiong et al.,
  "Iterative Preference Learning from Human Feedback", ICML 2024), there with a reward model
  deciding, here with a person.
* **the prompts**: the other half of Muldrew et al.'s hybrid acquisition, the model's predictive
  entropy on the prompt, estimated from the k candidates already sampled,
  H(x) ~ mean_i -log p_version(y_i | x) / |y_i| (per token here, where the paper sums over the
  sequence: a sum mostly measures length). Of a batch's prompts not drawn for a random pair, the
  ``active_prompt_share`` with the highest H get a pair; the others are not queued and stay
  among the least-sampled prompts for a later batch. At 1.0 (the default) every prompt gets a
  pair: prompt choice costs decode time per queued pair (README, "Choosing what people judge").

Fallbacks, recorded in each pair's ``criterion``:

* v0 has no parent, so r is undefined: the pair is the two most *dissimilar* candidates
  (1 - difflib ratio), the widest contrast a judgment can settle. Prompts still rank by H.
* an engine without local weights (a vLLM server) cannot score: both pair and prompt rank by
  dissimilarity (the prompt's score is its chosen pair's).
* a parent that cannot be loaded (imported lineage, no weights) counts as no parent.

Always: a share ``random_pair_share`` of the queued pairs is a uniformly random prompt and a
uniformly random pair of its candidates (method "random"), so evaluation on queued data stays
unbiased; a near-identical pair (``near_identical``) is never queued, whichever the method; gate
pairs (held-out prompts), battles, live pairs and thumbs items are never selected actively.
Lineage on every queued train pair (``pairs.selection``): method, k, criterion, score (the
pair's margin or dissimilarity; None for random), prompt_criterion and prompt_score.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import random
from dataclasses import dataclass, field

from prefloop.db.settings import SETTING_RANGES
from prefloop.db.store import SELECTIONS, Store
from prefloop.engine import heldout, models
from prefloop.engine.generation import encode_conversation, live_priority, sampling_dtype
from prefloop.errors import ModelError

__all__ = [
    "MAX_CANDIDATES", "NEAR_IDENTICAL_RATIO", "SELECTIONS", "Choice", "Scores", "choose", "dissimilarity",
    "distinct_pairs", "draw_random", "implicit_rewards", "near_identical", "predictive_entropy",
    "random_probability", "score_candidates",
]

log = logging.getLogger("prefloop.selection")

MAX_CANDIDATES = int(SETTING_RANGES["candidates_per_prompt"][2])  # the setting's upper limit
NEAR_IDENTICAL_RATIO = 0.9  # difflib similarity at or above which two responses count as the same
SCORE_BATCH = 8  # sequences per scoring forward pass; live streams go first between passes


def near_identical(text_a: str, text_b: str, threshold: float = NEAR_IDENTICAL_RATIO) -> bool:
    """Same text after normalising case and whitespace, or difflib ratio >= threshold."""
    a, b = (" ".join(t.lower().split()) for t in (text_a, text_b))
    if a == b:
        return True
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return matcher.quick_ratio() >= threshold and matcher.ratio() >= threshold


def dissimilarity(text_a: str, text_b: str) -> float:
    """1 - difflib ratio of the normalised texts: 0 same, 1 nothing in common."""
    a, b = (" ".join(t.lower().split()) for t in (text_a, text_b))
    return 1.0 - difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def distinct_pairs(texts: list[str]) -> list[tuple[int, int]]:
    """Every (i, j), i < j, of candidates that are not near-identical: the pairs worth a judgment."""
    return [(i, j) for i, j in itertools.combinations(range(len(texts)), 2) if not near_identical(texts[i], texts[j])]


@dataclass
class Scores:
    """What the model says about one batch's candidates; None where it cannot say."""

    rewards: list[list[float] | None] | None = None  # per prompt (None: not scored), per candidate: r
    entropy: list[float] | None = None  # per prompt: H(x) estimated from its candidates
    notes: dict = field(default_factory=dict)


@dataclass
class Choice:
    """One prompt's queued pair: candidate indices (i, j) and its lineage."""

    prompt_index: int
    pair: tuple[int, int]
    lineage: dict


def random_probability(random_share: float, prompt_share: float) -> float:
    """Per-prompt probability of a random pair such that random pairs make up ``random_share``
    of the *queued* pairs when only ``prompt_share`` of the other prompts get a pair:
    q / (q + (1 - q) s) = rho  <=>  q = rho s / (1 - rho + rho s)."""
    rho, s = random_share, prompt_share
    if rho >= 1:
        return 1.0
    return rho * s / (1 - rho + rho * s)


def draw_random(rngs: list[random.Random], *, method: str, random_share: float = 0.25,
                prompt_share: float = 1.0) -> list[bool]:
    """Which prompts get a random pair: one draw from each prompt's own seeded generator (so a
    prompt's draw never depends on its batch mates). Drawn before scoring: random prompts are
    not scored."""
    q = 1.0 if method == "random" else random_probability(random_share, prompt_share)
    return [rng.random() < q for rng in rngs]


def choose(
    candidates: list[list[str]],
    rngs: list[random.Random],
    *,
    method: str,
    scores: Scores | None = None,
    random_share: float = 0.25,
    prompt_share: float = 1.0,
    randoms: list[bool] | None = None,
) -> list[Choice]:
    """The pairs to queue for a batch: at most one per prompt, in prompt order.

    ``candidates[p]``: the k answer texts of prompt p; ``rngs[p]``: that prompt's own seeded
    generator; ``randoms``: ``draw_random``'s answer when the caller drew it already (to skip
    scoring those prompts). ``method`` "random": every prompt gets a random distinct pair.
    "active": see the module docstring.
    """
    scores = scores or Scores()
    if randoms is None:
        randoms = draw_random(rngs, method=method, random_share=random_share, prompt_share=prompt_share)
    chosen: list[Choice] = []
    active: list[tuple[float, Choice]] = []
    for p, texts in enumerate(candidates):
        valid = distinct_pairs(texts)
        if not valid:
            continue  # every candidate near-identical to every other: nothing to judge
        if randoms[p]:
            pair = valid[rngs[p].randrange(len(valid))]
            lineage = {"method": "random", "k": len(texts), "criterion": "uniform", "score": None}
            chosen.append(Choice(p, pair, lineage))
            continue
        if scores.rewards is not None and scores.rewards[p] is not None:
            r = scores.rewards[p]
            criterion = "implicit_reward_margin"
            pair_score = {pair: abs(r[pair[0]] - r[pair[1]]) for pair in valid}
        else:
            criterion = "dissimilarity"
            pair_score = {pair: dissimilarity(texts[pair[0]], texts[pair[1]]) for pair in valid}
        pair = max(valid, key=lambda item: pair_score[item])  # first of equals: deterministic
        if scores.entropy is not None:
            prompt_criterion, prompt_score = "entropy", scores.entropy[p]
        else:
            prompt_criterion, prompt_score = criterion, pair_score[pair]
        lineage = {
            "method": "active", "k": len(texts), "criterion": criterion, "score": round(pair_score[pair], 6),
            "prompt_criterion": prompt_criterion, "prompt_score": round(prompt_score, 6), **scores.notes,
        }
        active.append((prompt_score, Choice(p, pair, lineage)))
    if active:
        keep = max(1, round(prompt_share * len(active)))
        ranked = sorted(active, key=lambda item: -item[0])  # stable: ties keep prompt order
        chosen.extend(choice for _, choice in ranked[:keep])
    return sorted(chosen, key=lambda c: c.prompt_index)


# --------------------------------------------------------------------------------------------
# scoring with the weights the sampler runs
# --------------------------------------------------------------------------------------------
def score_candidates(store: Store, engine, version: dict, histories: list[list[dict]],
                     candidates: list[list], skip: list[bool] | None = None) -> Scores:
    """Predictive entropy and implicit rewards of a batch's candidates (``Generated`` rows).

    The version's own log-probs come free with the decode (``Generated.logprob``); the parent,
    loaded like the sampler's model (models.load_version keeps both cached), scores the exact
    token ids sampled, in one teacher-forced pass. Scores() when the engine reports no
    log-probs (a server), entropy only when the version has no loadable parent. Prompts with
    ``skip[p]`` (random draws) get no parent pass."""
    entropy = predictive_entropy(candidates)
    if entropy is None:
        return Scores()
    reference = _parent_model(store, version)
    tokenizer = getattr(engine, "tokenizer", None)
    if reference is None or tokenizer is None:
        return Scores(entropy=entropy)
    keep = [p for p in range(len(candidates)) if not (skip and skip[p])]
    scored = implicit_rewards(reference, tokenizer, [histories[p] for p in keep], [candidates[p] for p in keep])
    rewards: list[list[float] | None] = [None] * len(candidates)
    for p, values in zip(keep, scored):
        rewards[p] = values
    return Scores(rewards=rewards, entropy=entropy, notes={"reference": reference_name(store, version)})


def predictive_entropy(candidates: list[list]) -> list[float] | None:
    """Per prompt, mean over its candidates of -log p(y | x) / |y| under the sampling model."""
    if any(g.logprob is None for group in candidates for g in group):
        return None
    return [-sum(_own(g) for g in group) / len(group) for group in candidates]


def implicit_rewards(reference, tokenizer, histories: list[list[dict]], candidates: list[list]) -> list[list[float]]:
    """Per prompt, per candidate: r = log p_version(y)/|y| - log p_reference(y)/|y|, over the
    answer's sampled tokens (its end-of-turn token left out on both sides)."""
    encoded, owners = [], []
    for p, (messages, group) in enumerate(zip(histories, candidates)):
        prompt_ids = encode_conversation(tokenizer, messages)
        for g in group:
            encoded.append((prompt_ids + list(g.token_ids), len(prompt_ids)))
            owners.append(p)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    theirs: list[tuple[float, int]] = []
    for start in range(0, len(encoded), SCORE_BATCH):
        if start:
            live_priority.wait_turn()  # a live stream's next token before our next pass
        theirs += heldout.encoded_logps(reference, encoded[start : start + SCORE_BATCH], pad, SCORE_BATCH)
    own = [_own(g) for group in candidates for g in group]
    values = [mine - total / max(count, 1) for mine, (total, count) in zip(own, theirs)]
    return _by_prompt(values, owners, len(candidates))


def _own(generated) -> float:
    return generated.logprob / max(len(generated.token_ids), 1)


def reference_name(store: Store, version: dict) -> str | None:
    if not version.get("parent_id"):
        return None
    return store.require_version(version["parent_id"])["name"]


def _parent_model(store: Store, version: dict):
    name = reference_name(store, version)
    if name is None:
        return None
    device = models.default_device()
    try:
        return models.load_version(store, name, device=device, dtype=sampling_dtype(device))[0]
    except ModelError as error:
        log.warning("selection: parent %s cannot be loaded (%s): pairs fall back to dissimilarity", name, error)
        return None


def _by_prompt(values: list[float], owners: list[int], n: int) -> list[list[float]]:
    grouped: list[list[float]] = [[] for _ in range(n)]
    for value, owner in zip(values, owners):
        grouped[owner].append(value)
    return grouped
