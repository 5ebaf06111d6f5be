"""The connection manager: keep the number of open connections bounded.

``Swarm.ConnMgr`` sets two watermarks and a grace period (Go's defaults:
LowWater 100, HighWater 400, GracePeriod 20 s).  When more than HighWater
connections are open, the least useful ones are closed until LowWater remain,
as go-libp2p's basic connection manager does.  Two kinds of connection are
never closed:

* *young* ones, opened less than the grace period ago (a fresh connection has
  had no chance to prove useful, and identify may still be running);
* *protected* ones: the peer was protected with :meth:`ConnectionManager.protect`
  (the node protects its bootstrap peers) or the connection carries a tag in
  ``conn.tags`` (``/swarm/connect`` adds ``"user-connect"``: an operator asked
  for that connection, so we keep it).

So the open count can stay above LowWater (even above HighWater) when too few
connections may be closed.

Which connections go first (:func:`victim_order`), least useful first:

1. lower peer value: the sum of the values given with :meth:`~ConnectionManager.tag_peer`
   (other layers can mark peers they care about, like go's ``TagPeer``);
2. idle before busy: a connection with no open stream carries nothing now;
3. inbound before outbound: we chose to dial the outbound ones;
4. younger before older: a long-lived connection has proved stable;
5. connection ID, so that the order is deterministic.

Trimming runs when a connection pushes the count above HighWater and every
``trim_interval`` seconds (60 s, like go), at most once per
``silence_period`` (10 s, like go): a burst of inbound connections triggers one
trim, and a trim requested during the silence runs when it ends.

The decision is the pure function :func:`select_victims` over
:class:`ConnInfo` snapshots; :class:`ConnectionManager` observes the host and
closes what it picks.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from twisted.internet.task import LoopingCall

from aicn.log import Logger
from aicn.p2p.peerid import PeerID

__all__ = [
    "DEFAULT_LOW_WATER",
    "DEFAULT_HIGH_WATER",
    "DEFAULT_GRACE_PERIOD",
    "TRIM_INTERVAL",
    "SILENCE_PERIOD",
    "ConnInfo",
    "victim_order",
    "select_victims",
    "ConnectionManager",
]

log = Logger()

DEFAULT_LOW_WATER = 100
DEFAULT_HIGH_WATER = 400
DEFAULT_GRACE_PERIOD = 20.0
#: How often the open connections are checked anyway (go: 1 minute).
TRIM_INTERVAL = 60.0
#: At most one trim in this many seconds (go's silence period: 10 s).
SILENCE_PERIOD = 10.0


@attrs.frozen
class ConnInfo:
    """What the trimming decision needs to know about one connection."""

    id: str
    peer: PeerID | str
    #: ``"Inbound"`` or ``"Outbound"``.
    direction: str
    #: When the connection was opened (clock seconds).
    opened_at: float
    #: Never to be closed by the manager.
    protected: bool = False
    #: The peer's tag value (higher means more useful).
    value: int = 0
    #: Open streams on the connection.
    streams: int = 0


def victim_order(info: ConnInfo) -> tuple:
    """Sort key putting the least useful connection first (see the module docstring)."""
    return (info.value, info.streams > 0, info.direction != "Inbound", -info.opened_at, info.id)


def select_victims(conns: Sequence[ConnInfo], now: float, *, low_water: int, high_water: int,
                   grace_period: float) -> list[ConnInfo]:
    """The connections to close, least useful first.

    Nothing while at most ``high_water`` connections are open.  Otherwise as
    many as it takes to get down to ``low_water``, skipping protected ones and
    ones younger than ``grace_period``; fewer if not enough may be closed.
    """
    if len(conns) <= high_water:
        return []
    excess = len(conns) - low_water
    candidates = [c for c in conns if not c.protected and now - c.opened_at >= grace_period]
    candidates.sort(key=victim_order)
    return candidates[:excess]


class ConnectionManager:
    """Trims the host's connections between the watermarks; protects chosen peers.

    ``enabled=False`` (``Swarm.ConnMgr.Type`` ``"none"``) keeps the protection
    and tag bookkeeping but never closes anything.
    """

    def __init__(self, host, clock, low_water: int = DEFAULT_LOW_WATER,
                 high_water: int = DEFAULT_HIGH_WATER, grace_period: float = DEFAULT_GRACE_PERIOD, *,
                 enabled: bool = True, trim_interval: float | None = TRIM_INTERVAL,
                 silence_period: float = SILENCE_PERIOD) -> None:
        if low_water < 0 or high_water < low_water:
            raise ValueError(f"connection manager needs 0 <= LowWater <= HighWater, "
                             f"got LowWater {low_water}, HighWater {high_water}")
        if grace_period < 0:
            raise ValueError(f"negative grace period {grace_period}")
        self.host = host
        self.clock = clock
        self.low_water = low_water
        self.high_water = high_water
        self.grace_period = grace_period
        self.enabled = enabled
        self.silence_period = silence_period
        self._trim_interval = trim_interval
        self._conns: dict[str, object] = {}
        self._protections: dict[PeerID, set[str]] = {}
        self._tags: dict[PeerID, dict[str, int]] = {}
        self._last_trim: float | None = None
        self._pending_trim = None
        self._loop: LoopingCall | None = None
        self._started = False

    @classmethod
    def from_config(cls, host, clock, config, **kwargs) -> "ConnectionManager":
        """A manager for an :class:`aicn.config.ConnMgrConfig` (``type == "none"``: no trimming)."""
        return cls(host, clock, config.low_water, config.high_water, config.grace_period,
                   enabled=config.type != "none", **kwargs)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Observe the host (adopting its open connections) and start the periodic trim."""
        if self._started:
            return
        self._started = True
        self.host.add_observer(self)
        for conn in self.host.connections():
            self._conns.setdefault(conn.id, conn)
        if self.enabled and self._trim_interval:
            self._loop = LoopingCall(self.trim)
            self._loop.clock = self.clock
            self._loop.start(self._trim_interval, now=False).addErrback(
                lambda f: log.failure("connection manager loop stopped", failure=f))

    def stop(self) -> None:
        """Stop observing and trimming (open connections stay open)."""
        if not self._started:
            return
        self._started = False
        self.host.remove_observer(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._pending_trim is not None and self._pending_trim.active():
            self._pending_trim.cancel()
        self._pending_trim = None
        self._conns.clear()

    # -- host events ------------------------------------------------------------------------

    def connected(self, conn) -> None:
        self._conns[conn.id] = conn
        if self.enabled and len(self._conns) > self.high_water:
            self.trim()

    def disconnected(self, conn) -> None:
        self._conns.pop(conn.id, None)

    # -- protection and tags -------------------------------------------------------------------

    def protect(self, peer: PeerID, tag: str) -> None:
        """Never close connections to ``peer`` while any protection tag remains."""
        self._protections.setdefault(peer, set()).add(tag)

    def unprotect(self, peer: PeerID, tag: str) -> bool:
        """Remove one protection tag; return whether ``peer`` is still protected."""
        tags = self._protections.get(peer)
        if tags is None:
            return False
        tags.discard(tag)
        if not tags:
            del self._protections[peer]
            return False
        return True

    def is_protected(self, peer: PeerID, tag: str | None = None) -> bool:
        """Whether ``peer`` is protected (with ``tag``, or with any tag)."""
        tags = self._protections.get(peer, ())
        return tag in tags if tag is not None else bool(tags)

    def tag_peer(self, peer: PeerID, tag: str, value: int) -> None:
        """Give ``peer`` a value under ``tag``; peers of higher total value are closed last."""
        self._tags.setdefault(peer, {})[tag] = int(value)

    def untag_peer(self, peer: PeerID, tag: str) -> None:
        tags = self._tags.get(peer)
        if tags is not None:
            tags.pop(tag, None)
            if not tags:
                del self._tags[peer]

    def peer_value(self, peer: PeerID) -> int:
        """The sum of ``peer``'s tag values."""
        return sum(self._tags.get(peer, {}).values())

    # -- trimming -----------------------------------------------------------------------------

    def connection_count(self) -> int:
        return len(self._open_conns())

    def _open_conns(self) -> list:
        for conn_id in [cid for cid, c in self._conns.items() if c.closed]:
            del self._conns[conn_id]
        return list(self._conns.values())

    def _info(self, conn) -> ConnInfo:
        session = getattr(conn, "session", None)
        streams = len(session.streams) if session is not None else 0
        return ConnInfo(
            id=conn.id,
            peer=conn.peer,
            direction=conn.direction,
            opened_at=conn.opened_at,
            protected=bool(conn.tags) or self.is_protected(conn.peer),
            value=self.peer_value(conn.peer),
            streams=streams,
        )

    def trim(self) -> int:
        """Close connections down to LowWater if above HighWater; return how many were closed.

        Rate-limited: within the silence period after a trim, the call only
        schedules one trim for when the silence ends.
        """
        if not self.enabled or not self._started:
            return 0
        now = self.clock.seconds()
        if self._last_trim is not None and now - self._last_trim < self.silence_period:
            if self._pending_trim is None or not self._pending_trim.active():
                delay = self.silence_period - (now - self._last_trim)
                self._pending_trim = self.clock.callLater(delay, self.trim)
            return 0
        conns = self._open_conns()
        if len(conns) <= self.high_water:
            return 0
        self._last_trim = now
        by_id = {c.id: c for c in conns}
        victims = select_victims([self._info(c) for c in conns], now, low_water=self.low_water,
                                 high_water=self.high_water, grace_period=self.grace_period)
        log.info("Connection manager: {count} connections open (HighWater {high}), closing {closing}",
                 count=len(conns), high=self.high_water, closing=len(victims))
        for info in victims:
            conn = by_id[info.id]
            log.debug("Closing connection {conn_id} to {peer}", conn_id=info.id, peer=str(info.peer))
            conn.close()
            self._conns.pop(info.id, None)
        return len(victims)

