"""The rules of a vote: what it may carry, and when it can be taken back.

What a vote carries (checked here, whichever face sends it): reason tags from a fixed list, each
once; a comment and a better answer as text, trimmed and capped.

Taking a vote back: undo is for the vote just cast (a slipped key, a second thought), not for rewriting history:
- only within ``UNDO_WINDOW_S`` of casting it;
- never once a training round (pending, running or finished, unless it failed) has taken it as
  data: the round's model and its card's judgment hash would no longer match the database.

Example: assignment = undo_latest(store, user["id"])   # None: nothing to undo
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefloop.db.store import Store
from prefloop.errors import InputError, PrefloopError
from prefloop.safetext import first_control

UNDO_WINDOW_S = 10 * 60  # long enough to notice a slip, short enough that no round is waiting
REASON_TAGS = (
    "more helpful",
    "more accurate",
    "safer",
    "more concise",
    "better formatted",
    "follows instructions",
)
MAX_BETTER_ANSWER_CHARS = 8_000  # a full answer, several times the longest sampled one
MAX_COMMENT_CHARS = 2_000  # a paragraph; longer notes belong in the guidelines discussion
MAX_LIVE_PROMPT_CHARS = 4_000  # a live prompt is typed by hand; imports allow longer ones


def trained_through(store: Store) -> int:
    """The highest judgment id any round that did not fail has taken as data (0: none)."""
    marks = [int(r["metrics"].get("judgment_watermark") or 0)
             for r in store.list_rounds() if r["status"] != "failed"]
    return max(marks, default=0)


def undo_latest(store: Store, annotator_id: int) -> dict | None:
    """Remove the annotator's latest vote if the rules allow; its assignment, or None.

    Raises StoreError with the reason when the latest vote can no longer be taken back.
    """
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=UNDO_WINDOW_S)
    return store.undo_last_judgment(
        annotator_id,
        not_before=since.isoformat(timespec="milliseconds"),
        above_id=trained_through(store),
    )


def text_input(value: Any, name: str, limit: int) -> str:
    """Optional text from a form: trimmed and cut to ``limit``; anything but text is refused."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(f"{name} must be text")
    return value.strip()[:limit]


def typed_prompt(value: Any, what: str = "a prompt", limit: int = MAX_LIVE_PROMPT_CHARS) -> str:
    """A prompt or a conversation's next turn typed by hand: text, not empty, at most ``limit``
    characters, no control characters (the rule `prompts import` and `import` apply)."""
    if value is not None and not isinstance(value, str):
        raise InputError(f"the {what.split(' ', 1)[-1]} must be text")
    text = (value or "").strip()
    if not text:
        raise PrefloopError(f"type {what} first")
    if len(text) > limit:
        raise PrefloopError(f"{what} is limited to {limit:,} characters")
    control = first_control(text)
    if control:
        raise PrefloopError(f"the {what.split(' ', 1)[-1]} holds control character U+{ord(control[1]):04X}; remove it")
    return text


def reason_tags(reasons: Any) -> list[str]:
    """Known tags only, each once, in the order given (200,000 x 'safer' is one 'safer')."""
    if reasons is None:
        return []
    if not isinstance(reasons, (list, tuple)) or not all(isinstance(r, str) for r in reasons):
        raise InputError("reasons must be a list of tags")
    unknown = sorted(set(reasons) - set(REASON_TAGS))
    if unknown:
        shown = ", ".join(repr(u[:40]) for u in unknown[:3]) + (" …" if len(unknown) > 3 else "")
        raise PrefloopError(f"unknown reason tags: {shown}")
    return list(dict.fromkeys(reasons))
