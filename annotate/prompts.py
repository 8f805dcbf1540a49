"""Import prompts (JSONL, JSON, CSV, Parquet, a `datasets` save_to_disk folder) and the starter set.

Every record is read and checked before anything is written, then the whole file goes in through
one ``store.add_prompts`` transaction: a bad line 9,000 of a 10,000-line file changes nothing, and
the error names the line. Prompts are deduplicated by content hash (within the file here, against
the database by the store's unique index), and each is put in the train or held-out split:
the file's own ``split`` column where it has one, else a deterministic split by content hash, so
re-importing a file, or importing it on another machine, puts every prompt on the same side.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from prefloop.db.store import SPLITS, Store, content_hash, dumps
from prefloop.errors import PromptImportError
from prefloop.safetext import first_control

MAX_PROMPT_CHARS = 20_000  # longer than any prompt a 135M model (2k-token context) can use
DEFAULT_HELDOUT_FRACTION = 0.1  # enough held-out prompts to measure, most left for training
STARTER_PROMPTS = Path(__file__).with_name("starter_prompts.jsonl")
STARTER_SOURCE = "starter"
ROLES = ("system", "user", "assistant")
# split names seen in the wild, mapped onto ours: anything not trained on is held out
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "heldout": "heldout",
    "held_out": "heldout",
    "held-out": "heldout",
    "test": "heldout",
    "validation": "heldout",
    "valid": "heldout",
    "eval": "heldout",
    "dev": "heldout",
}
FILE_TYPES = ".jsonl (.ndjson), .json, .csv, .parquet, or a folder written by datasets' save_to_disk"

Progress = Callable[[Iterable], Iterable]


@dataclass
class ImportReport:
    """What an import did (or, with nothing written, would have done)."""

    source: str
    read: int = 0  # records in the file
    added: int = 0  # new rows in the database
    already_present: int = 0  # unique records whose content was already stored
    duplicates_in_file: int = 0  # records repeating an earlier record of the same file
    splits: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})

    def summary(self) -> str:
        return (
            f"{self.added} added, {self.already_present} already present, "
            f"{self.duplicates_in_file} duplicates within the file "
            f"({self.read} records read; {self.splits['train']} train, "
            f"{self.splits['heldout']} held-out)"
        )


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def import_prompts(
    store: Store,
    path: str | Path,
    *,
    source: str | None = None,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    split: str | None = None,
    progress: Progress | None = None,
) -> ImportReport:
    """Read, validate and store every prompt of a file; all or nothing.

    ``split`` forces every prompt into one split; otherwise a record's own split wins, and the
    rest are held out by content hash with probability ``heldout_fraction``.
    """
    path = Path(path).expanduser()
    prompts = read_prompts(path, heldout_fraction=heldout_fraction, split=split, progress=progress)
    return store_prompts(store, prompts, source=source or path.name)


def read_prompts(
    path: str | Path,
    *,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    split: str | None = None,
    progress: Progress | None = None,
) -> list[dict]:
    """Every record of a file as a store-ready prompt dict (``text``, ``messages``, ``kind``,
    ``split``); raises PromptImportError on the first problem, before anything is written."""
    path = Path(path).expanduser()
    if not 0.0 <= heldout_fraction < 1.0:
        raise PromptImportError(
            f"the held-out fraction must be at least 0 and below 1, not {heldout_fraction}"
        )
    if split is not None and split not in SPLITS:
        raise PromptImportError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    records, unit = _records(path)
    wrap = progress or (lambda items: items)
    prompts = []
    for number, record in wrap(records):
        where = f"{path.name}, {unit} {number}"
        prompt = _prompt_from_record(record, where)
        if split is not None:
            prompt["split"] = split
        elif prompt["split"] is None:
            prompt["split"] = hash_split(prompt_key(prompt), heldout_fraction)
        prompts.append(prompt)
    if not prompts:
        raise PromptImportError(f"{path.name} has no prompts (the file is empty)")
    return prompts


def store_prompts(store: Store, prompts: list[dict], source: str) -> ImportReport:
    """Drop repeats within the list, then insert the rest in one transaction."""
    report = ImportReport(source=source, read=len(prompts))
    unique: dict[str, dict] = {}
    for prompt in prompts:
        unique.setdefault(prompt_key(prompt), {**prompt, "source": source})
    report.duplicates_in_file = len(prompts) - len(unique)
    for prompt in unique.values():
        report.splits[prompt["split"]] += 1
    report.added, report.already_present = store.add_prompts(list(unique.values()))
    return report


def load_starter_prompts(store: Store) -> ImportReport:
    """The bundled starter set (each line carries its kind and a fixed split)."""
    return import_prompts(store, STARTER_PROMPTS, source=STARTER_SOURCE)


def prompt_key(prompt: dict) -> str:
    """The content hash the store's unique index uses, so in-file and in-database dedupe agree."""
    messages = prompt.get("messages")
    return content_hash(dumps(messages) if messages else prompt["text"])


def hash_split(key: str, heldout_fraction: float) -> str:
    """Deterministic split: the hash's first 8 hex digits as a number in [0, 1)."""
    return "heldout" if int(key[:8], 16) / 16**8 < heldout_fraction else "train"


# --------------------------------------------------------------------------------------------
# readers: each yields (line or row number, record dict)
# --------------------------------------------------------------------------------------------
def _records(path: Path) -> tuple[Iterable[tuple[int, dict]], str]:
    """A lazy reader for the file (so progress follows reading) and what its numbers count."""
    if not path.exists():
        raise PromptImportError(f"no such file or folder: {path}")
    if path.is_dir():
        return _read_dataset_dir(path), "row"
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path), "line"
    if suffix == ".json":
        return _read_json(path), "record"
    if suffix == ".csv":
        return _read_csv(path), "row"
    if suffix == ".parquet":
        return _read_parquet(path), "row"
    raise PromptImportError(
        f"cannot import {path.name}: unknown file type {suffix or '(no extension)'!r}; "
        f"use {FILE_TYPES}"
    )


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise PromptImportError(
            f"{path.name} is not UTF-8 text (invalid byte at line {line}); "
            "save it as UTF-8 and try again"
        ) from None


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise PromptImportError(
                f"{path.name}, line {number}: not valid JSON ({error.msg} at column {error.colno})"
            ) from None
        if not isinstance(record, dict):
            raise PromptImportError(
                f"{path.name}, line {number}: expected a JSON object with a 'prompt' or "
                f"'messages' field, found {type(record).__name__}"
            )
        yield number, record


def _read_json(path: Path) -> list[tuple[int, dict]]:
    text = _read_text(path)
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise PromptImportError(
            f"{path.name}: not valid JSON ({error.msg} at line {error.lineno}, "
            f"column {error.colno})"
        ) from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise PromptImportError(
            f"{path.name}: expected a JSON list of objects (or use .jsonl, one object a line)"
        )
    return list(enumerate(data, start=1))


def _read_csv(path: Path) -> Iterator[tuple[int, dict]]:
    text = _read_text(path)
    previous_limit = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)  # over-long prompts get our message, not csv's
    try:
        reader = csv.DictReader(text.splitlines(keepends=True))
        try:
            if reader.fieldnames is None:
                return  # empty file
            _require_columns(path.name, reader.fieldnames)
            for number, row in enumerate(reader, start=1):
                if None in row:
                    raise PromptImportError(
                        f"{path.name}, row {number}: more cells than the header has columns"
                    )
                yield number, {k: v for k, v in row.items() if v not in (None, "")}
        except csv.Error as error:
            raise PromptImportError(
                f"{path.name}, line {reader.line_num}: not valid CSV ({error})"
            ) from None
    finally:
        csv.field_size_limit(previous_limit)


def _read_parquet(path: Path) -> Iterator[tuple[int, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise PromptImportError(f"{path.name} is not a readable Parquet file ({error})") from None
    _require_columns(path.name, table.column_names)
    for number, row in enumerate(table.to_pylist(), start=1):
        yield number, row


def _read_dataset_dir(path: Path) -> Iterator[tuple[int, dict]]:
    """A ``Dataset`` or ``DatasetDict`` saved with ``save_to_disk``; a dict's split names count."""
    if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
            or (path / "state.json").exists()):
        raise PromptImportError(
            f"{path} is a folder but not a dataset saved with datasets' save_to_disk "
            "(no dataset_dict.json or state.json); use " + FILE_TYPES
        )
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:  # noqa: BLE001 - any failure means the folder is unusable
        raise PromptImportError(
            f"cannot read the dataset folder {path} ({type(error).__name__}: {error})"
        ) from None
    parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
    number = 0
    for split_name, dataset in parts:
        _require_columns(path.name, dataset.column_names)
        for row in dataset:
            number += 1
            if split_name is not None and row.get("split") in (None, ""):
                row = {**row, "split": split_name}
            yield number, row


def _require_columns(name: str, columns: Iterable[str]) -> None:
    columns = list(columns)
    if "prompt" not in columns and "messages" not in columns:
        found = ", ".join(repr(c) for c in columns) or "none"
        raise PromptImportError(
            f"{name} has no 'prompt' or 'messages' column (found columns: {found})"
        )


# --------------------------------------------------------------------------------------------
# one record -> one prompt
# --------------------------------------------------------------------------------------------
def _prompt_from_record(record: dict, where: str) -> dict:
    prompt, messages = record.get("prompt"), record.get("messages")
    if prompt is None and messages is None:
        if "prompt" in record or "messages" in record:
            raise PromptImportError(f"{where}: the prompt is empty")
        found = ", ".join(repr(k) for k in record) or "none"
        raise PromptImportError(f"{where}: no 'prompt' or 'messages' field (found: {found})")
    if isinstance(prompt, list) and messages is None:  # TRL's conversational prompt column
        prompt, messages = None, prompt
    if prompt is not None:
        if not isinstance(prompt, str):
            raise PromptImportError(
                f"{where}: 'prompt' must be text, not {type(prompt).__name__}"
            )
        text, messages = prompt.strip(), None
        if not text:
            raise PromptImportError(f"{where}: the prompt is empty")
        length = len(text)
    else:
        messages = _clean_messages(messages, where)
        text = _messages_text(messages)
        length = sum(len(m["content"]) for m in messages)
        if len(messages) == 1:  # a lone user turn is a plain prompt: same hash either way
            messages = None
    if length > MAX_PROMPT_CHARS:
        raise PromptImportError(
            f"{where}: the prompt is {length:,} characters long; the limit is "
            f"{MAX_PROMPT_CHARS:,} (MAX_PROMPT_CHARS)"
        )
    for part in [text] + [m["content"] for m in messages or []]:
        _refuse_control_characters(part, where)
    return {
        "text": text,
        "messages": messages,
        "kind": _optional_text(record.get("kind"), "kind", where),
        "split": _record_split(record.get("split"), where),
        "followups": _followups(record.get("followups"), where),
    }


MAX_FOLLOWUPS = 20  # next user turns a prompt may offer the annotator who continues it


def _followups(value: Any, where: str) -> list[str]:
    """Next user turns a prompt set supplies (``followups``: a list of texts), checked like prompts."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PromptImportError(f"{where}: 'followups' must be a list of texts")
    turns = [v.strip() for v in value if v.strip()]
    if len(turns) > MAX_FOLLOWUPS:
        raise PromptImportError(f"{where}: at most {MAX_FOLLOWUPS} followups per prompt, not {len(turns)}")
    for turn in turns:
        if len(turn) > MAX_PROMPT_CHARS:
            raise PromptImportError(f"{where}: a follow-up is longer than {MAX_PROMPT_CHARS:,} characters")
        _refuse_control_characters(turn, where)
    return turns


ALLOWED_CONTROLS = "\t\n\r"


def _refuse_control_characters(text: str, where: str) -> None:
    """NUL, ANSI escapes (ESC) and other C0/C1 controls are never part of a real prompt; printed
    by `prefloop prompts list` they could rewrite the maintainer's terminal."""
    found = first_control(text, ALLOWED_CONTROLS)  # one rule with `prefloop import`
    if found:
        position, char = found
        raise PromptImportError(
            f"{where}: the prompt holds control character U+{ord(char):04X} at character "
            f"{position}; remove it and try again"
        )


def _clean_messages(messages: Any, where: str) -> list[dict]:
    """A chat ending on a user turn; trailing assistant answers (as in preference data) dropped."""
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)  # CSV cells hold the list as JSON text
        except json.JSONDecodeError:
            raise PromptImportError(
                f"{where}: 'messages' must be a list of {{role, content}} objects "
                "(in CSV, as JSON text)"
            ) from None
    if not isinstance(messages, list) or not messages:
        raise PromptImportError(
            f"{where}: 'messages' must be a non-empty list of {{role, content}} objects"
        )
    cleaned = []
    for index, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or not {"role", "content"} <= set(message):
            raise PromptImportError(
                f"{where}: message {index} must be an object with 'role' and 'content'"
            )
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise PromptImportError(
                f"{where}: message {index} has role {role!r}; roles are {', '.join(ROLES)}"
            )
        if not isinstance(content, str) or not content.strip():
            raise PromptImportError(f"{where}: message {index} has empty or non-text content")
        cleaned.append({"role": role, "content": content.strip()})
    while cleaned and cleaned[-1]["role"] == "assistant":
        cleaned.pop()
    if not any(m["role"] == "user" for m in cleaned):
        raise PromptImportError(f"{where}: 'messages' has no user message to answer")
    return cleaned


def _messages_text(messages: list[dict]) -> str:
    """The text annotators see: the last user message (the chat is kept in ``messages``)."""
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def _record_split(value: Any, where: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    split = SPLIT_ALIASES.get(str(value).strip().lower())
    if split is None:
        raise PromptImportError(
            f"{where}: unknown split {value!r}; use train or heldout (or test/validation)"
        )
    return split


def _optional_text(value: Any, name: str, where: str) -> str | None:
    if value is None or (isinstance(value, float) and value != value):  # NaN from pandas
        return None
    if not isinstance(value, str):
        raise PromptImportError(f"{where}: {name!r} must be text, not {type(value).__name__}")
    return value.strip() or None
