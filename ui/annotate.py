"""The Annotate tab and the sign-in page.

Handlers come first and are plain functions of ``(store, token, ...)`` returning a ``Screen``
(what the tab shows), so tests call them without a server; ``build_*`` functions at the bottom
only lay out Gradio components and wire events to those handlers.

Screen sides versus generations: a pair's generations are "a" and "b" in the database; which one
is shown on the *left* is randomised per annotator when the pair is served (the assignment's
``left_generation_id``). Buttons talk about the screen ("A is better" = the left response), and
``side_to_choice`` translates to generation terms before anything is stored.

Example:
    screen = next_pair(store, token)          # serve a pair
    screen = vote(store, token, screen.pair, "left")   # left response is better
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Iterator

from prefloop.annotate import auth, conversations, guidelines, votes
from prefloop.annotate.sampler import stream_live_pair, stream_pair_for
from prefloop.annotate.votes import (
    MAX_BETTER_ANSWER_CHARS,
    MAX_COMMENT_CHARS,
    MAX_LIVE_PROMPT_CHARS,
    REASON_TAGS,
    reason_tags,
    text_input,
)
from prefloop.db.store import Store
from prefloop.errors import InputError, PrefloopError
from prefloop.safetext import first_control
from prefloop.ui.render import (
    highlight_css,
    markdown_text,
    panel,
    render_conversation,
    render_markdown,
    render_plain,
    render_prompt,
)
from prefloop.ui.server import SIGN_IN_JS, SIGN_IN_PATH, hardened_launch_options, with_session

SIDES = ("left", "right", "tie", "both_bad", "up", "down")
# (side, label, elem_id, key): the keyboard script clicks the visible button with this key
VOTE_BUTTONS = (
    ("left", "A is better (1)", "pf-vote-left", "1"),
    ("right", "B is better (2)", "pf-vote-right", "2"),
    ("tie", "Tie (3)", "pf-vote-tie", "3"),
    ("both_bad", "Both bad (4)", "pf-vote-both-bad", "4"),
)
# a single answer (thumbs item): the same keys as A / B, so hands stay where they are
THUMBS_BUTTONS = (
    ("up", "👍 Good (1)", "pf-thumbs-up", "1"),
    ("down", "👎 Bad (2)", "pf-thumbs-down", "2"),
)
SKIP_BUTTON = ("Skip (S)", "pf-skip", "s")
UNDO_BUTTON = ("Undo (U)", "pf-undo", "u")
POLL_SECONDS = 3  # how often an empty queue is re-checked; cheap (one count query)


@dataclass
class Screen:
    """Everything the Annotate tab shows after one action."""

    pair: dict | None = None  # the shown pair (ids + shown_at); None when nothing is votable
    prompt_html: str = ""
    left_html: str = ""
    right_html: str = ""
    message: str = ""
    progress: str = ""
    waiting: bool = False  # queue empty: poll until a pair arrives
    clear_inputs: bool = False  # reasons / comment / better answer belong to the last pair
    single: bool = False  # one answer to judge thumbs up or down (pairs.mode "single")
    # the conversation the annotator may continue now (annotate/conversations.py); None: keep
    # the panel as it is, {} : hide it
    continuation: dict | None = None


logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# handlers: plain functions, no Gradio
# --------------------------------------------------------------------------------------------
def sign_in(store: Store, name: str, password: str, client: str = "") -> tuple[str | None, str]:
    """(session token or None, message). Wrong credentials never raise: they become a message."""
    try:
        token, user = auth.sign_in(store, name, password, client=client)
    except PrefloopError as error:
        return None, str(error)
    return token, f"Signed in as **{markdown_text(user['name'])}** ({user['role']})."


def sign_out(store: Store, token: str | None) -> tuple[None, str]:
    auth.sign_out(store, token)
    return None, "Signed out."


def visible_tabs(user: dict | None) -> dict[str, bool]:
    """Which tabs a user sees. Hiding is courtesy only: every handler re-checks the role."""
    signed_in = user is not None
    maintainer = signed_in and user["role"] == "maintainer"
    return {"annotate": signed_in, "demo": signed_in, "train": maintainer, "evaluate": maintainer}


def progress_line(store: Store, user: dict) -> str:
    """'alice · 12 today · 340 overall · 14 pairs in queue · model v2' as Markdown."""
    counts = store.annotator_counts(user["id"])
    version = store.active_version()
    queue = store.queued_pairs(version["id"]) if version else 0
    model = f"model **{markdown_text(version['name'])}**" if version else "no active model"
    return (
        f"**{markdown_text(user['name'])}** ({user['role']}) · {counts['today']} today · "
        f"{counts['total']} overall · {queue} pairs in queue · {model}"
    )


def next_pair(store: Store, token: str | None, message: str = "", rng=None) -> Screen:
    """Serve the annotator's next pair (the same one again if they had one open)."""
    user = auth.require_role(store, token, "annotator")
    version = store.active_version()
    assignment = store.serve_pair(user["id"], version["id"] if version else None, rng=rng)
    if assignment is None:
        return _waiting_screen(store, user, version, message)
    return _pair_screen(store, user, assignment, message)


def side_to_choice(pair: dict, side: str) -> str:
    """A screen side ('left'/'right'/'tie'/'both_bad', or 'up'/'down' on a single answer) ->
    the stored choice ('a'/'b'/...)."""
    if side not in SIDES:
        raise PrefloopError(f"unknown vote {side!r}")
    if side in ("tie", "both_bad", "up", "down"):
        return side
    left_is_a = pair["left_generation_id"] == pair["generation_a_id"]
    return "a" if (side == "left") == left_is_a else "b"


def vote(
    store: Store,
    token: str | None,
    pair: dict | None,
    side: str,
    reasons: list[str] | None = None,
    comment: str | None = None,
    better_answer: str | None = None,
    rng=None,
) -> Screen:
    """Record a vote on the shown pair, then serve the next one.

    A repeated vote on the same pair (double click) records nothing new; a refused vote (pair
    judged enough, not served to you) says why and moves on.
    """
    user = auth.require_role(store, token, "annotator")
    if not pair:
        return next_pair(store, token, "No pair was shown; here is the next one.", rng=rng)
    pair = shown_pair(pair)
    choice = side_to_choice(pair, side)
    reasons = reason_tags(reasons)
    comment = text_input(comment, "the comment", MAX_COMMENT_CHARS)
    better_answer = text_input(better_answer, "the better answer", MAX_BETTER_ANSWER_CHARS)
    try:
        _, created = store.record_judgment(
            user["id"],
            pair["pair_id"],
            choice,
            better_answer=better_answer or None,
            reasons=reasons or None,
            comment=comment or None,
            elapsed_ms=_elapsed_ms(pair),
        )
    except PrefloopError as error:
        screen = next_pair(store, token, f"⚠️ {error}", rng=rng)
        screen.clear_inputs = True
        return screen
    label = {"left": "A is better", "right": "B is better", "tie": "Tie", "both_bad": "Both bad",
             "up": "👍 good", "down": "👎 bad"}
    said = f"Recorded: {label[side]}." if created else "That vote was already recorded."
    screen = next_pair(store, token, said, rng=rng)
    screen.clear_inputs = True
    screen.continuation = conversations.waiting_conversation(store, user["id"]) or {}
    return screen


def skip(store: Store, token: str | None, pair: dict | None, rng=None) -> Screen:
    """Skip the shown pair: it is never served to you again."""
    user = auth.require_role(store, token, "annotator")
    if pair:
        store.skip_pair(user["id"], shown_pair(pair)["pair_id"])
    screen = next_pair(store, token, "Skipped.", rng=rng)
    screen.clear_inputs = True
    return screen


def undo(store: Store, token: str | None, pair: dict | None = None, rng=None) -> Screen:
    """Take back your latest vote and show that pair again, on the same sides as before.

    Only a vote from the last ``votes.UNDO_WINDOW_S`` that no training round has taken yet.
    """
    user = auth.require_role(store, token, "annotator")
    assignment = votes.undo_latest(store, user["id"])
    if assignment is None:
        return next_pair(store, token, "Nothing to undo.", rng=rng)
    return _pair_screen(store, user, assignment, "Undone: your last vote was removed; vote again.")


def live_prompt(
    store: Store, token: str | None, prompt_text: str, params=None
) -> Iterator[Screen]:
    """Stream both responses to an annotator's own prompt, then make the pair votable."""
    user = auth.require_role(store, token, "annotator")
    if prompt_text is not None and not isinstance(prompt_text, str):
        raise InputError("the prompt must be text")
    prompt_text = (prompt_text or "").strip()
    if not prompt_text:
        raise PrefloopError("type a prompt first")
    if len(prompt_text) > MAX_LIVE_PROMPT_CHARS:
        raise PrefloopError(f"prompts are limited to {MAX_LIVE_PROMPT_CHARS:,} characters")
    control = first_control(prompt_text)  # the rule `prompts import` and `import` apply
    if control:
        raise PrefloopError(f"the prompt holds control character U+{ord(control[1]):04X}; remove it")
    prompt_html = render_prompt(prompt_text)
    progress = progress_line(store, user)
    for item in stream_live_pair(store, user["id"], prompt_text, params):
        if item and item[0] == "__done__":
            assignment = store.assignment(user["id"], int(item[1]))
            yield _pair_screen(
                store, user, assignment, "Both responses are ready: vote as usual.", clear=True
            )
            return
        text_a, text_b = item
        yield Screen(
            prompt_html=prompt_html,
            left_html=panel("Response A", render_plain(text_a), "pf-left"),
            right_html=panel("Response B", render_plain(text_b), "pf-right"),
            message="Generating both responses…",
            progress=progress,
        )


def continue_conversation(
    store: Store, token: str | None, pair_id: Any, next_turn: Any, followup: Any = None
) -> Iterator[Screen]:
    """Continue the conversation of ``pair_id``: the chosen answer is its assistant turn, then
    ``next_turn`` (typed) or ``followup`` (picked from the prompt set's). Under the
    ``same_annotator`` setting the next pair streams to this annotator; under ``anyone`` it joins
    the queue for everyone. Nothing is stored when a check fails."""
    user = auth.require_role(store, token, "annotator")
    if isinstance(pair_id, bool) or not isinstance(pair_id, int):
        raise InputError("no conversation is waiting to be continued; vote first")
    if followup is not None and not isinstance(followup, str):
        raise InputError("the follow-up must be text")
    typed = next_turn.strip() if isinstance(next_turn, str) else next_turn
    turn = typed if typed else followup  # a typed turn wins over a picked follow-up
    prompt = conversations.continued_prompt(store, user["id"], pair_id, turn)
    if store.get_setting("continuation") == "anyone":
        store.add_prompts([prompt])
        screen = next_pair(store, token, "Thanks: the conversation continues in the queue, for anyone to judge.")
        screen.continuation = conversations.waiting_conversation(store, user["id"]) or {}
        yield screen
        return
    prompt_html = _prompt_panel({"prompt": prompt["text"], "prompt_messages": prompt["messages"]})
    progress = progress_line(store, user)
    for item in stream_pair_for(store, user["id"], prompt):
        if item and item[0] == "__done__":
            assignment = store.assignment(user["id"], int(item[1]))
            screen = _pair_screen(store, user, assignment, "The conversation goes on: vote as usual.", clear=True)
            screen.continuation = {}
            yield screen
            return
        text_a, text_b = item
        yield Screen(
            prompt_html=prompt_html,
            left_html=panel("Response A", render_plain(text_a), "pf-left"),
            right_html=panel("Response B", render_plain(text_b), "pf-right"),
            message="Generating both responses…",
            progress=progress,
            continuation={},
        )


# -- inputs: every event value checked for type and size before use ----------------------------
def shown_pair(pair: Any) -> dict:
    """The pair state the page sends back, checked: ids are whole numbers, times numbers/text."""
    ids = ("pair_id", "left_generation_id", "generation_a_id", "generation_b_id")
    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not isinstance(pair, dict) or not all(
        whole(pair.get(k)) or (k == "generation_b_id" and pair.get(k) is None) for k in ids  # None: thumbs
    ):
        raise InputError("the shown pair is missing or malformed; press Refresh")
    shown_at, served_at = pair.get("shown_at"), pair.get("served_at")
    if (shown_at is not None and (isinstance(shown_at, bool) or not isinstance(shown_at, (int, float)))) or (
        served_at is not None and not isinstance(served_at, str)
    ):
        raise InputError("the shown pair is missing or malformed; press Refresh")
    return {k: pair[k] for k in ids} | {"shown_at": shown_at, "served_at": served_at}


# -- helpers ----------------------------------------------------------------------------------
# A response that hit max_new_tokens (finish_reason "length") stops mid-thought: say so, so the
# annotator judges what is there, not an ending that never came.
CUT_OFF_TITLE = " (cut off)"
CUT_OFF_NOTE = '<p class="pf-cut-off"><em>cut off: this response hit the length limit</em></p>'


def _pair_screen(
    store: Store, user: dict, assignment: dict, message: str = "", clear: bool = False
) -> Screen:
    if assignment.get("mode") == "single":
        return _single_screen(store, user, assignment, message, clear)
    left_is_a = assignment["left_generation_id"] == assignment["generation_a_id"]
    left_text, right_text = (
        (assignment["text_a"], assignment["text_b"])
        if left_is_a
        else (assignment["text_b"], assignment["text_a"])
    )
    sides = ("a", "b") if left_is_a else ("b", "a")
    left_cut, right_cut = (assignment.get(f"finish_reason_{side}") == "length" for side in sides)
    pair = {
        "pair_id": assignment["id"],
        "left_generation_id": assignment["left_generation_id"],
        "generation_a_id": assignment["generation_a_id"],
        "generation_b_id": assignment["generation_b_id"],
        "shown_at": time.time(),
        "served_at": assignment.get("served_at"),
    }
    return Screen(
        pair=pair,
        prompt_html=_prompt_panel(assignment),
        left_html=panel("Response A" + (CUT_OFF_TITLE if left_cut else ""),
                        render_markdown(left_text) + (CUT_OFF_NOTE if left_cut else ""), "pf-left"),
        right_html=panel("Response B" + (CUT_OFF_TITLE if right_cut else ""),
                         render_markdown(right_text) + (CUT_OFF_NOTE if right_cut else ""), "pf-right"),
        message=message,
        progress=progress_line(store, user),
        clear_inputs=clear,
    )


def _single_screen(store: Store, user: dict, assignment: dict, message: str, clear: bool) -> Screen:
    """One answer to judge thumbs up or down: it takes the left panel, the right one stays empty."""
    cut = assignment.get("finish_reason_a") == "length"
    pair = {
        "pair_id": assignment["id"],
        "left_generation_id": assignment["left_generation_id"],
        "generation_a_id": assignment["generation_a_id"],
        "generation_b_id": None,
        "shown_at": time.time(),
        "served_at": assignment.get("served_at"),
    }
    note = '<div class="pf-waiting">One answer: is it good? 👍 (1) or 👎 (2)</div>'
    return Screen(
        pair=pair,
        prompt_html=_prompt_panel(assignment),
        left_html=panel("Response" + (CUT_OFF_TITLE if cut else ""),
                        render_markdown(assignment["text_a"]) + (CUT_OFF_NOTE if cut else ""), "pf-left"),
        right_html=panel("Thumbs", note, "pf-right"),
        message=message,
        progress=progress_line(store, user),
        clear_inputs=clear,
        single=True,
    )


def _prompt_panel(assignment: dict) -> str:
    """The prompt, or the whole conversation with every turn's role when it is a chat (turns the
    model did not read, cut at the token budget, are marked)."""
    messages = assignment.get("prompt_messages")
    if isinstance(messages, str):
        messages = json.loads(messages)
    if messages and len(messages) > 1:
        params = assignment.get("params_a")
        params = json.loads(params) if isinstance(params, str) else (params or {})
        cut = int(params.get("history_dropped_turns") or 0)
        turns = sum(1 for m in messages if m.get("role") != "system")
        return panel(f"Conversation ({turns} turns): judge the answers to the last turn",
                     render_conversation(messages, cut=cut), "pf-prompt pf-chat")
    return panel("Prompt", render_prompt(assignment["prompt"]), "pf-prompt")


def continuation_view(waiting: dict) -> tuple[str, str, list[str]]:
    """(accordion label, the conversation so far as HTML, follow-up choices) of a waiting one."""
    turns = sum(1 for m in waiting["history"] if m.get("role") != "system")
    label = f"Continue this conversation ({turns} turns so far): write the next user turn"
    return label, render_conversation(waiting["history"]), list(waiting["followups"])


def _waiting_screen(store: Store, user: dict, version: dict | None, message: str) -> Screen:
    if version is None:
        note = "No model version is active yet: a maintainer runs `prefloop init`."
    else:
        queue = store.queued_pairs(version["id"])
        note = (
            f"⏳ The sampler is preparing pairs: {queue} in queue, version "
            f"{markdown_text(version['name'])}. This page checks again every {POLL_SECONDS} s "
            "(or press Refresh); meanwhile you can try your own prompt below."
        )
    empty = '<div class="pf-waiting">No pair to judge right now.</div>'
    return Screen(
        prompt_html=panel("Prompt", empty, "pf-prompt"),
        left_html=panel("Response A", "", "pf-left"),
        right_html=panel("Response B", "", "pf-right"),
        message=f"{message} {note}".strip(),
        progress=progress_line(store, user),
        waiting=True,
    )


def _elapsed_ms(pair: dict) -> int | None:
    """Time from the pair being shown to the vote, measured on the server."""
    if pair.get("shown_at"):
        elapsed = (time.time() - float(pair["shown_at"])) * 1000
        return max(1, int(elapsed)) if math.isfinite(elapsed) else None
    if pair.get("served_at"):
        try:
            served = dt.datetime.fromisoformat(pair["served_at"])
            return max(1, int((dt.datetime.now(dt.timezone.utc) - served).total_seconds() * 1000))
        except (ValueError, TypeError, OverflowError):
            return None
    return None


# --------------------------------------------------------------------------------------------
# Gradio wiring
# --------------------------------------------------------------------------------------------
KEYBOARD_JS = """
<script>
(() => {
  const keys = %s;
  document.addEventListener('keydown', (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    const target = event.target;
    const tag = ((target && target.tagName) || '').toLowerCase();
    if (tag === 'input' || tag === 'textarea' || tag === 'select' || (target && target.isContentEditable)) {
      if (event.key === 'Escape' && target.blur) target.blur();  // Esc: back to shortcuts
      return;
    }
    const ids = keys[event.key.toLowerCase()] || [];
    // one key may name a pair's button and a thumbs item's: the visible one is clicked
    const button = ids.map((id) => document.getElementById(id))
      .find((b) => b && !b.disabled && b.offsetParent !== null);  // not in a hidden tab or row
    if (!button) return;
    event.preventDefault();
    button.click();
  });
})();
</script>
"""

APP_CSS = """
.pf-panel { border: 1px solid var(--border-color-primary); border-radius: 8px;
  background: var(--background-fill-primary); }
.pf-panel-title { font-weight: 600; padding: 6px 14px; border-bottom: 1px solid var(--border-color-primary);
  color: var(--body-text-color-subdued); }
.pf-panel-body { padding: 4px 14px; overflow: auto; overflow-wrap: anywhere; }
.pf-prompt .pf-panel-body { max-height: 240px; }
.pf-chat .pf-panel-body { max-height: 420px; }
.pf-turn { margin: 6px 0; padding-left: 10px; border-left: 3px solid var(--border-color-primary); }
.pf-turn-assistant { border-left-color: var(--color-accent-soft); }
.pf-role { font-size: 0.8em; font-weight: 600; text-transform: uppercase; color: var(--body-text-color-subdued); }
.pf-earlier summary { cursor: pointer; color: var(--body-text-color-subdued); font-size: 0.9em; }
.pf-left .pf-panel-body, .pf-right .pf-panel-body { max-height: 460px; min-height: 200px; }
.pf-md pre { white-space: pre-wrap; background: var(--background-fill-secondary);
  padding: 8px 10px; border-radius: 6px; font-size: 0.9em; }
.pf-md pre.pf-stream { background: none; padding: 0; font-family: inherit; font-size: inherit; }
.pf-truncated { color: var(--body-text-color-subdued); font-style: italic; }
.pf-empty, .pf-waiting { color: var(--body-text-color-subdued); font-style: italic; }
.pf-waiting { padding: 24px 0; text-align: center; }
.pf-keys { color: var(--body-text-color-subdued); font-size: 0.9em; }
.pf-keys kbd { border: 1px solid var(--border-color-primary); border-radius: 4px;
  padding: 0 5px; font-family: monospace; background: var(--background-fill-secondary); }
#pf-signin { max-width: 420px; margin: 64px auto; padding: 24px;
  border: 1px solid var(--border-color-primary); border-radius: 12px; }
#pf-message p { margin: 0; }
#pf-signin-form { display: flex; flex-direction: column; gap: 12px; }
#pf-signin-form h2, #pf-signin-form p { margin: 0; }
#pf-signin-form .pf-field { display: flex; flex-direction: column; gap: 4px; font-weight: 600; }
#pf-signin-form input { padding: 8px 10px; font: inherit; font-weight: normal; color: var(--body-text-color);
  background: var(--input-background-fill); border: 1px solid var(--input-border-color);
  border-radius: var(--input-radius); }
#pf-signin-form button { padding: 10px; font: inherit; font-weight: 600; cursor: pointer; border: none;
  color: var(--button-primary-text-color); background: var(--button-primary-background-fill);
  border-radius: var(--button-large-radius); }
#pf-signin-form button:disabled { opacity: 0.6; cursor: wait; }
#pf-signin-message { min-height: 1.4em; }
"""


def keyboard_head() -> str:
    """The ``<head>`` snippet that turns 1/2/3/4/S/U into clicks on the vote buttons."""
    import json

    keys: dict[str, list[str]] = {}
    for _, _, elem_id, key in VOTE_BUTTONS + THUMBS_BUTTONS + (("", "", SKIP_BUTTON[1], SKIP_BUTTON[2]),
                                                              ("", "", UNDO_BUTTON[1], UNDO_BUTTON[2])):
        keys.setdefault(key, []).append(elem_id)
    return KEYBOARD_JS % json.dumps(keys)


def launch_options(store: Store) -> dict[str, Any]:
    """Page-level options that Gradio 6 takes in ``launch()`` (no longer in ``gr.Blocks``), the
    switches that close run history, uploads and deep links, and the sign-in and sign-out routes
    for ``store``'s accounts (``prefloop.ui.server``).

    System fonts: the default theme fetches Google Fonts, which an offline or private
    deployment cannot (and should not) reach.
    """
    import gradio as gr

    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
    )
    return {"head": keyboard_head(), "css": APP_CSS + highlight_css(), "theme": theme,
            **hardened_launch_options(store)}


def shortcuts_markdown() -> str:
    keys = [(label.split(" (")[0], key) for _, label, _, key in VOTE_BUTTONS]
    keys += [("Skip", "S"), ("Undo", "U")]
    keys[:2] = [("A is better / 👍 good", "1"), ("B is better / 👎 bad", "2")]
    shown = " · ".join(f"<kbd>{key.upper()}</kbd> {name}" for name, key in keys)
    return f'<div class="pf-keys">Keyboard: {shown} · <kbd>Esc</kbd> leaves a text box</div>'


def guidelines_view(store: Store, token: str | None) -> tuple[str, str, bool]:
    """(accordion label, rendered guidelines, visible) for the signed-in annotator.

    Nothing is shown before sign-in or while no guidelines exist. The text is a maintainer's
    Markdown, rendered inertly like every other stored text.
    """
    try:
        current = guidelines.current_for(store, token)
    except PrefloopError:
        return "Guidelines", "", False
    if current is None:
        return "Guidelines", "", False
    label = f"Guidelines (version {current['id']}; your votes record it)"
    return label, render_markdown(current["text"], limit=guidelines.MAX_GUIDELINE_CHARS), True


def build_annotate_tab(store: Store) -> dict:
    """Lay out the Annotate tab inside the current Blocks; returns the components app.py needs.

    Every handler reads the session token from the event's cookie (``with_session``); the
    returned "load" and "guidelines" are plain functions of the token.

    Example: parts = build_annotate_tab(store)  # inside `with gr.Tab("Annotate"):`
    """
    import gradio as gr

    pair_state = gr.State(None)
    timer = gr.Timer(POLL_SECONDS, active=False)
    with gr.Accordion("Guidelines", open=False, visible=False, elem_id="pf-guidelines-box") as guide_box:
        guide_html = gr.HTML(elem_id="pf-guidelines", js_on_load=None)

    def show_guidelines(token):
        label, body, visible = guidelines_view(store, token)
        return gr.Accordion(label=label, visible=visible), body
    with gr.Row(equal_height=True):
        progress = gr.Markdown(elem_id="pf-progress")
        refresh = gr.Button("Refresh", elem_id="pf-refresh", size="sm", variant="secondary",
                            scale=0, min_width=90)
    message = gr.Markdown(elem_id="pf-message")
    prompt_box = gr.HTML(elem_id="pf-prompt", js_on_load=None)
    with gr.Row(equal_height=True):
        left_box = gr.HTML(elem_id="pf-left", js_on_load=None)
        right_box = gr.HTML(elem_id="pf-right", js_on_load=None)
    with gr.Row(elem_id="pf-pair-buttons") as pair_row:
        vote_buttons = {
            side: gr.Button(label, elem_id=elem_id, variant="primary" if side in ("left", "right") else "secondary")
            for side, label, elem_id, _ in VOTE_BUTTONS
        }
    with gr.Row(elem_id="pf-thumbs-buttons", visible=False) as thumbs_row:
        vote_buttons.update({
            side: gr.Button(label, elem_id=elem_id, variant="primary") for side, label, elem_id, _ in THUMBS_BUTTONS
        })
    with gr.Row():
        skip_button = gr.Button(SKIP_BUTTON[0], elem_id=SKIP_BUTTON[1], variant="secondary", scale=0, min_width=130)
        undo_button = gr.Button(UNDO_BUTTON[0], elem_id=UNDO_BUTTON[1], variant="secondary", scale=0, min_width=130)
    gr.HTML(shortcuts_markdown(), js_on_load=None)
    with gr.Accordion("Why? (optional: reasons, comment, a better answer)", open=False):
        reasons = gr.CheckboxGroup(list(REASON_TAGS), label="Reasons", elem_id="pf-reasons")
        with gr.Row():
            comment = gr.Textbox(label="Comment", lines=2, max_lines=6, elem_id="pf-comment")
            better = gr.Textbox(
                label="Write a better answer (saved with your vote)",
                lines=3,
                max_lines=12,
                elem_id="pf-better",
            )
    continue_pair = gr.State(None)
    with gr.Accordion("Continue this conversation", open=False, visible=False,
                      elem_id="pf-continue-box") as continue_box:
        continue_html = gr.HTML(elem_id="pf-continue-history", js_on_load=None)
        followup = gr.Dropdown([], label="A follow-up from the prompt set (or write your own below)",
                               elem_id="pf-followup", interactive=True, allow_custom_value=False)
        with gr.Row():
            next_turn = gr.Textbox(label="Next user turn", lines=2, scale=5, elem_id="pf-next-turn",
                                   max_length=MAX_LIVE_PROMPT_CHARS)
            continue_button = gr.Button("Continue", elem_id="pf-continue-go", scale=1)
    with gr.Accordion("Try your own prompt (live)", open=False):
        with gr.Row():
            live_text = gr.Textbox(
                label="Your prompt",
                placeholder="Ask anything; both responses stream in, then you vote as usual.",
                lines=2,
                scale=5,
                elem_id="pf-live-text",
            )
            live_button = gr.Button("Generate", elem_id="pf-live-go", scale=1)

    screen_outputs = [pair_state, prompt_box, left_box, right_box, message, progress, timer,
                      reasons, comment, better, pair_row, thumbs_row,
                      continue_pair, continue_box, continue_html, followup, next_turn]
    rest = len(screen_outputs) - 5  # outputs after the message line

    def continuation_outputs(waiting: dict | None) -> list:
        keep = gr.update()
        if waiting is None:
            return [keep] * 5
        if not waiting:
            return [None, gr.Accordion(visible=False), "", gr.Dropdown(choices=[], value=None), ""]
        label, history, choices = continuation_view(waiting)
        return [waiting["pair_id"], gr.Accordion(label=label, visible=True), history,
                gr.Dropdown(choices=choices, value=None), ""]

    def to_outputs(screen: Screen) -> list:
        keep = gr.update()
        return [
            screen.pair,
            screen.prompt_html,
            screen.left_html,
            screen.right_html,
            screen.message,
            screen.progress,
            gr.Timer(active=screen.waiting),
            [] if screen.clear_inputs else keep,
            "" if screen.clear_inputs else keep,
            "" if screen.clear_inputs else keep,
            gr.Row(visible=not screen.single),
            gr.Row(visible=screen.single),
            *continuation_outputs(screen.continuation),
        ]

    def guarded(action):
        """Run a handler; a StoreError becomes the message line instead of a traceback."""

        def run(*args):
            try:
                return to_outputs(action(*args))
            except PrefloopError as error:  # may quote what was sent: shown as text
                return [gr.update()] * 4 + [f"⚠️ {markdown_text(error)}"] + [gr.update()] * rest

        return run

    def load(token):
        return next_pair(store, token)

    # Gradio 6 runs each component's pre/postprocess in a worker thread of its own: 13 thread
    # hops per vote, the largest cost left per vote (py-spy, bench/serving.py). Ours are plain
    # strings and lists whose pre/postprocess is the identity (reason tags are re-checked in
    # vote()), and updates (gr.update, gr.Timer) are applied either way, so skip them.
    quick = {"outputs": screen_outputs, "concurrency_limit": None, "preprocess": False,
             "postprocess": False}
    for side, button in vote_buttons.items():
        button.click(
            with_session(guarded(
                lambda token, pair, r, c, b, side=side: vote(store, token, pair, side, r, c, b))),
            inputs=[pair_state, reasons, comment, better],
            api_name=f"vote_{side}",  # stable names: bench/http_load.py drives the app over HTTP
            **quick,  # concurrency_limit None: a vote is one short transaction, never behind a stream
        )
    skip_button.click(with_session(guarded(lambda token, pair: skip(store, token, pair))),
                      inputs=[pair_state], api_name="skip", **quick)
    undo_button.click(with_session(guarded(lambda token, pair: undo(store, token, pair))),
                      inputs=[pair_state], api_name="undo", **quick)
    refresh.click(with_session(guarded(load)), inputs=None, api_name="next_pair", **quick)

    def poll(token, pair):
        if pair:  # a pair arrived by another route (undo, live prompt): stop polling
            return [gr.update()] * 6 + [gr.Timer(active=False)] + [gr.update()] * (rest - 2)
        return guarded(load)(token)

    timer.tick(with_session(poll), inputs=[pair_state], show_progress="hidden", api_name="poll",
               **quick)

    def run_live(token, text):
        try:
            for screen in live_prompt(store, token, text):
                yield to_outputs(screen)
        except PrefloopError as error:
            yield [gr.update()] * 4 + [f"⚠️ {markdown_text(error)}"] + [gr.update()] * rest

    def run_continue(token, pair_id, text, picked):
        try:
            for screen in continue_conversation(store, token, pair_id, text, picked):
                yield to_outputs(screen)
        except PrefloopError as error:
            yield [gr.update()] * 4 + [f"⚠️ {markdown_text(error)}"] + [gr.update()] * rest

    # generation is CPU/GPU bound: one live stream at a time, others wait in Gradio's queue
    live_button.click(with_session(run_live), inputs=[live_text], outputs=screen_outputs,
                      concurrency_limit=1, concurrency_id="pf-live")
    continue_button.click(with_session(run_continue), inputs=[continue_pair, next_turn, followup],
                          outputs=screen_outputs, concurrency_limit=1, concurrency_id="pf-live",
                          api_name="continue_conversation")
    return {"load": guarded(load), "outputs": screen_outputs, "pair_state": pair_state,
            "guidelines": show_guidelines, "guidelines_outputs": [guide_box, guide_html]}


SIGN_IN_FORM = """
<form id="pf-signin-form" method="post" action="{action}" autocomplete="on">
  <h2>prefloop</h2>
  <p>Sign in to judge responses.</p>
  <label id="pf-name" class="pf-field"><span>Name</span>
    <input name="name" type="text" autocomplete="username" maxlength="{name_chars}" required></label>
  <label id="pf-password" class="pf-field"><span>Password</span>
    <input name="password" type="password" autocomplete="current-password" maxlength="{password_chars}" required></label>
  <button id="pf-signin-button" type="submit" class="lg primary">Sign in</button>
  <p id="pf-signin-message" role="status" aria-live="polite"></p>
</form>
"""


def build_sign_in():
    """The sign-in form: plain HTML whose script posts to the sign-in route (``prefloop.ui.server``),
    so the password never enters a Gradio event. Returns its column.

    ``maxlength`` is courtesy; auth.sign_in enforces the same caps on the server. A POST form
    even without its script: a password never lands in a URL.
    """
    import gradio as gr

    form = SIGN_IN_FORM.format(action=SIGN_IN_PATH.lstrip("/"), name_chars=auth.MAX_NAME_INPUT_CHARS,
                               password_chars=auth.MAX_PASSWORD_CHARS)
    with gr.Column(elem_id="pf-signin", visible=True) as column:
        gr.HTML(form, js_on_load=SIGN_IN_JS)
    return column
