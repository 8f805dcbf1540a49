"""SIGKILL under load: the app while votes are in flight, and a training round at several points.

The app runs as ``prefloop serve`` (app.py) with its sampler on, driven by simulated annotators
over HTTP (bench/http_load.py). A kill -9 gives no process a chance to clean up, so what these
tests check is what SQLite's WAL and our transactions guarantee on their own: the file is
intact, every vote the server acknowledged is there exactly once (a vote in flight at the kill
may or may not be, but never twice), the active version is unchanged, and the app serves again.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from bench.http_load import (
    AppServer,
    GradioSession,
    LoadResult,
    fn_indexes,
    prepare_home,
    run_load,
    vote_problems,
)
from prefloop.db.store import Store

PASSWORD = "crash-test-password"
SEED_ANNOTATOR = "seeder"


def _wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll_s)


def _home(home, tiny_model_dir, annotators: int, pairs: int, seed_votes: int = 0) -> list[str]:
    names = prepare_home(
        home, base_model=str(tiny_model_dir), annotators=annotators, password=PASSWORD,
        pairs=pairs, judgments_per_pair=annotators + 1, queue_target=pairs + 8, sample=False,
        echo=lambda line: None,
    )
    if seed_votes:  # preference rows, so a round can start at once
        from prefloop.annotate import auth

        store = Store()
        seeder = auth.create_user(store, SEED_ANNOTATOR, PASSWORD, "annotator")
        version = store.require_version("v0")
        # pairs of their own, closed by this one vote: the load's votes on queued pairs can end in
        # a plurality draw (no row), so the round's rows must not depend on them
        for i, prompt in enumerate(store.list_prompts(split="train", limit=seed_votes)):
            pair_id = store.add_pair(
                prompt["id"],
                {"version_id": version["id"], "text": f"A seeded answer {i}, plain.", "seed": 1, "params": {}},
                {"version_id": version["id"], "text": f"Another seeded answer {i}.", "seed": 2, "params": {}},
                judgments_wanted=1,
            )
            store.assign_pair(seeder, pair_id, store.pair(pair_id)["generation_a_id"])
            store.record_judgment(seeder, pair_id, "a" if i % 3 else "b")
    return names


def _vote_once_more(url: str, name: str) -> str:
    """A fresh session signs in, gets a pair and votes; returns the vote's message."""
    session = GradioSession(url, fn_indexes(url))
    try:
        session.sign_in(name, PASSWORD)
        session.call("next_pair", [])
        outputs, _ = session.call("vote_left", [None, [], "", ""])
        return outputs[4]
    finally:
        session.close()


def _kill_app_mid_load(home, tiny_model_dir, annotators: int, kill_after_acks: int):
    names = _home(home, tiny_model_dir, annotators, pairs=60)
    server = AppServer(home, sampler=True).start()
    result, stop = LoadResult(), threading.Event()
    runner = threading.Thread(
        target=run_load, args=(server.url, names, PASSWORD, 50),
        kwargs={"result": result, "stop": stop, "timeout_s": 300},
    )
    try:
        runner.start()
        _wait_for(lambda: sum(v.acknowledged for v in list(result.votes)) >= kill_after_acks,
                  120, "acknowledged votes")
        in_flight = sum(v.latency_s is None and v.error is None for v in list(result.votes))
        server.kill()
        runner.join(60)
        assert not runner.is_alive()
    finally:
        stop.set()
        server.kill()
    store = Store()
    assert store.integrity_check() == "ok"
    acked = len(result.acknowledged)
    assert acked >= kill_after_acks
    assert in_flight >= 1, "no vote was in flight at the kill"
    assert vote_problems(store, result, in_flight_ok=True) == []
    assert store.active_version()["name"] == "v0"
    with AppServer(home, sampler=True, log_name="server-restarted.log") as restarted:
        assert _vote_once_more(restarted.url, names[0]).startswith("Recorded")
    assert store.integrity_check() == "ok"
    assert len(store.judgments()) in range(acked + 1, acked + 1 + annotators + 1)
    return acked, in_flight


def test_app_killed_while_votes_in_flight(home, tiny_model_dir):
    """8 annotators voting flat out; kill -9 the app after 40 acknowledged votes; restart."""
    acked, in_flight = _kill_app_mid_load(home, tiny_model_dir, annotators=8, kill_after_acks=40)
    print(f"\nkilled with {acked} votes acknowledged and {in_flight} in flight")


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_acks", [5, 300])
def test_app_killed_under_heavy_load(home, tiny_model_dir, kill_after_acks):
    """32 annotators; kill -9 early (sign-ins and first votes) and later (steady state)."""
    acked, in_flight = _kill_app_mid_load(home, tiny_model_dir, 32, kill_after_acks)
    print(f"\nkilled with {acked} votes acknowledged and {in_flight} in flight")


# --------------------------------------------------------------------------------------------
# a round killed while annotators vote
# --------------------------------------------------------------------------------------------
def _metrics_written(store: Store, round_id: int) -> bool:
    return bool(store.round_metrics(round_id))


def _training_done(store: Store, round_id: int) -> bool:
    """Progress 0.92: trained; measuring, saving and registering the candidate come next."""
    return (store.round(round_id)["progress"] or 0) >= 0.92


def _running(store: Store, round_id: int) -> bool:
    return store.round(round_id)["status"] == "running"


KILL_POINTS = {
    "loading": _running,  # the child is up and said so; model loading or tokenising
    "training": _metrics_written,  # the trainer has logged its first step
    "finishing": _training_done,  # the adapter is being measured, saved and registered
}


def _kill_round_under_load(home, tiny_model_dir, point: str) -> dict:
    from prefloop.train.config import RoundConfig
    from prefloop.train.rounds import DIED_MESSAGE, reap_dead_rounds, start_round

    names = _home(home, tiny_model_dir, annotators=4, pairs=150, seed_votes=6)
    store = Store()
    if point == "finishing":  # held-out judgments: measuring them keeps the child busy after training
        _judged_heldout_pairs(store, 24)
    server = AppServer(home, sampler=True).start()
    result, stop = LoadResult(), threading.Event()
    runner = threading.Thread(
        target=run_load, args=(server.url, names, PASSWORD, 1000),  # until told to stop
        kwargs={"result": result, "stop": stop, "think_s": 0.3, "timeout_s": 400},
    )
    try:
        runner.start()
        # max_steps: long enough that "training" is hit mid-run, short enough for "finishing"
        config = RoundConfig(min_new_pairs=2, max_steps=8 if point == "finishing" else 200,
                             batch_size=2, max_length=256, max_prompt_length=192, lora_rank=4,
                             lora_alpha=8)
        round_id = start_round(store, config)
        pid = store.round(round_id)["pid"]
        _wait_for(lambda: KILL_POINTS[point](store, round_id) or store.round(round_id)["status"]
                  in ("failed", "trained", "promoted"), 240, f"the round to reach {point!r}")
        os.killpg(pid, signal.SIGKILL)
        killed_at = len(result.votes)
        _wait_for(lambda: len(result.votes) >= killed_at + 8, 60, "votes after the kill")
    finally:
        stop.set()
        runner.join(60)
        server.stop()
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    reaped = _wait_for(lambda: reap_dead_rounds(store) or store.round(round_id)["status"] != "running",
                       30, "the dead round to be noticed", poll_s=0.2)
    row = store.round(round_id)
    if row["status"] == "failed":  # killed in time (a "finishing" kill can land after the end)
        assert row["error"] == DIED_MESSAGE, row
        assert reaped == [round_id] or reaped is True
        for version in store.list_versions():
            if version["card"].get("round_id") == round_id:
                assert version["status"] == "rejected", version  # a dead round's version is withdrawn
    else:
        assert point == "finishing" and row["status"] == "trained", row
    assert store.active_version()["name"] == "v0"
    assert store.integrity_check() == "ok"
    assert vote_problems(store, result, ignore=(SEED_ANNOTATOR,)) == []
    assert result.errors == [] and all(v.acknowledged for v in result.votes)
    assert len(result.votes) >= 8
    return row


def _judged_heldout_pairs(store: Store, count: int) -> None:
    version = store.require_version("v0")
    seeder = store.annotator_by_name(SEED_ANNOTATOR)["id"]
    for i, prompt in enumerate(store.list_prompts(split="heldout", limit=count)):
        pair_id = store.add_pair(
            prompt["id"],
            {"version_id": version["id"], "text": f"A held-out answer {i}, plain.", "seed": 1, "params": {}},
            {"version_id": version["id"], "text": f"Another held-out answer {i}.", "seed": 2, "params": {}},
        )
        store.assign_pair(seeder, pair_id, store.pair(pair_id)["generation_a_id"])
        store.record_judgment(seeder, pair_id, "a")


def test_round_killed_during_training_under_load(home, tiny_model_dir):
    """kill -9 a DPO round's child after its first logged step, while 4 annotators vote."""
    row = _kill_round_under_load(home, tiny_model_dir, "training")
    assert row["status"] == "failed"


@pytest.mark.slow
@pytest.mark.parametrize("point", ["loading", "finishing"])
def test_round_killed_at_other_points_under_load(home, tiny_model_dir, point):
    """kill -9 while the child loads, and once training is done (saving, registering).

    The "finishing" window is short: the kill may land before the candidate is registered (the
    round fails and no version is listed: registration is a rename, all or nothing), after it
    (the version is withdrawn as rejected) or after the round ended (it stays ``trained``). Each
    outcome must leave v0 active and the database consistent.
    """
    row = _kill_round_under_load(home, tiny_model_dir, point)
    print(f"\nround killed at {point!r}: {row['status']} ({row['error']})")
