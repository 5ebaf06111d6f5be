"""Provider records: who said they can provide a key, until when.

Pure, in memory, with time from an injected clock (``seconds()``).  A record
is ``(key, provider)`` with the provider's addresses as it announced them; it
expires ``ttl`` seconds after its last announcement (go and js republish well
before that).  Memory is bounded twice: at most ``max_per_key`` providers per
key and ``max_records`` in all; either cap evicts the least recently
announced record, so a flood of fake providers cannot starve the store of
fresh ones for long, nor grow it without limit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from aicn.p2p.peerid import PeerID

#: How long a record lives without republishing (the brief's default; go uses 48 h).
PROVIDER_TTL = 24 * 3600.0
MAX_PROVIDERS_PER_KEY = 100
MAX_PROVIDER_RECORDS = 100_000
#: Longest provider key we accept: a multihash is well under this (go: 80).
MAX_KEY_LEN = 80
#: At most this many addresses are kept per provider.
MAX_ADDRS_PER_PROVIDER = 16


class ProviderStore:
    """Provider records with expiry and caps."""

    def __init__(self, clock, ttl: float = PROVIDER_TTL, max_per_key: int = MAX_PROVIDERS_PER_KEY,
                 max_records: int = MAX_PROVIDER_RECORDS) -> None:
        self._clock = clock
        self.ttl = ttl
        self.max_per_key = max_per_key
        self.max_records = max_records
        #: (key, provider) -> (expiry, addrs), least recently announced first.
        self._records: OrderedDict[tuple[bytes, PeerID], tuple[float, tuple[bytes, ...]]] = OrderedDict()
        #: key -> providers, least recently announced first.
        self._by_key: dict[bytes, OrderedDict[PeerID, None]] = {}

    def __len__(self) -> int:
        return len(self._records)

    def add(self, key: bytes, provider: PeerID, addrs: Iterable[bytes] = ()) -> None:
        """Record (or refresh) that ``provider`` provides ``key``.

        New addresses replace the stored ones only when some are given, so a
        refresh without addresses keeps what we knew.
        """
        key = bytes(key)
        if not key or len(key) > MAX_KEY_LEN:
            raise ValueError(f"provider key of {len(key)} bytes")
        addrs = tuple(bytes(a) for a in addrs)[:MAX_ADDRS_PER_PROVIDER]
        record_key = (key, provider)
        old = self._records.pop(record_key, None)
        if old is not None and not addrs:
            addrs = old[1]
        self._records[record_key] = (self._clock.seconds() + self.ttl, addrs)
        providers = self._by_key.setdefault(key, OrderedDict())
        providers[provider] = None
        providers.move_to_end(provider)
        while len(providers) > self.max_per_key:
            self._drop((key, next(iter(providers))))
        while len(self._records) > self.max_records:
            self._drop(next(iter(self._records)))

    def get(self, key: bytes) -> list[tuple[PeerID, list[bytes]]]:
        """Unexpired providers of ``key`` with their addresses, most recent first."""
        key = bytes(key)
        providers = self._by_key.get(key)
        if not providers:
            return []
        now = self._clock.seconds()
        out = []
        for provider in reversed(list(providers)):
            expiry, addrs = self._records[(key, provider)]
            if expiry <= now:
                self._drop((key, provider))
            else:
                out.append((provider, list(addrs)))
        return out

    def remove(self, key: bytes, provider: PeerID) -> None:
        """Forget one record (e.g. our own, when we stop providing)."""
        if (bytes(key), provider) in self._records:
            self._drop((bytes(key), provider))

    def gc(self) -> int:
        """Drop every expired record; return how many."""
        now = self._clock.seconds()
        dead = [rk for rk, (expiry, _) in self._records.items() if expiry <= now]
        for rk in dead:
            self._drop(rk)
        return len(dead)

    def _drop(self, record_key: tuple[bytes, PeerID]) -> None:
        key, provider = record_key
        self._records.pop(record_key, None)
        providers = self._by_key.get(key)
        if providers is not None:
            providers.pop(provider, None)
            if not providers:
                del self._by_key[key]
