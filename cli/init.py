"""``prefloop init``: database, v0 from the bundled model, starter prompts, a maintainer."""

from __future__ import annotations

import os
import sys

import click

from prefloop.annotate import auth
from prefloop.db.store import Store
from prefloop.errors import InitError
from prefloop.service.setup import (
    DEFAULT_ADMIN,
    describe_initialisation,
    ensure_initialised,
    maintainer_names,
)


def _resolve_admin_password(store: Store, admin_name: str, password_env: str | None) -> str | None:
    """Check the account can be created before any slow work; None means 'generate one'."""

    if maintainer_names(store):
        return None
    auth.validate_name(admin_name)
    if store.annotator_by_name(admin_name):
        raise InitError(
            f"user {admin_name!r} already exists but is not a maintainer; "
            "pick another name with --admin"
        )
    if password_env:
        password = os.environ.get(password_env)
        if not password:
            raise InitError(f"environment variable {password_env} is not set or empty")
    elif _interactive():
        password = click.prompt(
            f"Password for maintainer {admin_name!r}", hide_input=True, confirmation_prompt=True
        )
    else:
        return None
    if len(password) < auth.MIN_PASSWORD_LENGTH:
        raise InitError(f"passwords need at least {auth.MIN_PASSWORD_LENGTH} characters")
    return password


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


@click.command("init")
@click.option("--base-model", metavar="ID_OR_PATH", help="HF hub id or local checkpoint folder for v0 (default: the bundled SmolLM2-135M-Instruct GGUF).")
@click.option("--admin", "admin_name", default=DEFAULT_ADMIN, show_default=True, help="Name of the first maintainer.")
@click.option("--admin-password-env", metavar="VAR", help="Read the maintainer's password from this environment variable (default: ask, or generate one when not interactive).")
@click.option("--no-starter", is_flag=True, help="Do not import the bundled starter prompts.")
def init_command(base_model: str | None, admin_name: str, admin_password_env: str | None, no_starter: bool) -> None:
    """Create the database, model version v0, the starter prompts and the first maintainer.

    Running it again reports what already exists and changes nothing.

    Example: PREFLOOP_PW=s3cret-pass prefloop init --admin alice --admin-password-env PREFLOOP_PW
    """
    store = Store()
    password = _resolve_admin_password(store, admin_name, admin_password_env)
    done = ensure_initialised(
        store,
        base_model,
        admin_name=admin_name,
        admin_password=password,
        starter=not no_starter,
        echo=click.echo,
    )
    for line in describe_initialisation(done):
        click.echo(line)
    click.echo(f"Data folder: {store.path.parent}")
