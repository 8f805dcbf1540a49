"""Held-out preference accuracy: does a version's implicit reward agree with people?

DPO's implicit reward of a response is ``r(x, y) = log p_version(y | x) - log p_reference(y | x)``
(up to beta). A version "agrees" with a held-out judgment when r(chosen) > r(rejected); accuracy
is the share of rows where it does. The reference defaults to the version's parent, which makes
the number answer "did this round move the model towards what people prefer?". For the base
version (no parent) and no explicit reference, the question has no meaning: we return None
rather than a misleading 0 or 1 (comparing a model with itself gives r = 0 everywhere).
Ties (equal rewards) count as disagreement.

Margins are per token (``per_token=True``, the default): r(x, y) / |y|. A sum over tokens is
confounded by length: when a round lowers every token's log-prob a little (a uniform drift, not a
taste), a summed reward falls more for the longer answer, so under a judge who prefers shorter
answers the drift alone reads as agreement. Divided by the answer's length, a uniform drift
cancels. An answer that was cut off (``finished=False``) is scored without an end-of-turn token,
as it was generated and as it is trained.
"""

from __future__ import annotations

from prefloop.db.store import Store
from prefloop.engine import models

MAX_LENGTH = 512  # same as the rounds' default: longer held-out answers are truncated, not dropped


def preference_accuracy(
    store: Store,
    version: str,
    rows: list[dict],
    reference: str | None = None,
    *,
    batch_size: int = 8,
    max_length: int = MAX_LENGTH,
) -> float | None:
    """Share of rows where the version's implicit reward prefers ``chosen``; None if undefined."""

    if not rows:
        return None
    if reference is None:
        row = store.require_version(version)
        if not row["parent_id"]:
            return None
        reference = store.require_version(row["parent_id"])["name"]
    if reference == version:
        return None
    policy, tokenizer = models.load_version(store, version)
    policy_margin = reward_margins(policy, tokenizer, rows, batch_size=batch_size, max_length=max_length)
    ref_model, _ = models.load_version(store, reference)
    ref_margin = reward_margins(ref_model, tokenizer, rows, batch_size=batch_size, max_length=max_length)
    wins = sum(1 for p, r in zip(policy_margin, ref_margin) if p - r > 0)
    return wins / len(rows)


def reward_margins(
    model, tokenizer, rows: list[dict], *, batch_size: int = 8, max_length: int = MAX_LENGTH, per_token: bool = True
) -> list[float]:
    """log p(chosen | prompt) - log p(rejected | prompt) under one model, per row; each term
    divided by its answer's token count when ``per_token`` (see the module docstring)."""
    chosen, rejected = answer_logps(model, tokenizer, rows, batch_size=batch_size, max_length=max_length)
    if per_token:
        return [c / max(nc, 1) - r / max(nr, 1) for (c, nc), (r, nr) in zip(chosen, rejected)]
    return [c - r for (c, _), (r, _) in zip(chosen, rejected)]


def answer_logps(model, tokenizer, rows: list[dict], *, batch_size: int = 8, max_length: int = MAX_LENGTH):
    """(summed log-prob, tokens) of each row's chosen and of its rejected answer; a cut-off answer
    (``chosen_cut_off`` / ``rejected_cut_off``) without its end-of-turn token."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    chosen, rejected = (encoded_logps(model, encode_answers(tokenizer, rows, side, max_length), pad, batch_size)
                        for side in ("chosen", "rejected"))
    return chosen, rejected


def encode_answers(tokenizer, rows: list[dict], side: str, max_length: int = MAX_LENGTH) -> list[tuple[list[int], int]]:
    """Each row's prompt and its ``side`` answer ("chosen" / "rejected") as (token ids, completion
    start); a cut-off answer (``<side>_cut_off``) without its end-of-turn token."""
    return [_encode(tokenizer, r["prompt"], r[side], max_length, not r.get(f"{side}_cut_off")) for r in rows]


def sequence_logps(
    model, tokenizer, examples, batch_size: int = 8, max_length: int = MAX_LENGTH, *,
    finished: list[bool] | None = None, with_counts: bool = False,
) -> list:
    """Summed log-probability of each completion given its prompt (chat template applied), no grad;
    ``(sum, tokens)`` pairs with ``with_counts``. ``finished[i]`` False: no end-of-turn token."""
    finished = finished or [True] * len(examples)
    encoded = [_encode(tokenizer, prompt, completion, max_length, done)
               for (prompt, completion), done in zip(examples, finished)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = encoded_logps(model, encoded, pad, batch_size)
    return out if with_counts else [value for value, _ in out]


def encoded_logps(model, encoded: list[tuple[list[int], int]], pad: int, batch_size: int = 8) -> list[tuple[float, int]]:
    """(summed log-prob, tokens) of rows already encoded as (token ids, completion start), no grad,
    in the caller's order (e.g. a sampled answer's exact token ids, annotate/selection.py)."""
    import torch

    # Batches of similar length waste little on padding; results go back in the caller's order.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    device = next(model.parameters()).device
    out: list = [(0.0, 0)] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                indices = order[start : start + batch_size]
                sums, counts = batch_logps(model, [encoded[i] for i in indices], pad, device)
                for i, value, count in zip(indices, sums.tolist(), counts.tolist()):
                    out[i] = (value, int(count))
    finally:
        model.train(was_training)
    return out


def batch_logps(model, batch: list[tuple[list[int], int]], pad: int, device=None):
    """(summed completion log-probs, completion token counts) of encoded rows, as tensors (the
    caller decides about gradients)."""
    log_probs, targets, mask = completion_log_probs(model, batch, pad, device)
    token_logps = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(-1), mask.sum(-1)


def completion_log_probs(model, batch: list[tuple[list[int], int]], pad: int, device=None):
    """(log-distributions over the vocabulary at every kept position, the tokens they predict, the
    mask of completion positions) of encoded rows; float32.

    Rows are padded on the left, so every completion ends at the last position: the LM head (and
    its soft-max over the whole vocabulary, most of the cost of a small model) runs only over
    the last positions that hold completion tokens, never over prompts or padding. Position ids
    count from each row's first real token, so a row's numbers do not depend on its batch mates.
    """
    import torch

    width = max(len(ids) for ids, _ in batch)
    keep = max(len(ids) - start for ids, start in batch) + 1
    keep = min(keep, width)
    input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    scored = torch.zeros((len(batch), width), dtype=torch.bool)
    for i, (ids, start) in enumerate(batch):
        offset = width - len(ids)
        input_ids[i, offset:] = torch.tensor(ids)
        attention[i, offset:] = 1
        scored[i, offset + start :] = True
    positions = (attention.cumsum(-1) - 1).clamp_min(0)
    if device is not None:
        input_ids, attention, scored, positions = (t.to(device) for t in (input_ids, attention, scored, positions))
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, logits_to_keep=keep).logits
    logits = logits[:, :-1].float()  # position t predicts token t + 1
    return torch.log_softmax(logits, dim=-1), input_ids[:, width - keep + 1 :], scored[:, width - keep + 1 :]


def paired_scores(candidate, parent, encoded: list[tuple[list[int], int]], pad: int, batch_size: int = 8) -> list[dict]:
    """Per encoded row, under a candidate and its parent at once: summed log-probs of the
    completion under each (``candidate``, ``parent``), its token count (``tokens``), and the exact
    KL(parent || candidate) summed over its positions (``kl``).

    The KL is taken over the whole vocabulary at each position the completion visits,
    sum_v p_parent(v) (log p_parent(v) - log p_candidate(v)), not estimated from the sampled tokens
    alone: the answers were drawn with temperature and top-p, not from p_parent itself, so the
    sampled estimate E[log p_parent(y) - log p_candidate(y)] is biased (it can go negative) and is
    the same number as the chosen answers' log-prob drop. Per position it is never negative.

    ``parent`` may be a context manager factory instead of a model (a PEFT model's
    ``disable_adapter``): then ``candidate`` is run once with and once without its adapter.
    """
    import contextlib

    import torch

    scope = parent if callable(parent) and not hasattr(parent, "parameters") else contextlib.nullcontext
    parent_model = candidate if scope is parent else parent
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    device = next(candidate.parameters()).device
    out: list[dict] = [{}] * len(encoded)
    modes = [(m, m.training) for m in {id(candidate): candidate, id(parent_model): parent_model}.values()]
    for m, _ in modes:
        m.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                indices = order[start : start + batch_size]
                batch = [encoded[i] for i in indices]
                cand, targets, mask = completion_log_probs(candidate, batch, pad, device)
                with scope():
                    par, _, _ = completion_log_probs(parent_model, batch, pad, device)
                kl = ((par.exp() * (par - cand)).sum(-1) * mask).sum(-1)
                pick = targets.unsqueeze(-1)
                cand_sum = (cand.gather(-1, pick).squeeze(-1) * mask).sum(-1)
                par_sum = (par.gather(-1, pick).squeeze(-1) * mask).sum(-1)
                del cand, par
                for i, c, p, n, k in zip(indices, cand_sum.tolist(), par_sum.tolist(), mask.sum(-1).tolist(), kl.tolist()):
                    out[i] = {"candidate": c, "parent": p, "tokens": int(n), "kl": max(k, 0.0)}
    finally:
        for m, training in modes:
            m.train(training)
    return out


def _encode(
    tokenizer, prompt: list[dict], completion: list[dict], max_length: int, finished: bool = True
) -> tuple[list[int], int]:
    """Token ids of prompt+completion and where the completion starts (at least 1 token in); a
    completion that did not finish ends where it was cut (no end-of-turn token)."""
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    if finished:
        full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    else:
        full_text = prompt_text + completion[-1]["content"]
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    common = 0
    for a, b in zip(prompt_ids, full_ids):
        if a != b:
            break
        common += 1
    common = max(1, common)
    return full_ids[:max_length], min(common, max_length - 1)
