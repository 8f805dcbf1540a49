"""``prefloop stats``: counts of everything in the home, for a quick look."""

from __future__ import annotations

import json

import click

from prefloop.db.store import Store
from prefloop.db.vocab import CHOICES


def collect_stats(store: Store) -> dict:
    """Counts, votes by choice, the active version and its queue of ready pairs."""
    stats = dict(store.stats())
    choices = store.judgment_choice_counts()
    stats["judgments_by_choice"] = {c: choices.get(c, 0) for c in CHOICES}
    active = store.active_version()
    stats["active_version"] = active["name"] if active else None
    stats["queue_length"] = store.queued_pairs(active["id"]) if active else 0
    return stats


@click.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def stats_command(as_json: bool) -> None:
    """Show counts: prompts, versions, pairs, judgments by choice, the active version, the queue.

    Example: prefloop stats --json
    """
    stats = collect_stats(Store())
    if as_json:
        click.echo(json.dumps(stats, indent=2, sort_keys=True))
        return
    choices = stats["judgments_by_choice"]
    lines = [
        ("active version", stats["active_version"] or "none (run prefloop init)"),
        ("prompts", f"{stats['prompts']} ({stats['heldout_prompts']} held out)"),
        ("model versions", stats["versions"]),
        ("generations", stats["generations"]),
        ("pairs", f"{stats['pairs']} ({stats['open_pairs']} open)"),
        ("queue (ready pairs)", stats["queue_length"]),
        ("judgments", stats["judgments"]),
        ("  by choice", ", ".join(f"{c} {n}" for c, n in choices.items())),
        ("annotators", stats["annotators"]),
        ("rounds", stats["rounds"]),
    ]
    for name, value in lines:
        click.echo(f"{name:<20} {value}")
