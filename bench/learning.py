"""Learning figures over seeds, from `prefloop simulate --json` results run apart.

    python bench/learning.py docs/runs/*.json --out docs

``prefloop simulate --seeds N`` runs its seeds one after another in one process. On a machine
with few cores it is faster to run one seed per process side by side (``--seed 0``, ``--seed 1``,
... each in its own home, ``OMP_NUM_THREADS=1``) and pool the results afterwards: this script
does the pooling. It reads any mix of single-run and multi-seed results, groups the runs by
judge, method and selection, and prints per round, over seeds: how many runs reached the round,
how many candidates the gate promoted, the candidate's blind win rate vs v0 (mean, sd, min-max),
the gate's rows and agreement, and the candidate's cut-off rate; plus v0's cut-off rate. With
``--out`` it writes the pooled summary (JSON) and a plot: one panel per judge, each seed's win
rate by round (filled marker: promoted; hollow: rejected or waiting), the mean as a line; a judge
never battled (a coin) shows the gate's agreement and lower bound instead. Partial results
(``simulate --partial-json``, ``"finished": false``) pool like the rest and are labelled so.

A seed that appears twice for the same judge, method and selection is an error (a rerun should
replace its file, not be averaged with it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def runs_of(result: dict) -> list[dict]:
    """The single runs in one `simulate --json` result (a multi-seed result holds several)."""
    return result["seeds"] if "seeds" in result else [result]


def group_runs(results: list[dict]) -> dict[tuple, list[dict]]:
    """Runs by (judge, method, selection), each group sorted by seed; a repeated seed raises."""
    groups: dict[tuple, list[dict]] = {}
    for result in results:
        for run in runs_of(result):
            key = (run["judge"].rsplit(":", 1)[-1], run.get("method", "dpo"), run.get("selection") or "random")
            if any(other["seed"] == run["seed"] for other in groups.get(key, [])):
                raise SystemExit(f"seed {run['seed']} of {'/'.join(key)} appears twice: keep one file per seed")
            groups.setdefault(key, []).append(run)
    return {key: sorted(runs, key=lambda r: r["seed"]) for key, runs in groups.items()}


def pooled(runs: list[dict]) -> dict:
    """simulate.summarise over the runs, plus the gate's rows and lower bounds per round."""
    from prefloop.evaluate.simulate import spread, summarise

    summary = summarise(runs)
    for entry in summary["rounds"]:
        here = [r["rounds"][entry["round"] - 1] for r in runs if len(r["rounds"]) >= entry["round"]]
        entry["gate_rows"] = spread([r["gate"].get("rows") for r in here])
        entry["gate_lower_bound"] = spread([r["gate"].get("lower_bound") for r in here])
        entry["verdicts"] = [r["gate"].get("decision") for r in here]
    summary["stopped"] = [r["stopped"] for r in runs if r.get("stopped")]
    return summary


def _cell(stats: dict, percent: bool = True) -> str:
    if not stats or not stats.get("n"):
        return "-"
    show = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:.0f}")
    text = show(stats["mean"])
    if stats["n"] > 1:
        text += f" (sd {show(stats['sd'])}; {show(stats['min'])}-{show(stats['max'])})"
    return text


def table(groups: dict[tuple, list[dict]]) -> str:
    """A markdown table: one line per judge and round."""
    lines = [
        "| judge | method | selection | round | seeds | promoted | win rate vs v0 (mean, sd, min-max) "
        "| gate rows | gate agreement | cut-off rate | v0 cut-off rate |",
        "|---|---|---|---:|---:|---:|---|---:|---|---:|---:|",
    ]
    for (judge, method, selection), runs in groups.items():
        summary = pooled(runs)
        for entry in summary["rounds"]:
            lines.append(
                f"| {judge} | {method} | {selection} | {entry['round']} | {entry['runs']} "
                f"| {entry['promoted']} of {entry['runs']} | {_cell(entry['win_rate_vs_v0'])} "
                f"| {_cell(entry['gate_rows'], percent=False)} | {_cell(entry['gate_accuracy'])} "
                f"| {_cell(entry['cutoff_rate'])} | {_cell(summary['v0_cutoff_rate'])} |"
            )
    return "\n".join(lines)


def plot(groups: dict[tuple, list[dict]], path: Path) -> None:
    """One panel per group: each seed's candidate win rate vs v0 by round (filled marker: promoted;
    hollow: rejected or waiting) and the mean. A group that was never battled (a coin judge, run
    with ``--eval-prompts 0``) shows what the gate saw instead: each seed's held-out agreement
    (solid) and its lower bound (dotted), which must stay under 0.5 for nothing to be promoted."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(4.2 * len(groups), 3.6))
    for index, ((judge, method, selection), runs) in enumerate(groups.items()):
        axes = figure.add_subplot(1, len(groups), index + 1)
        battled = any(r.get("win_rate_vs_v0") is not None for run in runs for r in run["rounds"])
        value = (lambda r: r.get("win_rate_vs_v0")) if battled else (lambda r: r["gate"].get("accuracy"))
        for run in runs:
            done = [r for r in run["rounds"] if value(r) is not None]
            label = f"seed {run['seed']}" + ("" if run.get("finished", True) else " (cut short)")
            line, = axes.plot([r["round"] for r in done], [value(r) for r in done], linewidth=0.8, alpha=0.6,
                              label=label)
            for result in done:
                promoted = result["gate"]["promoted"]
                axes.plot([result["round"]], [value(result)], marker="o", color=line.get_color(),
                          markerfacecolor=line.get_color() if promoted else "white")
            if not battled:
                bounds = [(r["round"], r["gate"]["lower_bound"]) for r in done if r["gate"].get("lower_bound") is not None]
                if bounds:
                    axes.plot(*zip(*bounds), color=line.get_color(), linewidth=0.8, linestyle=":")
        summary = pooled(runs)
        key = "win_rate_vs_v0" if battled else "gate_accuracy"
        means = [(e["round"], e[key]["mean"]) for e in summary["rounds"] if e[key]["n"]]
        if means:
            axes.plot(*zip(*means), color="black", linewidth=2, label="mean")
        axes.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
        axes.set_title(f"{judge} ({method}, {selection})", parse_math=False)
        axes.set_xlabel("round (filled: promoted)")
        axes.set_ylabel("candidate's win rate vs v0" if battled
                        else "gate agreement (dotted: its lower bound)")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylim(0, 1)
        axes.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="`prefloop simulate --json` output files")
    parser.add_argument("--out", help="folder for learning.json and learning.png")
    args = parser.parse_args(argv)
    results = []
    for name in args.results:
        try:
            results.append(json.loads(Path(name).read_text()))
        except (OSError, ValueError) as error:
            raise SystemExit(f"cannot read {name}: {error}") from None
    groups = group_runs(results)
    print(table(groups))
    for key, runs in groups.items():
        for reason in pooled(runs)["stopped"]:
            print(f"{'/'.join(key)}: {reason}", file=sys.stderr)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        summary = {"/".join(key): {"seeds": [r["seed"] for r in runs], **pooled(runs)} for key, runs in groups.items()}
        (out / "learning.json").write_text(json.dumps(summary, indent=1))
        plot(groups, out / "learning.png")
        print(f"wrote {out / 'learning.json'} and {out / 'learning.png'}")


if __name__ == "__main__":
    main()
