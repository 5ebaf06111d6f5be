"""The libp2p host: a swarm plus peerstore, identify, ping and perf.

Higher layers (kad, floodsub, the AICN application) use a :class:`Host`:

* ``set_stream_handler(protocol, handler)``: serve ``async def handler(stream, conn)``;
  protocol changes are pushed to connected peers (identify-push);
* ``new_stream(peer, protocols)``: dial if needed and negotiate;
* ``connect(peer, addrs)``; ``disconnect(peer)``;
* ``add_observer(obj)``: ``connected(conn)``, ``disconnected(conn)`` and
  ``identified(peer, result)`` (after identify or an identify-push, when the
  peer's protocols are known);
* ``peerstore``: addresses, keys, protocols, latency.

Relayed connections (circuit relay v2 stop, and dialing ``/p2p-circuit``
addresses) are on by default (``enable_relay_transport``).

Every new connection runs identify in both directions; a periodic ping keeps
the latency EWMA fresh (which routing uses) and notices dead peers.
"""

from __future__ import annotations

from collections.abc import Sequence

from multiaddr import Multiaddr
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from aicn import AGENT_VERSION, PROTOCOL_VERSION
from aicn.log import Logger
from aicn.p2p import identify, perf, ping
from aicn.p2p.keys import PrivateKey
from aicn.p2p.peerid import PeerID
from aicn.p2p.peerstore import CONNECTED_ADDR_TTL, Peerstore
from aicn.p2p.relay.codec import STOP_PROTOCOL
from aicn.p2p.relay.transport import CircuitTransport
from aicn.p2p.swarm import DEFAULT_MAX_INBOUND, DEFAULT_MAX_PENDING_INBOUND, DIAL_TIMEOUT, Connection, Swarm
from aicn.p2p.yamux import YamuxConfig

log = Logger()

#: How often connected peers are pinged (go's ping service uses 60 s, js 10 s).
PING_INTERVAL = 30.0
IDENTIFY_TIMEOUT = 15.0
PING_TIMEOUT = 15.0


class _IdentifyContext:
    """Connection facts for the identify functions (see ``identify.IdentifyContext``)."""

    def __init__(self, host: "Host", conn: Connection) -> None:
        self.local_key = host.key
        self.remote_peer = conn.peer
        self.remote_addr = conn.remote_addr.to_bytes() if conn.remote_addr is not None else None
        self._host = host

    def info(self) -> identify.IdentifyInfo:
        return self._host.identify_info()


class Host:
    """A libp2p node: identity, connections and the basic protocols."""

    def __init__(self, reactor, key: PrivateKey, *, psk: bytes | None = None,
                 yamux_config: YamuxConfig | None = None, send_muxer_extension: bool = True,
                 protocol_version: str = PROTOCOL_VERSION, agent_version: str = AGENT_VERSION,
                 enable_perf: bool = True, ping_interval: float | None = PING_INTERVAL,
                 handshake_timeout: float = 10.0, dial_timeout: float = DIAL_TIMEOUT,
                 enable_relay_transport: bool = True, max_inbound: int | None = DEFAULT_MAX_INBOUND,
                 max_pending_inbound: int | None = DEFAULT_MAX_PENDING_INBOUND) -> None:
        self.reactor = reactor
        self.key = key
        self.peer_id = key.peer_id()
        self.peerstore = Peerstore(reactor)
        self.swarm = Swarm(reactor, key, psk=psk, yamux_config=yamux_config,
                           send_muxer_extension=send_muxer_extension, peerstore=self.peerstore,
                           handshake_timeout=handshake_timeout, dial_timeout=dial_timeout,
                           max_inbound=max_inbound, max_pending_inbound=max_pending_inbound)
        self._local_identity = identify.LocalIdentity(key, reactor, protocol_version, agent_version)
        self._observers: list = []
        self._announced_addrs: list[Multiaddr] = []
        self._push_call = None
        self.swarm.add_observer(self)
        self.swarm.set_stream_handler(identify.ID, self._serve_identify)
        self.swarm.set_stream_handler(identify.ID_PUSH, self._serve_identify_push)
        self.swarm.set_stream_handler(ping.PING, lambda stream, conn: ping.handle_ping(stream))
        if enable_perf:
            self.swarm.set_stream_handler(perf.PERF, lambda stream, conn: perf.handle_perf(stream))
        if enable_relay_transport:
            # Accept relayed connections (circuit v2 stop) and dial /p2p-circuit addresses,
            # like go-libp2p's default relay transport.
            self.swarm.circuit_transport = CircuitTransport(self.swarm)
            self.swarm.set_stream_handler(STOP_PROTOCOL, self.swarm.circuit_transport.handle_stop)
        self._ping_loop = LoopingCall(self._ping_all) if ping_interval else None
        if self._ping_loop is not None:
            self._ping_loop.clock = reactor
        self._ping_interval = ping_interval

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, listen_addrs: Sequence) -> list[Multiaddr]:
        """Listen on ``listen_addrs`` and start background work; return the bound addresses."""
        bound = await self.swarm.listen(listen_addrs) if listen_addrs else []
        if self._ping_loop is not None and not self._ping_loop.running:
            self._ping_loop.start(self._ping_interval, now=False).addErrback(
                lambda f: log.failure("ping loop stopped", failure=f))
        return bound

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        if self._ping_loop is not None and self._ping_loop.running:
            self._ping_loop.stop()
        if self._push_call is not None and self._push_call.active():
            self._push_call.cancel()
        await self.swarm.close()

    # -- peer routing -------------------------------------------------------------------------

    def set_peer_router(self, router) -> None:
        """Find addresses for address-less dials with ``router`` (``async find_peer``)."""
        self.swarm.set_peer_router(router)

    def remove_peer_router(self, router) -> None:
        """Stop using ``router`` for dials, if it is the one set."""
        self.swarm.remove_peer_router(router)

    # -- what we are --------------------------------------------------------------------------

    @property
    def protocols(self) -> list[str]:
        """Protocols we serve, sorted."""
        return self.swarm.protocols

    def listen_addrs(self) -> list[Multiaddr]:
        """Our addresses as we announce them: listen addresses with wildcards expanded,
        plus extra announced addresses (e.g. relay circuits)."""
        addrs = self.swarm.interface_listen_addrs()
        for extra in self._announced_addrs:
            if extra not in addrs:
                addrs.append(extra)
        return addrs

    def add_announced_addr(self, addr: Multiaddr) -> None:
        """Announce an extra address (e.g. a ``/p2p-circuit`` one) and push the change."""
        if addr not in self._announced_addrs:
            self._announced_addrs.append(addr)
            self._schedule_push()

    def remove_announced_addr(self, addr: Multiaddr) -> None:
        if addr in self._announced_addrs:
            self._announced_addrs.remove(addr)
            self._schedule_push()

    def identify_info(self) -> identify.IdentifyInfo:
        return self._local_identity.info([a.to_bytes() for a in self.listen_addrs()], self.protocols)

    # -- protocols ----------------------------------------------------------------------------

    def set_stream_handler(self, protocol: str, handler) -> None:
        """Serve ``protocol``; connected peers learn of it through identify-push."""
        self.swarm.set_stream_handler(protocol, handler)
        self._schedule_push()

    def remove_stream_handler(self, protocol: str) -> None:
        self.swarm.remove_stream_handler(protocol)
        self._schedule_push()

    async def new_stream(self, peer: PeerID, protocols: Sequence[str], addrs: Sequence | None = None, *,
                         lazy: bool = False):
        """A negotiated stream to ``peer``, dialing it if needed.

        ``lazy``: skip waiting for the peer's answer when it is known to
        support the (single) protocol; see
        :meth:`~aicn.p2p.swarm.Connection.new_stream`."""
        return await self.swarm.new_stream(peer, protocols, addrs, lazy=lazy)

    async def connect(self, peer: PeerID, addrs: Sequence | None = None) -> Connection:
        """Connect to ``peer`` at ``addrs`` (or its peerstore addresses)."""
        return await self.swarm.dial(peer, addrs)

    def disconnect(self, peer: PeerID) -> bool:
        return self.swarm.disconnect(peer)

    def is_connected(self, peer: PeerID) -> bool:
        return self.swarm.is_connected(peer)

    def connections(self, peer: PeerID | None = None) -> list[Connection]:
        return self.swarm.connections(peer)

    def connected_peers(self) -> list[PeerID]:
        return self.swarm.connected_peers()

    async def ping(self, peer: PeerID, count: int = 1) -> list[float]:
        """Ping ``peer`` ``count`` times; RTTs in seconds, recorded in the peerstore."""
        stream = await self.new_stream(peer, [ping.PING])
        rtts = await ping.ping(stream, self.reactor, count)
        for rtt in rtts:
            self.peerstore.record_latency(peer, rtt)
        return rtts

    # -- observers ----------------------------------------------------------------------------

    def add_observer(self, observer) -> None:
        """Hear ``connected(conn)``, ``disconnected(conn)``, ``identified(peer, result)``."""
        self._observers.append(observer)

    def remove_observer(self, observer) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def _notify(self, event: str, *args) -> None:
        for observer in list(self._observers):
            method = getattr(observer, event, None)
            if method is None:
                continue
            try:
                method(*args)
            except Exception:
                log.failure("host observer {observer} failed on {event}", observer=observer, event=event)

    # -- swarm events (we observe the swarm) ------------------------------------------------------

    def connected(self, conn: Connection) -> None:
        self.peerstore.connected(conn.peer)
        self.peerstore.set_public_key(conn.peer, conn.remote_public_key)
        if conn.direction == Connection.OUTBOUND and conn.remote_addr is not None:
            self.peerstore.add_addrs(conn.peer, [conn.remote_addr.to_bytes()], CONNECTED_ADDR_TTL)
        self._notify("connected", conn)
        Deferred.fromCoroutine(self._identify(conn))

    def disconnected(self, conn: Connection) -> None:
        if not self.swarm.is_connected(conn.peer):
            self.peerstore.disconnected(conn.peer)
        self._notify("disconnected", conn)

    # -- identify -----------------------------------------------------------------------------

    async def _identify(self, conn: Connection) -> None:
        try:
            stream = await conn.new_stream([identify.ID])
            d = Deferred.fromCoroutine(identify.request_identify(stream, _IdentifyContext(self, conn)))
            result = await d.addTimeout(IDENTIFY_TIMEOUT, self.reactor)
        except Exception as exc:
            if not conn.closed:
                log.info("Identify of {peer} failed: {error}", peer=str(conn.peer), error=exc)
            return
        self._apply_identify(conn, result)

    def _apply_identify(self, conn: Connection, result: identify.IdentifyResult) -> None:
        self.peerstore.consume_identify(result, connected=not conn.closed)
        log.debug("Identified {peer}: {agent}, {count} protocols", peer=str(conn.peer),
                  agent=result.agent_version, count=len(result.protocols))
        self._notify("identified", conn.peer, result)

    async def _serve_identify(self, stream, conn: Connection) -> None:
        await identify.handle_identify(stream, _IdentifyContext(self, conn))

    async def _serve_identify_push(self, stream, conn: Connection) -> None:
        result = await identify.handle_identify_push(stream, _IdentifyContext(self, conn))
        if result is not None:
            self._apply_identify(conn, result)

    def _schedule_push(self) -> None:
        # Coalesce bursts of handler registrations into one push.
        if self._push_call is None or not self._push_call.active():
            self._push_call = self.reactor.callLater(0.05, self._push_all)

    def _push_all(self) -> None:
        for conn in self.swarm.connections():
            Deferred.fromCoroutine(self._push(conn))

    async def _push(self, conn: Connection) -> None:
        try:
            stream = await conn.new_stream([identify.ID_PUSH])
            await identify.send_identify_push(stream, _IdentifyContext(self, conn))
        except Exception as exc:
            log.debug("Identify push to {peer} failed: {error}", peer=str(conn.peer), error=exc)

    # -- ping ---------------------------------------------------------------------------------

    def _ping_all(self) -> None:
        for peer in self.swarm.connected_peers():
            Deferred.fromCoroutine(self._ping_quietly(peer))

    async def _ping_quietly(self, peer: PeerID) -> None:
        try:
            d = Deferred.fromCoroutine(self.ping(peer))
            await d.addTimeout(PING_TIMEOUT, self.reactor)
        except Exception as exc:  # a dead peer is routine here
            log.debug("Ping of {peer} failed: {error}", peer=str(peer), error=exc)
