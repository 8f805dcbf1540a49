"""Safe rendering of untrusted text (prompts and model outputs) as HTML.

Prompts come from imported datasets and from annotators; outputs come from a model that can be
steered into emitting anything. Both are shown to other people in a browser, so they must render
*inert*: raw HTML is escaped (shown as text, never parsed), links may only use safe schemes,
images are not loaded (no tracking pixels, no ``onerror``), and enormous texts are cut to a
named limit with a note, so one runaway generation cannot freeze an annotator's tab.

Markdown is parsed by markdown-it-py with ``html`` disabled (every ``<`` in the input becomes
``&lt;``), fenced code is highlighted by Pygments (which escapes what it highlights).

Example:
    >>> render_markdown("<script>alert(1)</script> **hi**")
    '<div class="pf-md"><p>&lt;script&gt;alert(1)&lt;/script&gt; <strong>hi</strong></p>\\n</div>'
"""

from __future__ import annotations

import contextvars
import html

from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

from prefloop.engine.history import history_marker

MAX_OUTPUT_CHARS = 12_000  # a 160-token answer is ~700 chars; 12k is far past anything useful
MAX_PROMPT_CHARS = 8_000  # prompts are read in full before judging; longer ones are truncated
CODE_STYLE = "friendly"  # Pygments style; its CSS comes from highlight_css()

_formatter = HtmlFormatter(style=CODE_STYLE, cssclass="pf-code", nowrap=True)


# Highlighting is cosmetic and Pygments' lexers are regular expressions, some of which take
# quadratic or exponential time on crafted input (```autoit + 7,900 spaces: 7 s; ```scala with a
# run of backslashes: minutes). So only common languages are highlighted, only blocks up to
# MAX_HIGHLIGHT_CHARS, and only HIGHLIGHT_BUDGET_CHARS per rendered text; the rest is shown
# escaped, unhighlighted. Worst case measured over tests/test_hostile.py's slow-highlight corpus
# on the CI machine: about 0.15 s per block (C, 1,000 chars of 'x \n').
MAX_HIGHLIGHT_CHARS = 1_000
HIGHLIGHT_BUDGET_CHARS = 3_000
HIGHLIGHT_LANGUAGES = frozenset({
    "python", "py", "javascript", "js", "typescript", "ts", "java", "c", "cpp", "c++", "csharp",
    "cs", "go", "rust", "ruby", "php", "bash", "sh", "shell", "sql", "json", "yaml", "yml",
    "html", "css", "xml", "kotlin", "swift", "r", "lua", "haskell", "toml", "diff",
    "dockerfile", "makefile", "powershell", "ini", "perl",
})


_budget: contextvars.ContextVar[int] = contextvars.ContextVar("pf_highlight_budget", default=0)


def _highlight(code: str, lang: str, _attrs: str) -> str:
    """Pygments for a short fenced block in a common language; anything else is plain text."""
    name = lang.strip().split()[0].lower() if lang and lang.strip() else ""
    budget = _budget.get()
    lexer = None
    if name in HIGHLIGHT_LANGUAGES and len(code) <= min(MAX_HIGHLIGHT_CHARS, budget):
        try:
            lexer = get_lexer_by_name(name)
        except ClassNotFound:
            lexer = None
    if lexer is not None:
        _budget.set(budget - len(code))
    body = highlight(code, lexer, _formatter) if lexer else html.escape(code)
    return f'<pre class="pf-code"><code>{body}</code></pre>'


def _make_parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable("table").enable("strikethrough")
    md.disable("image")  # ![x](http://...) would fetch a remote URL the moment a pair is shown
    md.options["highlight"] = _highlight

    def link_open(renderer, tokens, idx, options, env):
        tokens[idx].attrSet("rel", "noopener noreferrer nofollow")
        tokens[idx].attrSet("target", "_blank")
        return renderer.renderToken(tokens, idx, options, env)

    md.add_render_rule("link_open", link_open)
    return md


_md = _make_parser()


def truncate(text: str | None, limit: int) -> tuple[str, bool]:
    """(text cut to ``limit`` characters, whether it was cut)."""
    text = text or ""
    if len(text) <= limit:
        return text, False
    return text[:limit], True


def render_markdown(text: str | None, limit: int = MAX_OUTPUT_CHARS) -> str:
    """Untrusted Markdown -> inert HTML in a ``pf-md`` div, truncated to ``limit`` with a note.

    Example: render_markdown(generation["text"])
    """
    shown, cut = truncate(text, limit)
    reset = _budget.set(HIGHLIGHT_BUDGET_CHARS)  # per text rendered, whatever its blocks
    try:
        body = _md.render(shown) if shown.strip() else '<p class="pf-empty">(empty response)</p>'
    finally:
        _budget.reset(reset)
    note = ""
    if cut:
        note = (
            f'<p class="pf-truncated">… truncated: showing the first {limit:,} of '
            f"{len(text or ''):,} characters.</p>"
        )
    return f'<div class="pf-md">{body}{note}</div>'


def render_prompt(text: str | None) -> str:
    """The prompt, rendered like an output but with the prompt's own length limit."""
    return render_markdown(text, MAX_PROMPT_CHARS)


ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}
SHOWN_EARLIER_TURNS = 2  # more earlier turns than this fold into one "earlier turns" toggle


def render_conversation(messages: list[dict] | None, fallback: str | None = None, cut: int = 0) -> str:
    """A whole conversation: every turn with its role, the last one (the one being answered)
    open, earlier ones above it; more than ``SHOWN_EARLIER_TURNS`` earlier turns fold into a
    ``<details>`` so a long chat does not push the answers off screen. Text is rendered like any
    untrusted Markdown, and the prompt's character budget is shared across the turns.

    ``cut``: how many messages after a system message the model did not read (the history was
    cut at the token budget, prefloop.engine.history): a marker says so at the top, and those
    turns are greyed and labelled, so the annotator judges with what the model saw in mind.

    Example: render_conversation([{"role": "user", "content": "hi"}, ...])
    """
    if not messages:
        return render_prompt(fallback)
    budget = max(MAX_PROMPT_CHARS // len(messages), 500)
    first_cut = 1 if messages[0].get("role") == "system" else 0
    blocks = []
    for index, turn in enumerate(messages):
        role = str(turn.get("role", "user"))
        label = ROLE_LABELS.get(role, "Turn")
        unseen = first_cut <= index < first_cut + cut
        blocks.append(
            f'<div class="pf-turn pf-turn-{html.escape(label.lower())}{" pf-turn-cut" if unseen else ""}">'
            f'<div class="pf-role">{label}{" · not seen by the model" if unseen else ""}</div>'
            f'{render_markdown(str(turn.get("content") or ""), budget)}</div>'
        )
    *earlier, last = blocks
    if len(earlier) > SHOWN_EARLIER_TURNS:
        folded = "".join(earlier[:-SHOWN_EARLIER_TURNS])
        earlier = [f'<details class="pf-earlier"><summary>{len(earlier) - SHOWN_EARLIER_TURNS} earlier '
                   f'turns</summary>{folded}</details>', *earlier[-SHOWN_EARLIER_TURNS:]]
    marker = f'<div class="pf-history-cut">{html.escape(history_marker(cut))}</div>' if cut else ""
    return '<div class="pf-conversation">' + marker + "".join(earlier) + last + "</div>"


def render_plain(text: str | None, limit: int = MAX_OUTPUT_CHARS) -> str:
    """Escaped text in a ``<pre>``: used while a live answer streams (half-parsed Markdown flickers).

    Example: render_plain("partial <b>answer")
    """
    shown, cut = truncate(text, limit)
    note = " …" if cut else ""
    return f'<div class="pf-md"><pre class="pf-stream">{html.escape(shown)}{note}</pre></div>'


def panel(title: str, body_html: str, elem_class: str = "") -> str:
    """A titled, height-bounded, scrolling box around already-rendered HTML."""
    return (
        f'<div class="pf-panel {html.escape(elem_class)}">'
        f'<div class="pf-panel-title">{html.escape(title)}</div>'
        f'<div class="pf-panel-body">{body_html}</div></div>'
    )


_MARKDOWN_SPECIALS = "\\`*_[]()#!|$~"


def markdown_text(text: object) -> str:
    """Untrusted text to embed in a ``gr.Markdown`` message: shown as typed, never as markup.

    HTML is escaped (``<img src=..>`` is text, not a request to another host) and Markdown and
    LaTeX punctuation is backslash-escaped (no links, emphasis or ``$`` math).

    Example: f"⚠️ {markdown_text(error)}"
    """
    escaped = html.escape(str(text), quote=False)
    return "".join("\\" + c if c in _MARKDOWN_SPECIALS else c for c in escaped)


def highlight_css() -> str:
    """CSS for highlighted code, scoped to ``.pf-code``."""
    return _formatter.get_style_defs(".pf-code")
