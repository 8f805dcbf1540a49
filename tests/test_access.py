"""Access control, proven over HTTP against the real running app.

Gradio exposes every event of a Blocks app as an endpoint anyone can call, whatever the page
hides. So the test launches ``app.build_app`` on a loopback port, reads EVERY dependency from the
server's own ``/config`` (named and unnamed, generators, ``.then`` steps, timers), and calls each
one through the queue protocol (``/gradio_api/queue/join`` + the SSE stream) exactly as a hostile
script would: with no session cookie, a forged one and an expired one, then with an annotator's.
The session is the ``prefloop_session`` cookie of the request that joins the queue (no component
carries it), and a script sets whatever cookie it likes. Nothing maintainer-only may come back and
the database must not change (an annotator may only change their own assignments and votes). A
maintainer's cookie, last, proves the same calls do reach the data, so the absence above is
meaningful. Sign-in and sign-out are HTTP routes (``prefloop.ui.server``), tested here too.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from click.testing import CliRunner
from test_backup_export import PASSWORDS, SECRETS, populate

from bench import http_load
from bench.http_load import queue_messages
from prefloop.annotate import auth
from prefloop.ui import annotate as ui
from prefloop.ui import server

# what an annotator must never see: other people's names and words, and round configs
FORBIDDEN_FOR_ANNOTATOR = (*SECRETS, "mallory", "boss")
ANNOTATOR_MAY_CHANGE = {"assignments", "judgments", "pairs"}  # their own votes, nothing else


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppClient:
    """Calls any event of a running Gradio app by its fn index, the way the browser does."""

    def __init__(self, base: str):
        self.base = base
        self.http = httpx.Client(base_url=base, timeout=60)
        self.config = self.http.get("/config").json()
        self.components = {c["id"]: c for c in self.config["components"]}
        self.prefix = self.config.get("api_prefix", "/gradio_api")

    def dependencies(self) -> list[dict]:
        return [d for d in self.config["dependencies"] if d.get("backend_fn")]

    def input_types(self, dependency: dict) -> list[str]:
        return [self.components[i]["type"] for i in dependency["inputs"]]

    def output_types(self, dependency: dict) -> list[str]:
        return [self.components[i]["type"] for i in dependency["outputs"]]

    def sign_in(self, name: str, password: str, headers: dict | None = None) -> httpx.Response:
        """POST the sign-in route as a script would (JSON); the answer carries the cookie, which
        this client does not keep: each call says which cookie it sends."""
        answer = self.http.post(server.SIGN_IN_PATH, json={"name": name, "password": password},
                                headers=headers)
        self.http.cookies.clear()
        return answer

    def sign_out(self, token: str | None) -> httpx.Response:
        answer = self.http.post(server.SIGN_OUT_PATH, headers=cookie(token))
        self.http.cookies.clear()
        return answer

    def call(self, fn_index: int, data: list, session: str | None = None, token: str | None = None) -> dict:
        """{'ok': bool, 'outputs': [every data message], 'error': str|None}; ``token`` goes in the
        session cookie (none without it)."""
        session = session or uuid.uuid4().hex
        outputs, error, ok = [], None, False
        for message in queue_messages(self.http, self.prefix, fn_index, data, session, cookie(token)):
            if message.get("msg") in ("process_generating", "process_completed"):
                output = message.get("output") or {}
                outputs.append(output.get("data"))
                if message["msg"] == "process_completed":
                    ok = bool(message.get("success"))
                    error = output.get("error")
        return {"ok": ok, "outputs": outputs, "error": error}

    def close(self):
        self.http.close()


def cookie(token: str | None) -> dict:
    """The Cookie header a browser holding ``token`` sends (nothing for None)."""
    return {"Cookie": f"{server.SESSION_COOKIE}={token}"} if token else {}


def set_cookie(answer: httpx.Response) -> str:
    return answer.headers.get("set-cookie", "")


def fill(types: list[str], round_id: int) -> list:
    """Plausible values per input, so a missing check would really reach the data."""
    values = {"state": None, "checkboxgroup": ["more helpful"],
              "textbox": "", "dropdown": str(round_id), "number": 1, "radio": "dpo"}
    return [values.get(kind) for kind in types]


def expired_token(store, name: str) -> str:
    """A real session token of ``name`` whose session ended a second ago."""
    token, user = auth.sign_in(store, name, PASSWORDS[name])
    past = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)).isoformat(timespec="milliseconds")
    store.delete_session(auth._token_hash(token))
    store.create_session(auth._token_hash(token), user["id"], past)
    return token


@pytest.fixture
def running_app(store):
    from prefloop import app

    ids = populate(store)
    demo = app.build_app(store)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                show_error=False, **ui.launch_options(store))
    client = AppClient(f"http://127.0.0.1:{port}")
    try:
        yield store, client, ids
    finally:
        client.close()
        demo.close()


def changed_tables(before: dict, after: dict) -> set[str]:
    return {t for t in before.keys() | after.keys() if before.get(t) != after.get(t)}


def test_every_endpoint_refuses_missing_forged_expired_and_annotator_cookies(running_app):
    store, client, ids = running_app
    dependencies = client.dependencies()
    assert len(dependencies) >= 20  # the whole app: annotate, train, evaluate, demo, page load
    alice_token, _ = auth.sign_in(store, "alice", PASSWORDS["alice"])
    boss_token, _ = auth.sign_in(store, "boss", PASSWORDS["boss"])
    alice = store.annotator_by_name("alice")["id"]
    by_name = {d["api_name"]: d for d in dependencies}

    # (a) no cookie, a made-up one, a maintainer's expired one and one far too long: nothing comes
    # back, nothing changes
    for token in (None, "forged-" + "x" * 36, expired_token(store, "boss"), boss_token + "x" * 100):
        before = store.table_dump()
        for dep in dependencies:
            result = client.call(dep["id"], fill(client.input_types(dep), ids["round"]), token=token)
            shown = json.dumps(result["outputs"])
            for secret in (*FORBIDDEN_FOR_ANNOTATOR, "alice", "v1"):
                assert secret not in shown, (dep["api_name"], secret, shown[:300])
        assert store.table_dump() == before, "a call without a valid session changed the database"
    # a vote and a roll back, named: refused with the sign-in message
    for api_name in ("vote_left", "rollback"):
        refused = json.dumps(client.call(by_name[api_name]["id"], fill(
            client.input_types(by_name[api_name]), ids["round"]), token="forged")["outputs"])
        assert "please sign in" in refused, (api_name, refused[:300])

    # (b) an annotator's cookie, all calls in one browser session (so the vote buttons have a pair)
    session = uuid.uuid4().hex
    before = store.table_dump()
    judged_before = {r["id"] for r in store.rows("select id from judgments")}
    for dep in dependencies:
        result = client.call(dep["id"], fill(client.input_types(dep), ids["round"]), session, alice_token)
        shown = json.dumps(result["outputs"])
        for secret in FORBIDDEN_FOR_ANNOTATOR:
            assert secret not in shown, (dep["api_name"], secret, shown[:300])
    after = store.table_dump()
    assert changed_tables(before, after) <= ANNOTATOR_MAY_CHANGE
    new_votes = store.rows("select annotator_id from judgments where id not in "
                           f"({','.join(map(str, judged_before))})")
    assert new_votes and all(r["annotator_id"] == alice for r in new_votes)
    assert store.rows("select * from rounds")[0]["status"] == "promoted"
    assert store.active_version()["name"] == "v1"
    # mallory's votes are all still there: an annotator's undo only ever takes their own
    assert store.scalar("select count(*) from judgments j join annotators a on a.id = j.annotator_id "
                        "where a.name = 'mallory'") == 3

    signed_out = client.sign_out(alice_token)
    assert signed_out.status_code == 200 and "Max-Age=0" in set_cookie(signed_out)
    assert auth.current_user(store, alice_token) is None and auth.current_user(store, boss_token)
    assert "please sign in" in json.dumps(client.call(by_name["next_pair"]["id"], [], token=alice_token))

    # (c) the same calls with a maintainer's cookie do reach the data (the checks above can fail)
    evaluated = client.call(by_name["on_refresh"]["id"], [], token=boss_token)
    assert "mallory" in json.dumps(evaluated["outputs"])  # agreement table names annotators
    rounds = client.call(by_name["refresh"]["id"], [str(ids["round"])], token=boss_token)
    assert '"dpo"' in json.dumps(rounds["outputs"])
    client.call(by_name["rollback"]["id"], [], token=boss_token)
    assert store.active_version()["name"] == "v0"


def test_sign_in_route_sets_an_http_only_cookie_and_sign_out_ends_it(running_app):
    store, client, _ = running_app
    assert (http_load.SIGN_IN, http_load.SESSION_COOKIE) == (server.SIGN_IN_PATH, server.SESSION_COOKIE)
    wrong = client.sign_in("alice", "wrong-password")
    assert wrong.status_code == 401 and wrong.json() == {"ok": False, "message": "wrong name or password"}
    assert not set_cookie(wrong)
    answer = client.sign_in("alice", PASSWORDS["alice"])
    assert answer.status_code == 200 and answer.json()["role"] == "annotator"
    assert "no-store" in answer.headers["cache-control"]
    header = set_cookie(answer)
    token = answer.cookies[server.SESSION_COOKIE]
    assert auth.current_user(store, token)["name"] == "alice" and token not in answer.text
    attributes = {part.strip().split("=")[0].lower() for part in header.split(";")}
    assert {"httponly", "path", "max-age"} <= attributes and "secure" not in attributes  # http here
    assert "samesite=strict" in header.lower() and "Path=/" in header
    assert f"Max-Age={auth.SESSION_HOURS * 3600}" in header
    # a form post works too; signing in again in the same browser ends the old session
    again = client.http.post(server.SIGN_IN_PATH, data={"name": "alice", "password": PASSWORDS["alice"]},
                             headers=cookie(token))
    client.http.cookies.clear()
    assert again.status_code == 200 and auth.current_user(store, token) is None
    # odd bodies: one message each, never a traceback, nothing stored
    sessions = store.scalar("select count(*) from sessions")
    for kwargs, status in (({"content": b"[1, 2]", "headers": {"Content-Type": "application/json"}}, 400),
                           ({"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400),
                           ({"content": b"name=alice", "headers": {"Content-Type": "text/plain"}}, 400),
                           ({"json": {"name": ["alice"], "password": 5}}, 400),
                           ({"json": {"name": "alice", "password": "x" * 20_000}}, 413)):
        odd = client.http.post(server.SIGN_IN_PATH, **kwargs)
        assert odd.status_code == status and "Traceback" not in odd.text, (kwargs, odd.text)
        assert odd.json()["ok"] is False and not set_cookie(odd)
    assert store.scalar("select count(*) from sessions") == sessions
    assert client.http.get(server.SIGN_IN_PATH).status_code == 405


def test_sign_in_over_http_is_rate_limited_and_logs_no_password(running_app, caplog, capfd):
    store, client, _ = running_app
    caplog.set_level(logging.DEBUG)
    auth.sign_in_limiter.reset()
    for attempt in range(auth.SIGN_IN_ATTEMPTS):
        result = client.sign_in("alice", f"wrong-guess-{attempt}")
        assert result.status_code == 401 and "wrong name or password" in result.text
    refused = client.sign_in("alice", PASSWORDS["alice"])
    assert refused.status_code == 429 and "too many failed sign-ins" in refused.text
    assert not set_cookie(refused)
    auth.sign_in_limiter.reset()
    accepted = client.sign_in("alice", PASSWORDS["alice"])
    assert accepted.status_code == 200 and "Signed in as alice" in accepted.text
    captured = capfd.readouterr()
    everything = caplog.text + captured.out + captured.err
    assert PASSWORDS["alice"] not in everything and "wrong-guess" not in everything


# -- handler-level checks ------------------------------------------------------------------------
def test_annotators_see_only_their_own_work(store):
    populate(store)
    from prefloop.ui import evaluate as evaluate_ui

    token, _ = auth.sign_in(store, "alice", PASSWORDS["alice"])
    screen = ui.next_pair(store, token)
    seen = screen.progress + screen.message + screen.prompt_html + screen.left_html + screen.right_html
    assert "alice" in screen.progress and "2 overall" not in screen.progress  # alice has 3 votes
    assert "3 overall" in screen.progress
    for secret in FORBIDDEN_FOR_ANNOTATOR:
        assert secret not in seen
    # undo: takes alice's latest vote, never mallory's, and shows only alice's pair again
    mallory_votes = store.rows("select * from judgments j join annotators a on a.id = j.annotator_id "
                               "where a.name = 'mallory'")
    for _ in range(5):
        ui.undo(store, token)
    assert store.rows("select * from judgments j join annotators a on a.id = j.annotator_id "
                      "where a.name = 'mallory'") == mallory_votes
    assert store.scalar("select count(*) from judgments j join annotators a on a.id = j.annotator_id "
                        "where a.name = 'alice'") == 0
    # the Demo tab's data for an annotator carries no names, votes or comments
    names = evaluate_ui.version_names(store, token)
    board = evaluate_ui.demo_leaderboard(store, token)
    assert "mallory" not in json.dumps([names, board], default=str)
    # maintainer-only handlers refuse an annotator on the server side
    from prefloop.ui import train as train_ui

    for call in (lambda: train_ui.rounds_table(store, token),
                 lambda: train_ui.curve_frames(store, token, 1),
                 lambda: evaluate_ui.evaluation_tables(store, token, bootstrap=0),
                 lambda: evaluate_ui.queue_battles(store, token, "v0", "v1", 1)):
        with pytest.raises(auth.AuthError, match="only maintainers"):
            call()
    assert "only maintainers" in train_ui.decide_action(store, token, "rollback", None)
    assert "only maintainers" in train_ui.start_round_action(store, token, "dpo", 1e-5, 1, 0.1, 8)
    assert store.active_version()["name"] == "v1" and len(store.list_rounds()) == 1


def test_sessions_expire(store):
    populate(store, pairs=1)
    token, user = auth.sign_in(store, "alice", PASSWORDS["alice"])
    (session,) = store.rows("select * from sessions")
    expires = dt.datetime.fromisoformat(session["expires_at"])
    lifetime = expires - dt.datetime.fromisoformat(session["created_at"])
    assert abs(lifetime - dt.timedelta(hours=auth.SESSION_HOURS)) < dt.timedelta(seconds=5)
    assert auth.current_user(store, token)["name"] == "alice"
    # the same token, its session now past its expiry: refused everywhere
    past = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)).isoformat(timespec="milliseconds")
    store.delete_session(auth._token_hash(token))
    store.create_session(auth._token_hash(token), user["id"], past)
    assert auth.current_user(store, token) is None
    with pytest.raises(auth.AuthError, match="expired"):
        ui.next_pair(store, token)
    # the next sign-in sweeps expired sessions out of the table
    auth.sign_in(store, "alice", PASSWORDS["alice"])
    assert store.scalar("select count(*) from sessions where expires_at < ?", [past + "z"]) == 0


@pytest.mark.parametrize("key", ["name", "client"])
def test_sixth_wrong_attempt_is_refused_even_with_the_right_password(store, key):
    """Per name: 5 failures from anywhere. Per address: SIGN_IN_CLIENT_ATTEMPTS failures for any
    names (issue 12: five typos by five people behind one NAT used to lock the whole office)."""
    populate(store, pairs=1)
    failures = auth.SIGN_IN_ATTEMPTS if key == "name" else auth.SIGN_IN_CLIENT_ATTEMPTS
    for attempt in range(failures):
        name = "alice" if key == "name" else f"guess{attempt}"
        client = f"10.0.0.{attempt}" if key == "name" else "10.9.9.9"
        token, message = ui.sign_in(store, name, "wrong-password", client=client)
        assert token is None and "wrong name or password" in message
        if key == "client" and attempt == auth.SIGN_IN_ATTEMPTS - 1:
            # five failures for five names from one address: the others there still sign in
            token, _ = ui.sign_in(store, "mallory", PASSWORDS["mallory"], client=client)
            assert token
    client = "10.0.0.99" if key == "name" else "10.9.9.9"
    token, message = ui.sign_in(store, "alice", PASSWORDS["alice"], client=client)
    assert token is None and "too many failed sign-ins" in message
    # the other key is not blocked: mallory from the blocked client / alice from a new client
    other = ("mallory", "10.0.0.99") if key == "name" else ("alice", "10.1.1.1")
    if key == "client":
        assert ui.sign_in(store, *other[:1], PASSWORDS["alice"], client=other[1])[0]
    else:
        assert ui.sign_in(store, other[0], PASSWORDS["mallory"], client=other[1])[0]


def test_passwords_never_reach_logs_output_or_exports(store, tmp_path, caplog, capfd, monkeypatch):
    """users add, backup, both exports, import, and a real `prefloop serve` start-up plus a sign-in."""
    from prefloop.cli import cli

    caplog.set_level(logging.DEBUG)
    populate(store, pairs=2)
    secret = "carol-Very-Secret-77"
    runner = CliRunner(env={"PF_PW": secret})
    outputs = [runner.invoke(cli, ["users", "add", "carol", "--password-env", "PF_PW"]).output]
    for command in (["backup", str(tmp_path / "b.db")],
                    ["export", str(tmp_path / "j.jsonl"), "--what", "judgments"],
                    ["export", str(tmp_path / "p.jsonl")],
                    ["import", str(tmp_path / "j.jsonl")]):
        result = runner.invoke(cli, command)
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    for exported in ("j.jsonl", "p.jsonl"):
        text = (tmp_path / exported).read_text()
        assert "$argon2" not in text and secret not in text
        assert all(p not in text for p in PASSWORDS.values())
    assert secret.encode() not in (tmp_path / "b.db").read_bytes()

    port = free_port()
    env = {**os.environ, "PREFLOOP_HOME": str(store.path.parent), "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "prefloop.app", "--host", "127.0.0.1", "--port", str(port), "--no-sampler"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/config", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        client = AppClient(f"http://127.0.0.1:{port}")
        assert "Signed in as carol" in client.sign_in("carol", secret).text
        assert client.sign_in("carol", secret + "-typo").status_code == 401
        client.close()
    finally:
        server.terminate()
        served, _ = server.communicate(timeout=30)
    captured = capfd.readouterr()
    everything = "\n".join([*outputs, served, caplog.text, captured.out, captured.err])
    assert "Running on" in served or "http://127.0.0.1" in served
    assert secret not in everything and "$argon2" not in everything
    assert all(p not in everything for p in PASSWORDS.values())
