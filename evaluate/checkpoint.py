"""A simulated run's state at the end of its last finished round, so a run cut short goes on.

One round of the bundled model takes about 20 minutes on a small machine and a multi-seed,
multi-judge set takes longer than a working session, so a run killed mid-round (a session's end,
a reboot) must not cost the rounds it finished. After every round ``prefloop simulate`` writes
``simulate-checkpoint.db`` next to the home's database: an online copy of the database (SQLite's
backup API) with one extra table holding the run's result so far and the options it ran with,
replaced atomically, so a reader or a kill never sees half a checkpoint. ``simulate --resume``
puts that copy back in place of the database, removes the version and round folders the
discarded half round wrote, and goes on from the next round. Each round's seeds derive from
(seed, round), so the resumed rounds are the ones an uninterrupted run would have run.

Only the simulation uses this: a real home's rounds are kept by the store itself, and a
simulation's half round is safe to throw away because the simulated judge casts its votes again.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

from prefloop.db.store import Store
from prefloop.engine import models
from prefloop.errors import PrefloopError
from prefloop.train import rounds

__all__ = ["FILE", "checkpoint_path", "prune_orphans", "read", "restore", "save"]

FILE = "simulate-checkpoint.db"
_TABLE = "simulate_checkpoint"  # (run TEXT): the --json object of the rounds finished so far


def checkpoint_path(database: Path) -> Path:
    return Path(database).with_name(FILE)


def save(store: Store, run: dict) -> Path:
    """Copy the store's database with ``run`` (the result so far, its ``config`` included) into
    the checkpoint, atomically."""
    target = checkpoint_path(store.path)
    part = target.with_name(target.name + ".tmp")
    part.unlink(missing_ok=True)
    store.backup_to(part)
    conn = sqlite3.connect(str(part))
    try:
        with conn:
            conn.execute(f"create table {_TABLE} (run text not null)")
            conn.execute(f"insert into {_TABLE} (run) values (?)", (json.dumps(run),))
    finally:
        conn.close()
    os.replace(part, target)  # the copy is 0600 from its first byte (backup_to): it holds password hashes
    return target


def read(database: Path) -> dict | None:
    """The result so far stored in the checkpoint beside ``database``, or None when there is none."""
    path = checkpoint_path(database)
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = conn.execute(f"select run from {_TABLE}").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as error:
        raise PrefloopError(f"the simulation checkpoint {path} cannot be read ({error}); "
                            f"delete it and start the run afresh") from None
    return json.loads(row[0]) if row else None


def restore(database: Path, config: dict) -> dict:
    """Put the checkpoint back in place of ``database`` and return its result so far.

    ``config`` is the run's options (rounds left out): resuming with other options would mix two
    experiments in one result, so it is refused before anything changes."""
    database = Path(database)
    run = read(database)
    if run is None:
        raise PrefloopError(f"no simulation checkpoint in {database.parent}: nothing to resume "
                            f"(a run writes one after its first finished round); run without --resume")
    theirs = {k: v for k, v in (run.get("config") or {}).items() if k != "rounds"}
    mine = {k: v for k, v in config.items() if k != "rounds"}
    if theirs != mine:
        differ = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
        raise PrefloopError(
            "the checkpoint's run used other options (" + ", ".join(
                f"{k}: {theirs.get(k)!r} there, {mine.get(k)!r} now" for k in differ)
            + "); resume with the same options, or start afresh in a new home")
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(checkpoint_path(database), database)
    conn = sqlite3.connect(str(database))
    try:
        with conn:
            conn.execute(f"drop table {_TABLE}")
    finally:
        conn.close()
    store = Store(database)
    try:
        base = store.version_chain(store.active_version()["name"])[0]
        weights = models.version_path(base)
        if base["kind"] == "base" and not base["card"].get("reference") and not Path(weights).exists():
            raise PrefloopError(f"the run's {base['name']} weights at {weights} are gone; start the run afresh")
        prune_orphans(store)
    finally:
        store.close()
    return run


def prune_orphans(store: Store) -> list[Path]:
    """Remove the version and round folders of this home that its database does not know: what a
    discarded half round wrote (a later round would otherwise find its folder taken)."""
    known_versions = {Path(v["path"]).name for v in store.list_versions() if not os.path.isabs(v["path"])}
    known_rounds = {str(r["id"]) for r in store.list_rounds()}
    removed = []
    for folder, known in ((models.models_dir(), known_versions), (rounds.round_dir(0).parent, known_rounds)):
        if not folder.is_dir():
            continue
        for child in folder.iterdir():
            if child.is_dir() and child.name not in known:
                shutil.rmtree(child)
                removed.append(child)
    return removed
