"""Issue 12: each hole an outside review broke through, shut and proven shut.

Every test here fails on 83dfaf7 (the reviewed commit) and passes now; the README's "Reliability
and security" section lists them by finding. HTTP tests launch ``app.build_app`` on a loopback
port with the same ``launch_options()`` that ``prefloop serve`` uses.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import statistics
import sys
import time
import tracemalloc
import uuid

import httpx
import pytest
from click.testing import CliRunner
from test_access import AppClient, free_port
from test_backup_export import PASSWORDS, populate

from prefloop.annotate import auth, votes
from prefloop.annotate.limiter import FailureLimiter
from prefloop.errors import InputError, PrefloopError, StoreError
from prefloop.ui import annotate as ui
from prefloop.ui import evaluate as evaluate_ui
from prefloop.ui import server
from prefloop.ui import train as train_ui

MATHTEXT_NAME = "v$\\undefinedcmd$"
HTML_NAME = "<img src=http://evil.example/p.png>[re-enter password](http://evil.example)"


def legacy_version(store, name: str, status: str = "ready") -> int:
    """A version whose name predates the name rule (written with SQL, as an old import did)."""
    with store.write() as db:
        return db.execute(
            "insert into model_versions (name, kind, path, status, card, created_at) "
            "values (?, 'base', 'models/x', ?, '{}', '2026-01-01T00:00:00+00:00')", [name, status],
        ).lastrowid


@pytest.fixture
def hardened_app(store, monkeypatch):
    """The app as `prefloop serve` runs it: hardened launch options, private temp, no proxies."""
    from prefloop import app

    monkeypatch.setenv("GRADIO_TEMP_DIR", os.environ.get("GRADIO_TEMP_DIR", ""))
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"))
    ids = populate(store)

    def launch(trusted_proxies=()):
        server.prepare_environment(store.path.parent, trusted_proxies)
        demo = app.build_app(store)
        port = free_port()
        demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                    show_error=False, **ui.launch_options(store))
        launched.append(demo)
        return AppClient(f"http://127.0.0.1:{port}")

    launched = []
    yield store, launch, ids
    for demo in launched:
        demo.close()


def sign_in_over_http(client: AppClient, name: str, password: str, headers=None) -> str:
    """The sign-in route's answer, as text."""
    return client.sign_in(name, password, headers=headers).text


def session_tokens(store) -> set[str]:
    return {r["token_hash"] for r in store.rows("select token_hash from sessions")}


# -- run history, deep links, uploads -------------------------------------------------------------
def test_run_history_is_off_and_deep_links_and_uploads_are_refused(hardened_app):
    store, launch, _ = hardened_app
    client = launch()
    assert client.config.get("run_history") is False
    assert client.http.get("/gradio_api/runs").status_code == 404
    session = uuid.uuid4().hex
    answer = client.sign_in("alice", PASSWORDS["alice"])
    assert "Signed in as" in answer.text
    next_pair = next(d for d in client.dependencies() if d["api_name"] == "next_pair")
    client.call(next_pair["id"], [], session, answer.cookies[server.SESSION_COOKIE])
    (token_hash,) = session_tokens(store)
    # the review's takeover: a deep link of the signed-in session, then the config it serves
    linked = client.http.get("/gradio_api/deep_link", params={"session_hash": session})
    assert linked.status_code == 404
    for path in ("/config", "/"):
        page = client.http.get(path, params={"deep_link": linked.text.strip('"') or "x"}).text
        assert not any(hashlib.sha256(t.encode()).hexdigest() == token_hash
                       for t in _token_like(page))
    # uploads: refused whatever the size, nothing written
    for body in (b"", b"x" * 1024):
        answer = client.http.post("/gradio_api/upload", files={"files": ("a.txt", body)})
        assert answer.status_code == 404, answer.text
    temp = store.path.parent / "gradio-tmp"
    assert os.environ["GRADIO_TEMP_DIR"] == str(temp) and temp.stat().st_mode & 0o777 == 0o700
    assert not list(temp.rglob("state.json")) and not list(temp.rglob("a.txt"))


def _token_like(text: str) -> list[str]:
    import re

    return re.findall(r"[A-Za-z0-9_-]{43}", text)


def _walk(value, path=""):
    """(path, key, value) for every entry of a JSON document."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"{path}.{key}", key, item
            yield from _walk(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]")


def test_config_holds_no_secret_and_no_session_for_anyone(hardened_app):
    """Issue 12's last finding: /config served the key that decrypts every browser's session
    token (a ``gr.BrowserState``'s ``props.secret``) to anyone, before sign-in. Fetched
    anonymously, before and while people are signed in, it names no secret, no token and no
    session state."""
    store, launch, _ = hardened_app
    client = launch()
    for signed_in in ([], [auth.sign_in(store, "boss", PASSWORDS["boss"])[0],
                           auth.sign_in(store, "alice", PASSWORDS["alice"])[0]]):
        anonymous = httpx.get(f"{client.base}/config", timeout=30)
        assert anonymous.status_code == 200 and "set-cookie" not in anonymous.headers
        config = anonymous.json()
        types = {c["type"] for c in config["components"]}
        assert "browserstate" not in types, types
        keys = [(path, item) for path, key, item in _walk(config)
                if any(word in str(key).lower() for word in ("secret", "token", "password", "storage_key"))]
        assert not [(path, item) for path, item in keys if item], keys
        text = anonymous.text
        assert not [token for token in signed_in if token in text]
        exact = re.findall(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{40,48}(?![A-Za-z0-9_-])", text)
        assert exact == [], exact  # nothing shaped like token_urlsafe(32), the old secret's shape
    assert not (store.path.parent / "browser-secret").exists()


def test_cross_origin_posts_are_refused(hardened_app):
    """CSRF: the cookie is SameSite=Strict, and any request a browser marks as coming from another
    origin (a page elsewhere, or a same-site neighbour on another port) is refused, sign-in,
    sign-out and Gradio's own queue alike. Same-origin and script calls (no Origin) work."""
    store, launch, _ = hardened_app
    client = launch()
    port = client.base.rsplit(":", 1)[1]
    before = store.table_dump()
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{int(port) + 1}",
                   f"https://127.0.0.1:{port}.evil.example", "http://localhost:" + port):
        refused = client.sign_in("alice", PASSWORDS["alice"], headers={"Origin": origin})
        assert refused.status_code == 403 and "set-cookie" not in refused.headers, origin
    # a neighbour's script may add X-Forwarded-Host (Gradio answers its preflight): not believed
    spoofed = client.sign_in("alice", PASSWORDS["alice"], headers={
        "Origin": "http://evil.example", "X-Forwarded-Host": "evil.example"})
    assert spoofed.status_code == 403
    for site in ("cross-site", "same-site"):  # an old browser's form post that sent no Origin
        refused = client.sign_in("alice", PASSWORDS["alice"], headers={"Sec-Fetch-Site": site})
        assert refused.status_code == 403, site
    assert store.table_dump() == before  # no session was made
    token, _ = auth.sign_in(store, "boss", PASSWORDS["boss"])
    foreign = {"Origin": "http://evil.example", "Cookie": f"{server.SESSION_COOKIE}={token}"}
    assert client.http.post(server.SIGN_OUT_PATH, headers=foreign).status_code == 403
    assert auth.current_user(store, token)  # a page elsewhere cannot sign anyone out
    by_name = {d["api_name"]: d for d in client.dependencies()}
    joined = client.http.post(f"{client.prefix}/queue/join", headers=foreign, json={
        "data": [], "fn_index": by_name["rollback"]["id"], "session_hash": uuid.uuid4().hex})
    assert joined.status_code == 403
    assert store.active_version()["name"] == "v1"
    # the page's own origin (a browser's same-origin fetch) and scripts without Origin are served
    own = client.sign_in("alice", PASSWORDS["alice"], headers={"Origin": client.base,
                                                               "Sec-Fetch-Site": "same-origin"})
    assert own.status_code == 200 and server.SESSION_COOKIE in own.headers["set-cookie"]
    assert client.sign_in("alice", PASSWORDS["alice"]).status_code == 200


def test_forwarded_for_is_believed_only_from_a_trusted_proxy(hardened_app):
    store, launch, _ = hardened_app
    client = launch()  # no --trusted-proxy: the peer (loopback) is the address, whatever XFF says
    for attempt in range(auth.SIGN_IN_CLIENT_ATTEMPTS):
        shown = sign_in_over_http(client, f"guess{attempt}", "wrong-password",
                                  {"X-Forwarded-For": f"203.0.113.{attempt}"})
        assert "wrong name or password" in shown
    refused = sign_in_over_http(client, "alice", PASSWORDS["alice"], {"X-Forwarded-For": "198.51.100.7"})
    assert "too many failed sign-ins" in refused and "Signed in" not in refused


def test_a_trusted_proxy_forwards_the_real_address(hardened_app):
    store, launch, _ = hardened_app
    client = launch(trusted_proxies=["127.0.0.1"])
    for attempt in range(auth.SIGN_IN_CLIENT_ATTEMPTS):
        sign_in_over_http(client, f"guess{attempt}", "wrong-password", {"X-Forwarded-For": "203.0.113.9"})
    # the sprayer's address is blocked; a colleague behind the same proxy is not
    assert "too many failed" in sign_in_over_http(client, "alice", PASSWORDS["alice"],
                                                  {"X-Forwarded-For": "203.0.113.9"})
    assert "Signed in as" in sign_in_over_http(client, "alice", PASSWORDS["alice"],
                                               {"X-Forwarded-For": "198.51.100.7"})


def test_wrong_typed_event_inputs_give_one_message_over_http(hardened_app):
    store, launch, ids = hardened_app
    client = launch()
    token, _ = auth.sign_in(store, "alice", PASSWORDS["alice"])
    by_name = {d["api_name"]: d for d in client.dependencies()}
    session = uuid.uuid4().hex
    client.call(by_name["next_pair"]["id"], [], session, token)
    before = store.table_dump()
    for reasons, comment in (([["x"]], ""), ([], {"a": 1}), ("safer", ""), ([1, 2], "")):
        result = client.call(by_name["vote_left"]["id"], [None, reasons, comment, ""], session, token)
        assert result["ok"], result  # no blank error: a message on the page
        assert "⚠️" in json.dumps(result["outputs"], ensure_ascii=False)
    assert store.table_dump() == before


# -- the sign-in limiter and its timing ---------------------------------------------------------------
def test_limiter_memory_stays_bounded_after_many_giant_sign_ins(store):
    populate(store, pairs=1)
    auth.sign_in_limiter.reset()
    tracemalloc.start()
    try:
        baseline = tracemalloc.take_snapshot()
        for attempt in range(20):
            with pytest.raises(auth.AuthError):
                auth.sign_in(store, f"{attempt}" + "n" * 2_000_000, "pw", client="10.0.0.1")
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(baseline, "filename"))
    finally:
        tracemalloc.stop()
    assert grown < 200_000, grown  # 20 x 2 MB names: the original kept ~40 MB
    assert len(auth.sign_in_limiter) == 1  # only the address: a too-long name is no key


def test_limiter_is_bounded_expires_and_refusals_create_nothing():
    now = [0.0]
    limiter = FailureLimiter(limit=5, window_s=60, max_keys=1_000, clock=lambda: now[0])
    for i in range(50_000):
        limiter.record(f"name:{i}")
    assert len(limiter) == 1_000
    for i in range(10_000):
        assert not limiter.blocked(f"other:{i}")
    assert len(limiter) == 1_000  # reading never adds a key
    for _ in range(20):
        limiter.record("name:alice")
    assert limiter.blocked("name:alice") and len(limiter._events[limiter._key("name:alice")]) == 5
    now[0] = 61.0
    assert not limiter.blocked("name:alice")
    limiter.record("name:bob")
    assert len(limiter) == 1  # everything older than the window went


def test_unknown_names_take_as_long_as_wrong_passwords(store):
    """Median of 9 interleaved tries each; stated bound: medians within 25% of each other
    (83dfaf7: 232 ms for a real name, 12 ms for a missing one)."""
    populate(store, pairs=1)
    known, unknown = [], []
    for attempt in range(9):
        for name, times in (("alice", known), (f"nobody{attempt}", unknown)):
            auth.sign_in_limiter.reset()
            started = time.perf_counter()
            with pytest.raises(auth.AuthError, match="wrong name or password"):
                auth.sign_in(store, name, "wrong-password")
            times.append(time.perf_counter() - started)
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.75 < ratio < 1.33, (statistics.median(known), statistics.median(unknown))


# -- files ----------------------------------------------------------------------------------------------
def test_home_is_0700_and_database_wal_shm_and_backup_are_0600(home, tmp_path):
    from prefloop.db.store import Store

    store = Store()
    store.set_setting("queue_target", 3)  # a write: WAL and SHM exist now
    assert home.stat().st_mode & 0o777 == 0o700
    for name in ("prefloop.db", "prefloop.db-wal", "prefloop.db-shm"):
        assert (home / name).stat().st_mode & 0o777 == 0o600, name
    backup = tmp_path / "b.db"
    store.backup_to(backup)
    assert backup.stat().st_mode & 0o777 == 0o600
    store.close()
    # a home made by an older version (755 / 644) is tightened when opened
    os.chmod(home, 0o755)
    os.chmod(home / "prefloop.db", 0o644)
    Store().close()
    assert home.stat().st_mode & 0o777 == 0o700
    assert (home / "prefloop.db").stat().st_mode & 0o777 == 0o600


# -- version names ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [HTML_NAME, MATHTEXT_NAME, "v1\x1b[2J", "v\x00", "", "a" * 65, "../v0",
                                  " v1", "v1 ", "ｖ1"])
def test_version_names_are_validated_where_they_enter(store, name):
    with pytest.raises(StoreError, match="invalid model version name"):
        store.add_version(name, "base", "models/x")
    assert store.list_versions() == []


def test_version_names_are_shown_as_text_everywhere(store, tmp_path):
    """Names that predate the rule still render inert: table, summary, plots, demo, CLI."""
    from prefloop.cli import cli

    populate(store)
    legacy_version(store, HTML_NAME)
    legacy_version(store, MATHTEXT_NAME)
    boss, _ = auth.sign_in(store, "boss", PASSWORDS["boss"])
    alice, _ = auth.sign_in(store, "alice", PASSWORDS["alice"])
    tables = evaluate_ui.evaluation_tables(store, boss, bootstrap=0)
    figures = evaluate_ui.evaluation_figures(store, boss, tables["report"])
    for figure in figures.values():  # drawing is where mathtext used to raise
        figure.canvas.draw()
    assert "<img" not in tables["summary"]
    # the Demo tab's "Load versions" and the Evaluate tab's refresh both work
    build = _tab_handlers(store)
    loaded = build["demo"]["load"](alice)
    names = [c[0] if isinstance(c, (tuple, list)) else c for c in loaded[0].choices]
    assert loaded[-1] == "" and MATHTEXT_NAME in names
    refreshed = build["evaluate"]["refresh"](boss)
    assert "⚠️" not in str(refreshed[0])
    # a message quoting a name is escaped Markdown
    shown = build["evaluate"]["queue"](boss, HTML_NAME, "v0", 1)
    assert "<img" not in shown and "](" not in shown
    assert "<img" not in train_ui.decide_action(store, boss, "promote", HTML_NAME)
    # the Annotate tab's progress line names the active version: as text
    store.set_active_version(HTML_NAME)
    progress = ui.next_pair(store, alice).progress
    assert "<img" not in progress and "](" not in progress
    store.set_active_version("v1")
    result = CliRunner().invoke(cli, ["eval", "--png", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "plots").glob("*.png"))) == 3


def _tab_handlers(store) -> dict:
    import gradio as gr

    with gr.Blocks():
        return {"demo": evaluate_ui.build_demo_tab(store), "evaluate": evaluate_ui.build_evaluate_tab(store)}


def test_the_cli_never_prints_terminal_control_characters(store):
    from prefloop.cli import cli

    populate(store)
    store.add_prompts([{"text": "evil \x1b]0;owned\x07 \x1b[2J\x00 \u202egnp.exe", "source": "x"}])
    legacy_version(store, "v9\x1b[31m\x9b2J")
    for argv in (["prompts", "list"], ["models", "list"], ["users", "list"], ["models", "promote", "v\x1b[2Jx"]):
        result = CliRunner().invoke(cli, argv)
        for char in ("\x1b", "\x07", "\x00", "\x9b", "\u202e"):
            assert char not in result.output, (argv, result.output)
    assert "\\x1b" in CliRunner().invoke(cli, ["prompts", "list"]).output


@pytest.mark.parametrize("field,value,expected", [
    ("prompt", "hi \x1b[2J", "prompt.text holds control character U+001B"),
    ("prompt", "nul \x00", "prompt.text holds control character U+0000"),
    ("comment", "\x1b]0;x\x07", "comment holds control character"),
    ("version", "v1\x1b[2J", "invalid model version name"),
    ("version", HTML_NAME, "invalid model version name"),
])
def test_import_applies_the_interactive_checks(store, tmp_path, field, value, expected):
    from prefloop.annotate.transfer import export_judgments
    from prefloop.cli import cli

    populate(store)
    export_judgments(store, tmp_path / "j.jsonl")
    lines = (tmp_path / "j.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    if field == "prompt":
        record["prompt"]["text"] = value
    elif field == "comment":
        record["comment"] = value
    else:
        record["generation_a"]["version"] = value
    (tmp_path / "j.jsonl").write_text("\n".join([lines[0], json.dumps(record)]) + "\n")
    before = store.table_dump()
    result = CliRunner().invoke(cli, ["import", str(tmp_path / "j.jsonl")])
    assert result.exit_code == 1 and expected in result.output, result.output
    assert "\x1b" not in result.output and store.table_dump() == before


# -- inputs at the edge ------------------------------------------------------------------------------------
def _one_pair(store):
    store.add_version("v0", "base", "models/v0")
    store.set_active_version("v0")
    store.add_prompts([{"text": "q", "source": "t"}])
    (prompt,) = store.list_prompts()
    store.add_pair(prompt["id"], {"version_id": 1, "text": "a", "seed": 1, "params": {}},
                   {"version_id": 1, "text": "b", "seed": 2, "params": {}})
    auth.create_user(store, "alice", "alice-password-1")
    token, _ = ui.sign_in(store, "alice", "alice-password-1")
    return token, ui.next_pair(store, token)


def test_reasons_are_known_tags_once_and_wrong_types_are_one_message(store):
    token, screen = _one_pair(store)
    for bad in ({"reasons": [["x"]]}, {"reasons": "safer"}, {"comment": {"a": 1}},
                {"better_answer": 5}, {"reasons": [None]}):
        with pytest.raises(InputError):
            ui.vote(store, token, screen.pair, "tie", **bad)
    for pair in ("x", {"pair_id": "1; drop"}, {**screen.pair, "shown_at": "soon"}):
        with pytest.raises(InputError):
            ui.vote(store, token, pair, "tie")
    with pytest.raises(PrefloopError, match="unknown reason tags") as refused:
        ui.vote(store, token, screen.pair, "tie", reasons=["x" * 10_000] * 10)
    assert len(str(refused.value)) < 200
    with pytest.raises(InputError):
        next(ui.live_prompt(store, token, {"a": 1}))
    with pytest.raises(PrefloopError, match="control character"):
        next(ui.live_prompt(store, token, "hi \x1b[2J"))
    assert auth.current_user(store, {"token": 1}) is None
    with pytest.raises(auth.AuthError, match="must be text"):
        auth.sign_in(store, ["alice"], "x")
    assert "pick a round" in train_ui.decide_action(store, token, "promote", {"a": 1}) or \
        "only maintainers" in train_ui.decide_action(store, token, "promote", {"a": 1})
    ui.vote(store, token, screen.pair, "tie", reasons=["safer"] * 200_000 + ["more helpful"])
    (judgment,) = store.judgments()
    assert json.loads(judgment["reasons"]) == ["safer", "more helpful"]


def test_a_second_serve_on_a_taken_port_says_so_in_one_line(store):
    from prefloop.cli import cli

    store.add_version("v0", "base", "models/v0")
    store.set_active_version("v0")
    store.add_prompts([{"text": "q", "source": "t"}])
    auth.create_user(store, "boss", "boss-password-1", "maintainer")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "--port", str(port), "--no-sampler"])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, OSError)


# -- the suspected items -----------------------------------------------------------------------------------
def test_live_prompts_are_never_sampled_for_other_annotators(store):
    """Confirmed on 83dfaf7: a live prompt was stored as a train prompt and then chosen by the
    sampler for everyone. Its own pair (purpose live) still trains, as designed."""
    version = store.add_version("v0", "base", "models/v0")
    store.add_prompts([{"text": "public prompt", "source": "import"}])
    auth.create_user(store, "alice", "alice-password-1")
    store.prompt_id_for_text("alice's private question", source="live", split="train")
    picked = {p["text"] for p in store.prompts_needing_pairs(version, "train", 100)}
    assert picked == {"public prompt"}


def test_demo_runs_only_servable_versions_and_does_not_list_them(store):
    """Confirmed: any name was accepted (rejected candidates ran), and the error named every
    version. Now only the dropdown's servable versions are accepted, with a one-line refusal."""
    populate(store)
    legacy_version(store, "v7", status="rejected")
    legacy_version(store, "vsecret", status="imported")
    token, _ = auth.sign_in(store, "alice", PASSWORDS["alice"])
    for name in ("v7", "vsecret", "nope", ["v0"]):
        with pytest.raises(InputError) as refused:
            next(evaluate_ui.demo_compare(store, token, "hello", name, "v0"))
        assert "v1" not in str(refused.value) and "vsecret" not in str(refused.value)
    assert set(evaluate_ui.version_names(store, token)) == {"v0", "v1"}


def test_undo_cannot_take_back_a_vote_a_round_trained_on_or_an_old_one(store, monkeypatch):
    """Confirmed: undo removed any latest vote, however old, even one in a finished round's data."""
    token, screen = _one_pair(store)
    ui.vote(store, token, screen.pair, "left")
    (judgment,) = store.judgments()
    round_id = store.create_round("dpo", 1, {})
    store.update_round(round_id, status="trained", metrics={"judgment_watermark": judgment["id"]})
    with pytest.raises(StoreError, match="already training data"):
        ui.undo(store, token)
    store.update_round(round_id, status="failed")  # a failed round trained on nothing
    monkeypatch.setattr(votes, "UNDO_WINDOW_S", 0)
    time.sleep(0.01)
    with pytest.raises(StoreError, match="too old to undo"):
        ui.undo(store, token)
    monkeypatch.setattr(votes, "UNDO_WINDOW_S", 600)
    assert "Undone" in ui.undo(store, token).message
    assert store.judgments() == []


def test_the_limiter_lives_in_one_process(store):
    """Confirmed, and kept as a documented limit: failures counted by another process do not
    count here. `prefloop serve` is one process (one uvicorn server, sessions in Gradio's
    memory), so its one limiter sees every sign-in; several `serve` processes on one database
    would each allow the limit."""
    import inspect
    import subprocess

    from prefloop import app

    populate(store, pairs=1)
    code = ("from prefloop.annotate import auth\nfrom prefloop.db.store import Store\ns = Store()\n"
            "for _ in range(auth.SIGN_IN_ATTEMPTS):\n"
            "    try:\n        auth.sign_in(s, 'alice', 'wrong-password')\n"
            "    except auth.AuthError:\n        pass\n")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ), timeout=120)
    assert auth.sign_in(store, "alice", PASSWORDS["alice"])[0]
    assert "workers" not in inspect.getsource(app.serve.callback)
