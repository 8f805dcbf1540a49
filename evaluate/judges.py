"""Simulated judges: functions that vote like an annotator with one clear taste.

A judge is any callable ``judge(prompt: str, a: str, b: str) -> "a" | "b" | "tie" | "both_bad"``.
They stand in for people in ``prefloop simulate`` and in tests, so the whole loop (sample, vote,
train, evaluate) can run unattended and we can check that a taste actually gets learned.
``load_judge("module:function")`` loads any importable one, yours included.

Example: prefloop simulate --judge prefloop.evaluate.judges:concise --rounds 3 --pairs-per-round 96
"""

from __future__ import annotations

import importlib
import random
import re
from typing import Callable

from prefloop.db.store import CHOICES
from prefloop.errors import JudgeError

Judge = Callable[[str, str, str], str]

TIE_MARGIN_CHARS = 8  # answers this close in length are "about the same" to the length judges
_LIST_LINE = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+\S", re.MULTILINE)
_WORD = re.compile(r"[A-Za-z']+")
_READER = frozenset({"you", "your", "you're", "yours", "yourself", "you'll", "you've", "you'd"})
PLAIN_TIE = 0.03  # mean word lengths within 3% of each other: "about as plain"
PERSONAL_TIE = 0.5  # reader words per 100 within half a word: "about as personal"
_POLITE = re.compile(r"\b(please|thank you|thanks|happy to help|glad to|you're welcome)\b", re.I)


def _blank(text: str) -> bool:
    return not (text or "").strip()


def concise(prompt: str, a: str, b: str) -> str:
    """Prefers the shorter answer; within a few characters it is a tie; two empty ones are bad."""
    if _blank(a) and _blank(b):
        return "both_bad"
    if _blank(a) != _blank(b):  # an empty answer is not concise, it is missing
        return "b" if _blank(a) else "a"
    la, lb = len(a.strip()), len(b.strip())
    if abs(la - lb) <= TIE_MARGIN_CHARS:
        return "tie"
    return "a" if la < lb else "b"


def verbose(prompt: str, a: str, b: str) -> str:
    """Prefers the longer answer (the opposite taste of ``concise``)."""
    if _blank(a) and _blank(b):
        return "both_bad"
    la, lb = len(a.strip()), len(b.strip())
    if abs(la - lb) <= TIE_MARGIN_CHARS:
        return "tie"
    return "a" if la > lb else "b"


def has_list(text: str) -> bool:
    """At least two lines that look like bullet or numbered list items."""
    return len(_LIST_LINE.findall(text or "")) >= 2


def listy(prompt: str, a: str, b: str) -> str:
    """Prefers the answer formatted as a list; if both or neither are, it is a tie."""
    if _blank(a) and _blank(b):
        return "both_bad"
    la, lb = has_list(a), has_list(b)
    if la == lb:
        return "tie"
    return "a" if la else "b"


def polite(prompt: str, a: str, b: str) -> str:
    """Prefers the answer with more courtesy phrases ("please", "thank you", "happy to help")."""
    if _blank(a) and _blank(b):
        return "both_bad"
    pa, pb = len(_POLITE.findall(a or "")), len(_POLITE.findall(b or ""))
    if pa == pb:
        return "tie"
    return "a" if pa > pb else "b"


def _words(text: str) -> list[str]:
    return _WORD.findall(text or "")


def plain(prompt: str, a: str, b: str) -> str:
    """Prefers plainer words: the shorter mean word length (letters per word), as plain-language
    guides ask; within 3% a tie. Unlike ``listy``, ``polite`` and ``finished`` it is decisive on
    most pairs (61 of 85 of v0's), and it is not a length taste: where both decide, it sides with
    ``concise`` on 30 of 57 (README, "Judges")."""
    wa, wb = _words(a), _words(b)
    if not wa and not wb:
        return "both_bad"
    if not wa or not wb:  # an answer without words is missing, not plain
        return "b" if not wa else "a"
    ma, mb = (sum(map(len, w)) / len(w) for w in (wa, wb))
    if abs(ma - mb) <= PLAIN_TIE * max(ma, mb):
        return "tie"
    return "a" if ma < mb else "b"


def personal(prompt: str, a: str, b: str) -> str:
    """Prefers the answer that speaks to the reader: more "you"/"your" per 100 words; within
    half a word per 100 a tie. Decisive on 48 of 85 of v0's pairs, and not a length taste (where
    both decide, it sides with ``concise`` on 13 of 47)."""
    wa, wb = ([w.lower() for w in _words(t)] for t in (a, b))
    if not wa and not wb:
        return "both_bad"
    if not wa or not wb:
        return "b" if not wa else "a"
    ra, rb = (100 * sum(w in _READER for w in ws) / len(ws) for ws in (wa, wb))
    if abs(ra - rb) < PERSONAL_TIE:
        return "tie"
    return "a" if ra > rb else "b"


def noisy(judge: Judge, noise: float, rng: random.Random | None = None) -> Judge:
    """A judge that, with probability ``noise``, answers uniformly at random (a tired annotator)."""
    if not 0.0 <= noise <= 1.0:
        raise JudgeError(f"noise must be between 0 and 1, not {noise}")
    rng = rng or random.Random()

    def judged(prompt: str, a: str, b: str) -> str:
        if noise and rng.random() < noise:
            return rng.choice(CHOICES)
        return judge(prompt, a, b)

    judged.__name__ = f"{judge_name(judge)}_noisy"
    return judged


def judge_name(judge: Judge) -> str:
    return getattr(judge, "__name__", type(judge).__name__)


def checked_choice(judge: Judge, prompt: str, a: str, b: str) -> str:
    """Call a judge and insist on one of the four choices."""
    choice = judge(prompt, a, b)
    if choice not in CHOICES:
        raise JudgeError(
            f"judge {judge_name(judge)} returned {choice!r}; a judge must return one of "
            f"{', '.join(CHOICES)}"
        )
    return choice


def load_judge(spec: str) -> Judge:
    """Import ``module:function`` (e.g. ``prefloop.evaluate.judges:concise``); clear errors otherwise."""
    if not spec or ":" not in spec:
        raise JudgeError(
            f"judge must look like module:function (e.g. prefloop.evaluate.judges:concise), not {spec!r}"
        )
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise JudgeError(f"judge must look like module:function, not {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise JudgeError(f"cannot import judge module {module_name!r}: {error}") from None
    judge = module
    for part in attribute.split("."):
        judge = getattr(judge, part, None)
        if judge is None:
            raise JudgeError(f"module {module_name!r} has no {attribute!r}")
    if not callable(judge):
        raise JudgeError(f"{spec} is not callable; a judge is a function (prompt, a, b) -> choice")
    return judge


def coin(prompt: str, a: str, b: str) -> str:
    """A fair coin between the two answers: no taste at all, so nothing should ever be promoted.
    Seeded by the texts, so a run replays, yet independent of anything a model could learn."""
    import hashlib

    digest = hashlib.sha256("\x00".join((prompt, a, b)).encode("utf-8")).digest()
    return "a" if digest[0] % 2 == 0 else "b"


_FINISHED_END = re.compile(r"""[.!?)"'`*\]]\s*$""")


def finished(prompt: str, a: str, b: str) -> str:
    """Prefers the answer that ends like a finished answer (final punctuation, a closed block)
    over one that stops mid-sentence, the mark of a response cut off at max_new_tokens; if both
    or neither end that way it is a tie."""
    if _blank(a) and _blank(b):
        return "both_bad"
    fa, fb = bool(_FINISHED_END.search(a or "")), bool(_FINISHED_END.search(b or ""))
    if fa == fb:
        return "tie"
    return "a" if fa else "b"
