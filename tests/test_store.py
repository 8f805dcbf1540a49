"""The schema as migrated, and the store's vote bookkeeping."""


from prefloop.db.store import Store

EXPECTED_SCHEMA = {
    "active_version": {"id": int, "version_id": int, "changed_at": str},
    "annotators": {"id": int, "name": str, "role": str, "password_hash": str, "active": int,
                   "created_at": str, "last_login_at": str},
    "assignments": {"id": int, "pair_id": int, "annotator_id": int, "left_generation_id": int,
                    "status": str, "served_at": str},
    "generations": {"id": int, "prompt_id": int, "version_id": int, "text": str, "params": str,
                    "seed": int, "prompt_tokens": int, "completion_tokens": int,
                    "finish_reason": str, "latency_ms": float, "created_at": str},
    "judgments": {"id": int, "pair_id": int, "annotator_id": int, "choice": str,
                  "left_generation_id": int, "better_answer": str, "reasons": str,
                  "comment": str, "elapsed_ms": int, "created_at": str, "guideline_id": int},
    "guidelines": {"id": int, "text": str, "created_by": int, "created_at": str},
    "model_versions": {"id": int, "name": str, "parent_id": int, "kind": str, "path": str,
                       "status": str, "card": str, "created_at": str},
    "pairs": {"id": int, "prompt_id": int, "generation_a_id": int, "generation_b_id": int,
              "purpose": str, "judgments_wanted": int, "judgments_count": int,
              "gold_choice": str, "status": str, "created_by": int, "created_at": str, "mode": str,
              "selection": str},
    "prompts": {"id": int, "text": str, "messages": str, "kind": str, "source": str,
                "split": str, "content_hash": str, "created_at": str, "parent_pair_id": int,
                "followups": str},
    "round_metrics": {"id": int, "round_id": int, "step": int, "name": str, "value": float,
                      "created_at": str},
    "rounds": {"id": int, "method": str, "parent_version_id": int, "new_version_id": int,
               "config": str, "dataset_hash": str, "dataset_size": int, "status": str,
               "progress": float, "pid": int, "error": str, "metrics": str, "created_at": str,
               "started_at": str, "finished_at": str, "heartbeat_at": str},
    "sessions": {"token_hash": str, "annotator_id": int, "created_at": str, "expires_at": str},
    "settings": {"key": str, "value": str},
    "round_pairs": {"round_id": int, "pair_id": int},
}


def test_migrated_schema_exact_columns(home):
    """A new migration must update this on purpose: the schema is a contract with old files."""
    store = Store(":memory:")
    tables = {t for t in store.tables() if not t.startswith("_")}
    assert tables == set(EXPECTED_SCHEMA)
    for table, columns in EXPECTED_SCHEMA.items():
        assert store.table_columns(table) == columns, table


def test_one_vote_per_pair_and_annotator_is_enforced_by_the_schema(store):
    sql = store.scalar("select sql from sqlite_master where name = 'idx_judgments_pair_id_annotator_id'")
    assert sql and "UNIQUE" in sql.upper()


def test_wal_and_foreign_keys_on(store):
    assert store.scalar("PRAGMA journal_mode") == "wal"
    assert store.scalar("PRAGMA foreign_keys") == 1


def test_migrations_are_idempotent(home):
    Store()
    again = Store()
    assert again.scalar("select count(*) from _sqlite_migrations") == 7


def test_the_active_version_setting_of_an_old_home_becomes_the_pointer(home, tmp_path):
    """m002 moves an existing home's active_version setting into its own one-row table."""
    import sqlite_utils

    from prefloop.db.migrations import m001_initial, m002_active_version_pointer

    db = sqlite_utils.Database(tmp_path / "old.db")
    m001_initial(db)
    db.execute("insert into model_versions (name, kind, path, status, card, created_at) "
               "values ('v0', 'base', '', 'ready', '{}', 'now'), ('v1', 'lora', '', 'ready', '{}', 'now')")
    db.execute("insert into settings (key, value) values ('active_version', '\"v1\"')")
    m002_active_version_pointer(db)
    assert db.execute("select version_id from active_version").fetchall() == [(2,)]
    assert db.execute("select count(*) from settings where key = 'active_version'").fetchone() == (0,)


def test_the_legacy_promotion_setting_of_an_old_home_is_dropped(home, tmp_path):
    """m007: promotion_min_accuracy (the gate before issue 14) is read by nothing, so an old home
    that stored it loses the row instead of listing a setting that does nothing."""
    import sqlite_utils

    from prefloop.db.migrations import migrations
    from prefloop.db.store import Store

    path = tmp_path / "old.db"
    db = sqlite_utils.Database(path)
    migrations.apply(db, stop_before="m007_drop_promotion_min_accuracy")
    db.execute("insert into settings (key, value) values ('promotion_min_accuracy', '0.5'), ('queue_target', '8')")
    db.conn.commit()
    db.close()
    store = Store(path)
    assert store.scalar("select count(*) from settings where key = 'promotion_min_accuracy'") == 0
    assert "promotion_min_accuracy" not in store.all_settings()
    assert store.get_setting("queue_target") == 8  # the other settings stay


def test_settings_are_checked_by_the_store_whoever_writes(store):
    """No path (CLI, app, a script) can store a value the settings' limits refuse."""
    import math

    import pytest

    from prefloop.errors import StoreError

    for key, value in [("queue_target", -1), ("gold_rate", math.nan), ("judgments_per_pair", 1.5),
                       ("active_version", "v9"), ("nope", 1)]:
        with pytest.raises(StoreError):
            store.set_setting(key, value)
    store.set_setting("queue_target", 8)
    assert store.get_setting("queue_target") == 8
