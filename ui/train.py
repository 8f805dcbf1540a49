"""Train tab (maintainers): start a round, watch its curves live, decide what happens to it.

Handlers are plain functions of (store, token, inputs) so tests call them without a server; each
checks ``auth.require_role(store, token, "maintainer")`` first and turns every StoreError into a
message for the page. ``build_train_tab`` only lays out components and wires them; a gr.Timer
refreshes the table and the loss / reward-margin curves while a round runs.
"""

from __future__ import annotations

from typing import Any

from prefloop.annotate import auth
from prefloop.db.store import Store
from prefloop.engine import models
from prefloop.errors import InputError, PrefloopError
from prefloop.train.config import METHODS, PHASES, PRECISIONS, RoundConfig
from prefloop.train.rounds import (
    promote_round,
    readiness,
    reject_round,
    round_rows,
    start_round,
)
from prefloop.ui.render import markdown_text
from prefloop.ui.server import with_session

ROUND_HEADERS = ["id", "method", "parent", "version", "status", "progress", "pairs", "lr", "beta", "epochs",
                 "lora_rank", "train_loss", "heldout_acc", "outcome", "created"]
CURVES = {"loss": ["loss"], "margin": ["rewards/margins", "rewards/accuracies"]}
REFRESH_SECONDS = 2.0


# --------------------------------------------------------------------------------------------
# handlers
# --------------------------------------------------------------------------------------------
def _round_id(value: Any) -> int | None:
    """A round picked in the dropdown (a number or its text), or None; else one clear message."""
    if value in (None, ""):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError("pick a round from the list")
    try:
        return int(value)
    except (ValueError, OverflowError):
        raise InputError("pick a round from the list") from None


def start_round_action(
    store: Store, token: str | None, method: str, learning_rate: float, epochs: float, beta: float,
    lora_rank: int, min_new_pairs: int | None = None, precision: str = "auto", sft_chosen_margin: int = 0,
) -> str:
    """Start a round in a child process; returns a message for the page."""
    try:
        auth.require_role(store, token, "maintainer")

        config = RoundConfig(
            method=method, learning_rate=float(learning_rate), epochs=float(epochs), beta=float(beta),
            lora_rank=int(lora_rank), lora_alpha=2 * int(lora_rank),
            min_new_pairs=None if min_new_pairs in (None, "") else int(min_new_pairs),
            precision=precision, sft_chosen_margin=int(sft_chosen_margin or 0),
        ).validate()
        round_id = start_round(store, config)
    except PrefloopError as error:
        return f"**Not started:** {markdown_text(error)}"
    except (TypeError, ValueError) as error:
        return f"**Not started:** check the numbers ({markdown_text(error)})"
    return f"Round {round_id} started ({method}); it trains in the background, the table follows it."


def readiness_text(store: Store, token: str | None) -> str:
    """What each method would learn from now: preference pairs (dpo, orpo), labelled answers
    (kto) and written better answers (sft, at the default vote margin 0), and which are ready."""
    try:
        auth.require_role(store, token, "maintainer")

        # one count per kind of row: orpo learns dpo's preference rows, sft-dpo both phases' rows
        states = {method: readiness(store, RoundConfig(method=method)) for method in ("dpo", "kto", "sft")}
    except PrefloopError as error:
        return f"**{markdown_text(error)}**"
    state = states["dpo"]
    ready = [method for method in METHODS
             if all(states["dpo" if phase == "orpo" else phase]["ready"] for phase in PHASES[method])]
    verdict = (f"ready to train: {', '.join(ready)}" if ready
               else f"need {max(state['need'], 1) - state['have']} more preference pairs")
    return (f"Active version **{markdown_text(state['parent'])}**: {state['have']} new preference pairs "
            f"(dpo, orpo), {states['kto']['have']} KTO examples (kto), {states['sft']['have']} written "
            f"answers (sft); a round needs {state['need']} — {verdict}.")


def rounds_table(store: Store, token: str | None) -> list[list[Any]]:
    """Every round, newest first, as table rows (ROUND_HEADERS); reaps dead children first."""
    auth.require_role(store, token, "maintainer")

    return [[r[h] for h in ROUND_HEADERS] for r in reversed(round_rows(store))]


def round_choices(store: Store, token: str | None) -> list[int]:
    auth.require_role(store, token, "maintainer")
    return [r["id"] for r in reversed(store.list_rounds())]


def curve_frames(store: Store, token: str | None, round_id: int | None) -> dict[str, Any]:
    """Long-format DataFrames (step, value, metric) for the loss and reward-margin plots."""
    import pandas as pd

    auth.require_role(store, token, "maintainer")
    empty = pd.DataFrame({"step": [], "value": [], "metric": []})
    round_id = _round_id(round_id)
    if round_id is None:
        return {name: empty for name in CURVES}
    rows = store.round_metrics(round_id)
    out = {}
    for name, metrics in CURVES.items():
        picked = [r for r in rows if r["name"] in metrics]
        out[name] = pd.DataFrame(
            {"step": [r["step"] for r in picked], "value": [r["value"] for r in picked],
             "metric": [r["name"] for r in picked]}
        ) if picked else empty
    return out


def decide_action(store: Store, token: str | None, action: str, round_id: int | None) -> str:
    """promote / reject a round's candidate, or roll the active version back to its parent."""
    try:
        auth.require_role(store, token, "maintainer")

        if action == "rollback":
            version = models.rollback(store)
            return f"Rolled back: **{markdown_text(version['name'])}** is active again."
        round_id = _round_id(round_id)
        if round_id is None:
            return "**Pick a round first.**"
        if action == "promote":
            done = promote_round(store, round_id)
            return f"Round {round_id}: **{markdown_text(store.version(done['new_version_id'])['name'])}** is now active."
        if action == "reject":
            done = reject_round(store, round_id)
            return f"Round {round_id}: {markdown_text(store.version(done['new_version_id'])['name'])} rejected."
        return f"**Unknown action {markdown_text(repr(action))}.**"
    except PrefloopError as error:
        return f"**{markdown_text(error)}**"


# --------------------------------------------------------------------------------------------
# layout
# --------------------------------------------------------------------------------------------
def build_train_tab(store: Store) -> dict:
    """Start rounds, live curves, every round in a table, promote / reject / roll back.

    Handlers read the session from the event's cookie; the returned "refresh" takes the token first.

    Example: build_train_tab(store)  # inside `with gr.Tab("Train"):`
    """
    import gradio as gr

    defaults, helps = RoundConfig(), RoundConfig.help_texts()  # one source for defaults and help
    ready = gr.Markdown()
    with gr.Row():
        method = gr.Radio(list(METHODS), value=defaults.method, label="method", info=helps["method"])
        learning_rate = gr.Number(value=defaults.learning_rate, label="learning rate",
                                  info=helps["learning_rate"])
        epochs = gr.Number(value=defaults.epochs, label="epochs", minimum=0.1, info=helps["epochs"])
        beta = gr.Number(value=defaults.beta, label="beta", info=helps["beta"])
        lora_rank = gr.Number(value=defaults.lora_rank, label="LoRA rank", precision=0, minimum=1,
                              info=helps["lora_rank"])
        min_pairs = gr.Number(value=None, label="min new pairs (blank: setting)", precision=0,
                              info=helps["min_new_pairs"])
        precision = gr.Radio(list(PRECISIONS), value=defaults.precision, label="precision",
                             info=helps["precision"])
        sft_margin = gr.Number(value=defaults.sft_chosen_margin, label="sft: imitate winners by a vote margin of",
                               precision=0, minimum=0, info=helps["sft_chosen_margin"])
    start = gr.Button("Start round", variant="primary")
    message = gr.Markdown()
    with gr.Row():
        chosen_round = gr.Dropdown(label="round", choices=[], allow_custom_value=True)
        promote = gr.Button("Promote its version", size="sm")
        reject = gr.Button("Reject its version", size="sm")
        rollback = gr.Button("Roll back active version", size="sm", variant="stop")
    with gr.Row():
        loss_plot = gr.LinePlot(x="step", y="value", color="metric", label="loss", height=260)
        margin_plot = gr.LinePlot(x="step", y="value", color="metric", label="reward margin / accuracy", height=260)
    table = gr.Dataframe(headers=ROUND_HEADERS, interactive=False, wrap=True, label="rounds")
    timer = gr.Timer(REFRESH_SECONDS)

    def refresh(token, selected):
        try:
            choices = round_choices(store, token)
            selected = _round_id(selected)
            selected = selected if selected in choices else (choices[0] if choices else None)
            frames = curve_frames(store, token, selected)
            rows = rounds_table(store, token)
        except PrefloopError:
            return [gr.update()] * 5
        return [readiness_text(store, token), gr.Dropdown(choices=choices, value=selected),
                frames["loss"], frames["margin"], rows]

    outputs = [ready, chosen_round, loss_plot, margin_plot, table]
    quiet = dict(show_progress="hidden")
    timer.tick(with_session(refresh), inputs=[chosen_round], outputs=outputs, **quiet)
    chosen_round.change(with_session(refresh), inputs=[chosen_round], outputs=outputs, **quiet)
    start.click(with_session(lambda *values: start_round_action(store, *values)),
                inputs=[method, learning_rate, epochs, beta, lora_rank, min_pairs, precision, sft_margin],
                outputs=[message], concurrency_limit=1, api_name="start_round")
    promote.click(with_session(lambda t, r: decide_action(store, t, "promote", r)), inputs=[chosen_round],
                  outputs=[message], api_name="promote")
    reject.click(with_session(lambda t, r: decide_action(store, t, "reject", r)), inputs=[chosen_round],
                 outputs=[message], api_name="reject")
    rollback.click(with_session(lambda t: decide_action(store, t, "rollback", None)), inputs=None,
                   outputs=[message], api_name="rollback")
    return {"refresh": refresh, "outputs": outputs, "timer": timer}
