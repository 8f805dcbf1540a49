"""The connection: one SQLite file, WAL, a connection per thread, and the write discipline.

Concurrency: the app (many threads), a training round (a child process) and the CLI write at
once. We use WAL, a busy timeout, ``BEGIN IMMEDIATE`` for writes (so a reader never has to
upgrade its lock mid-transaction, the classic source of instant "database is locked") and a
bounded retry on top. Each thread gets its own connection.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import sqlite_utils

from prefloop.db.files import create_private_file, make_private_home
from prefloop.db.migrations import migrations
from prefloop.errors import StoreError

BUSY_TIMEOUT_MS = 10_000  # a round's metrics write must never make a vote fail
WRITE_RETRIES = 8  # bounded: after ~10 s x 8 of contention we tell the user, never loop forever
THREAD_WAIT_S = BUSY_TIMEOUT_MS / 1000 * WRITE_RETRIES  # the same bound for this process's threads


def prefloop_home() -> Path:
    """The data folder: ``$PREFLOOP_HOME`` or ``./prefloop-data``. The one place this is decided."""
    return Path(os.environ.get("PREFLOOP_HOME") or "prefloop-data").expanduser().resolve()


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def content_hash(text: str) -> str:
    """Hash used to deduplicate prompts: whitespace-normalised, case kept."""
    normalised = " ".join(text.split())
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def loads(value: str | None, default: Any = None) -> Any:
    return default if value in (None, "") else json.loads(value)


def iso_seconds_ago(seconds: float) -> str:
    moment = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)
    return moment.isoformat(timespec="milliseconds")


class Connection:
    """The plumbing every query module builds on. Cheap to create; thread safe."""

    def __init__(self, path: str | Path | None = None, *, migrate: bool = True):
        self.path = Path(path) if path else prefloop_home() / "prefloop.db"
        self._local = threading.local()
        if str(self.path) != ":memory:":
            make_private_home(self.path, tighten_folder=path is None)  # folder 0700, database (and WAL, SHM) 0600
        if migrate:
            self.migrate()

    @property
    def db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            if str(self.path) != ":memory:":
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable at checkpoint
            db = sqlite_utils.Database(conn, execute_plugins=False)
            self._local.db = db
        return db

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def migrate(self) -> None:
        def apply() -> None:
            migrations.apply(self.db)

        retry_locked(apply)

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite_utils.Database]:
        """A write transaction taken with BEGIN IMMEDIATE; nested calls join the outer one."""
        db = self.db
        if db.conn.in_transaction:
            yield db
            return
        # Threads of this process queue on a lock first: SQLite's own busy handler sleeps up to
        # 100 ms between tries, which under many app threads gave 1-2 s stalls (bench/serving.py).
        # Other processes still meet the bounded SQLite retry below.
        lock = process_write_lock(self.path)
        if not lock.acquire(timeout=THREAD_WAIT_S):
            raise StoreError("the database stayed busy for too long; please try again in a moment")
        try:
            retry_locked(lambda: db.conn.execute("BEGIN IMMEDIATE"))
            try:
                yield db
            except BaseException:
                db.conn.execute("ROLLBACK")
                raise
            else:
                retry_locked(lambda: db.conn.execute("COMMIT"))
        finally:
            lock.release()

    def rows(self, sql: str, params: Iterable | dict | None = None) -> list[dict]:
        return retry_locked(lambda: list(self.db.query(sql, params or [])))

    def row(self, sql: str, params: Iterable | dict | None = None) -> dict | None:
        found = self.rows(sql, params)
        return found[0] if found else None

    def scalar(self, sql: str, params: Iterable | dict | None = None) -> Any:
        found = self.row(sql, params)
        return None if found is None else next(iter(found.values()))

    def table_columns(self, table: str) -> dict[str, type]:
        return self.db[table].columns_dict

    def tables(self) -> list[str]:
        return self.db.table_names()

    def integrity_check(self) -> str:
        return self.scalar("PRAGMA integrity_check")

    def backup_to(self, target: str | Path) -> None:
        """Consistent copy while others write: SQLite's online backup API."""
        create_private_file(Path(target))  # 0600 before the first byte: it holds password hashes
        dest = sqlite3.connect(str(target))
        try:
            self.db.conn.backup(dest)
        finally:
            dest.close()


_write_locks: dict[str, threading.RLock] = {}
_write_locks_guard = threading.Lock()


def process_write_lock(path: Path) -> threading.RLock:
    """One lock per database file per process, shared by every Store on that file."""
    key = str(path) if str(path) == ":memory:" else os.path.realpath(path)
    with _write_locks_guard:
        return _write_locks.setdefault(key, threading.RLock())


def retry_locked(action, attempts: int = WRITE_RETRIES):
    """Run ``action``; on 'database is locked' back off and retry a bounded number of times."""
    for attempt in range(attempts):
        try:
            return action()
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) and "busy" not in str(error):
                raise
            if attempt == attempts - 1:
                raise StoreError(
                    "the database stayed busy for too long; please try again in a moment"
                ) from error
            time.sleep(min(0.05 * 2**attempt, 1.0) * (0.5 + random.random()))
