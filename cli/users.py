"""``prefloop users``: accounts that can sign in (annotators and maintainers)."""

from __future__ import annotations

import os
import sys

import click

from prefloop.annotate import auth
from prefloop.db.store import Store
from prefloop.db.vocab import ROLES


@click.group("users")
def users() -> None:
    """Accounts that can sign in: annotators and maintainers.

    Example: prefloop users add alice --role annotator
    """


@users.command("add")
@click.argument("name")
@click.option(
    "--role", type=click.Choice(ROLES), default="annotator",
    show_default=True, help="Maintainers can also train, evaluate and promote.",
)
@click.option(
    "--password-env", metavar="VAR",
    help="Read the password from this environment variable (for scripts); else you are asked.",
)
def users_add(name: str, role: str, password_env: str | None) -> None:
    """Add a user. The password is asked twice (hidden) or read from --password-env.

    Example: PF_PW=... prefloop users add alice --role annotator --password-env PF_PW
    """

    user_id = auth.create_user(Store(), name, _read_password(password_env), role)
    click.echo(f"added {role} {name.strip()} (id {user_id})")


@users.command("password")
@click.argument("name")
@click.option("--password-env", metavar="VAR", help="Read the new password from this environment variable.")
def users_password(name: str, password_env: str | None) -> None:
    """Set a new password for a user; their open sessions end.

    Example: prefloop users password admin
    """

    auth.change_password(Store(), name, _read_password(password_env))
    click.echo(f"password changed for {name.strip()}; their sessions were signed out")


def _read_password(password_env: str | None) -> str:
    """From the named environment variable, or asked twice (hidden); never echoed or logged."""

    if password_env:
        password = os.environ.get(password_env)
        if not password:
            raise click.ClickException(f"environment variable {password_env} is not set or empty")
        return password
    if sys.stdin.isatty():
        return click.prompt("Password", hide_input=True, confirmation_prompt=True)
    raise click.ClickException("no terminal to ask for a password: use --password-env VAR")


@users.command("list")
def users_list() -> None:
    """List users with role, status and last sign-in.

    Example: prefloop users list
    """

    rows = Store().list_annotators()
    if not rows:
        click.echo("no users yet: prefloop users add NAME --role maintainer")
        return
    click.echo(f"{'name':<24} {'role':<11} {'status':<9} last sign-in")
    for row in rows:
        status = "active" if row["active"] else "disabled"
        click.echo(f"{row['name']:<24} {row['role']:<11} {status:<9} {row['last_login_at'] or '-'}")


@users.command("disable")
@click.argument("name")
def users_disable(name: str) -> None:
    """Disable a user: their sessions end now and they cannot sign in; their votes are kept.

    Example: prefloop users disable alice
    """

    Store().set_annotator_active(name, False)
    click.echo(f"disabled {name}")
