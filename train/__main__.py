"""Run one training round in this process: the entry point of the child that `prefloop train` spawns.

    # train a round the app or `prefloop train` created (this is what they spawn)
    python -m prefloop.train --round 3

    # create a round from a JSON config and train it here (single process)
    python -m prefloop.train --config-json '{"method": "orpo", "learning_rate": 5e-5, "epochs": 1}'

    # many GPUs: create the round without spawning, then launch every rank on it
    prefloop train --method dpo --create-only          # prints the round id, e.g. 3
    accelerate launch -m prefloop.train --round 3               # rank 0 writes progress and the version

The data folder comes from $PREFLOOP_HOME. Exit status 0 when the round finished (promoted or
awaiting a maintainer), 1 when it failed; the reason is printed and stored on the round.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from prefloop.db.store import Store
from prefloop.engine.models import share_cpu_cores
from prefloop.errors import ConfigError, PrefloopError
from prefloop.train.config import RoundConfig
from prefloop.train.distributed import use_local_device
from prefloop.train.rounds import create_round, is_main_process, run_round


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train", description="Run one prefloop training round.")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--round", type=int, dest="round_id", help="id of a pending round to train")
    which.add_argument("--config-json", help="RoundConfig as JSON: create a round (gate applies) and train it")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)

    share_cpu_cores()  # the app's sampler keeps running beside this round
    use_local_device()  # under accelerate launch: this rank's GPU, before the parent loads
    store = Store()
    try:
        if args.config_json is not None:
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise PrefloopError(
                    "--config-json creates a round, which every rank would do: with accelerate, "
                    "create it first (`prefloop train --create-only`) and pass --round ID"
                )
            try:
                values = json.loads(args.config_json)
            except json.JSONDecodeError as error:
                raise ConfigError(f"--config-json is not valid JSON: {error}") from error
            if not isinstance(values, dict):
                raise ConfigError("--config-json must be a JSON object of round settings")
            round_id = create_round(store, RoundConfig.from_dict(values))
            print(f"created round {round_id}", flush=True)
        else:
            round_id = args.round_id
        summary = run_round(store, round_id)
    except PrefloopError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        store.close()
    if is_main_process():
        shown = {k: summary.get(k) for k in ("round_id", "version", "status", "train_loss", "heldout_accuracy")}
        print(json.dumps(shown), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
