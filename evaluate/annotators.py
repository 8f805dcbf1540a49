"""The annotator dashboard: how each person votes, and who needs a second look.

Preference data is only as good as the people behind it, and the usual failure modes are
visible in plain counts long before they poison a round: clicking one side (position bias),
clicking fast, hiding in "tie", missing gold pairs, disagreeing with everybody else. Per
annotator this reports

* votes, active days and votes per active day (with the per-day counts);
* the median seconds per vote (the time from the pair appearing to the vote);
* the shares of ties and of both-bad votes;
* position bias: among decisive votes (a or b), the share that picked the side shown left
  (the store randomises sides, so an honest annotator sits near 0.5);
* gold accuracy (votes on gold pairs that match the known answer);
* agreement with others: over pairs someone else also judged, the share of (their vote,
  other vote) pairs that match, in generation terms;

and flags outliers with the reason, each only once the count behind it says something.

The core is a plain function of ``store.judgments()`` rows, so a test can check every number
against values computed by hand; ``annotator_dashboard(store)`` reads the database.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict

from prefloop.db.store import Store

# A flag needs enough votes behind it to mean something, and a gap large enough to matter.
MIN_DECISIVE_FOR_BIAS = 20  # position bias: below this, 70/30 happens by chance too often
Z_95 = 1.959963984540054  # two-sided 95%: the Wilson interval of the left share must exclude 0.5
MIN_GOLD = 5  # gold accuracy needs a handful of gold votes
GOLD_FLOOR = 0.6  # below this on gold pairs, the annotator is guessing or misreading the task
FAST_SECONDS = 2.0  # median under 2 s per vote: nobody reads two answers that fast
MIN_VOTES_FOR_SPEED = 10
SHARE_CEILING = 0.5  # half or more of the votes as tie (or as both-bad) says little about quality
MIN_VOTES_FOR_SHARES = 10
MIN_SHARED_FOR_AGREEMENT = 10
AGREEMENT_FLOOR = 0.4  # with four categories, chance agreement is about 0.25-0.4


def _wilson(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denominator = 1 + z * z / n
    return (centre - spread) / denominator, (centre + spread) / denominator


def _picked_left(j: dict) -> bool:
    chosen = j["generation_a_id"] if j["choice"] == "a" else j["generation_b_id"]
    return chosen == j["left_generation_id"]


def annotator_stats(judgments: list[dict]) -> list[dict]:
    """One row per annotator (by name) from ``store.judgments()`` rows; sorted by votes."""
    by_annotator: dict[str, list[dict]] = defaultdict(list)
    by_pair: dict[int, list[dict]] = defaultdict(list)
    for j in judgments:
        by_annotator[j["annotator"]].append(j)
        by_pair[j["pair_id"]].append(j)

    rows = []
    for name, votes in by_annotator.items():
        n = len(votes)
        per_day = Counter(j["created_at"][:10] for j in votes)
        seconds = [j["elapsed_ms"] / 1000 for j in votes if j.get("elapsed_ms") is not None]
        choices = Counter(j["choice"] for j in votes)
        decisive = [j for j in votes if j["choice"] in ("a", "b")]
        left = sum(_picked_left(j) for j in decisive)
        gold = [j for j in votes if j["purpose"] == "gold" and j.get("gold_choice")]
        gold_right = sum(j["choice"] == j["gold_choice"] for j in gold)
        matches = comparisons = 0
        for j in votes:
            for other in by_pair[j["pair_id"]]:
                if other["annotator"] != name:
                    comparisons += 1
                    matches += other["choice"] == j["choice"]
        row = {
            "annotator": name,
            "votes": n,
            "active_days": len(per_day),
            "votes_per_day": n / len(per_day),
            "votes_by_day": dict(sorted(per_day.items())),
            "median_seconds": statistics.median(seconds) if seconds else None,
            "tie_share": choices["tie"] / n,
            "both_bad_share": choices["both_bad"] / n,
            "decisive": len(decisive),
            "left_share": left / len(decisive) if decisive else None,
            "gold_votes": len(gold),
            "gold_accuracy": gold_right / len(gold) if gold else None,
            "shared_comparisons": comparisons,
            "agreement": matches / comparisons if comparisons else None,
        }
        row["flags"] = _flags(row, left)
        rows.append(row)
    return sorted(rows, key=lambda r: (-r["votes"], r["annotator"]))


def _flags(row: dict, left: int) -> list[str]:
    flags = []
    if row["decisive"] >= MIN_DECISIVE_FOR_BIAS:
        low, high = _wilson(left, row["decisive"])
        if low > 0.5 or high < 0.5:
            side = "left" if low > 0.5 else "right"
            flags.append(f"position bias: picks the {side} side {row['left_share']:.0%} of the time")
    if row["gold_votes"] >= MIN_GOLD and row["gold_accuracy"] < GOLD_FLOOR:
        flags.append(f"gold accuracy {row['gold_accuracy']:.0%} on {row['gold_votes']} gold pairs")
    if (row["median_seconds"] is not None and row["votes"] >= MIN_VOTES_FOR_SPEED
            and row["median_seconds"] < FAST_SECONDS):
        flags.append(f"fast: median {row['median_seconds']:.1f} s per vote")
    if row["votes"] >= MIN_VOTES_FOR_SHARES:
        for key, label in (("tie_share", "ties"), ("both_bad_share", "both-bad votes")):
            if row[key] >= SHARE_CEILING:
                flags.append(f"{row[key]:.0%} {label}")
    if (row["shared_comparisons"] >= MIN_SHARED_FOR_AGREEMENT and row["agreement"] is not None
            and row["agreement"] < AGREEMENT_FLOOR):
        flags.append(f"agrees with others {row['agreement']:.0%} of the time")
    return flags


def annotator_dashboard(store: Store) -> list[dict]:
    """The dashboard rows for every judgment in the home (live, arena, gold and train pairs)."""
    return annotator_stats(store.judgments())
