"""Data commands: init, prompts import/list, stats, settings, backup.

Each command opens the store, does one thing and prints what it did. Failures are StoreError
subclasses, which ``app.PrefloopGroup`` prints as one line (exit 1); nothing here prints a
traceback or writes half of anything.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sqlite3
import sys
from pathlib import Path
from typing import Any, Callable

import click
from prefloop.annotate.prompts import (
    DEFAULT_HELDOUT_FRACTION,
    import_prompts,
    load_starter_prompts,
)
from prefloop.db.store import DEFAULT_SETTINGS, SPLITS, Store
from prefloop.errors import (
    BackupError,
    InitError,
    PrefloopError,
    PromptImportError,
    SettingError,
)

DEFAULT_ADMIN = "admin"
GENERATED_PASSWORD_BYTES = 12  # token_urlsafe(12): 16 characters, ~96 bits




# --------------------------------------------------------------------------------------------
# init: shared with `prefloop serve`'s quick start
# --------------------------------------------------------------------------------------------
def ensure_initialised(
    store: Store,
    base_model: str | None = None,
    *,
    admin_name: str = DEFAULT_ADMIN,
    admin_password: str | None = None,
    starter: bool = True,
    echo: Callable[[str], None] | None = None,
) -> dict:
    """Create whatever is missing of: a base version v0, the starter prompts, a maintainer.

    Safe to call on every start: existing parts are reported, never changed. Starter prompts
    go in only while the prompt table is empty (a project with its own prompts keeps just
    those). A generated maintainer password is returned (``admin["password"]``) so the caller
    can print it once; it is stored only as a hash.
    """
    from prefloop.annotate import auth

    say = echo or (lambda _line: None)
    done: dict[str, Any] = {}

    versions = store.list_versions()
    if versions:
        active = store.active_version()
        done["version"] = {
            "name": active["name"] if active else versions[0]["name"],
            "created": False,
            "base": versions[0]["card"].get("base"),
            "ignored_base_model": base_model,
        }
    else:
        from prefloop.engine.models import BUNDLED_NAME, create_base_version

        if base_model is None:
            say(f"Converting {BUNDLED_NAME} to safetensors for v0 (about a minute on CPU, once)...")
        else:
            say(f"Registering {base_model} as v0...")
        created = create_base_version(store, base_model=base_model)
        done["version"] = {"name": created["name"], "created": True, "base": created["card"].get("base")}

    if not starter:
        done["prompts"] = {"added": 0, "skipped": "--no-starter", "total": store.count_prompts()}
    elif store.count_prompts():
        done["prompts"] = {"added": 0, "skipped": "prompts exist", "total": store.count_prompts()}
    else:
        report = load_starter_prompts(store)
        done["prompts"] = {
            "added": report.added, "skipped": None, "total": store.count_prompts(),
            "heldout": report.splits["heldout"],
        }

    maintainers = _maintainer_names(store)
    if maintainers:
        done["admin"] = {"name": ", ".join(maintainers), "created": False, "password": None}
    else:
        generated = admin_password is None
        password = secrets.token_urlsafe(GENERATED_PASSWORD_BYTES) if generated else admin_password
        auth.create_user(store, admin_name, password, role="maintainer")
        done["admin"] = {
            "name": admin_name, "created": True, "password": password if generated else None,
        }
    return done


def describe_initialisation(done: dict) -> list[str]:
    """Human lines for what ensure_initialised did; the only place a password is printed."""
    lines = []
    version = done["version"]
    if version["created"]:
        lines.append(f"Created model version {version['name']} ({version['base']}); it is active.")
    else:
        lines.append(f"Model versions already exist (active: {version['name']}); left as they are.")
        if version.get("ignored_base_model"):
            lines.append(f"  --base-model {version['ignored_base_model']} ignored: v0 is set once.")
    prompts = done["prompts"]
    if prompts["skipped"] is None:
        lines.append(
            f"Imported {prompts['added']} starter prompts ({prompts['heldout']} held out for "
            "evaluation)."
        )
    elif prompts["skipped"] == "--no-starter":
        lines.append(f"Starter prompts skipped (--no-starter); {prompts['total']} prompts stored.")
    else:
        lines.append(f"Prompts already present ({prompts['total']}); starter set not added.")
    admin = done["admin"]
    if not admin["created"]:
        lines.append(f"Maintainer already exists ({admin['name']}); no account created.")
    elif admin["password"]:
        lines.append(
            f"Created maintainer {admin['name']!r} with password: {admin['password']}\n"
            f"  (shown only this once; change it with `prefloop users password {admin['name']}`)"
        )
    else:
        lines.append(f"Created maintainer {admin['name']!r}.")
    return lines


def _maintainer_names(store: Store) -> list[str]:
    return [
        a["name"] for a in store.list_annotators() if a["role"] == "maintainer" and a["active"]
    ]


def _resolve_admin_password(store: Store, admin_name: str, password_env: str | None) -> str | None:
    """Check the account can be created before any slow work; None means 'generate one'."""
    from prefloop.annotate import auth

    if _maintainer_names(store):
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


# --------------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------------
@click.group("prompts")
def prompts_group() -> None:
    """Import and list the prompts that model versions answer.

    Example: prefloop prompts import my_prompts.jsonl --heldout-fraction 0.2
    """


@prompts_group.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--source", help="Label stored with each prompt (default: the file name).")
@click.option("--heldout-fraction", type=float, default=DEFAULT_HELDOUT_FRACTION, show_default=True, help="Share of prompts without a split column that are held out, chosen by content hash (deterministic).")
@click.option("--split", type=click.Choice(SPLITS), help="Put every prompt in this split (overrides the file's split column).")
def prompts_import(file: Path, source: str | None, heldout_fraction: float, split: str | None) -> None:
    """Import prompts from JSONL, JSON, CSV, Parquet or a `datasets` save_to_disk folder.

    Each record needs a `prompt` (text) or `messages` (chat: a list of {role, content});
    optional `kind` and `split` (train/heldout; test/validation count as held out) are kept.
    Everything is checked first: one bad line imports nothing and names the line.
    Prompts already stored (same content hash) are skipped and counted.

    Example: prefloop prompts import questions.csv --source support-tickets --split heldout
    """
    from tqdm import tqdm

    def progress(records):
        return tqdm(records, desc=f"reading {file.name}", unit=" prompts", leave=False, file=sys.stderr)

    store = Store()
    report = import_prompts(
        store, file, source=source, heldout_fraction=heldout_fraction, split=split,
        progress=progress,
    )
    click.echo(f"Imported {file.name}: {report.summary()}.")


@prompts_group.command("list")
@click.option("--split", type=click.Choice(SPLITS), help="Only this split.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many to show.")
def prompts_list(split: str | None, limit: int) -> None:
    """List stored prompts (id, split, kind, the start of the text).

    Example: prefloop prompts list --split heldout --limit 50
    """
    store = Store()
    rows = store.list_prompts(split=split, limit=limit)
    total = store.count_prompts(split)
    for row in rows:
        text = " ".join(row["text"].split())
        text = text if len(text) <= 70 else text[:69] + "…"
        click.echo(f"{row['id']:>6}  {row['split']:<7}  {(row['kind'] or '-'):<14}  {text}")
    click.echo(f"({len(rows)} of {total} prompts{' in ' + split if split else ''})")


# --------------------------------------------------------------------------------------------
# stats
# --------------------------------------------------------------------------------------------
def collect_stats(store: Store) -> dict:
    """Counts, votes by choice, the active version and its queue of ready pairs."""
    stats = dict(store.stats())
    choices = store.judgment_choice_counts()
    stats["judgments_by_choice"] = {c: choices.get(c, 0) for c in ("a", "b", "tie", "both_bad")}
    active = store.active_version()
    stats["active_version"] = active["name"] if active else None
    stats["queue_length"] = store.queued_pairs(active["id"]) if active else 0
    return stats


@click.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def stats_command(as_json: bool) -> None:
    """Show counts: prompts, versions, pairs, judgments by choice, the active version, the queue.

    Example: prefloop stats --json
    """
    stats = collect_stats(Store())
    if as_json:
        click.echo(json.dumps(stats, indent=2, sort_keys=True))
        return
    choices = stats["judgments_by_choice"]
    lines = [
        ("active version", stats["active_version"] or "none (run prefloop init)"),
        ("prompts", f"{stats['prompts']} ({stats['heldout_prompts']} held out)"),
        ("model versions", stats["versions"]),
        ("generations", stats["generations"]),
        ("pairs", f"{stats['pairs']} ({stats['open_pairs']} open)"),
        ("queue (ready pairs)", stats["queue_length"]),
        ("judgments", stats["judgments"]),
        ("  by choice", ", ".join(f"{c} {n}" for c, n in choices.items())),
        ("annotators", stats["annotators"]),
        ("rounds", stats["rounds"]),
    ]
    for name, value in lines:
        click.echo(f"{name:<20} {value}")


# --------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------
# (kind, minimum, maximum) for the settings whose range matters; others are type-checked only
SETTING_RANGES: dict[str, tuple[type, float, float | None]] = {
    "judgments_per_pair": (int, 1, None),
    "queue_target": (int, 0, None),
    "gold_rate": (float, 0.0, 1.0),
    "min_new_pairs": (int, 0, None),
    "promotion_min_accuracy": (float, 0.0, 1.0),
    "auto_train_every": (int, 0, None),
    "gate_share": (float, 0.0, 0.9),
    "gate_min_rows": (int, 1, None),
    "gate_max_length_ratio": (float, 1.0, None),
    "gate_min_length_ratio": (float, 0.0, 1.0),
    "gate_max_chosen_logp_drop": (float, 0.0, None),
    "gate_max_kl": (float, 0.0, None),
}


MAX_SETTING_NUMBER = 1_000_000_000  # larger counts cannot be meant, and overflow SQLite integers


def parse_setting(store: Store, key: str, raw: str) -> Any:
    """The value to store for ``key`` from command-line text (JSON, else a plain string)."""
    if key not in DEFAULT_SETTINGS:
        raise SettingError(f"unknown setting {key!r}; known settings: {', '.join(sorted(DEFAULT_SETTINGS))}")
    if key == "active_version":
        raise SettingError(
            "active_version changes only by promoting or rolling back a model version "
            "(see `prefloop --help`), so the switch is checked"
        )
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    default = DEFAULT_SETTINGS[key]
    if key == "sampling":
        return _parse_sampling(store, value)
    if key in SETTING_RANGES:
        kind, low, high = SETTING_RANGES[key]
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not is_number or (kind is int and not isinstance(value, int)):
            what = "a whole number" if kind is int else "a number"
            raise SettingError(f"{key} must be {what}, not {raw!r}")
        if not math.isfinite(value):
            raise SettingError(f"{key} must be a finite number, not {raw!r}")
        if abs(value) > MAX_SETTING_NUMBER:
            raise SettingError(f"{key} is too large (at most {MAX_SETTING_NUMBER:,})")
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise SettingError(f"{key} must be {bound}, not {value}")
        return value
    if default is not None and not isinstance(value, type(default)):
        raise SettingError(f"{key} must be {type(default).__name__}, not {raw!r}")
    return value


def _parse_sampling(store: Store, value: Any) -> dict:
    """Merged into the current sampling settings, then checked by SamplingParams where present."""
    if not isinstance(value, dict):
        raise SettingError(
            'sampling must be a JSON object, e.g. \'{"temperature": 0.7, "max_new_tokens": 200}\''
        )
    merged = {**store.get_setting("sampling"), **value}
    try:
        from prefloop.engine.generation import SamplingParams
    except ImportError:
        return merged
    from dataclasses import fields

    known = {f.name for f in fields(SamplingParams)}
    unknown = sorted(set(merged) - known)
    if unknown:
        raise SettingError(
            f"unknown sampling field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    try:
        SamplingParams(**merged)
    except PrefloopError as error:
        raise SettingError(str(error)) from None
    return merged


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


# --------------------------------------------------------------------------------------------
# backup
# --------------------------------------------------------------------------------------------
def backup_database(store: Store, out_file: str | Path) -> dict:
    """Online copy (SQLite backup API, safe while the app writes), then integrity-checked."""
    out = Path(out_file).expanduser()
    if out.exists():
        raise BackupError(f"{out} already exists; refusing to overwrite it (choose a new file name)")
    if not out.parent.is_dir():
        raise BackupError(f"folder {out.parent} does not exist; create it first")
    try:
        store.backup_to(out)
    except (sqlite3.Error, OSError) as error:
        out.unlink(missing_ok=True)
        raise BackupError(f"cannot write the backup to {out}: {error}") from None
    copy = Store(out, migrate=False)
    try:
        check = copy.integrity_check()
        stats = copy.stats()
    finally:
        copy.close()
    if check != "ok":
        raise BackupError(f"the backup at {out} failed its integrity check: {check}")
    return {"path": str(out), "bytes": out.stat().st_size, "integrity": check, **stats}


@click.command("backup")
@click.argument("out_file", type=click.Path(path_type=Path))
def backup_command(out_file: Path) -> None:
    """Copy the database to OUT_FILE while the app keeps running, and check the copy.

    Model files are not included: back up $PREFLOOP_HOME/models separately.

    Example: prefloop backup backups/prefloop-2024-06-01.db
    """
    result = backup_database(Store(), out_file)
    click.echo(
        f"Backed up to {result['path']} ({result['bytes']:,} bytes, integrity {result['integrity']}): "
        f"{result['prompts']} prompts, {result['judgments']} judgments, "
        f"{result['versions']} versions."
    )


@click.group("gold")
def gold_group() -> None:
    """Gold pairs: known answers mixed silently into annotators' queues (quality control).

    Example: prefloop gold add 12 --answer a && prefloop settings set gold_rate 0.05
    """


@gold_group.command("add")
@click.argument("pair_id", type=int)
@click.option("--answer", required=True, type=click.Choice(["a", "b", "tie", "both_bad"]),
              help="the known right answer, in generation terms (a = the pair's first generation)")
def gold_add(pair_id: int, answer: str) -> None:
    """Make a gold pair from an existing pair's two responses and a known answer.

    Example: prefloop gold add 12 --answer b
    """
    store = Store()
    gold_id = store.add_gold_pair(pair_id, answer)
    rate = store.get_setting("gold_rate")
    click.echo(f"Gold pair {gold_id} added (answer {answer}); gold_rate is {rate}"
               + ("" if rate else ": set it above 0 to mix gold pairs in"))


@gold_group.command("list")
def gold_list() -> None:
    """List gold pairs, their answers and how often annotators agreed with them.

    Example: prefloop gold list
    """
    rows = Store().list_gold_pairs()
    if not rows:
        click.echo("No gold pairs yet: see `prefloop gold add --help`.")
    for row in rows:
        prompt = " ".join(row["prompt"].split())[:60]
        click.echo(f"{row['id']:>6}  answer {row['gold_choice']:<8} {row['agreed']}/{row['judgments_count']} agreed  {prompt}")


@click.command("import")
@click.argument("file", type=click.Path(path_type=Path))
def import_command(file: Path) -> None:
    """Read a judgments export (`prefloop export OUT --what judgments`) into this home.

    Every line is checked first: one bad line imports nothing and names the line. Importing the
    same file twice adds nothing. Unknown annotators become disabled accounts without a password;
    unknown model versions become lineage-only rows (status imported, no weights, never active).

    Example: prefloop import backups/judgments.jsonl
    """
    from prefloop.annotate.transfer import import_judgments

    counts = import_judgments(Store(), file)
    click.echo(
        f"Imported {file.name}: {counts['judgments']} judgments added, "
        f"{counts['already_present']} already present; new: {counts['prompts']} prompts, "
        f"{counts['generations']} generations, {counts['pairs']} pairs, "
        f"{counts['versions']} versions (lineage only), {counts['annotators']} annotators (disabled)."
    )


def register(group: click.Group) -> None:
    for command in (init_command, prompts_group, stats_command, settings_group, backup_command,
                    gold_group, import_command):
        group.add_command(command)


__all__ = [
    "PromptImportError", "SettingError", "InitError", "BackupError", "ensure_initialised",
    "describe_initialisation", "collect_stats", "parse_setting", "backup_database", "register",
]
