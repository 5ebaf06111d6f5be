"""The swarm: TCP listeners and dials, upgraded to libp2p connections.

A :class:`Swarm` owns every connection of the node.  Each raw TCP connection
goes through :class:`~aicn.p2p.upgrade.ConnectionUpgrader` (pnet, noise,
yamux); the result is a :class:`Connection`, on which streams are opened and
accepted with a multistream-select negotiation per stream.

* ``set_stream_handler(protocol, handler)`` registers ``async def
  handler(stream, connection)`` for inbound streams;
* ``new_stream(peer, protocols)`` dials if needed, opens a stream and
  negotiates the first protocol the peer accepts;
* simultaneous dials to one peer share one attempt, and a dial never
  targets ourselves;
* connection observers (``add_observer``) hear ``connected(conn)`` and
  ``disconnected(conn)``;
* counters (:attr:`Swarm.connections_opened`, ``connections_closed``,
  ``streams_opened``, ``dial_failures``) and :meth:`Swarm.open_streams` are
  read by the metrics and the dashboard.

Inbound connections are bounded on the listener, before any work is spent on
them (like js-libp2p's ``maxIncomingPendingConnections`` and go-libp2p's
resource manager): a TCP connection accepted while ``max_pending_inbound``
upgrades (pnet, noise, muxer) are running, or while ``max_inbound`` inbound
connections (pending and upgraded, relayed ones not counted) are open, is
closed at once, counted in :attr:`Swarm.stats` and logged at most once per
:data:`REFUSED_LOG_INTERVAL`.  An upgrade has ``handshake_timeout`` seconds to
finish.  Outbound dials and established connections are not affected.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence

from twisted.internet import endpoints
from twisted.internet.defer import CancelledError, Deferred, DeferredList, TimeoutError, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from aicn.log import Logger, LogThrottle, RateLimit
from aicn.p2p import maddr
from aicn.p2p.keys import PrivateKey
from aicn.p2p.multistream import (
    MultistreamError,
    negotiate_inbound,
    negotiate_outbound,
    select_lazily,
)
from aicn.p2p.deadline import with_timeout
from aicn.p2p.peerid import PeerID
from aicn.p2p.stream import StreamError
from aicn.p2p.tcplisten import listen_tcp
from aicn.p2p.upgrade import ConnectionUpgrader, PSKMismatch, SecureChannel
from aicn.p2p.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from aicn.p2p.yamux import YamuxConfig, YamuxError, YamuxSession, YamuxStream
from aicn.stats import LabelledCounter

log = Logger()

#: js-libp2p's protocol negotiation timeout.
NEGOTIATION_TIMEOUT = 10.0
#: go-libp2p's default dial timeout: TCP connect, security and muxer, per address
#: (``Swarm.DialTimeout`` sets it).
DIAL_TIMEOUT = 15.0
#: Delay before the next address is tried while a dial is still pending.
DIAL_STAGGER = 0.25
#: How long the list of interface addresses is reused.
INTERFACE_CACHE_SECONDS = 30.0
#: A private network key mismatch is logged once per remote host in this many seconds.
PSK_MISMATCH_LOG_WINDOW = 600.0
#: Inbound upgrades (pnet, noise, muxer) that may run at once (``Swarm.MaxPendingHandshakes``).
DEFAULT_MAX_PENDING_INBOUND = 64
#: Open inbound connections, pending ones included (``Swarm.MaxInboundConnections``): above
#: the connection manager's HighWater (400), so that it trims first and this is the hard stop.
DEFAULT_MAX_INBOUND = 512
#: The listening sockets' accept queue (Twisted's default is 50).  Under a burst of
#: connections a short queue makes the kernel drop handshakes, and every client, good
#: or bad, waits a SYN-ACK retransmission (1 s, then 3 s...) instead of being accepted
#: or refused at once; Go listens with the system's somaxconn (4096).
LISTEN_BACKLOG = 1024
#: Least seconds between two "refused inbound connections" log lines.
REFUSED_LOG_INTERVAL = 10.0

#: The counters in :attr:`Swarm.stats`.
STAT_NAMES = (
    "inbound_accepted",  # TCP connections taken into an upgrade
    "inbound_upgraded",  # ... that became libp2p connections
    "inbound_upgrade_failed",  # ... whose upgrade failed or timed out
    "inbound_refused_pending",  # closed at once: max_pending_inbound upgrades running
    "inbound_refused_limit",  # closed at once: max_inbound inbound connections open
    "psk_mismatch",  # connections (either way) whose peer uses another private network key
)

StreamHandler = Callable[[YamuxStream, "Connection"], Awaitable[None]]


class DialError(Exception):
    """No connection to a peer could be made; the message says why for each address."""


class DialTimeout(DialError):
    """A dial was not connected and upgraded (security, muxer) within the dial
    timeout; as the dial's error, every address it tried timed out."""


class Connection:
    """An upgraded, multiplexed connection to one peer."""

    INBOUND = "Inbound"
    OUTBOUND = "Outbound"

    #: True for a connection carried by a circuit relay stream.
    relayed = False
    #: True when the relay limits the connection's duration or data.
    limited = False
    #: The relay's ``aicn.p2p.relay.codec.Limit`` for a relayed connection, else None.
    limit = None

    def __init__(self, swarm: "Swarm", channel: SecureChannel, session: YamuxSession,
                 direction: str, conn_id: str) -> None:
        self.swarm = swarm
        self.channel = channel
        self.session = session
        self.direction = direction
        self.id = conn_id
        self.peer: PeerID = channel.remote_peer_id
        self.remote_public_key = channel.remote_public_key
        transport = channel.transport
        self.remote_addr = _transport_addr(transport.getPeer())
        self.local_addr = _transport_addr(transport.getHost())
        self.opened_at = swarm.clock.seconds()
        #: Free-form tags (e.g. ``"user-connect"``) for the connection manager.
        self.tags: set[str] = set()

    @property
    def closed(self) -> bool:
        return self.session.closed

    @property
    def transport(self) -> str:
        """``"relayed"`` (over a circuit relay) or ``"direct"``."""
        return "relayed" if self.relayed else "direct"

    async def new_stream(self, protocols: Sequence[str], *, lazy: bool = False) -> YamuxStream:
        """Open a stream and negotiate the first of ``protocols`` the peer accepts.

        With ``lazy``, when there is exactly one protocol and the peerstore
        says (from identify) that the peer supports it, the stream is
        returned without waiting for the peer's answer: the caller's first
        bytes go out right behind the proposal, saving a round trip.  If
        the peer then refuses after all, the stream is reset and its reads
        and writes fail with :class:`ProtocolRejected`.  Otherwise the full
        negotiation runs, as without ``lazy``.
        """
        stream = self.session.open_stream()
        self.swarm.streams_opened.inc("outbound")
        if lazy and len(protocols) == 1 and self._known_to_support(protocols[0]):
            try:
                await select_lazily(stream, protocols[0])
            except BaseException:
                stream.reset()
                raise
            return stream
        try:
            stream.protocol = await with_timeout(
                negotiate_outbound(stream, protocols), NEGOTIATION_TIMEOUT, self.swarm.clock)
        except BaseException:
            stream.reset()
            raise
        return stream

    def _known_to_support(self, protocol: str) -> bool:
        peerstore = self.swarm.peerstore
        return peerstore is not None and peerstore.supports(self.peer, protocol)

    def close(self) -> None:
        """Close the connection (GO_AWAY, then the socket)."""
        self.session.close()

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.direction} {self.peer.short()} {self.remote_addr}>"


class Swarm:
    """Listens, dials and keeps the node's libp2p connections."""

    def __init__(self, reactor, key: PrivateKey, *, psk: bytes | None = None,
                 yamux_config: YamuxConfig | None = None, handshake_timeout: float = 10.0,
                 dial_timeout: float = DIAL_TIMEOUT, send_muxer_extension: bool = True,
                 peerstore=None, max_inbound: int | None = DEFAULT_MAX_INBOUND,
                 max_pending_inbound: int | None = DEFAULT_MAX_PENDING_INBOUND) -> None:
        self.reactor = reactor
        self.clock = reactor
        self.key = key
        self.peer_id = key.peer_id()
        self.psk = psk
        self.yamux_config = yamux_config or YamuxConfig()
        self.handshake_timeout = handshake_timeout
        self.dial_timeout = dial_timeout
        self.send_muxer_extension = send_muxer_extension
        self.peerstore = peerstore
        #: Bounds on inbound connections (None: unbounded); see the module docstring.
        self.max_inbound = max_inbound
        self.max_pending_inbound = max_pending_inbound
        #: Counters named in :data:`STAT_NAMES`, for operators.
        self.stats: Counter[str] = Counter({name: 0 for name in STAT_NAMES})
        self._pending_inbound = 0
        self._inbound_open = 0
        self._refused_log = LogThrottle(reactor, self._log_refused, REFUSED_LOG_INTERVAL)
        self._handlers: dict[str, StreamHandler] = {}
        self._connections: dict[PeerID, list[Connection]] = {}
        self._pending_dials: dict[PeerID, list[Deferred]] = {}
        self._observers: list = []
        self._listening_ports: list = []
        self._listen_addrs: list = []
        self._conn_counter = itertools.count(1)
        self._expanded_cache = None
        self._closing = False
        self._peer_router = None
        self._psk_warnings = RateLimit(reactor, PSK_MISMATCH_LOG_WINDOW)
        #: Connections opened and closed, by ``(direction, transport)``: ``inbound``/``outbound``,
        #: ``direct``/``relayed``.
        self.connections_opened = LabelledCounter(("direction", "transport"))
        self.connections_closed = LabelledCounter(("direction", "transport"))
        #: Streams opened, by direction (``inbound``, ``outbound``).
        self.streams_opened = LabelledCounter(("direction",))
        #: Dials that found no working address.
        self.dial_failures = 0
        #: Dials ``…/p2p/<relay>/p2p-circuit`` addresses (``async dial(peer, target)``,
        #: aicn.p2p.relay.transport.CircuitTransport); None: such addresses are skipped.
        self.circuit_transport = None

    # -- peer routing --------------------------------------------------------------

    @property
    def peer_router(self):
        """The peer routing asked when a dial without addresses finds none in the
        peerstore (``async find_peer(peer) -> [addrs]``, e.g. the DHT), or None."""
        return self._peer_router

    def set_peer_router(self, router) -> None:
        """Route address-less dials through ``router`` (None: no routing)."""
        self._peer_router = router

    def remove_peer_router(self, router) -> None:
        """Stop routing through ``router``, if it is the one set."""
        if self._peer_router is router:
            self._peer_router = None

    # -- protocol handlers ---------------------------------------------------------

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        """Serve ``protocol`` on inbound streams with ``async def handler(stream, conn)``."""
        self._handlers[protocol] = handler

    def remove_stream_handler(self, protocol: str) -> None:
        self._handlers.pop(protocol, None)

    @property
    def protocols(self) -> list[str]:
        """The protocols we serve, sorted."""
        return sorted(self._handlers)

    # -- observers ----------------------------------------------------------------------

    def add_observer(self, observer) -> None:
        """``observer.connected(conn)`` / ``observer.disconnected(conn)`` on each change."""
        self._observers.append(observer)

    def remove_observer(self, observer) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def _notify(self, event: str, conn: Connection) -> None:
        for observer in list(self._observers):
            method = getattr(observer, event, None)
            if method is None:
                continue
            try:
                method(conn)
            except Exception:
                log.failure("connection observer {observer} failed on {event}",
                            observer=observer, event=event)

    # -- listening ----------------------------------------------------------------------

    async def listen(self, addrs: Iterable) -> list:
        """Listen on each ``/ip4|ip6/<host>/tcp/<port>``; return the bound multiaddrs.

        IPv6 listeners take IPv6 only (``IPV6_V6ONLY``), so the default pair
        ``/ip4/0.0.0.0/tcp/P`` and ``/ip6/::/tcp/P`` both bind.

        An address that cannot be bound is logged and skipped as long as
        another one works; if none works, the last error is raised.
        """
        errors = []
        bound = []
        for addr in addrs:
            ma = maddr.parse(addr)
            try:
                kind, host, port = maddr.tcp_target(ma)
                if kind not in ("ip4", "ip6"):
                    raise maddr.InvalidMultiaddr(f"cannot listen on a DNS address: {ma}")
                # IPv6 with IPV6_V6ONLY, so that 0.0.0.0 and :: can share a port.
                port_obj = listen_tcp(self.reactor, port, _ListenerFactory(self), interface=host,
                                      backlog=LISTEN_BACKLOG)
            except (CannotListenError, maddr.InvalidMultiaddr, OSError) as exc:
                log.warn("Cannot listen on {addr}: {error}", addr=str(ma), error=exc)
                errors.append(exc)
                continue
            self._listening_ports.append(port_obj)
            real = maddr.tcp_multiaddr(host, port_obj.getHost().port)
            self._listen_addrs.append(real)
            bound.append(real)
            log.info("Listening on {addr}", addr=str(real))
        if not bound and errors:
            raise errors[-1]
        return bound

    def listen_addrs(self) -> list:
        """The bound listen addresses (wildcards included, real ports)."""
        return list(self._listen_addrs)

    def interface_listen_addrs(self) -> list:
        """Listen addresses with wildcards replaced by interface addresses.

        Interfaces are re-read at most every :data:`INTERFACE_CACHE_SECONDS`:
        enumerating them costs far more than serving ``/api/v0/id``.
        """
        now = self.clock.seconds()
        cached = self._expanded_cache
        if cached is not None and cached[0] == len(self._listen_addrs) and now - cached[1] < INTERFACE_CACHE_SECONDS:
            return list(cached[2])
        out = []
        for addr in self._listen_addrs:
            for expanded in maddr.expand_wildcard(addr):
                if expanded not in out:
                    out.append(expanded)
        self._expanded_cache = (len(self._listen_addrs), now, out)
        return list(out)

    @property
    def pending_inbound(self) -> int:
        """Inbound connections being upgraded now."""
        return self._pending_inbound

    @property
    def inbound_count(self) -> int:
        """Open inbound connections over the listeners, pending upgrades included."""
        return self._inbound_open + self._pending_inbound

    def _inbound_protocol(self) -> ConnectionUpgrader | None:
        """An upgrader for a just-accepted TCP connection, or None (Twisted
        then closes the socket at once) when it is over a limit."""
        if self._closing:
            return None
        if self.max_pending_inbound is not None and self._pending_inbound >= self.max_pending_inbound:
            self.stats["inbound_refused_pending"] += 1
            self._refused_log.hit()
            return None
        if self.max_inbound is not None and self.inbound_count >= self.max_inbound:
            self.stats["inbound_refused_limit"] += 1
            self._refused_log.hit()
            return None
        self.stats["inbound_accepted"] += 1
        self._pending_inbound += 1
        upgrader = self.upgrader(initiator=False, expected_peer=None)
        upgrader.upgraded.addCallbacks(self._inbound_upgraded, self._inbound_failed)
        return upgrader

    def _inbound_upgraded(self, channel: SecureChannel) -> None:
        self._pending_inbound -= 1
        self.stats["inbound_upgraded"] += 1
        self._add_connection(channel, Connection.INBOUND)

    def _inbound_failed(self, failure) -> None:
        self._pending_inbound -= 1
        self.stats["inbound_upgrade_failed"] += 1  # the upgrader logged why

    def _log_refused(self, count: int) -> None:
        log.warn("Refused {count} inbound connection(s) over the limits: {pending}/{max_pending} handshakes "
                 "pending, {inbound}/{max_inbound} inbound connections ({total} refused since start)",
                 count=count, pending=self._pending_inbound, max_pending=self.max_pending_inbound,
                 inbound=self.inbound_count, max_inbound=self.max_inbound,
                 total=self.stats["inbound_refused_pending"] + self.stats["inbound_refused_limit"])

    def upgrader(self, *, initiator: bool, expected_peer: PeerID | None,
                 dial_deadline: bool = False) -> ConnectionUpgrader:
        """A connection upgrader (pnet, noise, muxer) with our key and settings, for
        a transport of our own or another's (a relayed circuit).  With
        ``dial_deadline`` it has no handshake timer: the dial's deadline bounds it."""
        upgrader = ConnectionUpgrader(
            self.key,
            initiator=initiator,
            muxers={YAMUX_PROTOCOL_ID: self._make_session},
            clock=self.clock,
            psk=self.psk,
            expected_peer=expected_peer,
            send_muxer_extension=self.send_muxer_extension,
            handshake_timeout=None if dial_deadline else self.handshake_timeout,
        )
        upgrader.upgraded.addErrback(self._upgrade_failed, upgrader)
        return upgrader

    def _upgrade_failed(self, failure: Failure, upgrader: ConnectionUpgrader) -> Failure:
        """Count and report (rate-limited) private network key mismatches; the
        failure goes on to the dial or the inbound handler."""
        if failure.check(PSKMismatch):
            self.stats["psk_mismatch"] += 1
            try:
                remote = upgrader.transport.getPeer()
            except Exception:  # no transport, or one without addresses
                remote = None
            host = getattr(remote, "host", None)
            address = _transport_addr(remote) if host is not None else remote
            if self._psk_warnings.allow(host if host is not None else str(remote)):
                log.warn("private network key mismatch with {address} ({direction} connection): the peer uses "
                         "another PSK, or none; {count} so far, further ones with this host are not logged "
                         "for {minutes:.0f} min", address=str(address),
                         direction="outbound" if upgrader.initiator else "inbound",
                         count=self.stats["psk_mismatch"], minutes=PSK_MISMATCH_LOG_WINDOW / 60)
        return failure

    def _make_session(self, channel: SecureChannel) -> YamuxSession:
        return YamuxSession.for_channel(channel, self.clock, self.yamux_config)

    # -- connections --------------------------------------------------------------------

    def adopt_channel(self, channel: SecureChannel, direction: str, remote_addr, *,
                      relayed: bool = False, limit=None) -> Connection:
        """Register a channel upgraded elsewhere (e.g. over a relay stream) as a
        connection whose remote address is ``remote_addr``."""
        return self._add_connection(channel, direction, remote_addr=remote_addr, relayed=relayed, limit=limit)

    def _add_connection(self, channel: SecureChannel, direction: str, *, remote_addr=None,
                        relayed: bool = False, limit=None) -> Connection:
        session: YamuxSession = channel.muxer
        peer = channel.remote_peer_id
        conn = Connection(self, channel, session, direction, f"{str(peer)[:10]}-{next(self._conn_counter)}")
        if remote_addr is not None:
            conn.remote_addr = maddr.parse(remote_addr)
        if relayed:
            conn.relayed = True
            conn.limit = limit
            conn.limited = bool(limit is not None and limit.limited)
        session.on_stream = lambda stream: self._accept_stream(conn, stream)
        self._connections.setdefault(peer, []).append(conn)
        if direction == Connection.INBOUND and not relayed:
            self._inbound_open += 1
        self.connections_opened.inc(direction.lower(), conn.transport)
        session.when_closed().addCallback(lambda _: self._remove_connection(conn))
        log.debug("Connected {direction} to {peer} via {addr}", direction=direction, peer=str(peer),
                  addr=str(conn.remote_addr))
        if self._closing:
            conn.close()
        else:
            self._notify("connected", conn)
        return conn

    def _remove_connection(self, conn: Connection) -> None:
        conns = self._connections.get(conn.peer, [])
        if conn in conns:
            conns.remove(conn)
            if conn.direction == Connection.INBOUND and not conn.relayed:
                self._inbound_open -= 1
            if not conns:
                del self._connections[conn.peer]
            self.connections_closed.inc(conn.direction.lower(), conn.transport)
            log.debug("Disconnected from {peer} ({conn_id})", peer=str(conn.peer), conn_id=conn.id)
            self._notify("disconnected", conn)

    def connections(self, peer: PeerID | None = None) -> list[Connection]:
        """Open connections, to ``peer`` or to everyone."""
        if peer is not None:
            return [c for c in self._connections.get(peer, []) if not c.closed]
        return [c for conns in self._connections.values() for c in conns if not c.closed]

    def connection_for(self, peer: PeerID) -> Connection | None:
        """The oldest open connection to ``peer``, if any."""
        conns = self.connections(peer)
        return conns[0] if conns else None

    def is_connected(self, peer: PeerID) -> bool:
        return self.connection_for(peer) is not None

    def connected_peers(self) -> list[PeerID]:
        return [peer for peer, conns in self._connections.items() if any(not c.closed for c in conns)]

    def open_streams(self) -> dict[str, int]:
        """Open streams by negotiated protocol (``""`` while negotiating)."""
        out: dict[str, int] = {}
        for conn in self.connections():
            for stream in conn.session.streams.values():
                protocol = getattr(stream, "protocol", None) or ""
                out[protocol] = out.get(protocol, 0) + 1
        return out

    def disconnect(self, peer: PeerID) -> bool:
        """Close every connection to ``peer``; False if there was none."""
        conns = self.connections(peer)
        for conn in conns:
            conn.close()
        return bool(conns)

    # -- dialing ------------------------------------------------------------------------

    async def dial(self, peer: PeerID, addrs: Sequence | None = None) -> Connection:
        """Connect to ``peer`` (reusing an open connection), trying ``addrs`` in order.

        Without ``addrs`` the peerstore's addresses are used, and if it has
        none, those the ``peer_router`` finds (when one is set).  Concurrent
        dials to the same peer share one attempt.
        """
        if peer == self.peer_id:
            raise DialError("refusing to dial ourselves")
        existing = self.connection_for(peer)
        if existing is not None:
            return existing
        if peer in self._pending_dials:
            waiter: Deferred = Deferred()
            self._pending_dials[peer].append(waiter)
            return await waiter
        self._pending_dials[peer] = []
        try:
            conn = await self._dial_addrs(peer, addrs)
        except BaseException as exc:
            if isinstance(exc, DialError):
                self.dial_failures += 1
            for waiter in self._pending_dials.pop(peer, []):
                waiter.errback(Failure(exc))
            raise
        for waiter in self._pending_dials.pop(peer, []):
            waiter.callback(conn)
        return conn

    async def _dial_addrs(self, peer: PeerID, addrs: Sequence | None) -> Connection:
        if addrs is None:
            addrs = self.peerstore.addrs(peer) if self.peerstore is not None else []
            if not addrs and self.peer_router is not None:
                # Unknown peer: ask peer routing (the DHT) where it is.
                try:
                    addrs = await self.peer_router.find_peer(peer)
                except Exception as exc:
                    raise DialError(f"no addresses to dial {peer}; peer routing failed: {exc}") from exc
        targets = []
        for addr in addrs or []:
            try:
                transport, addr_peer = maddr.split_peer(addr)
            except maddr.InvalidMultiaddr as exc:
                log.debug("Skipping bad address {addr}: {error}", addr=str(addr), error=exc)
                continue
            if addr_peer is not None and addr_peer != peer:
                continue
            targets.append(transport)
        # Direct addresses first; relayed ones only when no direct one works.
        targets.sort(key=_is_circuit)
        if self.circuit_transport is None:
            targets = [t for t in targets if not _is_circuit(t)]
        if not targets:
            raise DialError(f"no addresses to dial {peer}")
        return await self._race(peer, targets)

    def _race(self, peer: PeerID, targets: list) -> Deferred:
        """Dial ``targets`` in order, starting the next one after
        :data:`DIAL_STAGGER` seconds or as soon as one fails ("happy
        eyeballs"), so that dead addresses (a peer's private LAN addresses,
        say) cost a quarter second each instead of a full dial timeout.  The
        first connection wins; the attempts still running are aborted, and
        one that completes anyway is closed."""
        result: Deferred = Deferred()
        reasons: list[str] = []
        attempts: list[tuple[Deferred, dict]] = []
        state = {"next": 0, "finished": 0, "timeouts": 0, "timer": None}

        def stop_timer() -> None:
            timer = state["timer"]
            if timer is not None and timer.active():
                timer.cancel()
            state["timer"] = None

        def start_next() -> None:
            stop_timer()
            if result.called or state["next"] >= len(targets):
                return
            target = targets[state["next"]]
            state["next"] += 1
            if state["next"] < len(targets):
                state["timer"] = self.clock.callLater(DIAL_STAGGER, start_next)
            holder: dict = {"upgrader": None, "done": False}
            attempt = self._dial_target(peer, target, holder)
            attempts.append((attempt, holder))
            attempt.addCallbacks(won, lost, callbackArgs=(holder,), errbackArgs=(target, holder))

        def abort_others() -> None:
            for attempt, holder in attempts:
                if holder["done"]:
                    continue
                upgrader = holder["upgrader"]
                if upgrader is not None and upgrader.transport is not None:
                    upgrader.transport.abortConnection()  # mid-handshake: fails it cleanly
                elif upgrader is not None:
                    attempt.cancel()  # still connecting: cancels the TCP connect

        def won(conn: Connection, holder: dict) -> None:
            holder["done"] = True
            state["finished"] += 1
            if result.called:
                log.debug("Closing surplus connection to {peer}", peer=str(peer))
                conn.close()
                return
            stop_timer()
            result.callback(conn)
            abort_others()

        def lost(failure, target, holder: dict) -> None:
            holder["done"] = True
            state["finished"] += 1
            if result.called:
                return
            exc = failure.value
            reasons.append(f"{target}: {exc or type(exc).__name__}")
            state["timeouts"] += isinstance(exc, DialTimeout)
            if state["finished"] == len(targets):
                error = DialTimeout if state["timeouts"] == len(targets) else DialError
                result.errback(error(f"cannot connect to {peer}: " + "; ".join(reasons)))
            else:
                start_next()

        start_next()
        return result

    def _dial_target(self, peer: PeerID, target, holder: dict) -> Deferred:
        if _is_circuit(target):
            return Deferred.fromCoroutine(self.circuit_transport.dial(peer, target))
        return Deferred.fromCoroutine(self._dial_one(peer, target, holder))

    def _endpoint(self, target):
        kind, host, port = maddr.tcp_target(target)
        # The endpoint's own connect timeout is only a backstop: the dial's
        # deadline (_connect_upgraded) comes first, with the clearer error.
        timeout = math.ceil(self.dial_timeout) + 1
        if kind == "ip4":
            return endpoints.TCP4ClientEndpoint(self.reactor, host, port, timeout=timeout)
        if kind == "ip6":
            return endpoints.TCP6ClientEndpoint(self.reactor, host, port, timeout=timeout)
        return endpoints.HostnameEndpoint(self.reactor, host, port, timeout=timeout)

    async def _connect_upgraded(self, target, upgrader: ConnectionUpgrader) -> SecureChannel:
        """Connect to ``target`` and upgrade, all within :attr:`dial_timeout`.

        On expiry a connect still under way is cancelled, or the connection
        being upgraded is aborted (its socket closed), and :class:`DialTimeout`
        is raised.
        """
        connecting = endpoints.connectProtocol(self._endpoint(target), upgrader)
        timeout = DialTimeout(f"dial timed out after {self.dial_timeout:g} s "
                              "(TCP connect, security and muxer upgrade)")
        expired = []

        def expire() -> None:
            expired.append(True)
            if upgrader.transport is None:
                connecting.cancel()
            else:
                upgrader.abort(timeout)

        timer = self.clock.callLater(self.dial_timeout, expire)
        try:
            await connecting
            return await upgrader.upgraded
        except Exception:
            if expired:  # the cancelled connect, or the aborted upgrade
                raise timeout from None
            raise
        finally:
            if timer.active():
                timer.cancel()

    async def _dial_one(self, peer: PeerID, target, holder: dict | None = None) -> Connection:
        upgrader = self.upgrader(initiator=True, expected_peer=peer, dial_deadline=True)
        if holder is not None:
            holder["upgrader"] = upgrader
        channel = await self._connect_upgraded(target, upgrader)
        return self._add_connection(channel, Connection.OUTBOUND)

    async def probe(self, peer: PeerID, target) -> None:
        """Make a fresh direct connection to ``peer`` at ``target`` and close it
        again, without registering it (AutoNAT dial-backs).  Raises on failure."""
        upgrader = self.upgrader(initiator=True, expected_peer=peer, dial_deadline=True)
        channel = await self._connect_upgraded(target, upgrader)
        channel.muxer.close()

    async def new_stream(self, peer: PeerID, protocols: Sequence[str], addrs: Sequence | None = None, *,
                         lazy: bool = False) -> YamuxStream:
        """Open a stream to ``peer`` (dialing if needed) and negotiate one of
        ``protocols`` (see :meth:`Connection.new_stream` for ``lazy``)."""
        conn = await self.dial(peer, addrs)
        return await conn.new_stream(protocols, lazy=lazy)

    # -- inbound streams ----------------------------------------------------------------

    def _accept_stream(self, conn: Connection, stream: YamuxStream) -> None:
        self.streams_opened.inc("inbound")
        Deferred.fromCoroutine(self._serve_stream(conn, stream))

    async def _serve_stream(self, conn: Connection, stream: YamuxStream) -> None:
        try:
            protocol = await with_timeout(negotiate_inbound(stream, self._handlers),
                                          NEGOTIATION_TIMEOUT, self.clock)
        except (MultistreamError, YamuxError, TimeoutError, CancelledError, EOFError) as exc:
            log.debug("Stream negotiation with {peer} failed: {error}", peer=str(conn.peer), error=exc)
            stream.reset()
            return
        stream.protocol = protocol
        handler = self._handlers.get(protocol)
        if handler is None:  # removed while negotiating
            stream.reset()
            return
        try:
            await handler(stream, conn)
        except (StreamError, YamuxError, EOFError, CancelledError) as exc:
            log.debug("{protocol} stream with {peer} ended: {error}", protocol=protocol,
                      peer=str(conn.peer), error=exc)
            stream.reset()
        except Exception:
            log.failure("{protocol} handler failed for {peer}", protocol=protocol, peer=str(conn.peer))
            stream.reset()

    # -- helpers ------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop listening and close every connection."""
        self._closing = True
        self._refused_log.stop()
        waits = [maybeDeferred(port.stopListening) for port in self._listening_ports]
        self._listening_ports.clear()
        for conn in self.connections():
            waits.append(conn.session.when_closed())
            conn.close()
        for waiters in self._pending_dials.values():
            for waiter in waiters:
                if not waiter.called:
                    waiter.errback(DialError("swarm closed"))
        await DeferredList(waits, consumeErrors=True)


class _ListenerFactory(Factory):
    """Builds the swarm's inbound protocols; None (socket closed at once) over a limit."""

    noisy = False

    def __init__(self, swarm: Swarm) -> None:
        self.swarm = swarm

    def buildProtocol(self, addr):
        protocol = self.swarm._inbound_protocol()
        if protocol is not None:
            protocol.factory = self
        return protocol


def _is_circuit(addr) -> bool:
    return any(p.name == "p2p-circuit" for p, _ in addr.items())


def _transport_addr(address):
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None or port is None:
        return None
    return maddr.tcp_multiaddr(host, port)
