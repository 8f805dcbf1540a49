"""Untrusted text at the edges: what may be stored, and how it is printed to a terminal.

Prompts, version names, comments and names come from files, annotators and other homes. Stored,
they are data; printed raw to a maintainer's terminal, a control character is a command (ESC
sequences move the cursor, rewrite the title, hide lines; NUL and bidi overrides change what is
read). So: names are checked where they enter, and everything the CLI prints passes through
``terminal_safe``, which shows control characters as visible escapes.

Ground layer: imports nothing from prefloop but errors.

Example:
    >>> terminal_safe("v1\\x1b[2J")
    'v1\\\\x1b[2J'
    >>> validate_version_name("v3")
    'v3'
"""

from __future__ import annotations

import contextlib
import io
import re
import sys

from prefloop.errors import StoreError

ALLOWED_CONTROLS = "\t\n\r"  # in stored text (prompts, answers): tabs and line breaks are text
# bidi embeddings/overrides/isolates: they reorder what a reader sees ("Trojan source")
BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
MAX_VERSION_NAME_CHARS = 64
VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def is_control(char: str, allowed: str = ALLOWED_CONTROLS, bidi: bool = True) -> bool:
    """C0 and C1 controls and DEL (and, with ``bidi``, bidi overrides), except ``allowed``."""
    if char in allowed:
        return False
    return char < " " or "\x7f" <= char <= "\x9f" or (bidi and char in BIDI_CONTROLS)


def first_control(text: str, allowed: str = ALLOWED_CONTROLS) -> tuple[int, str] | None:
    """(1-based position, character) of the first C0/C1 control in ``text``, or None.

    For stored text (prompts, comments): bidi marks pass, since right-to-left writing uses them;
    they are escaped only when printed to a terminal.
    """
    for position, char in enumerate(text, start=1):
        if is_control(char, allowed, bidi=False):
            return position, char
    return None


def validate_version_name(name: object) -> str:
    """A version name: 1-64 ASCII letters, digits, ``.``, ``_`` or ``-``, starting alphanumeric.

    Why so strict: names are shown in tables, dropdowns, plot labels and terminals, and used in
    folder names (``models/<name>``). Anything richer is a way to smuggle markup, mathtext or
    escapes into one of those.
    """
    if not isinstance(name, str) or not VERSION_NAME.fullmatch(name):
        shown = terminal_safe(str(name))[:80] if isinstance(name, str) else type(name).__name__
        raise StoreError(
            f"invalid model version name {shown!r}: use 1-{MAX_VERSION_NAME_CHARS} letters, "
            "digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def terminal_safe(text: object, keep: str = "\n\t") -> str:
    """``text`` with every control character (but ``keep``) written as a visible escape."""
    text = str(text)
    if not any(is_control(c, keep) for c in text):
        return text
    return "".join(_escape(c) if is_control(c, keep) else c for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


class TerminalSafeStream(io.TextIOBase):
    """A text stream that escapes control characters before they reach ``target``.

    The CLI wraps stdout with it for the length of a command, so no command can print a raw
    escape, however its output was assembled.
    """

    def __init__(self, target):
        super().__init__()
        self._target = target

    def write(self, text: str) -> int:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode(self.encoding or "utf-8", "replace")
        self._target.write(terminal_safe(text))
        return len(text)

    def flush(self) -> None:
        self._target.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self._target.isatty()

    @property
    def encoding(self):
        return getattr(self._target, "encoding", "utf-8")

    def fileno(self) -> int:
        return self._target.fileno()


@contextlib.contextmanager
def terminal_safe_stdout():
    """For the length of the block, everything printed to stdout has its controls escaped."""
    original = sys.stdout
    sys.stdout = TerminalSafeStream(original)
    try:
        yield
    finally:
        sys.stdout = original
