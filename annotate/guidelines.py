"""Annotation guidelines: what annotators are asked to prefer, versioned with every vote.

Maintainers write them in Markdown (``prefloop guidelines set FILE``); the Annotate tab shows the
newest version (collapsible), and each vote records the version in force when it was cast, so a
change of instructions can be seen in the data and a round can be traced to the rules its votes
followed. Old versions are never edited or deleted.
"""

from __future__ import annotations

from prefloop.annotate import auth
from prefloop.db.store import Store
from prefloop.errors import GuidelineError
from prefloop.safetext import first_control

MAX_GUIDELINE_CHARS = 20_000  # a few pages: more than anyone reads between votes


def check_guidelines(text: object) -> str:
    """The text to store, or a clear refusal (same rules as prompts: no control characters)."""
    if not isinstance(text, str):
        raise GuidelineError("guidelines must be text")
    text = text.strip()
    if not text:
        raise GuidelineError("guidelines are empty; write what annotators should prefer")
    if len(text) > MAX_GUIDELINE_CHARS:
        raise GuidelineError(f"guidelines are limited to {MAX_GUIDELINE_CHARS:,} characters, not {len(text):,}")
    found = first_control(text)
    if found:
        raise GuidelineError(f"guidelines contain a control character (U+{ord(found[1]):04X}) at "
                             f"character {found[0]}; remove it")
    return text


def publish(store: Store, text: object, author: str | None = None) -> int:
    """Store a new version (checked first) and return its number."""
    checked = check_guidelines(text)
    author_row = store.annotator_by_name(author) if author else None
    return store.add_guidelines(checked, author_row["id"] if author_row else None)


def current_for(store: Store, token: str | None) -> dict | None:
    """The guidelines in force, for a signed-in annotator (None when none are written yet)."""
    auth.require_role(store, token, "annotator")
    return store.current_guidelines()
