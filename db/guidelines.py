"""Annotation guidelines: append-only versions; the newest is the one in force."""

from __future__ import annotations

from prefloop.db.connection import Connection
from prefloop.db.rows import insert_guidelines


class GuidelineQueries(Connection):
    """Mixed into :class:`prefloop.db.store.Store`; SQL for this aggregate only."""

    def add_guidelines(self, text: str, created_by: int | None = None) -> int:
        """A new version of the guidelines (the old ones stay: votes point at them)."""
        with self.write() as db:
            return insert_guidelines(db, text, created_by=created_by)

    def current_guidelines(self) -> dict | None:
        return self.row("select * from guidelines order by id desc limit 1")

    def list_guidelines(self) -> list[dict]:
        return self.rows(
            "select g.id, g.created_at, a.name as author, length(g.text) as chars "
            "from guidelines g left join annotators a on a.id = g.created_by order by g.id"
        )
