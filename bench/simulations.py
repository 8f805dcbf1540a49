"""Run many `prefloop simulate` seeds side by side, one process each, resumable.

    python bench/simulations.py --judges concise,finished,listy --seeds 0,1,2 --rounds 3 \\
        --parallel 2 --out docs/runs
    python bench/simulations.py --judges coin --seeds 0,1,2 --rounds 3 --eval-prompts 0 --out docs/runs
    python bench/learning.py docs/runs/*.json --out docs          # pool them: mean and spread

Learning figures rest on several seeds of several judges, and on a small machine one round of the
bundled model takes about 25 minutes: a 3-judge, 3-seed, 3-round set is more than a working
session. So every (judge, selection, seed) run is its own job: its own home (``prefloop init``
from the same v0 weights, the starter prompts), its own process (``OMP_NUM_THREADS`` 1, so
``--parallel`` processes share the cores without oversubscribing them), and its own result file
``<out>/<judge>-<selection>-s<seed>.json`` (``prefloop simulate --json``, written when the run
ends). A job whose result file exists is skipped, and a job cut short (the end of a session, a
reboot) resumes after its last finished round when the set is run again with the same options
(``simulate --resume``, from the checkpoint every round leaves in its home; ``--fresh`` starts
such runs again from nothing instead). The homes and logs of runs, and the v0 weights they all
point at (``<out>/work/v0-home``), live under ``<out>/work``: delete it once the set is complete.
Each run also rewrites ``<out>/work/<name>/partial.json`` after every round (``simulate
--partial-json``); a run that fails leaves a copy of its finished rounds in
``<out>/<name>.partial.json``, marked ``"finished": false``.

Settings are production's (`prefloop simulate` uses `prefloop train`'s defaults): pass only what
a figure needs (``--selection``, ``--eval-prompts 0`` for a coin, whose win rate means nothing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Job:
    judge: str  # a name in prefloop.evaluate.judges, or module:function
    selection: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.judge.rsplit(':', 1)[-1]}-{self.selection}-s{self.seed}"

    @property
    def spec(self) -> str:
        return self.judge if ":" in self.judge else f"prefloop.evaluate.judges:{self.judge}"


def jobs_of(judges: str, selections: str, seeds: str) -> list[Job]:
    """Every (judge, selection, seed), seeds outermost: a set cut short has every judge's first seeds."""
    return [Job(j, s, int(seed)) for seed in seeds.split(",") for j in judges.split(",") for s in selections.split(",")]


def default_v0(out: Path) -> str:
    """The v0 weights of $PREFLOOP_HOME, else the bundled model converted once into
    ``<out>/work/v0-home``: every run's home points at those weights, so they must outlive this
    process for a later invocation to resume its runs."""
    from prefloop.db.store import Store
    from prefloop.engine import models

    if not (os.environ.get("PREFLOOP_HOME") and Store().version("v0")):
        os.environ["PREFLOOP_HOME"] = str(out / "work" / "v0-home")
        if Store().version("v0") is None:
            print(f"converting the bundled model into {os.environ['PREFLOOP_HOME']} ...", flush=True)
            models.create_base_version(Store())
    return str(models.version_path(Store().version("v0")))


CHECKPOINT = "simulate-checkpoint.db"  # prefloop.evaluate.checkpoint.FILE: what a run writes after each round
PREFLOOP = [sys.executable, "-c", "from prefloop.cli import cli; cli(prog_name='prefloop')"]  # this Python's


def command(job: Job, args, out: Path) -> list[str]:
    cmd = [*PREFLOOP, "simulate", "--judge", job.spec, "--selection", job.selection,
           "--seed", str(job.seed), "--rounds", str(args.rounds), "--pairs-per-round", str(args.pairs_per_round),
           "--eval-prompts", str(args.eval_prompts), "--json",
           "--partial-json", str(out / "work" / job.name / "partial.json")]
    if args.heldout_pairs is not None:
        cmd += ["--heldout-pairs", str(args.heldout_pairs)]
    if args.all_judgments:
        cmd.append("--all-judgments")
    return cmd


def resumable(job: Job, out: Path) -> bool:
    """An earlier try of this job finished at least one round (its home has a checkpoint)."""
    return (out / "work" / job.name / "home" / CHECKPOINT).exists()


def start(job: Job, args, v0: str, out: Path) -> subprocess.Popen:
    """Start the job's simulation: from its checkpoint when an earlier try left one (unless
    --fresh), else in a fresh home; stdout goes to a temporary file."""
    work = out / "work" / job.name
    env = {**os.environ, "PREFLOOP_HOME": str(work / "home"), "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false", "MALLOC_ARENA_MAX": "2"}
    if resumable(job, out) and not args.fresh:
        log = open(work / "simulate.log", "a")
        log.write(f"\n--- {time.strftime('%H:%M:%S')} resumed from its checkpoint ---\n")
        log.flush()
        cmd = [*command(job, args, out), "--resume"]
    else:
        if work.exists():
            shutil.rmtree(work)  # an earlier try that finished no round: start it again from nothing
        (work / "home").mkdir(parents=True)
        log = open(work / "simulate.log", "w")
        init = subprocess.run([*PREFLOOP, "init", "--base-model", v0],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
        if init.returncode:
            raise SystemExit(f"{job.name}: prefloop init failed, see {work / 'simulate.log'}")
        cmd = command(job, args, out)
    return subprocess.Popen(cmd, env=env, stdout=open(work / "result.json.part", "w"), stderr=log)


def finish(job: Job, process: subprocess.Popen, out: Path) -> str:
    """Move a finished run's result into place; say how it ended."""
    work = out / "work" / job.name
    part = work / "result.json.part"
    if process.returncode == 0 and part.stat().st_size:
        part.replace(out / f"{job.name}.json")
        return f"{job.name}: done -> {out / (job.name + '.json')}"
    partial = work / "partial.json"
    kept = ""
    if partial.exists():
        shutil.copyfile(partial, out / f"{job.name}.partial.json")  # the work folder keeps its own, to resume
        kept = f"; its finished rounds are in {out / (job.name + '.partial.json')} (run again to resume it)"
    tail = (work / "simulate.log").read_text(errors="replace").replace("\r", "\n").splitlines()[-3:]
    return f"{job.name}: FAILED (exit {process.returncode}){kept}; log {work / 'simulate.log'}: " + " | ".join(tail)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judges", default="concise,finished,listy", help="comma list of judge names or module:function")
    parser.add_argument("--selections", default="random", help="comma list: random, active")
    parser.add_argument("--seeds", default="0,1,2", help="comma list of seeds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs-per-round", type=int, default=48)
    parser.add_argument("--heldout-pairs", type=int, default=None, help="default: what the gate minimum needs")
    parser.add_argument("--eval-prompts", type=int, default=48, help="held-out battles vs v0 per round (0: none)")
    parser.add_argument("--all-judgments", action="store_true", help="rounds train on every closed train pair")
    parser.add_argument("--parallel", type=int, default=2, help="simulations at once (one per core or two)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per simulation")
    parser.add_argument("--v0", help="v0 weights folder (default: $PREFLOOP_HOME's v0, or the bundled model)")
    parser.add_argument("--fresh", action="store_true", help="start interrupted runs again from nothing, not from their checkpoint")
    parser.add_argument("--out", default="bench-simulations")
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    jobs = jobs_of(args.judges, args.selections, args.seeds)
    todo = [job for job in jobs if not (out / f"{job.name}.json").exists()]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} runs already have results in {out}; {len(todo)} to run, "
          f"{args.parallel} at a time", flush=True)
    if not todo:
        return
    v0 = args.v0 or default_v0(out)
    running: dict[str, tuple[Job, subprocess.Popen, float]] = {}
    failed = 0
    while todo or running:
        while todo and len(running) < args.parallel:
            job = todo.pop(0)
            how = "resumed" if resumable(job, out) and not args.fresh else "started"
            running[job.name] = (job, start(job, args, v0, out), time.time())
            print(f"{time.strftime('%H:%M:%S')} {how} {job.name}", flush=True)
        time.sleep(5)
        for name, (job, process, began) in list(running.items()):
            if process.poll() is not None:
                del running[name]
                message = finish(job, process, out)
                failed += "FAILED" in message
                print(f"{time.strftime('%H:%M:%S')} {message} ({(time.time() - began) / 60:.0f} min)", flush=True)
    if failed:
        raise SystemExit(f"{failed} run(s) failed")


if __name__ == "__main__":
    main()
