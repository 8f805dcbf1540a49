"""Blind version-vs-version battles: win/tie/loss, Bradley-Terry ratings, bootstrap intervals.

A battle is a plain tuple ``(model_a, model_b, outcome)`` with outcome one of ``"a"``, ``"b"``,
``"tie"``, ``"both_bad"``: the functions here never touch the database, so they are tested on
synthetic votes with known strengths. ``battles_from_store`` turns arena judgments into tuples.

Scoring conventions (the same everywhere in this module):

* a tie counts as half a win for each side (the Chatbot Arena convention);
* "both bad" is also scored as a tie: it says neither side was better, which is what a rating
  can use. The win/tie/loss table still counts it separately as ``both_bad``.

Ratings are a Bradley-Terry fit by maximum likelihood (Newton's method on the log-likelihood,
numpy only, with a very weak L2 pull towards equal strength so a version that won every battle
gets a large finite rating instead of an infinite one), reported on the Elo scale:
``rating = anchor + 400 * log10(strength ratio)``, with v0 at 1000 when it took part (the mean
at 1000 otherwise). Intervals come from resampling battles with replacement.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from prefloop.db.vocab import CHOICES

OUTCOMES = CHOICES  # a battle outcome is a vote
SCORE_A = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}  # share of the point that goes to A
ELO_SCALE = 400.0 / math.log(10.0)  # natural-log strength -> Elo points
ANCHOR_RATING = 1000.0
L2_PULL = 1e-3  # in natural-log units; negligible with data, keeps undefeated versions finite

Battle = tuple[str, str, str]


@dataclass
class Rating:
    """One version's row of the leaderboard."""

    version: str
    rating: float
    ci_low: float | None = None
    ci_high: float | None = None
    battles: int = 0
    wins: int = 0
    ties: int = 0  # tie and both_bad together
    losses: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class WinRate:
    """How often ``version`` beat ``opponent`` (ties count half), with a 95% interval."""

    version: str
    opponent: str
    win_rate: float
    ci_low: float
    ci_high: float
    battles: int
    wins: int = 0
    ties: int = 0
    losses: int = 0
    method: str = "wilson"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = dict(self.__dict__)
        data.update(data.pop("extra"))
        return data


# --------------------------------------------------------------------------------------------
# input
# --------------------------------------------------------------------------------------------
def check_battles(battles: Iterable[Sequence[str]]) -> list[Battle]:
    """Validate and normalise; battles of a version against itself carry no information."""
    clean = []
    for battle in battles:
        model_a, model_b, outcome = battle
        if outcome not in OUTCOMES:
            raise ValueError(f"battle outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
        if model_a != model_b:
            clean.append((str(model_a), str(model_b), outcome))
    return clean


def battles_from_judgments(judgments: Iterable[dict]) -> list[Battle]:
    """Judgment rows (``store.judgments()``) -> battles between two different versions."""
    return check_battles(
        (j["version_a"], j["version_b"], j["choice"])
        for j in judgments
        if j["version_a"] != j["version_b"]
    )


def battles_from_store(store) -> list[Battle]:
    return battles_from_judgments(store.judgments(purposes=("arena",)))


# --------------------------------------------------------------------------------------------
# counting
# --------------------------------------------------------------------------------------------
def win_tie_loss(battles: Iterable[Sequence[str]]) -> list[dict]:
    """One row per unordered version pair: wins of each side, ties, both-bad, total."""
    table: dict[tuple[str, str], dict] = {}
    for model_a, model_b, outcome in check_battles(battles):
        first, second = sorted((model_a, model_b), key=_version_key)
        row = table.setdefault(
            (first, second),
            {"version_a": first, "version_b": second, "wins_a": 0, "wins_b": 0, "ties": 0,
             "both_bad": 0, "battles": 0},
        )
        row["battles"] += 1
        if outcome in ("tie", "both_bad"):
            row["ties" if outcome == "tie" else "both_bad"] += 1
        else:
            winner = model_a if outcome == "a" else model_b
            row["wins_a" if winner == first else "wins_b"] += 1
    return [table[k] for k in sorted(table, key=lambda k: (_version_key(k[0]), _version_key(k[1])))]


def version_records(battles: Iterable[Sequence[str]]) -> dict[str, dict]:
    """Per version: battles, wins, ties (tie + both bad) and losses against anyone."""
    records: dict[str, dict] = defaultdict(lambda: {"battles": 0, "wins": 0, "ties": 0, "losses": 0})
    for model_a, model_b, outcome in check_battles(battles):
        score = SCORE_A[outcome]
        for model, mine in ((model_a, score), (model_b, 1.0 - score)):
            record = records[model]
            record["battles"] += 1
            record["wins" if mine == 1.0 else "losses" if mine == 0.0 else "ties"] += 1
    return dict(records)


# --------------------------------------------------------------------------------------------
# Bradley-Terry
# --------------------------------------------------------------------------------------------
def _aggregate(battles: list[Battle], versions: list[str]):
    """Index arrays for the battles: (i, j, score of i) per battle."""
    index = {v: k for k, v in enumerate(versions)}
    i = np.fromiter((index[a] for a, _, _ in battles), dtype=np.int64, count=len(battles))
    j = np.fromiter((index[b] for _, b, _ in battles), dtype=np.int64, count=len(battles))
    s = np.fromiter((SCORE_A[o] for _, _, o in battles), dtype=np.float64, count=len(battles))
    return i, j, s


def _fit_strengths(i, j, s, weights, n: int, iterations: int = 100) -> np.ndarray:
    """Natural-log strengths (mean zero) maximising the weighted BT log-likelihood.

    Newton's method on a concave objective; with a handful of versions each step is a tiny
    linear solve, so a thousand bootstrap refits take well under a second.
    """
    # aggregate weighted battles into per-ordered-pair totals: (n x n) counts and A-scores
    counts = np.zeros((n, n))
    scores = np.zeros((n, n))
    np.add.at(counts, (i, j), weights)
    np.add.at(scores, (i, j), weights * s)
    theta = np.zeros(n)
    for _ in range(iterations):
        diff = theta[:, None] - theta[None, :]
        p = 1.0 / (1.0 + np.exp(-diff))  # P(row beats column)
        resid = scores - counts * p  # d loglik / d diff for each ordered pair
        grad = resid.sum(axis=1) - resid.sum(axis=0) - 2 * L2_PULL * theta
        w = counts * p * (1 - p)
        w = w + w.T
        hessian = -np.diag(w.sum(axis=1)) + w - 2 * L2_PULL * np.eye(n)
        step = np.linalg.solve(hessian, grad)
        theta = theta - step
        if np.max(np.abs(step)) < 1e-9:
            break
    return theta - theta.mean()


def _to_elo(theta: np.ndarray, versions: list[str], anchor: str | None) -> np.ndarray:
    elo = ELO_SCALE * theta
    if anchor is not None and anchor in versions:
        return elo - elo[versions.index(anchor)] + ANCHOR_RATING
    return elo - elo.mean() + ANCHOR_RATING


def bradley_terry(
    battles: Iterable[Sequence[str]],
    *,
    anchor: str | None = "v0",
    bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> list[Rating]:
    """Leaderboard: Elo-scale BT ratings with percentile bootstrap intervals, best first.

    ``bootstrap=0`` skips the intervals. ``anchor`` (default v0) is pinned at 1000 when present,
    so its own interval is a point; the other intervals are then "relative to v0".
    """
    clean = check_battles(battles)
    if not clean:
        return []
    versions = sorted({v for a, b, _ in clean for v in (a, b)}, key=_version_key)
    n = len(versions)
    i, j, s = _aggregate(clean, versions)
    ones = np.ones(len(clean))
    point = _to_elo(_fit_strengths(i, j, s, ones, n), versions, anchor)
    low = high = [None] * n
    if bootstrap:
        samples = bootstrap_ratings(clean, versions, anchor=anchor, rounds=bootstrap, seed=seed)
        tail = (1 - confidence) / 2 * 100
        low = np.percentile(samples, tail, axis=0)
        high = np.percentile(samples, 100 - tail, axis=0)
    records = version_records(clean)
    table = [
        Rating(
            version=v,
            rating=float(point[k]),
            ci_low=None if low[k] is None else float(low[k]),
            ci_high=None if high[k] is None else float(high[k]),
            **records[v],
        )
        for k, v in enumerate(versions)
    ]
    return sorted(table, key=lambda r: -r.rating)


def bootstrap_ratings(
    battles: list[Battle], versions: list[str], *, anchor: str | None, rounds: int, seed: int
) -> np.ndarray:
    """(rounds x versions) Elo ratings, each fitted on battles resampled with replacement."""
    rng = np.random.default_rng(seed)
    i, j, s = _aggregate(battles, versions)
    n_battles = len(battles)
    out = np.empty((rounds, len(versions)))
    for r in range(rounds):
        # resampling with replacement == multinomial weights on the original battles
        weights = rng.multinomial(n_battles, np.full(n_battles, 1.0 / n_battles)).astype(float)
        out[r] = _to_elo(_fit_strengths(i, j, s, weights, len(versions)), versions, anchor)
    return out


def expected_score(rating_a: float, rating_b: float) -> float:
    """P(A beats B) implied by two Elo-scale ratings."""
    return 1.0 / (1.0 + 10 ** ((rating_b - rating_a) / 400.0))


# --------------------------------------------------------------------------------------------
# head to head
# --------------------------------------------------------------------------------------------
def head_to_head_scores(battles: Iterable[Sequence[str]], version: str, opponent: str) -> list[float]:
    """``version``'s score (1, 0.5 or 0) in each battle against ``opponent``."""
    out = []
    for model_a, model_b, outcome in check_battles(battles):
        if (model_a, model_b) == (version, opponent):
            out.append(SCORE_A[outcome])
        elif (model_a, model_b) == (opponent, version):
            out.append(1.0 - SCORE_A[outcome])
    return out


def win_rate(
    battles: Iterable[Sequence[str]],
    version: str,
    opponent: str,
    *,
    method: str = "wilson",
    confidence: float = 0.95,
    bootstrap: int = 2000,
    seed: int = 0,
) -> WinRate:
    """Share of points ``version`` took from ``opponent`` (ties half) with a 95% interval.

    ``wilson``: the Wilson score interval with the score as the proportion (well behaved at
    0% and 100%, where a percentile bootstrap collapses to a point); ``bootstrap``: percentile
    interval over resampled battles (seeded).
    """
    scores = np.asarray(head_to_head_scores(battles, version, opponent), dtype=float)
    n = len(scores)
    wins, ties = int((scores == 1).sum()), int((scores == 0.5).sum())
    losses = n - wins - ties
    if n == 0:
        return WinRate(version, opponent, float("nan"), float("nan"), float("nan"), 0, method=method)
    rate = float(scores.mean())
    if method == "wilson":
        low, high = wilson_interval(rate, n, confidence)
    elif method == "bootstrap":
        rng = np.random.default_rng(seed)
        means = scores[rng.integers(0, n, size=(bootstrap, n))].mean(axis=1)
        tail = (1 - confidence) / 2 * 100
        low, high = (float(x) for x in np.percentile(means, [tail, 100 - tail]))
    else:
        raise ValueError(f"method must be 'wilson' or 'bootstrap', not {method!r}")
    return WinRate(version, opponent, rate, low, high, n, wins, ties, losses, method)


def pairwise_win_rates(battles: Iterable[Sequence[str]], **options) -> list[WinRate]:
    """``win_rate`` for every two versions that met, the later version first (v2 vs v1)."""
    clean = check_battles(battles)
    return [
        win_rate(clean, row["version_b"], row["version_a"], **options) for row in win_tie_loss(clean)
    ]


def wilson_interval(p: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    z = _normal_quantile(0.5 + confidence / 2)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _normal_quantile(q: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(q)


def _version_key(name: str):
    """v2 before v10; anything else after, alphabetically."""
    if name[:1] == "v" and name[1:].isdigit():
        return (0, int(name[1:]), name)
    return (1, 0, name)
