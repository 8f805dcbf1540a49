"""Judgments -> unpaired rows: KTO's labelled answers and SFT's demonstrations.

The same judgments as the preference rows, taken the same way (prefloop.train.dataset: the split
and purpose rules, windows by pair, every vote of a pair aggregated together by plurality, cut-off
answers marked). What differs is what one pair's votes become.

KTO rows, ``{"prompt": messages, "completion": [assistant message], "label": bool}``:

* a or b wins the plurality: the winner is desirable, the loser undesirable (two rows).
* both_bad wins: both answers are undesirable (two rows). DPO can learn nothing from this vote.
* tie wins, or two choices share first place: nothing. A tie says how two answers compare, not
  whether either is good.
* A better answer written by anyone, with any vote, is desirable (one row per distinct text; written
  by a person, so never cut off). One that repeats an answer of the pair adds no row: it is that
  answer, and the votes already judged it.
* Thumbs (a single answer, mode ``single``, votes ``up`` / ``down``): the plurality decides, up is
  desirable and down undesirable; a draw gives nothing.
* Each answer row carries ``cut_off`` (the answer hit max_new_tokens): KTO trains it without the
  end-of-turn token, as DPO does (prefloop.train.recipe), so a cut-off answer never teaches "stop here".

SFT rows, ``{"prompt", "completion"}``:

* Every written better answer (one row per distinct text).
* With ``chosen_margin`` m >= 1 (RoundConfig.sft_chosen_margin; 0 leaves this out): the plurality
  winner of a pair when its votes outnumber those for the other answer by at least m (a thumbs-up
  answer when its up votes outnumber its down votes by m), unless it was cut off: imitating an
  answer that stops mid-sentence teaches stopping mid-sentence.

Every row also carries lineage: ``pair_id``, ``prompt_id``, ``purpose``, ``version`` and
``generation_id`` of the answer (None for a written one), ``source`` and ``judgment_ids``.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

from prefloop.db.store import Store
from prefloop.train.dataset import is_cut_off, plurality, prompt_messages, votes_by_pair

THUMBS = ("up", "down")


def build_kto_rows(store: Store, split: str = "train", pair_ids: Iterable[int] | None = None) -> list[dict]:
    """KTO rows from the judgments of ``split`` (only on ``pair_ids`` when given: a round's window)."""
    rows: list[dict] = []
    for votes in votes_by_pair(store, split=split, pair_ids=pair_ids):
        rows.extend(_kto_rows_for_pair(votes))
    return rows


def build_sft_rows(
    store: Store, chosen_margin: int = 0, split: str = "train", pair_ids: Iterable[int] | None = None
) -> list[dict]:
    """SFT rows: written better answers, and with ``chosen_margin`` >= 1 the clear winners."""
    rows: list[dict] = []
    for votes in votes_by_pair(store, split=split, pair_ids=pair_ids):
        rows.extend(_sft_rows_for_pair(votes, chosen_margin))
    return rows


def is_single(judgment: dict) -> bool:
    """A thumbs item: one answer shown alone (no second generation)."""
    return judgment.get("mode") == "single" or judgment.get("generation_b_id") is None


def _kto_rows_for_pair(votes: list[dict]) -> list[dict]:
    first = votes[0]
    every_vote = [v["id"] for v in votes]
    rows = []
    winner = plurality(v["choice"] for v in votes)
    if is_single(first):
        if winner in THUMBS:
            rows.append(_answer_row(first, "a", f"thumbs:{winner}", every_vote, label=winner == "up"))
    elif winner in ("a", "b"):
        loser = "b" if winner == "a" else "a"
        rows.append(_answer_row(first, winner, f"winner:{winner}", every_vote, label=True))
        rows.append(_answer_row(first, loser, f"loser:{loser}", every_vote, label=False))
    elif winner == "both_bad":
        rows.extend(_answer_row(first, side, f"both_bad:{side}", every_vote, label=False) for side in ("a", "b"))
    shown = {(first.get(f"text_{side}") or "").strip() for side in ("a", "b")}
    for vote, better in _better_answers(votes):
        if better not in shown:
            rows.append(_written_row(first, vote, better, label=True))
    return rows


def _sft_rows_for_pair(votes: list[dict], chosen_margin: int) -> list[dict]:
    first = votes[0]
    rows = []
    if chosen_margin >= 1:
        counts = Counter(v["choice"] for v in votes)
        winner = plurality(v["choice"] for v in votes)
        if is_single(first):
            clear = winner == "up" and counts["up"] - counts["down"] >= chosen_margin
            side = "a"
        else:
            side = winner if winner in ("a", "b") else None
            clear = side is not None and counts[side] - counts["b" if side == "a" else "a"] >= chosen_margin
        if clear and not is_cut_off(first.get(f"finish_reason_{side}")):
            row = _answer_row(first, side, "thumbs:up" if is_single(first) else f"chosen:{side}",
                              [v["id"] for v in votes])
            del row["cut_off"]  # never cut off: cut-off winners are left out above
            rows.append(row)
    taken = {row["completion"][0]["content"].strip() for row in rows}
    for vote, better in _better_answers(votes):
        if better not in taken:
            row = _written_row(first, vote, better)
            del row["cut_off"]
            rows.append(row)
    return rows


def _better_answers(votes: list[dict]) -> list[tuple[dict, str]]:
    """(vote, text) for each distinct written better answer, first writer first."""
    seen: set[str] = set()
    out = []
    for vote in votes:
        better = (vote.get("better_answer") or "").strip()
        if better and better not in seen:
            seen.add(better)
            out.append((vote, better))
    return out


def _lineage(first: dict) -> dict:
    return {"pair_id": first["pair_id"], "prompt_id": first["prompt_id"], "purpose": first["purpose"]}


def _answer_row(first: dict, side: str, source: str, judgment_ids: list[int], label: bool | None = None) -> dict:
    row = {"prompt": prompt_messages(first), "completion": _assistant(first[f"text_{side}"])}
    if label is not None:
        row["label"] = label
    return {
        **row,
        **_lineage(first),
        "version": first.get(f"version_{side}"),
        "generation_id": first.get(f"generation_{side}_id"),
        "cut_off": is_cut_off(first.get(f"finish_reason_{side}")),
        "source": source,
        "judgment_ids": judgment_ids,
    }


def _written_row(first: dict, vote: dict, text: str, label: bool | None = None) -> dict:
    row = {"prompt": prompt_messages(first), "completion": _assistant(text)}
    if label is not None:
        row["label"] = label
    return {
        **row,
        **_lineage(first),
        "version": None,
        "generation_id": None,
        "cut_off": False,  # written by a person: finished by definition
        "source": "better_answer",
        "judgment_ids": [vote["id"]],
    }


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def label_counts(rows: list[dict]) -> tuple[int, int]:
    """(desirable, undesirable) among KTO rows."""
    desirable = sum(1 for row in rows if row["label"])
    return desirable, len(rows) - desirable
