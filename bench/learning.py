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
rate by round (filled marker: promoted; hollow: rejected or waiting), the mean as a line.

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
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.2 * len(groups), 3.6))
    for index, ((judge, method, selection), runs) in enumerate(groups.items()):
        axes = figure.add_subplot(1, len(groups), index + 1)
        for run in runs:
            xs = [r["round"] for r in run["rounds"] if r.get("win_rate_vs_v0") is not None]
            ys = [r["win_rate_vs_v0"] for r in run["rounds"] if r.get("win_rate_vs_v0") is not None]
            line, = axes.plot(xs, ys, linewidth=0.8, alpha=0.6, label=f"seed {run['seed']}")
            for result in run["rounds"]:
                if result.get("win_rate_vs_v0") is None:
                    continue
                promoted = result["gate"]["promoted"]
                axes.plot([result["round"]], [result["win_rate_vs_v0"]], marker="o", color=line.get_color(),
                          markerfacecolor=line.get_color() if promoted else "white")
        summary = pooled(runs)
        means = [(e["round"], e["win_rate_vs_v0"]["mean"]) for e in summary["rounds"] if e["win_rate_vs_v0"]["n"]]
        if means:
            axes.plot(*zip(*means), color="black", linewidth=2, label="mean")
        axes.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
        axes.set_title(f"{judge} ({method}, {selection})", parse_math=False)
        axes.set_xlabel("round (filled: promoted)")
        axes.set_ylabel("candidate's win rate vs v0")
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
