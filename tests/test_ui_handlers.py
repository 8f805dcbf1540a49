"""Annotate tab handlers (no server), safe rendering, and the users / serve commands."""

from __future__ import annotations

import random
from html.parser import HTMLParser

import pytest
from click.testing import CliRunner

from prefloop.annotate import auth
from prefloop.errors import PrefloopError
from prefloop.ui import annotate as ui
from prefloop.ui.render import MAX_OUTPUT_CHARS, render_markdown, render_prompt

PASSWORD = "correct horse"


def make_pairs(store, n: int = 2, wanted: int = 1, texts=None) -> list[int]:
    """Pairs built directly (no generation): prompt i, responses 'first i' / 'second i'."""
    version = store.active_version()
    store.add_prompts([{"text": f"prompt {i}", "source": "test"} for i in range(n)])
    prompts = store.list_prompts()
    ids = []
    for i, prompt in enumerate(prompts[:n]):
        text_a, text_b = texts or (f"first {i}", f"second {i}")
        ids.append(
            store.add_pair(
                prompt["id"],
                {"version_id": version["id"], "text": text_a, "seed": 1, "params": {}},
                {"version_id": version["id"], "text": text_b, "seed": 2, "params": {}},
                judgments_wanted=wanted,
            )
        )
    return ids


def signed_in(store, name: str, role: str = "annotator") -> str:
    auth.create_user(store, name, PASSWORD, role)
    token, _ = ui.sign_in(store, name, PASSWORD)
    assert token
    return token


class LeftPicker(random.Random):
    """rng whose first draw decides the side: < 0.5 puts generation a on the left."""

    def __init__(self, value: float):
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


# -- sign in and roles --------------------------------------------------------------------------
def test_sign_in_wrong_password_is_a_message_not_an_error(tiny_v0):
    auth.create_user(tiny_v0, "alice", PASSWORD)
    token, message = ui.sign_in(tiny_v0, "alice", "nope-nope")
    assert token is None and "wrong name or password" in message


def test_annotator_token_cannot_do_maintainer_work(tiny_v0):
    token = signed_in(tiny_v0, "alice")
    with pytest.raises(auth.AuthError, match="only maintainers"):
        auth.require_role(tiny_v0, token, "maintainer")
    assert ui.visible_tabs(auth.current_user(tiny_v0, token)) == {
        "annotate": True, "demo": True, "train": False, "evaluate": False,
    }
    boss = signed_in(tiny_v0, "boss", "maintainer")
    assert auth.require_role(tiny_v0, boss, "maintainer")["name"] == "boss"
    assert ui.visible_tabs(auth.current_user(tiny_v0, boss))["train"] is True


def test_handlers_refuse_without_a_session(tiny_v0):
    make_pairs(tiny_v0, 1)
    for call in (
        lambda: ui.next_pair(tiny_v0, None),
        lambda: ui.vote(tiny_v0, "forged-token", {"pair_id": 1}, "left"),
        lambda: ui.undo(tiny_v0, None),
        lambda: ui.skip(tiny_v0, "", None),
    ):
        with pytest.raises(auth.AuthError, match="sign in"):
            call()
    assert tiny_v0.scalar("select count(*) from assignments") == 0


def test_signed_out_token_stops_working(tiny_v0):
    token = signed_in(tiny_v0, "alice")
    ui.sign_out(tiny_v0, token)
    with pytest.raises(auth.AuthError):
        ui.next_pair(tiny_v0, token)


@pytest.mark.parametrize("left_draw", [0.1, 0.9])
def test_a_cut_off_response_says_so_on_its_side(tiny_v0, left_draw):
    """Issue 14: a response that hit max_new_tokens is marked "cut off" where it is shown."""
    version = tiny_v0.active_version()
    tiny_v0.add_prompts([{"text": "prompt cut", "source": "test"}])
    prompt_id = tiny_v0.list_prompts()[0]["id"]
    tiny_v0.add_pair(
        prompt_id,
        {"version_id": version["id"], "text": "stops mid", "seed": 1, "params": {}, "finish_reason": "length"},
        {"version_id": version["id"], "text": "finished.", "seed": 2, "params": {}, "finish_reason": "stop"},
        judgments_wanted=1,
    )
    screen = ui.next_pair(tiny_v0, signed_in(tiny_v0, "alice"), rng=LeftPicker(left_draw))
    cut, whole = (screen.left_html, screen.right_html) if left_draw < 0.5 else (screen.right_html, screen.left_html)
    assert "stops mid" in cut and "(cut off)" in cut and "hit the length limit" in cut
    assert "finished." in whole and "cut off" not in whole


# -- votes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("left_draw, left_is_a", [(0.1, True), (0.9, False)])
@pytest.mark.parametrize("side", ["left", "right"])
def test_left_right_maps_to_generations(tiny_v0, left_draw, left_is_a, side):
    (pair_id,) = make_pairs(tiny_v0, 1)
    token = signed_in(tiny_v0, "alice")
    screen = ui.next_pair(tiny_v0, token, rng=LeftPicker(left_draw))
    pair = tiny_v0.pair(pair_id)
    shown_left = pair["generation_a_id"] if left_is_a else pair["generation_b_id"]
    assert screen.pair["left_generation_id"] == shown_left
    left_text, right_text = ("first 0", "second 0") if left_is_a else ("second 0", "first 0")
    assert left_text in screen.left_html and right_text in screen.right_html

    ui.vote(tiny_v0, token, screen.pair, side, ["more helpful"], "ok", "a better one")
    (row,) = tiny_v0.judgments()
    preferred_generation = shown_left if side == "left" else (
        pair["generation_b_id"] if left_is_a else pair["generation_a_id"]
    )
    expected = "a" if preferred_generation == pair["generation_a_id"] else "b"
    assert row["choice"] == expected
    assert row["left_generation_id"] == shown_left
    assert row["better_answer"] == "a better one"
    assert row["reasons"] == '["more helpful"]' and row["comment"] == "ok"
    assert row["elapsed_ms"] >= 1


def test_double_vote_records_one_judgment(tiny_v0):
    make_pairs(tiny_v0, 2)
    token = signed_in(tiny_v0, "alice")
    shown = ui.next_pair(tiny_v0, token).pair
    first = ui.vote(tiny_v0, token, shown, "left")
    second = ui.vote(tiny_v0, token, shown, "right")  # the same click arriving twice
    assert tiny_v0.scalar("select count(*) from judgments") == 1
    assert "Recorded" in first.message and "already recorded" in second.message
    assert first.pair["pair_id"] == second.pair["pair_id"] != shown["pair_id"]


def test_vote_on_pair_not_served_to_you_is_refused(tiny_v0):
    pair_ids = make_pairs(tiny_v0, 2)
    alice = signed_in(tiny_v0, "alice")
    bob = signed_in(tiny_v0, "bob")
    alices = ui.next_pair(tiny_v0, alice).pair
    ui.next_pair(tiny_v0, bob)  # bob gets the other pair
    screen = ui.vote(tiny_v0, bob, alices, "left")
    assert "not served to you" in screen.message
    assert tiny_v0.scalar("select count(*) from judgments") == 0
    assert screen.pair is not None and screen.pair["pair_id"] in pair_ids


def test_vote_on_pair_judged_enough_is_refused_and_moves_on(tiny_v0):
    (pair_id,) = make_pairs(tiny_v0, 1, wanted=1)
    alice = signed_in(tiny_v0, "alice")
    bob = signed_in(tiny_v0, "bob")
    tiny_v0.assign_pair(tiny_v0.annotator_by_name("bob")["id"], pair_id,
                        tiny_v0.pair(pair_id)["generation_a_id"])
    alices = ui.next_pair(tiny_v0, alice).pair
    assert alices is None  # the only pair is being judged by bob
    bobs = ui.next_pair(tiny_v0, bob).pair
    tiny_v0.assign_pair(tiny_v0.annotator_by_name("alice")["id"], pair_id, bobs["left_generation_id"])
    ui.vote(tiny_v0, bob, bobs, "tie")
    late = ui.vote(tiny_v0, alice, bobs, "left")
    assert "judged enough" in late.message and late.waiting
    assert tiny_v0.scalar("select count(*) from judgments") == 1


def test_skip_and_undo(tiny_v0):
    make_pairs(tiny_v0, 3)
    token = signed_in(tiny_v0, "alice")
    first = ui.next_pair(tiny_v0, token, rng=LeftPicker(0.9)).pair
    second = ui.vote(tiny_v0, token, first, "both_bad").pair
    undone = ui.undo(tiny_v0, token, second)
    assert undone.pair["pair_id"] == first["pair_id"]
    assert undone.pair["left_generation_id"] == first["left_generation_id"]  # same sides again
    assert tiny_v0.scalar("select count(*) from judgments") == 0
    ui.vote(tiny_v0, token, undone.pair, "tie")
    assert [j["choice"] for j in tiny_v0.judgments()] == ["tie"]
    after_skip = ui.skip(tiny_v0, token, second)
    assert after_skip.pair["pair_id"] not in (first["pair_id"], second["pair_id"])
    assert ui.undo(tiny_v0, token).pair["pair_id"] == first["pair_id"]


def test_unknown_reason_tag_changes_nothing(tiny_v0):
    make_pairs(tiny_v0, 1)
    token = signed_in(tiny_v0, "alice")
    shown = ui.next_pair(tiny_v0, token).pair
    with pytest.raises(PrefloopError, match="unknown reason"):
        ui.vote(tiny_v0, token, shown, "left", ["<script>"])
    assert tiny_v0.scalar("select count(*) from judgments") == 0


def test_empty_queue_says_so_and_polls(tiny_v0):
    token = signed_in(tiny_v0, "alice")
    screen = ui.next_pair(tiny_v0, token)
    assert screen.pair is None and screen.waiting
    assert "preparing pairs: 0 in queue, version v0" in screen.message
    make_pairs(tiny_v0, 1)
    assert ui.next_pair(tiny_v0, token).waiting is False


def test_progress_line_counts(tiny_v0):
    make_pairs(tiny_v0, 3)
    token = signed_in(tiny_v0, "alice")
    screen = ui.next_pair(tiny_v0, token)
    screen = ui.vote(tiny_v0, token, screen.pair, "left")
    assert "1 today" in screen.progress and "1 overall" in screen.progress
    assert "2 pairs in queue" in screen.progress and "v0" in screen.progress


def test_live_prompt_validates_before_generating(tiny_v0):
    token = signed_in(tiny_v0, "alice")
    with pytest.raises(PrefloopError, match="type a prompt"):
        next(ui.live_prompt(tiny_v0, token, "   "))
    with pytest.raises(PrefloopError, match="limited"):
        next(ui.live_prompt(tiny_v0, token, "x" * (ui.MAX_LIVE_PROMPT_CHARS + 1)))


def test_live_prompt_streams_then_is_votable(tiny_v0):
    tiny_v0.set_setting("sampling", {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 6})
    token = signed_in(tiny_v0, "alice")
    screens = list(ui.live_prompt(tiny_v0, token, "Say <b>hi</b>"))
    streaming, final = screens[:-1], screens[-1]
    assert streaming and all(s.pair is None for s in streaming)
    assert "&lt;b&gt;hi&lt;/b&gt;" in streaming[0].prompt_html
    assert final.pair is not None and "ready" in final.message
    pair = tiny_v0.pair(final.pair["pair_id"])
    assert pair["purpose"] == "live"
    ui.vote(tiny_v0, token, final.pair, "right")
    (row,) = tiny_v0.judgments()
    right = pair["generation_b_id"] if row["left_generation_id"] == pair["generation_a_id"] else pair["generation_a_id"]
    assert row["choice"] == ("a" if right == pair["generation_a_id"] else "b")


# -- untrusted text renders inert ---------------------------------------------------------------
class TagCollector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def parsed_tags(markup: str) -> list[tuple[str, dict]]:
    collector = TagCollector()
    collector.feed(markup)
    return collector.tags


XSS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '<a href="javascript:alert(1)">click</a>',
    "[click](javascript:alert(1))",
    "![pixel](http://evil.example/p.png)",
    '<svg onload="alert(1)"></svg>',
    '<iframe src="http://evil.example"></iframe>',
    "```js\" onmouseover=\"alert(1)\n<b>code</b>\n```",
    '<div style="position:fixed;inset:0">cover</div>',
]


@pytest.mark.parametrize("payload", XSS)
def test_untrusted_text_renders_inert(payload):
    for rendered in (render_markdown(payload), render_prompt(payload)):
        for tag, attrs in parsed_tags(rendered):
            assert tag not in ("script", "img", "svg", "iframe", "style", "object", "embed")
            assert not any(name.startswith("on") for name in attrs), (tag, attrs)
            assert "style" not in attrs
            assert not (attrs.get("href") or "").lower().startswith("javascript")
        assert "<script" not in rendered.lower()


def test_xss_in_a_served_pair_is_shown_as_text(tiny_v0):
    make_pairs(tiny_v0, 1, texts=("<script>alert('a')</script>", "<img src=x onerror=alert(1)>"))
    tiny_v0.add_prompts([{"text": "<b onmouseover=alert(1)>hi</b>", "source": "test"}])
    token = signed_in(tiny_v0, "alice")
    screen = ui.next_pair(tiny_v0, token)
    both = screen.left_html + screen.right_html + screen.prompt_html
    assert "&lt;script&gt;" in both and "&lt;img src=x onerror=alert(1)&gt;" in both
    assert all(tag not in ("script", "img") for tag, _ in parsed_tags(both))


def test_code_is_highlighted_and_markdown_renders():
    rendered = render_markdown("Use **this**:\n\n```python\ndef f():\n    return '<x>'\n```")
    assert "<strong>this</strong>" in rendered
    assert '<pre class="pf-code">' in rendered and '<span class="k">def</span>' in rendered
    assert "&lt;x&gt;" in rendered


def test_huge_output_is_truncated_with_a_note():
    huge = "word " * 200_000
    rendered = render_markdown(huge)
    assert len(rendered) < MAX_OUTPUT_CHARS + 2_000
    assert f"showing the first {MAX_OUTPUT_CHARS:,} of {len(huge):,} characters" in rendered


# -- commands -------------------------------------------------------------------------------------
def test_users_commands(store, monkeypatch):
    from prefloop.cli import cli

    runner = CliRunner()
    monkeypatch.setenv("PF_TEST_PW", "hunter2-hunter2")
    added = runner.invoke(cli, ["users", "add", "alice", "--role", "maintainer",
                                "--password-env", "PF_TEST_PW"])
    assert added.exit_code == 0, added.output
    assert "hunter2" not in added.output
    listed = runner.invoke(cli, ["users", "list"])
    assert "alice" in listed.output and "maintainer" in listed.output and "active" in listed.output
    token, _ = ui.sign_in(store, "alice", "hunter2-hunter2")
    assert runner.invoke(cli, ["users", "disable", "alice"]).exit_code == 0
    assert auth.current_user(store, token) is None  # sessions end at once
    assert "disabled" in runner.invoke(cli, ["users", "list"]).output

    other = ui.sign_in(store, "alice", "hunter2-hunter2")[0]
    assert other is None  # disabled users cannot sign in
    runner.invoke(cli, ["users", "add", "carol", "--password-env", "PF_TEST_PW"])
    carol, _ = ui.sign_in(store, "carol", "hunter2-hunter2")
    changed = runner.invoke(cli, ["users", "password", "carol", "--password-env", "PF_NEW_PW"],
                            env={"PF_NEW_PW": "a-new-secret-9"})
    assert changed.exit_code == 0 and "a-new-secret-9" not in changed.output
    assert auth.current_user(store, carol) is None  # old sessions end
    assert ui.sign_in(store, "carol", "hunter2-hunter2")[0] is None
    assert ui.sign_in(store, "carol", "a-new-secret-9")[0]
    unknown = runner.invoke(cli, ["users", "password", "nobody", "--password-env", "PF_NEW_PW"],
                            env={"PF_NEW_PW": "a-new-secret-9"})
    assert unknown.exit_code == 1 and "no user named 'nobody'" in unknown.output

    missing = runner.invoke(cli, ["users", "add", "bob", "--password-env", "PF_NOT_SET"])
    assert missing.exit_code == 1 and "PF_NOT_SET" in missing.output
    no_tty = runner.invoke(cli, ["users", "add", "bob"])
    assert no_tty.exit_code == 1 and "--password-env" in no_tty.output
    short = runner.invoke(cli, ["users", "add", "bob", "--password-env", "PF_SHORT"],
                          env={"PF_SHORT": "short"})
    assert short.exit_code == 1 and "at least" in short.output
    assert store.annotator_by_name("bob") is None
    for command in (["users", "add", "--help"], ["users", "list", "--help"],
                    ["users", "disable", "--help"], ["users", "password", "--help"],
                    ["serve", "--help"]):
        assert "Example:" in runner.invoke(cli, command).output


def test_app_builds_without_launching(tiny_v0):
    from prefloop import app

    demo = app.build_app(tiny_v0)
    assert demo.is_running is False
    head = ui.launch_options(tiny_v0)["head"]
    for _, _, elem_id, key in ui.VOTE_BUTTONS:
        assert f'"{key}": "{elem_id}"' in head
