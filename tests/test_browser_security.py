"""Issue 12 in a real browser: nothing of a sign-in stays readable in the browser's storage.

83dfaf7 kept every event's inputs in localStorage (Gradio's run history), so the sign-in
password and the raw session token sat there in plain text, through sign-out and reload. This
signs in and out with headless Chromium and reads localStorage and sessionStorage each time.
"""

from __future__ import annotations

import hashlib
import re

import pytest
from test_access import free_port
from test_browser import CHROMIUM, CHROMIUM_ARGS, PASSWORD, prepared_store, sign_in, start_app, stop_app

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium")

STORAGE = """() => {
  const dump = (s) => Object.fromEntries(Array.from({length: s.length}, (_, i) => [s.key(i), s.getItem(s.key(i))]));
  return {local: dump(window.localStorage), session: dump(window.sessionStorage)};
}"""


def leaked(storage: dict, token_hashes: set[str]) -> list[str]:
    """What of a sign-in can be read in storage: the password, a live token, run history."""
    found = []
    for area, items in storage.items():
        for key, value in items.items():
            text = f"{key}={value}"
            if PASSWORD in text:
                found.append(f"{area}: password under {key}")
            if key.startswith("gradio:run-history"):
                found.append(f"{area}: run history {key}")
            for candidate in re.findall(r"[A-Za-z0-9_-]{43}", text):
                if hashlib.sha256(candidate.encode()).hexdigest() in token_hashes:
                    found.append(f"{area}: session token under {key}")
    return found


def test_storage_holds_no_password_and_no_token_after_sign_in_and_sign_out(home):
    playwright = pytest.importorskip("playwright.sync_api")
    store = prepared_store()
    port = free_port()
    process = start_app(home, port)
    url = f"http://127.0.0.1:{port}/"
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page()
            sign_in(page, url, "alice")
            page.keyboard.press("Escape")
            hashes = {r["token_hash"] for r in store.rows("select token_hash from sessions")}
            assert hashes  # signed in: there is a token to look for
            after_sign_in = page.evaluate(STORAGE)
            assert leaked(after_sign_in, hashes) == []
            assert "prefloop-session" in after_sign_in["local"]  # the encrypted copy only
            page.reload()
            page.locator("#pf-left").get_by_text("answer").wait_for(timeout=15_000)
            assert leaked(page.evaluate(STORAGE), hashes) == []

            page.locator("#pf-signout").click()
            page.locator("#pf-signin").wait_for(state="visible", timeout=10_000)
            page.wait_for_timeout(500)
            after_sign_out = page.evaluate(STORAGE)
            assert leaked(after_sign_out, hashes) == []
            assert "prefloop-session" not in after_sign_out["local"]  # the copy went with the session
            page.reload()
            page.locator("#pf-signin").wait_for(state="visible", timeout=10_000)
            assert leaked(page.evaluate(STORAGE), hashes) == []
            browser.close()
    finally:
        stop_app(process)
