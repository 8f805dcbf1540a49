"""Accounts, roles and sessions.

Passwords are hashed with Argon2id (argon2-cffi); only a SHA-256 of each session token is stored,
so a copy of the database cannot be used to impersonate anyone. The browser holds the token only
in an HttpOnly cookie that page scripts cannot read (``prefloop.ui.server``). Every privileged action calls
``require_role`` on the server side: hiding a button is never the access control.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import secrets
import unicodedata

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from prefloop.annotate.limiter import FailureLimiter
from prefloop.db.store import ROLES, Store
from prefloop.errors import AuthError

SESSION_HOURS = 12  # a working day; after that, sign in again
MIN_PASSWORD_LENGTH = 8
SIGN_IN_ATTEMPTS = 5  # failures per name (from any address) within SIGN_IN_WINDOW_S
# failures per client address for any names: above a team behind one NAT mistyping, far below
# a password spray (an office's five typos must not lock everyone out)
SIGN_IN_CLIENT_ATTEMPTS = 30
SIGN_IN_WINDOW_S = 60
MAX_NAME_INPUT_CHARS = 256  # names are 64 at most; longer input is refused before any lookup
MAX_PASSWORD_CHARS = 1024
TOKEN_CHARS = 43  # secrets.token_urlsafe(32)

_hasher = PasswordHasher()


class TooManySignIns(AuthError):
    """The limiter refused a sign-in before any password was checked (HTTP answers 429)."""


def hash_password(password: str) -> str:
    return _hasher.hash(password)


# Scripts that legitimately mix in one name (UTS #39 "highly restrictive": Latin with Han and
# the Japanese kana, Korean Hangul or Chinese Bopomofo); any other mix is refused as a lookalike.
_EAST_ASIAN_SCRIPTS = {"CJK", "HIRAGANA", "KATAKANA", "HANGUL", "BOPOMOFO"}


def _letter_scripts(name: str) -> set[str]:
    """The scripts of a name's letters, by the first word of each letter's Unicode name."""
    return {unicodedata.name(c, "?").split(" ")[0] for c in name if c.isalpha()}


def normal_name(name: str | None) -> str:
    """The stored form of a typed name: trimmed, NFKC (fullwidth and styled letters made plain)."""
    return unicodedata.normalize("NFKC", (name or "").strip())


def name_key(name: str) -> str:
    """What two names must not share: 'Alice', 'alice' and fullwidth 'ａｌｉｃｅ' are one person."""
    return normal_name(name).casefold()


def validate_name(name: str) -> str:
    """A name in NFKC form, or AuthError.

    Why so strict: votes and the audit trail are read by name, so 'аlice' with a Cyrillic 'а'
    must not pass for 'alice'.
    """
    name = normal_name(name)
    if not (1 <= len(name) <= 64) or not all(c.isalnum() or c in "._-@" for c in name):
        raise AuthError("user names are 1-64 letters, digits or . _ - @")
    scripts = _letter_scripts(name)
    others = scripts - {"LATIN"} - _EAST_ASIAN_SCRIPTS  # Cyrillic, Greek, ...: only on their own
    if len(others) > 1 or (others and scripts - others):
        raise AuthError(f"user names use one alphabet; this one mixes {', '.join(sorted(scripts))}")
    return name


def create_user(store: Store, name: str, password: str, role: str = "annotator") -> int:
    name = validate_name(name)
    twin = next((u["name"] for u in store.list_annotators() if name_key(u["name"]) == name_key(name)), None)
    if twin is not None and twin != name:
        raise AuthError(f"user name {name!r} is too close to the existing {twin!r}; choose another")
    if role not in ROLES:
        raise AuthError(f"role must be one of {', '.join(ROLES)}")
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise AuthError(f"passwords need at least {MIN_PASSWORD_LENGTH} characters")
    return store.add_annotator(name, role, hash_password(password))


def change_password(store: Store, name: str, password: str) -> None:
    """New password hash; every open session of that user ends."""
    user = store.annotator_by_name(normal_name(name))
    if user is None:
        raise AuthError(f"no user named {name!r}")
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise AuthError(f"passwords need at least {MIN_PASSWORD_LENGTH} characters")
    store.set_password_hash(user["id"], hash_password(password), end_sessions=True)


sign_in_limiter = FailureLimiter(SIGN_IN_ATTEMPTS, SIGN_IN_WINDOW_S)


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """A hash of a random password, made with the same settings as real ones: an unknown name
    is checked against it, so it costs the same Argon2 time as a wrong password."""
    return _hasher.hash(secrets.token_urlsafe(16))


def warm_up() -> None:
    """Build the dummy hash before the first sign-in, so no unknown name is ever the slow first one."""
    _dummy_hash()


def _limiter_keys(name: str, client: str) -> list[tuple[str, int]]:
    """(key, limit): a name from anywhere, and (more leniently) one address for any names."""
    keys = [(f"name:{name_key(name)}", SIGN_IN_ATTEMPTS)] if name else []
    if client:
        keys.append((f"client:{client}", SIGN_IN_CLIENT_ATTEMPTS))
    return keys


def sign_in(store: Store, name: str, password: str, client: str = "") -> tuple[str, dict]:
    """Check a password; returns (session token, annotator row). Failures say nothing specific.

    Every refusal after the limiter costs one Argon2 verification, whether the name exists or
    not, so timing does not tell which names are accounts.
    """
    name, password = ("" if name is None else name), ("" if password is None else password)
    if not isinstance(name, str) or not isinstance(password, str) or not isinstance(client, str):
        raise AuthError("name and password must be text")
    if len(name) > MAX_NAME_INPUT_CHARS or len(password) > MAX_PASSWORD_CHARS:
        name = ""  # cannot be an account: counted against the address only, never stored
    keys = _limiter_keys(name, client)
    if any(sign_in_limiter.blocked(key, limit) for key, limit in keys):
        raise TooManySignIns(f"too many failed sign-ins; wait {SIGN_IN_WINDOW_S} seconds and try again")
    user = store.annotator_by_name(normal_name(name)) if name else None
    usable = bool(user and user["active"] and user["password_hash"])
    try:
        ok = _hasher.verify(user["password_hash"] if usable else _dummy_hash(),
                            password[:MAX_PASSWORD_CHARS]) and usable
    except (VerificationError, InvalidHashError):
        ok = False
    if not ok:
        for key, limit in keys:
            sign_in_limiter.record(key, limit)
        raise AuthError("wrong name or password")
    if _hasher.check_needs_rehash(user["password_hash"]):
        store.set_password_hash(user["id"], hash_password(password))
    token = secrets.token_urlsafe(32)
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=SESSION_HOURS)
    store.create_session(_token_hash(token), user["id"], expires.isoformat(timespec="milliseconds"))
    return token, _public(user)


def sign_out(store: Store, token: str | None) -> None:
    if token:
        store.delete_session(_token_hash(token))


def current_user(store: Store, token: str | None) -> dict | None:
    """The signed-in annotator for a session token, or None when absent, expired or disabled."""
    if not token or not isinstance(token, str) or len(token) > 2 * TOKEN_CHARS:
        return None
    user = store.session_annotator(_token_hash(token))
    return _public(user) if user else None


def require_role(store: Store, token: str | None, role: str = "annotator") -> dict:
    """The signed-in user, if they hold ``role`` (maintainers hold every role); else AuthError."""
    user = current_user(store, token)
    if user is None:
        raise AuthError("please sign in (your session may have expired)")
    if role == "maintainer" and user["role"] != "maintainer":
        raise AuthError("only maintainers can do that")
    return user


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _public(user: dict) -> dict:
    return {k: user[k] for k in ("id", "name", "role")}
