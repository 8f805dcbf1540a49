"""Whole-database views for export, import and comparison (by names and texts, not ids)."""

from __future__ import annotations

from typing import Any

from prefloop.db.connection import (
    Connection,
    now,
)
from prefloop.db.rows import (
    JUDGMENT_LINEAGE_JOINS,
    insert_annotator,
    insert_generation,
    insert_guidelines,
    insert_judgment,
    insert_pair,
    insert_prompt,
    insert_version,
    prompt_key,
)


class TransferQueries(Connection):
    """Mixed into :class:`prefloop.db.store.Store`; SQL for this aggregate only."""

    def judgment_export_rows(self) -> list[dict]:
        """Every judgment with its full lineage by *names and texts*, never ids or hashes:
        prompt, both generations (version name, params, seed, text), the side shown left, the
        annotator's name, the guidelines in force (text and date). Used by ``prefloop.annotate.transfer``; ordered by judgment id."""
        rows = self.rows(
            "select j.choice, j.better_answer, j.reasons, j.comment, j.elapsed_ms, j.created_at, "
            "case when j.left_generation_id = x.generation_a_id then 'a' else 'b' end as shown_left, "
            "an.name as annotator, x.purpose, x.gold_choice, x.judgments_wanted, x.mode, x.selection, "
            "x.created_at as pair_created_at, p.text as prompt_text, p.messages as prompt_messages, "
            "p.kind as prompt_kind, p.source as prompt_source, p.split as prompt_split, "
            + ", ".join(
                f"g{s}.{c} as g{s}_{c}"
                for s in "ab"
                for c in ("text", "params", "seed", "prompt_tokens", "completion_tokens",
                          "finish_reason", "latency_ms", "created_at")
            )
            + ", va.name as ga_version, vb.name as gb_version, "
            "gl.text as guidelines_text, gl.created_at as guidelines_created_at "
            + JUDGMENT_LINEAGE_JOINS
            + "left join guidelines gl on gl.id = j.guideline_id "
            "order by j.id"
        )
        return rows

    def import_judgment_records(self, records: list[dict]) -> dict[str, int]:
        """Insert validated judgment records (``prefloop.annotate.transfer`` shape) in ONE transaction.

        Everything is matched by content, so importing the same file twice adds nothing:
        prompts by content hash, versions and annotators by name, generations by (prompt,
        version, seed, text, created_at), pairs by (generations, purpose, created_at), judgments
        by (pair, annotator), guidelines by (text, created_at). Missing versions become lineage-only rows (status ``imported``, no
        weights: they can never be made active); missing annotators become disabled accounts
        with no password. New pairs are closed (``done``, or ``retired`` if judged less than
        wanted) so they never enter a queue.
        """
        counts = {k: 0 for k in ("judgments", "already_present", "prompts", "versions",
                                 "annotators", "generations", "pairs", "guidelines")}
        stamp = now()
        with self.write() as db:
            def one(sql: str, params: list) -> Any:
                found = db.execute(sql, params).fetchone()
                return found[0] if found else None

            new_pairs: set[int] = set()
            for r in records:
                prompt = r["prompt"]
                counts["prompts"] += insert_prompt(db, prompt, default_source="imported", created_at=stamp)
                prompt_id = one("select id from prompts where content_hash = ?", [prompt_key(prompt)])
                generation_ids = []
                single = r["pair"].get("mode") == "single"
                for side in ("generation_a",) if single else ("generation_a", "generation_b"):
                    g = r[side]
                    version_id = one("select id from model_versions where name = ?", [g["version"]])
                    if version_id is None:
                        version_id = insert_version(
                            db, g["version"], kind="imported", path="", status="imported",
                            card={"imported": True, "note": "lineage only: no weights in this home"},
                            created_at=stamp,
                        )
                        counts["versions"] += 1
                    generation_id = one(
                        "select id from generations where prompt_id = ? and version_id = ? and "
                        "seed = ? and text = ? and created_at = ?",
                        [prompt_id, version_id, g["seed"], g["text"], g["created_at"]],
                    )
                    if generation_id is None:
                        generation_id = insert_generation(
                            db, {**g, "prompt_id": prompt_id, "version_id": version_id}
                        )
                        counts["generations"] += 1
                    generation_ids.append(generation_id)
                if single:
                    generation_ids.append(None)
                pair = r["pair"]
                pair_id = one(
                    "select id from pairs where prompt_id = ? and generation_a_id = ? and "
                    "generation_b_id is ? and purpose = ? and created_at = ?",
                    [prompt_id, *generation_ids, pair["purpose"], pair["created_at"]],
                )
                if pair_id is None:
                    pair_id = insert_pair(
                        db, prompt_id, generation_ids, purpose=pair["purpose"],
                        judgments_wanted=pair["judgments_wanted"], gold_choice=pair.get("gold_choice"),
                        status="done", created_at=pair["created_at"], selection=pair.get("selection"),
                    )
                    new_pairs.add(pair_id)
                    counts["pairs"] += 1
                annotator_id = one("select id from annotators where name = ?", [r["annotator"]])
                if annotator_id is None:
                    annotator_id = insert_annotator(
                        db, r["annotator"], "annotator", None, active=False, created_at=stamp
                    )
                    counts["annotators"] += 1
                if one("select id from judgments where pair_id = ? and annotator_id = ?",
                       [pair_id, annotator_id]) is not None:
                    counts["already_present"] += 1
                    continue
                left = generation_ids[0] if r["shown_left"] == "a" else generation_ids[1]
                guideline_id = None
                if r.get("guidelines"):
                    text, created_at = r["guidelines"]["text"], r["guidelines"]["created_at"]
                    guideline_id = one("select id from guidelines where text = ? and created_at = ?",
                                       [text, created_at])
                    if guideline_id is None:
                        guideline_id = insert_guidelines(db, text, created_at=created_at)
                        counts["guidelines"] += 1
                insert_judgment(
                    db, pair_id, annotator_id, r["choice"], left, better_answer=r.get("better_answer"),
                    reasons=r.get("reasons"), comment=r.get("comment"), elapsed_ms=r.get("elapsed_ms"),
                    created_at=r["created_at"], guideline_id=guideline_id,
                )
                counts["judgments"] += 1
            for pair_id in new_pairs:
                db.execute(
                    "update pairs set status = case when judgments_count >= judgments_wanted "
                    "then 'done' else 'retired' end where id = ?", [pair_id],
                )
        return counts

    def table_dump(self) -> dict[str, list[tuple]]:
        """Every row of every table, sorted: tests compare it before and after to prove that a
        refused action changed nothing."""
        out = {}
        for table in self.tables():
            rows = self.db.execute(f'select * from "{table}"').fetchall()
            out[table] = sorted(rows, key=repr)
        return out
