"""Click options generated from a config dataclass, as TRL builds its CLI from dataclasses.

A field's default, type, choices and help are written once, on the dataclass; every command that
takes those settings reads them from there, so ``--help`` can never disagree with the code.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable

import click


def _click_type(field: dataclasses.Field, hints: dict[str, Any]) -> Any:
    choices = field.metadata.get("choices")
    if choices:
        return click.Choice(list(choices))
    hint = hints[field.name]
    kinds = [k for k in typing.get_args(hint) if k is not type(None)] or [hint]
    return kinds[0] if kinds[0] in (int, float, str) else str


def dataclass_options(cls: type, *, rename: dict[str, str] | None = None,
                      skip: tuple[str, ...] = ()) -> Callable:
    """Decorate a command with one option per field of ``cls`` (default None = keep the field's).

    ``rename`` gives a field a shorter flag (``{"learning_rate": "lr"}`` makes ``--lr``).
    Booleans become ``--name/--no-name``. The command receives the values by field name.
    """
    rename = rename or {}
    hints = typing.get_type_hints(cls)

    def decorate(command: Callable) -> Callable:
        for field in reversed(dataclasses.fields(cls)):
            if field.name in skip:
                continue
            flag = (rename.get(field.name) or field.name).replace("_", "-")
            help_text = field.metadata.get("help", "")
            default = field.default if field.default is not dataclasses.MISSING else None
            help_text = f"{help_text} [default: {default}]" if help_text else f"[default: {default}]"
            if hints[field.name] is bool:
                option = click.option(f"--{flag}/--no-{flag}", field.name, default=None, help=help_text)
            else:
                option = click.option(f"--{flag}", field.name, type=_click_type(field, hints),
                                      default=None, help=help_text)
            command = option(command)
        return command

    return decorate
