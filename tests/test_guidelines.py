"""Annotation guidelines: versioned, shown to signed-in annotators, recorded with every vote."""

from __future__ import annotations

from click.testing import CliRunner
from test_ui_handlers import make_pairs, signed_in

from prefloop.cli import cli
from prefloop.ui import annotate as ui


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_each_vote_records_the_guidelines_in_force(tiny_v0, tmp_path):
    store = tiny_v0
    make_pairs(store, 3)
    token = signed_in(store, "alice")
    screen = ui.next_pair(store, token)
    ui.vote(store, token, screen.pair, "left")  # before any guidelines: none recorded

    first = tmp_path / "g1.md"
    first.write_text("# Prefer\n- correct answers\n- then shorter ones\n")
    result = run("guidelines", "set", str(first))
    assert result.exit_code == 0 and "version 1" in result.output
    screen = ui.next_pair(store, token)
    ui.vote(store, token, screen.pair, "right")

    first.write_text("# Prefer\n- correct answers, whatever their length\n")
    assert "version 2" in run("guidelines", "set", str(first)).output
    screen = ui.next_pair(store, token)
    ui.vote(store, token, screen.pair, "tie")

    recorded = [r["guideline_id"] for r in store.rows("select guideline_id from judgments order by id")]
    assert recorded == [None, 1, 2]
    assert "whatever their length" in run("guidelines", "show").output
    history = run("guidelines", "show", "--history").output
    assert "v1" in history and "v2" in history


def test_guidelines_show_only_to_signed_in_annotators_and_render_inert(tiny_v0):
    from prefloop.annotate import guidelines

    store = tiny_v0
    assert ui.guidelines_view(store, signed_in(store, "bob")) == ("Guidelines", "", False)  # none yet
    guidelines.publish(store, "Be **kind**. <script>alert(1)</script>")
    assert ui.guidelines_view(store, None) == ("Guidelines", "", False)  # not signed in: nothing
    label, body, visible = ui.guidelines_view(store, signed_in(store, "carol"))
    assert visible and "version 1" in label
    assert "<strong>kind</strong>" in body and "<script>" not in body


def test_hostile_guidelines_are_refused_and_change_nothing(tiny_v0, tmp_path):
    store = tiny_v0
    before = store.table_dump()
    for name, text in [("bell", "ring\x07ring"), ("escape", "\x1b[31mred"), ("empty", "   \n"),
                       ("huge", "x" * 20_001)]:
        path = tmp_path / f"{name}.md"
        path.write_text(text)
        result = run("guidelines", "set", str(path))
        assert result.exit_code == 1 and "Traceback" not in result.output, (name, result.output)
        assert result.output.startswith("Error: guidelines"), (name, result.output)
    binary = tmp_path / "binary.md"
    binary.write_bytes(b"\xff\xfe\x00")
    result = run("guidelines", "set", str(binary))
    assert result.exit_code == 1 and "cannot read" in result.output
    assert store.table_dump() == before
