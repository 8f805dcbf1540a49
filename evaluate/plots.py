"""Plots of the loop's progress, by version: win rate vs the base, held-out accuracy, length.

matplotlib with the Agg backend (no display needed); each function returns a Figure, which the
CLI saves as PNG and the Evaluate tab shows in a ``gr.Plot``. Inputs are the rows of
``prefloop.evaluate.report.build_report(...)["versions"]`` or of a simulation's ``"rounds"``: a list of
dicts with ``version`` and the plotted keys; missing values are skipped, not drawn as zero.
"""

from __future__ import annotations

from pathlib import Path

PLOT_FILES = {
    "win_rate": "win_rate_by_round.png",
    "heldout_accuracy": "heldout_accuracy_by_round.png",
    "length": "response_length_by_round.png",
}


def _figure(title: str, ylabel: str):
    # matplotlib is imported here, not at the top: it costs ~0.6 s, which `prefloop --help` (the
    # CLI imports this module) must not pay. A bare Figure keeps no global pyplot state, so the
    # app's threads can draw at once and nothing needs closing.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.6), dpi=110)
    axes = figure.subplots()
    axes.set_title(title, parse_math=False)  # titles hold a version name: plain text
    axes.set_xlabel("version")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    return figure, axes


MAX_LABEL_CHARS = 40  # a longer name is unreadable on an axis, and slow to lay out


def short_label(name: object) -> str:
    text = str(name)
    return text if len(text) <= MAX_LABEL_CHARS else text[: MAX_LABEL_CHARS - 1] + "…"


def _versions_axis(axes, names: list) -> list[int]:
    """Positions 0..n-1 on the x axis, labelled with the names as plain text, never mathtext
    (a name like ``v$\\undefinedcmd$`` made every figure raise)."""
    positions = list(range(len(names)))
    axes.set_xticks(positions, [short_label(n) for n in names], parse_math=False)
    return positions


def _empty(axes, message: str) -> None:
    axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes, color="gray")


def win_rate_figure(rows: list[dict], key: str = "win_rate_vs_base", base: str = "v0"):
    """Win rate against the base per version, with its 95% interval as error bars."""
    figure, axes = _figure(f"win rate vs {short_label(base)} (ties count half)", "win rate")
    points = [r for r in rows if r.get(key) is not None]
    if not points:
        _empty(axes, "no battles yet: queue some with `prefloop battles create`")
        return figure
    names = [r["version"] for r in points]
    values = [r[key] for r in points]
    lows, highs = [], []
    for r, v in zip(points, values):
        low, high = r.get("win_rate_ci") or (r.get("ci_low"), r.get("ci_high"))
        lows.append(v - low if low is not None else 0)
        highs.append(high - v if high is not None else 0)
    axes.errorbar(_versions_axis(axes, names), values, yerr=[lows, highs], fmt="o-", capsize=4)
    axes.axhline(0.5, color="gray", linestyle="--", linewidth=1)
    axes.set_ylim(0, 1)
    figure.tight_layout()
    return figure


def heldout_accuracy_figure(rows: list[dict]):
    figure, axes = _figure("held-out preference accuracy", "accuracy")
    points = [r for r in rows if r.get("heldout_accuracy") is not None]
    if not points:
        _empty(axes, "no held-out judgments yet")
        return figure
    axes.plot(_versions_axis(axes, [r["version"] for r in points]), [r["heldout_accuracy"] for r in points], "o-")
    axes.axhline(0.5, color="gray", linestyle="--", linewidth=1)
    axes.set_ylim(0, 1)
    figure.tight_layout()
    return figure


def length_figure(rows: list[dict], key: str = "mean_words"):
    figure, axes = _figure("mean response length on held-out prompts", "words")
    points = [r for r in rows if r.get(key) is not None]
    if not points:
        _empty(axes, "no held-out generations yet")
        return figure
    axes.bar(_versions_axis(axes, [r["version"] for r in points]), [r[key] for r in points], color="tab:orange")
    figure.tight_layout()
    return figure


def figures(rows: list[dict], base: str = "v0") -> dict:
    return {
        "win_rate": win_rate_figure(rows, base=base),
        "heldout_accuracy": heldout_accuracy_figure(rows),
        "length": length_figure(rows),
    }


def save_plots(rows: list[dict], out_dir: str | Path, base: str = "v0") -> list[Path]:
    """Write the three PNGs into ``out_dir``; returns their paths."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in figures(rows, base=base).items():
        path = out / PLOT_FILES[name]
        figure.savefig(path)
        written.append(path)
    return written


def simulation_rows(result: dict) -> list[dict]:
    """A simulation's JSON as plot rows (v0 first at 50%, then one row per round)."""
    rows = [{"version": "v0", "win_rate_vs_base": 0.5, "win_rate_ci": (0.5, 0.5)}]
    first = result["rounds"][0] if result.get("rounds") else {}
    if first.get("mean_words_v0") is not None:
        rows[0]["mean_words"] = first["mean_words_v0"]
    for r in result.get("rounds", []):
        rows.append({
            "version": r["version"],
            "win_rate_vs_base": r.get("win_rate_vs_v0"),
            "win_rate_ci": (r.get("ci_low"), r.get("ci_high")),
            "heldout_accuracy": r.get("heldout_accuracy"),
            "mean_words": r.get("mean_words"),
        })
    return rows
