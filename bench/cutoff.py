"""v0's cut-off rate (answers that hit max_new_tokens) by cap and repetition penalty.

    PREFLOOP_HOME=/path/with/v0 python bench/cutoff.py --prompts 96 --penalties 1.1,1.2 --caps 256,384,512,768

Train-split starter prompts only (never the held-out ones the gate and the reports use), one
answer per prompt, sampled with prefloop's own decode loop at the sampling defaults (temperature
0.9, top-p 0.95) and the *largest* cap; an answer at least N tokens long would have been cut at N,
so one run per penalty gives the rate at every smaller cap. Prints a table and the time per
answer, the cost a higher cap adds to filling the queue.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sampling import STARTER, open_v0


def train_prompts(n: int) -> list[list[dict]]:
    rows = [json.loads(line) for line in Path(STARTER).read_text().splitlines() if line.strip()]
    return [[{"role": "user", "content": r["prompt"]}] for r in rows if r.get("split", "train") == "train"][:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--penalties", default="1.1,1.2")
    parser.add_argument("--caps", default="256,384,512,768")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    from prefloop.engine.generation import SamplingParams, generate, sampling_dtype
    from prefloop.engine.models import default_device

    caps = sorted(int(c) for c in args.caps.split(","))
    device = default_device()  # as the sampler: the GPU where there is one, in its sampling dtype
    model, tokenizer = open_v0(device=device, dtype=sampling_dtype(device))
    conversations = train_prompts(args.prompts)
    print(f"{len(conversations)} train starter prompts, one answer each, T {args.temperature}, top-p {args.top_p}, "
          f"sampled at {caps[-1]} "
          f"tokens on {device} ({model.dtype})")
    results = {}
    for penalty in (float(p) for p in args.penalties.split(",")):
        params = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_new_tokens=caps[-1], repetition_penalty=penalty)
        started = time.perf_counter()
        out = generate(model, tokenizer, conversations, params, [args.seed + i for i in range(len(conversations))],
                       batch_size=args.batch_size)
        seconds = time.perf_counter() - started
        lengths = [g.completion_tokens for g in out]
        rates = {cap: sum(n >= cap for n in lengths) / len(lengths) for cap in caps}
        results[penalty] = {"rates": rates, "s_per_answer": seconds / len(lengths),
                            "mean_tokens": sum(lengths) / len(lengths)}
        print(f"penalty {penalty}: " + "  ".join(f"{cap}: {rate:.1%}" for cap, rate in rates.items())
              + f"  ({seconds / len(lengths):.2f} s/answer, mean {sum(lengths) / len(lengths):.0f} tokens)", flush=True)
    report = {"device": device, "prompts": len(conversations), "temperature": args.temperature, "top_p": args.top_p, "penalties": {str(k): v for k, v in results.items()}}
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
