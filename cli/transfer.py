"""``prefloop backup``, ``export`` and ``import``: moving the home's data in and out."""

from __future__ import annotations

from pathlib import Path

import click

from prefloop.annotate import transfer
from prefloop.annotate.transfer import export_judgments
from prefloop.db.store import Store
from prefloop.db.vocab import SPLITS
from prefloop.train.dataset import export_rows


@click.command("backup")
@click.argument("out_file", type=click.Path(path_type=Path))
def backup_command(out_file: Path) -> None:
    """Copy the database to OUT_FILE while the app keeps running, and check the copy.

    Model files are not included: back up $PREFLOOP_HOME/models separately.

    Example: prefloop backup backups/prefloop-2024-06-01.db
    """
    result = transfer.backup_database(Store(), out_file)
    click.echo(
        f"Backed up to {result['path']} ({result['bytes']:,} bytes, integrity {result['integrity']}): "
        f"{result['prompts']} prompts, {result['judgments']} judgments, "
        f"{result['versions']} versions."
    )


@click.command("export")
@click.argument("out", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["jsonl", "parquet", "hf"]), default="jsonl", show_default=True)
@click.option("--split", type=click.Choice(SPLITS), default="train", show_default=True)
@click.option("--plain", is_flag=True, help="plain strings instead of chat messages")
@click.option("--what", type=click.Choice(["preferences", "judgments"]), default="preferences",
              show_default=True, help="preferences: training rows; judgments: every vote with full "
              "lineage, JSONL, read back by `prefloop import`")
def export_command(out: str, fmt: str, split: str, plain: bool, what: str) -> None:
    """Export preference rows (prompt / chosen / rejected + lineage) for training elsewhere.

    `hf` writes a `datasets` folder (load it with `datasets.load_from_disk`). With
    `--what judgments`, writes every judgment with its full lineage (a backup of the people's
    work that `prefloop import` reads back without loss; --format/--split/--plain do not apply).

    Example: prefloop export --format parquet prefs.parquet --split train
    """
    if what == "judgments":

        if fmt != "jsonl":
            raise click.UsageError("--what judgments writes JSONL only; drop --format")
        path, count = export_judgments(Store(), out)
        click.echo(f"wrote {count} judgments with lineage to {path}")
        return

    path, count = export_rows(Store(), out, fmt=fmt, split=split, conversational=not plain)
    click.echo(f"wrote {count} {split} rows to {path}")


@click.command("import")
@click.argument("file", type=click.Path(path_type=Path))
def import_command(file: Path) -> None:
    """Read a judgments export (`prefloop export OUT --what judgments`) into this home.

    Every line is checked first: one bad line imports nothing and names the line. Importing the
    same file twice adds nothing. Unknown annotators become disabled accounts without a password;
    unknown model versions become lineage-only rows (status imported, no weights, never active).

    Example: prefloop import backups/judgments.jsonl
    """
    counts = transfer.import_judgments(Store(), file)
    click.echo(
        f"Imported {file.name}: {counts['judgments']} judgments added, "
        f"{counts['already_present']} already present; new: {counts['prompts']} prompts, "
        f"{counts['generations']} generations, {counts['pairs']} pairs, "
        f"{counts['versions']} versions (lineage only), {counts['annotators']} annotators (disabled)."
    )
