"""Many annotators at once over HTTP against the real app: every vote stored exactly once.

Starts ``prefloop serve`` (app.py) as a child process with its background sampler ON, on a real
SQLite file whose v0 is a tiny random model, and drives it over loopback with
bench/http_load.py: each simulated annotator is its own Gradio session that signs in and votes
through the same events the buttons fire. The slow version also runs a real DPO training round
(a child process, as in production) while the votes flow. Afterwards the database is read back:
each acknowledged vote is stored once, in order, with nothing extra, and the file is intact.
"""

from __future__ import annotations

import threading
import time

import pytest

from bench.http_load import AppServer, prepare_home, run_load, vote_problems
from prefloop.db.store import Store
from prefloop.errors import RoundError

PASSWORD = "load-test-password"


def _start_round_when_ready(store: Store, stop: threading.Event, started: list) -> None:
    """Start a tiny DPO round (child process) as soon as there are a few preference rows."""
    from prefloop.train.config import RoundConfig
    from prefloop.train.rounds import start_round

    config = RoundConfig(min_new_pairs=2, max_steps=3, batch_size=2, max_length=256,
                         max_prompt_length=192, lora_rank=4, lora_alpha=8)
    while not stop.is_set():
        try:
            started.append(start_round(store, config))
            return
        except RoundError:
            stop.wait(0.5)  # not enough rows yet


def _load_scenario(home, tiny_model_dir, annotators: int, votes: int, with_round: bool,
                   wait_for_sampler: bool = True):
    names = prepare_home(
        home, base_model=str(tiny_model_dir), annotators=annotators, password=PASSWORD,
        pairs=votes + 4, judgments_per_pair=annotators, queue_target=votes + 12, sample=False,
        echo=lambda line: None,
    )
    store = Store()
    presampled = store.stats()["pairs"]
    round_ids: list[int] = []
    with AppServer(home, sampler=True) as server:
        # the sampler must really be running: wait for its first pairs (tiny model, seconds)
        deadline = time.monotonic() + 90
        while wait_for_sampler and store.stats()["pairs"] <= presampled:
            assert time.monotonic() < deadline, "the sampler made no pair:\n" + server.log_tail()
            time.sleep(0.5)
        stop = threading.Event()
        trainer = threading.Thread(target=_start_round_when_ready, args=(store, stop, round_ids))
        if with_round:
            trainer.start()
        try:
            result = run_load(server.url, names, PASSWORD, votes, timeout_s=600)
        finally:
            stop.set()
            if with_round:
                trainer.join()
        round_row = None
        if round_ids:
            from prefloop.train.rounds import wait_round

            round_row = wait_round(store, round_ids[0], timeout=300)
        log = server.log_tail()
    return store, result, round_row, log


def _check(store: Store, result, annotators: int, votes: int, log: str) -> None:
    summary = result.summary()
    print("\nload:", summary)
    assert result.errors == [], result.errors
    failed = [v.error for v in result.votes if v.error]
    assert failed == [], failed[:5]
    assert summary["acknowledged"] == annotators * votes, (summary, log)
    assert vote_problems(store, result) == []
    assert len(store.judgments()) == annotators * votes
    assert store.integrity_check() == "ok"
    assert store.active_version()["name"] == "v0"
    assert "Traceback" not in log, log


def test_eight_annotators_vote_at_once(home, tiny_model_dir):
    """Short default version: 8 annotators x 10 votes with the sampler running."""
    store, result, _, log = _load_scenario(home, tiny_model_dir, 8, 10, with_round=False,
                                           wait_for_sampler=False)
    _check(store, result, 8, 10, log)


@pytest.mark.slow
def test_thirty_two_annotators_while_sampler_and_round_run(home, tiny_model_dir):
    """32 annotators x 50 votes while the sampler fills the queue and a DPO round trains."""
    store, result, round_row, log = _load_scenario(home, tiny_model_dir, 32, 50, with_round=True)
    _check(store, result, 32, 50, log)
    assert round_row is not None, "the training round never started"
    # no held-out judgments: the gate waits, v0 stays active
    assert round_row["status"] == "trained", round_row
    assert store.round_metrics(round_row["id"]), "the round wrote no metrics"
