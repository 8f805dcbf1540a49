"""The real app in a real browser: sign in, vote with the keyboard, undo, write a better answer.

Starts ``python app.py --no-sampler`` on a free port against a real SQLite file with pairs made
in advance, drives Debian's chromium through Playwright, then checks the rows it wrote.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from prefloop.annotate import auth
from prefloop.db.store import Store

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]
REPO = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepared_store() -> Store:
    """v0 registered (no weights needed: the sampler is off), one annotator, four pairs."""
    store = Store()
    version_id = store.add_version("v0", "base", "models/v0")
    store.set_active_version("v0")
    auth.create_user(store, "alice", PASSWORD, "annotator")
    auth.create_user(store, "boss", PASSWORD, "maintainer")
    store.add_prompts([{"text": f"Question {i}: explain `x{i}`", "source": "test"} for i in range(4)])
    for prompt in store.list_prompts():
        i = prompt["id"]
        store.add_pair(
            prompt["id"],
            {"version_id": version_id, "text": f"alpha answer {i}", "seed": 1, "params": {}},
            {"version_id": version_id, "text": f"beta answer {i}", "seed": 2, "params": {}},
        )
    return store


def start_app(home: Path, port: int) -> subprocess.Popen:
    """`python app.py` on ``port`` against ``home``, once it answers HTTP."""
    with open(home / "server.log", "a") as log:
        process = subprocess.Popen(
            [sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port), "--no-sampler"],
            cwd=REPO,
            env={**os.environ, "PREFLOOP_HOME": str(home), "GRADIO_ANALYTICS_ENABLED": "False"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.time() + 40
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            return process
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail("server did not start:\n" + (home / "server.log").read_text()[-3000:])
            time.sleep(0.3)


def stop_app(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def server(home):
    """(url, store, restart): restart stops the app and starts it again on the same port."""
    store = prepared_store()
    port = free_port()
    running = [start_app(home, port)]

    def restart() -> None:
        stop_app(running[0])
        running[0] = start_app(home, port)

    yield f"http://127.0.0.1:{port}/", store, restart
    stop_app(running[0])


def shown_generation(store: Store, page) -> dict:
    """The pair on screen now, identified by the text in the left box."""
    left_text = page.locator("#pf-left").inner_text()
    rows = store.rows(
        "select g.id, g.prompt_id, g.text, x.id as pair_id from generations g "
        "join pairs x on g.id in (x.generation_a_id, x.generation_b_id)"
    )
    (row,) = [r for r in rows if r["text"] in left_text]
    return row


def wait_for_message(page, text: str) -> None:
    page.locator("#pf-message").get_by_text(text).wait_for(timeout=15_000)


def sign_in(page, url: str, name: str) -> None:
    """Through the page's own form, which posts to the sign-in route and reloads."""
    page.goto(url)
    page.locator("#pf-name input, #pf-name textarea").first.fill(name)
    page.locator("#pf-password input").fill(PASSWORD)
    page.locator("#pf-signin-button").click()
    page.locator("#pf-left").get_by_text("answer").wait_for(timeout=15_000)


def test_maintainer_sees_train_and_evaluate_then_signs_out(server):
    playwright = pytest.importorskip("playwright.sync_api")
    url, _, restart = server
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page()
        sign_in(page, url, "boss")
        restart()
        # a server restart keeps the session: it lives in the database, its cookie in the browser. Gradio's
        # client may itself be reconnecting to the restarted server, which can abort a reload
        # (net::ERR_ABORTED): then load the page afresh, which is what the test means.
        try:
            page.reload()
        except Exception as error:  # noqa: BLE001 - playwright's Error; only an aborted navigation
            if "ERR_ABORTED" not in str(error):
                raise
            page.goto(url)
        page.locator("#pf-left").get_by_text("answer").wait_for(timeout=15_000)
        assert page.locator("#pf-signin").is_hidden()
        for tab in ("Annotate", "Train", "Evaluate", "Demo"):
            assert page.get_by_role("tab", name=tab).count() == 1, tab
        page.locator("#pf-signout").click()
        page.locator("#pf-signin").wait_for(state="visible", timeout=10_000)
        page.reload()  # signed out means signed out, also after a reload
        page.locator("#pf-signin").wait_for(state="visible", timeout=10_000)
        assert page.locator("#pf-main").is_hidden()
        browser.close()


def test_sign_in_vote_by_keyboard_undo_and_better_answer(server, home):
    playwright = pytest.importorskip("playwright.sync_api")
    url, store, _ = server
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        sign_in(page, url, "alice")
        assert page.locator("#pf-signin").is_hidden()
        assert page.get_by_role("tab", name="Train").count() == 0  # annotators: no Train tab

        first = shown_generation(store, page)
        page.reload()  # the session survives a reload, and the same pair comes back
        page.locator("#pf-left").get_by_text("answer").wait_for(timeout=15_000)
        assert page.locator("#pf-signin").is_hidden()
        assert shown_generation(store, page)["id"] == first["id"]
        page.locator("body").click(position={"x": 5, "y": 5})
        page.keyboard.press("1")  # left is better
        wait_for_message(page, "Recorded: A is better")

        second = shown_generation(store, page)
        assert second["pair_id"] != first["pair_id"]
        page.keyboard.press("2")  # right is better ...
        wait_for_message(page, "Recorded: B is better")
        page.keyboard.press("u")  # ... no, take it back
        wait_for_message(page, "Undone")
        assert shown_generation(store, page)["pair_id"] == second["pair_id"]

        page.get_by_text("Why? (optional").click()
        page.get_by_label("more accurate").check()
        better = page.locator("#pf-better textarea")
        better.fill("A careful answer.\n\n1 and 2 (not 3)")  # digits typed here are not votes
        better.press("Escape")
        page.keyboard.press("4")  # both bad, with a better answer
        wait_for_message(page, "Recorded: Both bad")
        assert better.input_value() == ""  # the form is cleared for the next pair
        browser.close()

    rows = {r["pair_id"]: r for r in store.judgments()}
    assert set(rows) == {first["pair_id"], second["pair_id"]}
    for shown, expected_side in ((first, "left"), (second, None)):
        row = rows[shown["pair_id"]]
        assert row["annotator"] == "alice"
        assert row["left_generation_id"] == shown["id"]  # the side shown is what was recorded
        assert row["elapsed_ms"] > 0
        if expected_side == "left":
            assert row["choice"] == ("a" if shown["id"] == row["generation_a_id"] else "b")
    assert rows[second["pair_id"]]["choice"] == "both_bad"
    assert rows[second["pair_id"]]["better_answer"] == "A careful answer.\n\n1 and 2 (not 3)"
    assert json.loads(rows[second["pair_id"]]["reasons"]) == ["more accurate"]
    assert rows[first["pair_id"]]["better_answer"] is None
