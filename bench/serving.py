"""Serving latency: a vote to the next pair, with 1, 8 and 32 annotators at once, sampler running.

    OMP_NUM_THREADS=1 python bench/serving.py                 # bundled SmolLM2-135M; about 5-7 min on 2 busy CPU cores
    OMP_NUM_THREADS=1 python bench/serving.py --profile /tmp/serving.txt --json /tmp/votes.jsonl
                                    # + py-spy (--gil, raw) of the server at 32 annotators, + every vote
    python bench/serving.py --levels 1,8 --votes 10 --paced-votes 0 --canned --base-model DIR   # ~1 min check

Builds a fresh data folder (``prefloop init``: v0, starter prompts), samples the pairs to judge
from v0, starts ``prefloop serve`` WITH its background sampler as in production, and drives it
over loopback with bench/http_load.py: every simulated annotator is its own Gradio session that
signs in and votes through the same events the buttons fire. ``queue_target`` is set above the
number of ready pairs, so the sampler decodes flat out during every measurement (the worst
case: an idle sampler would leave the CPU to the votes), while the queue itself never runs
empty (a waiting screen is not counted as a "next pair").

Two modes, each with its own 1-annotator baseline measured in the same run:
- ``flat``: annotators vote back to back with no think time (a stress test: 32 clients
  hammering a 2-core box; latency is then mostly queueing, see votes/s).
- ``paced``: an exponential think time (mean ``--think-s``, default 3 s) before each vote, still
  faster than people judge two responses.
Latency is reported client side (send -> next pair received, through Gradio's queue and event
stream) and server side (Gradio's own timing of the handler: record the vote, pick and render
the next pair). The load driver runs on the same machine, so it competes for the same cores.
Each level uses its own annotators, so no one sees a pair twice.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.http_load import AppServer, prepare_home, run_load, vote_problems  # noqa: E402

PASSWORD = "serving-bench-password"
TARGET_P95_MS = 100


def _row(mode: str, level: int, summary: dict, baseline_p95: float | None) -> str:
    ratio = (summary["p95_ms"] / baseline_p95) if baseline_p95 and summary["p95_ms"] else None
    cells = [
        f"{mode:<6}", f"{level:>4}", f"{summary['acknowledged']:>6}",
        *(f"{summary[k] or 0:>8.1f}" for k in ("p50_ms", "p95_ms", "p99_ms")),
        *(f"{summary[k] or 0:>8.1f}" for k in ("server_p50_ms", "server_p95_ms", "server_p99_ms")),
        f"{summary['votes_per_s'] or 0:>7.1f}", f"{ratio:>6.2f}x" if ratio else f"{'1.00x':>7}",
    ]
    return " ".join(cells)


HEADER = (
    f"{'mode':<6} {'ann':>4} {'votes':>6} {'p50':>8} {'p95':>8} {'p99':>8} "
    f"{'srv p50':>8} {'srv p95':>8} {'srv p99':>8} {'votes/s':>7} {'p95/1':>7}\n"
    f"{'':<6} {'':>4} {'':>6} {'client side, ms':>26} {'server side (handler), ms':>26}"
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="data folder to create (default: a new temporary folder)")
    parser.add_argument("--base-model", help="v0 checkpoint folder or HF id (default: the bundled SmolLM2-135M)")
    parser.add_argument("--levels", default="1,8,32", help="concurrent annotators per measurement")
    parser.add_argument("--votes", type=int, default=40, help="votes per annotator, flat mode")
    parser.add_argument("--paced-votes", type=int, default=8, help="votes per annotator, paced mode (0: skip)")
    parser.add_argument("--think-s", type=float, default=3.0, help="mean think time in paced mode")
    parser.add_argument("--canned", action="store_true", help="canned pair texts instead of sampling them first (faster)")
    parser.add_argument("--json", metavar="OUT", help="also write every vote (start, latency, server time) as JSON lines")
    parser.add_argument("--profile", metavar="OUT", help="py-spy record the server during the largest flat level (.svg, or .txt for raw)")
    args = parser.parse_args(argv)

    home = Path(args.home or tempfile.mkdtemp(prefix="pf-serving-"))
    try:
        _run(args, home)
    finally:
        if not args.home:  # a temporary folder holds a ~500 MB copy of v0: do not leave it behind
            shutil.rmtree(home, ignore_errors=True)


def _run(args, home: Path) -> None:
    levels = [int(x) for x in args.levels.split(",")]
    modes = [("flat", args.votes, 0.0)] + ([("paced", args.paced_votes, args.think_s)] if args.paced_votes else [])
    plan, names_needed = [], ["warmup"]
    for mode, votes, think in modes:
        for level in levels:
            names = [f"{mode}{level}-{i}" for i in range(level)]
            plan.append((mode, level, votes, think, names))
            names_needed += names
    most_votes = max(votes for _, votes, _ in modes)
    print(f"home {home}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}; "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
    prepare_home(
        home, base_model=args.base_model, annotators=names_needed, password=PASSWORD,
        pairs=most_votes + 8, judgments_per_pair=len(names_needed), max_new_tokens=None,
        queue_target=most_votes + 64, sample=not args.canned,
    )
    lines = []
    with AppServer(home, sampler=True) as server:
        print(f"server pid {server.pid} at {server.url}")
        _wait_for_sampler(server)
        run_load(server.url, ["warmup"], PASSWORD, 5)  # first renders, first queries: not measured
        for mode, level, votes, think, names in plan:
            profiler = None
            if args.profile and mode == "flat" and level == max(levels):
                profiler = _start_profiler(server.pid, args.profile)
            result = run_load(server.url, names, PASSWORD, votes, think_s=think, timeout_s=900)
            if profiler is not None:
                profiler.send_signal(2)  # SIGINT: py-spy writes what it has
                profiler.wait(60)
                print(f"profile written to {args.profile}")
            from prefloop.db.store import Store

            problems = vote_problems(Store(), result, ignore=tuple(n for n in names_needed if n not in names))
            summary = result.summary()
            lines.append((mode, level, summary))
            if args.json:
                _write_votes(args.json, mode, level, result)
            print(f"{mode} {level}: {summary}" + (f" PROBLEMS: {problems[:3]}" if problems else ""))
            for error in result.errors[:3]:
                print("  error:", error)
    print()
    print(HEADER)
    baseline = {}
    for mode, level, summary in lines:
        if level == min(levels):
            baseline[mode] = summary["p95_ms"]
        print(_row(mode, level, summary, baseline.get(mode)))
    print(f"\ntarget: p95 < {TARGET_P95_MS} ms while the queue is not empty (client side). "
          f"Waited votes (queue empty) are left out of the percentiles: "
          f"{sum(s['waited'] for _, _, s in lines)} here.")


def _write_votes(path: str, mode: str, level: int, result) -> None:
    import json

    with open(path, "a") as out:
        for vote in result.votes:
            out.write(json.dumps({"mode": mode, "level": level, "annotator": vote.annotator,
                                  "seq": vote.seq, "started": vote.started, "latency_s": vote.latency_s,
                                  "server_s": vote.server_s, "acknowledged": vote.acknowledged}) + "\n")


def _wait_for_sampler(server: AppServer, timeout_s: float = 600) -> None:
    """Measure only once the server's sampler has loaded its model and stored a first batch."""
    from prefloop.db.store import Store

    store, started = Store(), time.monotonic()
    before = store.stats()["pairs"]
    while store.stats()["pairs"] <= before:
        if time.monotonic() - started > timeout_s:
            raise SystemExit("the server's sampler stored no pair:\n" + server.log_tail())
        time.sleep(1)
    print(f"sampler running: first batch stored after {time.monotonic() - started:.0f} s")


def _start_profiler(pid: int, out: str) -> subprocess.Popen:
    fmt = "raw" if out.endswith(".txt") else "flamegraph"
    return subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--rate", "200", "--format", fmt, "-o", out,
         "--nonblocking", "--threads", "--gil"],  # --gil: who holds the interpreter, i.e. the CPU
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


if __name__ == "__main__":
    main()
