"""The ``prefloop`` command: one click group, one module per noun.

    prefloop init && prefloop serve     # first run
    prefloop --help                     # every command, each with an example

Each module here is a thin shell over functions in the layers below (a rule never lives only in a
command). Every expected failure is a ``PrefloopError``, printed as one line with exit 1.
"""

from __future__ import annotations

import click

from prefloop.app import serve
from prefloop.cli import (
    annotators,
    evaluate,
    gold,
    guidelines,
    init,
    models,
    prompts,
    rounds,
    settings,
    stats,
    transfer,
    users,
)
from prefloop.errors import PrefloopError
from prefloop.safetext import terminal_safe, terminal_safe_stdout


class PrefloopGroup(click.Group):
    """Turns every expected failure (PrefloopError and subclasses) into one clear line, exit 1.

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


for _command in (
    init.init_command,
    serve,
    users.users,
    prompts.prompts_group,
    stats.stats_command,
    settings.settings_group,
    gold.gold_group,
    guidelines.guidelines_group,
    models.models_group,
    models.sample,
    rounds.train_command,
    rounds.rounds_group,
    evaluate.eval_command,
    evaluate.battles_group,
    evaluate.simulate_command,
    annotators.annotators_command,
    transfer.backup_command,
    transfer.export_command,
    transfer.import_command,
):
    cli.add_command(_command)
