"""The relay side of circuit relay v2: ``/libp2p/circuit/relay/0.2.0/hop``.

:class:`RelayService` accepts reservations (with a signed voucher) from
peers that want to be reachable through us, and CONNECT requests from peers
that want to reach them: it opens ``/libp2p/circuit/relay/0.2.0/stop`` to the
target, and on OK bridges the two streams both ways.  Each direction awaits
the other side's write before reading on, so a slow reader slows the writer
down through the yamux windows instead of filling our memory.  A circuit is
reset on both sides when it exceeds its byte limit (per direction) or its
duration.

Requests over relayed connections are refused (no relays of relays).

The service counts its answers (:attr:`RelayService.requests`, by request
type and status) and the bytes it bridged (:attr:`RelayService.bytes_relayed`).
"""

from __future__ import annotations

import math
from typing import Optional

from multiaddr import Multiaddr
from twisted.internet.defer import Deferred, DeferredList, TimeoutError

from aicn.log import Logger
from aicn.p2p import maddr
from aicn.p2p.deadline import with_timeout
from aicn.p2p.peerid import PeerID
from aicn.p2p.relay.codec import (
    HOP_PROTOCOL,
    STOP_PROTOCOL,
    HopMessage,
    HopType,
    PeerInfo,
    RelayCodecError,
    Reservation,
    Status,
    StopMessage,
    StopType,
    make_voucher,
    read_hop,
    read_stop,
    status_name,
    write_hop,
    write_stop,
)
from aicn.p2p.relay.resources import CircuitTable, Refused, RelayLimits, ReservationTable
from aicn.p2p.relay.transport import is_circuit
from aicn.p2p.stream import StreamError
from aicn.stats import LabelledCounter

log = Logger()

#: How long a peer may take to send its hop request, and the target its stop answer.
REQUEST_TIMEOUT = 15.0
#: Connection tag keeping a reserving peer's connection from being trimmed.
RESERVATION_TAG = "relay-reservation"


class _Circuit:
    """One bridged pair of streams and its limits."""

    def __init__(self, service: "RelayService", src: PeerID, dst: PeerID, src_stream, dst_stream) -> None:
        self.service = service
        self.src = src
        self.dst = dst
        self.streams = (src_stream, dst_stream)
        self.bytes = [0, 0]  # src->dst, dst->src
        self.closed = False
        self.reason: Optional[str] = None
        self._timer = None

    async def run(self) -> None:
        limits = self.service.limits
        if limits.duration:
            self._timer = self.service.clock.callLater(limits.duration, self.abort, "duration limit reached")
        src, dst = self.streams
        try:
            await DeferredList([
                Deferred.fromCoroutine(self._pump(src, dst, 0)),
                Deferred.fromCoroutine(self._pump(dst, src, 1)),
            ])
        finally:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self.closed = True

    async def _pump(self, reader, writer, direction: int) -> None:
        limit = self.service.limits.data
        size = self.service.limits.buffer_size
        try:
            while True:
                data = await reader.read(size)
                if not data:
                    await writer.close_write()
                    return
                self.bytes[direction] += len(data)
                self.service.bytes_relayed += len(data)
                if limit and self.bytes[direction] > limit:
                    self.abort("data limit reached")
                    return
                await writer.write(data)
        except (StreamError, EOFError) as exc:
            self.abort(f"stream ended: {exc}")

    def abort(self, reason: str) -> None:
        """Reset both streams (limits reached, or one side failed)."""
        if self.reason is None:
            self.reason = reason
            log.debug("Circuit {src} -> {dst} reset: {reason}", src=str(self.src), dst=str(self.dst), reason=reason)
        for stream in self.streams:
            stream.reset()


class RelayService:
    """Circuit relay v2 hop service.

    ``RelayService(host, clock, limits)``; :meth:`start` registers the hop
    handler, :meth:`stop` removes it and resets open circuits.
    """

    def __init__(self, host, clock, limits: Optional[RelayLimits] = None) -> None:
        self.host = host
        self.clock = clock
        self.limits = limits or RelayLimits()
        self.reservations = ReservationTable(self.limits)
        self.circuits = CircuitTable(self.limits)
        self._open: set[_Circuit] = set()
        self._started = False
        #: Hop requests answered, by ``(type, status)``: type ``reserve``, ``connect`` or
        #: ``other``; status the relay status name (``OK``, ``NO_RESERVATION`` …).
        self.requests = LabelledCounter(("type", "status"))
        #: Bytes bridged through our circuits, both directions.
        self.bytes_relayed = 0

    def start(self) -> None:
        if not self._started:
            self._started = True
            self.host.set_stream_handler(HOP_PROTOCOL, self._handle_hop)
            self.host.add_observer(self)

    def stop(self) -> None:
        if self._started:
            self._started = False
            self.host.remove_stream_handler(HOP_PROTOCOL)
            self.host.remove_observer(self)
            for circuit in list(self._open):
                circuit.abort("relay service stopped")

    @property
    def active_circuits(self) -> int:
        return len(self._open)

    def active_reservations(self) -> int:
        """Live reservations (expired ones are dropped first)."""
        self.reservations.expire(self.clock.seconds())
        return len(self.reservations)

    # -- host observer -------------------------------------------------------------------------

    def disconnected(self, conn) -> None:
        # A reservation lives as long as the reserving peer stays connected.
        if not self.host.is_connected(conn.peer) and self.reservations.remove(conn.peer):
            log.debug("Reservation of {peer} dropped: disconnected", peer=str(conn.peer))

    # -- hop ---------------------------------------------------------------------------------------

    async def _handle_hop(self, stream, conn) -> None:
        try:
            msg = await self._with_timeout(read_hop(stream))
        except RelayCodecError as exc:
            log.info("Bad hop message from {peer}: {error}", peer=str(conn.peer), error=exc)
            await self._answer(stream, Status.MALFORMED_MESSAGE, "other")
            return
        except TimeoutError:
            log.debug("No hop request from {peer} in time", peer=str(conn.peer))
            stream.reset()
            return
        kind = {HopType.RESERVE: "reserve", HopType.CONNECT: "connect"}.get(msg.type, "other")
        if getattr(conn, "relayed", False):
            await self._answer(stream, Status.PERMISSION_DENIED, kind)
            return
        if msg.type == HopType.RESERVE:
            await self._reserve(stream, conn)
        elif msg.type == HopType.CONNECT:
            await self._connect(stream, conn, msg)
        else:
            await self._answer(stream, Status.UNEXPECTED_MESSAGE, kind)

    def _count(self, kind: str, status: Status) -> None:
        self.requests.inc(kind, status_name(status))

    async def _answer(self, stream, status: Status, kind: str) -> None:
        self._count(kind, status)
        await write_hop(stream, HopMessage(HopType.STATUS, status=status))
        await stream.close()

    def _relay_addrs(self) -> list[bytes]:
        """Our direct addresses with ``/p2p/<us>``: public ones if we have any, else all."""
        direct = [a for a in self.host.listen_addrs() if not is_circuit(a)]
        public = [a for a in direct if maddr.is_public(a)]
        suffix = Multiaddr(f"/p2p/{self.host.peer_id}")
        return [a.encapsulate(suffix).to_bytes() for a in (public or direct)]

    async def _reserve(self, stream, conn) -> None:
        now = self.clock.seconds()
        try:
            expire = self.reservations.reserve(conn.peer, _ip_text(conn.remote_addr), now)
        except Refused as exc:
            log.info("Reservation of {peer} refused: {reason}", peer=str(conn.peer), reason=exc)
            await self._answer(stream, exc.status, "reserve")
            return
        conn.tags.add(RESERVATION_TAG)
        expire_unix = int(math.ceil(expire))
        reservation = Reservation(expire_unix, tuple(self._relay_addrs()),
                                  make_voucher(self.host.key, conn.peer, expire_unix))
        self._count("reserve", Status.OK)
        await write_hop(stream, HopMessage(HopType.STATUS, reservation=reservation,
                                           limit=self.limits.wire_limit(), status=Status.OK))
        await stream.close()
        log.debug("Reservation for {peer} until {expire}", peer=str(conn.peer), expire=expire_unix)

    async def _connect(self, stream, conn, msg: HopMessage) -> None:
        src = conn.peer
        if msg.peer is None:
            await self._answer(stream, Status.MALFORMED_MESSAGE, "connect")
            return
        dst = msg.peer.peer
        if dst == src or dst == self.host.peer_id:
            await self._answer(stream, Status.PERMISSION_DENIED, "connect")
            return
        if not self.reservations.has(dst, self.clock.seconds()):
            await self._answer(stream, Status.NO_RESERVATION, "connect")
            return
        dst_conn = next((c for c in self.host.connections(dst) if not getattr(c, "relayed", False)), None)
        if dst_conn is None:
            self.reservations.remove(dst)
            await self._answer(stream, Status.NO_RESERVATION, "connect")
            return
        try:
            self.circuits.open(src, dst)
        except Refused as exc:
            log.info("Circuit {src} -> {dst} refused: {reason}", src=str(src), dst=str(dst), reason=exc)
            await self._answer(stream, exc.status, "connect")
            return
        try:
            await self._bridge(stream, src, dst, dst_conn)
        finally:
            self.circuits.close(src, dst)

    async def _bridge(self, stream, src: PeerID, dst: PeerID, dst_conn) -> None:
        limit = self.limits.wire_limit()
        try:
            dst_stream = await dst_conn.new_stream([STOP_PROTOCOL])
        except Exception as exc:
            log.info("Cannot open stop stream to {dst}: {error}", dst=str(dst), error=exc)
            await self._answer(stream, Status.CONNECTION_FAILED, "connect")
            return
        try:
            await write_stop(dst_stream, StopMessage(StopType.CONNECT, peer=PeerInfo(src), limit=limit))
            reply = await self._with_timeout(read_stop(dst_stream))
        except Exception as exc:
            dst_stream.reset()
            log.info("Stop exchange with {dst} failed: {error}", dst=str(dst), error=exc)
            await self._answer(stream, Status.CONNECTION_FAILED, "connect")
            return
        if reply.type != StopType.STATUS or reply.status != Status.OK:
            dst_stream.reset()
            log.info("{dst} refused the circuit from {src}: {status}", dst=str(dst), src=str(src),
                     status=status_name(reply.status))
            await self._answer(stream, Status.CONNECTION_FAILED, "connect")
            return
        await write_hop(stream, HopMessage(HopType.STATUS, limit=limit, status=Status.OK))
        self._count("connect", Status.OK)
        circuit = _Circuit(self, src, dst, stream, dst_stream)
        self._open.add(circuit)
        log.debug("Circuit {src} -> {dst} open", src=str(src), dst=str(dst))
        try:
            await circuit.run()
        finally:
            self._open.discard(circuit)
        log.debug("Circuit {src} -> {dst} closed ({up} / {down} bytes)", src=str(src), dst=str(dst),
                  up=circuit.bytes[0], down=circuit.bytes[1])

    def _with_timeout(self, coro) -> Deferred:
        return with_timeout(coro, REQUEST_TIMEOUT, self.clock)


def _ip_text(addr) -> Optional[str]:
    ip = maddr.ip_of(addr)
    return None if ip is None else str(ip)
