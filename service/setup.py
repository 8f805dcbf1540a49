"""First-run setup: whatever is missing of a base version v0, the starter prompts, a maintainer.

Shared by ``prefloop init`` and ``prefloop serve``'s quick start, so the two cannot drift.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable

from prefloop.annotate import auth
from prefloop.annotate.prompts import load_starter_prompts
from prefloop.db.store import Store
from prefloop.engine.models import BUNDLED_NAME, create_base_version

DEFAULT_ADMIN = "admin"
GENERATED_PASSWORD_BYTES = 12  # token_urlsafe(12): 16 characters, ~96 bits


def ensure_initialised(
    store: Store,
    base_model: str | None = None,
    *,
    admin_name: str = DEFAULT_ADMIN,
    admin_password: str | None = None,
    starter: bool = True,
    echo: Callable[[str], None] | None = None,
) -> dict:
    """Create whatever is missing of: a base version v0, the starter prompts, a maintainer.

    Safe to call on every start: existing parts are reported, never changed. Starter prompts
    go in only while the prompt table is empty (a project with its own prompts keeps just
    those). A generated maintainer password is returned (``admin["password"]``) so the caller
    can print it once; it is stored only as a hash.
    """
    say = echo or (lambda _line: None)
    done: dict[str, Any] = {}

    versions = store.list_versions()
    if versions:
        active = store.active_version()
        done["version"] = {
            "name": active["name"] if active else versions[0]["name"],
            "created": False,
            "base": versions[0]["card"].get("base"),
            "ignored_base_model": base_model,
        }
    else:
        if base_model is None:
            say(f"Converting {BUNDLED_NAME} to safetensors for v0 (about a minute on CPU, once)...")
        else:
            say(f"Registering {base_model} as v0...")
        created = create_base_version(store, base_model=base_model)
        done["version"] = {"name": created["name"], "created": True, "base": created["card"].get("base")}

    if not starter:
        done["prompts"] = {"added": 0, "skipped": "--no-starter", "total": store.count_prompts()}
    elif store.count_prompts():
        done["prompts"] = {"added": 0, "skipped": "prompts exist", "total": store.count_prompts()}
    else:
        report = load_starter_prompts(store)
        done["prompts"] = {
            "added": report.added, "skipped": None, "total": store.count_prompts(),
            "heldout": report.splits["heldout"],
        }

    maintainers = maintainer_names(store)
    if maintainers:
        done["admin"] = {"name": ", ".join(maintainers), "created": False, "password": None}
    else:
        generated = admin_password is None
        password = secrets.token_urlsafe(GENERATED_PASSWORD_BYTES) if generated else admin_password
        auth.create_user(store, admin_name, password, role="maintainer")
        done["admin"] = {
            "name": admin_name, "created": True, "password": password if generated else None,
        }
    return done


def describe_initialisation(done: dict) -> list[str]:
    """Human lines for what ensure_initialised did; the only place a password is printed."""
    lines = []
    version = done["version"]
    if version["created"]:
        lines.append(f"Created model version {version['name']} ({version['base']}); it is active.")
    else:
        lines.append(f"Model versions already exist (active: {version['name']}); left as they are.")
        if version.get("ignored_base_model"):
            lines.append(f"  --base-model {version['ignored_base_model']} ignored: v0 is set once.")
    prompts = done["prompts"]
    if prompts["skipped"] is None:
        lines.append(
            f"Imported {prompts['added']} starter prompts ({prompts['heldout']} held out for "
            "evaluation)."
        )
    elif prompts["skipped"] == "--no-starter":
        lines.append(f"Starter prompts skipped (--no-starter); {prompts['total']} prompts stored.")
    else:
        lines.append(f"Prompts already present ({prompts['total']}); starter set not added.")
    admin = done["admin"]
    if not admin["created"]:
        lines.append(f"Maintainer already exists ({admin['name']}); no account created.")
    elif admin["password"]:
        lines.append(
            f"Created maintainer {admin['name']!r} with password: {admin['password']}\n"
            f"  (shown only this once; change it with `prefloop users password {admin['name']}`)"
        )
    else:
        lines.append(f"Created maintainer {admin['name']!r}.")
    return lines


def maintainer_names(store: Store) -> list[str]:
    return [
        a["name"] for a in store.list_annotators() if a["role"] == "maintainer" and a["active"]
    ]
