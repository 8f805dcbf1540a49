"""Training commands: `prefloop train`, `prefloop rounds ...` and `prefloop export`.

Heavy imports (torch, TRL) happen inside the commands that need them, so `prefloop --help` stays
instant. Every refusal is a StoreError: one clear line, exit status 1.
"""

from __future__ import annotations

import json

import click
from prefloop.db.store import Store
from prefloop.errors import ConfigError, RoundError


def _store() -> Store:
    return Store()


# --------------------------------------------------------------------------------------------
# prefloop train
# --------------------------------------------------------------------------------------------
@click.command("train")
@click.option("--method", type=click.Choice(["dpo", "orpo"]), default="dpo", show_default=True, help="preference loss")
@click.option("--lr", "learning_rate", type=float, default=None, help="learning rate (default 3e-4)")
@click.option("--epochs", type=float, default=None, help="passes over the round's rows (default 2)")
@click.option("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
@click.option("--beta", type=float, default=None, help="DPO KL strength / ORPO odds-ratio weight (default 0.1)")
@click.option("--lora-rank", type=int, default=None, help="LoRA rank (default 16)")
@click.option("--lora-alpha", type=int, default=None, help="LoRA alpha (default 32)")
@click.option("--batch-size", type=int, default=None, help="pairs per step (default 4)")
@click.option("--max-length", type=int, default=None, help="tokens per prompt+response (default 512)")
@click.option("--nll-weight", type=float, default=None, help="DPO: weight of an added NLL loss (default 0)")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default=None,
              help="auto (default): bf16 where the hardware computes it natively, else fp32")
@click.option("--min-new-pairs", type=int, default=None, help="override the readiness gate for this round")
@click.option("--all-judgments", is_flag=True, help="train on every train judgment, not only new ones")
@click.option("--config-json", default=None, help="any RoundConfig fields as JSON (options above win)")
@click.option("--wait/--no-wait", default=True, show_default=True, help="follow the round with a progress bar")
@click.option("--in-process", is_flag=True, help="train in this process instead of a child (debugging)")
@click.option("--create-only", is_flag=True, help="create the round and print its id (for accelerate launch)")
def train_command(config_json, wait, in_process, create_only, **options) -> None:
    """Start a training round on the active version: DPO or ORPO with a LoRA adapter.

    The round trains in a child process (`python -m prefloop.train --round ID`); by default this command
    follows it with a progress bar. The gate (min_new_pairs setting) refuses a round with too few
    new preference pairs.

    Example: prefloop train --method dpo --lr 3e-4 --epochs 2
    """
    from prefloop.train.config import RoundConfig
    from prefloop.train.rounds import create_round, run_round, start_round

    values = {}
    if config_json:
        try:
            values = json.loads(config_json)
        except json.JSONDecodeError as error:
            raise ConfigError(f"--config-json is not valid JSON: {error}") from error
        if not isinstance(values, dict):
            raise ConfigError('--config-json must be a JSON object, e.g. \'{"beta": 0.2}\'')
    values.update({k: v for k, v in options.items() if v is not None and v is not False})
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
    from prefloop.train.rounds import wait_round
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
    click.echo(f"round {current['id']} {current['status']}: version {version}, {current['dataset_size']} pairs, "
               f"train loss {metrics.get('train_loss', float('nan')):.4f}, held-out accuracy {shown}")
    gate = metrics.get("gate") or {}
    if gate.get("verdict"):
        click.echo(f"gate: {gate['verdict']}")
    for name, guard in (gate.get("guards") or {}).items():
        bounds = f"[{guard.get('min')}, {guard.get('max')}]" if "min" in guard else f"<= {guard.get('max')}"
        click.echo(f"  {name:<17} {guard.get('value')}  {bounds}  {'ok' if guard.get('ok') else 'FAILED'}")


def _log_path(round_id: int) -> str:
    from prefloop.train.rounds import round_dir

    return str(round_dir(round_id) / "log.txt")


# --------------------------------------------------------------------------------------------
# prefloop rounds ...
# --------------------------------------------------------------------------------------------
@click.group("rounds")
def rounds_group() -> None:
    """List training rounds, inspect one, promote or reject its candidate version.

    Example: prefloop rounds list
    """


def round_rows(store: Store) -> list[dict]:
    """One summary dict per round (after reaping dead children): used by the CLI and the UI."""
    from prefloop.train.rounds import reap_dead_rounds

    reap_dead_rounds(store)
    names = {v["id"]: v["name"] for v in store.list_versions()}
    out = []
    for r in store.list_rounds():
        metrics = r["metrics"] or {}
        config = r["config"] or {}
        out.append(
            {
                "id": r["id"],
                "method": r["method"],
                "parent": names.get(r["parent_version_id"], "-"),
                "version": names.get(r["new_version_id"], "-"),
                "status": r["status"],
                "progress": f"{100 * (r['progress'] or 0):.0f}%",
                "pairs": r["dataset_size"] if r["dataset_size"] is not None else "-",
                "lr": config.get("learning_rate"),
                "beta": config.get("beta"),
                "epochs": config.get("epochs"),
                "lora_rank": config.get("lora_rank"),
                "train_loss": _fmt(metrics.get("train_loss")),
                "heldout_acc": _fmt(metrics.get("heldout_accuracy")),
                "outcome": r["error"] or (metrics.get("gate") or {}).get("verdict") or "",
                "created": (r["created_at"] or "")[:19].replace("T", " "),
            }
        )
    return out


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


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
    from prefloop.train.rounds import reap_dead_rounds, round_dir

    store = _store()
    reap_dead_rounds(store)
    current = store.round(round_id)
    if current is None:
        raise RoundError(f"no round {round_id}")
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
    from prefloop.train.rounds import promote_round

    store = _store()
    done = promote_round(store, round_id)
    click.echo(f"round {round_id}: {store.version(done['new_version_id'])['name']} is now active")


@rounds_group.command("reject")
@click.argument("round_id", type=int)
def rounds_reject(round_id: int) -> None:
    """Reject a round's candidate version: it stays on disk and listed, but cannot be promoted.

    Example: prefloop rounds reject 3
    """
    from prefloop.train.rounds import reject_round

    store = _store()
    done = reject_round(store, round_id)
    click.echo(f"round {round_id}: {store.version(done['new_version_id'])['name']} rejected")


# --------------------------------------------------------------------------------------------
# prefloop export
# --------------------------------------------------------------------------------------------
@click.command("export")
@click.argument("out", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["jsonl", "parquet", "hf"]), default="jsonl", show_default=True)
@click.option("--split", type=click.Choice(["train", "heldout"]), default="train", show_default=True)
@click.option("--plain", is_flag=True, help="plain strings instead of chat messages")
@click.option("--what", type=click.Choice(["preferences", "judgments"]), default="preferences",
              show_default=True, help="preferences: training rows; judgments: every vote with full "
              "lineage, JSONL, read back by `prefloop import`")
def export_command(out: str, fmt: str, split: str, plain: bool, what: str) -> None:
    """Export preference rows (prompt / chosen / rejected + lineage) for training elsewhere.

    `hf` writes a `datasets` folder (load it with `datasets.load_from_disk`). With
    `--what judgments`, writes every judgment with its full lineage (a backup of the people's
    work that `prefloop import` reads back without loss; --format/--split/--plain do not apply).

    Example: prefloop export --format parquet prefs.parquet --split train
    """
    if what == "judgments":
        from prefloop.annotate.transfer import export_judgments

        if fmt != "jsonl":
            raise click.UsageError("--what judgments writes JSONL only; drop --format")
        path, count = export_judgments(_store(), out)
        click.echo(f"wrote {count} judgments with lineage to {path}")
        return
    from prefloop.train.dataset import export_rows

    path, count = export_rows(_store(), out, fmt=fmt, split=split, conversational=not plain)
    click.echo(f"wrote {count} {split} rows to {path}")


def register(group: click.Group) -> None:
    group.add_command(train_command)
    group.add_command(rounds_group)
    group.add_command(export_command)
