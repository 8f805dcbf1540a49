"""``prefloop gold``: gold pairs, known answers mixed into annotators' queues."""

from __future__ import annotations

import click

from prefloop.db.store import Store
from prefloop.db.vocab import CHOICES


@click.group("gold")
def gold_group() -> None:
    """Gold pairs: known answers mixed silently into annotators' queues (quality control).

    Example: prefloop gold add 12 --answer a && prefloop settings set gold_rate 0.05
    """


@gold_group.command("add")
@click.argument("pair_id", type=int)
@click.option("--answer", required=True, type=click.Choice(CHOICES),
              help="the known right answer, in generation terms (a = the pair's first generation)")
def gold_add(pair_id: int, answer: str) -> None:
    """Make a gold pair from an existing pair's two responses and a known answer.

    Example: prefloop gold add 12 --answer b
    """
    store = Store()
    gold_id = store.add_gold_pair(pair_id, answer)
    rate = store.get_setting("gold_rate")
    click.echo(f"Gold pair {gold_id} added (answer {answer}); gold_rate is {rate}"
               + ("" if rate else ": set it above 0 to mix gold pairs in"))


@gold_group.command("list")
def gold_list() -> None:
    """List gold pairs, their answers and how often annotators agreed with them.

    Example: prefloop gold list
    """
    rows = Store().list_gold_pairs()
    if not rows:
        click.echo("No gold pairs yet: see `prefloop gold add --help`.")
    for row in rows:
        prompt = " ".join(row["prompt"].split())[:60]
        click.echo(f"{row['id']:>6}  answer {row['gold_choice']:<8} {row['agreed']}/{row['judgments_count']} agreed  {prompt}")
