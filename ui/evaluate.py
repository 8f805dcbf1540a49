"""Evaluate tab (maintainers) and Demo tab (anyone signed in).

Handlers are plain functions of (store, token, inputs) that return what the tab shows, so tests
call them without a server; each one checks the role with ``auth.require_role`` first, on the
server side. ``build_evaluate_tab`` / ``build_demo_tab`` only lay out components and wire them.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterator

from prefloop.annotate import auth
from prefloop.annotate.sampler import sample_battle_pairs
from prefloop.db.store import Store
from prefloop.engine import models
from prefloop.engine.generation import SamplingParams, stream
from prefloop.errors import InputError, PrefloopError, StoreError
from prefloop.evaluate import arena, plots
from prefloop.evaluate.annotators import annotator_dashboard
from prefloop.evaluate.report import build_report
from prefloop.ui.render import markdown_text
from prefloop.ui.server import with_session

RATING_HEADERS = ["version", "rating", "95% low", "95% high", "battles", "wins", "ties", "losses"]
VERSION_HEADERS = ["version", "status", "method", "rows", "held-out acc", "win vs base", "95% CI",
                   "mean words", "length x base", "distinct-2", "refusals", "cut off", "gate"]
AGREEMENT_HEADERS = ["annotator", "votes", "per day", "median s", "ties", "both bad", "left side",
                     "gold votes", "gold accuracy", "agreement", "mean kappa", "flags"]
MAX_DEMO_PROMPT_CHARS = 4000


def _r(value, digits: int = 3):
    return None if value is None else round(value, digits)


# --------------------------------------------------------------------------------------------
# handlers: evaluate (maintainers)
# --------------------------------------------------------------------------------------------
def evaluation_tables(store: Store, token: str | None, bootstrap: int = 500) -> dict[str, Any]:
    """Leaderboard, per-version and agreement tables (lists of rows) plus the report itself."""
    auth.require_role(store, token, "maintainer")

    report = build_report(store, bootstrap=bootstrap)
    board = report["leaderboard"]
    ratings = [[r["version"], _r(r["rating"], 0), _r(r["ci_low"], 0), _r(r["ci_high"], 0), r["battles"],
                r["wins"], r["ties"], r["losses"]] for r in board["ratings"]]
    versions = []
    for v in report["versions"]:
        ci = v["win_rate_ci"]
        versions.append([
            v["version"], v["status"], v["method"], v["dataset_size"], _r(v["heldout_accuracy"]),
            _r(v["win_rate_vs_base"]), f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else None,
            _r(v["mean_words"], 1), _r(v["length_ratio"], 2), _r(v["distinct_2"]), _r(v["refusal_rate"]),
            _r(v.get("cutoff_rate")), (v.get("gate") or {}).get("decision"),
        ])
    kappas = {a["annotator"]: a["mean_kappa"] for a in report["agreement"]["annotators"]}
    agreement_rows = [
        [d["annotator"], d["votes"], _r(d["votes_per_day"], 1), _r(d["median_seconds"], 1),
         _r(d["tie_share"], 2), _r(d["both_bad_share"], 2), _r(d["left_share"], 2), d["gold_votes"],
         _r(d["gold_accuracy"], 2), _r(d["agreement"], 2), _r(kappas.get(d["annotator"])),
         "; ".join(d["flags"])]
        for d in annotator_dashboard(store)
    ]
    alpha = report["agreement"]["krippendorff_alpha"]
    summary = (
        f"{board['battles']} battles judged; ratings on the Elo scale with "
        f"{markdown_text(board['anchor'])} = 1000 "
        f"(ties and both-bad count half a win each). Krippendorff's alpha over "
        f"{report['agreement']['multiply_judged_pairs']} pairs judged more than once: "
        f"{'n/a' if alpha is None else f'{alpha:.2f}'}."
    )
    return {"ratings": ratings, "versions": versions, "agreement": agreement_rows, "summary": summary,
            "report": report}


def evaluation_figures(store: Store, token: str | None, report: dict | None = None) -> dict:
    """The three matplotlib figures (win rate, held-out accuracy, length by version)."""
    auth.require_role(store, token, "annotator")

    report = report or build_report(store, bootstrap=0)
    return plots.figures(report["versions"], base=report["leaderboard"]["anchor"] or "v0")


def version_names(store: Store, token: str | None) -> list[str]:
    auth.require_role(store, token, "annotator")
    return _servable_versions(store)


def _servable_versions(store: Store) -> list[str]:
    # imported versions are lineage-only rows (annotate/transfer.py): no weights to load;
    # rejected candidates failed their gate and are not for showing
    return [v["name"] for v in store.list_versions() if v["status"] not in ("rejected", "imported")]


def _pick_version(store: Store, name: object) -> str:
    """A version picked in a dropdown: one of the servable names, else one line that names none
    of the others (the list is the dropdown's, for those allowed to see it)."""
    if not isinstance(name, str) or not name:
        raise InputError("pick a version on each side")
    if name not in _servable_versions(store):
        raise InputError("pick a version from the list (press Load versions to refresh it)")
    return name


def _whole_number(value: object, label: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, type(None))):
        raise InputError(f"{label} must be a whole number")
    try:
        return int(float(value or 0))
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{label} must be a whole number") from None


def queue_battles(
    store: Store,
    token: str | None,
    version_a: str,
    version_b: str,
    n_prompts: int,
    progress: Callable[[int, int], None] | None = None,
) -> str:
    """Queue blind battle pairs for annotators; returns the message to show."""
    auth.require_role(store, token, "maintainer")

    if not version_a or not version_b:
        raise PrefloopError("pick two versions")
    if version_a == version_b:
        raise PrefloopError("a battle needs two different versions")
    n_prompts = _whole_number(n_prompts, "held-out prompts")
    if n_prompts < 1:
        raise PrefloopError("battle on at least one prompt")
    _pick_version(store, version_a)
    _pick_version(store, version_b)
    ids = sample_battle_pairs(store, version_a, version_b, n_prompts=n_prompts, split="heldout",
                              progress=progress)
    if not ids:
        return "no held-out prompts to battle on: import some first"
    return (f"queued {len(ids)} blind battle pairs {markdown_text(version_a)} vs "
            f"{markdown_text(version_b)}; they appear in Annotate")


# --------------------------------------------------------------------------------------------
# handlers: demo (anyone signed in)
# --------------------------------------------------------------------------------------------
def demo_leaderboard(store: Store, token: str | None) -> list[list]:
    auth.require_role(store, token, "annotator")
    ratings = arena.bradley_terry(arena.battles_from_store(store), bootstrap=200)
    return [[r.version, round(r.rating), round(r.ci_low), round(r.ci_high), r.battles] for r in ratings]


def demo_compare(
    store: Store, token: str | None, prompt: str, version_a: str, version_b: str, seed: int = 0
) -> Iterator[tuple[str, str]]:
    """Stream two versions' answers to one prompt, side by side: yields (text_a, text_b)."""
    auth.require_role(store, token, "annotator")

    if prompt is not None and not isinstance(prompt, str):
        raise InputError("the prompt must be text")
    prompt = (prompt or "").strip()
    if not prompt:
        raise PrefloopError("type a prompt first")
    if len(prompt) > MAX_DEMO_PROMPT_CHARS:
        raise PrefloopError(f"prompts are at most {MAX_DEMO_PROMPT_CHARS} characters")
    for name in (version_a, version_b):
        _pick_version(store, name)
    params = SamplingParams.from_dict(store.get_setting("sampling"))
    messages = [{"role": "user", "content": prompt}]
    streams = []
    for name in (version_a, version_b):
        model, tokenizer = models.load_version(store, name)
        streams.append(stream(model, tokenizer, messages, params, seed=int(seed or 0)))
    texts = ["", ""]
    for parts in itertools.zip_longest(*streams):
        for side, part in enumerate(parts):
            if part is not None:
                texts[side] = part
        yield texts[0], texts[1]


# --------------------------------------------------------------------------------------------
# layout
# --------------------------------------------------------------------------------------------
def _warn(error: StoreError) -> str:
    return f"⚠️ {markdown_text(error)}"  # errors can quote what was typed: shown as text


def build_evaluate_tab(store: Store) -> dict:
    """Leaderboard, versions, agreement, plots and a form to queue battles (maintainers).

    Handlers read the session from the event's cookie; the returned ones take the token first.

    Example: build_evaluate_tab(store)  # inside `with gr.Tab("Evaluate"):`
    """
    import gradio as gr

    summary = gr.Markdown("Press *Refresh* to compute the leaderboard.")
    refresh = gr.Button("Refresh", variant="primary", size="sm")
    gr.Markdown("#### Leaderboard (Bradley-Terry, blind battles)")
    ratings = gr.Dataframe(headers=RATING_HEADERS, interactive=False, wrap=True)
    gr.Markdown("#### Versions")
    versions = gr.Dataframe(headers=VERSION_HEADERS, interactive=False, wrap=True)
    with gr.Row():
        win_plot = gr.Plot(label="win rate vs base")
        accuracy_plot = gr.Plot(label="held-out accuracy")
        length_plot = gr.Plot(label="response length")
    gr.Markdown("#### Annotators (left side: share of decisive votes for the side shown left; "
                "agreement: share of votes matching others' on the same pair)")
    agreement_table = gr.Dataframe(headers=AGREEMENT_HEADERS, interactive=False)
    gr.Markdown("#### Queue blind battles for annotators")
    with gr.Row():
        battle_a = gr.Dropdown(label="version A", choices=[])
        battle_b = gr.Dropdown(label="version B", choices=[])
        battle_n = gr.Number(label="held-out prompts", value=20, precision=0, minimum=1)
        battle_button = gr.Button("Queue battles")
    battle_message = gr.Markdown()

    outputs = [summary, ratings, versions, agreement_table, win_plot, accuracy_plot, length_plot,
               battle_a, battle_b]

    def on_refresh(token):
        try:
            tables = evaluation_tables(store, token)
            figures = evaluation_figures(store, token, tables["report"])
            names = version_names(store, token)
        except PrefloopError as error:
            return [_warn(error)] + [gr.update()] * (len(outputs) - 1)
        return [
            tables["summary"], tables["ratings"], tables["versions"], tables["agreement"],
            figures["win_rate"], figures["heldout_accuracy"], figures["length"],
            gr.Dropdown(choices=names, value=names[-1] if names else None),
            gr.Dropdown(choices=names, value=names[0] if names else None),
        ]

    def on_queue(token, version_a, version_b, n, progress=gr.Progress()):
        try:
            return queue_battles(store, token, version_a, version_b, n,
                                 progress=lambda done, total: progress(done / max(total, 1), desc="sampling"))
        except PrefloopError as error:
            return _warn(error)

    refresh.click(with_session(on_refresh), inputs=None, outputs=outputs)
    battle_button.click(with_session(on_queue), inputs=[battle_a, battle_b, battle_n],
                        outputs=[battle_message], concurrency_limit=1, concurrency_id="pf-generate")
    return {"refresh": on_refresh, "queue": on_queue, "outputs": outputs}


def build_demo_tab(store: Store) -> dict:
    """One prompt, two versions, answers streamed side by side; the leaderboard and plots.

    Handlers read the session from the event's cookie; the returned ones take the token first.

    Example: build_demo_tab(store)  # inside `with gr.Tab("Demo"):`
    """
    import gradio as gr

    with gr.Row():
        version_a = gr.Dropdown(label="left version", choices=[])
        version_b = gr.Dropdown(label="right version", choices=[])
        load_button = gr.Button("Load versions", size="sm")
    prompt = gr.Textbox(label="prompt", lines=3, placeholder="Ask both versions the same thing")
    run = gr.Button("Compare", variant="primary")
    message = gr.Markdown()
    with gr.Row():
        answer_a = gr.Textbox(label="left answer", lines=10, interactive=False)
        answer_b = gr.Textbox(label="right answer", lines=10, interactive=False)
    gr.Markdown("#### Leaderboard")
    board = gr.Dataframe(headers=["version", "rating", "95% low", "95% high", "battles"], interactive=False)
    with gr.Row():
        win_plot = gr.Plot(label="win rate vs base")
        length_plot = gr.Plot(label="response length")

    def on_load(token):
        try:
            names = version_names(store, token)
            rows = demo_leaderboard(store, token)
            figures = evaluation_figures(store, token)
        except PrefloopError as error:
            return [gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), _warn(error)]
        active = store.active_version()
        return [
            gr.Dropdown(choices=names, value=names[0] if names else None),
            gr.Dropdown(choices=names, value=active["name"] if active else None),
            rows, figures["win_rate"], figures["length"], "",
        ]

    def on_compare(token, text, left, right):
        try:
            for a, b in demo_compare(store, token, text, left, right):
                yield a, b, ""
        except PrefloopError as error:
            yield gr.update(), gr.update(), _warn(error)

    load_button.click(with_session(on_load), inputs=None,
                      outputs=[version_a, version_b, board, win_plot, length_plot, message])
    run.click(with_session(on_compare), inputs=[prompt, version_a, version_b],
              outputs=[answer_a, answer_b, message], concurrency_limit=1, concurrency_id="pf-generate")
    return {"load": on_load, "compare": on_compare}
