"""Conversations that continue: the chosen answer becomes the assistant turn, a person adds the next.

After a vote that chose an answer (a or b, thumbs up, or a written better answer, which wins
over both), the conversation can go on: its history plus that answer plus a next user turn
becomes a new prompt, with ``parent_pair_id`` naming the pair it grew from (lineage from turn
to turn). The next user turn is typed, or picked from the follow-ups the prompt set supplies
(``followups`` on an imported prompt).

Who continues is the ``continuation`` setting:

* ``same_annotator``: the voter, right after voting; the next pair is streamed to them, as a live
  prompt is (source ``live``: their own, never sampled for others);
* ``anyone``: any annotator may continue the latest conversation waiting for a next turn; the new
  prompt joins the queue (source ``conversation``), sampled before untouched prompts;
* ``off``: no continuation.

Models read a long history cut from the left at the token budget (prefloop.engine.history), in
sampling and in training alike; the stored prompt keeps every turn.
"""

from __future__ import annotations

from typing import Any

from prefloop.annotate.prompts import MAX_PROMPT_CHARS
from prefloop.annotate.sampler import conversation
from prefloop.db.store import Store
from prefloop.errors import InputError, PrefloopError
from prefloop.safetext import first_control

CONTINUABLE_PURPOSES = ("train", "live")  # arena and gold pairs are evaluation, not conversations
SOURCE_TYPED_BY_VOTER = "live"
SOURCE_CONVERSATION = "conversation"


def chosen_answer(pair: dict, judgment: dict) -> str | None:
    """The answer a vote chose: a written better answer first, then a/b, then a thumbs up."""
    better = (judgment.get("better_answer") or "").strip()
    if better:
        return better
    choice = judgment.get("choice")
    if choice == "a" or (choice == "up" and pair.get("mode") == "single"):
        return pair["text_a"]
    if choice == "b":
        return pair["text_b"]
    return None


def history_after(store: Store, pair_id: int, judgment: dict) -> list[dict] | None:
    """The pair's whole conversation plus the chosen answer as the assistant turn (None: nothing
    was chosen, so there is nothing to continue from)."""
    pair = store.pair(pair_id)
    if pair is None or pair["purpose"] not in CONTINUABLE_PURPOSES:
        return None
    answer = chosen_answer(pair, judgment)
    if answer is None:
        return None
    prompt = store.prompt(pair["prompt_id"])
    return conversation(prompt) + [{"role": "assistant", "content": answer}]


def waiting_conversation(store: Store, annotator_id: int) -> dict | None:
    """The conversation this annotator may continue now, or None.

    ``{"pair_id", "history", "followups"}``: under ``same_annotator`` their own latest vote, under
    ``anyone`` the latest vote by anyone, in both cases only if it chose an answer and its
    conversation has not been continued yet.
    """
    mode = store.get_setting("continuation")
    if mode == "off":
        return None
    mine = annotator_id if mode == "same_annotator" else None
    judgment = store.latest_continuable_judgment(mine, CONTINUABLE_PURPOSES)
    if judgment is None:
        return None
    history = history_after(store, judgment["pair_id"], judgment)
    if history is None:
        return None
    prompt = store.prompt(store.pair(judgment["pair_id"])["prompt_id"])
    return {"pair_id": judgment["pair_id"], "history": history, "followups": list(prompt.get("followups") or [])}


def next_turn_text(value: Any) -> str:
    """A typed or picked next user turn, under the rules every prompt obeys."""
    if value is not None and not isinstance(value, str):
        raise InputError("the next turn must be text")
    text = (value or "").strip()
    if not text:
        raise PrefloopError("write the next user turn, or pick a follow-up")
    if len(text) > MAX_PROMPT_CHARS:
        raise PrefloopError(f"a turn is limited to {MAX_PROMPT_CHARS:,} characters")
    control = first_control(text)
    if control:
        raise PrefloopError(f"the turn holds control character U+{ord(control[1]):04X}; remove it")
    return text


def continued_prompt(store: Store, annotator_id: int, pair_id: int, next_turn: Any) -> dict:
    """The prompt (not stored yet) that continues ``pair_id``'s conversation with ``next_turn``.

    Refused (PrefloopError, nothing stored) when continuation is off, when this annotator may not
    continue that conversation now, or when it was continued already.
    """
    text = next_turn_text(next_turn)
    waiting = waiting_conversation(store, annotator_id)
    if waiting is None or waiting["pair_id"] != pair_id:
        raise PrefloopError("this conversation cannot be continued now (continued already, or not yours)")
    parent = store.prompt(store.pair(pair_id)["prompt_id"])
    followups = [f for f in waiting["followups"] if f.strip() != text]
    typed = len(followups) == len(waiting["followups"])
    private = typed and store.get_setting("continuation") == "same_annotator"
    return {
        "text": text,
        "messages": waiting["history"] + [{"role": "user", "content": text}],
        "kind": parent.get("kind"),
        "source": SOURCE_TYPED_BY_VOTER if private else SOURCE_CONVERSATION,
        "split": parent["split"],
        "parent_pair_id": pair_id,
        "followups": followups,
    }
