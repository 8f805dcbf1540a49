"""Training rounds and their metrics."""

from __future__ import annotations

from typing import Any

from prefloop.db.connection import (
    Connection,
    dumps,
    now,
)
from prefloop.db.rows import (
    decode_round,
)


class RoundQueries(Connection):
    """Mixed into :class:`prefloop.db.store.Store`; SQL for this aggregate only."""

    def create_round(self, method: str, parent_version_id: int, config: dict) -> int:
        with self.write() as db:
            cursor = db.execute(
                "insert into rounds (method, parent_version_id, config, status, progress, created_at) "
                "values (?, ?, ?, 'pending', 0, ?)",
                [method, parent_version_id, dumps(config), now()],
            )
            return cursor.lastrowid

    def update_round(self, round_id: int, **fields: Any) -> None:
        allowed = {
            "new_version_id", "dataset_hash", "dataset_size", "status", "progress", "pid",
            "error", "metrics", "started_at", "finished_at", "heartbeat_at", "config",
        }
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"cannot update round fields {sorted(unknown)}")
        values = {k: dumps(v) if k in ("metrics", "config") else v for k, v in fields.items()}
        assignments = ", ".join(f"{k} = :{k}" for k in values)
        with self.write() as db:
            db.execute(f"update rounds set {assignments} where id = :id", {**values, "id": round_id})

    def round(self, round_id: int) -> dict | None:
        row = self.row("select * from rounds where id = ?", [round_id])
        return decode_round(row) if row else None

    def list_rounds(self) -> list[dict]:
        return [decode_round(r) for r in self.rows("select * from rounds order by id")]

    def add_round_metrics(self, round_id: int, step: int, metrics: dict[str, float]) -> None:
        stamp = now()
        with self.write() as db:
            db.conn.executemany(
                "insert into round_metrics (round_id, step, name, value, created_at) "
                "values (?, ?, ?, ?, ?)",
                [(round_id, step, k, float(v), stamp) for k, v in metrics.items()],
            )
            db.execute("update rounds set heartbeat_at = ? where id = ?", [stamp, round_id])

    def round_metrics(self, round_id: int) -> list[dict]:
        return self.rows(
            "select step, name, value from round_metrics where round_id = ? order by step, id",
            [round_id],
        )

    def unclaimed_closed_pair_ids(self, purposes: tuple[str, ...], include_claimed: bool = False) -> list[int]:
        """Closed (done or retired) pairs of these purposes with at least one judgment, on train
        prompts, that no round (failed ones aside) has taken into its window yet."""
        marks = ",".join("?" for _ in purposes)
        claimed = "" if include_claimed else (
            "and not exists (select 1 from round_pairs rp join rounds r on r.id = rp.round_id "
            "  where rp.pair_id = x.id and r.status != 'failed') "
        )
        return [r["id"] for r in self.rows(
            "select x.id from pairs x join prompts p on p.id = x.prompt_id "
            f"where x.status != 'open' and x.purpose in ({marks}) and p.split = 'train' "
            "and x.judgments_count > 0 " + claimed + "order by x.id",
            list(purposes),
        )]

    def claim_round_pairs(self, round_id: int, pair_ids: list[int]) -> None:
        """Put pairs into a round's data window (done once, when the round is created)."""
        with self.write() as db:
            db.conn.executemany(
                "insert or ignore into round_pairs (round_id, pair_id) values (?, ?)",
                [(round_id, pair_id) for pair_id in pair_ids],
            )

    def round_pair_ids(self, round_id: int) -> list[int]:
        return [r["pair_id"] for r in self.rows(
            "select pair_id from round_pairs where round_id = ? order by pair_id", [round_id])]
