"""Live prompts: time to the first streamed token of both responses while the queue filler runs.

    python bench/live_latency.py                         # 8 live prompts per condition, 96 tokens
    python bench/live_latency.py --trials 20 --max-new-tokens 160
    python bench/live_latency.py --trials 3 --max-new-tokens 16     # a quick check

Runs as production does: one process, the background ``QueueFiller`` decoding batches of pairs
in its thread (queue target raised so it never idles) while an annotator's live prompt streams
through ``prefloop.annotate.sampler.stream_live_pair`` in another thread, with torch threads set by
``prefloop.engine.models.share_cpu_cores`` (or ``--threads``). Three conditions in the same run:
the live stream alone (baseline), beside the filler with the filler pausing between its steps
while a live stream decodes (``prefloop.engine.generation.live_priority``, the default), and beside the
filler without that pause. Prints p50/p95 of time to first token (both responses' first token
on screen) and the live stream's tokens/s; target: first token under 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

LIVE_PROMPTS = [
    "Give me three tips for writing a clear email.",
    "What is the difference between weather and climate?",
    "Write a haiku about a rainy morning.",
    "Explain what a hash table is to a beginner.",
    "How do I make a simple tomato sauce?",
    "Why is the sky blue? Answer in two sentences.",
    "Suggest a name for a small bakery.",
    "What should I pack for a weekend hike?",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def open_store():
    from prefloop.annotate.auth import create_user
    from prefloop.annotate.prompts import load_starter_prompts
    from prefloop.db.store import Store
    from prefloop.engine import models

    if not os.environ.get("PREFLOOP_HOME"):
        os.environ["PREFLOOP_HOME"] = tempfile.mkdtemp(prefix="prefloop-bench-")
    store = Store()
    if store.version("v0") is None:
        print(f"converting the bundled model into {os.environ['PREFLOOP_HOME']} ...", flush=True)
        models.create_base_version(store)
    if store.stats().get("prompts", 0) == 0:
        load_starter_prompts(store)
    user = store.annotator_by_name("bench-live")
    user_id = user["id"] if user else create_user(store, "bench-live", "bench-live-password-1")
    return store, user_id


def one_live_prompt(store, user_id: int, text: str, params, tokenizer) -> tuple[float, float, int]:
    """(seconds to the first streamed token, seconds in all, tokens of both responses)."""
    from prefloop.annotate.sampler import stream_live_pair

    started = time.perf_counter()
    first = None
    texts = ("", "")
    for item in stream_live_pair(store, user_id, text, params):
        if item[0] == "__done__":
            break
        texts = item
        if first is None:
            first = time.perf_counter() - started
    total = time.perf_counter() - started
    tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return first if first is not None else total, total, tokens


def run_condition(store, user_id, params, trials: int, filler_params, mode: str, tokenizer) -> dict:
    from prefloop.annotate.sampler import QueueFiller
    from prefloop.engine.generation import live_priority

    filler = None
    live_priority.enabled = mode != "filler-no-pause"
    if mode != "alone":
        filler = QueueFiller(store, params=filler_params, poll_s=0.2).start()
        time.sleep(3.0)  # let the filler get into its decode loop (past its first prefill)
    firsts, rates = [], []
    made_before = filler.status()["pairs_made"] if filler else 0
    started = time.perf_counter()
    try:
        for i in range(trials):
            text = LIVE_PROMPTS[i % len(LIVE_PROMPTS)] + f" ({mode}, {i})"
            first, total, tokens = one_live_prompt(store, user_id, text, params, tokenizer)
            firsts.append(first)
            rates.append(tokens / total)
            time.sleep(0.5)
    finally:
        if filler:
            filler.stop(timeout=600)
        live_priority.enabled = True
    return {
        "mode": mode,
        "p50": statistics.median(firsts),
        "p95": percentile(firsts, 0.95),
        "max": max(firsts),
        "rate": statistics.median(rates),
        "filler_pairs": (filler.status()["pairs_made"] - made_before) if filler else 0,
        "seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> None:
    import torch

    from prefloop.engine.generation import SamplingParams
    from prefloop.engine.models import share_cpu_cores

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8, help="live prompts per condition")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="live responses' length cap")
    parser.add_argument("--threads", type=int, help="torch threads (default: share_cpu_cores, as the app)")
    parser.add_argument("--modes", default="alone,filler+pause,filler-no-pause",
                        help="conditions to run, in order; the first is the baseline of the ratios")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    else:
        share_cpu_cores()
    store, user_id = open_store()
    store.set_setting("queue_target", 10_000)  # the filler never goes idle during the run
    params = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=args.max_new_tokens)
    filler_params = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=160)
    from prefloop.annotate.sampler import load_for_sampling

    model, tokenizer = load_for_sampling(store, "v0")
    print(f"torch_threads={torch.get_num_threads()} dtype={next(model.parameters()).dtype} "
          f"trials={args.trials} max_new_tokens={args.max_new_tokens}", flush=True)
    one_live_prompt(store, user_id, "warm-up", params.replace(max_new_tokens=4), tokenizer)
    results = []
    for mode in [m.strip() for m in args.modes.split(",")]:
        result = run_condition(store, user_id, params, args.trials, filler_params, mode, tokenizer)
        results.append(result)
        print(f"{mode}: p50 {result['p50'] * 1000:.0f} ms, p95 {result['p95'] * 1000:.0f} ms", flush=True)
    base = results[0]
    print()
    print("| live stream | first token p50 | p95 | max | live tokens/s (both responses) "
          "| p95 vs alone | filler pairs meanwhile |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['mode']} | {r['p50'] * 1000:.0f} ms | {r['p95'] * 1000:.0f} ms | {r['max'] * 1000:.0f} ms "
              f"| {r['rate']:.1f} | {r['p95'] / base['p95']:.2f}x | {r['filler_pairs']} |")


if __name__ == "__main__":
    main()
