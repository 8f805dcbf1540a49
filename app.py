"""prefloop's Gradio app (Annotate | Train | Evaluate | Demo) and ``serve``, which launches it.

    python app.py --port 7860          # the same as `prefloop serve --port 7860`

This module only lays out tabs and starts the server beside the scheduler (queue filler,
auto-training, reaping): handlers live in ui/, the work below them. Gradio is imported inside
functions: it takes ~2-4 s to import, and `prefloop --help` (which registers ``serve``) must not pay it.
"""

from __future__ import annotations

from pathlib import Path

import click

from prefloop.annotate import auth
from prefloop.annotate.sampler import QueueFiller
from prefloop.db.store import Store
from prefloop.engine.models import share_cpu_cores
from prefloop.service.scheduler import Scheduler
from prefloop.service.setup import describe_initialisation, ensure_initialised
from prefloop.ui import annotate as ui
from prefloop.ui import evaluate as evaluate_tab
from prefloop.ui import server
from prefloop.ui import train as train_tab

OPTIONAL_TABS = (  # (label, builder, role); each tab re-checks roles in its own handlers
    ("Train", train_tab.build_train_tab, "maintainer"),
    ("Evaluate", evaluate_tab.build_evaluate_tab, "maintainer"),
    ("Demo", evaluate_tab.build_demo_tab, "annotator"),
)


def build_app(store):
    """The whole app: a sign-in page, then tabs by role. Nothing here launches a server.

    Launch it with ``prefloop.ui.annotate.launch_options(store)``: they serve sign-in and
    sign-out (the session is an HttpOnly cookie) and switch off Gradio's run history, uploads
    and deep links (``prefloop.ui.server``). Every handler reads the session from the cookie of
    the request that carried its event; no component holds a token.

    Example: build_app(store).launch(**prefloop.ui.annotate.launch_options(store))
    """
    import gradio as gr

    # no telemetry: annotators' work stays on this machine, and offline deployments cannot reach it
    with gr.Blocks(title="prefloop", analytics_enabled=False) as demo:
        signin_column = ui.build_sign_in()
        with gr.Column(visible=False, elem_id="pf-main") as main_column:
            with gr.Row(equal_height=True):
                gr.Markdown("### prefloop: which response is better?")
                signout_button = gr.Button(
                    "Sign out", size="sm", variant="secondary", scale=0, min_width=100,
                    elem_id="pf-signout",
                )
            with gr.Tabs():
                with gr.Tab("Annotate", id="annotate"):
                    annotate = ui.build_annotate_tab(store)
                tabs = {}
                for label, builder, _ in OPTIONAL_TABS:
                    with gr.Tab(label, id=label.lower(), visible=False) as tabs[label.lower()]:
                        builder(store)

        shell = [signin_column, main_column, *tabs.values()]

        def restore(token) -> list:
            """The page for whoever the cookie names (the sign-in form when nobody)."""
            user = auth.current_user(store, token)
            show = ui.visible_tabs(user)
            return [
                gr.Column(visible=user is None),
                gr.Column(visible=user is not None),
                *(gr.Tab(visible=show[key]) for key in tabs),
            ]

        def load_if_signed_in(token):
            if auth.current_user(store, token) is None:
                return [gr.update()] * len(annotate["outputs"])
            return annotate["load"](token)

        # sign-in and sign-out are HTTP routes (ui/server.py): the form's script posts there and
        # reloads; this button's script does the same, with no Python event
        signout_button.click(None, js=server.SIGN_OUT_JS)
        demo.load(server.with_session(restore), None, shell).then(
            server.with_session(load_if_signed_in), None, annotate["outputs"]
        ).then(server.with_session(annotate["guidelines"]), None, annotate["guidelines_outputs"])
    return demo


@click.command("serve")
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

    store = Store()
    for line in describe_initialisation(ensure_initialised(store, echo=click.echo)):
        click.echo(line)
    scheduler = Scheduler(store)  # reaping and auto-training, off the vote path
    scheduler.start()
    auth.warm_up()  # the timing of an unknown name matches a wrong password from the first try
    filler = None
    if not no_sampler:

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

    server.prepare_environment(Path(store.path).parent, trusted_proxies)
    try:
        build_app(store).launch(
            server_name=host, server_port=port, show_error=False, **ui.launch_options(store)
        )
    except OSError:
        raise server.port_error(host, port) from None
    finally:
        scheduler.stop()
        if filler is not None:
            filler.stop()


if __name__ == "__main__":
    serve()
