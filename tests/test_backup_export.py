"""Backups while votes keep arriving, and the judgments export / import round trip.

``populate`` builds a small but complete home without any model (versions are rows, generations
are given texts): other security tests reuse it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest
from click.testing import CliRunner

from prefloop.annotate import auth, transfer
from prefloop.annotate.transfer import backup_database
from prefloop.db.store import Store
from prefloop.errors import ModelError

PASSWORDS = {"boss": "boss-password-Zq81", "alice": "alice-password-Kw27",
             "mallory": "mallory-password-Px64"}
SECRETS = ("MALLORY-SECRET-COMMENT", "MALLORY-SECRET-BETTER", "ROUND-CONFIG-SECRET")


def _generation(version_id: int, text: str, seed: int) -> dict:
    return {"version_id": version_id, "text": text, "seed": seed,
            "params": {"temperature": 0.9, "top_p": 0.95, "max_new_tokens": 160},
            "prompt_tokens": 12, "completion_tokens": 7, "finish_reason": "stop", "latency_ms": 12.5}


def populate(store: Store, pairs: int = 6) -> dict:
    """v0 -> v1 (active), a maintainer 'boss', annotators 'alice' and 'mallory', plain, chat and
    held-out prompts, train / arena / gold / k=2 pairs, mallory's votes with a comment and a better
    answer, alice's votes, and a round whose config carries a marker. Returns ids by name."""
    pairs = max(pairs, 2)  # the votes below need at least four prompts
    v0 = store.add_version("v0", "base", "models/v0")
    v1 = store.add_version("v1", "adapter", "models/v1", parent_id=v0)
    store.set_active_version("v1")
    users = {name: auth.create_user(store, name, PASSWORDS[name], "maintainer" if name == "boss" else "annotator")
             for name in PASSWORDS}
    store.add_prompts(
        [{"text": f"prompt {i}: explain <b>tag</b> & 'quotes'", "source": "test", "kind": "advice"}
         for i in range(pairs)]
        + [{"text": "held out question", "source": "test", "split": "heldout"},
           {"text": "chat follow-up", "source": "chat",
            "messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": "chat follow-up"}]}]
    )
    prompts = store.list_prompts()
    pair_ids = []
    for i, prompt in enumerate(prompts):
        version_b = v0 if i % 3 == 2 else v1  # some cross-version (arena-like) pairs
        pair_ids.append(store.add_pair(
            prompt["id"], _generation(v1, f"answer A{i} with **markdown**", 100 + i),
            _generation(version_b, f"answer B{i}\n<script>x</script>", 200 + i),
            purpose="arena" if version_b == v0 else "train", judgments_wanted=2 if i == 0 else 1,
        ))
    gold = store.add_gold_pair(pair_ids[1], "a")
    round_id = store.create_round("dpo", v0, {"learning_rate": 5e-5, "note": "ROUND-CONFIG-SECRET"})
    store.update_round(round_id, new_version_id=v1, status="promoted", progress=1.0)

    def judge(name, pair_id, choice, left_is_a=True, **extra):
        pair = store.pair(pair_id)
        left = pair["generation_a_id"] if left_is_a else pair["generation_b_id"]
        store.assign_pair(users[name], pair_id, left)
        store.record_judgment(users[name], pair_id, choice, elapsed_ms=1234, **extra)

    judge("mallory", pair_ids[0], "a", comment="MALLORY-SECRET-COMMENT",
          better_answer="MALLORY-SECRET-BETTER", reasons=["more helpful", "safer"])
    judge("alice", pair_ids[0], "b", left_is_a=False)
    judge("mallory", pair_ids[1], "tie", left_is_a=False)
    judge("mallory", pair_ids[2], "both_bad", comment="meh; '); DROP TABLE judgments;--")
    judge("alice", pair_ids[len(prompts) - 1], "a", reasons=["more concise"])
    judge("alice", gold, "a")
    return {"users": users, "pairs": pair_ids, "gold": gold, "round": round_id, "v0": v0, "v1": v1}


def without_ids(records: list[dict]) -> str:
    return json.dumps(records, sort_keys=True)


# -- backup while writing -----------------------------------------------------------------------
def test_backup_is_consistent_while_votes_are_written(store, tmp_path):
    """A writer thread (own connection) records votes while three backups run; each copy passes
    integrity_check and holds a prefix of the votes, each with its assignment and pair count."""
    populate(store, pairs=4)
    version = store.version("v1")
    extra = 150
    store.add_prompts([{"text": f"busy prompt {i}", "source": "busy"} for i in range(extra)])
    busy = [p for p in store.list_prompts() if p["source"] == "busy"]
    pair_ids = [store.add_pair(p["id"], _generation(version["id"], "x", 1), _generation(version["id"], "y", 2))
                for p in busy]
    voter = auth.create_user(store, "voter", "voter-password-1")
    done = threading.Event()
    errors = []

    def writer():
        mine = Store()
        try:
            for pair_id in pair_ids:
                pair = mine.pair(pair_id)
                mine.assign_pair(voter, pair_id, pair["generation_a_id"])
                mine.record_judgment(voter, pair_id, "a", elapsed_ms=5)
                time.sleep(0.002)
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)
        finally:
            mine.close()
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    copies = []
    while not done.is_set() or not copies:
        out = tmp_path / f"copy-{len(copies)}.db"
        backup_database(store, out)
        copies.append(out)
        time.sleep(0.05)
    thread.join()
    assert not errors
    seen = []
    for out in copies:
        copy = Store(out, migrate=False)
        try:
            assert copy.integrity_check() == "ok"
            mine = copy.rows("select pair_id from judgments where annotator_id = ? order by id", [voter])
            got = [r["pair_id"] for r in mine]
            assert got == pair_ids[: len(got)], "a backup must hold a prefix of the votes"
            # every copied vote has its assignment marked voted and its pair counted: no torn write
            assert copy.scalar("select count(*) from assignments where annotator_id = ? and status = 'voted'",
                               [voter]) == len(got)
            assert copy.scalar("select coalesce(sum(judgments_count), 0) from pairs where id in "
                               f"({','.join(map(str, pair_ids))})") == len(got)
            seen.append(len(got))
        finally:
            copy.close()
    assert store.scalar("select count(*) from judgments where annotator_id = ?", [voter]) == extra
    assert len(copies) >= 2 and seen == sorted(seen)


def test_backup_command_refuses_bad_targets_and_leaks_no_password(store, tmp_path):
    populate(store, pairs=2)
    runner = CliRunner()
    from prefloop.cli import cli

    result = runner.invoke(cli, ["backup", str(tmp_path / "b.db")])
    assert result.exit_code == 0, result.output
    assert "integrity ok" in result.output
    data = (tmp_path / "b.db").read_bytes()
    assert all(p.encode() not in data for p in PASSWORDS.values())
    again = runner.invoke(cli, ["backup", str(tmp_path / "b.db")])
    assert again.exit_code == 1 and "already exists" in again.output


# -- judgments export / import ------------------------------------------------------------------
def test_export_import_round_trip_is_lossless_and_idempotent(store, tmp_path, monkeypatch):
    populate(store)
    first = tmp_path / "judgments.jsonl"
    runner = CliRunner()
    from prefloop.cli import cli

    result = runner.invoke(cli, ["export", str(first), "--what", "judgments"])
    assert result.exit_code == 0, result.output
    assert "wrote 6 judgments" in result.output
    text = first.read_text()
    lines = text.splitlines()
    assert json.loads(lines[0]) == transfer.HEADER and len(lines) == 7
    assert "$argon2" not in text and all(p not in text for p in PASSWORDS.values())
    record = next(json.loads(x) for x in lines[1:] if "MALLORY-SECRET-COMMENT" in x)
    assert record["annotator"] == "mallory" and record["better_answer"] == "MALLORY-SECRET-BETTER"
    assert record["generation_a"]["version"] == "v1" and record["generation_a"]["seed"] == 100
    assert record["generation_a"]["params"]["temperature"] == 0.9
    assert record["reasons"] == ["more helpful", "safer"] and record["elapsed_ms"] == 1234
    assert record["prompt"]["split"] == "train" and record["pair"]["purpose"] == "train"
    purposes = {json.loads(x)["pair"]["purpose"] for x in lines[1:]}
    assert purposes == {"train", "arena", "gold"}

    # a fresh home: import, export again -> the same content
    monkeypatch.setenv("PREFLOOP_HOME", str(tmp_path / "fresh"))
    fresh = Store()
    imported = runner.invoke(cli, ["import", str(first)])
    assert imported.exit_code == 0, imported.output
    assert "6 judgments added, 0 already present" in imported.output
    second = tmp_path / "again.jsonl"
    assert runner.invoke(cli, ["export", str(second), "--what", "judgments"]).exit_code == 0
    assert second.read_text() == text
    # imported people cannot sign in; imported versions are lineage only and never active
    for name in ("alice", "mallory"):
        row = fresh.annotator_by_name(name)
        assert row["active"] == 0 and row["password_hash"] is None
        assert ui_sign_in(fresh, name, PASSWORDS[name]) is None
    assert {v["status"] for v in fresh.list_versions()} == {"imported"}
    assert fresh.active_version() is None
    with pytest.raises(Exception, match="cannot be made active"):
        fresh.set_active_version("v1")
    assert fresh.integrity_check() == "ok"

    # importing twice (into the fresh home, and into the original) changes nothing
    before = fresh.table_dump()
    assert "0 judgments added, 6 already present" in runner.invoke(cli, ["import", str(first)]).output
    assert fresh.table_dump() == before
    fresh.close()
    monkeypatch.setenv("PREFLOOP_HOME", str(tmp_path / "home"))
    original = store.table_dump()
    again = runner.invoke(cli, ["import", str(first)])
    assert again.exit_code == 0 and "0 judgments added, 6 already present" in again.output
    assert store.table_dump() == original


def ui_sign_in(store, name, password):
    from prefloop.ui import annotate as ui

    return ui.sign_in(store, name, password)[0]


def test_import_into_a_home_with_other_data_merges(store, tmp_path):
    """A home that already has its own v0 and users: versions and people are matched by name."""
    populate(store, pairs=3)
    out, count = transfer.export_judgments(store, tmp_path / "j.jsonl")
    other = Store(tmp_path / "other.db")
    other.add_version("v0", "base", "models/v0")
    other.set_active_version("v0")
    auth.create_user(other, "alice", "alice-own-password-1")
    counts = transfer.import_judgments(other, out)
    assert counts["judgments"] == count and counts["versions"] == 1  # v1 only: v0 matched by name
    assert counts["annotators"] == 1  # mallory; alice matched and keeps her password
    assert ui_sign_in(other, "alice", "alice-own-password-1")
    assert other.active_version()["name"] == "v0"
    assert other.queued_pairs(other.version("v0")["id"]) == 0  # imported pairs never enter a queue
    assert transfer.judgment_records(other) == transfer.judgment_records(store)
    # the next trained version never reuses an imported name, and lineage-only rows never load
    assert other.next_version_name() == "v2"
    from prefloop.engine.models import load_fresh

    with pytest.raises(ModelError, match="lineage only"):
        load_fresh(other, "v1")
    other.close()


@pytest.mark.parametrize("field, value, message", [
    ("choice", "left", "choice must be one of"),
    ("guidelines", {"text": "", "created_at": "2026-01-01T00:00:00+00:00"}, "guidelines.text is empty"),
    ("guidelines", "be nice", "guidelines must be"),
])
def test_import_refuses_a_bad_line_and_writes_nothing(store, tmp_path, field, value, message):
    populate(store, pairs=2)
    out, _ = transfer.export_judgments(store, tmp_path / "j.jsonl")
    lines = out.read_text().splitlines()
    broken = json.loads(lines[3])
    broken[field] = value
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines[:3] + [json.dumps(broken)] + lines[4:]) + "\n")
    target = Store(tmp_path / "target.db")
    before = target.table_dump()
    with pytest.raises(transfer.TransferError, match=rf"bad.jsonl, line 4: {message}"):
        transfer.import_judgments(target, bad)
    assert target.table_dump() == before
    target.close()


def test_export_refuses_existing_targets(store, tmp_path):
    populate(store, pairs=2)
    existing = tmp_path / "x.jsonl"
    existing.write_text("keep me")
    for target, message in [(existing, "already exists"), (tmp_path, "is a folder"),
                            (tmp_path / "missing" / "x.jsonl", "does not exist")]:
        with pytest.raises(transfer.TransferError, match=message):
            transfer.export_judgments(store, target)
    assert existing.read_text() == "keep me"


def test_backup_copy_is_a_usable_database(store, tmp_path):
    populate(store, pairs=2)
    backup_database(store, tmp_path / "b.db")
    with sqlite3.connect(tmp_path / "b.db") as conn:
        assert conn.execute("select count(*) from judgments").fetchone()[0] == store.stats()["judgments"]
