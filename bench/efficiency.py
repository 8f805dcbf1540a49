"""Judgments spent against win rate gained: active pair selection against random (issue 15).

    PREFLOOP_HOME=/path/with/v0 python bench/efficiency.py --rounds 4 --pairs-per-round 48 --seeds 3 \\
        --judges plain,personal,listy --out bench-efficiency
    python bench/efficiency.py --results docs/runs --out docs   # pool runs of bench/simulations.py instead
    python bench/efficiency.py --rounds 1 --pairs-per-round 4 --heldout-pairs 0 --seeds 1 --eval-prompts 4 \\
        --judges listy --out /tmp/efficiency-check   # a quick check that it runs (nothing is promoted)

For every judge, the same seeds run the whole loop twice, as ``prefloop simulate`` runs it
(production defaults, the evidence gate deciding): once with ``--selection random`` (two answers
per random train prompt, the baseline) and once with ``--selection active`` (k candidates per
prompt, the pair and the prompts chosen by the round's parent). After each round the version that
is *active* (the last promoted one, or v0 when none passed the gate) battles v0 blind on held-out
prompts; a round whose candidate was not promoted keeps the previous active version's win rate,
since that is what people would be served. So the curve is win rate vs v0 against training
judgments spent (gate pairs on held-out prompts are spent too, the same number for both arms, and
are counted apart).

It prints, per judge, the mean and spread over seeds of each arm's curve, and how many times
fewer judgments active selection needed to reach random's final mean win rate (linear
interpolation between rounds; "not reached" when it never does). It writes the table, every run's
``simulate --json`` result and a plot (one panel a judge, mean line, min-max band over seeds).

Judges: the defaults are ones no setting of prefloop was tuned on (``concise`` chose the
learning rate, so it is left out). Seeds run one after another in fresh homes under ``--out``;
each arm of a judge uses the same seeds, so the same v0 samples start both. Every round trains a
real model: on 2 CPU cores a round of the bundled model takes 25-45 minutes, so the default run
is for a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

SELECTIONS = ("random", "active")


def active_win_rates(run: dict) -> list[float]:
    """Win rate vs v0 of the version active after each round (0.5 before anything is promoted:
    v0 against itself). A rejected or waiting candidate's own battles do not count."""
    current, curve = 0.5, []
    for result in run["rounds"]:
        if result["gate"]["promoted"] or result.get("forced"):
            current = result.get("win_rate_vs_v0", current)
        curve.append(current)
    return curve


def judgments_to_reach(spent: list[int], curve: list[float], target: float) -> float | None:
    """The first number of judgments at which ``curve`` (starting at 0 judgments, 0.5) reaches
    ``target``, interpolated linearly between rounds; None if it never does."""
    points = [(0, 0.5), *zip(spent, curve)]
    if target <= 0.5:
        return 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if y1 >= target:
            return float(x1) if y1 == y0 else x0 + (x1 - x0) * (target - y0) / (y1 - y0)
    return None


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def summary(runs: dict[str, list[dict]], pairs_per_round: int) -> dict:
    """Per arm: each seed's curve, the mean curve and the min/max band; and the ratio."""
    arms = {}
    for selection, results in runs.items():
        curves = [active_win_rates(r) for r in results]
        rounds = min(len(c) for c in curves)
        curves = [c[:rounds] for c in curves]
        arms[selection] = {
            "spent": [pairs_per_round * (i + 1) for i in range(rounds)],
            "curves": curves,
            "mean": [mean([c[i] for c in curves]) for i in range(rounds)],
            "min": [min(c[i] for c in curves) for i in range(rounds)],
            "max": [max(c[i] for c in curves) for i in range(rounds)],
            "promoted": sum(1 for r in results for x in r["rounds"][:rounds] if x["gate"]["promoted"]),
            "gate_judgments": sum(x.get("heldout_pairs", 0) for r in results for x in r["rounds"]) // len(results),
            "stopped": [r["stopped"] for r in results if r.get("stopped")],  # a run that ended early says why
        }
    baseline = arms["random"]
    target = baseline["mean"][-1] if baseline["mean"] else 0.5
    random_needs = judgments_to_reach(baseline["spent"], baseline["mean"], target)
    active = arms["active"]
    active_needs = judgments_to_reach(active["spent"], active["mean"], target)
    ratio = (random_needs / active_needs) if random_needs and active_needs else None
    return {"arms": arms, "target": target, "random_needs": random_needs, "active_needs": active_needs,
            "times_fewer": ratio}


def table(judge: str, result: dict) -> str:
    lines = [f"judge {judge}: win rate vs v0 of the active version (mean over seeds, [min, max])"]
    for selection, arm in result["arms"].items():
        cells = "  ".join(f"{n}: {m:.1%} [{lo:.1%}, {hi:.1%}]"
                          for n, m, lo, hi in zip(arm["spent"], arm["mean"], arm["min"], arm["max"]))
        lines.append(f"  {selection:<6} {cells or 'no round ran in every seed'}   (promoted rounds: "
                     f"{arm['promoted']}, gate judgments per run: {arm['gate_judgments']})")
        lines.extend(f"         stopped: {reason}" for reason in arm["stopped"])
    if result["times_fewer"]:
        lines.append(f"  random's final {result['target']:.1%} took random {result['random_needs']:.0f} judgments, "
                     f"active {result['active_needs']:.0f}: {result['times_fewer']:.2f}x fewer")
    elif result["active_needs"] is None:
        lines.append(f"  active selection never reached random's final {result['target']:.1%}")
    else:
        lines.append(f"  random's final win rate {result['target']:.1%} is no gain over v0: no ratio")
    return "\n".join(lines)


def plot(results: dict[str, dict], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.2 * len(results), 3.6))
    for index, (judge, result) in enumerate(results.items()):
        axes = figure.add_subplot(1, len(results), index + 1)
        for selection, arm in result["arms"].items():
            spent = [0, *arm["spent"]]
            line, = axes.plot(spent, [0.5, *arm["mean"]], marker="o", label=selection)
            axes.fill_between(spent, [0.5, *arm["min"]], [0.5, *arm["max"]], alpha=0.2, color=line.get_color())
        axes.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
        axes.set_title(f"judge: {judge}")
        axes.set_xlabel("training judgments spent")
        axes.set_ylabel("win rate vs v0 (active version)")
        axes.set_ylim(0, 1)
        axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judges", default="plain,personal,listy",
                        help="names in prefloop.evaluate.judges, or module:function specs")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--pairs-per-round", type=int, default=48)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-prompts", type=int, default=48)
    parser.add_argument("--heldout-pairs", type=int, default=None,
                        help="gate pairs per round (default: what the gate's minimum needs)")
    parser.add_argument("--out", default="bench-efficiency", help="folder for seed homes, results, table and plot")
    parser.add_argument("--results", help="run nothing: pool the `simulate --json` files in this folder (e.g. made "
                        "by bench/simulations.py, one process per seed) for the judges that have both arms")
    args = parser.parse_args()
    if args.results:
        report(pooled_runs(Path(args.results), args.judges), args.pairs_per_round, Path(args.out).resolve())
        return

    from prefloop.db.store import Store
    from prefloop.evaluate.simulate import SimulationConfig, run_seeds

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from sampling import open_v0

    open_v0()  # the v0 home: $PREFLOOP_HOME, or the bundled model converted into a temporary one
    store = Store()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for spec in args.judges.split(","):
        judge = spec if ":" in spec else f"prefloop.evaluate.judges:{spec}"
        name = judge.rsplit(":", 1)[-1]
        runs = {}
        for selection in SELECTIONS:
            config = SimulationConfig(judge=judge, rounds=args.rounds, pairs_per_round=args.pairs_per_round,
                                      seeds=args.seeds, seed=args.seed, selection=selection,
                                      eval_prompts=args.eval_prompts, heldout_pairs=args.heldout_pairs)
            print(f"== judge {name}, selection {selection}: {args.seeds} seeds x {args.rounds} rounds", flush=True)
            done = run_seeds(store, config, home=out / f"{name}-{selection}", progress=os.isatty(2))
            runs[selection] = done["seeds"]
            (out / f"{name}-{selection}.json").write_text(json.dumps(done, indent=1))
        results[name] = runs
    report(results, args.pairs_per_round, out)


def pooled_runs(folder: Path, judges: str) -> dict[str, dict[str, list[dict]]]:
    """{judge: {selection: runs}} from a folder of `simulate --json` files, for the judges asked
    for that have runs of both selections."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from learning import group_runs

    loaded = [json.loads(f.read_text()) for f in sorted(folder.glob("*.json"))]
    groups = group_runs([r for r in loaded if "rounds" in r or "seeds" in r])  # not efficiency.json
    wanted = {spec.rsplit(":", 1)[-1] for spec in judges.split(",")}
    runs: dict[str, dict[str, list[dict]]] = {}
    for (judge, method, selection), found in groups.items():
        if judge in wanted and method == "dpo":
            runs.setdefault(judge, {})[selection] = found
    complete = {judge: arms for judge, arms in runs.items() if set(arms) == set(SELECTIONS)}
    if not complete:
        raise SystemExit(f"no judge of {sorted(wanted)} has both random and active dpo runs in {folder}")
    return complete


def report(runs: dict[str, dict[str, list[dict]]], pairs_per_round: int, out: Path) -> None:
    """Table, JSON and plot of every judge's two arms."""
    out.mkdir(parents=True, exist_ok=True)
    results, texts = {}, []
    for name, arms in runs.items():
        results[name] = summary(arms, pairs_per_round)
        texts.append(table(name, results[name]))
        print(texts[-1], flush=True)
    (out / "efficiency.json").write_text(json.dumps(results, indent=1))
    (out / "efficiency.txt").write_text("\n\n".join(texts) + "\n")
    plot(results, out / "efficiency.png")
    print(f"wrote {out / 'efficiency.txt'}, {out / 'efficiency.json'} and {out / 'efficiency.png'}")


if __name__ == "__main__":
    main()
