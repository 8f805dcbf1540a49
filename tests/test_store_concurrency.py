"""Several processes writing one SQLite file at once: no "database is locked" reaches a caller.

The app (votes), a training round (metrics and heartbeats) and the CLI (settings, prompt
imports) are separate processes in production. Here each is a real process writing through
``Store`` (or the ``prefloop`` CLI) as fast as it can, all started together; every one must
finish cleanly and every write must be there. Then the other side of the promise: retries are
bounded, so a lock held longer than the budget gives a clear PrefloopError, not a hang and not a
raw sqlite3 error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from prefloop.annotate import auth
from prefloop.db.store import Store
from prefloop.errors import PrefloopError

REPO = Path(__file__).resolve().parents[1]
VOTERS, VOTES_EACH, METRIC_STEPS, IMPORTED, SETTING_WRITES = 4, 40, 120, 400, 6

VOTER = """
import sys, time
from prefloop.db.store import Store
annotator_id, first_pair, count, start_at = map(float, sys.argv[1:5])
store = Store()
time.sleep(max(0.0, start_at - time.time()))
for pair_id in range(int(first_pair), int(first_pair) + int(count)):
    pair = store.pair(pair_id)
    store.assign_pair(int(annotator_id), pair_id, pair["generation_a_id"])
    store.record_judgment(int(annotator_id), pair_id, "a", comment="x" * 200)
    store.annotator_counts(int(annotator_id))
"""

ROUND_WRITER = """
import sys, time
from prefloop.db.store import Store, now
round_id, steps, start_at = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
store = Store()
time.sleep(max(0.0, start_at - time.time()))
for step in range(steps):
    store.add_round_metrics(round_id, step, {"loss": 1.0 / (step + 1), "rewards/margins": step * 0.01})
    store.update_round(round_id, progress=step / steps, heartbeat_at=now())
"""

SETTINGS_CLI = """
import os, subprocess, sys, time
start_at, writes = float(sys.argv[1]), int(sys.argv[2])
time.sleep(max(0.0, start_at - time.time()))
for value in range(writes):
    subprocess.run([sys.executable, "-c", "import sys; from prefloop.cli import cli; sys.exit(cli())",
                    "settings", "set", "queue_target", str(100 + value)], check=True)
"""

IMPORT_CLI = """
import subprocess, sys, time
path, start_at = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start_at - time.time()))
subprocess.run([sys.executable, "-c", "import sys; from prefloop.cli import cli; sys.exit(cli())",
                "prompts", "import", path, "--source", "concurrent"], check=True)
"""


def _spawn(code: str, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _prepared(store: Store, pairs: int) -> tuple[list[int], int]:
    """v0 (no weights needed), one prompt with ``pairs`` pairs, VOTERS annotators, a round."""
    version_id = store.add_version("v0", "base", "models/v0")
    store.set_active_version("v0")
    store.set_setting("judgments_per_pair", VOTERS)
    store.add_prompts([{"text": "Which is better?", "source": "test"}])
    prompt_id = store.list_prompts()[0]["id"]
    for i in range(pairs):
        store.add_pair(
            prompt_id,
            {"version_id": version_id, "text": f"a{i}", "seed": 2 * i, "params": {}},
            {"version_id": version_id, "text": f"b{i}", "seed": 2 * i + 1, "params": {}},
        )
    annotators = [auth.create_user(store, f"voter{i}", "password-123", "annotator") for i in range(VOTERS)]
    round_id = store.create_round("dpo", version_id, {})
    return annotators, round_id


def test_app_round_and_cli_write_at_once(store, home, tmp_path):
    annotators, round_id = _prepared(store, VOTES_EACH)
    prompts_file = tmp_path / "many.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": f"imported prompt {i}"}) + "\n" for i in range(IMPORTED)))
    start_at = time.time() + 4  # every process past its imports, then all at once
    processes = [_spawn(VOTER, annotator, 1, VOTES_EACH, start_at) for annotator in annotators]
    processes.append(_spawn(ROUND_WRITER, round_id, METRIC_STEPS, start_at))
    processes.append(_spawn(SETTINGS_CLI, start_at, SETTING_WRITES))
    processes.append(_spawn(IMPORT_CLI, prompts_file, start_at))
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output
        assert "locked" not in output and "Traceback" not in output, output

    judgments = store.judgments()
    assert len(judgments) == VOTERS * VOTES_EACH
    assert len({(j["pair_id"], j["annotator_id"]) for j in judgments}) == len(judgments)
    assert all(store.pair(i)["judgments_count"] == VOTERS for i in range(1, VOTES_EACH + 1))
    assert len(store.round_metrics(round_id)) == 2 * METRIC_STEPS
    assert store.count_prompts() == 1 + IMPORTED
    assert store.get_setting("queue_target") == 100 + SETTING_WRITES - 1
    assert store.integrity_check() == "ok"


HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("update settings set value = value where key = 'queue_target'")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def _hold_write_lock(store: Store, seconds: float) -> subprocess.Popen:
    holder = _spawn(HOLD_LOCK, store.path, seconds)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest.fixture
def impatient_store(store, monkeypatch):
    """A second Store on the same file whose busy timeout is 0.1 s, so the budget is seconds."""
    import prefloop.db.connection as store_module

    store.set_setting("queue_target", 7)
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 100)
    other = Store(store.path)
    yield other
    other.close()


def test_a_lock_held_past_the_retry_budget_gives_a_clear_error(store, impatient_store):
    holder = _hold_write_lock(store, 60)
    try:
        started = time.monotonic()
        with pytest.raises(PrefloopError, match="busy for too long"):
            impatient_store.set_setting("queue_target", 99)
        waited = time.monotonic() - started
        assert 1.0 < waited < 20, waited  # it retried, and it gave up
        assert impatient_store.get_setting("queue_target") == 7  # WAL: readers are never blocked
    finally:
        holder.kill()
        holder.wait()
    assert store.get_setting("queue_target") == 7  # the refused write changed nothing
    impatient_store.set_setting("queue_target", 99)  # and the next one, with the lock gone, works
    assert store.get_setting("queue_target") == 99


def test_a_lock_held_briefly_is_waited_out(store, impatient_store):
    holder = _hold_write_lock(store, 1.0)
    try:
        impatient_store.set_setting("queue_target", 42)  # 0.1 s timeouts plus back-off outlast 1 s
    finally:
        holder.wait(30)
    assert holder.returncode == 0
    assert store.get_setting("queue_target") == 42


def test_threads_of_one_process_queue_without_meeting_sqlite_busy(store, home, monkeypatch):
    """The app's many threads wait on each other in Python, not in SQLite's sleeping busy handler.

    With a zero busy timeout every collision would surface at once as "database is locked" and
    cost a back-off sleep (the source of 1-2 s stalls under 32 annotators, bench/serving.py).
    """
    import sqlite3
    import threading

    import prefloop.db.connection as store_module

    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 0)
    collisions = []
    original = store_module.retry_locked

    def counting(action, *args, **kwargs):
        def counted():
            try:
                return action()
            except sqlite3.OperationalError as error:
                collisions.append(str(error))
                raise
        return original(counted, *args, **kwargs)

    monkeypatch.setattr(store_module, "retry_locked", counting)
    annotators, round_id = _prepared(store, 30)
    shared = Store(store.path)

    def vote_all(annotator_id: int) -> None:
        for pair_id in range(1, 31):
            shared.assign_pair(annotator_id, pair_id, shared.pair(pair_id)["generation_a_id"])
            shared.record_judgment(annotator_id, pair_id, "b")
            shared.add_round_metrics(round_id, pair_id, {"loss": 0.5})

    threads = [threading.Thread(target=vote_all, args=(a,)) for a in annotators]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.judgments()) == VOTERS * 30
    assert collisions == []
