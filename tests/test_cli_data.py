"""The data commands end to end through click: init, prompts, stats, settings, backup, help text."""

from __future__ import annotations

import json
import re
import sqlite3

import click
import pytest
from click.testing import CliRunner

from prefloop.db.settings import DEFAULT_SETTINGS
from prefloop.db.store import Store


@pytest.fixture
def run():
    from prefloop.cli import cli

    runner = CliRunner()

    def invoke(*args, **kwargs):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False, **kwargs)

    return invoke


def dump(path) -> list[str]:
    """Every row of every table, as SQL text: equal dumps mean an unchanged database."""
    conn = sqlite3.connect(str(path))
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def assert_clean_failure(result, *fragments):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if "Error:" in line]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], result.output


@pytest.fixture
def seeded(home, tmp_path, run):
    """A database holding a few prompts, so 'unchanged' compares real rows."""
    path = tmp_path / "seed.jsonl"
    path.write_text('{"prompt": "seed one"}\n{"prompt": "seed two", "split": "heldout"}\n', encoding="utf-8")
    assert run("prompts", "import", path).exit_code == 0
    return home / "prefloop.db"


# --------------------------------------------------------------------------------------------
# prompts import: bad input through the CLI
# --------------------------------------------------------------------------------------------
BAD_FILES = {
    "malformed.jsonl": ('{"prompt": "a"}\n{"prompt": \n', ["line 2", "not valid JSON"]),
    "empty.jsonl": ("", ["empty"]),
    "columns.jsonl": ('{"text": "a"}\n', ["'prompt' or 'messages'", "'text'"]),
    "columns.csv": ("question,answer\nq,a\n", ["found columns: 'question', 'answer'"]),
    "long.jsonl": ('{"prompt": "a"}\n{"prompt": "' + "x" * 200_000 + '"}\n', ["line 2", "200,000", "20,000"]),
    "blank.jsonl": ('{"prompt": "   "}\n', ["line 1", "empty"]),
    "messages.jsonl": ('{"messages": [{"role": "user", "text": "hi"}]}\n', ["line 1", "'content'"]),
    "notes.txt": ("hello\n", ["unknown file type"]),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_import_bad_file_is_one_clear_error_and_changes_nothing(seeded, tmp_path, run, name):
    content, fragments = BAD_FILES[name]
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    before = dump(seeded)
    assert_clean_failure(run("prompts", "import", path), *fragments)
    assert dump(seeded) == before


def test_import_non_utf8_and_missing_file(seeded, tmp_path, run):
    before = dump(seeded)
    path = tmp_path / "latin.jsonl"
    path.write_bytes('{"prompt": "crème brûlée"}\n'.encode("latin-1"))
    assert_clean_failure(run("prompts", "import", path), "not UTF-8")
    assert_clean_failure(run("prompts", "import", tmp_path / "absent.jsonl"), "no such file")
    assert_clean_failure(run("prompts", "import", path, "--heldout-fraction", "2"), "held-out fraction")
    assert dump(seeded) == before


def test_import_reports_added_and_duplicates(seeded, tmp_path, run):
    path = tmp_path / "more.jsonl"
    path.write_text('{"prompt": "seed one"}\n{"prompt": "new"}\n{"prompt": "new"}\n', encoding="utf-8")
    result = run("prompts", "import", path, "--source", "extra", "--split", "heldout")
    assert result.exit_code == 0, result.output
    assert "1 added, 1 already present, 1 duplicates within the file" in result.output
    store = Store()
    new = [p for p in store.list_prompts() if p["text"] == "new"][0]
    assert (new["source"], new["split"]) == ("extra", "heldout")


def test_prompts_list(seeded, run):
    result = run("prompts", "list", "--split", "heldout")
    assert result.exit_code == 0
    assert "seed two" in result.output and "seed one" not in result.output
    assert "(1 of 1 prompts in heldout)" in result.output
    assert "(1 of 2 prompts)" in run("prompts", "list", "--limit", "1").output


# --------------------------------------------------------------------------------------------
# init
# --------------------------------------------------------------------------------------------
def test_init_is_idempotent(home, run, tiny_model_dir):
    from prefloop.annotate import auth

    first = run("init", "--base-model", tiny_model_dir)
    assert first.exit_code == 0, first.output
    assert "Created model version v0" in first.output
    assert "starter prompts" in first.output
    password = re.search(r"Created maintainer 'admin' with password: (\S+)", first.output).group(1)
    store = Store()
    token, user = auth.sign_in(store, "admin", password)
    assert user["role"] == "maintainer"
    auth.sign_out(store, token)
    assert store.active_version()["name"] == "v0"
    assert store.count_prompts() >= 200 and store.count_prompts("heldout") >= 40

    before = dump(home / "prefloop.db")
    second = run("init", "--base-model", tiny_model_dir, "--admin", "other")
    assert second.exit_code == 0, second.output
    assert "already exist" in second.output
    assert "password" not in second.output
    assert dump(home / "prefloop.db") == before


def test_init_password_from_env_and_no_starter(home, run, tiny_model_dir, monkeypatch):
    from prefloop.annotate import auth

    monkeypatch.setenv("ADMIN_PW", "correct-horse-battery")
    result = run("init", "--base-model", tiny_model_dir, "--admin", "alice", "--admin-password-env", "ADMIN_PW", "--no-starter")
    assert result.exit_code == 0, result.output
    assert "correct-horse-battery" not in result.output
    store = Store()
    assert auth.sign_in(store, "alice", "correct-horse-battery")[1]["role"] == "maintainer"
    assert store.count_prompts() == 0


def test_init_asks_for_a_password_when_interactive(home, run, tiny_model_dir, monkeypatch):
    from prefloop.annotate import auth
    from prefloop.cli import init as data_cli

    monkeypatch.setattr(data_cli, "_interactive", lambda: True)
    result = run("init", "--base-model", tiny_model_dir, "--no-starter", input="typed-secret-1\ntyped-secret-1\n")
    assert result.exit_code == 0, result.output
    assert "typed-secret-1" not in result.output  # hidden, and never echoed back
    assert auth.sign_in(Store(), "admin", "typed-secret-1")[1]["role"] == "maintainer"


@pytest.mark.parametrize(
    "env, args, fragment",
    [
        ({}, ["--admin-password-env", "UNSET_PW_VAR"], "UNSET_PW_VAR is not set"),
        ({"SHORT_PW": "abc"}, ["--admin-password-env", "SHORT_PW"], "at least 8 characters"),
        ({}, ["--admin", "bad name!"], "user names"),
        ({}, ["--base-model", "/no/such/model"], "does not exist"),
    ],
)
def test_init_refusals_change_nothing(home, run, monkeypatch, env, args, fragment):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    Store()
    before = dump(home / "prefloop.db")
    assert_clean_failure(run("init", *args), fragment)
    assert dump(home / "prefloop.db") == before


def test_ensure_initialised_reports_what_it_did(store, tiny_model_dir):
    from prefloop.service.setup import describe_initialisation, ensure_initialised

    done = ensure_initialised(store, base_model=str(tiny_model_dir))
    assert done["version"]["created"] and done["prompts"]["added"] >= 200
    assert done["admin"]["created"] and done["admin"]["name"] == "admin"
    assert len(done["admin"]["password"]) >= 16
    assert any(done["admin"]["password"] in line for line in describe_initialisation(done))

    again = ensure_initialised(store, base_model=str(tiny_model_dir))
    assert not again["version"]["created"] and not again["admin"]["created"]
    assert again["prompts"]["added"] == 0 and again["admin"]["password"] is None


# --------------------------------------------------------------------------------------------
# stats, settings, backup
# --------------------------------------------------------------------------------------------
def test_stats_json_counts_votes_by_choice(tiny_v0, run):
    store = tiny_v0
    store.add_prompts([{"text": "Why?", "source": "t"}])
    prompt_id = store.list_prompts()[0]["id"]
    version_id = store.active_version()["id"]
    annotator = store.add_annotator("ann", "annotator", "x")
    gen = {"version_id": version_id, "params": {}, "seed": 1}
    pair = store.add_pair(prompt_id, {**gen, "text": "A"}, {**gen, "text": "B", "seed": 2})
    store.add_pair(prompt_id, {**gen, "text": "C"}, {**gen, "text": "D", "seed": 2})
    assert store.serve_pair(annotator, version_id)["id"] == pair
    store.record_judgment(annotator, pair, "tie")

    result = run("stats", "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["judgments_by_choice"] == {"a": 0, "b": 0, "tie": 1, "both_bad": 0}
    assert stats["active_version"] == "v0"
    assert stats["queue_length"] == 1
    assert (stats["prompts"], stats["pairs"], stats["judgments"]) == (1, 2, 1)
    text = run("stats").output
    assert "active version" in text and "tie 1" in text


def test_settings_list_and_set(home, run):
    assert run("settings", "set", "judgments_per_pair", "3").exit_code == 0
    assert run("settings", "set", "gold_rate", "0.25").exit_code == 0
    result = run("settings", "set", "sampling", '{"temperature": 0.5}')
    assert result.exit_code == 0, result.output
    store = Store()
    assert store.get_setting("judgments_per_pair") == 3
    assert store.get_setting("sampling")["temperature"] == 0.5
    assert store.get_setting("sampling")["max_new_tokens"] == DEFAULT_SETTINGS["sampling"]["max_new_tokens"]  # merged
    listed = json.loads(run("settings", "list", "--json").output)
    assert listed["gold_rate"] == 0.25
    assert "judgments_per_pair" in run("settings", "list").output

    before = dump(home / "prefloop.db")
    assert_clean_failure(run("settings", "set", "nonsense", "1"), "unknown setting 'nonsense'", "queue_target")
    assert_clean_failure(run("settings", "set", "judgments_per_pair", "0"), "at least 1")
    assert_clean_failure(run("settings", "set", "queue_target", "many"), "whole number")
    assert_clean_failure(run("settings", "set", "gold_rate", "1.5"), "from 0.0 to 1.0")
    assert_clean_failure(run("settings", "set", "active_version", "v9"), "promoting or rolling back")
    assert_clean_failure(run("settings", "set", "sampling", "[1]"), "JSON object")
    assert_clean_failure(run("settings", "set", "sampling", '{"temprature": 1}'), "unknown sampling field")
    assert_clean_failure(run("settings", "set", "sampling", '{"top_p": 7}'), "top_p")
    assert dump(home / "prefloop.db") == before


def test_backup_copies_everything_and_refuses_bad_targets(seeded, tmp_path, run):
    out = tmp_path / "backup.db"
    result = run("backup", out)
    assert result.exit_code == 0, result.output
    assert "integrity ok" in result.output
    copy = Store(out, migrate=False)
    assert copy.integrity_check() == "ok"
    copy.close()
    assert dump(out) == dump(seeded)

    assert_clean_failure(run("backup", out), "already exists")
    assert_clean_failure(run("backup", tmp_path / "missing" / "b.db"), "does not exist")


# --------------------------------------------------------------------------------------------
# help text: every command of every helper ends in an example
# --------------------------------------------------------------------------------------------
def walk(command: click.Command, path: str = "prefloop"):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from walk(sub, f"{path} {name}")


def test_every_command_has_help_with_an_example():
    from prefloop.cli import cli

    commands = dict(walk(cli))
    assert {"prefloop prompts import", "prefloop settings set", "prefloop backup"} <= set(commands)
    missing = [path for path, command in commands.items() if "Example" not in (command.help or "")]
    assert not missing, f"commands without an 'Example' in their help: {missing}"


def test_help_renders_for_every_command(run):
    from prefloop.cli import cli

    for path, _ in walk(cli):
        result = run(*path.split()[1:], "--help")
        assert result.exit_code == 0, (path, result.output)
        assert "Example" in result.output, path
