"""A bounded, expiring count of failed sign-ins, in this process.

Why bounded: the counts are kept before anyone has signed in, so anyone can make the server
remember keys. Keys are fixed-size digests (a 2 MB name costs 32 bytes), the table holds at
most ``max_keys`` of them (the stalest go first), each entry holds at most ``limit`` times, and
an entry expires ``window_s`` after its last failure. ``blocked`` only reads: a refused attempt
creates nothing.

Why one process: ``prefloop serve`` is one process (Gradio keeps sessions in memory, so it
cannot run several workers); several ``serve`` processes on one database would each count on
their own, multiplying the limit by their number.

Example:
    limiter = FailureLimiter(limit=5, window_s=60)
    if not limiter.blocked("name:alice"):
        ...; limiter.record("name:alice")     # after a failure
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict, deque

MAX_KEYS = 10_000  # ~2 MB at most: 10k keys x (32-byte digest + up to `limit` floats)


class FailureLimiter:
    """Sliding-window failure counts per key; bounded in keys, times per key and age."""

    def __init__(self, limit: int, window_s: float, max_keys: int = MAX_KEYS, clock=time.monotonic):
        self.limit, self.window_s, self.max_keys = limit, window_s, max_keys
        self._clock = clock
        self._events: OrderedDict[bytes, deque] = OrderedDict()  # oldest failure first
        self._lock = threading.Lock()

    @staticmethod
    def _key(key: str) -> bytes:
        return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def failures(self, key: str) -> int:
        """Failures for ``key`` within the window; reads only."""
        with self._lock:
            events = self._events.get(self._key(key))
            if not events:
                return 0
            cutoff = self._clock() - self.window_s
            return sum(1 for t in events if t >= cutoff)

    def blocked(self, key: str, limit: int | None = None) -> bool:
        return self.failures(key) >= (limit or self.limit)

    def record(self, key: str, limit: int | None = None) -> None:
        """One more failure for ``key``; keeps the latest ``limit`` times (all that matter)."""
        digest = self._key(key)
        now = self._clock()
        with self._lock:
            self._expire(now)
            events = self._events.pop(digest, None) or deque(maxlen=max(limit or self.limit, 1))
            events.append(now)
            self._events[digest] = events  # most recent last
            while len(self._events) > self.max_keys:
                self._events.popitem(last=False)

    def _expire(self, now: float) -> None:
        """Drop keys whose latest failure is older than the window (they are at the front)."""
        cutoff = now - self.window_s
        while self._events:
            digest, events = next(iter(self._events.items()))
            if events and events[-1] >= cutoff:
                break
            self._events.popitem(last=False)

    def __len__(self) -> int:
        return len(self._events)

    def reset(self) -> None:
        with self._lock:
            self._events.clear()
