"""The hostile-input corpus: bad files, bad paths, bad settings, hostile text and names.

One table per kind of input, one test function per table. A CLI case must end with exit status 1
and a one-line message containing the expected words (never a traceback), and leave every table
of the database exactly as it was; an "accepted" case must import cleanly. A text case must render
inert everywhere it is shown: the Markdown renderer, the plain streaming renderer, and the
Annotate tab's Screen when it sits in a served prompt or response.
"""

from __future__ import annotations

import io
import json
from html.parser import HTMLParser

import pytest
from click.testing import CliRunner

from prefloop.annotate import auth
from prefloop.ui import annotate as ui
from prefloop.ui.render import render_markdown, render_plain, render_prompt

SQL = "'; DROP TABLE judgments;--"


def parquet_bytes(columns: dict) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue()


def jsonl(*records) -> bytes:
    return "\n".join(json.dumps(r) for r in records).encode()


# (id, files {name: bytes}, argv with {tmp} for the test's folder, words expected in the message)
REFUSED = [
    ("jsonl-truncated", {"p.jsonl": b'{"prompt": "ok"}\n{"prompt": '}, ["prompts", "import", "{tmp}/p.jsonl"], "line 2: not valid JSON"),
    ("jsonl-not-object", {"p.jsonl": b'{"prompt": "ok"}\n["a list"]'}, ["prompts", "import", "{tmp}/p.jsonl"], "expected a JSON object"),
    ("jsonl-empty", {"p.jsonl": b""}, ["prompts", "import", "{tmp}/p.jsonl"], "has no prompts"),
    ("jsonl-blank-lines", {"p.jsonl": b"\n  \n\n"}, ["prompts", "import", "{tmp}/p.jsonl"], "has no prompts"),
    ("jsonl-raw-nul-byte", {"p.jsonl": b'{"prompt": "a\x00b"}'}, ["prompts", "import", "{tmp}/p.jsonl"], "not valid JSON"),
    ("jsonl-escaped-nul", {"p.jsonl": jsonl({"prompt": "a\u0000b"})}, ["prompts", "import", "{tmp}/p.jsonl"], "control character"),
    ("jsonl-ansi-escape", {"p.jsonl": jsonl({"prompt": "hi \u001b[2J\u001b]0;pwned\u0007"})}, ["prompts", "import", "{tmp}/p.jsonl"], "control character"),
    ("jsonl-control-in-chat", {"p.jsonl": jsonl({"messages": [{"role": "user", "content": "x\u0008y"}]})}, ["prompts", "import", "{tmp}/p.jsonl"], "control character"),
    ("invalid-utf8", {"p.jsonl": b'{"prompt": "caf\xe9"}'}, ["prompts", "import", "{tmp}/p.jsonl"], "not UTF-8"),
    ("utf16-file", {"p.jsonl": '{"prompt": "x"}'.encode("utf-16")}, ["prompts", "import", "{tmp}/p.jsonl"], "not UTF-8"),
    ("huge-prompt", {"p.jsonl": jsonl({"prompt": "x" * 20_001})}, ["prompts", "import", "{tmp}/p.jsonl"], "the limit is 20,000"),
    ("prompt-is-number", {"p.jsonl": jsonl({"prompt": 42})}, ["prompts", "import", "{tmp}/p.jsonl"], "'prompt' must be text"),
    ("prompt-is-object", {"p.jsonl": jsonl({"prompt": {"$ne": 1}})}, ["prompts", "import", "{tmp}/p.jsonl"], "'prompt' must be text"),
    ("messages-not-list", {"p.jsonl": jsonl({"messages": "hello"})}, ["prompts", "import", "{tmp}/p.jsonl"], "'messages' must be a list"),
    ("messages-bad-role", {"p.jsonl": jsonl({"messages": [{"role": "root", "content": "x"}]})}, ["prompts", "import", "{tmp}/p.jsonl"], "has role 'root'"),
    ("messages-no-user", {"p.jsonl": jsonl({"messages": [{"role": "system", "content": "x"}]})}, ["prompts", "import", "{tmp}/p.jsonl"], "no user message"),
    ("unknown-split", {"p.jsonl": jsonl({"prompt": "x", "split": SQL})}, ["prompts", "import", "{tmp}/p.jsonl"], "unknown split"),
    ("kind-wrong-type", {"p.jsonl": jsonl({"prompt": "x", "kind": [1]})}, ["prompts", "import", "{tmp}/p.jsonl"], "'kind' must be text"),
    ("bad-line-after-good", {"p.jsonl": jsonl(*[{"prompt": f"fine {i}"} for i in range(50)], {"prompt": ""})}, ["prompts", "import", "{tmp}/p.jsonl"], "line 51: the prompt is empty"),
    ("csv-no-prompt-column", {"p.csv": b"question,answer\nhi,there\n"}, ["prompts", "import", "{tmp}/p.csv"], "no 'prompt' or 'messages' column"),
    ("csv-extra-cells", {"p.csv": b"prompt\nhello,extra\n"}, ["prompts", "import", "{tmp}/p.csv"], "more cells than the header"),
    ("csv-empty", {"p.csv": b""}, ["prompts", "import", "{tmp}/p.csv"], "has no prompts"),
    ("csv-huge-cell", {"p.csv": b"prompt\n" + b"y" * 20_001 + b"\n"}, ["prompts", "import", "{tmp}/p.csv"], "the limit is"),
    ("parquet-garbage", {"p.parquet": b"PAR1 this is not parquet"}, ["prompts", "import", "{tmp}/p.parquet"], "not a readable Parquet file"),
    ("parquet-no-prompt-column", {"p.parquet": parquet_bytes({"text": ["a"]})}, ["prompts", "import", "{tmp}/p.parquet"], "no 'prompt' or 'messages' column"),
    ("parquet-prompt-ints", {"p.parquet": parquet_bytes({"prompt": [1, 2]})}, ["prompts", "import", "{tmp}/p.parquet"], "'prompt' must be text"),
    ("json-not-a-list", {"p.json": b'{"prompt": "x"}'}, ["prompts", "import", "{tmp}/p.json"], "expected a JSON list"),
    ("unknown-extension", {"p.exe": b"MZ"}, ["prompts", "import", "{tmp}/p.exe"], "unknown file type"),
    ("missing-file", {}, ["prompts", "import", "{tmp}/nope.jsonl"], "no such file"),
    ("folder-not-dataset", {"d/x.txt": b"x"}, ["prompts", "import", "{tmp}/d"], "not a dataset"),
    # paths: export / backup / import
    ("backup-over-existing-file", {"b.db": b"keep"}, ["backup", "{tmp}/b.db"], "already exists"),
    ("backup-traversal-to-existing-dir", {}, ["backup", "{tmp}/../.."], "already exists"),
    ("backup-system-file", {}, ["backup", "/etc/passwd"], "already exists"),
    ("backup-device", {}, ["backup", "/dev/full"], "already exists"),
    ("backup-missing-folder", {}, ["backup", "{tmp}/no/such/dir/b.db"], "does not exist"),
    ("backup-into-proc", {}, ["backup", "/proc/prefloop-backup.db"], "cannot write the backup"),
    ("export-traversal-system-file", {}, ["export", "{tmp}/../../../../../../etc/passwd"], "not empty"),
    ("export-device", {}, ["export", "/dev/full"], "not a regular file"),
    ("export-missing-folder", {}, ["export", "{tmp}/missing/p.jsonl"], "does not exist"),
    ("export-judgments-existing-dir", {}, ["export", "{tmp}", "--what", "judgments"], "is a folder"),
    ("export-judgments-device", {}, ["export", "/dev/full", "--what", "judgments"], "already exists"),
    ("export-judgments-into-proc", {}, ["export", "/proc/j.jsonl", "--what", "judgments"], "cannot write"),
    ("export-judgments-parquet", {}, ["export", "{tmp}/j.parquet", "--what", "judgments", "--format", "parquet"], "JSONL only"),
    ("import-prompts-file-as-judgments", {"p.jsonl": jsonl({"prompt": "x"})}, ["import", "{tmp}/p.jsonl"], "not a prefloop judgments export"),
    ("import-directory", {}, ["import", "{tmp}"], "not a file"),
    ("import-device", {}, ["import", "/dev/null"], "not a file"),
    ("import-wrong-version", {"j.jsonl": jsonl({"format": "prefloop-judgments", "version": 99})}, ["import", "{tmp}/j.jsonl"], "version 99 is not supported"),
    ("import-wrong-types", {"j.jsonl": jsonl({"format": "prefloop-judgments", "version": 1}, {"prompt": "x"})}, ["import", "{tmp}/j.jsonl"], "line 2: prompt must be an object"),
    # settings and round settings
    ("setting-unknown-sql", {}, ["settings", "set", SQL, "1"], "unknown setting"),
    ("setting-not-a-number", {}, ["settings", "set", "judgments_per_pair", SQL], "must be a whole number"),
    ("setting-negative", {}, ["settings", "set", "judgments_per_pair", "--", "-3"], "at least 1"),
    ("setting-dash-value-without-separator", {}, ["settings", "set", "judgments_per_pair", "-3"], "No such option"),
    ("setting-bool", {}, ["settings", "set", "queue_target", "true"], "whole number"),
    ("setting-nan", {}, ["settings", "set", "gold_rate", "NaN"], "finite"),
    ("setting-infinity", {}, ["settings", "set", "gate_confidence", "--", "-Infinity"], "finite"),
    ("setting-huge-int", {}, ["settings", "set", "queue_target", "1" + "0" * 30], "too large"),
    ("setting-active-version", {}, ["settings", "set", "active_version", "v9"], "promoting or rolling back"),
    ("sampling-not-object", {}, ["settings", "set", "sampling", "[1, 2]"], "must be a JSON object"),
    ("sampling-wrong-type", {}, ["settings", "set", "sampling", '{"temperature": "hot"}'], "temperature"),
    ("sampling-unknown-field", {}, ["settings", "set", "sampling", '{"exec": "rm -rf /"}'], "unknown sampling field"),
    ("round-unknown-setting", {}, ["train", "--config-json", '{"bogus": 1}'], "unknown round settings"),
    ("round-config-not-json", {}, ["train", "--config-json", "{nope"], "not valid JSON"),
    ("round-config-not-object", {}, ["train", "--config-json", "[1, 2]"], "JSON object"),
    ("round-config-wrong-type", {}, ["train", "--config-json", '{"learning_rate": "fast"}'], "learning_rate must be like"),
    ("round-config-bool-for-int", {}, ["train", "--config-json", '{"lora_rank": true}'], "lora_rank must be like"),
    ("user-sql-name", {}, ["users", "add", SQL, "--password-env", "PF_PW"], "user names are"),
    ("user-html-name", {}, ["users", "add", "<img src=x onerror=alert(1)>", "--password-env", "PF_PW"], "user names are"),
    ("user-traversal-name", {}, ["users", "add", "../../etc/passwd", "--password-env", "PF_PW"], "user names are"),
    ("user-disable-sql", {}, ["users", "disable", SQL], "no user named"),
    ("user-cyrillic-lookalike", {}, ["users", "add", "\u0430lice", "--password-env", "PF_PW"], "mixes CYRILLIC, LATIN"),
    ("user-greek-lookalike", {}, ["users", "add", "b\u03bfb", "--password-env", "PF_PW"], "mixes GREEK, LATIN"),
    ("user-case-twin", {}, ["users", "add", "Alice", "--password-env", "PF_PW"], "too close to the existing 'alice'"),
    ("user-fullwidth-twin", {}, ["users", "add", "\uff21lice", "--password-env", "PF_PW"], "too close to the existing 'alice'"),
]


def seed(store) -> None:
    """A small home: v0 active, two prompts, one annotator."""
    store.add_version("v0", "base", "models/v0")
    store.set_active_version("v0")
    store.add_prompts([{"text": "existing prompt", "source": "seed"},
                       {"text": "another one", "source": "seed", "split": "heldout"}])
    auth.create_user(store, "alice", "alice-password-1")


@pytest.mark.parametrize("name,files,argv,expected", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_with_a_clear_message_and_nothing_changed(store, tmp_path, name, files, argv, expected):
    from prefloop.cli import cli

    seed(store)
    for relative, content in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    before = store.table_dump()
    result = CliRunner(env={"PF_PW": "a-good-password"}).invoke(
        cli, [a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert result.exit_code in (1, 2), result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (TypeError, ValueError, OSError))
    assert expected in result.output, result.output
    assert store.table_dump() == before
    assert store.integrity_check() == "ok"


# inputs that are odd but fine: accepted cleanly, stored as data, never as code
ACCEPTED = [
    ("utf8-bom-jsonl", "p.jsonl", b"\xef\xbb\xbf" + jsonl({"prompt": "bom first"}), "bom first"),
    ("utf8-bom-csv", "p.csv", b"\xef\xbb\xbfprompt\nbom csv\n", "bom csv"),
    ("sql-in-prompt", "p.jsonl", jsonl({"prompt": SQL}), SQL),
    ("html-in-prompt", "p.jsonl", jsonl({"prompt": "<script>alert(1)</script>"}), "<script>alert(1)</script>"),
    ("duplicates-in-file", "p.jsonl", jsonl({"prompt": "twice"}, {"prompt": "twice"}, {"prompt": " twice "}), "twice"),
    ("tabs-and-newlines", "p.jsonl", jsonl({"prompt": "col1\tcol2\r\nline 2"}), "col1\tcol2\r\nline 2"),
]


@pytest.mark.parametrize("name,filename,content,stored", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_odd_but_valid_files_import_as_plain_data(store, tmp_path, name, filename, content, stored):
    from prefloop.cli import cli

    seed(store)
    (tmp_path / filename).write_bytes(content)
    result = CliRunner().invoke(cli, ["prompts", "import", str(tmp_path / filename)])
    assert result.exit_code == 0, result.output
    texts = [p["text"] for p in store.list_prompts()]
    assert texts.count(stored.strip()) == 1
    assert set(store.tables()) >= {"judgments", "prompts", "annotators"}
    listed = CliRunner().invoke(cli, ["prompts", "list"])
    assert listed.exit_code == 0 and "\x1b" not in listed.output


def test_names_in_one_script_are_accepted_and_styled_letters_sign_in_as_plain(store):
    """The lookalike rules must not lock out real names: any single script, or Latin with CJK."""
    for name in ("Jos\u00e9", "\u0418\u0432\u0430\u043d", "\u5c71\u7530taro", "\u3055\u304f\u3089\u30b5\u30af\u30e9", "a.b-c_d@e"):
        auth.create_user(store, name, "a-good-password")
    auth.create_user(store, "\uff42\uff4f\uff42", "a-good-password")  # fullwidth: stored as plain 'bob'
    names = [u["name"] for u in store.list_annotators()]
    assert "bob" in names and "\u0418\u0432\u0430\u043d" in names and len(names) == 6
    assert auth.sign_in(store, "\uff42\uff4f\uff42", "a-good-password")[1]["name"] == "bob"
    with pytest.raises(auth.AuthError, match="wrong name or password"):
        auth.sign_in(store, "BOB", "a-good-password")  # names are not case-insensitive logins


# -- hostile text: prompts, model outputs, comments ------------------------------------------------
SAFE_TAGS = {"div", "p", "strong", "em", "a", "code", "pre", "span", "ul", "ol", "li", "blockquote",
             "h1", "h2", "h3", "h4", "h5", "h6", "hr", "br", "table", "thead", "tbody", "tr", "th",
             "td", "s", "del"}
SAFE_SCHEMES = ("http://", "https://", "mailto:", "#", "/")

PAYLOADS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '<a href="javascript:alert(1)">x</a>',
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click](&#106;avascript:alert(1))",
    "[click]( javascript:alert(1) )",
    "[ref][1]\n\n[1]: javascript:alert(1)",
    "<javascript:alert(1)>",
    "[x](vbscript:msgbox(1))",
    "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[x](file:///etc/passwd)",
    "![pixel](http://evil.example/p.png)",
    '<iframe src="https://evil.example"></iframe>',
    "<svg/onload=alert(1)>",
    "<style>body{display:none}</style>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "<!-- <script>alert(1)</script> -->",
    '```js" onmouseover="alert(1)\ncode\n```',
    "<div style=\"position:fixed;inset:0\">cover</div>",
    '[ok](https://example.com "title\\" onmouseover=\\"alert(1)")',
    "<a href='https://ok.example' onclick='steal()'>x</a>",
    "\u202eevil.exe\u202c and \u0000 nul",
    SQL,
]


class TagCollector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def assert_inert(markup: str) -> None:
    collector = TagCollector()
    collector.feed(markup)
    for tag, attrs in collector.tags:
        assert tag in SAFE_TAGS, (tag, markup[:200])
        assert not any(name.startswith("on") or name in ("style", "src", "srcdoc", "formaction")
                       for name in attrs), (tag, attrs)
        href = (attrs.get("href") or "").strip().lower()
        if href:
            assert href.startswith(SAFE_SCHEMES), href
    assert "<script" not in markup.lower()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_hostile_text_renders_inert_everywhere(store, payload):
    for rendered in (render_markdown(payload), render_prompt(payload), render_plain(payload)):
        assert_inert(rendered)
    # in a served pair: as the prompt and as both model outputs, read through the Annotate Screen
    version = store.add_version("v0", "base", "models/v0")
    store.set_active_version("v0")
    store.add_prompts([{"text": payload, "source": "hostile"}])
    (prompt,) = store.list_prompts()
    pair_id = store.add_pair(prompt["id"], {"version_id": version, "text": payload, "seed": 1, "params": {}},
                             {"version_id": version, "text": payload + " (b)", "seed": 2, "params": {}})
    auth.create_user(store, "alice", "alice-password-1")
    token, _ = ui.sign_in(store, "alice", "alice-password-1")
    screen = ui.next_pair(store, token)
    assert screen.pair["pair_id"] == pair_id
    for markup in (screen.prompt_html, screen.left_html, screen.right_html, screen.progress, screen.message):
        assert_inert(markup)
    # the same text as a comment and a better answer is stored verbatim, shown nowhere as HTML
    after = ui.vote(store, token, screen.pair, "left", comment=payload, better_answer=payload)
    assert "Recorded" in after.message
    (judgment,) = store.judgments()
    assert judgment["comment"] == payload.strip()[: ui.MAX_COMMENT_CHARS]
    for markup in (after.prompt_html, after.left_html, after.right_html, after.progress, after.message):
        assert_inert(markup)


def test_oversized_comment_and_answer_are_capped(store):
    store.add_version("v0", "base", "models/v0")
    store.set_active_version("v0")
    store.add_prompts([{"text": "q", "source": "t"}])
    (prompt,) = store.list_prompts()
    store.add_pair(prompt["id"], {"version_id": 1, "text": "a", "seed": 1, "params": {}},
                   {"version_id": 1, "text": "b", "seed": 2, "params": {}})
    auth.create_user(store, "alice", "alice-password-1")
    token, _ = ui.sign_in(store, "alice", "alice-password-1")
    screen = ui.next_pair(store, token)
    ui.vote(store, token, screen.pair, "tie", comment="c" * 1_000_000, better_answer="b" * 1_000_000)
    (judgment,) = store.judgments()
    assert len(judgment["comment"]) == ui.MAX_COMMENT_CHARS
    assert len(judgment["better_answer"]) == ui.MAX_BETTER_ANSWER_CHARS
    with pytest.raises(Exception, match="unknown reason tags"):
        ui.vote(store, token, screen.pair, "tie", reasons=[SQL])
    with pytest.raises(Exception, match="unknown vote"):
        ui.vote(store, token, screen.pair, "<script>")


# -- issue 12: slow-highlight inputs, hostile version names, terminal escapes through import ------
# Each must render within RENDER_BOUND_S on the CI machine (83dfaf7: ```autoit + 7,900 spaces
# took 7 s; ```scala + a run of backslashes did not finish in minutes).
RENDER_BOUND_S = 1.0
SLOW_HIGHLIGHT = [
    ("autoit-spaces", "```autoit\n" + " " * 7_900 + "\n```"),
    ("fan-spaces", "```fan\n" + " " * 7_900 + "\n```"),
    ("scala-backslashes", '```scala\n"' + "\\" * 3_000 + "\n```"),
    ("c-space-newlines", "```c\nx" + " \n" * 3_900 + "```"),
    ("cpp-many-blocks", ("```cpp\n" + "x \n" * 330 + "```\n") * 8),
    ("python-space-newlines", "```python\n" + " \n" * 3_950 + "```"),
    ("ini-tabs", '```ini\n"' + "\t" * 7_900 + "\n```"),
    ("unknown-lang", "```" + "x" * 500 + "\n" + " " * 7_900 + "\n```"),
    ("unclosed-fence", "```autoit\n" + " " * 11_000),
    ("markdown-brackets", "[" * 12_000),
    ("markdown-images", "![" * 6_000),
]


@pytest.mark.parametrize("text", [c[1] for c in SLOW_HIGHLIGHT], ids=[c[0] for c in SLOW_HIGHLIGHT])
def test_slow_highlight_inputs_render_within_the_bound(text):
    import time

    for render in (render_prompt, render_markdown):
        started = time.perf_counter()
        assert_inert(render(text))
        assert time.perf_counter() - started < RENDER_BOUND_S, render.__name__


HOSTILE_VERSION_NAMES = [
    "<img src=http://evil.example/p.png>",
    "[re-enter password](http://evil.example)",
    "v$\\undefinedcmd$",
    "v1\x1b[2J\x1b]0;owned\x07",
    "v\x00",
    "v1\u202e",
    "x" * 10_000,
]


@pytest.mark.parametrize("name", HOSTILE_VERSION_NAMES, ids=range(len(HOSTILE_VERSION_NAMES)))
def test_hostile_version_names_are_refused_and_render_inert_if_already_stored(store, name):
    """Refused where they enter; one already stored (an old import) shows as text."""
    import time

    from prefloop.evaluate import plots
    from prefloop.ui.render import markdown_text

    with pytest.raises(Exception, match="invalid model version name"):
        store.add_version(name, "base", "models/x")
    started = time.perf_counter()
    figures = plots.figures([{"version": "v0", "win_rate_vs_base": 0.5, "heldout_accuracy": 0.5,
                              "mean_words": 3},
                             {"version": name, "win_rate_vs_base": 0.6, "heldout_accuracy": 0.6,
                              "mean_words": 4}], base=name)
    for figure in figures.values():
        figure.canvas.draw()
    assert time.perf_counter() - started < 5 * RENDER_BOUND_S
    assert_inert(markdown_text(name))
    assert "](" not in markdown_text(name) and "$" not in markdown_text(name).replace("\\$", "")


TERMINAL_ESCAPES = ["\x1b[2J", "\x1b]0;owned\x07", "\x00", "\x9b31m", "\x7f"]


@pytest.mark.parametrize("escape", TERMINAL_ESCAPES, ids=range(len(TERMINAL_ESCAPES)))
def test_terminal_escapes_arriving_through_import_are_refused(store, tmp_path, escape):
    """`prefloop import` now makes the checks `prompts import` always made."""
    from prefloop.cli import cli

    seed(store)
    header = {"format": "prefloop-judgments", "version": 1}
    stamp = "2026-01-01T00:00:00+00:00"
    generation = {"version": "v0", "text": "answer", "params": {}, "seed": 1, "created_at": stamp}
    record = {"prompt": {"text": f"question {escape}", "split": "train"},
              "pair": {"purpose": "train", "judgments_wanted": 1, "created_at": stamp},
              "generation_a": generation, "generation_b": {**generation, "seed": 2},
              "shown_left": "a", "annotator": "alice", "choice": "a", "created_at": stamp}
    (tmp_path / "j.jsonl").write_bytes(jsonl(header, record))
    before = store.table_dump()
    result = CliRunner().invoke(cli, ["import", str(tmp_path / "j.jsonl")])
    assert result.exit_code == 1 and "control character" in result.output, result.output
    assert escape not in result.output and store.table_dump() == before
