"""Judgments: recording and undoing votes, and reading them back with their lineage."""

from __future__ import annotations

import datetime as dt

from prefloop.db.connection import (
    Connection,
    now,
)
from prefloop.db.rows import (
    JUDGMENT_LINEAGE_JOINS,
    insert_judgment,
)
from prefloop.db.vocab import CHOICES, THUMBS
from prefloop.errors import StoreError


class JudgmentQueries(Connection):
    """Mixed into :class:`prefloop.db.store.Store`; SQL for this aggregate only."""

    def record_judgment(
        self,
        annotator_id: int,
        pair_id: int,
        choice: str,
        *,
        better_answer: str | None = None,
        reasons: list[str] | None = None,
        comment: str | None = None,
        elapsed_ms: int | None = None,
    ) -> tuple[int, bool]:
        """Store one vote. Returns (judgment id, created); a repeated vote returns the first.

        Refuses (StoreError) a vote on a pair not served to this annotator, or judged enough.
        """
        if choice not in CHOICES + THUMBS:
            raise StoreError(f"choice must be one of {', '.join(CHOICES + THUMBS)}, not {choice!r}")
        with self.write() as db:
            existing = db.execute(
                "select id from judgments where pair_id = ? and annotator_id = ?",
                [pair_id, annotator_id],
            ).fetchone()
            if existing:
                return existing[0], False
            served = db.execute(
                "select s.left_generation_id, x.judgments_count, x.judgments_wanted, x.status, x.mode "
                "from assignments s join pairs x on x.id = s.pair_id "
                "where s.pair_id = ? and s.annotator_id = ?",
                [pair_id, annotator_id],
            ).fetchone()
            if served is None:
                raise StoreError("this pair was not served to you; reload to get your next pair")
            left, count, wanted, status, mode = served
            allowed = THUMBS if mode == "single" else CHOICES
            if choice not in allowed:
                what = "one answer: thumbs up or down" if mode == "single" else "two answers: a, b, tie or both_bad"
                raise StoreError(f"this item has {what}; {choice!r} does not apply")
            if status != "open" or count >= wanted:
                raise StoreError("this pair has already been judged enough; here is the next one")
            guideline_id = db.execute("select max(id) from guidelines").fetchone()[0]
            judgment_id = insert_judgment(
                db, pair_id, annotator_id, choice, left, better_answer=better_answer,
                reasons=reasons, comment=comment, elapsed_ms=elapsed_ms, guideline_id=guideline_id,
            )
            return judgment_id, True

    def undo_last_judgment(
        self, annotator_id: int, not_before: str | None = None, above_id: int = 0
    ) -> dict | None:
        """Remove the annotator's latest vote; its pair is served to them again next.

        Refused (StoreError) when that vote was cast before ``not_before`` or its id is not
        above ``above_id`` (a round's data); the rules live in ``prefloop.annotate.votes``.
        """
        with self.write() as db:
            last = db.execute(
                "select id, pair_id, created_at from judgments where annotator_id = ? "
                "order by id desc limit 1",
                [annotator_id],
            ).fetchone()
            if last is None:
                return None
            judgment_id, pair_id, created_at = last
            if judgment_id <= above_id:
                raise StoreError("your latest vote is already training data for a round; it stays")
            if not_before is not None and created_at < not_before:
                raise StoreError("your latest vote is too old to undo; it stays")
            db.execute("delete from judgments where id = ?", [judgment_id])
            db.execute(
                "update pairs set judgments_count = judgments_count - 1, "
                "status = case when status = 'done' then 'open' else status end where id = ?",
                [pair_id],
            )
            db.execute(
                "update assignments set status = 'served', served_at = ? "
                "where pair_id = ? and annotator_id = ?",
                [now(), pair_id, annotator_id],
            )
        return self.assignment(annotator_id, pair_id)

    def judgments(self, since_id: int = 0, purposes: tuple[str, ...] = ("train", "live", "arena", "gold")) -> list[dict]:
        """Every judgment with the texts it compares, for datasets, exports and evaluation."""
        marks = ",".join("?" for _ in purposes)
        return self.rows(
            "select j.id, j.pair_id, j.annotator_id, an.name as annotator, j.choice, "
            "j.left_generation_id, j.better_answer, j.reasons, j.comment, j.elapsed_ms, j.guideline_id, "
            "j.created_at, x.purpose, x.gold_choice, p.id as prompt_id, p.text as prompt, "
            "p.messages as prompt_messages, p.split, "
            "ga.id as generation_a_id, ga.text as text_a, ga.version_id as version_a_id, "
            "gb.id as generation_b_id, gb.text as text_b, gb.version_id as version_b_id, "
            "va.name as version_a, vb.name as version_b, x.status as pair_status, "
            "ga.finish_reason as finish_reason_a, gb.finish_reason as finish_reason_b, "
            "ga.completion_tokens as tokens_a, gb.completion_tokens as tokens_b, x.mode "
            + JUDGMENT_LINEAGE_JOINS
            + f"where j.id > ? and x.purpose in ({marks}) order by j.id",
            [since_id, *purposes],
        )

    def latest_continuable_judgment(self, annotator_id: int | None, purposes: tuple[str, ...]) -> dict | None:
        """The vote a conversation continues from: ``annotator_id``'s latest vote (None: anyone's
        latest vote that chose an answer), if it chose one and its pair was not continued yet."""
        marks = ",".join("?" for _ in purposes)
        chose = "(j.choice in ('a', 'b', 'up') or coalesce(j.better_answer, '') != '')"
        fresh = "not exists (select 1 from prompts c where c.parent_pair_id = j.pair_id)"
        if annotator_id is not None:
            row = self.row("select j.* from judgments j where j.annotator_id = ? order by j.id desc limit 1",
                           [annotator_id])
            if row is None or not self.scalar(
                f"select count(*) from judgments j join pairs x on x.id = j.pair_id where j.id = ? "
                f"and x.purpose in ({marks}) and {chose} and {fresh}", [row["id"], *purposes]
            ):
                return None
            return row
        return self.row(
            f"select j.* from judgments j join pairs x on x.id = j.pair_id where x.purpose in ({marks}) "
            f"and {chose} and {fresh} order by j.id desc limit 1",
            list(purposes),
        )

    def annotator_counts(self, annotator_id: int) -> dict:
        today = dt.datetime.now(dt.timezone.utc).date().isoformat()
        return self.row(
            "select count(*) as total, coalesce(sum(created_at >= ?), 0) as today "
            "from judgments where annotator_id = ?",
            [today, annotator_id],
        )

    def stats(self) -> dict:
        return self.row(
            "select (select count(*) from prompts) as prompts, "
            "(select count(*) from prompts where split = 'heldout') as heldout_prompts, "
            "(select count(*) from model_versions) as versions, "
            "(select count(*) from generations) as generations, "
            "(select count(*) from pairs) as pairs, "
            "(select count(*) from pairs where status = 'open') as open_pairs, "
            "(select count(*) from judgments) as judgments, "
            "(select count(*) from annotators where active = 1) as annotators, "
            "(select count(*) from rounds) as rounds"
        )

    def judgment_choice_counts(self) -> dict[str, int]:
        rows = self.rows("select choice, count(*) as n from judgments group by choice")
        return {r["choice"]: r["n"] for r in rows}

    def generation_texts(self, split: str | None = "heldout", version: str | None = None) -> list[dict]:
        """Generations with their version name and prompt split, for per-version text stats."""
        where, params = ["1 = 1"], []
        if split:
            where.append("p.split = ?")
            params.append(split)
        if version:
            where.append("v.name = ?")
            params.append(version)
        return self.rows(
            "select g.id, g.prompt_id, g.text, g.completion_tokens, g.finish_reason, "
            "v.name as version, v.id as version_id, p.split from generations g "
            "join model_versions v on v.id = g.version_id join prompts p on p.id = g.prompt_id "
            f"where {' and '.join(where)} order by v.id, g.id",
            params,
        )

    def latest_judgment_id(self) -> int:
        """The highest judgment id so far (0 when none): a watermark for "new since a round"."""
        return self.scalar("select coalesce(max(id), 0) from judgments")

    def count_judgments_since(self, judgment_id: int) -> int:
        return self.scalar("select count(*) from judgments where id > ?", [judgment_id])
