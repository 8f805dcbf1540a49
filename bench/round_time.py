"""Wall time of one DPO round on the real bundled model, on 64 pairs judged by a simple rule.

    python bench/round_time.py /tmp/pf-bench      # a fresh data folder; about 15-30 min on 2 CPU cores

Samples 64 train and 16 held-out pairs from v0 (max_new_tokens 64), labels them "the shorter
response is better", then times `run_round` with the default RoundConfig. Not part of the tests.
"""

import json
import os
import sys
import time
from pathlib import Path


def main(home: str) -> None:
    os.environ["PREFLOOP_HOME"] = home
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from annotate import auth
    from annotate.prompts import load_starter_prompts
    from annotate.sampler import sample_pairs
    from annotate.store import Store
    from train import models
    from train.config import RoundConfig
    from train.generation import SamplingParams
    from train.rounds import create_round, run_round

    store = Store()
    started = time.monotonic()
    if store.version("v0") is None:
        models.create_base_version(store)
    if not store.count_prompts():
        load_starter_prompts(store)
    params = SamplingParams(max_new_tokens=64)
    pair_ids = sample_pairs(store, "v0", n_prompts=64, params=params, seed=1)
    held_ids = sample_pairs(store, "v0", n_prompts=16, split="heldout", params=params, seed=2)
    sampled = time.monotonic() - started
    judge = auth.create_user(store, "rule-shorter", "password123")
    for pair_id in pair_ids + held_ids:
        pair = store.pair(pair_id)
        store.assign_pair(judge, pair_id, pair["generation_a_id"])
        store.record_judgment(judge, pair_id, "a" if len(pair["text_a"]) < len(pair["text_b"]) else "b")
    round_id = create_round(store, RoundConfig(min_new_pairs=1))
    round_started = time.monotonic()
    summary = run_round(store, round_id)
    seconds = time.monotonic() - round_started
    print(f"v0 + sampling {len(pair_ids)} train and {len(held_ids)} held-out pairs: {sampled:.0f} s")
    print(json.dumps({k: summary.get(k) for k in ("version", "status", "train_loss", "steps",
                                                   "heldout_accuracy", "heldout_rows")}, indent=1))
    print(f"round wall time: {seconds:.1f} s ({store.round(round_id)['dataset_size']} rows)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/pf-bench")
