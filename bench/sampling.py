"""Pair-sampling throughput of prefloop's decode loop against one-at-a-time ``model.generate``
and, where ``llama-cpp-python`` is installed, llama.cpp on the same GGUF file.

    python bench/sampling.py                      # bundled SmolLM2-135M, 16 prompts x 2, 48 tokens
    python bench/sampling.py --threads 1 --prompts 32 --max-new-tokens 96 --batch-sizes 1,16,32,64 --dtypes float32,bfloat16
    python bench/sampling.py --prompts 4 --max-new-tokens 16 --batch-sizes 8   # a quick check
    OMP_NUM_THREADS=1 py-spy record -r 200 -o profile.svg -- python bench/sampling.py --threads 1 --skip-baselines
    python bench/sampling.py --candidates 4 --threads 1 --prompts 16 --max-new-tokens 96 --dtypes bfloat16

Uses v0 from $PREFLOOP_HOME when it exists, otherwise converts the bundled GGUF into a temporary
home (about 20 s). Every row samples (temperature 0.9, top_p 0.95) and stops at end-of-turn or
max_new_tokens, so rows differ in length: throughput is generated tokens per wall-clock second.
Two responses per prompt, as the queue filler asks for. The baselines run in the same process
on the same prompt token ids with the same settings and max_new_tokens: HF ``generate`` one
response at a time (what a naive sampler does), batched HF ``generate``, and llama.cpp
single-stream on the very GGUF file v0 was converted from (Q4_1 weights), with as many threads
as torch uses. Ratios are against the one-at-a-time baseline and against llama.cpp.

``--candidates K`` measures issue 15's cost instead: time per queued pair when the sampler draws
K candidates per prompt (one decode batch, a prompt's rows sharing one prefill) and scores them
for active selection (entropy from the log-probs the decode returns, implicit reward against a
parent: the bench scores with v0 as its own parent, which costs what a real parent of the same
size costs), against today's two answers per prompt. Both at the sampler's batch of 32 rows, same prompts, same settings.
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


def open_v0(dtype=None, device=None):
    from prefloop.db.store import Store
    from prefloop.engine import models

    if not os.environ.get("PREFLOOP_HOME") or Store().version("v0") is None:
        os.environ["PREFLOOP_HOME"] = tempfile.mkdtemp(prefix="prefloop-bench-")
        print(f"converting the bundled model into {os.environ['PREFLOOP_HOME']} ...", flush=True)
        models.create_base_version(Store())
    store = Store()
    return models.load_version(store, "v0", device=device, dtype=dtype)


def baseline(model, tokenizer, conversations, params) -> tuple[int, float]:
    """HF generate, one response at a time: what a naive sampler does."""
    import torch

    from prefloop.engine.generation import encode_conversation, stop_token_ids

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

    from prefloop.engine.generation import encode_conversation, stop_token_ids

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


def llama_cpp_reference(tokenizer, conversations, params, threads: int) -> tuple[int, float, float] | None:
    """llama.cpp single-stream on the bundled GGUF (None when llama-cpp-python is not installed).

    Same prompt token ids (our chat template), temperature, top_p, max_new_tokens; top_k and
    min_p off and no repetition penalty, so it samples what our loop samples.
    """
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    from prefloop.engine.generation import encode_conversation
    from prefloop.engine.models import bundled_gguf

    llm = Llama(
        model_path=str(bundled_gguf()), n_threads=threads, n_threads_batch=threads, n_ctx=2048,
        verbose=False, seed=0,
    )
    prompts = [encode_conversation(tokenizer, c) for c in conversations]
    llm.create_completion(prompts[0], max_tokens=4, temperature=params.temperature)  # warm-up
    tokens = 0
    started, cpu = time.perf_counter(), time.process_time()
    for i, ids in enumerate(prompts):
        out = llm.create_completion(
            ids, max_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
            top_k=0, min_p=0.0, repeat_penalty=1.0, seed=i,
        )
        tokens += out["usage"]["completion_tokens"]
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    del llm
    return tokens, seconds, cpu


def ours(model, tokenizer, conversations, params, batch_size: int) -> tuple[int, float]:
    from prefloop.engine.generation import generate

    started = time.perf_counter()
    outs = generate(model, tokenizer, conversations, params, list(range(len(conversations))), batch_size=batch_size)
    return sum(o.completion_tokens for o in outs), time.perf_counter() - started


def candidates_case(model, tokenizer, prompts, params, k: int, batch_size: int = 32) -> None:
    """Seconds per queued pair: two answers per prompt (today) vs k candidates + active scoring."""
    import random

    from prefloop.annotate import selection
    from prefloop.engine.generation import generate

    def run(per_prompt: int, score: bool):
        cpu, started = time.process_time(), time.perf_counter()
        per_batch = max(1, batch_size // per_prompt)
        pairs = tokens = 0
        scoring = 0.0
        for start in range(0, len(prompts), per_batch):
            chunk = prompts[start : start + per_batch]
            rows = [c for c in chunk for _ in range(per_prompt)]
            seeds = [hash((start, i)) % 2**31 for i in range(len(rows))]
            outs = generate(model, tokenizer, rows, params, seeds, batch_size=batch_size)
            tokens += sum(o.completion_tokens for o in outs)
            grouped = [outs[i : i + per_prompt] for i in range(0, len(outs), per_prompt)]
            rngs = [random.Random(f"{start}:{i}") for i in range(len(chunk))]
            method = "active" if score else "random"
            randoms = selection.draw_random(rngs, method=method)  # random_pair_share 0.25
            scores = None
            if score:
                began = time.perf_counter()
                scores = bench_scores(model, tokenizer, chunk, grouped, randoms)
                scoring += time.perf_counter() - began
            chosen = selection.choose([[o.text for o in g] for g in grouped], rngs, method=method, scores=scores,
                                      randoms=randoms)
            pairs += len(chosen)
        return pairs, tokens, time.perf_counter() - started, time.process_time() - cpu, scoring

    def bench_scores(model, tokenizer, chunk, grouped, randoms):
        entropy = selection.predictive_entropy(grouped)  # free: log-probs come with the decode
        keep = [p for p in range(len(chunk)) if not randoms[p]]  # random draws are not scored
        scored = selection.implicit_rewards(model, tokenizer, [chunk[p] for p in keep], [grouped[p] for p in keep])
        rewards = [None] * len(chunk)
        for p, values in zip(keep, scored):
            rewards[p] = values  # v0 as its own parent: the cost of a parent of the same size
        return selection.Scores(rewards=rewards, entropy=entropy)

    run(2, False)  # warm-up
    today = run(2, False)
    with_k = run(k, True)
    print()
    print(f"| sampling ({len(prompts)} prompts, batch {batch_size} rows, {params.max_new_tokens} new tokens) "
          "| pairs queued | tokens | wall s | CPU s | of which scoring s | wall s per pair | vs today |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base = today[2] / max(today[0], 1)
    for name, (pairs, tokens, wall, cpu, scoring) in (("2 answers per prompt, random (today)", today),
                                                       (f"{k} candidates per prompt, active (parent pass)", with_k)):
        per_pair = wall / max(pairs, 1)
        print(f"| {name} | {pairs} | {tokens} | {wall:.1f} | {cpu:.1f} | {scoring:.1f} | {per_pair:.2f} "
              f"| {per_pair / base:.2f}x |")
    q = selection.random_probability(0.25, 0.5)
    share = q + (1 - q) * 0.5  # prompts that get a pair at active_prompt_share 0.5, random_pair_share 0.25
    half = with_k[2] / max(with_k[0] * share, 1)
    print(f"(at active_prompt_share 0.5 a batch queues {share:.0%} of its prompts: about {half / base:.2f}x today)")


def timed(run, *args) -> tuple[int, float, float]:
    """(tokens, wall seconds, CPU seconds of this process). On a CPU shared with other busy
    processes wall time is noisy; CPU time (all threads of this process) is a steadier measure
    of the work done, and equals wall time times threads on a quiet machine."""
    cpu = time.process_time()
    tokens, seconds = run(*args)
    return tokens, seconds, time.process_time() - cpu


def bf16_drift(model32, model16, tokenizer, conversations, n: int = 4) -> tuple[float, float]:
    """Mean KL(float32 || bfloat16) per token and top-1 agreement on float32 greedy replies."""
    import torch

    from prefloop.engine.generation import SamplingParams, encode_conversation, generate

    replies = generate(model32, tokenizer, conversations[:n], SamplingParams(temperature=0, max_new_tokens=48), [0] * n)
    kls, agree, count = 0.0, 0, 0
    with torch.inference_mode():
        for conversation, reply in zip(conversations, replies):
            ids = torch.tensor([encode_conversation(tokenizer, conversation) + reply.token_ids])
            a = model32(input_ids=ids).logits[0].float().log_softmax(-1)
            b = model16(input_ids=ids).logits[0].float().log_softmax(-1)
            kls += float((a.exp() * (a - b)).sum())
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            count += ids.shape[1]
    return kls / count, agree / count


def main(argv: list[str] | None = None) -> None:
    import torch

    from prefloop.engine.generation import SamplingParams

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16, help="prompts; two responses each")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-sizes", default="1,8,32", help="rows per decode batch for our loop")
    parser.add_argument("--dtypes", default="float32", help="comma list of torch dtypes for our loop "
                        "(bfloat16 is fast only on CPUs with native bf16: AVX512-BF16 or AMX)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice). On a busy "
                        "shared CPU use 1: OpenMP threads that wait for each other can be 10-100x slower.")
    parser.add_argument("--skip-baselines", action="store_true", help="only our loop (for profiling)")
    parser.add_argument("--candidates", type=int, help="measure k candidates per prompt + active scoring "
                        "against today's two answers per prompt (issue 15), and nothing else")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    params = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=args.max_new_tokens)
    if args.candidates:
        dtype = getattr(torch, args.dtypes.split(",")[0].strip())
        model, tokenizer = open_v0(dtype)
        print(f"device={next(model.parameters()).device} torch_threads={threads} dtype={dtype}", flush=True)
        candidates_case(model, tokenizer, load_prompts(args.prompts), params, args.candidates)
        return
    model, tokenizer = open_v0()
    conversations = [c for c in load_prompts(args.prompts) for _ in range(2)]  # a pair per prompt
    print(f"device={next(model.parameters()).device} torch_threads={threads} "
          f"rows={len(conversations)} max_new_tokens={args.max_new_tokens}", flush=True)

    ours(model, tokenizer, conversations[:2], params, 2)  # warm-up: first-call allocations
    rows = []
    if not args.skip_baselines:
        tokens, seconds, cpu = timed(baseline, model, tokenizer, conversations, params)
        rows.append(("HF generate, one at a time (float32)", 1, tokens, seconds, cpu))
        print(f"baseline: {tokens} tokens in {seconds:.1f}s", flush=True)
        reference = llama_cpp_reference(tokenizer, conversations, params, threads)
        if reference is None:
            print("llama-cpp-python is not installed: no llama.cpp reference", flush=True)
        else:
            rows.append((f"llama.cpp single stream (GGUF Q4_1, {threads} thread(s))", 1, *reference))
            print(f"llama.cpp: {reference[0]} tokens in {reference[1]:.1f}s", flush=True)
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name.strip())
        loaded = (model, tokenizer) if dtype == torch.float32 else open_v0(dtype)
        if dtype != torch.float32:
            ours(*loaded, conversations[:2], params, 2)
            kl, agree = bf16_drift(model, loaded[0], tokenizer, conversations[::2])
            print(f"{dtype_name} vs float32 on greedy replies: KL {kl:.4f} nats/token, "
                  f"top-1 agreement {agree:.1%}", flush=True)
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            tokens, seconds, cpu = timed(ours, *loaded, conversations, params, batch_size)
            rows.append((f"prefloop decode loop ({dtype_name})", batch_size, tokens, seconds, cpu))
            print(f"{dtype_name} batch {batch_size}: {tokens} tokens in {seconds:.1f}s", flush=True)
    if not args.skip_baselines:
        biggest = max(int(b) for b in args.batch_sizes.split(","))
        tokens, seconds, cpu = timed(baseline_batched, model, tokenizer, conversations, params, biggest)
        rows.append(("HF generate, batched (global RNG, float32)", biggest, tokens, seconds, cpu))
        print(f"HF batched {biggest}: {tokens} tokens in {seconds:.1f}s", flush=True)

    base_rate = rows[0][2] / rows[0][3]
    base_cpu_rate = rows[0][2] / rows[0][4]
    llama = next((r for r in rows if r[0].startswith("llama.cpp")), None)
    print()
    print("| sampler | batch size | tokens | seconds | tokens/s | vs one-at-a-time | vs llama.cpp "
          "| tokens per CPU-s | CPU-s ratio vs llama.cpp |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, batch_size, tokens, seconds, cpu in rows:
        rate, cpu_rate = tokens / seconds, tokens / max(cpu, 1e-9)
        vs_llama = f"{rate / (llama[2] / llama[3]):.2f}x" if llama else "-"
        cpu_vs_llama = f"{cpu_rate / (llama[2] / llama[4]):.2f}x" if llama else "-"
        print(f"| {name} | {batch_size} | {tokens} | {seconds:.1f} | {rate:.1f} | {rate / base_rate:.2f}x "
              f"| {vs_llama} | {cpu_rate:.1f} | {cpu_vs_llama} |")
    if args.skip_baselines:
        print(f"(first row is the reference; {base_cpu_rate:.1f} tokens per CPU-s)")

if __name__ == "__main__":
    main()
