"""Shared SQL fragments, row decoding, and the one INSERT per table that every writer uses.

The app's paths (add_prompts, add_pair, record_judgment) and ``import_judgment_records`` insert
through the same functions here, so a column added to a table is written in one place.
Each takes ``db`` inside the caller's write transaction.
"""

from __future__ import annotations

import sqlite_utils

from prefloop.db.connection import content_hash, dumps, loads, now

# a judgment with its pair, prompt, annotator and both generations and their versions: aliases
# j, x, p, an, ga, gb, va, vb (every lineage query reads the same joins)
JUDGMENT_LINEAGE_JOINS = (
    "from judgments j join pairs x on x.id = j.pair_id "
    "join prompts p on p.id = x.prompt_id "
    "join annotators an on an.id = j.annotator_id "
    "join generations ga on ga.id = x.generation_a_id "
    "left join generations gb on gb.id = x.generation_b_id "  # none on a single (thumbs) item
    "join model_versions va on va.id = ga.version_id "
    "left join model_versions vb on vb.id = gb.version_id "
)


PAIR_SELECT = (
    "select x.*, p.text as prompt, p.messages as prompt_messages, p.split, "
    "ga.text as text_a, ga.version_id as version_a_id, gb.text as text_b, "
    "gb.version_id as version_b_id, ga.finish_reason as finish_reason_a, "
    "gb.finish_reason as finish_reason_b, ga.params as params_a "
    "from pairs x join prompts p on p.id = x.prompt_id "
    "join generations ga on ga.id = x.generation_a_id "
    "left join generations gb on gb.id = x.generation_b_id"
)


def insert_generation(db: sqlite_utils.Database, g: dict) -> int:
    cursor = db.execute(
        "insert into generations (prompt_id, version_id, text, params, seed, prompt_tokens, "
        "completion_tokens, finish_reason, latency_ms, created_at) "
        "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            g["prompt_id"],
            g["version_id"],
            g["text"],
            dumps(g.get("params") or {}),
            g["seed"],
            g.get("prompt_tokens"),
            g.get("completion_tokens"),
            g.get("finish_reason"),
            g.get("latency_ms"),
            g.get("created_at") or now(),
        ],
    )
    return cursor.lastrowid


def decode_prompt(row: dict) -> dict:
    row = dict(row)
    row["messages"] = loads(row.get("messages"))
    row["followups"] = loads(row.get("followups")) or []
    row.pop("n", None)
    return row


def decode_version(row: dict) -> dict:
    row = dict(row)
    row["card"] = loads(row.get("card"), {})
    return row


def decode_round(row: dict) -> dict:
    row = dict(row)
    row["config"] = loads(row.get("config"), {})
    row["metrics"] = loads(row.get("metrics"), {})
    return row


def prompt_key(prompt: dict) -> str:
    """The deduplication key of a prompt: its messages when it is a chat, else its text."""
    messages = prompt.get("messages")
    return content_hash(dumps(messages) if messages else prompt["text"])


def insert_prompt(db: sqlite_utils.Database, prompt: dict, *, default_source: str = "unknown",
                  created_at: str | None = None) -> int:
    """Insert a prompt unless one with the same key exists; returns rows added (0 or 1)."""
    messages = prompt.get("messages")
    followups = prompt.get("followups")
    cursor = db.execute(
        "insert or ignore into prompts (text, messages, kind, source, split, content_hash, created_at, "
        "parent_pair_id, followups) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [prompt["text"], dumps(messages) if messages else None, prompt.get("kind"),
         prompt.get("source") or default_source, prompt.get("split") or "train", prompt_key(prompt),
         created_at or now(), prompt.get("parent_pair_id"), dumps(followups) if followups else None],
    )
    return cursor.rowcount


def insert_pair(db: sqlite_utils.Database, prompt_id: int, generation_ids: list[int | None], *, purpose: str,
                judgments_wanted: int, gold_choice: str | None = None, status: str = "open",
                created_by: int | None = None, created_at: str | None = None,
                selection: dict | None = None) -> int:
    """A pair of two generations, or a single (thumbs) item when the second id is None.
    ``selection``: how the sampler chose it (lineage, stored as JSON; annotate/selection.py)."""
    mode = "pair" if generation_ids[1] is not None else "single"
    cursor = db.execute(
        "insert into pairs (prompt_id, generation_a_id, generation_b_id, purpose, judgments_wanted, "
        "judgments_count, gold_choice, status, created_by, created_at, mode, selection) "
        "values (?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?)",
        [prompt_id, generation_ids[0], generation_ids[1], purpose, judgments_wanted, gold_choice,
         status, created_by, created_at or now(), mode, dumps(selection) if selection else None],
    )
    return cursor.lastrowid


def insert_guidelines(db: sqlite_utils.Database, text: str, *, created_by: int | None = None,
                      created_at: str | None = None) -> int:
    """A new version of the annotation guidelines (append only: votes point at the old ones)."""
    cursor = db.execute(
        "insert into guidelines (text, created_by, created_at) values (?, ?, ?)",
        [text, created_by, created_at or now()],
    )
    return cursor.lastrowid


def insert_judgment(db: sqlite_utils.Database, pair_id: int, annotator_id: int, choice: str,
                    left_generation_id: int, *, better_answer: str | None = None,
                    reasons: list[str] | None = None, comment: str | None = None,
                    elapsed_ms: int | None = None, created_at: str | None = None,
                    guideline_id: int | None = None) -> int:
    """Insert a vote, mark its assignment voted, and count it on its pair (done when enough)."""
    cursor = db.execute(
        "insert into judgments (pair_id, annotator_id, choice, left_generation_id, better_answer, "
        "reasons, comment, elapsed_ms, created_at, guideline_id) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [pair_id, annotator_id, choice, left_generation_id, better_answer or None,
         dumps(reasons) if reasons else None, comment or None, elapsed_ms, created_at or now(),
         guideline_id],
    )
    db.execute(
        "insert into assignments (pair_id, annotator_id, left_generation_id, status, served_at) "
        "values (?, ?, ?, 'voted', ?) on conflict(pair_id, annotator_id) do update set status = 'voted'",
        [pair_id, annotator_id, left_generation_id, created_at or now()],
    )
    db.execute(
        "update pairs set judgments_count = judgments_count + 1, status = case "
        "when status = 'open' and judgments_count + 1 >= judgments_wanted then 'done' "
        "else status end where id = ?",
        [pair_id],
    )
    return cursor.lastrowid


def insert_annotator(db: sqlite_utils.Database, name: str, role: str, password_hash: str | None, *,
                     active: bool, created_at: str | None = None) -> int:
    cursor = db.execute(
        "insert into annotators (name, role, password_hash, active, created_at) values (?, ?, ?, ?, ?)",
        [name, role, password_hash, int(active), created_at or now()],
    )
    return cursor.lastrowid


def insert_version(db: sqlite_utils.Database, name: str, *, kind: str, path: str, status: str,
                   parent_id: int | None = None, card: dict | None = None,
                   created_at: str | None = None) -> int:
    cursor = db.execute(
        "insert into model_versions (name, parent_id, kind, path, status, card, created_at) "
        "values (?, ?, ?, ?, ?, ?, ?)",
        [name, parent_id, kind, path, status, dumps(card or {}), created_at or now()],
    )
    return cursor.lastrowid
