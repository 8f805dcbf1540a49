"""The scheduler: background chores of a running app, kept off the vote path.

Beside the queue filler (which keeps pairs ready), one thread wakes every few seconds to
- record rounds whose training process died (``reap_dead_rounds``), and
- start a round when ``auto_train_every`` new judgments have arrived (``maybe_auto_train``).

A vote only records the vote and serves the next pair; listing rounds only reads. Everything
that writes on a timer lives here, so it is one place to read and one thread to stop.
"""

from __future__ import annotations

import logging
import threading

from prefloop.db.store import Store
from prefloop.errors import PrefloopError
from prefloop.train.config import RoundConfig
from prefloop.train.rounds import ACTIVE_STATUSES, reap_dead_rounds, start_round

logger = logging.getLogger(__name__)

TICK_S = 5.0  # auto-training and reaping need no finer clock; a tick costs two small queries


def maybe_auto_train(store: Store) -> int | None:
    """Start a round when ``auto_train_every`` > 0 judgments arrived since the last round began.

    Called by the scheduler, never by the vote path; never raises.
    """
    try:
        every = int(store.get_setting("auto_train_every") or 0)
        if every <= 0:
            return None
        rounds = store.list_rounds()
        if any(r["status"] in ACTIVE_STATUSES for r in rounds):
            return None
        watermark = int(rounds[-1]["metrics"].get("judgment_watermark", 0)) if rounds else 0
        if store.count_judgments_since(watermark) < every:
            return None
        return start_round(store, RoundConfig())
    except PrefloopError:
        return None


def tick(store: Store) -> dict:
    """One pass of every chore; returns what it did. Never raises: the app must keep serving."""
    done: dict = {"reaped": [], "started": None}
    try:
        done["reaped"] = reap_dead_rounds(store)
    except Exception:  # noqa: BLE001 - logged; the next tick tries again
        logger.exception("reaping dead rounds failed")
    try:
        done["started"] = maybe_auto_train(store)
    except Exception:  # noqa: BLE001 - logged; the next tick tries again
        logger.exception("automatic training trigger failed")
    return done


class Scheduler:
    """Runs :func:`tick` every ``interval_s`` seconds on a daemon thread until ``stop()``."""

    def __init__(self, store: Store, interval_s: float = TICK_S):
        self.store = store
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prefloop-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval_s + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            tick(self.store)
