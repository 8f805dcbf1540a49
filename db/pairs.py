"""Generations and pairs: queueing, serving to annotators, assignments, skips and gold pairs."""

from __future__ import annotations

import random

from prefloop.db.connection import (
    Connection,
    iso_seconds_ago,
    loads,
    now,
)
from prefloop.db.rows import (
    PAIR_SELECT,
    insert_generation,
    insert_pair,
)
from prefloop.db.vocab import CHOICES, PAIR_PURPOSES
from prefloop.errors import StoreError


class PairQueries(Connection):
    """Mixed into :class:`prefloop.db.store.Store`; SQL for this aggregate only."""

    GOLD_JUDGMENTS_WANTED = 1_000_000  # a gold pair stays open: every annotator may be checked on it

    def add_generation(self, g: dict) -> int:
        with self.write() as db:
            return insert_generation(db, g)

    def add_pair(
        self,
        prompt_id: int,
        generation_a: dict | int,
        generation_b: dict | int,
        purpose: str = "train",
        judgments_wanted: int | None = None,
        gold_choice: str | None = None,
        created_by: int | None = None,
        selection: dict | None = None,
    ) -> int:
        """Insert a pair; generations may be given as ids or as dicts to insert in the same transaction.
        ``selection``: how the sampler chose this pair (lineage; annotate/selection.py)."""
        if purpose not in PAIR_PURPOSES:
            raise StoreError(f"purpose must be one of {', '.join(PAIR_PURPOSES)}")
        if gold_choice is not None and gold_choice not in CHOICES:
            raise StoreError(f"gold choice must be one of {', '.join(CHOICES)}")
        wanted = judgments_wanted or self.get_setting("judgments_per_pair")
        with self.write() as db:
            ids = [
                g if isinstance(g, int) else insert_generation(db, {**g, "prompt_id": prompt_id})
                for g in (generation_a, generation_b)
            ]
            return insert_pair(db, prompt_id, ids, purpose=purpose, judgments_wanted=wanted,
                               gold_choice=gold_choice, created_by=created_by, selection=selection)

    def add_single(
        self, prompt_id: int, generation: dict | int, purpose: str = "train",
        judgments_wanted: int | None = None, created_by: int | None = None,
    ) -> int:
        """Insert a single-response item (mode "single"): one answer, judged thumbs up or down."""
        if purpose not in ("train", "live"):
            raise StoreError("single-response items are train or live items")
        wanted = judgments_wanted or self.get_setting("judgments_per_pair")
        with self.write() as db:
            gid = generation if isinstance(generation, int) else insert_generation(db, {**generation, "prompt_id": prompt_id})
            return insert_pair(db, prompt_id, [gid, None], purpose=purpose, judgments_wanted=wanted,
                               created_by=created_by)

    def generation(self, generation_id: int) -> dict | None:
        row = self.row("select * from generations where id = ?", [generation_id])
        if row:
            row["params"] = loads(row["params"], {})
        return row

    def pair(self, pair_id: int) -> dict | None:
        """A pair with its prompt and both generations' text and versions (``selection`` decoded)."""
        row = self.row(PAIR_SELECT + " where x.id = ?", [pair_id])
        if row is not None:
            row["selection"] = loads(row.get("selection"))
        return row

    def queued_pairs(self, version_id: int, purpose: str = "train") -> int:
        """Open pairs from one version that still want judgments: the sampler's queue length."""
        return self.scalar(
            "select count(*) from pairs x join generations g on g.id = x.generation_a_id "
            "where x.status = 'open' and x.purpose = ? and g.version_id = ? "
            "and x.judgments_count < x.judgments_wanted",
            [purpose, version_id],
        )

    def retire_open_pairs(self, except_version_id: int) -> int:
        """Train and live pairs from other versions leave the queue once a new version is active."""
        with self.write() as db:
            cursor = db.execute(
                "update pairs set status = 'retired' where status = 'open' and purpose in ('train', 'live') "
                "and generation_a_id in (select id from generations where version_id != ?)",
                [except_version_id],
            )
            return cursor.rowcount

    def serve_pair(
        self,
        annotator_id: int,
        version_id: int | None,
        rng: random.Random | None = None,
        stale_after_s: int = 600,
    ) -> dict | None:
        """Pick the next pair for an annotator and record which side is shown left.

        Order: a pair already served to them and not voted on (a reload shows the same pair);
        then, with probability ``gold_rate``, a gold pair; then open train/arena pairs of the
        active version that still want judgments, counting other annotators' recent unvoted
        assignments as taken so k annotators are not all sent the same pair at once. Nobody is
        ever served a pair they judged or skipped.
        """
        rng = rng or random.Random()
        with self.write() as db:
            pending = db.execute(
                "select pair_id from assignments s join pairs x on x.id = s.pair_id "
                "where s.annotator_id = ? and s.status = 'served' and x.status = 'open' "
                "and x.judgments_count < x.judgments_wanted order by s.id limit 1",
                [annotator_id],
            ).fetchone()
            if pending:
                return self.assignment(annotator_id, pending[0])
            stale = iso_seconds_ago(stale_after_s)
            candidates: list[tuple[str, list]] = []
            gold_rate = self.get_setting("gold_rate")
            if gold_rate and rng.random() < gold_rate:
                candidates.append(("x.purpose = 'gold'", []))
            if version_id is not None:
                candidates.append(
                    (
                        "x.purpose in ('train', 'arena') and exists (select 1 from generations g "
                        "where g.id in (x.generation_a_id, x.generation_b_id) and g.version_id = ?)",
                        [version_id],
                    )
                )
            for condition, params in candidates:
                found = db.execute(
                    "select x.id, x.generation_a_id, x.generation_b_id from pairs x "
                    f"where x.status = 'open' and {condition} "
                    "and not exists (select 1 from assignments s where s.pair_id = x.id "
                    "  and s.annotator_id = ?) "
                    "and x.judgments_count + (select count(*) from assignments s "
                    "  where s.pair_id = x.id and s.status = 'served' and s.served_at > ?) "
                    "  < x.judgments_wanted "
                    "order by x.purpose = 'arena', x.id limit 1",
                    [*params, annotator_id, stale],
                ).fetchone()
                if found:
                    pair_id, gen_a, gen_b = found
                    left = gen_a if gen_b is None or rng.random() < 0.5 else gen_b
                    db.execute(
                        "insert into assignments (pair_id, annotator_id, left_generation_id, "
                        "status, served_at) values (?, ?, ?, 'served', ?)",
                        [pair_id, annotator_id, left, now()],
                    )
                    return self.assignment(annotator_id, pair_id)
        return None

    def assign_pair(self, annotator_id: int, pair_id: int, left_generation_id: int) -> dict:
        """Serve a specific pair (a live prompt's) to its annotator."""
        with self.write() as db:
            db.execute(
                "insert or ignore into assignments (pair_id, annotator_id, left_generation_id, "
                "status, served_at) values (?, ?, ?, 'served', ?)",
                [pair_id, annotator_id, left_generation_id, now()],
            )
        return self.assignment(annotator_id, pair_id)

    def assignment(self, annotator_id: int, pair_id: int) -> dict | None:
        """What the annotator sees: the pair, plus which generation is on the left."""
        return self.row(
            PAIR_SELECT.replace("from pairs x", ", s.left_generation_id, s.status as "
            "assignment_status, s.served_at from pairs x join assignments s on s.pair_id = x.id")
            + " where x.id = ? and s.annotator_id = ?",
            [pair_id, annotator_id],
        )

    def skip_pair(self, annotator_id: int, pair_id: int) -> None:
        with self.write() as db:
            db.execute(
                "update assignments set status = 'skipped' where annotator_id = ? and pair_id = ? "
                "and status = 'served'",
                [annotator_id, pair_id],
            )

    def add_gold_pair(self, source_pair_id: int, answer: str) -> int:
        """A quality check: the same two generations as an existing pair, with a known answer.

        Gold pairs reuse real generations (lineage stays true) and are mixed into annotators'
        queues at the ``gold_rate`` setting; they never become training data.
        """
        source = self.pair(source_pair_id)
        if source is None:
            raise StoreError(f"no pair {source_pair_id}")
        if answer not in CHOICES:
            raise StoreError(f"the answer must be one of {', '.join(CHOICES)}, not {answer!r}")
        return self.add_pair(
            source["prompt_id"],
            source["generation_a_id"],
            source["generation_b_id"],
            purpose="gold",
            judgments_wanted=self.GOLD_JUDGMENTS_WANTED,
            gold_choice=answer,
        )

    def list_gold_pairs(self) -> list[dict]:
        return self.rows(
            "select x.id, x.gold_choice, x.judgments_count, p.text as prompt, "
            "(select count(*) from judgments j where j.pair_id = x.id and j.choice = x.gold_choice) "
            "as agreed from pairs x join prompts p on p.id = x.prompt_id "
            "where x.purpose = 'gold' order by x.id"
        )

    def queued_singles(self, version_id: int) -> int:
        """Open single-answer (thumbs) items from one version that still want judgments."""
        return self.scalar(
            "select count(*) from pairs x join generations g on g.id = x.generation_a_id "
            "where x.status = 'open' and x.purpose = 'train' and x.mode = 'single' and g.version_id = ? "
            "and x.judgments_count < x.judgments_wanted",
            [version_id],
        )

    def queued_heldout_pairs(self, version_id: int) -> int:
        """Open gate pairs (train purpose, held-out prompt) from one version: the gate's queue."""
        return self.scalar(
            "select count(*) from pairs x join generations g on g.id = x.generation_a_id "
            "join prompts p on p.id = x.prompt_id "
            "where x.status = 'open' and x.purpose = 'train' and p.split = 'heldout' "
            "and g.version_id = ? and x.judgments_count < x.judgments_wanted",
            [version_id],
        )
