"""Round time and round memory: prefloop's DPO round against the same round under TRL's defaults.

    # the README figures: 128 train + 32 held-out pairs on the bundled model, both variants in one
    # run (2 shared cores: about 15 min to build the data once, then about 25 min for the two rounds)
    python bench/round_time.py --home /tmp/pf-round-bench --pairs 128 --heldout 32 --threads 1
    # the same with a learning rate that moves the held-out accuracy, prefloop's round first
    python bench/round_time.py --home /tmp/pf-round-bench --pairs 128 --heldout 32 --threads 1 \
        --variants prefloop,trl-defaults --config-json '{"learning_rate": 3e-4}'
    # development: 16 + 8 pairs, 4 optimizer steps (about 8 min, data included)
    OMP_NUM_THREADS=1 python bench/round_time.py --quick --threads 1

The data is built once per --home and reused (v0 from the bundled GGUF, pairs sampled from v0 with
the repo's sampler, max_new_tokens 96, each judged by the fixed rule "the shorter response wins";
equal lengths are skipped), so later runs only time the rounds. Each variant then trains a round
in its own child process (`--child`), from a fresh copy of the same database, on the same rows,
from the same parent, with the same seed, and reports its peak RSS (VmHWM):

* ``trl-defaults``: the same LoRA adapter and the same recipe (learning rate, epochs, beta,
  warmup, seed; TRL's default batch of 8 = prefloop's 4 x 2 accumulation), every other
  DPOConfig field left at TRL 1.16's default: gradient checkpointing on, bf16 autocast (on CPU
  too), reference log-probs recomputed inside every step, max_length 1024, logging every 10 steps.
* ``prefloop``: `prefloop.train.rounds.trainer_settings`, what `prefloop train` uses.

Both run in the same invocation, one after the other, so the ratio is fair on a shared machine.
The printed phases come from the round's own metrics (``phase_s``): load (tokenizer, rows,
model), prepare (tokenising; for prefloop also the one reference pass), train, heldout (accuracy
of the adapter against its parent on the held-out rows), save. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("trl-defaults", "prefloop")
MAX_NEW_TOKENS = 96  # what `prefloop simulate` samples; SmolLM2 answers are rarely shorter


def trl_default_settings(config, on_gpu, folder) -> dict:
    """The baseline: the round's recipe only, and use_cpu (TRL's bf16 default refuses a CPU without it)."""
    from prefloop.train.recipe import recipe_settings

    return {**recipe_settings(config, folder), "use_cpu": not on_gpu}


def shown_defaults() -> dict:
    """The TRL defaults that matter for speed, read from the installed DPOConfig."""
    from trl import DPOConfig

    args = DPOConfig(output_dir="/tmp/pf-round-bench-defaults", report_to="none", use_cpu=True)
    keys = ("per_device_train_batch_size", "gradient_accumulation_steps", "activation_checkpointing", "bf16",
            "precompute_ref_log_probs", "max_length", "logging_steps", "dataloader_num_workers",
            "padding_free", "pad_to_multiple_of", "train_sampling_strategy")
    return {k: getattr(args, k, None) for k in keys}


# --------------------------------------------------------------------------------------------
# data: built once per home
# --------------------------------------------------------------------------------------------
def prepare(data: Path, pairs: int, heldout: int, seed: int) -> dict:
    """v0 + judged pairs in ``data`` (reused when ready.json says it has them)."""
    marker = data / "ready.json"
    if marker.exists():
        return json.loads(marker.read_text())
    os.environ["PREFLOOP_HOME"] = str(data)
    from prefloop.annotate import auth
    from prefloop.annotate.prompts import load_starter_prompts
    from prefloop.annotate.sampler import sample_pairs
    from prefloop.db.store import Store
    from prefloop.engine import models
    from prefloop.engine.generation import SamplingParams

    started = time.monotonic()
    store = Store()
    if store.version("v0") is None:
        models.create_base_version(store)
    if not store.count_prompts():
        load_starter_prompts(store)
    judge = auth.create_user(store, "rule-shorter", "password123")
    params = SamplingParams(max_new_tokens=MAX_NEW_TOKENS)
    counts = {}
    for split, wanted, split_seed in (("train", pairs, seed + 1), ("heldout", heldout, seed + 2)):
        pair_ids = sample_pairs(store, "v0", n_prompts=wanted + max(4, wanted // 6), split=split, params=params,
                                seed=split_seed, progress=lambda done, total, *_, split=split: print(f"  {split}: {done}/{total}", flush=True))
        made = 0
        for pair_id in pair_ids:
            if made == wanted:
                break
            pair = store.pair(pair_id)
            la, lb = len(pair["text_a"].strip()), len(pair["text_b"].strip())
            if la == lb or min(la, lb) == 0:
                continue
            store.assign_pair(judge, pair_id, pair["generation_a_id"])
            store.record_judgment(judge, pair_id, "a" if la < lb else "b")
            made += 1
        counts[split] = made
    store.close()
    info = {"train_rows": counts["train"], "heldout_rows": counts["heldout"], "max_new_tokens": MAX_NEW_TOKENS,
            "build_s": round(time.monotonic() - started, 1)}
    marker.write_text(json.dumps(info))
    return info


def fresh_copy(data: Path, target: Path) -> None:
    """The data folder's database copied, its model folders linked: both variants start equal."""
    if target.exists():
        shutil.rmtree(target)
    (target / "models").mkdir(parents=True)
    for version in (data / "models").iterdir():
        (target / "models" / version.name).symlink_to(version.resolve())
    source = __import__("sqlite3").connect(str(data / "prefloop.db"))
    dest = __import__("sqlite3").connect(str(target / "prefloop.db"))
    source.backup(dest)
    source.close()
    dest.close()


# --------------------------------------------------------------------------------------------
# one variant, in its own process
# --------------------------------------------------------------------------------------------
def child(variant: str, config_values: dict) -> dict:
    from prefloop.db.store import Store
    from prefloop.train.config import RoundConfig
    from prefloop.train.rounds import create_round, run_round

    store = Store()
    round_id = create_round(store, RoundConfig.from_dict(config_values))
    settings = trl_default_settings if variant == "trl-defaults" else None
    started = time.monotonic()
    summary = run_round(store, round_id, settings=settings)
    wall = time.monotonic() - started
    store.close()
    return {
        "variant": variant, "wall_s": round(wall, 1), "phase_s": summary["phase_s"], "steps": summary["steps"],
        "train_loss": summary["train_loss"], "heldout_accuracy": summary["heldout_accuracy"],
        "heldout_rows": summary["heldout_rows"], "peak_rss_mb": summary["peak_rss_mb"],
    }


def run_variant(variant: str, home: Path, data: Path, config_values: dict, threads: int) -> dict:
    target = home / f"run-{variant}"
    fresh_copy(data, target)
    env = {**os.environ, "PREFLOOP_HOME": str(target), "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
           "TQDM_DISABLE": "1"}
    log = target / "child.log"
    with log.open("w") as handle:
        done = subprocess.run(
            [sys.executable, __file__, "--child", variant, "--config-json", json.dumps(config_values)],
            cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=handle, text=True,
        )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{variant} failed (exit {done.returncode}); see {log}")
    return json.loads(lines[-1])


def print_table(results: list[dict]) -> None:
    header = ("variant", "round s", "load", "prepare", "train", "heldout", "save", "steps", "train loss",
              "held-out acc", "peak RSS MiB")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for r in results:
        p = r["phase_s"]
        acc = "n/a" if r["heldout_accuracy"] is None else f"{r['heldout_accuracy']:.3f} ({r['heldout_rows']})"
        print(" | ".join([r["variant"], f"{r['wall_s']:.1f}", *(f"{p.get(k, 0):.1f}" for k in
                          ("load", "prepare", "train", "heldout", "save")), str(r["steps"]),
                          f"{r['train_loss']:.4f}", acc, f"{r['peak_rss_mb']:.0f}"]))
    base = {r["variant"]: r for r in results}
    if len(base) == 2:
        a, b = base["trl-defaults"], base["prefloop"]

        def fit(r):  # tokenising, the reference pass and training: what the trainer settings change
            return r["phase_s"].get("prepare", 0) + r["phase_s"].get("train", 0)

        print(f"\nspeedup, whole round: {a['wall_s'] / b['wall_s']:.2f}x; "
              f"prepare + train only: {fit(a) / fit(b):.2f}x; "
              f"peak RSS: {b['peak_rss_mb'] / a['peak_rss_mb']:.2f} of the baseline")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", default="/tmp/pf-round-bench", help="folder for the data and the runs")
    parser.add_argument("--pairs", type=int, default=128, help="training preference rows")
    parser.add_argument("--heldout", type=int, default=32, help="held-out preference rows")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")),
                        help="torch threads of each round's process (OMP_NUM_THREADS)")
    parser.add_argument("--max-steps", type=int, default=-1, help="cut each round short (profiling)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    parser.add_argument("--config-json", default="{}", help="RoundConfig overrides for both variants")
    parser.add_argument("--quick", action="store_true", help="16 + 8 pairs, 4 steps: checks the script, not a figure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    sys.path.insert(0, str(REPO))
    if args.child:
        print(json.dumps(child(args.child, json.loads(args.config_json))), flush=True)
        return
    if args.quick:
        args.pairs, args.heldout, args.max_steps = 16, 8, 4 if args.max_steps == -1 else args.max_steps
    home = Path(args.home)
    data = home / f"data-p{args.pairs}-h{args.heldout}"
    data.mkdir(parents=True, exist_ok=True)
    info = prepare(data, args.pairs, args.heldout, args.seed)
    config_values = {"min_new_pairs": 1, "seed": args.seed, **json.loads(args.config_json)}
    if args.max_steps != -1:
        config_values["max_steps"] = args.max_steps
    print(f"data: {info}")
    print(f"round config (both variants): {config_values} (other RoundConfig fields at their defaults)")
    print(f"TRL 1.16 DPOConfig defaults the baseline keeps: {shown_defaults()}")
    print(f"threads per round process: {args.threads}; cpu count {os.cpu_count()}; load avg {os.getloadavg()}")
    results = []
    for variant in args.variants.split(","):
        started = time.monotonic()
        results.append(run_variant(variant, home, data, config_values, args.threads))
        print(f"  {variant}: {results[-1]} ({time.monotonic() - started:.0f} s with process start; "
              f"load avg after it {os.getloadavg()})", flush=True)
    print()
    print_table(results)


if __name__ == "__main__":
    main()
