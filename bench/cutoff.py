"""v0's cut-off rate (answers that hit max_new_tokens) by cap, repetition penalty, temperature, top-p.

    PREFLOOP_HOME=/path/with/v0 python bench/cutoff.py --prompts 168 --penalties 1.1 --caps 256,384,512,768 \
        --temperature 0.9 --top-p 0.8
    PREFLOOP_HOME=/path/with/v0 python bench/cutoff.py --split heldout --caps 512 --top-p 0.8   # the check

Train-split starter prompts by default: choose settings there, then check the choice once on the
held-out ones (``--split heldout``) that the gate and the reports use. One answer per prompt,
sampled with prefloop's own decode loop on the default device at the *largest* cap; an answer at
least N tokens long would have been cut at N, so one run per penalty gives the rate at every
smaller cap. Prints a table and the time per answer, the cost a higher cap adds to filling the
queue; --json also writes it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sampling import STARTER, open_v0


def starter_prompts(n: int, split: str = "train") -> list[list[dict]]:
    rows = [json.loads(line) for line in Path(STARTER).read_text().splitlines() if line.strip()]
    return [[{"role": "user", "content": r["prompt"]}] for r in rows if r.get("split", "train") == split][:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--penalties", default="1.1,1.2")
    parser.add_argument("--caps", default="256,384,512,768")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=["train", "heldout"], default="train")
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    from prefloop.engine.generation import SamplingParams, generate, sampling_dtype
    from prefloop.engine.models import default_device

    caps = sorted(int(c) for c in args.caps.split(","))
    device = default_device()  # as the sampler: the GPU where there is one, in its sampling dtype
    model, tokenizer = open_v0(device=device, dtype=sampling_dtype(device))
    conversations = starter_prompts(args.prompts, args.split)
    print(f"{len(conversations)} {args.split} starter prompts, one answer each, T {args.temperature}, "
          f"top-p {args.top_p}, sampled at {caps[-1]} tokens on {device} ({model.dtype})")
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
    report = {"device": device, "prompts": len(conversations), "split": args.split, "temperature": args.temperature,
              "top_p": args.top_p, "penalties": {str(k): v for k, v in results.items()}}
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
