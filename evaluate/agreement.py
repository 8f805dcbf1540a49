"""Do annotators agree, with the known answers and with each other?

Low agreement means the preference data is noise and no training round can learn from it, so
maintainers look at this before trusting a round. Choices are compared in generation terms
(``a``/``b`` name generations, not screen sides, which the store already randomised and undid),
over the four categories a / b / tie / both_bad.

* gold accuracy: share of an annotator's votes on gold pairs that match the known answer;
* Cohen's kappa for every two annotators on the pairs both judged (chance-corrected);
* Krippendorff's alpha (nominal) over every pair judged by two or more people: one number for
  the whole team that copes with any number of annotators per pair.

The core functions take plain ``(pair_id, annotator, choice)`` votes so they are testable on
hand-made examples; ``agreement_report(store)`` reads judgments from the database.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import combinations
from typing import Iterable

from prefloop.db.store import CHOICES

Vote = tuple[int, str, str]  # (pair id, annotator name, choice)


def cohen_kappa(first: list[str], second: list[str]) -> float | None:
    """Kappa for two raters' labels of the same items; None where it is undefined.

    Undefined: no shared items, or both raters always used one and the same label (chance
    agreement is then 1, and there is no disagreement the statistic could measure).
    """
    if len(first) != len(second):
        raise ValueError("both raters must label the same items")
    n = len(first)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(first, second)) / n
    count_1, count_2 = Counter(first), Counter(second)
    expected = sum(count_1[c] * count_2[c] for c in set(first) | set(second)) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def krippendorff_alpha_nominal(units: Iterable[list[str]]) -> float | None:
    """Alpha for nominal labels; each unit is the list of labels it received (any length).

    Units with fewer than two labels carry no agreement information and are ignored.
    """
    coincidence: dict[tuple[str, str], float] = defaultdict(float)
    for labels in units:
        m = len(labels)
        if m < 2:
            continue
        for x, y in ((x, y) for i, x in enumerate(labels) for j, y in enumerate(labels) if i != j):
            coincidence[(x, y)] += 1.0 / (m - 1)
    totals: dict[str, float] = defaultdict(float)
    for (x, _), value in coincidence.items():
        totals[x] += value
    n = sum(totals.values())
    if n <= 1:
        return None
    observed_disagreement = sum(v for (x, y), v in coincidence.items() if x != y)
    expected_disagreement = sum(totals[x] * totals[y] for x in totals for y in totals if x != y)
    if expected_disagreement == 0:
        return None  # everyone always used one label: nothing to compare against chance
    return 1.0 - (n - 1) * observed_disagreement / expected_disagreement


def pairwise_kappas(votes: Iterable[Vote], min_shared: int = 1) -> list[dict]:
    """Cohen's kappa for every two annotators who judged at least ``min_shared`` same pairs."""
    by_annotator: dict[str, dict[int, str]] = defaultdict(dict)
    for pair_id, annotator, choice in votes:
        by_annotator[annotator][pair_id] = choice
    out = []
    for first, second in combinations(sorted(by_annotator), 2):
        shared = sorted(set(by_annotator[first]) & set(by_annotator[second]))
        if len(shared) < min_shared:
            continue
        labels_1 = [by_annotator[first][p] for p in shared]
        labels_2 = [by_annotator[second][p] for p in shared]
        out.append(
            {
                "annotator_1": first,
                "annotator_2": second,
                "shared_pairs": len(shared),
                "raw_agreement": sum(x == y for x, y in zip(labels_1, labels_2)) / len(shared),
                "kappa": cohen_kappa(labels_1, labels_2),
            }
        )
    return out


def gold_accuracy(gold_votes: Iterable[tuple[str, str, str]]) -> dict[str, dict]:
    """Per annotator, from ``(annotator, choice, gold_choice)``: votes and share correct."""
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for annotator, choice, gold in gold_votes:
        tally[annotator][0] += 1
        tally[annotator][1] += int(choice == gold)
    return {a: {"gold_votes": n, "gold_accuracy": ok / n} for a, (n, ok) in tally.items()}


def agreement_from_judgments(judgments: list[dict]) -> dict:
    """Everything the evaluate tab shows about agreement, from ``store.judgments()`` rows."""
    votes = [(j["pair_id"], j["annotator"], j["choice"]) for j in judgments]
    gold = gold_accuracy(
        (j["annotator"], j["choice"], j["gold_choice"])
        for j in judgments
        if j["purpose"] == "gold" and j.get("gold_choice") in CHOICES
    )
    kappas = pairwise_kappas(votes)
    by_pair: dict[int, list[str]] = defaultdict(list)
    for pair_id, _, choice in votes:
        by_pair[pair_id].append(choice)
    per_annotator = []
    counts = Counter(annotator for _, annotator, _ in votes)
    for annotator in sorted(counts):
        mine = [k["kappa"] for k in kappas if annotator in (k["annotator_1"], k["annotator_2"])
                and k["kappa"] is not None]
        per_annotator.append(
            {
                "annotator": annotator,
                "judgments": counts[annotator],
                "gold_votes": gold.get(annotator, {}).get("gold_votes", 0),
                "gold_accuracy": gold.get(annotator, {}).get("gold_accuracy"),
                "mean_kappa": sum(mine) / len(mine) if mine else None,
            }
        )
    return {
        "annotators": per_annotator,
        "pairwise": kappas,
        "krippendorff_alpha": krippendorff_alpha_nominal(by_pair.values()),
        "multiply_judged_pairs": sum(len(v) >= 2 for v in by_pair.values()),
    }


def agreement_report(store) -> dict:
    return agreement_from_judgments(store.judgments())
