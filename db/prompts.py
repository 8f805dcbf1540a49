"""Prompts: import, listing and choosing which prompts need answers."""

from __future__ import annotations

from prefloop.db.connection import (
    Connection,
    now,
)
from prefloop.db.rows import decode_prompt, insert_prompt, prompt_key
from prefloop.db.vocab import SPLITS
from prefloop.errors import StoreError


class PromptQueries(Connection):
    """Mixed into :class:`prefloop.db.store.Store`; SQL for this aggregate only."""

    def add_prompts(self, prompts: list[dict]) -> tuple[int, int]:
        """Insert prompts in one transaction; returns (added, duplicates skipped).

        Each dict has ``text`` and optionally ``messages`` (list), ``kind``, ``source``, ``split``.
        """
        added = 0
        stamp = now()
        with self.write() as db:
            for p in prompts:
                split = p.get("split") or "train"
                if split not in SPLITS:
                    raise StoreError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
                added += insert_prompt(db, {**p, "split": split}, created_at=stamp)
        return added, len(prompts) - added

    def prompt(self, prompt_id: int) -> dict | None:
        row = self.row("select * from prompts where id = ?", [prompt_id])
        return decode_prompt(row) if row else None

    def list_prompts(
        self, split: str | None = None, limit: int | None = None, offset: int = 0
    ) -> list[dict]:
        where, params = ("where split = ?", [split]) if split else ("", [])
        sql = f"select * from prompts {where} order by id"
        if limit is not None:
            sql += " limit ? offset ?"
            params += [limit, offset]
        return [decode_prompt(r) for r in self.rows(sql, params)]

    def count_prompts(self, split: str | None = None) -> int:
        if split:
            return self.scalar("select count(*) from prompts where split = ?", [split])
        return self.scalar("select count(*) from prompts")

    def prompts_needing_pairs(self, version_id: int, split: str, limit: int) -> list[dict]:
        """Prompts of a split with the fewest train pairs from this version yet (oldest first)."""
        rows = self.rows(
            "select p.*, (select count(*) from pairs x join generations g on g.id = x.generation_a_id "
            "  where x.prompt_id = p.id and g.version_id = :v and x.purpose = 'train') as n "
            # an annotator's live prompt is theirs: never sampled for other annotators
            "from prompts p where p.split = :split and p.source != 'live' "
            # a conversation someone just continued is answered before untouched prompts
            "order by n, p.parent_pair_id is null, random() limit :limit",
            {"v": version_id, "split": split, "limit": limit},
        )
        return [decode_prompt(r) for r in rows]

    def prompt_id_for_text(self, text: str, source: str, split: str = "train") -> int:
        """The id of a plain-text prompt, inserting it first if new (live prompts)."""
        return self.prompt_id_for({"text": text, "source": source, "split": split})

    def prompt_id_for(self, prompt: dict) -> int:
        """The id of a prompt (text or chat), inserting it first if new."""
        self.add_prompts([prompt])
        return self.scalar("select id from prompts where content_hash = ?", [prompt_key(prompt)])

    def continued_prompt_of(self, pair_id: int) -> dict | None:
        """The prompt that continues the conversation of ``pair_id``, if one was made."""
        row = self.row("select * from prompts where parent_pair_id = ? order by id limit 1", [pair_id])
        return decode_prompt(row) if row else None

    def prompts_for_battle(self, version_a_id: int, version_b_id: int, split: str, limit: int) -> list[dict]:
        """Prompts of a split with the fewest arena pairs between these two versions yet."""
        rows = self.rows(
            "select p.*, (select count(*) from pairs x "
            "  join generations ga on ga.id = x.generation_a_id "
            "  join generations gb on gb.id = x.generation_b_id "
            "  where x.prompt_id = p.id and x.purpose = 'arena' "
            "  and ((ga.version_id = :a and gb.version_id = :b) "
            "    or (ga.version_id = :b and gb.version_id = :a))) as n "
            "from prompts p where p.split = :split order by n, random() limit :limit",
            {"a": version_a_id, "b": version_b_id, "split": split, "limit": limit},
        )
        return [decode_prompt(r) for r in rows]
