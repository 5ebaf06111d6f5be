"""Relayed connections: a libp2p connection upgraded over a relay stream.

Once the hop (dialer) or stop (listener) exchange is done, the relay stream
carries a whole new connection, upgraded exactly like a TCP one (pnet when the
node has a PSK, as js and go do, then noise and yamux).  :class:`StreamTransport`
makes a stream look like a Twisted transport so that
:class:`aicn.p2p.upgrade.ConnectionUpgrader` runs on it unchanged.

:class:`CircuitTransport` is the node's side of the relay protocol:

* :meth:`CircuitTransport.handle_stop` serves ``/libp2p/circuit/relay/0.2.0/stop``
  (every node, so that it can be reached through a relay it reserved on);
* :meth:`CircuitTransport.dial` connects to a ``…/p2p/<relay>/p2p-circuit``
  address: a direct connection to the relay, a hop CONNECT, then the upgrade
  as initiator.

Both hand the result to :meth:`aicn.p2p.swarm.Swarm.adopt_channel`, whose
:class:`~aicn.p2p.swarm.Connection` has ``relayed = True``, ``limited`` set
when the relay announced a limit, and ``remote_addr`` =
``<relay addr>/p2p/<relay>/p2p-circuit``.
"""

from __future__ import annotations

from typing import Optional

from multiaddr import Multiaddr
from twisted.internet.defer import TimeoutError
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.python.failure import Failure
from zope.interface import implementer
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport

from aicn.log import Logger
from aicn.p2p import maddr
from aicn.p2p.deadline import with_timeout
from aicn.p2p.peerid import PeerID
from aicn.p2p.stream import MuxedStream
from aicn.p2p.relay.codec import (
    HOP_PROTOCOL,
    HopMessage,
    HopType,
    Limit,
    PeerInfo,
    RelayCodecError,
    Status,
    StopMessage,
    StopType,
    limit_from_wire,
    read_hop,
    read_stop,
    status_name,
    write_hop,
    write_stop,
)

log = Logger()

#: How long a hop CONNECT may wait for the relay's answer (the relay dials the target's stop).
CONNECT_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class RelayError(Exception):
    """A relay refused or failed a reservation or connection."""

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status


@implementer(ITransport, IConsumer, IPushProducer)
class StreamTransport:
    """A Twisted transport over one muxed stream (the relayed connection).

    Outbound bytes go to ``stream.write``; a registered producer (the inner
    yamux session) is handed to the stream, which pauses it while its send
    window is exhausted, so back-pressure runs end to end.  Inbound bytes
    are pushed to ``protocol.dataReceived`` through the stream's data
    callback; EOF or reset ends in ``protocol.connectionLost``.
    """

    def __init__(self, stream: MuxedStream, protocol, local_addr: Optional[Multiaddr],
                 remote_addr: Optional[Multiaddr]) -> None:
        self.stream = stream
        self.protocol = protocol
        self.local_multiaddr = local_addr
        self.remote_multiaddr = remote_addr
        self.disconnecting = False
        self._lost = False

    def start(self) -> None:
        """Connect the protocol and start delivering (already buffered bytes first)."""
        self.protocol.makeConnection(self)
        if not self._lost:
            self.stream.set_data_callback(self._on_data, self._on_eof)

    # -- ITransport ----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._lost or self.disconnecting or not data:
            return
        self.stream.write(data).addErrback(self._write_failed)

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Half-close after queued data; the connection ends once that is sent."""
        if self._lost or self.disconnecting:
            return
        self.disconnecting = True
        self.stream.close().addBoth(lambda _: self._connection_lost(Failure(ConnectionDone())))

    def abortConnection(self) -> None:
        if self._lost:
            return
        self.stream.reset()
        self._connection_lost(Failure(ConnectionAborted()))

    def getPeer(self):
        return _RelayAddress(self.remote_multiaddr)

    def getHost(self):
        return _RelayAddress(self.local_multiaddr)

    # -- IConsumer / IPushProducer ------------------------------------------------------

    def registerProducer(self, producer, streaming: bool) -> None:
        self.stream.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.stream.unregisterProducer()

    def pauseProducing(self) -> None:
        self.stream.pauseProducing()

    def resumeProducing(self) -> None:
        self.stream.resumeProducing()

    def stopProducing(self) -> None:
        self.abortConnection()

    # -- stream events ----------------------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        if not self._lost:
            self.protocol.dataReceived(data)

    def _on_eof(self, exc: Optional[Exception]) -> None:
        if exc is None:
            # The other end closed; close ours too so the relay can free the circuit.
            self.stream.close()
            self._connection_lost(Failure(ConnectionDone()))
        else:
            self._connection_lost(Failure(exc))

    def _write_failed(self, failure: Failure) -> None:
        log.debug("relayed write failed: {error}", error=failure.getErrorMessage())
        if not self._lost:
            self.stream.reset()
            self._connection_lost(failure)

    def _connection_lost(self, reason: Failure) -> None:
        if self._lost:
            return
        self._lost = True
        try:
            self.protocol.connectionLost(reason)
        except Exception:
            log.failure("connectionLost of a relayed connection raised")


class _RelayAddress:
    """What ``getPeer``/``getHost`` return: no IP/port of its own, the multiaddr instead."""

    host = None
    port = None

    def __init__(self, addr: Optional[Multiaddr]) -> None:
        self.multiaddr = addr

    def __str__(self) -> str:
        return str(self.multiaddr)


def circuit_addr(relay_conn) -> Multiaddr:
    """``<relay's transport addr>/p2p/<relay>/p2p-circuit`` for a connection to the relay."""
    base = relay_conn.remote_addr
    text = f"/p2p/{relay_conn.peer}/p2p-circuit"
    return Multiaddr(str(base) + text) if base is not None else Multiaddr(text)


def is_circuit(addr) -> bool:
    """Whether a multiaddr goes through a relay (has ``/p2p-circuit``)."""
    try:
        return any(p.name == "p2p-circuit" for p, _ in maddr.parse(addr).items())
    except maddr.InvalidMultiaddr:
        return False


def split_circuit(target) -> tuple[Multiaddr | None, PeerID]:
    """``(relay transport addr or None, relay peer)`` of ``…/p2p/<relay>/p2p-circuit``.

    Raises :class:`aicn.p2p.maddr.InvalidMultiaddr` for anything else (a
    circuit inside a circuit included).
    """
    ma = maddr.parse(target)
    items = list(ma.items())
    if not items or items[-1][0].name != "p2p-circuit":
        raise maddr.InvalidMultiaddr(f"{ma} does not end in /p2p-circuit")
    if sum(1 for p, _ in items if p.name == "p2p-circuit") != 1:
        raise maddr.InvalidMultiaddr(f"{ma}: nested circuits are not supported")
    relay_part = ma.decapsulate(Multiaddr("/p2p-circuit"))
    transport, relay = maddr.split_peer(relay_part)
    if relay is None:
        raise maddr.InvalidMultiaddr(f"{ma} does not name its relay with /p2p")
    return (transport if list(transport.items()) else None), relay


class CircuitTransport:
    """Dial and accept relayed connections for a swarm."""

    def __init__(self, swarm) -> None:
        self.swarm = swarm

    async def handle_stop(self, stream, conn) -> None:
        """Serve a stop stream from relay ``conn.peer``: accept CONNECT, upgrade as responder."""
        if getattr(conn, "relayed", False):
            await write_stop(stream, StopMessage(StopType.STATUS, status=Status.PERMISSION_DENIED))
            await stream.close()
            return
        try:
            msg = await with_timeout(read_stop(stream), STOP_TIMEOUT, self.swarm.clock)
        except RelayCodecError as exc:
            log.info("Bad stop message from relay {relay}: {error}", relay=str(conn.peer), error=exc)
            await write_stop(stream, StopMessage(StopType.STATUS, status=Status.MALFORMED_MESSAGE))
            await stream.close()
            return
        except TimeoutError:
            stream.reset()
            return
        if msg.type != StopType.CONNECT or msg.peer is None:
            await write_stop(stream, StopMessage(StopType.STATUS, status=Status.UNEXPECTED_MESSAGE))
            await stream.close()
            return
        source = msg.peer.peer
        limit = limit_from_wire(msg.limit)
        await write_stop(stream, StopMessage(StopType.STATUS, status=Status.OK))
        remote = circuit_addr(conn)
        log.debug("Relayed connection from {peer} through {relay}", peer=str(source), relay=str(conn.peer))
        try:
            await self._upgrade(stream, initiator=False, peer=source, remote=remote,
                                local=conn.local_addr, limit=limit)
        except Exception as exc:
            log.info("Relayed connection from {peer} via {relay} failed: {error}",
                     peer=str(source), relay=str(conn.peer), error=exc)

    async def dial(self, peer: PeerID, target):
        """Connect to ``peer`` through the relay in ``target`` (``…/p2p/<relay>/p2p-circuit``)."""
        relay_transport, relay = split_circuit(target)
        if relay == peer:
            raise RelayError("a peer cannot be its own relay")
        if relay == self.swarm.peer_id:
            raise RelayError("refusing to relay through ourselves")
        relay_conn = self._direct_connection(relay)
        if relay_conn is None:
            addrs = None if relay_transport is None else [relay_transport]
            relay_conn = await self.swarm.dial(relay, addrs)
            if getattr(relay_conn, "relayed", False):
                raise RelayError(f"relay {relay} is only reachable through a relay")
        stream = await relay_conn.new_stream([HOP_PROTOCOL])
        try:
            await write_hop(stream, HopMessage(HopType.CONNECT, peer=PeerInfo(peer)))
            reply = await with_timeout(read_hop(stream), CONNECT_TIMEOUT, self.swarm.clock)
            if reply.type != HopType.STATUS or reply.status != Status.OK:
                raise RelayError(f"relay {relay} refused the connection: {status_name(reply.status)}",
                                 reply.status)
        except BaseException:
            stream.reset()
            raise
        return await self._upgrade(stream, initiator=True, peer=peer, remote=circuit_addr(relay_conn),
                                   local=relay_conn.local_addr, limit=limit_from_wire(reply.limit))

    def _direct_connection(self, peer: PeerID):
        for conn in self.swarm.connections(peer):
            if not getattr(conn, "relayed", False):
                return conn
        return None

    async def _upgrade(self, stream, *, initiator: bool, peer: PeerID, remote: Multiaddr,
                       local: Optional[Multiaddr], limit: Limit):
        upgrader = self.swarm.upgrader(initiator=initiator, expected_peer=peer if initiator else None)
        transport = StreamTransport(stream, upgrader, local, remote)
        transport.start()
        channel = await upgrader.upgraded
        if channel.remote_peer_id != peer:
            channel.abortConnection()
            raise RelayError(f"relayed peer is {channel.remote_peer_id}, the relay announced {peer}")
        return self.swarm.adopt_channel(channel, "Outbound" if initiator else "Inbound", remote,
                                        relayed=True, limit=limit)
