"""``prefloop settings``: show or change project settings (checked below, in service/db)."""

from __future__ import annotations

import json

import click

from prefloop.db.store import Store
from prefloop.service.settings import parse_setting


@click.group("settings")
def settings_group() -> None:
    """Show or change project settings (queue size, votes per pair, gates, sampling).

    Example: prefloop settings set judgments_per_pair 3
    """


@settings_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def settings_list(as_json: bool) -> None:
    """Show every setting and its current value.

    Example: prefloop settings list --json
    """
    values = Store().all_settings()
    if as_json:
        click.echo(json.dumps(values, indent=2, sort_keys=True))
        return
    for key, value in values.items():
        click.echo(f"{key:<24} {json.dumps(value)}")


@settings_group.command("set")
@click.argument("key")
@click.argument("value")
def settings_set(key: str, value: str) -> None:
    """Set KEY to VALUE (parsed as JSON; plain words are strings). sampling merges fields.

    Example: prefloop settings set sampling '{"temperature": 0.7}'
    """
    store = Store()
    parsed = parse_setting(store, key, value)
    store.set_setting(key, parsed)
    click.echo(f"{key} = {json.dumps(store.get_setting(key))}")
