"""Thumbs and a continued conversation, in a real browser (issue 16).

A real `python app.py` (sampler off), headless Chromium, keys only for votes:
* `1` on a pair votes A; the "Continue this conversation" panel then offers the prompt set's
  follow-ups; picking one (setting `continuation` = anyone) queues the next turn;
* the next item is a single answer: the pair buttons hide, the thumbs buttons show, and `2`
  votes it down.

With PREFLOOP_SCREENSHOTS=<folder> set, the test also saves the screenshots the README shows.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_browser import CHROMIUM, CHROMIUM_ARGS, PASSWORD, free_port, start_app, stop_app

from prefloop.annotate import auth
from prefloop.db.store import Store

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium")

CHAT = [
    {"role": "user", "content": "Plan a picnic for four."},
    {"role": "assistant", "content": "Bring sandwiches, fruit and water."},
    {"role": "user", "content": "Make it vegetarian."},
]


def _shot(page, name: str) -> None:
    folder = os.environ.get("PREFLOOP_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def test_thumbs_and_multi_turn_conversation_continue_in_the_browser(home):
    playwright = pytest.importorskip("playwright.sync_api")
    store = Store()
    version_id = store.add_version("v0", "base", "models/v0")
    store.set_active_version("v0")
    store.set_setting("continuation", "anyone")
    auth.create_user(store, "alice", PASSWORD, "annotator")
    store.add_prompts([{"text": "Make it vegetarian.", "messages": CHAT,
                        "followups": ["Add a dessert.", "Keep it under 20 euros."]},
                       {"text": "Name a calm colour."}])
    chat, plain = store.list_prompts()
    pair_id = store.add_pair(chat["id"], {"version_id": version_id, "text": "Veggie wraps and hummus.", "seed": 1},
                             {"version_id": version_id, "text": "Ham rolls.", "seed": 2})
    single_id = store.add_single(plain["id"], {"version_id": version_id, "text": "Soft blue.", "seed": 3})

    port = free_port()
    process = start_app(home, port)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#pf-name input").wait_for(timeout=20_000)
            _shot(page, "signin")
            page.locator("#pf-name input").fill("alice")
            page.locator("#pf-password input").fill(PASSWORD)
            page.locator("#pf-signin-button").click()
            page.locator("#pf-left").get_by_text("Ham rolls", exact=False).or_(
                page.locator("#pf-left").get_by_text("Veggie wraps")).wait_for(timeout=20_000)
            assert page.locator("#pf-thumbs-up").is_hidden()
            _shot(page, "annotate-conversation")
            left = page.locator("#pf-left").inner_text()
            page.locator("body").click()
            page.keyboard.press("1")

            # the next item is the single answer: thumbs buttons only
            page.locator("#pf-left").get_by_text("Soft blue.").wait_for(timeout=15_000)
            assert page.locator("#pf-thumbs-up").is_visible() and page.locator("#pf-vote-left").is_hidden()
            # and the conversation just judged waits to be continued, with the chosen answer in it
            box = page.locator("#pf-continue-box")
            box.get_by_text("Continue this conversation").click()
            history = page.locator("#pf-continue-history").inner_text()
            chosen = "Veggie wraps and hummus." if "Veggie" in left else "Ham rolls."
            assert chosen in history and "Make it vegetarian." in history
            page.locator("#pf-followup input").click()
            page.get_by_role("option", name="Add a dessert.").click()
            _shot(page, "annotate-thumbs-continue")
            page.locator("#pf-continue-go").click()
            page.locator("#pf-message").get_by_text("continues in the queue").wait_for(timeout=15_000)

            page.locator("body").click()
            page.keyboard.press("2")
            page.locator("#pf-message").get_by_text("Recorded: thumbs down").wait_for(timeout=15_000)
            browser.close()
    finally:
        stop_app(process)

    votes = {j["pair_id"]: j["choice"] for j in store.judgments()}
    assert votes[single_id] == "down"
    assert votes[pair_id] == ("a" if chosen.startswith("Veggie") else "b")
    continued = store.continued_prompt_of(pair_id)
    assert continued["messages"][-2:] == [{"role": "assistant", "content": chosen},
                                          {"role": "user", "content": "Add a dessert."}]
    assert continued["source"] == "conversation" and continued["followups"] == ["Keep it under 20 euros."]
