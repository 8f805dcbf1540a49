"""One evaluation report for the CLI (`prefloop eval`), the Evaluate tab and the plots.

Gathers, from the database only: the leaderboard (Bradley-Terry ratings of versions from blind
arena battles, with bootstrap intervals, and win/tie/loss per pair of versions), each version's
win rate against the base, held-out preference accuracy per version (from its round's metrics,
or computed with ``prefloop.engine.heldout`` when asked), text statistics per version and annotator
agreement. Everything in it is JSON-serialisable.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from prefloop.db.store import Store
from prefloop.engine.heldout import preference_accuracy
from prefloop.evaluate import agreement, arena, autostats
from prefloop.train.dataset import build_preference_rows

ACCURACY_KEYS = ("heldout_accuracy", "preference_accuracy", "heldout_preference_accuracy")


def leaderboard(store: Store, *, bootstrap: int = 1000, seed: int = 0) -> dict:
    battles = arena.battles_from_store(store)
    base = _base_name(store)
    ratings = arena.bradley_terry(battles, anchor=base, bootstrap=bootstrap, seed=seed)
    versions = [r.version for r in ratings]
    vs_base = [
        arena.win_rate(battles, v, base).to_dict() for v in versions if base and v != base
    ]
    return {
        "battles": len(battles),
        "anchor": base,
        "ratings": [r.to_dict() for r in ratings],
        "win_tie_loss": arena.win_tie_loss(battles),
        "win_rate_vs_base": [w for w in vs_base if w["battles"]],
        "pairwise_win_rates": [w.to_dict() for w in arena.pairwise_win_rates(battles)],
    }


def version_rows(store: Store) -> list[dict]:
    """Each version with the round that made it (method, size, accuracy where recorded)."""
    made_by = {r["new_version_id"]: r for r in store.list_rounds() if r.get("new_version_id")}
    rows = []
    for index, version in enumerate(store.list_versions()):
        made = made_by.get(version["id"])
        metrics = (made or {}).get("metrics") or {}
        accuracy = next((metrics[k] for k in ACCURACY_KEYS if isinstance(metrics.get(k), (int, float))), None)
        rows.append(
            {
                "version": version["name"],
                "index": index,
                "status": version["status"],
                "parent": (store.version(version["parent_id"]) or {}).get("name") if version["parent_id"] else None,
                "round_id": made["id"] if made else None,
                "method": made["method"] if made else version["card"].get("method"),
                "dataset_size": made.get("dataset_size") if made else None,
                "heldout_accuracy": accuracy,
                "gate": _gate_summary(metrics.get("gate")),
            }
        )
    return rows


def fill_heldout_accuracy(store: Store, rows: list[dict], progress: Callable[[str], None] | None = None) -> None:
    """Compute held-out preference accuracy where no round recorded it (loads each version)."""
    missing = [r for r in rows if r["heldout_accuracy"] is None and r["parent"]]
    if not missing:
        return
    heldout = build_preference_rows(store, split="heldout")
    if not heldout:
        return
    for row in missing:
        if progress:
            progress(f"held-out accuracy of {row['version']} ({len(heldout)} rows)")
        row["heldout_accuracy"] = preference_accuracy(store, row["version"], heldout)
        row["heldout_rows"] = len(heldout)


def build_report(
    store: Store,
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    compute_accuracy: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    versions = version_rows(store)
    if compute_accuracy:
        fill_heldout_accuracy(store, versions, progress)
    board = leaderboard(store, bootstrap=bootstrap, seed=seed)
    stats = {r["version"]: r for r in autostats.autostats(store, baseline=board["anchor"] or "v0")}
    rating = {r["version"]: r for r in board["ratings"]}
    vs_base = {w["version"]: w for w in board["win_rate_vs_base"]}
    for row in versions:
        row["rating"] = rating.get(row["version"], {}).get("rating")
        row["win_rate_vs_base"] = vs_base.get(row["version"], {}).get("win_rate")
        row["win_rate_ci"] = [vs_base[row["version"]]["ci_low"], vs_base[row["version"]]["ci_high"]] \
            if row["version"] in vs_base else None
        for key in ("mean_words", "distinct_2", "refusal_rate", "length_ratio", "cutoff_rate"):
            row[key] = stats.get(row["version"], {}).get(key)
    return _clean(
        {
            "leaderboard": board,
            "versions": versions,
            "autostats": list(stats.values()),
            "agreement": agreement.agreement_report(store),
        }
    )


def _gate_summary(verdict: dict | None) -> dict | None:
    """The gate's verdict on the round that made a version (issue 14's evidence gate), or None."""
    if not isinstance(verdict, dict) or "decision" not in verdict:
        return None
    return {k: verdict.get(k) for k in ("decision", "reason", "rows", "accuracy", "lower_bound", "failed_guards")}


def _base_name(store: Store) -> str | None:
    versions = store.list_versions()
    if not versions:
        return None
    return store.version_chain(versions[-1]["name"])[0]["name"]


def _clean(value):
    """NaN -> None, so the JSON is valid everywhere."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value
