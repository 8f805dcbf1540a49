"""prefloop: the Gradio app (Annotate | Train | Evaluate | Demo) and the ``prefloop`` CLI.

    prefloop init                      # database, v0 from the bundled model, starter prompts
    prefloop serve --port 7860         # the app; `python app.py` does the same
    prefloop --help                    # every command, each with an example

This module only wires things: the work lives in annotate/, train/ and evaluate/. Heavy imports
(torch, gradio) happen inside commands so `prefloop --help` stays instant.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from prefloop.errors import PrefloopError
from prefloop.safetext import terminal_safe, terminal_safe_stdout


class PrefloopGroup(click.Group):
    """Turns every expected failure (StoreError and subclasses) into one clear line, exit 1.

    Output and messages can quote stored text (prompts, names): control characters in them are
    printed as visible escapes, never sent raw to the terminal (prefloop.safetext).
    """

    def invoke(self, ctx: click.Context):
        try:
            with terminal_safe_stdout():
                return super().invoke(ctx)
        except PrefloopError as error:
            raise click.ClickException(terminal_safe(str(error))) from None


@click.group(cls=PrefloopGroup)
@click.version_option(package_name="prefloop")
def cli() -> None:
    """Close the human-feedback loop on a language model.

    Data lives in $PREFLOOP_HOME (default ./prefloop-data).

    Example: prefloop init && prefloop serve
    """


def _register_commands() -> None:
    """Each package owns its commands; app.py only gathers them into one group."""
    import importlib

    for module_name in ("prefloop.cli.data", "prefloop.cli.models", "prefloop.cli.rounds", "prefloop.cli.evaluate"):
        importlib.import_module(module_name).register(cli)


_register_commands()


# == serve and users (annotate/ui.py, annotate/auth.py) =====================================
OPTIONAL_TABS = (  # (label, module, builder); each owner re-checks roles in its own handlers
    ("Train", "prefloop.ui.train", "build_train_tab", "maintainer"),
    ("Evaluate", "prefloop.ui.evaluate", "build_evaluate_tab", "maintainer"),
    ("Demo", "prefloop.ui.evaluate", "build_demo_tab", "annotator"),
)


def _build_tab(store, token_state, module_name: str, builder_name: str) -> None:
    """Each package builds its own tab; the app only places it."""
    import importlib

    getattr(importlib.import_module(module_name), builder_name)(store, token_state)


def build_app(store):
    """The whole app: a sign-in page, then tabs by role. Nothing here launches a server.

    Launch it with ``prefloop.ui.annotate.launch_options()``: they switch off Gradio's run
    history, uploads and deep links (``prefloop.ui.server``).

    Example: build_app(Store()).launch(**prefloop.ui.annotate.launch_options())
    """
    import gradio as gr
    from prefloop.annotate import auth
    from prefloop.ui import annotate as ui

    # no telemetry: annotators' work stays on this machine, and offline deployments cannot reach it
    with gr.Blocks(title="prefloop", analytics_enabled=False) as demo:
        # BrowserState: a reload or a server restart keeps you signed in until the session expires
        # (the token is encrypted in localStorage with a key kept beside the database)
        token_state = gr.BrowserState(None, storage_key="prefloop-session",
                                      secret=auth.browser_secret(Path(store.path).parent))
        signin_column, name, password, signin_button, signin_message = ui.build_sign_in(store)
        with gr.Column(visible=False, elem_id="pf-main") as main_column:
            with gr.Row(equal_height=True):
                gr.Markdown("### prefloop: which response is better?")
                signout_button = gr.Button(
                    "Sign out", size="sm", variant="secondary", scale=0, min_width=100,
                    elem_id="pf-signout",
                )
            with gr.Tabs():
                with gr.Tab("Annotate", id="annotate"):
                    annotate = ui.build_annotate_tab(store, token_state)
                tabs = {}
                for label, module_name, builder_name, _ in OPTIONAL_TABS:
                    with gr.Tab(label, id=label.lower(), visible=False) as tabs[label.lower()]:
                        _build_tab(store, token_state, module_name, builder_name)

        shell = [signin_column, main_column, *tabs.values()]

        def shell_for(user) -> list:
            show = ui.visible_tabs(user)
            return [
                gr.Column(visible=user is None),
                gr.Column(visible=user is not None),
                *(gr.Tab(visible=show[key]) for key in tabs),
            ]

        def restore(token):
            return shell_for(auth.current_user(store, token))

        def do_sign_in(name_value, password_value, request: gr.Request):
            client = request.client.host if request is not None and request.client else ""
            token, message = ui.sign_in(store, name_value, password_value, client)
            user = auth.current_user(store, token)
            return [token if token else gr.update(), "", message, *shell_for(user)]

        # app.py postpones annotations and imports gradio lazily: give Gradio the real class
        do_sign_in.__annotations__["request"] = gr.Request

        def do_sign_out(token):
            _, message = ui.sign_out(store, token)
            return [None, message, *shell_for(None)]

        def load_if_signed_in(token):
            if auth.current_user(store, token) is None:
                return [gr.update()] * len(annotate["outputs"])
            return annotate["load"](token)

        sign_in_outputs = [token_state, password, signin_message, *shell]
        # stable api names: bench/http_load.py signs in over HTTP as "/sign_in"
        for trigger, api_name in ((signin_button.click, "sign_in"), (password.submit, "sign_in_enter")):
            trigger(do_sign_in, [name, password], sign_in_outputs, api_name=api_name).then(
                load_if_signed_in, [token_state], annotate["outputs"]
            )
        # sign-out also deletes the browser's copy: Gradio writes BrowserState only for truthy values
        signout_button.click(do_sign_out, [token_state], [token_state, signin_message, *shell]).then(
            None, js=f"() => {{ localStorage.removeItem({token_state.storage_key!r}); }}"
        )
        demo.load(restore, [token_state], shell).then(
            load_if_signed_in, [token_state], annotate["outputs"]
        )
    return demo


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=7860, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--no-sampler", is_flag=True, help="Do not start the background queue filler (tests, demos)."
)
@click.option(
    "--trusted-proxy", "trusted_proxies", multiple=True, metavar="ADDRESS",
    help="A reverse proxy (IP or CIDR) whose X-Forwarded-For is believed; repeatable. "
         "Default: none, the peer address counts.",
)
def serve(host: str, port: int, no_sampler: bool, trusted_proxies: tuple[str, ...]) -> None:
    """Serve the app: sign in, annotate, and (maintainers) train and evaluate.

    A background sampler keeps a queue of ready pairs from the active version, so annotators
    never wait for generation. Use --host 0.0.0.0 to serve other machines on your network.

    Example: prefloop serve --host 127.0.0.1 --port 7860
    """
    from prefloop.cli.data import describe_initialisation, ensure_initialised
    from prefloop.db.store import Store
    from prefloop.ui import annotate as ui

    store = Store()
    for line in describe_initialisation(ensure_initialised(store, echo=click.echo)):
        click.echo(line)
    filler = None
    if not no_sampler:
        from prefloop.annotate.sampler import QueueFiller
        from prefloop.engine.models import share_cpu_cores

        share_cpu_cores()  # a training round's child process may run beside the sampler
        filler = QueueFiller(store)
        filler.start()
    if store.count_maintainers() == 0:
        click.echo("note: no maintainer yet; add one: prefloop users add NAME --role maintainer")
    # Gradio rebuilds a pandas summary of its last 10,000 events after every event, for a
    # monitoring page we never enable: a quarter of the server's CPU under 32 annotators
    # (py-spy, bench/serving.py). Read when the Blocks are built, so set it first.
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(10**9))
    from prefloop.ui import server

    server.prepare_environment(Path(store.path).parent, trusted_proxies)
    try:
        build_app(store).launch(
            server_name=host, server_port=port, show_error=False, **ui.launch_options()
        )
    except OSError:
        raise server.port_error(host, port) from None
    finally:
        if filler is not None:
            filler.stop()


@cli.group()
def users() -> None:
    """Accounts that can sign in: annotators and maintainers.

    Example: prefloop users add alice --role annotator
    """


@users.command("add")
@click.argument("name")
@click.option(
    "--role", type=click.Choice(["annotator", "maintainer"]), default="annotator",
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
    from prefloop.annotate import auth
    from prefloop.db.store import Store

    user_id = auth.create_user(Store(), name, _read_password(password_env), role)
    click.echo(f"added {role} {name.strip()} (id {user_id})")


@users.command("password")
@click.argument("name")
@click.option("--password-env", metavar="VAR", help="Read the new password from this environment variable.")
def users_password(name: str, password_env: str | None) -> None:
    """Set a new password for a user; their open sessions end.

    Example: prefloop users password admin
    """
    from prefloop.annotate import auth
    from prefloop.db.store import Store

    auth.change_password(Store(), name, _read_password(password_env))
    click.echo(f"password changed for {name.strip()}; their sessions were signed out")


def _read_password(password_env: str | None) -> str:
    """From the named environment variable, or asked twice (hidden); never echoed or logged."""
    import os

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
    from prefloop.db.store import Store

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
    from prefloop.db.store import Store

    Store().set_annotator_active(name, False)
    click.echo(f"disabled {name}")


if __name__ == "__main__":
    sys.exit(cli(["serve", *sys.argv[1:]]))
