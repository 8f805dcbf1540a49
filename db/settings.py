"""Project settings: one row per key, JSON values, with their defaults and limits.

Every write is checked here, whoever writes (CLI, app, a script), so no path can store NaN, a
negative queue or an unknown key. Reading text from a person (JSON or plain) and checking the
sampling block against the decoder's own rules is ``prefloop.service.settings``' job.
"""

from __future__ import annotations

import math
from typing import Any

from prefloop.db.connection import (
    Connection,
    dumps,
    loads,
)
from prefloop.db.vocab import CONTINUATION, SELECTIONS
from prefloop.errors import StoreError

DEFAULT_SETTINGS: dict[str, Any] = {
    "judgments_per_pair": 1,  # k: how many annotators want to see each pair
    "queue_target": 16,  # ready pairs the background sampler keeps per active version
    "gold_rate": 0.0,  # share of served pairs that are gold pairs, when any exist
    "min_new_pairs": 32,  # readiness gate for a training round
    "auto_train_every": 0,  # start a round every N new judgments; 0 = off
    # v0 on the starter prompts (README, "Cut-off rate"): with top-p 0.95 about 12% of answers
    # never end (12.5% still cut off at 1024 tokens), and a stronger repetition penalty makes it
    # worse (33% at 1.3). Trimming the tail does it: top-p 0.8 at 512 tokens cuts off 5.4% on the
    # 168 train prompts (chosen there) and 6.2% on the 48 held-out ones (checked once).
    "sampling": {"temperature": 0.9, "top_p": 0.8, "max_new_tokens": 512, "repetition_penalty": 1.1},
    # the evidence gate (prefloop.train.gate): why each default, see there
    "gate_share": 0.15,  # share of the queue sampled from the active version on held-out prompts
    "gate_min_rows": 30,  # held-out preference rows needed before a verdict; fewer: wait
    "gate_confidence": 0.99,  # one-sided level of the agreement bound (train/gate.py says why 99%)
    "gate_max_length_ratio": 1.3,  # candidate / parent mean response tokens on held-out prompts
    "gate_min_length_ratio": 0.5,
    "gate_max_chosen_logp_drop": 0.3,  # nats per token the chosen answers may lose vs the parent
    "gate_max_kl": 0.15,  # KL(parent || candidate), nats per token, on the parent's held-out samples
    "gate_max_cutoff_increase": 0.15,  # candidate's cut-off rate minus the parent's, on held-out prompts
    "thumbs_share": 0.0,  # share of the train queue that is single answers judged thumbs up/down
    # who writes a conversation's next user turn after a vote: off | same_annotator | anyone
    "continuation": "same_annotator",
    # a conversation longer than this (templated tokens) loses its earliest turns, the same way
    # in sampling and in training (engine/history.py); RoundConfig.max_prompt_length's default
    "history_token_budget": 384,
    # who decodes: {"kind": "torch"} (the built-in loop) or {"kind": "vllm", "url": ...}; engine/engines.py
    "engine": {"kind": "torch"},
    # what the sampler queues (annotate/selection.py, README "Choosing what people judge")
    "selection": "random",  # random | active; random until a measurement shows active needs fewer judgments
    "candidates_per_prompt": 4,  # answers sampled per prompt in one decode batch under active selection
    "random_pair_share": 0.25,  # share of queued train pairs still chosen at random: unbiased evaluation data
    # under active selection, the share of a batch's (non-random) prompts that get a pair: those whose
    # candidates the model is least sure of. 1.0 = no prompt choice; below 1 costs decode time per pair
    "active_prompt_share": 1.0,
}


# (kind, minimum, maximum) for the settings whose range matters; others are type-checked only
SETTING_RANGES: dict[str, tuple[type, float, float | None]] = {
    "judgments_per_pair": (int, 1, None),
    "queue_target": (int, 0, None),
    "gold_rate": (float, 0.0, 1.0),
    "min_new_pairs": (int, 0, None),
    "auto_train_every": (int, 0, None),
    "gate_share": (float, 0.0, 0.9),
    "gate_min_rows": (int, 1, None),
    "gate_confidence": (float, 0.5, 0.9999),
    "gate_max_length_ratio": (float, 1.0, None),
    "gate_min_length_ratio": (float, 0.0, 1.0),
    "gate_max_chosen_logp_drop": (float, 0.0, None),
    "gate_max_kl": (float, 0.0, None),
    "gate_max_cutoff_increase": (float, 0.0, 1.0),
    "thumbs_share": (float, 0.0, 1.0),
    "history_token_budget": (int, 16, 32768),
    "candidates_per_prompt": (int, 2, 16),
    "random_pair_share": (float, 0.0, 1.0),
    "active_prompt_share": (float, 0.05, 1.0),
}
SETTING_CHOICES: dict[str, tuple[str, ...]] = {"continuation": CONTINUATION, "selection": SELECTIONS}
MAX_SETTING_NUMBER = 1_000_000_000  # larger counts cannot be meant, and overflow SQLite integers


def check_setting(key: str, value: Any) -> Any:
    """``value`` if it may be stored under ``key``; a clear StoreError otherwise."""
    if key not in DEFAULT_SETTINGS:
        known = ", ".join(sorted(DEFAULT_SETTINGS))
        raise StoreError(f"unknown setting {key!r}; known settings: {known}")
    if key in SETTING_RANGES:
        kind, low, high = SETTING_RANGES[key]
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not is_number or (kind is int and not isinstance(value, int)):
            what = "a whole number" if kind is int else "a number"
            raise StoreError(f"{key} must be {what}, not {value!r}")
        if not math.isfinite(value):
            raise StoreError(f"{key} must be a finite number, not {value!r}")
        if abs(value) > MAX_SETTING_NUMBER:
            raise StoreError(f"{key} is too large (at most {MAX_SETTING_NUMBER:,})")
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise StoreError(f"{key} must be {bound}, not {value}")
        return value
    if key in SETTING_CHOICES and value not in SETTING_CHOICES[key]:
        raise StoreError(f"{key} must be one of {', '.join(SETTING_CHOICES[key])}, not {value!r}")
    default = DEFAULT_SETTINGS[key]
    if default is not None and not isinstance(value, type(default)):
        raise StoreError(f"{key} must be {type(default).__name__}, not {value!r}")
    return value


class SettingsQueries(Connection):
    """Mixed into :class:`prefloop.db.store.Store`; SQL for this aggregate only."""

    def get_setting(self, key: str) -> Any:
        value = self.scalar("select value from settings where key = ?", [key])
        if value is None:
            if key not in DEFAULT_SETTINGS:
                raise StoreError(f"unknown setting {key!r}")
            return DEFAULT_SETTINGS[key]
        return loads(value)

    def set_setting(self, key: str, value: Any) -> None:
        check_setting(key, value)
        with self.write() as db:
            db.execute(
                "insert into settings (key, value) values (?, ?) "
                "on conflict(key) do update set value = excluded.value",
                [key, dumps(value)],
            )

    def all_settings(self) -> dict[str, Any]:
        return {key: self.get_setting(key) for key in DEFAULT_SETTINGS}
