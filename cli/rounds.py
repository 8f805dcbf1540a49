"""Training commands: `prefloop train`, `prefloop rounds ...` and `prefloop export`.

Heavy imports (torch, TRL) happen inside the commands that need them, so `prefloop --help` stays
instant. Every refusal is a StoreError: one clear line, exit status 1.
"""

from __future__ import annotations

import json

import click

from prefloop.cli.options import dataclass_options
from prefloop.db.store import Store
from prefloop.errors import ConfigError, RoundError
from prefloop.train.config import RoundConfig
from prefloop.train.rounds import (
    DIED_MESSAGE,
    create_round,
    is_dead,
    promote_round,
    reject_round,
    round_dir,
    round_rows,
    run_round,
    start_round,
    wait_round,
)


def _store() -> Store:
    return Store()


# --------------------------------------------------------------------------------------------
# prefloop train
# --------------------------------------------------------------------------------------------
@click.command("train")
@dataclass_options(RoundConfig, rename={"learning_rate": "lr"})
@click.option("--config-json", default=None, help="any RoundConfig fields as JSON (options above win)")
@click.option("--wait/--no-wait", default=True, show_default=True, help="follow the round with a progress bar")
@click.option("--in-process", is_flag=True, help="train in this process instead of a child (debugging)")
@click.option("--create-only", is_flag=True, help="create the round and print its id (for accelerate launch)")
def train_command(config_json, wait, in_process, create_only, **options) -> None:
    """Start a training round on the active version: DPO, ORPO, KTO, SFT or SFT then DPO, with a LoRA adapter.

    The round trains in a child process (`python -m prefloop.train --round ID`); by default this command
    follows it with a progress bar. The gate (min_new_pairs setting) refuses a round with too few
    new rows for its method.

    Example: prefloop train --method dpo --lr 3e-4 --epochs 2
    """

    values = {}
    if config_json:
        try:
            values = json.loads(config_json)
        except json.JSONDecodeError as error:
            raise ConfigError(f"--config-json is not valid JSON: {error}") from error
        if not isinstance(values, dict):
            raise ConfigError('--config-json must be a JSON object, e.g. \'{"beta": 0.2}\'')
    values.update({k: v for k, v in options.items() if v is not None})
    config = RoundConfig.from_dict(values).validate()
    store = _store()
    if create_only:
        round_id = create_round(store, config)
        click.echo(round_id)
        return
    if in_process:
        round_id = create_round(store, config)
        click.echo(f"round {round_id}: training in this process")
        summary = run_round(store, round_id)
        _echo_result(store.round(round_id), summary.get("version"))
        return
    round_id = start_round(store, config)
    click.echo(f"round {round_id} started ({config.method}); log: {_log_path(round_id)}")
    if not wait:
        click.echo(f"follow it with: prefloop rounds show {round_id}")
        return
    final = follow_round(store, round_id)
    version = store.version(final["new_version_id"])["name"] if final["new_version_id"] else None
    _echo_result(final, version)
    if final["status"] == "failed":
        raise click.ClickException(f"round {round_id} failed: {final['error']}")


def follow_round(store: Store, round_id: int, timeout: float | None = None) -> dict:
    """Wait for a round with a tqdm bar fed from its stored progress."""
    from tqdm import tqdm

    with tqdm(total=100, desc=f"round {round_id}", unit="%", bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}]") as bar:

        def show(current: dict) -> None:
            bar.n = round(100 * (current["progress"] or 0.0), 1)
            bar.set_postfix_str(current["status"])
            bar.refresh()

        return wait_round(store, round_id, timeout=timeout, on_progress=show)


def _echo_result(current: dict, version: str | None) -> None:
    metrics = current.get("metrics") or {}
    if current["status"] == "failed":
        click.echo(f"round {current['id']} failed: {current['error']}")
        return
    accuracy = metrics.get("heldout_accuracy")
    shown = "n/a (no held-out judgments)" if accuracy is None else f"{accuracy:.3f}"
    unit = "pairs" if current["method"] in ("dpo", "orpo") else "rows"  # kto: answers; sft: demonstrations
    click.echo(f"round {current['id']} {current['status']}: version {version}, {current['dataset_size']} {unit}, "
               f"train loss {metrics.get('train_loss', float('nan')):.4f}, held-out accuracy {shown}")
    gate = metrics.get("gate") or {}
    if gate.get("verdict"):
        click.echo(f"gate: {gate['verdict']}")
    for name, guard in (gate.get("guards") or {}).items():
        bounds = f"[{guard.get('min')}, {guard.get('max')}]" if "min" in guard else f"<= {guard.get('max')}"
        click.echo(f"  {name:<17} {guard.get('value')}  {bounds}  {'ok' if guard.get('ok') else 'FAILED'}")


def _log_path(round_id: int) -> str:

    return str(round_dir(round_id) / "log.txt")


# --------------------------------------------------------------------------------------------
# prefloop rounds ...
# --------------------------------------------------------------------------------------------
@click.group("rounds")
def rounds_group() -> None:
    """List training rounds, inspect one, promote or reject its candidate version.

    Example: prefloop rounds list
    """


@rounds_group.command("list")
def rounds_list() -> None:
    """Every round: method, parent -> version, status, data size, loss, held-out accuracy.

    Example: prefloop rounds list
    """
    rows = round_rows(_store())
    if not rows:
        click.echo("no rounds yet: judge some pairs, then `prefloop train`")
        return
    columns = ("id", "method", "parent", "version", "status", "progress", "pairs", "train_loss", "heldout_acc", "outcome")
    table = [columns] + [tuple(str(r[c]) for c in columns) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@rounds_group.command("show")
@click.argument("round_id", type=int)
def rounds_show(round_id: int) -> None:
    """One round in full: config, data hash, metrics, gate, error, last logged values.

    Example: prefloop rounds show 3
    """

    store = _store()
    current = store.round(round_id)
    if current is None:
        raise RoundError(f"no round {round_id}")
    if is_dead(current):  # shown as the scheduler will record it; a read never writes
        current = {**current, "status": "failed", "error": DIED_MESSAGE}
    last: dict[str, float] = {}
    for row in store.round_metrics(round_id):
        last[row["name"]] = row["value"]
    shown = {**current, "last_logged": last, "folder": str(round_dir(round_id))}
    click.echo(json.dumps(shown, indent=2, default=str))


@rounds_group.command("promote")
@click.argument("round_id", type=int)
def rounds_promote(round_id: int) -> None:
    """Make a round's candidate version the active one (serves pairs from now on).

    Example: prefloop rounds promote 3
    """

    store = _store()
    done = promote_round(store, round_id)
    click.echo(f"round {round_id}: {store.version(done['new_version_id'])['name']} is now active")


@rounds_group.command("reject")
@click.argument("round_id", type=int)
def rounds_reject(round_id: int) -> None:
    """Reject a round's candidate version: it stays on disk and listed, but cannot be promoted.

    Example: prefloop rounds reject 3
    """

    store = _store()
    done = reject_round(store, round_id)
    click.echo(f"round {round_id}: {store.version(done['new_version_id'])['name']} rejected")


# --------------------------------------------------------------------------------------------
# prefloop export
# --------------------------------------------------------------------------------------------
