"""Rules on taking a vote back.

Undo is for the vote just cast (a slipped key, a second thought), not for rewriting history:
- only within ``UNDO_WINDOW_S`` of casting it;
- never once a training round (pending, running or finished, unless it failed) has taken it as
  data: the round's model and its card's judgment hash would no longer match the database.

Example: assignment = undo_latest(store, user["id"])   # None: nothing to undo
"""

from __future__ import annotations

import datetime as dt

from prefloop.db.store import Store

UNDO_WINDOW_S = 10 * 60  # long enough to notice a slip, short enough that no round is waiting


def trained_through(store: Store) -> int:
    """The highest judgment id any round that did not fail has taken as data (0: none)."""
    marks = [int(r["metrics"].get("judgment_watermark") or 0)
             for r in store.list_rounds() if r["status"] != "failed"]
    return max(marks, default=0)


def undo_latest(store: Store, annotator_id: int) -> dict | None:
    """Remove the annotator's latest vote if the rules allow; its assignment, or None.

    Raises StoreError with the reason when the latest vote can no longer be taken back.
    """
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=UNDO_WINDOW_S)
    return store.undo_last_judgment(
        annotator_id,
        not_before=since.isoformat(timespec="milliseconds"),
        above_id=trained_through(store),
    )
