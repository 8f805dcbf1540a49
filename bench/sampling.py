"""Pair-sampling throughput of prefloop's decode loop against one-at-a-time ``model.generate``.

    python bench/sampling.py                      # bundled SmolLM2-135M, 16 prompts x 2, 48 tokens
    python bench/sampling.py --prompts 8 --max-new-tokens 32 --batch-sizes 1,8
    python bench/sampling.py --threads 1          # on a CPU shared with other busy processes

Uses v0 from $PREFLOOP_HOME when it exists, otherwise converts the bundled GGUF into a temporary
home (about 20 s). Every row samples (temperature 0.9, top_p 0.95) and stops at end-of-turn or
max_new_tokens, so rows differ in length: throughput is generated tokens per wall-clock second,
and the baseline (HF ``generate``, one response at a time, same prompts, same settings, same
max_new_tokens) runs in the same process, so the ratios compare like with like on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

STARTER = Path(__file__).resolve().parent.parent / "annotate" / "starter_prompts.jsonl"


def load_prompts(n: int) -> list[list[dict]]:
    lines = [json.loads(line) for line in STARTER.read_text().splitlines() if line.strip()]
    return [[{"role": "user", "content": row["prompt"]}] for row in lines[:n]]


def open_v0():
    from annotate.store import Store
    from train import models

    if not os.environ.get("PREFLOOP_HOME") or Store().version("v0") is None:
        os.environ["PREFLOOP_HOME"] = tempfile.mkdtemp(prefix="prefloop-bench-")
        print(f"converting the bundled model into {os.environ['PREFLOOP_HOME']} ...", flush=True)
        models.create_base_version(Store())
    store = Store()
    return models.load_version(store, "v0")


def baseline(model, tokenizer, conversations, params) -> tuple[int, float]:
    """HF generate, one response at a time: what a naive sampler does."""
    import torch

    from train.generation import encode_conversation, stop_token_ids

    stops = sorted(stop_token_ids(model, tokenizer))
    tokens = 0
    started = time.perf_counter()
    for i, conversation in enumerate(conversations):
        ids = torch.tensor([encode_conversation(tokenizer, conversation)])
        torch.manual_seed(i)
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=0,
            max_new_tokens=params.max_new_tokens,
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id,
        )
        new = out[0, ids.shape[1] :].tolist()
        tokens += len([t for t in new if t not in stops])
    return tokens, time.perf_counter() - started


def baseline_batched(model, tokenizer, conversations, params, batch_size: int) -> tuple[int, float]:
    """HF generate on left-padded batches: fast, but a row's text depends on its batch mates."""
    import torch

    from train.generation import encode_conversation, stop_token_ids

    stops = sorted(stop_token_ids(model, tokenizer))
    pad = tokenizer.pad_token_id
    tokens = 0
    started = time.perf_counter()
    for start in range(0, len(conversations), batch_size):
        prompts = [encode_conversation(tokenizer, c) for c in conversations[start : start + batch_size]]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        torch.manual_seed(start)
        out = model.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, temperature=params.temperature,
            top_p=params.top_p, top_k=0, max_new_tokens=params.max_new_tokens, eos_token_id=stops,
            pad_token_id=pad,
        )
        for row in out[:, width:].tolist():
            for t in row:
                if t in stops:
                    break
                tokens += 1
    return tokens, time.perf_counter() - started


def ours(model, tokenizer, conversations, params, batch_size: int) -> tuple[int, float]:
    from train.generation import generate

    started = time.perf_counter()
    outs = generate(model, tokenizer, conversations, params, list(range(len(conversations))), batch_size=batch_size)
    return sum(o.completion_tokens for o in outs), time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    import torch

    from train.generation import SamplingParams

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16, help="prompts; two responses each")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice). On a busy "
                        "shared CPU use 1: OpenMP threads that wait for each other can be 10-100x slower.")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = open_v0()
    params = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=args.max_new_tokens)
    conversations = [c for c in load_prompts(args.prompts) for _ in range(2)]  # a pair per prompt
    print(f"device={next(model.parameters()).device} torch_threads={torch.get_num_threads()} "
          f"rows={len(conversations)} max_new_tokens={args.max_new_tokens}", flush=True)

    ours(model, tokenizer, conversations[:2], params, 2)  # warm-up: first-call allocations
    base_tokens, base_s = baseline(model, tokenizer, conversations, params)
    base_rate = base_tokens / base_s
    rows = [("HF generate, one at a time", 1, base_tokens, base_s, base_rate, 1.0)]
    print(f"baseline: {base_tokens} tokens in {base_s:.1f}s", flush=True)
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        tokens, seconds = ours(model, tokenizer, conversations, params, batch_size)
        rows.append(("prefloop decode loop", batch_size, tokens, seconds, tokens / seconds, tokens / seconds / base_rate))
        print(f"batch {batch_size}: {tokens} tokens in {seconds:.1f}s", flush=True)

    biggest = max(int(b) for b in args.batch_sizes.split(","))
    tokens, seconds = baseline_batched(model, tokenizer, conversations, params, biggest)
    rows.append(("HF generate, batched (global RNG)", biggest, tokens, seconds, tokens / seconds, tokens / seconds / base_rate))
    print(f"HF batched {biggest}: {tokens} tokens in {seconds:.1f}s", flush=True)

    print()
    print("| sampler | batch size | tokens | seconds | tokens/s | vs baseline |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, batch_size, tokens, seconds, rate, ratio in rows:
        print(f"| {name} | {batch_size} | {tokens} | {seconds:.1f} | {rate:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
