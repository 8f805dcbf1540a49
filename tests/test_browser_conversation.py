"""A whole conversation on the Annotate page, in a real browser (issue 16: multi-turn).

A 3-turn chat goes in through `prefloop prompts import` (the JSONL chat format, as any user would
write it), a pair is queued for it, and headless Chromium must show every turn with its role;
the guidelines written with `prefloop guidelines set` show too.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from test_browser import CHROMIUM, CHROMIUM_ARGS, PASSWORD, free_port, start_app, stop_app

from prefloop.annotate import auth
from prefloop.cli import cli
from prefloop.db.store import Store

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium")

CHAT = [
    {"role": "user", "content": "Plan a picnic for four, first turn."},
    {"role": "assistant", "content": "Bring sandwiches, fruit and water, second turn."},
    {"role": "user", "content": "Make it vegetarian, third turn."},
]


def test_multi_turn_conversation_shows_every_turn_in_the_browser(home, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    chat_file = tmp_path / "chats.jsonl"
    chat_file.write_text(json.dumps({"messages": CHAT}) + "\n")
    guide = tmp_path / "guidelines.md"
    guide.write_text("Prefer answers that **respect every earlier turn**.")
    store = Store()
    version_id = store.add_version("v0", "base", "models/v0")
    store.set_active_version("v0")
    auth.create_user(store, "alice", PASSWORD, "annotator")
    runner = CliRunner()
    assert runner.invoke(cli, ["prompts", "import", str(chat_file), "--split", "train"]).exit_code == 0
    assert runner.invoke(cli, ["guidelines", "set", str(guide)]).exit_code == 0
    [prompt] = store.list_prompts()
    assert prompt["messages"] == CHAT
    store.add_pair(prompt["id"], {"version_id": version_id, "text": "veggie answer one", "seed": 1},
                   {"version_id": version_id, "text": "veggie answer two", "seed": 2})

    port = free_port()
    process = start_app(home, port)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#pf-name input, #pf-name textarea").first.fill("alice")
            page.locator("#pf-password input").fill(PASSWORD)
            page.locator("#pf-signin-button").click()
            page.locator("#pf-left").get_by_text("veggie answer").wait_for(timeout=20_000)
            prompt_box = page.locator("#pf-prompt")
            text = prompt_box.inner_text()
            for turn in ("first turn", "second turn", "third turn"):
                assert turn in text, text
            roles = prompt_box.locator(".pf-role").all_inner_texts()
            assert [r.strip().lower() for r in roles] == ["user", "assistant", "user"]
            assert "Conversation (3 turns)" in text
            page.get_by_text("Guidelines (version 1").wait_for(timeout=10_000)
            page.get_by_text("Guidelines (version 1").click()
            assert "respect every earlier turn" in page.locator("#pf-guidelines").inner_text()
            browser.close()
    finally:
        stop_app(process)
