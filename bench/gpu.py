"""GPU figures in one run: sampling tok/s (torch loop vs vLLM), a DPO round in bf16 vs fp32, and the
multi-GPU launch on the GPUs present. Every ratio is against a baseline measured in the same run.

    # on a GPU host with prefloop installed, and vLLM in this python or in another one:
    python bench/gpu.py                                   # about 6-10 min on one H200
    python bench/gpu.py --vllm-python /opt/vllm/bin/python --prompts 128 --max-new-tokens 256
    python bench/gpu.py --skip-sampling --skip-rounds     # only the multi-GPU launch check
    python bench/gpu.py --json gpu.json                   # also write the figures as JSON
    # step 1 only, on a CPU, against vLLM's CPU build (.ci/vllm_env.sh prints its python):
    python bench/gpu.py --cpu-sampling --vllm-python ~/.cache/prefloop/vllm-venv-0.32.0/bin/python --prompts 16 --batch-size 32

1. Sampling, on the bundled SmolLM2-135M (v0, converted from its GGUF into --home): the same
   prompts (the starter set, two responses each, as the queue filler asks), the same settings
   and seeds, through prefloop's own engines (``engine/engines.py``): the torch loop in bf16 on
   the GPU, then a ``vllm serve`` of the same folder (bf16, ``--enable-lora``) at a loopback port
   through the vllm engine. Throughput = generated tokens / wall seconds; baseline: the torch loop.
2. One DPO round (``--pairs`` judged pairs, rule "the shorter answer wins", the round's own
   defaults otherwise) with precision fp32, then bf16; each in its own child process, from a
   copy of the same data, same seed. Baseline: fp32.
3. The same round under ``accelerate launch --config_file train/accelerate/<name>.yaml
   --num_processes N`` for N = the GPUs present: ddp always, zero3 where deepspeed is installed,
   fsdp. Baseline: the single-process bf16 round of step 2. With one GPU this checks the launch
   path only (N = 1).

Not part of the test suite. Results print as a table and, with --json, as a file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from round_time import fresh_copy, prepare  # noqa: E402  (bench/ scripts share helpers by path)

CONFIGS = REPO / "train" / "accelerate"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def gpu_info() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"gpus": 0}
    return {"gpus": torch.cuda.device_count(), "name": torch.cuda.get_device_name(0),
            "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
            "torch": torch.__version__, "cuda": torch.version.cuda}


# --------------------------------------------------------------------------------------------
# 1. sampling
# --------------------------------------------------------------------------------------------
def conversations(n: int) -> list[list[dict]]:
    lines = [json.loads(line) for line in (REPO / "annotate" / "starter_prompts.jsonl").read_text().splitlines() if line]
    chats = [[{"role": "user", "content": row["prompt"]}] for row in lines]
    return [chats[i % len(chats)] for i in range(n)]


def timed_generate(engine, chats, params, seeds, batch_size) -> dict:
    engine.generate(chats[:4], params.replace(max_new_tokens=8), seeds[:4], batch_size=4)  # warm-up
    started = time.perf_counter()
    out = engine.generate(chats, params, seeds, batch_size=batch_size)
    wall = time.perf_counter() - started
    tokens = sum(g.completion_tokens for g in out)
    return {"tokens": tokens, "wall_s": round(wall, 2), "tok_s": round(tokens / wall, 1),
            "cut_off": sum(g.finish_reason == "length" for g in out)}


def start_vllm(python: str, model_dir: str, log_path: Path, cpu: bool = False) -> tuple[subprocess.Popen, str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_NO_USAGE_STATS": "1",
           "VLLM_CPU_KVCACHE_SPACE": "2", "PYTHONPATH": ""}
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--host", "127.0.0.1",
               "--port", str(port), "--dtype", "bfloat16", "--enable-lora", "--max-lora-rank", "64",
               "--seed", "0"] + ([] if cpu else ["--gpu-memory-utilization", "0.5"])
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    while time.perf_counter() - started < 600 and process.poll() is None:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return process, url, time.perf_counter() - started
        except OSError:
            time.sleep(1)
    process.kill()
    raise RuntimeError(f"vllm did not start; see {log_path}")


def bench_sampling(home: Path, args, device: str = "cuda") -> dict:
    from prefloop.db.store import Store
    from prefloop.engine import models
    from prefloop.engine.engines import TorchEngine, open_engine
    from prefloop.engine.generation import SamplingParams

    store = Store()
    chats = conversations(args.prompts * 2)
    seeds = list(range(len(chats)))
    params = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=args.max_new_tokens)
    model, tokenizer = models.load_version(store, "v0", device=device, dtype=__import__("torch").bfloat16)
    result = {"device": device, "rows": len(chats), "max_new_tokens": args.max_new_tokens}
    log(f"sampling: torch loop, {len(chats)} rows, batch {args.batch_size}")
    result["torch"] = timed_generate(TorchEngine(model, tokenizer), chats, params, seeds, args.batch_size)
    del model
    models.clear_cache()
    if device == "cuda":
        __import__("torch").cuda.empty_cache()
    python = args.vllm_python or sys.executable
    if subprocess.run([python, "-c", "import vllm"], capture_output=True).returncode != 0:
        result["vllm"] = {"skipped": f"no vllm importable in {python} (pip install vllm, or --vllm-python)"}
        return result
    log("sampling: starting vllm serve on v0")
    process, url, start_s = start_vllm(python, str(models.version_path(store.require_version("v0"))),
                                       home / "vllm.log", cpu=device == "cpu")
    try:
        store.set_setting("engine", {"kind": "vllm", "url": url, "dtype": "bfloat16"})
        result["vllm"] = {"start_s": round(start_s, 1),
                          **timed_generate(open_engine(store, "v0"), chats, params, seeds, args.batch_size)}
        result["vllm_over_torch"] = round(result["vllm"]["tok_s"] / result["torch"]["tok_s"], 2)
    finally:
        store.set_setting("engine", {"kind": "torch"})
        process.terminate()
        process.wait(60)
    return result


# --------------------------------------------------------------------------------------------
# 2 and 3. rounds
# --------------------------------------------------------------------------------------------
def run_round(home: Path, data: Path, name: str, config: dict, launch: list[str] | None = None) -> dict:
    """A round from a fresh copy of ``data``: created here, trained by ``python -m prefloop.train``
    or under ``launch`` (accelerate launch ...)."""
    target = home / f"round-{name}"
    fresh_copy(data, target)
    env = {**os.environ, "PREFLOOP_HOME": str(target), "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    create = subprocess.run(
        [sys.executable, "-c", "import json,sys; from prefloop.db.store import Store; "
         "from prefloop.train.config import RoundConfig; from prefloop.train.rounds import create_round; "
         "print(create_round(Store(), RoundConfig.from_dict(json.loads(sys.argv[1]))))", json.dumps(config)],
        env=env, capture_output=True, text=True, cwd=str(REPO))
    if create.returncode != 0:
        return {"name": name, "error": create.stderr.strip().splitlines()[-1:]}
    round_id = create.stdout.strip().splitlines()[-1]
    command = (launch or [sys.executable]) + ["-m", "prefloop.train", "--round", round_id]
    started = time.perf_counter()
    with (target / "round.log").open("w") as handle:
        done = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=str(REPO))
    wall = time.perf_counter() - started
    row = {"name": name, "exit": done.returncode, "wall_s": round(wall, 1), "log": str(target / "round.log")}
    if done.returncode == 0:
        from prefloop.db.store import Store

        os.environ["PREFLOOP_HOME"] = str(target)
        stored = Store().round(int(round_id))
        metrics = stored["metrics"]
        row.update(status=stored["status"], steps=metrics.get("steps"), train_loss=metrics.get("train_loss"),
                   phase_s=metrics.get("phase_s"), heldout_accuracy=metrics.get("heldout_accuracy"))
    return row


def bench_rounds(home: Path, data: Path, args, gpus: int) -> dict:
    base = {"method": "dpo", "max_steps": args.steps, "batch_size": 8, "gradient_accumulation": 1,
            "min_new_pairs": 1, "max_length": 512}
    rounds = {}
    if not args.skip_rounds:
        for precision in ("fp32", "bf16"):
            log(f"round: {precision}, one process")
            rounds[precision] = run_round(home, data, precision, {**base, "precision": precision})
    launches = {}
    if not args.skip_launch and gpus >= 1:
        import importlib.util

        names = ["ddp", "fsdp"] + (["zero3"] if importlib.util.find_spec("deepspeed") else [])
        for name in names:
            log(f"round: accelerate launch {name}.yaml on {gpus} GPU(s)")
            launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / f"{name}.yaml"),
                      "--num_processes", str(gpus)]
            if gpus == 1 and name == "ddp":
                launch[launch.index("--config_file"):launch.index("--config_file") + 2] = []  # one process: no DDP
            launches[name] = run_round(home, data, f"launch-{name}", {**base, "precision": "bf16"}, launch)
        if "zero3" not in names:
            launches["zero3"] = {"skipped": "deepspeed is not installed (pip install deepspeed)"}
    out = {"config": base, "rounds": rounds, "launches": launches}
    fp32, bf16 = rounds.get("fp32", {}), rounds.get("bf16", {})
    if fp32.get("exit") == 0 and bf16.get("exit") == 0:
        out["bf16_speedup_over_fp32"] = round(fp32["wall_s"] / bf16["wall_s"], 2)
    for row in launches.values():
        if row.get("exit") == 0 and bf16.get("exit") == 0:
            row["speedup_over_one_process_bf16"] = round(bf16["wall_s"] / row["wall_s"], 2)
    return out


def prepare_v0(data: Path) -> None:
    from prefloop.db.store import Store
    from prefloop.engine import models

    store = Store()
    if store.version("v0") is None:
        models.create_base_version(store)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", help="data folder (default: a new temporary one)")
    parser.add_argument("--prompts", type=int, default=64, help="prompts to sample (two responses each)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64, help="the torch loop's rows per batch")
    parser.add_argument("--vllm-python", help="a python that imports vllm (default: this one)")
    parser.add_argument("--pairs", type=int, default=64, help="judged train pairs for the rounds")
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps per round")
    parser.add_argument("--skip-sampling", action="store_true")
    parser.add_argument("--skip-rounds", action="store_true")
    parser.add_argument("--skip-launch", action="store_true")
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--cpu-sampling", action="store_true",
                        help="only step 1, on this CPU (vLLM's CPU build: --vllm-python from .ci/vllm_env.sh)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    home = Path(args.home or tempfile.mkdtemp(prefix="prefloop-gpu-bench-")).resolve()
    data = home / "data"
    data.mkdir(parents=True, exist_ok=True)
    info = gpu_info()
    log(f"machine: {info}")
    if args.cpu_sampling:
        os.environ["PREFLOOP_HOME"] = str(data)
        prepare_v0(data)
        print(json.dumps(bench_sampling(data, args, device="cpu"), indent=2))
        return
    if not info["gpus"]:
        raise SystemExit("no CUDA GPU here: bench/gpu.py measures GPU figures only")
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": info}
    log("data: v0 from the bundled GGUF and judged pairs (once per --home)")
    os.environ["PREFLOOP_HOME"] = str(data)
    results["data"] = prepare(data, args.pairs, max(8, args.pairs // 4), seed=0)
    if not args.skip_sampling:
        results["sampling"] = bench_sampling(data, args)
    results["training"] = bench_rounds(home, data, args, info["gpus"])
    print(json.dumps(results, indent=2))
    sampling = results.get("sampling", {})
    if "torch" in sampling:
        print(f"\nsampling tok/s: torch {sampling['torch']['tok_s']}"
              + (f", vllm {sampling['vllm']['tok_s']} ({sampling['vllm_over_torch']}x)" if "tok_s" in sampling.get("vllm", {}) else ""))
    training = results["training"]
    for name, row in {**training["rounds"], **training["launches"]}.items():
        print(f"round {name}: " + (f"{row['wall_s']} s, exit {row['exit']}" if "wall_s" in row else json.dumps(row)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if not args.home:
        shutil.rmtree(home / "data" / "rounds", ignore_errors=True)


if __name__ == "__main__":
    main()
