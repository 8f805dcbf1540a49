"""Model versions: rows, lineage chains, status, and the active-version pointer."""

from __future__ import annotations

from prefloop.db.connection import (
    Connection,
    dumps,
    now,
)
from prefloop.db.rows import (
    decode_version,
    insert_version,
)
from prefloop.errors import StoreError
from prefloop.safetext import validate_version_name


class VersionQueries(Connection):
    """Mixed into :class:`prefloop.db.store.Store`; SQL for this aggregate only."""

    def add_version(
        self,
        name: str,
        kind: str,
        path: str,
        parent_id: int | None = None,
        status: str = "ready",
        card: dict | None = None,
    ) -> int:
        validate_version_name(name)
        with self.write() as db:
            if db.execute("select 1 from model_versions where name = ?", [name]).fetchone():
                raise StoreError(f"model version {name!r} already exists")
            return insert_version(db, name, kind=kind, path=path, status=status,
                                  parent_id=parent_id, card=card)

    def version(self, name_or_id: str | int) -> dict | None:
        column = "id" if isinstance(name_or_id, int) else "name"
        row = self.row(f"select * from model_versions where {column} = ?", [name_or_id])
        return decode_version(row) if row else None

    def require_version(self, name_or_id: str | int) -> dict:
        found = self.version(name_or_id)
        if found is None:
            known = ", ".join(v["name"] for v in self.list_versions()) or "none yet"
            raise StoreError(f"no model version {name_or_id!r} (known: {known})")
        return found

    def list_versions(self) -> list[dict]:
        return [decode_version(r) for r in self.rows("select * from model_versions order by id")]

    def next_version_name(self) -> str:
        """``v<n>``, one past the highest number in use (imported lineage rows included), so
        a new version never collides with a name that came in through ``prefloop import``."""
        names = [r["name"] for r in self.rows("select name from model_versions where name like 'v%'")]
        numbers = [int(name[1:]) for name in names if name[1:].isdigit()]
        return f"v{max(numbers, default=-1) + 1}"

    def update_version(self, version_id: int, *, status: str | None = None, card: dict | None = None) -> None:
        with self.write() as db:
            if status is not None:
                db.execute(
                    "update model_versions set status = ? where id = ?", [status, version_id]
                )
            if card is not None:
                db.execute(
                    "update model_versions set card = ? where id = ?", [dumps(card), version_id]
                )

    def active_version(self) -> dict | None:
        """The version that serves pairs (its own one-row table, not a setting)."""
        version_id = self.scalar("select version_id from active_version where id = 1")
        return self.version(version_id) if version_id else None

    def set_active_version(self, name: str) -> None:
        """Flip the pointer in one transaction: the old active one stays listed and loadable."""
        with self.write():
            version = self.require_version(name)
            if version["status"] not in ("ready", "candidate", "retired"):
                raise StoreError(
                    f"version {name!r} is {version['status']} and cannot be made active"
                )
            self.db.execute(
                "update model_versions set status = 'ready' where id = ?", [version["id"]]
            )
            self.db.execute(
                "insert into active_version (id, version_id, changed_at) values (1, ?, ?) "
                "on conflict(id) do update set version_id = excluded.version_id, "
                "changed_at = excluded.changed_at",
                [version["id"], now()],
            )

    def version_chain(self, name_or_id: str | int) -> list[dict]:
        """The version and its ancestors, base first."""
        chain = []
        current = self.require_version(name_or_id)
        while current is not None:
            chain.append(current)
            current = self.version(current["parent_id"]) if current["parent_id"] else None
        return list(reversed(chain))
