"""A time-bounded, size-bounded set of message ids (pure; clock injected)."""

from __future__ import annotations

from collections import OrderedDict

#: How long a message id is remembered (go: 2 min; js: 30 s).
SEEN_TTL = 120.0
#: Most ids held; the oldest go first when it is full.
SEEN_MAX = 100_000


class SeenCache:
    """Message ids seen within the last ``ttl`` seconds of ``clock``.

    ``clock`` is anything with ``seconds()`` (a reactor, ``task.Clock``).
    Entries expire in insertion order, so expiry is amortised O(1); at
    ``max_entries`` the oldest id is evicted (a very old message could then be
    delivered twice, which is better than unbounded memory).
    """

    def __init__(self, clock, ttl: float = SEEN_TTL, max_entries: int = SEEN_MAX) -> None:
        self.clock = clock
        self.ttl = ttl
        self.max_entries = max_entries
        self._expiry: OrderedDict[bytes, float] = OrderedDict()
        #: Ids dropped because the cache was full.
        self.evicted = 0

    def _expire(self, now: float) -> None:
        expiry = self._expiry
        while expiry:
            key, when = next(iter(expiry.items()))
            if when > now:
                break
            del expiry[key]

    def __contains__(self, key: bytes) -> bool:
        now = self.clock.seconds()
        self._expire(now)
        return key in self._expiry

    def add(self, key: bytes) -> bool:
        """Remember ``key``; return ``False`` if it was already there."""
        now = self.clock.seconds()
        self._expire(now)
        if key in self._expiry:
            return False
        self._expiry[key] = now + self.ttl
        while len(self._expiry) > self.max_entries:
            self._expiry.popitem(last=False)
            self.evicted += 1
        return True

    def __len__(self) -> int:
        self._expire(self.clock.seconds())
        return len(self._expiry)
