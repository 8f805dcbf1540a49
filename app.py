"""prefloop: the Gradio app (Annotate | Train | Evaluate | Demo) and the ``prefloop`` CLI.

    prefloop init                      # database, v0 from the bundled model, starter prompts
    prefloop serve --port 7860         # the app; `python app.py` does the same
    prefloop --help                    # every command, each with an example

This module only wires things: the work lives in annotate/, train/ and evaluate/. Heavy imports
(torch, gradio) happen inside commands so `prefloop --help` stays instant.
"""

from __future__ import annotations

import sys

import click

from annotate.store import StoreError


class PrefloopGroup(click.Group):
    """Turns every expected failure (StoreError and subclasses) into one clear line, exit 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except StoreError as error:
            raise click.ClickException(str(error)) from None


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

    for module_name in ("annotate.cli", "train.cli_models", "train.cli_rounds", "evaluate.cli"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        module.register(cli)


_register_commands()


# == serve and users (annotate/ui.py, annotate/auth.py) =====================================


if __name__ == "__main__":
    sys.exit(cli(["serve", *sys.argv[1:]]))
