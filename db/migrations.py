"""Schema migrations: append only. Never edit one that has shipped; add ``m00N_...`` instead.

Each is applied by sqlite-utils' ``Migrations`` in the same transaction as its record.
"""

from __future__ import annotations

import json

import sqlite_utils
from sqlite_utils import Migrations

SCHEMA_VERSION_SET = "prefloop"
migrations = Migrations(SCHEMA_VERSION_SET)


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    db["annotators"].create(
        {
            "id": int,
            "name": str,
            "role": str,
            "password_hash": str,
            "active": int,
            "created_at": str,
            "last_login_at": str,
        },
        pk="id",
        not_null={"name", "role", "active", "created_at"},
        defaults={"active": 1},
    )
    db["annotators"].create_index(["name"], unique=True)

    db["sessions"].create(
        {"token_hash": str, "annotator_id": int, "created_at": str, "expires_at": str},
        pk="token_hash",
        foreign_keys=[("annotator_id", "annotators", "id")],
        not_null={"annotator_id", "created_at", "expires_at"},
    )

    db["prompts"].create(
        {
            "id": int,
            "text": str,
            "messages": str,  # JSON chat messages, or null for a plain prompt
            "kind": str,  # task category (advice, coding, ...) where known
            "source": str,
            "split": str,
            "content_hash": str,
            "created_at": str,
        },
        pk="id",
        not_null={"text", "source", "split", "content_hash", "created_at"},
    )
    db["prompts"].create_index(["content_hash"], unique=True)
    db["prompts"].create_index(["split"])

    db["model_versions"].create(
        {
            "id": int,
            "name": str,
            "parent_id": int,
            "kind": str,  # base | adapter | merged
            "path": str,  # relative to the home folder where inside it
            "status": str,  # ready | candidate | rejected | retired
            "card": str,  # JSON: parent, method, config, data hash and count, metrics
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("parent_id", "model_versions", "id")],
        not_null={"name", "kind", "path", "status", "created_at"},
    )
    db["model_versions"].create_index(["name"], unique=True)

    db["generations"].create(
        {
            "id": int,
            "prompt_id": int,
            "version_id": int,
            "text": str,
            "params": str,  # JSON sampling settings: temperature, top_p, max_new_tokens, ...
            "seed": int,
            "prompt_tokens": int,
            "completion_tokens": int,
            "finish_reason": str,
            "latency_ms": float,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("prompt_id", "prompts", "id"), ("version_id", "model_versions", "id")],
        not_null={"prompt_id", "version_id", "text", "params", "seed", "created_at"},
    )
    db["generations"].create_index(["prompt_id", "version_id"])

    db["pairs"].create(
        {
            "id": int,
            "prompt_id": int,
            "generation_a_id": int,
            "generation_b_id": int,
            "purpose": str,  # train | arena | gold | live
            "judgments_wanted": int,
            "judgments_count": int,
            "gold_choice": str,  # known answer for gold pairs
            "status": str,  # open | done | retired
            "created_by": int,  # annotator for live prompts
            "created_at": str,
        },
        pk="id",
        foreign_keys=[
            ("prompt_id", "prompts", "id"),
            ("generation_a_id", "generations", "id"),
            ("generation_b_id", "generations", "id"),
            ("created_by", "annotators", "id"),
        ],
        not_null={
            "prompt_id",
            "generation_a_id",
            "generation_b_id",
            "purpose",
            "judgments_wanted",
            "judgments_count",
            "status",
            "created_at",
        },
        defaults={"judgments_count": 0, "status": "open"},
    )
    db["pairs"].create_index(["status", "purpose"])

    db["assignments"].create(
        {
            "id": int,
            "pair_id": int,
            "annotator_id": int,
            "left_generation_id": int,  # the side shown left, randomised per pair and annotator
            "status": str,  # served | voted | skipped
            "served_at": str,
        },
        pk="id",
        foreign_keys=[
            ("pair_id", "pairs", "id"),
            ("annotator_id", "annotators", "id"),
            ("left_generation_id", "generations", "id"),
        ],
        not_null={"pair_id", "annotator_id", "left_generation_id", "status", "served_at"},
    )
    db["assignments"].create_index(["pair_id", "annotator_id"], unique=True)
    db["assignments"].create_index(["annotator_id", "status"])

    db["judgments"].create(
        {
            "id": int,
            "pair_id": int,
            "annotator_id": int,
            "choice": str,  # a | b | tie | both_bad (a/b name generations, not screen sides)
            "left_generation_id": int,
            "better_answer": str,
            "reasons": str,  # JSON list of tags
            "comment": str,
            "elapsed_ms": int,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[
            ("pair_id", "pairs", "id"),
            ("annotator_id", "annotators", "id"),
            ("left_generation_id", "generations", "id"),
        ],
        not_null={"pair_id", "annotator_id", "choice", "left_generation_id", "created_at"},
    )
    db["judgments"].create_index(["pair_id", "annotator_id"], unique=True)
    db["judgments"].create_index(["created_at"])

    db["rounds"].create(
        {
            "id": int,
            "method": str,  # dpo | orpo
            "parent_version_id": int,
            "new_version_id": int,
            "config": str,  # JSON of the hyperparameter dataclass
            "dataset_hash": str,
            "dataset_size": int,
            "status": str,  # pending | running | failed | trained | promoted | rejected
            "progress": float,
            "pid": int,
            "error": str,
            "metrics": str,  # JSON summary: final loss, held-out accuracy, gate verdict
            "created_at": str,
            "started_at": str,
            "finished_at": str,
            "heartbeat_at": str,
        },
        pk="id",
        foreign_keys=[
            ("parent_version_id", "model_versions", "id"),
            ("new_version_id", "model_versions", "id"),
        ],
        not_null={"method", "parent_version_id", "config", "status", "created_at"},
        defaults={"progress": 0.0},
    )

    db["round_metrics"].create(
        {"id": int, "round_id": int, "step": int, "name": str, "value": float, "created_at": str},
        pk="id",
        foreign_keys=[("round_id", "rounds", "id")],
        not_null={"round_id", "step", "name", "value"},
    )
    db["round_metrics"].create_index(["round_id", "name", "step"])

    db["settings"].create({"key": str, "value": str}, pk="key", not_null={"value"})


@migrations()
def m002_active_version_pointer(db: sqlite_utils.Database) -> None:
    """The active version gets its own one-row table: a pointer, not a free-form setting."""
    db.execute(
        "create table active_version (id integer primary key check (id = 1), "
        "version_id integer not null references model_versions(id), changed_at text not null)"
    )
    row = db.execute("select value from settings where key = 'active_version'").fetchone()
    if row and row[0] not in (None, "null"):
        name = json.loads(row[0])
        version = db.execute("select id from model_versions where name = ?", [name]).fetchone()
        if version:
            db.execute(
                "insert into active_version (id, version_id, changed_at) "
                "values (1, ?, datetime('now'))",
                [version[0]],
            )
    db.execute("delete from settings where key = 'active_version'")


@migrations()
def m003_round_pairs(db: sqlite_utils.Database) -> None:
    """Which pairs each round learned from: a round's data window is a set of closed pairs, so a
    pair's votes are aggregated together, once, in one round."""
    db["round_pairs"].create(
        {"round_id": int, "pair_id": int},
        pk=("round_id", "pair_id"),
        foreign_keys=[("round_id", "rounds", "id"), ("pair_id", "pairs", "id")],
        not_null={"round_id", "pair_id"},
    )
    db["round_pairs"].create_index(["pair_id"])


@migrations()
def m004_guidelines(db: sqlite_utils.Database) -> None:
    """Annotation guidelines, versioned (append only), and the version each vote was made under."""
    db["guidelines"].create(
        {"id": int, "text": str, "created_by": int, "created_at": str},
        pk="id", not_null={"text", "created_at"},
        foreign_keys=[("created_by", "annotators", "id")],
    )
    db["judgments"].add_column("guideline_id", int, fk="guidelines", fk_col="id")


@migrations()
def m005_thumbs_and_conversations(db: sqlite_utils.Database) -> None:
    """Single-response items (thumbs) and conversations that continue.

    * ``pairs.mode``: ``pair`` (two answers, a/b/tie/both_bad) or ``single`` (one answer judged
      up or down). A single item has no second generation, so ``generation_b_id`` becomes nullable.
    * ``prompts.parent_pair_id``: a continued conversation's prompt names the pair whose chosen
      answer became its assistant turn (lineage from turn to turn).
    * ``prompts.followups``: JSON list of next user turns a prompt set supplies, offered to the
      annotator who continues the conversation.
    """
    db["pairs"].add_column("mode", str, not_null_default="pair")
    db["pairs"].transform(not_null={"generation_b_id": False})
    db["prompts"].add_column("parent_pair_id", int, fk="pairs", fk_col="id")
    db["prompts"].add_column("followups", str)


@migrations()
def m006_pair_selection(db: sqlite_utils.Database) -> None:
    """How the sampler chose each queued pair (issue 15), as JSON lineage in ``pairs.selection``:
    ``{"method": "random" | "active", "k": candidates sampled, "criterion": ..., "score": ...}``.
    Null on pairs made before this migration, on battles, gold, live pairs and singles."""
    db["pairs"].add_column("selection", str)


@migrations()
def m007_drop_promotion_min_accuracy(db: sqlite_utils.Database) -> None:
    """``promotion_min_accuracy`` was the gate before issue 14's evidence gate (``gate_*``
    settings). Nothing reads it any more, so a home that stored it loses the row instead of
    showing a setting that does nothing."""
    if "settings" in db.table_names():
        db.execute("delete from settings where key = 'promotion_min_accuracy'")
