"""Issue 12 in a real browser: nothing of a sign-in is readable by the page's scripts.

83dfaf7 kept every event's inputs in localStorage (Gradio's run history), so the sign-in
password and the raw session token sat there in plain text; the fix after it kept the token in a
``gr.BrowserState``, encrypted with a key that ``/config`` hands to anyone. Now the session is an
HttpOnly cookie. Headless Chromium signs in through the page's form, then reads localStorage,
sessionStorage and ``document.cookie`` (and the page itself) after sign-in, after a reload and
after sign-out, and watches every request the page sends: the password goes only to the
sign-in route, never into a Gradio event. After sign-out the server refuses the old token.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid

import httpx
import pytest
from test_access import free_port
from test_browser import CHROMIUM, CHROMIUM_ARGS, PASSWORD, prepared_store, sign_in, start_app, stop_app

from bench.http_load import queue_messages
from prefloop.annotate import auth
from prefloop.ui import server

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium")

READABLE = """() => {
  const dump = (s) => Object.fromEntries(Array.from({length: s.length}, (_, i) => [s.key(i), s.getItem(s.key(i))]));
  return {local: dump(window.localStorage), session: dump(window.sessionStorage),
          cookie: {'document.cookie': document.cookie}};
}"""


def leaked(readable: dict, secrets: dict[str, str], token_hashes: set[str]) -> list[str]:
    """What of a sign-in page scripts can read: the password, a token, run history, the old
    BrowserState copy of the session."""
    found = []
    for area, items in readable.items():
        for key, value in items.items():
            text = f"{key}={value}"
            found += [f"{area}: {what} under {key}" for what, secret in secrets.items() if secret in text]
            if key.startswith("gradio:run-history") or key == "prefloop-session":
                found.append(f"{area}: {key}")
            if server.SESSION_COOKIE in text:
                found.append(f"{area}: the session cookie is readable")
            for candidate in re.findall(r"[A-Za-z0-9_-]{43}", text):
                if hashlib.sha256(candidate.encode()).hexdigest() in token_hashes:
                    found.append(f"{area}: a live session token under {key}")
    return found


def next_pair_with(base: str, token: str) -> str:
    """What the app answers a script that sends ``token`` as its cookie and asks for a pair."""
    config = httpx.get(f"{base}/config", timeout=30).json()
    (fn,) = [d["id"] for d in config["dependencies"] if d.get("api_name") == "next_pair"]
    with httpx.Client(timeout=60) as http:
        messages = list(queue_messages(http, f"{base}/gradio_api", fn, [], uuid.uuid4().hex,
                                       {"Cookie": f"{server.SESSION_COOKIE}={token}"}))
    return json.dumps([m.get("output") for m in messages])


def test_page_scripts_never_see_the_password_or_the_session(home):
    playwright = pytest.importorskip("playwright.sync_api")
    store = prepared_store()
    port = free_port()
    process = start_app(home, port)
    base = f"http://127.0.0.1:{port}"
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            context = browser.new_context()
            page = context.new_page()
            sent = []  # (url, body) of every request the page makes
            page.on("request", lambda request: sent.append((request.url, request.post_data or "")))
            sign_in(page, base + "/", "alice")
            page.keyboard.press("Escape")

            (cookie,) = [c for c in context.cookies() if c["name"] == server.SESSION_COOKIE]
            token = cookie["value"]
            assert auth.current_user(store, token)["name"] == "alice"
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
            lifetime = dt.datetime.fromtimestamp(cookie["expires"], dt.timezone.utc) - dt.datetime.now(dt.timezone.utc)
            assert abs(lifetime - dt.timedelta(hours=auth.SESSION_HOURS)) < dt.timedelta(minutes=5)
            hashes = {r["token_hash"] for r in store.rows("select token_hash from sessions")}
            secrets = {"the password": PASSWORD, "the session token": token}

            assert leaked(page.evaluate(READABLE), secrets, hashes) == []
            assert PASSWORD not in page.content() and token not in page.content()
            page.reload()  # the cookie keeps the session; still nothing readable
            page.locator("#pf-left").get_by_text("answer").wait_for(timeout=15_000)
            assert leaked(page.evaluate(READABLE), secrets, hashes) == []

            # the password travelled once, to the sign-in route; no Gradio event carried it
            with_password = [url for url, body in sent if PASSWORD in body]
            assert with_password == [base + server.SIGN_IN_PATH], with_password
            assert not [url for url, body in sent if token in url or token in body]

            page.locator("#pf-signout").click()
            page.locator("#pf-signin").wait_for(state="visible", timeout=10_000)
            page.wait_for_timeout(500)
            assert leaked(page.evaluate(READABLE), secrets, hashes) == []
            assert [c for c in context.cookies() if c["name"] == server.SESSION_COOKIE] == []
            page.reload()
            page.locator("#pf-signin").wait_for(state="visible", timeout=10_000)
            assert page.locator("#pf-main").is_hidden()
            assert leaked(page.evaluate(READABLE), secrets, hashes) == []
            browser.close()

        # the server ended the session: the old token, sent by a script, gets nothing
        assert auth.current_user(store, token) is None
        refused = next_pair_with(base, token)
        assert "please sign in" in refused and "answer" not in refused
    finally:
        stop_app(process)


def test_a_wrong_password_is_a_message_on_the_page(home):
    playwright = pytest.importorskip("playwright.sync_api")
    prepared_store()
    port = free_port()
    process = start_app(home, port)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#pf-name input").fill("alice")
            page.locator("#pf-password input").fill("not-the-password")
            page.locator("#pf-password input").press("Enter")  # Enter submits, like the button
            page.locator("#pf-signin-message").get_by_text("wrong name or password").wait_for(timeout=15_000)
            assert page.locator("#pf-password input").input_value() == ""
            assert page.locator("#pf-main").is_hidden()
            browser.close()
    finally:
        stop_app(process)
