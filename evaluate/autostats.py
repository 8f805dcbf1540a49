"""Cheap text statistics per version: length, diversity, refusals, and drift from v0.

Preference training has well known failure modes that need no human to spot: DPO tends to make
answers longer round after round (length is the easiest signal to exploit), and a collapsing
model repeats itself (distinct-n falls) or starts refusing. These numbers, computed from stored
generations on held-out prompts, show that next to the human-facing metrics.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from typing import Iterable

REFUSAL_PHRASES = (
    "i'm sorry",
    "i am sorry",
    "i cannot",
    "i can't",
    "i can not",
    "i'm unable",
    "i am unable",
    "i'm not able to",
    "i am not able to",
    "as an ai",
    "i won't be able",
)
_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks: a tokenizer-free unit for length and distinct-n."""
    return _WORD.findall((text or "").lower())


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Unique n-grams / all n-grams over a set of answers (Li et al. 2016); 0 when none."""
    total, seen = 0, set()
    for text in texts:
        tokens = words(text)
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def is_refusal(text: str) -> bool:
    """An answer that opens (first 120 characters) with a refusal phrase."""
    head = (text or "").strip().lower().replace("\u2019", "'")[:120]
    return any(phrase in head for phrase in REFUSAL_PHRASES)


def text_stats(texts: list[str], completion_tokens: list[int | None] | None = None) -> dict:
    """Length (words and, where recorded, tokens), distinct-1/2 and refusal rate of answers."""
    lengths = [len(words(t)) for t in texts]
    tokens = [t for t in (completion_tokens or []) if t is not None]
    return {
        "answers": len(texts),
        "mean_words": statistics.fmean(lengths) if lengths else 0.0,
        "median_words": statistics.median(lengths) if lengths else 0.0,
        "mean_tokens": statistics.fmean(tokens) if tokens else None,
        "mean_chars": statistics.fmean(len(t) for t in texts) if texts else 0.0,
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "refusal_rate": sum(map(is_refusal, texts)) / len(texts) if texts else 0.0,
        "empty_rate": sum(not t.strip() for t in texts) / len(texts) if texts else 0.0,
    }


def stats_by_version(rows: Iterable[dict], baseline: str = "v0") -> list[dict]:
    """Rows with ``version``, ``text`` (and ``completion_tokens``) -> one stats dict per version.

    ``length_ratio`` is mean words relative to ``baseline`` (None when it has no answers).
    ``cutoff_rate`` is the share of answers that hit max_new_tokens (``finish_reason`` "length"),
    among those whose finish reason is recorded (None when none is).
    """
    texts: dict[str, list[str]] = defaultdict(list)
    tokens: dict[str, list] = defaultdict(list)
    finishes: dict[str, list] = defaultdict(list)
    order: list[str] = []
    for row in rows:
        if row["version"] not in texts:
            order.append(row["version"])
        texts[row["version"]].append(row["text"])
        tokens[row["version"]].append(row.get("completion_tokens"))
        if row.get("finish_reason"):
            finishes[row["version"]].append(row["finish_reason"])
    table = [{"version": v, **text_stats(texts[v], tokens[v]),
              "cutoff_rate": (sum(f == "length" for f in finishes[v]) / len(finishes[v])) if finishes[v] else None}
             for v in order]
    base = next((r for r in table if r["version"] == baseline), None)
    for row in table:
        row["length_ratio"] = (
            row["mean_words"] / base["mean_words"] if base and base["mean_words"] else None
        )
    return table


def autostats(store, split: str | None = "heldout", baseline: str = "v0") -> list[dict]:
    """Per-version stats from the store's generations on ``split`` prompts (all when None)."""
    return stats_by_version(store.generation_texts(split=split), baseline=baseline)
