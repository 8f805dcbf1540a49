"""Judges for tests of the loop's plumbing, where a vote must never hinge on a tiny model's luck.

``prefloop.evaluate.judges:concise`` ties answers within a few characters of each other, and a tiny random
model's 12-token answers often are: on another CPU's float rounding a whole round came out as
ties and the test stopped for want of rows. These judges are decisive, or never are.
"""

from __future__ import annotations


def decisive(prompt: str, a: str, b: str) -> str:
    """The shorter answer wins; equal lengths go to the alphabetically first; only twins tie."""
    if a == b:
        return "tie"
    return "a" if (len(a), a) < (len(b), b) else "b"


def always_tie(prompt: str, a: str, b: str) -> str:
    """A judge with no taste at all: the loop has nothing to learn from it."""
    return "tie"
