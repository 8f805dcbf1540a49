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

    # lineage travels: an export names the guidelines of each vote by text and date, and an
    # import into another home recreates them once and points each vote at its own
    from prefloop.annotate.transfer import export_judgments, import_judgments, read_judgments
    from prefloop.db.store import Store

    path, _ = export_judgments(store, tmp_path / "votes.jsonl")
    texts = [r["guidelines"] and r["guidelines"]["text"] for r in read_judgments(path)]
    assert texts == [None, *(g["text"] for g in store.rows("select text from guidelines order by id"))]
    assert "then shorter ones" in texts[1] and "whatever their length" in texts[2]
    other = Store(tmp_path / "other" / "prefloop.db")
    assert import_judgments(other, path)["guidelines"] == 2
    moved = other.rows("select g.text from judgments j left join guidelines g on g.id = j.guideline_id order by j.id")
    assert [r["text"] for r in moved] == texts
    again = import_judgments(other, path)
    assert again["guidelines"] == 0 and again["already_present"] == 3


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
