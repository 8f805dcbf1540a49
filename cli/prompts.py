"""``prefloop prompts``: import and list the prompts that model versions answer."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from prefloop.annotate.prompts import DEFAULT_HELDOUT_FRACTION, import_prompts
from prefloop.db.store import SPLITS, Store


@click.group("prompts")
def prompts_group() -> None:
    """Import and list the prompts that model versions answer.

    Example: prefloop prompts import my_prompts.jsonl --heldout-fraction 0.2
    """


@prompts_group.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--source", help="Label stored with each prompt (default: the file name).")
@click.option("--heldout-fraction", type=float, default=DEFAULT_HELDOUT_FRACTION, show_default=True, help="Share of prompts without a split column that are held out, chosen by content hash (deterministic).")
@click.option("--split", type=click.Choice(SPLITS), help="Put every prompt in this split (overrides the file's split column).")
def prompts_import(file: Path, source: str | None, heldout_fraction: float, split: str | None) -> None:
    """Import prompts from JSONL, JSON, CSV, Parquet or a `datasets` save_to_disk folder.

    Each record needs a `prompt` (text) or `messages` (chat: a list of {role, content});
    optional `kind` and `split` (train/heldout; test/validation count as held out) are kept.
    Everything is checked first: one bad line imports nothing and names the line.
    Prompts already stored (same content hash) are skipped and counted.

    Example: prefloop prompts import questions.csv --source support-tickets --split heldout
    """
    from tqdm import tqdm

    def progress(records):
        return tqdm(records, desc=f"reading {file.name}", unit=" prompts", leave=False, file=sys.stderr)

    store = Store()
    report = import_prompts(
        store, file, source=source, heldout_fraction=heldout_fraction, split=split,
        progress=progress,
    )
    click.echo(f"Imported {file.name}: {report.summary()}.")


@prompts_group.command("list")
@click.option("--split", type=click.Choice(SPLITS), help="Only this split.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many to show.")
def prompts_list(split: str | None, limit: int) -> None:
    """List stored prompts (id, split, kind, the start of the text).

    Example: prefloop prompts list --split heldout --limit 50
    """
    store = Store()
    rows = store.list_prompts(split=split, limit=limit)
    total = store.count_prompts(split)
    for row in rows:
        text = " ".join(row["text"].split())
        text = text if len(text) <= 70 else text[:69] + "…"
        click.echo(f"{row['id']:>6}  {row['split']:<7}  {(row['kind'] or '-'):<14}  {text}")
    click.echo(f"({len(rows)} of {total} prompts{' in ' + split if split else ''})")
