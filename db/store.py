"""The database: every SQL statement prefloop runs, behind one ``Store`` object.

Everything in the loop (prompts, model versions, generations, pairs, judgments, rounds) lives in
one SQLite file under the home folder. ``Store`` is the connection plus one query module per
aggregate (accounts, prompts, versions, pairs, judgments, rounds, settings, transfer), so
"what can touch this table?" has one short file as its answer. Callers hold one ``Store``.
"""

from __future__ import annotations

from prefloop.db.accounts import AccountQueries
from prefloop.db.connection import (
    Connection,
    content_hash,
    dumps,
    loads,
    now,
    prefloop_home,
)
from prefloop.db.guidelines import GuidelineQueries
from prefloop.db.judgments import JudgmentQueries
from prefloop.db.pairs import PairQueries
from prefloop.db.prompts import PromptQueries
from prefloop.db.rounds import RoundQueries
from prefloop.db.settings import DEFAULT_SETTINGS, SettingsQueries
from prefloop.db.transfer import TransferQueries
from prefloop.db.versions import VersionQueries
from prefloop.db.vocab import (
    CHOICES,
    CONTINUATION,
    PAIR_MODES,
    PAIR_PURPOSES,
    ROLES,
    SELECTIONS,
    SPLITS,
    THUMBS,
)
from prefloop.errors import StoreError

__all__ = [
    "CHOICES", "CONTINUATION", "DEFAULT_SETTINGS", "PAIR_MODES", "PAIR_PURPOSES", "THUMBS", "ROLES", "SELECTIONS",
    "SPLITS", "Store", "StoreError",
    "content_hash", "dumps", "loads", "now", "prefloop_home",
]


class Store(
    AccountQueries,
    PromptQueries,
    VersionQueries,
    PairQueries,
    JudgmentQueries,
    RoundQueries,
    SettingsQueries,
    TransferQueries,
    GuidelineQueries,
    Connection,
):
    """The one gateway to ``prefloop.db``. Cheap to create; thread safe (a connection per thread)."""
