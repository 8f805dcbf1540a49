"""Settings as people type them: text in, a checked value out.

The stored settings, their defaults and numeric limits live in ``prefloop.db.settings`` (every
write is checked there). This module adds what needs more than the database knows: parsing a
person's text, refusing the active-version pointer (it moves only by promote or rollback), and
checking the sampling block against the decoder's own ``SamplingParams``.
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

from prefloop.db.settings import DEFAULT_SETTINGS, check_setting
from prefloop.db.store import Store
from prefloop.engine.engines import check_engine_settings
from prefloop.engine.generation import SamplingParams
from prefloop.errors import PrefloopError, SettingError, StoreError


def parse_setting(store: Store, key: str, raw: str) -> Any:
    """The value to store for ``key`` from command-line text (JSON, else a plain string)."""
    if key == "active_version":
        raise SettingError(
            "active_version changes only by promoting or rolling back a model version "
            "(see `prefloop --help`), so the switch is checked"
        )
    if key not in DEFAULT_SETTINGS:
        raise SettingError(f"unknown setting {key!r}; known settings: {', '.join(sorted(DEFAULT_SETTINGS))}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if key == "sampling":
        return _parse_sampling(store, value)
    if key == "engine":  # checked by the engine's own rules (kind, url), like sampling by SamplingParams
        try:
            return check_setting(key, check_engine_settings(value))
        except PrefloopError as error:
            raise SettingError(str(error)) from None
    try:
        return check_setting(key, value)
    except StoreError as error:
        raise SettingError(str(error)) from None


def _parse_sampling(store: Store, value: Any) -> dict:
    """Merged into the current sampling settings, then checked by SamplingParams where present."""
    if not isinstance(value, dict):
        raise SettingError(
            'sampling must be a JSON object, e.g. \'{"temperature": 0.7, "max_new_tokens": 200}\''
        )
    merged = {**store.get_setting("sampling"), **value}
    known = {f.name for f in fields(SamplingParams)}
    unknown = sorted(set(merged) - known)
    if unknown:
        raise SettingError(
            f"unknown sampling field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    try:
        SamplingParams(**merged)
    except PrefloopError as error:
        raise SettingError(str(error)) from None
    return merged
