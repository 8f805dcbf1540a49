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

import html

from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

MAX_OUTPUT_CHARS = 12_000  # a 160-token answer is ~700 chars; 12k is far past anything useful
MAX_PROMPT_CHARS = 8_000  # prompts are read in full before judging; longer ones are truncated
CODE_STYLE = "friendly"  # Pygments style; its CSS comes from highlight_css()

_formatter = HtmlFormatter(style=CODE_STYLE, cssclass="pf-code", nowrap=True)


def _highlight(code: str, lang: str, _attrs: str) -> str:
    """Pygments for a fenced block; unknown or hostile language names fall back to plain text."""
    try:
        lexer = get_lexer_by_name((lang or "").strip().split()[0]) if lang.strip() else None
    except (ClassNotFound, IndexError):
        lexer = None
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
    body = _md.render(shown) if shown.strip() else '<p class="pf-empty">(empty response)</p>'
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


def highlight_css() -> str:
    """CSS for highlighted code, scoped to ``.pf-code``."""
    return _formatter.get_style_defs(".pf-code")
