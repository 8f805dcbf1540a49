"""``prefloop annotators``: the annotator dashboard (how each person votes; outliers flagged)."""

from __future__ import annotations

import json

import click

from prefloop.db.store import Store
from prefloop.evaluate.annotators import annotator_dashboard
from prefloop.safetext import terminal_safe


def _pct(value) -> str:
    return "-" if value is None else f"{value:.0%}"


@click.command("annotators")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def annotators_command(as_json: bool) -> None:
    """Per annotator: votes per day, median seconds per vote, tie and both-bad shares, position
    bias (share of decisive votes for the left side), gold accuracy, agreement with others, and
    flags for outliers.

    Example: prefloop annotators --json
    """
    rows = annotator_dashboard(Store())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("No judgments yet.")
        return
    click.echo(f"{'annotator':<20} {'votes':>5} {'/day':>6} {'med s':>6} {'tie':>5} {'bad':>5} "
               f"{'left':>5} {'gold':>5} {'agree':>6}  flags")
    for r in rows:
        seconds = "-" if r["median_seconds"] is None else f"{r['median_seconds']:.1f}"
        click.echo(
            f"{terminal_safe(r['annotator'])[:20]:<20} {r['votes']:>5} {r['votes_per_day']:>6.1f} "
            f"{seconds:>6} {_pct(r['tie_share']):>5} {_pct(r['both_bad_share']):>5} "
            f"{_pct(r['left_share']):>5} {_pct(r['gold_accuracy']):>5} {_pct(r['agreement']):>6}  "
            + "; ".join(r["flags"])
        )
