"""The schema as migrated, and the store's vote bookkeeping."""

import pytest

from annotate.store import Store, StoreError


def test_migrated_schema_exact_columns(home):
    store = Store(":memory:")
    assert store.table_columns("judgments") == {
        "id": int, "pair_id": int, "annotator_id": int, "choice": str,
        "left_generation_id": int, "better_answer": str, "reasons": str, "comment": str,
        "elapsed_ms": int, "created_at": str,
    }
    assert store.table_columns("generations") == {
        "id": int, "prompt_id": int, "version_id": int, "text": str, "params": str, "seed": int,
        "prompt_tokens": int, "completion_tokens": int, "finish_reason": str,
        "latency_ms": float, "created_at": str,
    }
    assert set(store.tables()) >= {
        "annotators", "sessions", "prompts", "model_versions", "generations", "pairs",
        "assignments", "judgments", "rounds", "round_metrics", "settings",
    }


def test_wal_and_foreign_keys_on(store):
    assert store.scalar("PRAGMA journal_mode") == "wal"
    assert store.scalar("PRAGMA foreign_keys") == 1


def test_migrations_are_idempotent(home):
    Store()
    again = Store()
    assert again.scalar("select count(*) from _sqlite_migrations") == 1
