"""The reserving side of circuit relay v2: stay reachable through relays.

:class:`RelayClient` keeps a reservation on each configured relay, refreshes
it before it expires (and again after a failure or a lost connection, with
back-off), and announces ``<relay addr>/p2p/<relay>/p2p-circuit`` through
``host.add_announced_addr`` so identify, ``/api/v0/id`` and the DHT carry it.
Other peers then reach us with a hop CONNECT (dialing is the swarm's job,
through :class:`aicn.p2p.relay.transport.CircuitTransport`).

It runs while :meth:`start`-ed: the node starts it when
``Swarm.RelayClient.Enabled`` is set, or when AutoNAT says we are private
(:meth:`set_reachability`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable, Optional

from multiaddr import Multiaddr
from twisted.internet.defer import Deferred

from aicn.log import Logger
from aicn.p2p.peerid import PeerID
from aicn.p2p.relay.codec import (
    HOP_PROTOCOL,
    HopMessage,
    HopType,
    Limit,
    RelayCodecError,
    Status,
    limit_from_wire,
    open_voucher,
    read_hop,
    status_name,
    write_hop,
)
from aicn.p2p.relay.transport import RelayError

log = Logger()

RESERVE_TIMEOUT = 30.0
#: Connection tag that keeps our connection to a relay from being trimmed.
RELAY_TAG = "relay-client"


@dataclass
class RelayReservation:
    """A reservation we hold: ``expire`` in Unix seconds, the circuit addresses
    we announce, the relay's limits and its voucher (envelope bytes or None)."""

    relay: PeerID
    expire: int
    addrs: list[Multiaddr] = field(default_factory=list)
    limit: Limit = field(default_factory=Limit)
    voucher: Optional[bytes] = None


class RelayClient:
    """Keep reservations on ``relays`` (``[(PeerID, [addrs])]``) while started."""

    def __init__(self, host, clock, relays: Sequence[tuple[PeerID, Sequence]] = (), *,
                 retry_interval: float = 10.0, max_retry_interval: float = 300.0,
                 on_change: Optional[Callable[[list[Multiaddr]], object]] = None) -> None:
        self.host = host
        self.clock = clock
        self.relays: dict[PeerID, list] = {peer: list(addrs or []) for peer, addrs in relays}
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        #: Called with our circuit addresses after each change.
        self.on_change = on_change
        #: Current reservations by relay.
        self.reservations: dict[PeerID, RelayReservation] = {}
        self._timers: dict[PeerID, object] = {}
        self._failures: dict[PeerID, int] = {}
        self._running = False

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        """Reserve on every relay now, and keep the reservations."""
        if self._running:
            return
        self._running = True
        self.host.add_observer(self)
        for relay in self.relays:
            self._schedule(relay, 0)

    def stop(self) -> None:
        """Stop refreshing and withdraw our circuit addresses."""
        if not self._running:
            return
        self._running = False
        self.host.remove_observer(self)
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        for relay in list(self.reservations):
            self._drop(relay)

    def set_reachability(self, public: bool) -> None:
        """AutoNAT's verdict: reserve while private, stop when public."""
        if public:
            self.stop()
        else:
            self.start()

    def add_relay(self, relay: PeerID, addrs: Sequence = ()) -> None:
        """Use one more relay (reserved at once when running)."""
        if relay not in self.relays:
            self.relays[relay] = list(addrs)
            if self._running:
                self._schedule(relay, 0)

    def circuit_addrs(self) -> list[Multiaddr]:
        """Our circuit addresses on all current reservations."""
        return [a for r in self.reservations.values() for a in r.addrs]

    # -- reserving -----------------------------------------------------------------------------

    async def reserve(self, relay: PeerID, addrs: Sequence | None = None) -> RelayReservation:
        """Reserve (or refresh) a slot on ``relay`` once; return the reservation.

        Raises :class:`RelayError` when refused, or the dial/stream error.
        """
        conn = next((c for c in self.host.connections(relay) if not getattr(c, "relayed", False)), None)
        if conn is None:
            conn = await self.host.connect(relay, addrs or self.relays.get(relay) or None)
            if getattr(conn, "relayed", False):
                raise RelayError(f"relay {relay} is only reachable through a relay")
        stream = await conn.new_stream([HOP_PROTOCOL])
        try:
            await write_hop(stream, HopMessage(HopType.RESERVE))
            reply = await Deferred.fromCoroutine(read_hop(stream)).addTimeout(RESERVE_TIMEOUT, self.clock)
        except BaseException:
            stream.reset()
            raise
        await stream.close()
        if reply.type != HopType.STATUS or reply.status != Status.OK or reply.reservation is None:
            raise RelayError(f"relay {relay} refused the reservation: {status_name(reply.status)}", reply.status)
        rsvp = reply.reservation
        if rsvp.voucher is not None:
            try:
                open_voucher(rsvp.voucher, relay=relay, peer=self.host.peer_id)
            except RelayCodecError as exc:
                # Vouchers are advisory (spec); a bad one is worth a log line, not a failure.
                log.info("Relay {relay} sent a bad voucher: {error}", relay=str(relay), error=exc)
        conn.tags.add(RELAY_TAG)
        reservation = RelayReservation(relay, rsvp.expire, _circuit_addrs(relay, rsvp.addrs, conn),
                                       limit_from_wire(reply.limit), rsvp.voucher)
        self._install(reservation)
        return reservation

    def _install(self, reservation: RelayReservation) -> None:
        old = self.reservations.get(reservation.relay)
        self.reservations[reservation.relay] = reservation
        for addr in old.addrs if old else []:
            if addr not in reservation.addrs:
                self.host.remove_announced_addr(addr)
        for addr in reservation.addrs:
            self.host.add_announced_addr(addr)
        if old is None or old.addrs != reservation.addrs:
            self._changed()

    def _drop(self, relay: PeerID) -> None:
        old = self.reservations.pop(relay, None)
        if old is None:
            return
        for addr in old.addrs:
            self.host.remove_announced_addr(addr)
        for conn in self.host.connections(relay):
            conn.tags.discard(RELAY_TAG)
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change(self.circuit_addrs())
            except Exception:
                log.failure("relay client on_change callback failed")

    def _schedule(self, relay: PeerID, delay: float) -> None:
        timer = self._timers.get(relay)
        if timer is not None and timer.active():
            timer.cancel()
        self._timers[relay] = self.clock.callLater(delay, lambda: Deferred.fromCoroutine(self._refresh(relay)))

    async def _refresh(self, relay: PeerID) -> None:
        if not self._running:
            return
        try:
            reservation = await self.reserve(relay)
        except Exception as exc:
            failures = self._failures.get(relay, 0) + 1
            self._failures[relay] = failures
            delay = min(self.max_retry_interval, self.retry_interval * 2 ** (failures - 1))
            log.info("Reservation on relay {relay} failed ({error}); retry in {delay:.0f}s",
                     relay=str(relay), error=exc, delay=delay)
            expired = relay in self.reservations and self.reservations[relay].expire <= self.clock.seconds()
            if expired:
                self._drop(relay)
            if self._running:
                self._schedule(relay, delay)
            return
        self._failures.pop(relay, None)
        if not self._running:  # stopped while we waited
            self._drop(relay)
            return
        remaining = reservation.expire - self.clock.seconds()
        # Refresh well before expiry: 5 minutes early, or at 3/4 of a short reservation.
        delay = max(1.0, remaining - min(300.0, remaining / 4))
        log.debug("Reserved on {relay}; refresh in {delay:.0f}s", relay=str(relay), delay=delay)
        self._schedule(relay, delay)

    # -- host observer ------------------------------------------------------------------------

    def disconnected(self, conn) -> None:
        relay = conn.peer
        if relay in self.reservations and not any(
                not getattr(c, "relayed", False) for c in self.host.connections(relay)):
            log.info("Lost the connection to relay {relay}; reserving again", relay=str(relay))
            self._drop(relay)
            if self._running:
                self._schedule(relay, min(self.retry_interval, 1.0))


def _circuit_addrs(relay: PeerID, addrs: Sequence[bytes], conn) -> list[Multiaddr]:
    """``<addr>/p2p/<relay>/p2p-circuit`` for each relay address (the one we
    are connected to when the relay sent none)."""
    suffix = Multiaddr(f"/p2p/{relay}")
    out: list[Multiaddr] = []
    bases = []
    for raw in addrs:
        try:
            bases.append(Multiaddr(raw))
        except Exception:
            continue
    if not bases and conn.remote_addr is not None:
        bases = [conn.remote_addr]
    for base in bases:
        names = [p.name for p, _ in base.items()]
        if "p2p-circuit" in names:
            continue
        if names and names[-1] == "p2p":
            if base.value_for_protocol("p2p") != str(relay):
                continue
        else:
            base = base.encapsulate(suffix)
        addr = base.encapsulate(Multiaddr("/p2p-circuit"))
        if addr not in out:
            out.append(addr)
    return out
