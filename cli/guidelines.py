"""``prefloop guidelines``: write and read the annotation guidelines (Markdown, versioned)."""

from __future__ import annotations

from pathlib import Path

import click

from prefloop.annotate import guidelines
from prefloop.db.store import Store
from prefloop.safetext import terminal_safe


@click.group("guidelines")
def guidelines_group() -> None:
    """Annotation guidelines shown on the Annotate tab; each vote records the version in force.

    Example: prefloop guidelines set guidelines.md
    """


@guidelines_group.command("set")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--author", help="Maintainer name recorded with this version.")
def guidelines_set(file: Path, author: str | None) -> None:
    """Publish FILE (Markdown) as the new version of the guidelines.

    Example: prefloop guidelines set docs/guidelines.md --author admin
    """
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise click.ClickException(f"cannot read {file}: {error}") from None
    version = guidelines.publish(Store(), text, author)
    click.echo(f"guidelines version {version} published; new votes record it")


@guidelines_group.command("show")
@click.option("--history", is_flag=True, help="List every version instead of the current text.")
def guidelines_show(history: bool) -> None:
    """Print the guidelines in force (or, with --history, every version).

    Example: prefloop guidelines show --history
    """
    store = Store()
    if history:
        for row in store.list_guidelines():
            click.echo(f"v{row['id']}  {row['created_at'][:19]}  {terminal_safe(row['author'] or '-')}  "
                       f"{row['chars']} chars")
        return
    current = store.current_guidelines()
    if current is None:
        click.echo("No guidelines yet: prefloop guidelines set FILE")
        return
    click.echo(f"# guidelines v{current['id']} ({current['created_at'][:19]})")
    click.echo(terminal_safe(current["text"]))
