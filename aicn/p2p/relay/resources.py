"""Relay limits and the bookkeeping of reservations and circuits (pure).

:class:`RelayLimits` holds the relay's configuration.  :class:`ReservationTable`
and :class:`CircuitTable` decide whether a new reservation or circuit fits
those limits; they do no I/O and take the time as an argument, so a flood of
requests can be fuzzed directly (tests/p2p/test_relay_resources.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from aicn.p2p.peerid import PeerID
from aicn.p2p.relay.codec import Limit, Status

GiB = 1024 ** 3


@dataclass(frozen=True)
class RelayLimits:
    """What a relay grants.  Defaults suit model traffic (long streams, large
    responses), unlike go/js's 2 min / 128 KiB.

    * ``duration`` (seconds) and ``data`` (bytes per direction) bound each
      circuit; 0 means unlimited (then no ``Limit`` is sent);
    * ``reservation_ttl`` (seconds) is how long a reservation lasts before the
      client must refresh it;
    * ``max_reservations`` in total and ``max_reservations_per_ip``;
    * ``max_circuits`` in total and ``max_circuits_per_peer`` (counted for the
      source and the destination alike).
    """

    duration: int = 3600
    data: int = GiB
    reservation_ttl: int = 3600
    max_reservations: int = 128
    max_reservations_per_ip: int = 16
    max_circuits: int = 256
    max_circuits_per_peer: int = 16
    #: Largest chunk moved per read when bridging.
    buffer_size: int = 64 * 1024

    def wire_limit(self) -> Optional[Limit]:
        """The ``Limit`` announced to clients, or None when unlimited."""
        if not self.duration and not self.data:
            return None
        return Limit(self.duration or None, self.data or None)


class Refused(Exception):
    """A request does not fit the limits; :attr:`status` is the answer to send."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class _Slot:
    ip: Optional[str]
    expire: float


class ReservationTable:
    """Current reservations by peer.  A peer has at most one; a new RESERVE
    refreshes it.  Expired ones are dropped lazily."""

    def __init__(self, limits: RelayLimits) -> None:
        self.limits = limits
        self._slots: dict[PeerID, _Slot] = {}
        self._per_ip: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, peer: PeerID) -> bool:
        return peer in self._slots

    def count_for_ip(self, ip: str) -> int:
        return self._per_ip.get(ip, 0)

    def reserve(self, peer: PeerID, ip: Optional[str], now: float) -> float:
        """Add or refresh ``peer``'s reservation; return its expiry time.

        Raises :class:`Refused` (``RESERVATION_REFUSED``) when the table or the
        IP's share is full.
        """
        self.expire(now)
        current = self._slots.get(peer)
        if current is None or current.ip != ip:
            if current is None and len(self._slots) >= self.limits.max_reservations:
                raise Refused(Status.RESERVATION_REFUSED, "too many reservations")
            if ip is not None and self._per_ip.get(ip, 0) >= self.limits.max_reservations_per_ip:
                raise Refused(Status.RESERVATION_REFUSED, f"too many reservations from {ip}")
            if current is not None:
                self._drop(peer)
        expire = now + self.limits.reservation_ttl
        if peer in self._slots:
            self._slots[peer].expire = expire
        else:
            self._slots[peer] = _Slot(ip, expire)
            if ip is not None:
                self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        return expire

    def has(self, peer: PeerID, now: float) -> bool:
        """Whether ``peer`` holds a live reservation."""
        slot = self._slots.get(peer)
        if slot is None:
            return False
        if slot.expire <= now:
            self._drop(peer)
            return False
        return True

    def remove(self, peer: PeerID) -> bool:
        """Drop ``peer``'s reservation (e.g. it disconnected)."""
        if peer not in self._slots:
            return False
        self._drop(peer)
        return True

    def expire(self, now: float) -> int:
        """Drop expired reservations; return how many."""
        dead = [peer for peer, slot in self._slots.items() if slot.expire <= now]
        for peer in dead:
            self._drop(peer)
        return len(dead)

    def peers(self) -> list[PeerID]:
        return list(self._slots)

    def _drop(self, peer: PeerID) -> None:
        slot = self._slots.pop(peer)
        if slot.ip is not None:
            left = self._per_ip[slot.ip] - 1
            if left:
                self._per_ip[slot.ip] = left
            else:
                del self._per_ip[slot.ip]


class CircuitTable:
    """Open circuits, counted in total and per peer (as source or destination)."""

    def __init__(self, limits: RelayLimits) -> None:
        self.limits = limits
        self._total = 0
        self._per_peer: dict[PeerID, int] = {}

    def __len__(self) -> int:
        return self._total

    def count_for(self, peer: PeerID) -> int:
        return self._per_peer.get(peer, 0)

    def open(self, src: PeerID, dst: PeerID) -> None:
        """Count a new circuit; :class:`Refused` (``RESOURCE_LIMIT_EXCEEDED``) if it does not fit."""
        if self._total >= self.limits.max_circuits:
            raise Refused(Status.RESOURCE_LIMIT_EXCEEDED, "too many relayed connections")
        for peer in (src, dst):
            if self._per_peer.get(peer, 0) >= self.limits.max_circuits_per_peer:
                raise Refused(Status.RESOURCE_LIMIT_EXCEEDED, f"too many relayed connections for {peer}")
        self._total += 1
        for peer in (src, dst):
            self._per_peer[peer] = self._per_peer.get(peer, 0) + 1

    def close(self, src: PeerID, dst: PeerID) -> None:
        """Forget a circuit counted by :meth:`open`."""
        self._total -= 1
        for peer in (src, dst):
            left = self._per_peer[peer] - 1
            if left:
                self._per_peer[peer] = left
            else:
                del self._per_peer[peer]
