"""Judgments export and import: weeks of annotators' work, moved between homes without loss.

    prefloop export judgments.jsonl --what judgments   # every judgment with its full lineage
    prefloop import judgments.jsonl                     # into another (or the same) home

The file is JSONL: a header line ``{"format": "prefloop-judgments", "version": 1}``, then one
judgment a line with everything needed to trace it, by *names and texts*, never row ids: the
prompt (text, chat messages, kind, source, split), the pair (purpose, gold answer, judgments
wanted, created_at, mode, and ``selection``: how the sampler chose it, annotate/selection.py), both generations (version name, sampling params, seed, text, token counts,
finish reason, latency, created_at), the generation shown on the left ("a"/"b"), the annotator's
*name* (never a password hash), the choice, reasons, comment, better answer, elapsed ms,
created_at, and the guidelines in force when the vote was cast (text and created_at; null before
any were written).

Import checks every line before writing anything (a bad line names its number and changes
nothing), then writes in one transaction, matching by content so importing twice adds nothing.
Versions are matched by name; a version the target home lacks is created as a lineage-only row
(status ``imported``, no weights) rather than refused: refusing would make a judgments file
unusable anywhere but its own home, while a lineage-only row keeps every judgment traceable and
can never be made active or loaded. Annotators the target lacks are created disabled, with no
password, so an import can never open an account.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Iterable

from prefloop.annotate import auth
from prefloop.db.store import CHOICES, PAIR_MODES, PAIR_PURPOSES, SELECTIONS, SPLITS, THUMBS, Store, loads
from prefloop.errors import PrefloopError, TransferError
from prefloop.safetext import first_control, validate_version_name

FORMAT = "prefloop-judgments"
FORMAT_VERSION = 1
HEADER = {"format": FORMAT, "version": FORMAT_VERSION}
MAX_SELECTION_CHARS = 4_000  # a pair's selection lineage: a few numbers and names
MAX_TEXT_CHARS = 200_000  # far above any prompt or generation we store; a guard against junk
GENERATION_FIELDS = ("version", "text", "params", "seed", "prompt_tokens", "completion_tokens",
                     "finish_reason", "latency_ms", "created_at")


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------
def judgment_records(store: Store) -> list[dict]:
    """Every judgment as an export record (see the module docstring), oldest first."""
    records = []
    for row in store.judgment_export_rows():
        records.append({
            "prompt": {
                "text": row["prompt_text"],
                "messages": loads(row["prompt_messages"]),
                "kind": row["prompt_kind"],
                "source": row["prompt_source"],
                "split": row["prompt_split"],
            },
            "pair": {
                "purpose": row["purpose"],
                "gold_choice": row["gold_choice"],
                "judgments_wanted": row["judgments_wanted"],
                "created_at": row["pair_created_at"],
                "mode": row["mode"],
                "selection": loads(row["selection"]),  # how the sampler chose the pair; null before m006
            },
            **{
                f"generation_{s}": {
                    "version": row[f"g{s}_version"],
                    **{f: row[f"g{s}_{f}"] for f in GENERATION_FIELDS if f != "version"},
                    "params": loads(row[f"g{s}_params"], {}),
                } if row[f"g{s}_version"] is not None else None  # a single (thumbs) item has no b
                for s in "ab"
            },
            "shown_left": row["shown_left"],
            "annotator": row["annotator"],
            "choice": row["choice"],
            "reasons": loads(row["reasons"]),
            "comment": row["comment"],
            "better_answer": row["better_answer"],
            "elapsed_ms": row["elapsed_ms"],
            "created_at": row["created_at"],
            # the guidelines the vote was cast under (null before any were written)
            "guidelines": {"text": row["guidelines_text"], "created_at": row["guidelines_created_at"]}
            if row["guidelines_text"] is not None else None,
        })
    return records


def check_target(out: str | Path) -> Path:
    """A new regular file in an existing folder; anything else is refused with a reason."""
    target = Path(out).expanduser()
    if str(out).strip() == "":
        raise TransferError("give a file name to write to")
    if target.is_dir():
        raise TransferError(f"{target} is a folder; give a file name inside it")
    if target.exists() or target.is_symlink():
        raise TransferError(f"{target} already exists; refusing to overwrite it (choose a new name)")
    if not target.parent.is_dir():
        raise TransferError(f"folder {target.parent} does not exist; create it first")
    if not os.access(target.parent, os.W_OK):
        raise TransferError(f"folder {target.parent} is not writable")
    return target


def export_judgments(store: Store, out: str | Path) -> tuple[Path, int]:
    """Write the header and every judgment to ``out``; returns (path, judgments written).

    Written to a temporary file in the same folder and renamed at the end, so a failure (disk
    full) never leaves half a file under the requested name.
    """
    target = check_target(out)
    records = judgment_records(store)
    try:
        handle = tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=target.parent, prefix=".prefloop-export-", suffix=".tmp",
            delete=False,
        )
    except OSError as error:
        raise TransferError(f"cannot write in {target.parent}: {error.strerror or error}") from None
    try:
        with handle:
            for record in [HEADER, *records]:
                handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        os.replace(handle.name, target)
    except OSError as error:
        Path(handle.name).unlink(missing_ok=True)
        raise TransferError(f"cannot write {target}: {error.strerror or error}") from None
    return target, len(records)


# --------------------------------------------------------------------------------------------
# import
# --------------------------------------------------------------------------------------------
def read_judgments(path: str | Path) -> list[dict]:
    """Every record of an export file, each checked; raises TransferError naming the line."""
    path = Path(path).expanduser()
    if not path.exists():
        raise TransferError(f"no such file: {path}")
    if not path.is_file():
        raise TransferError(f"{path} is not a file (a folder or a device); give an export file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise TransferError(f"{path.name} is not UTF-8 text (invalid byte at offset {error.start})") from None
    except OSError as error:
        raise TransferError(f"cannot read {path}: {error.strerror or error}") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise TransferError(f"{path.name} is empty: expected a prefloop judgments export")
    header = _json_line(path, 1, lines[0])
    if header.get("format") != FORMAT:
        raise TransferError(
            f"{path.name} is not a prefloop judgments export (line 1 has no "
            f'"format": "{FORMAT}"); prompts go in with `prefloop prompts import`'
        )
    if header.get("version") != FORMAT_VERSION:
        raise TransferError(f"{path.name}: format version {header.get('version')!r} is not supported "
                            f"(this prefloop reads version {FORMAT_VERSION})")
    records = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            records.append(check_record(_json_line(path, number, line)))
        except _Invalid as error:
            raise TransferError(f"{path.name}, line {number}: {error}") from None
    return records


def import_judgments(store: Store, path: str | Path) -> dict[str, int]:
    """Validate the whole file, then write it in one transaction; returns what was added."""
    records = read_judgments(path)
    return store.import_judgment_records(records)


class _Invalid(Exception):
    """One field of one record is wrong; read_judgments adds the file and line."""


def _json_line(path: Path, number: int, line: str) -> dict:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise TransferError(f"{path.name}, line {number}: not valid JSON ({error.msg})") from None
    if not isinstance(value, dict):
        raise TransferError(f"{path.name}, line {number}: expected a JSON object, found "
                            f"{type(value).__name__}")
    return value


def check_record(r: Any) -> dict:
    """Types, choices and limits of one record; raises _Invalid with the field's name."""

    _require(r, "record", dict)
    prompt = _require(r.get("prompt"), "prompt", dict)
    _no_controls(_text(prompt.get("text"), "prompt.text"), "prompt.text")
    messages = prompt.get("messages")
    if messages is not None:
        _require(messages, "prompt.messages", list)
        for m in messages:
            if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str)):
                raise _Invalid("prompt.messages must be a list of {role, content} objects")
            _no_controls(m["content"], "prompt.messages content")
    _optional_text(prompt.get("kind"), "prompt.kind")
    _optional_text(prompt.get("source"), "prompt.source")
    _one_of(prompt.get("split"), "prompt.split", SPLITS)
    pair = _require(r.get("pair"), "pair", dict)
    _one_of(pair.get("purpose"), "pair.purpose", PAIR_PURPOSES)
    if pair.get("gold_choice") is not None:
        _one_of(pair["gold_choice"], "pair.gold_choice", CHOICES)
    wanted = _integer(pair.get("judgments_wanted"), "pair.judgments_wanted")
    if wanted < 1:
        raise _Invalid("pair.judgments_wanted must be at least 1")
    _timestamp(pair.get("created_at"), "pair.created_at")
    mode = pair.get("mode", "pair")  # records written before thumbs existed have no mode
    _one_of(mode, "pair.mode", PAIR_MODES)
    selection = pair.get("selection")  # records written before issue 15 have none
    if selection is not None:
        _require(selection, "pair.selection", dict)
        _one_of(selection.get("method"), "pair.selection.method", SELECTIONS)
        if len(json.dumps(selection)) > MAX_SELECTION_CHARS:
            raise _Invalid(f"pair.selection is longer than {MAX_SELECTION_CHARS:,} characters")
    sides = ("generation_a", "generation_b") if mode == "pair" else ("generation_a",)
    if mode == "single" and r.get("generation_b") is not None:
        raise _Invalid("a single (thumbs) item has no generation_b")
    for side in sides:
        g = _require(r.get(side), side, dict)
        try:
            validate_version_name(g.get("version"))
        except PrefloopError as error:
            raise _Invalid(f"{side}.version: {error}") from None
        _require(g.get("text"), f"{side}.text", str)
        if len(g["text"]) > MAX_TEXT_CHARS:
            raise _Invalid(f"{side}.text is longer than {MAX_TEXT_CHARS:,} characters")
        _require(g.get("params"), f"{side}.params", dict)
        _integer(g.get("seed"), f"{side}.seed")
        for name in ("prompt_tokens", "completion_tokens"):
            if g.get(name) is not None:
                _integer(g[name], f"{side}.{name}")
        _optional_text(g.get("finish_reason"), f"{side}.finish_reason")
        if g.get("latency_ms") is not None and not _is_number(g["latency_ms"]):
            raise _Invalid(f"{side}.latency_ms must be a number")
        _timestamp(g.get("created_at"), f"{side}.created_at")
    _one_of(r.get("shown_left"), "shown_left", ("a", "b"))
    try:
        auth.validate_name(_require(r.get("annotator"), "annotator", str))
    except PrefloopError as error:
        raise _Invalid(f"annotator: {error}") from None
    if r["annotator"] != r["annotator"].strip():
        raise _Invalid("annotator has spaces around the name")
    _one_of(r.get("choice"), "choice", CHOICES if mode == "pair" else THUMBS)
    reasons = r.get("reasons")
    if reasons is not None and not (isinstance(reasons, list) and all(isinstance(x, str) for x in reasons)):
        raise _Invalid("reasons must be a list of texts or null")
    _optional_text(r.get("comment"), "comment")
    _optional_text(r.get("better_answer"), "better_answer")
    if r.get("elapsed_ms") is not None and _integer(r["elapsed_ms"], "elapsed_ms") < 0:
        raise _Invalid("elapsed_ms cannot be negative")
    _timestamp(r.get("created_at"), "created_at")
    guidelines = r.get("guidelines")  # records written before guidelines were exported have none
    if guidelines is not None:
        _require(guidelines, "guidelines", dict)
        _text(guidelines.get("text"), "guidelines.text")
        _timestamp(guidelines.get("created_at"), "guidelines.created_at")
    return r


def _require(value: Any, name: str, kind: type) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _Invalid(f"{name} must be {_KIND_WORDS.get(kind, kind.__name__)}, "
                       f"not {_describe(value)}")
    return value


_KIND_WORDS = {dict: "an object", list: "a list", str: "text", int: "a whole number"}


def _describe(value: Any) -> str:
    return "missing (null)" if value is None else type(value).__name__


def _text(value: Any, name: str, limit: int = MAX_TEXT_CHARS) -> str:
    _require(value, name, str)
    if not value.strip():
        raise _Invalid(f"{name} is empty")
    if len(value) > limit:
        raise _Invalid(f"{name} is longer than {limit:,} characters")
    return value


def _optional_text(value: Any, name: str) -> None:
    if value is not None:
        _require(value, name, str)
        if len(value) > MAX_TEXT_CHARS:
            raise _Invalid(f"{name} is longer than {MAX_TEXT_CHARS:,} characters")
        _no_controls(value, name)


def _no_controls(value: str, name: str) -> str:
    """The check `prompts import` makes: NUL, ESC and other C0/C1 controls are refused."""
    found = first_control(value)
    if found:
        raise _Invalid(f"{name} holds control character U+{ord(found[1]):04X} at character {found[0]}")
    return value


def _integer(value: Any, name: str) -> int:
    return _require(value, name, int)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _one_of(value: Any, name: str, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise _Invalid(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _timestamp(value: Any, name: str) -> str:
    _require(value, name, str)
    try:
        dt.datetime.fromisoformat(value)
    except ValueError:
        raise _Invalid(f"{name} is not an ISO timestamp: {value[:40]!r}") from None
    return value


def backup_database(store: Store, out_file: str | Path) -> dict:
    """Online copy (SQLite backup API, safe while the app writes), then integrity-checked."""
    out = Path(out_file).expanduser()
    if out.exists():
        raise TransferError(f"{out} already exists; refusing to overwrite it (choose a new file name)")
    if not out.parent.is_dir():
        raise TransferError(f"folder {out.parent} does not exist; create it first")
    try:
        store.backup_to(out)
    except (sqlite3.Error, OSError) as error:
        out.unlink(missing_ok=True)
        raise TransferError(f"cannot write the backup to {out}: {error}") from None
    copy = Store(out, migrate=False)
    try:
        check = copy.integrity_check()
        stats = copy.stats()
    finally:
        copy.close()
    if check != "ok":
        raise TransferError(f"the backup at {out} failed its integrity check: {check}")
    return {"path": str(out), "bytes": out.stat().st_size, "integrity": check, **stats}
