"""Annotators (accounts) and their sessions: every statement on ``annotators`` and ``sessions``."""

from __future__ import annotations

from prefloop.db.connection import (
    Connection,
    now,
)
from prefloop.db.rows import insert_annotator
from prefloop.db.vocab import ROLES
from prefloop.errors import StoreError


class AccountQueries(Connection):
    """Mixed into :class:`prefloop.db.store.Store`; SQL for this aggregate only."""

    def add_annotator(self, name: str, role: str, password_hash: str) -> int:
        if role not in ROLES:
            raise StoreError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        with self.write() as db:
            if db.execute("select 1 from annotators where name = ?", [name]).fetchone():
                raise StoreError(f"user {name!r} already exists")
            return insert_annotator(db, name, role, password_hash, active=True)

    def annotator_by_name(self, name: str) -> dict | None:
        return self.row("select * from annotators where name = ?", [name])

    def annotator(self, annotator_id: int) -> dict | None:
        return self.row("select * from annotators where id = ?", [annotator_id])

    def list_annotators(self) -> list[dict]:
        return self.rows(
            "select id, name, role, active, created_at, last_login_at from annotators order by id"
        )

    def set_annotator_active(self, name: str, active: bool) -> None:
        with self.write() as db:
            cursor = db.execute(
                "update annotators set active = ? where name = ?", [int(active), name]
            )
            if cursor.rowcount == 0:
                raise StoreError(f"no user named {name!r}")
            if not active:
                db.execute(
                    "delete from sessions where annotator_id = "
                    "(select id from annotators where name = ?)",
                    [name],
                )

    def set_password_hash(
        self, annotator_id: int, password_hash: str, end_sessions: bool = False
    ) -> None:
        with self.write() as db:
            db.execute(
                "update annotators set password_hash = ? where id = ?",
                [password_hash, annotator_id],
            )
            if end_sessions:
                db.execute("delete from sessions where annotator_id = ?", [annotator_id])

    def count_maintainers(self) -> int:
        return self.scalar(
            "select count(*) from annotators where role = 'maintainer' and active = 1"
        )

    def create_session(self, token_hash: str, annotator_id: int, expires_at: str) -> None:
        with self.write() as db:
            stamp = now()
            db.execute("delete from sessions where expires_at < ?", [stamp])
            db.execute(
                "insert into sessions (token_hash, annotator_id, created_at, expires_at) "
                "values (?, ?, ?, ?)",
                [token_hash, annotator_id, stamp, expires_at],
            )
            db.execute(
                "update annotators set last_login_at = ? where id = ?", [stamp, annotator_id]
            )

    def session_annotator(self, token_hash: str) -> dict | None:
        """The active annotator behind an unexpired session, or None."""
        return self.row(
            "select a.* from sessions s join annotators a on a.id = s.annotator_id "
            "where s.token_hash = ? and s.expires_at > ? and a.active = 1",
            [token_hash, now()],
        )

    def delete_session(self, token_hash: str) -> None:
        with self.write() as db:
            db.execute("delete from sessions where token_hash = ?", [token_hash])
