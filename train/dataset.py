"""Judgments -> preference rows that TRL trains on, plus snapshots and exports.

Rules (one place, so a dataset can be explained from its judgments):

* Split. Judgments on pairs whose prompt is held-out never become training rows; ``split=
  "heldout"`` returns those, for evaluation only.
* Which pairs. Training uses ``train`` and ``live`` pairs. ``arena`` pairs (version-vs-version
  battles) are evaluation data and are left out of training; ``gold`` pairs are quality checks on
  annotators (their answer is known in advance and they are shown to many people), so they are
  left out too, rather than weighted by how often they were served. The held-out split includes
  arena judgments: a human preference on a held-out prompt is exactly what accuracy is measured on.
* Windows by pair. A round learns from a set of *closed* pairs (done or retired), chosen when
  the round is created and recorded in ``round_pairs``: every vote of a pair is aggregated
  together, once, in the one round whose window holds the pair. A pair still open (waiting for
  more votes) waits for a later round; promotion retires the open pairs of older versions, so
  they close too. (Windows by judgment id split a pair's votes across rounds: issue 14.)
* Cut-off answers. A response that hit ``max_new_tokens`` (``finish_reason`` "length") is marked
  ``chosen_cut_off`` / ``rejected_cut_off`` in rows and exports, and is trained *without* the
  end-of-turn token (prefloop.train.rounds strips it after TRL's tokenising): a cut-off winner
  must not teach "stop here". Kept rather than left out because the pairs where one answer
  finished and the other did not carry a taste for finished answers (README, "Cut-off answers").
* Several votes on one pair: the plurality choice among a / b / tie / both_bad wins; a row is
  made only when a or b wins outright (a draw for first place, tie or both_bad winning: no row).
* A better answer written by anyone, with any vote, becomes ``chosen`` against each of the two
  responses (two rows; one on a single-answer thumbs item). This is how a both_bad pair can
  still teach something. Thumbs votes themselves make no preference row (nothing to compare):
  the ``kto`` method learns from them.
* Conversations. ``prompt`` is the whole stored history (a continued conversation's earlier
  turns included); a round cuts it from the left at the token budget with the function the
  sampler uses (prefloop.engine.history), so it trains on the history the answers were sampled with.

Rows are TRL's conversational format: ``prompt`` is a list of messages, ``chosen``/``rejected``
a one-message assistant list. Each row also carries lineage keys (``pair_id``, ``prompt_id``,
``judgment_ids``, ``source``, ...). TRL's DPOTrainer drops unknown columns after tokenising, but
ORPO's collator keeps them, so :func:`training_columns` strips them before a trainer sees them;
the snapshot saved in the round folder keeps everything.

KTO's labelled answers and SFT's demonstrations come from the same judgments by the same rules
(:func:`votes_by_pair`, :func:`plurality`): prefloop.train.examples.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

from prefloop.db.store import SPLITS, Store
from prefloop.errors import DatasetError

TRAIN_PURPOSES = ("train", "live")
HELDOUT_PURPOSES = ("train", "live", "arena")
EXPORT_FORMATS = ("jsonl", "parquet", "hf")
TRL_COLUMNS = ("prompt", "chosen", "rejected")
CUT_OFF_COLUMNS = ("chosen_cut_off", "rejected_cut_off")


def build_preference_rows(
    store: Store, since_judgment_id: int = 0, split: str = "train", pair_ids: Iterable[int] | None = None
) -> list[dict]:
    """Preference rows from judgments on prompts of ``split`` (newer than ``since_judgment_id``;
    only on ``pair_ids`` when given: a round's window)."""
    rows: list[dict] = []
    for votes in votes_by_pair(store, since_judgment_id, split, pair_ids):
        rows.extend(_rows_for_pair(votes))
    return rows


def votes_by_pair(
    store: Store, since_judgment_id: int = 0, split: str = "train", pair_ids: Iterable[int] | None = None
) -> list[list[dict]]:
    """Every pair's judgments together, in pair order: the split and purpose rules above, and only
    ``pair_ids`` when given (a round's window). Every row builder starts here."""
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    purposes = TRAIN_PURPOSES if split == "train" else HELDOUT_PURPOSES
    wanted = None if pair_ids is None else set(pair_ids)
    by_pair: dict[int, list[dict]] = defaultdict(list)
    for judgment in store.judgments(since_id=since_judgment_id, purposes=purposes):
        if judgment["split"] == split and (wanted is None or judgment["pair_id"] in wanted):
            by_pair[judgment["pair_id"]].append(judgment)
    return [by_pair[pair_id] for pair_id in sorted(by_pair)]


def window_pair_ids(store: Store, all_judgments: bool = False) -> list[int]:
    """The pairs a round created now would learn from: closed train/live pairs on train prompts
    that no earlier round took (every closed one with ``all_judgments``)."""
    return store.unclaimed_closed_pair_ids(TRAIN_PURPOSES, include_claimed=all_judgments)


def gate_rows(store: Store, version: dict) -> list[dict]:
    """Held-out judgments on pairs sampled from ``version`` alone (both answers its own): the
    evidence its candidates are gated on. They accumulate while the version stays active."""
    return [
        row for row in build_preference_rows(store, split="heldout")
        if row["version_a"] == row["version_b"] == version["name"] and row["purpose"] in TRAIN_PURPOSES
    ]


def is_cut_off(finish_reason: str | None) -> bool:
    """A response that hit max_new_tokens; unknown (None: imported, hand-made) counts as finished."""
    return finish_reason == "length"


def _rows_for_pair(votes: list[dict]) -> list[dict]:
    first = votes[0]
    prompt = prompt_messages(first)
    lineage = {
        "pair_id": first["pair_id"],
        "prompt_id": first["prompt_id"],
        "purpose": first["purpose"],
        "version_a": first["version_a"],
        "version_b": first["version_b"],
    }
    cut = {"text_a": is_cut_off(first.get("finish_reason_a")), "text_b": is_cut_off(first.get("finish_reason_b"))}
    rows = []
    winner = plurality([v["choice"] for v in votes])
    if winner in ("a", "b"):
        chosen, rejected = ("text_a", "text_b") if winner == "a" else ("text_b", "text_a")
        rows.append(
            {
                "prompt": prompt,
                "chosen": _assistant(first[chosen]),
                "rejected": _assistant(first[rejected]),
                **lineage,
                "chosen_cut_off": cut[chosen],
                "rejected_cut_off": cut[rejected],
                "source": f"vote:{winner}",
                "judgment_ids": [v["id"] for v in votes],
            }
        )
    seen: set[str] = set()
    for vote in votes:
        better = (vote.get("better_answer") or "").strip()
        if not better or better in seen:
            continue
        seen.add(better)
        for side in ("text_a", "text_b"):
            if first[side] is None:  # a single (thumbs) item has one answer
                continue
            if first[side].strip() == better:
                continue  # "better than itself" teaches nothing
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": _assistant(better),
                    "rejected": _assistant(first[side]),
                    **lineage,
                    "chosen_cut_off": False,  # written by a person: finished by definition
                    "rejected_cut_off": cut[side],
                    "source": f"better_answer_vs_{side[-1]}",
                    "judgment_ids": [vote["id"]],
                }
            )
    return rows


def plurality(choices: Iterable[str]) -> str | None:
    """The choice with the most votes; None when two or more share first place (or no votes)."""
    counts = Counter(choices).most_common()
    if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


def prompt_messages(judgment: dict) -> list[dict]:
    """The prompt as chat messages: stored messages when the prompt has them, else one user turn."""
    messages = judgment.get("prompt_messages")
    if isinstance(messages, str) and messages:
        messages = json.loads(messages)
    if messages:
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    return [{"role": "user", "content": judgment["prompt"]}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def row_kind(row: dict) -> str:
    """"preference" (prompt, chosen, rejected), "kto" (prompt, completion, label) or "sft"
    (prompt, completion): a round's snapshot may hold more than one kind (sft-dpo)."""
    if "chosen" in row:
        return "preference"
    return "kto" if "label" in row else "sft"


ROW_COLUMNS = {"preference": TRL_COLUMNS, "kto": ("prompt", "completion", "label"), "sft": ("prompt", "completion")}
ROW_FLAGS = {"preference": CUT_OFF_COLUMNS, "kto": ("cut_off",), "sft": ()}  # SFT rows are never cut off


def training_columns(rows: list[dict], cut_off_flags: bool = False) -> list[dict]:
    """Only the columns a TRL trainer should see (plus the cut-off flags when asked: the round
    reads them to strip the end-of-turn token from cut-off answers, then drops them)."""
    out = []
    for row in rows:
        kind = row_kind(row)
        flags = ROW_FLAGS[kind] if cut_off_flags else ()
        out.append({k: bool(row.get(k)) if k in flags else row[k] for k in ROW_COLUMNS[kind] + flags})
    return out


def dataset_hash(rows: list[dict]) -> str:
    """sha256 of what is trained on (the trainer's columns, in order, and which answers are cut
    off, since those train without an end-of-turn token): same data, same hash."""
    digest = hashlib.sha256()
    for row in training_columns(rows, cut_off_flags=True):
        for key in CUT_OFF_COLUMNS + ("cut_off",):
            if key in row and not row[key]:
                del row[key]  # finished answers hash as before cut-off flags existed
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def judgment_range(rows: list[dict]) -> list[int] | None:
    ids = [j for row in rows for j in row.get("judgment_ids", [])]
    return [min(ids), max(ids)] if ids else None


def save_snapshot(rows: list[dict], folder: Path) -> tuple[Path, str]:
    """Write ``dataset.jsonl`` and ``dataset.sha256`` into a round folder; returns (path, hash)."""
    folder.mkdir(parents=True, exist_ok=True)
    digest = dataset_hash(rows)
    path = folder / "dataset.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    (folder / "dataset.sha256").write_text(f"{digest}  dataset.jsonl\n")
    return path, digest


def load_snapshot(path: Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------
def plain_rows(rows: list[dict], tokenizer=None) -> list[dict]:
    """Plain-text rows: the prompt rendered with the chat template when a tokenizer is given,
    else the last user message; chosen/rejected as strings. Lineage keys are kept."""
    out = []
    for row in rows:
        if tokenizer is not None:
            prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        else:
            prompt = row["prompt"][-1]["content"]
        out.append(
            {**row, "prompt": prompt, "chosen": row["chosen"][0]["content"], "rejected": row["rejected"][0]["content"]}
        )
    return out


def check_export_target(out: str | Path) -> Path:
    """Refuse a non-empty existing target and explain a missing parent folder."""
    target = Path(out).expanduser().resolve()
    if not target.parent.exists():
        raise DatasetError(f"the folder {target.parent} does not exist; create it first")
    if target.exists():
        if not (target.is_dir() or target.is_file()):
            raise DatasetError(f"{target} is not a regular file or folder (a device?); choose a new path")
        if target.is_dir() and any(target.iterdir()):
            raise DatasetError(f"{target} exists and is not empty; choose a new path")
        if target.is_file() and target.stat().st_size > 0:
            raise DatasetError(f"{target} exists and is not empty; choose a new path")
    return target


def export_rows(
    store: Store, out: str | Path, fmt: str = "jsonl", split: str = "train", conversational: bool = True
) -> tuple[Path, int]:
    """Write every preference row of a split; returns (path, row count)."""
    if fmt not in EXPORT_FORMATS:
        raise DatasetError(f"format must be one of {', '.join(EXPORT_FORMATS)}, not {fmt!r}")
    target = check_export_target(out)
    rows = build_preference_rows(store, split=split)
    if not conversational:
        rows = plain_rows(rows)
    if fmt == "jsonl":
        with target.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        return target, len(rows)
    from datasets import Dataset

    dataset = Dataset.from_list(rows) if rows else Dataset.from_dict({k: [] for k in TRL_COLUMNS})
    if fmt == "parquet":
        dataset.to_parquet(str(target))
    else:
        if target.exists():
            target.rmdir()  # save_to_disk wants to create it; we checked it is empty
        dataset.save_to_disk(str(target))
    return target, len(rows)
