"""The Kademlia DHT service on a :class:`~aicn.p2p.host.Host`.

Wire-compatible with go-libp2p-kad-dht and js-libp2p kad-dht on
``<prefix>/kad/1.0.0`` (aicn: ``/dbc/kad/1.0.0``):

* one request per stream from us: write the request, read one response,
  close; a reset after a complete response is fine (js resets);
* as a server we answer any number of requests on a stream (go reuses
  streams), FIND_NODE, GET_PROVIDERS, ADD_PROVIDER, PING and GET_VALUE (closer
  peers only: aicn keeps no value records);
* only server-mode nodes register the protocol, so only they advertise it in
  identify; client-mode nodes query but answer nothing;
* a peer enters the routing table only if identify lists our kad protocol
  for it *and* it answers a ping (js's rule), or it just answered a kad query.

Rendezvous (go's ``dutil.Advertise`` / ``FindPeers``) is provider records
on :func:`rendezvous_key`.

The DHT times its queries (:attr:`KadDHT.query_seconds`, one request and
its reply; :attr:`KadDHT.lookup_seconds`, a whole iterative lookup) and
counts the requests it serves (:attr:`KadDHT.requests_served`).
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from multiaddr import Multiaddr
from twisted.internet.defer import CancelledError, Deferred, DeferredList, TimeoutError
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from aicn.log import Logger
from aicn.p2p.kad.codec import (
    MAX_MESSAGE_SIZE,
    ConnectionType,
    KadCodecError,
    KadMessage,
    KadPeer,
    MessageType,
)
from aicn.p2p.kad.keyspace import kad_id
from aicn.p2p.kad.lookup import ALPHA, Lookup
from aicn.p2p.kad.providers import MAX_KEY_LEN, PROVIDER_TTL, ProviderStore
from aicn.p2p.kad.routing import K, RoutingTable
from aicn.p2p.kad.rpc import read_message, write_message
from aicn.p2p.peerid import InvalidPeerID, PeerID
from aicn.p2p.peerstore import PERMANENT_ADDR_TTL, TEMP_ADDR_TTL
from aicn.p2p.stream import StreamError
from aicn.stats import LabelledCounter, LabelledHistogram

log = Logger()

DEFAULT_PROTOCOL = "/dbc/kad/1.0.0"
#: One request/response round trip (go: 10 s per message).
REQUEST_TIMEOUT = 10.0
#: A served stream with no request for this long is closed (go: 1 min).
STREAM_IDLE_TIMEOUT = 60.0
#: Liveness pings of routing-table candidates.
PING_TIMEOUT = 10.0
#: Routing-table refresh (go: 10 min).
REFRESH_INTERVAL = 10 * 60.0
#: Consecutive query failures after which a peer leaves the routing table.
MAX_FAILURES = 2
#: go's discovery default TTL; ``dutil.Advertise`` re-advertises at 7/8 of it.
ADVERTISE_TTL = 3 * 3600.0
#: Retry delay after an advertisement reached nobody (go: 2 min).
ADVERTISE_RETRY = 120.0
DIAL_TIMEOUT = 15.0

_SHA2_256 = 0x12
_RAW_CODEC = 0x55

MODES = ("client", "server", "auto")


def type_name(kind) -> str:
    """A kad message type as a metric label (``FIND_NODE``; ``unknown`` for a foreign number)."""
    try:
        return MessageType(kind).name
    except ValueError:
        return "unknown"


class KadError(Exception):
    """A kad request failed: a peer misbehaved or did not answer."""


class KadProtocolError(KadError):
    """A peer sent a request we refuse (bad key, unsupported type)."""


def rendezvous_key(topic: str) -> bytes:
    """The DHT key of a rendezvous namespace: the multihash of CIDv1(raw, sha2-256(topic)).

    go's ``RoutingDiscovery`` makes that CID and kad-dht provides
    ``cid.Hash()``, i.e. ``12 20 || sha256(topic)``.
    """
    return bytes([_SHA2_256, 32]) + hashlib.sha256(topic.encode("utf-8")).digest()


def rendezvous_cid(topic: str) -> bytes:
    """The binary CIDv1 (raw codec) of a rendezvous namespace, for display."""
    return bytes([1, _RAW_CODEC]) + rendezvous_key(topic)


def _multiaddrs(addrs: Iterable[bytes]) -> list[Multiaddr]:
    out = []
    for addr in addrs:
        try:
            out.append(Multiaddr(bytes(addr)))
        except Exception:  # stored addrs were validated; be safe anyway
            continue
    return out


class KadDHT:
    """A Kademlia DHT node on ``host``.

    ``mode`` is ``"server"`` (serve and advertise the protocol), ``"client"``
    (query only) or ``"auto"`` (client until :meth:`set_reachability` says we
    are publicly reachable).  ``bootstrap_peers`` are ``(PeerID, [addrs])``
    pairs dialed by :meth:`start`.  With ``route_dials`` the host's swarm asks
    :meth:`find_peer` for the addresses of peers it has none for.

    ``lookup_observer``, if set, is called as ``observer(key, msg_type, lookup)``
    with each :class:`~aicn.p2p.kad.lookup.Lookup` that ran to its end (for
    measurements: :attr:`~aicn.p2p.kad.lookup.Lookup.queried`,
    :meth:`~aicn.p2p.kad.lookup.Lookup.hops`).
    """

    def __init__(self, host, clock=None, *, protocol: str = DEFAULT_PROTOCOL, mode: str = "client",
                 bootstrap_peers: Sequence[tuple[PeerID, Sequence]] = (), k: int = K, alpha: int = ALPHA,
                 provider_ttl: float = PROVIDER_TTL, refresh_interval: float | None = REFRESH_INTERVAL,
                 request_timeout: float = REQUEST_TIMEOUT, ping_timeout: float = PING_TIMEOUT,
                 max_message_size: int = MAX_MESSAGE_SIZE, route_dials: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"kad mode must be one of {MODES}, not {mode!r}")
        self.host = host
        self.clock = clock if clock is not None else host.reactor
        self.protocol = protocol
        self.mode = mode
        self.bootstrap_peers = [(peer, list(addrs)) for peer, addrs in bootstrap_peers]
        self.k = k
        self.alpha = alpha
        self.request_timeout = request_timeout
        self.ping_timeout = ping_timeout
        self.max_message_size = max_message_size
        self.refresh_interval = refresh_interval
        self.route_dials = route_dials
        self.routing_table = RoutingTable(host.peer_id, k, needs_check=self._check_head)
        self.providers = ProviderStore(self.clock, ttl=provider_ttl)
        self._public: bool | None = None
        self._serving = False
        self._started = False
        self._failures: dict[PeerID, int] = {}
        self._verifying: set[PeerID] = set()
        self._tasks: set[Deferred] = set()
        self._refresh_loop: LoopingCall | None = None
        #: topic -> pending re-advertise call
        self._advertised: dict[str, object] = {}
        self.lookup_observer: Callable[[bytes, MessageType, Lookup], None] | None = None
        #: Seconds per request we sent, by ``(type, result)`` (result ``ok`` or ``error``).
        self.query_seconds = LabelledHistogram(("type", "result"))
        #: Seconds per iterative lookup, by type.
        self.lookup_seconds = LabelledHistogram(("type",))
        #: Requests we answered as a server, by type.
        self.requests_served = LabelledCounter(("type",))

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Serve (per mode), dial the bootstrap peers, self-lookup, then refresh periodically."""
        if self._started:
            return
        self._started = True
        self.host.add_observer(self)
        self._apply_mode()
        if self.route_dials:
            self.host.set_peer_router(self)
        for peer in self.host.connected_peers():
            if self.host.peerstore.supports(peer, self.protocol):
                self._spawn(self._verify_and_add(peer))
        await self.bootstrap()
        if self.refresh_interval:
            self._refresh_loop = LoopingCall(self._refresh)
            self._refresh_loop.clock = self.clock
            self._refresh_loop.start(self.refresh_interval, now=False).addErrback(
                lambda f: log.failure("kad refresh loop stopped", failure=f))

    async def stop(self) -> None:
        """Stop serving, refreshing and advertising; cancel background work."""
        if not self._started:
            return
        self._started = False
        if self._refresh_loop is not None and self._refresh_loop.running:
            self._refresh_loop.stop()
        for call in self._advertised.values():
            if call is not None and call.active():
                call.cancel()
        self._advertised.clear()
        for task in list(self._tasks):
            task.cancel()
        self.host.remove_observer(self)
        if self._serving:
            self.host.remove_stream_handler(self.protocol)
            self._serving = False
        self.host.remove_peer_router(self)

    async def bootstrap(self) -> None:
        """Dial the bootstrap peers (addresses kept permanently) and look ourselves up."""
        dials = []
        for peer, addrs in self.bootstrap_peers:
            if peer == self.host.peer_id:
                continue
            raw = [Multiaddr(a).to_bytes() if isinstance(a, str) else
                   (a.to_bytes() if isinstance(a, Multiaddr) else bytes(a)) for a in addrs]
            self.host.peerstore.add_addrs(peer, raw, PERMANENT_ADDR_TTL)
            if not self.host.is_connected(peer):
                dials.append(self._timed(self.host.connect(peer), DIAL_TIMEOUT)
                             .addErrback(self._log_dial_failure, peer))
        if dials:
            await DeferredList(dials, consumeErrors=True)
        try:
            await self.get_closest_peers(self.host.peer_id.to_bytes())
        except Exception as exc:
            log.info("kad self-lookup failed: {error}", error=exc)

    @staticmethod
    def _log_dial_failure(failure: Failure, peer: PeerID) -> None:
        log.warn("Cannot reach kad bootstrap peer {peer}: {error}", peer=str(peer), error=failure.value)

    def _refresh(self) -> Deferred:
        self.providers.gc()
        d = Deferred.fromCoroutine(self._refresh_lookups())
        return d.addErrback(lambda f: log.info("kad refresh failed: {error}", error=f.value))

    async def _refresh_lookups(self) -> None:
        await self.get_closest_peers(self.host.peer_id.to_bytes())
        # A random key keeps far buckets filled, as go's per-CPL refresh does.
        await self.get_closest_peers(os.urandom(32))

    # -- mode ----------------------------------------------------------------------------

    @property
    def serving(self) -> bool:
        """Whether we currently answer kad requests (and advertise the protocol)."""
        return self._serving

    def set_mode(self, mode: str) -> None:
        """Switch between ``client``, ``server`` and ``auto``."""
        if mode not in MODES:
            raise ValueError(f"kad mode must be one of {MODES}, not {mode!r}")
        self.mode = mode
        if self._started:
            self._apply_mode()

    def set_reachability(self, public: bool) -> None:
        """AutoNAT's verdict; in ``auto`` mode we serve only while public."""
        self._public = bool(public)
        if self._started:
            self._apply_mode()

    def _apply_mode(self) -> None:
        serve = self.mode == "server" or (self.mode == "auto" and self._public is True)
        if serve and not self._serving:
            self.host.set_stream_handler(self.protocol, self._serve)
            self._serving = True
            log.info("kad: serving {protocol}", protocol=self.protocol)
        elif not serve and self._serving:
            self.host.remove_stream_handler(self.protocol)
            self._serving = False
            log.info("kad: client mode, no longer serving {protocol}", protocol=self.protocol)

    # -- background tasks --------------------------------------------------------------------

    def _spawn(self, coro) -> Deferred:
        d = Deferred.fromCoroutine(coro)
        self._tasks.add(d)

        def done(result):
            self._tasks.discard(d)
            if isinstance(result, Failure) and not result.check(CancelledError):
                log.failure("kad background task failed", failure=result)
            return None

        return d.addBoth(done)

    def _timed(self, coro, seconds: float) -> Deferred:
        return Deferred.fromCoroutine(coro).addTimeout(seconds, self.clock)

    # -- routing-table admission -----------------------------------------------------------------

    def identified(self, peer: PeerID, result) -> None:
        """Host observer: identify (or a push) told us ``peer``'s protocols."""
        if self.protocol in result.protocols:
            if peer in self.routing_table:
                self.routing_table.seen(peer)
            elif peer not in self._verifying:
                self._spawn(self._verify_and_add(peer))
        elif peer in self.routing_table:
            log.debug("kad: {peer} stopped serving kad", peer=str(peer))
            self.routing_table.remove(peer)

    async def _ping(self, peer: PeerID) -> bool:
        try:
            await self._timed(self.host.ping(peer, 1), self.ping_timeout)
        except CancelledError:
            raise
        except Exception as exc:
            log.debug("kad: ping of {peer} failed: {error}", peer=str(peer), error=exc)
            return False
        return True

    async def _verify_and_add(self, peer: PeerID) -> None:
        self._verifying.add(peer)
        try:
            if await self._ping(peer) and self.host.peerstore.supports(peer, self.protocol):
                if self.routing_table.add(peer):
                    log.debug("kad: added {peer} to the routing table", peer=str(peer))
        finally:
            self._verifying.discard(peer)

    def _check_head(self, peer: PeerID) -> None:
        """Routing-table hook: a bucket is full; is its least recently seen peer alive?"""
        self._spawn(self._check(peer))

    async def _check(self, peer: PeerID) -> None:
        try:
            alive = await self._ping(peer)
        except CancelledError:
            self.routing_table.seen(peer)  # no verdict: keep it
            raise
        if alive:
            self.routing_table.seen(peer)
        else:
            self.routing_table.remove(peer)

    def _query_succeeded(self, peer: PeerID) -> None:
        self._failures.pop(peer, None)
        if peer in self.routing_table:
            self.routing_table.seen(peer)
        elif self.host.peerstore.supports(peer, self.protocol):
            # It just answered a kad query: as good a liveness proof as a ping.
            self.routing_table.add(peer)

    def _query_failed(self, peer: PeerID) -> None:
        if peer not in self.routing_table:
            return
        failures = self._failures.get(peer, 0) + 1
        if failures >= MAX_FAILURES:
            self._failures.pop(peer, None)
            self.routing_table.remove(peer)
            log.debug("kad: dropped unresponsive {peer}", peer=str(peer))
        else:
            self._failures[peer] = failures

    # -- client side -------------------------------------------------------------------

    async def _rpc(self, peer: PeerID, request: KadMessage, expect_reply: bool = True) -> KadMessage | None:
        """One request on a fresh stream; the reply (or None without one)."""
        # Unconnected peers are dialed at their known addresses only, never
        # through peer routing (that would recurse into another lookup).
        addrs = None if self.host.is_connected(peer) else self.host.peerstore.addrs(peer)
        stream = await self.host.new_stream(peer, [self.protocol], addrs)
        try:
            await write_message(stream, request, self.max_message_size)
            reply = None
            if expect_reply:
                reply = await read_message(stream, self.max_message_size)
                if reply is None:
                    raise KadError(f"{peer} closed the stream without a reply")
        except BaseException:
            stream.reset()
            raise
        try:
            await stream.close()
        except StreamError:
            pass  # js resets after its response: the answer is complete, that is fine
        return reply

    async def request(self, peer: PeerID, request: KadMessage, expect_reply: bool = True) -> KadMessage | None:
        """Send one request to ``peer`` with the request timeout; track liveness."""
        started = self.clock.seconds()
        try:
            reply = await self._timed(self._rpc(peer, request, expect_reply), self.request_timeout)
        except CancelledError:
            raise
        except Exception:
            self.query_seconds.observe(type_name(request.type), "error", value=self.clock.seconds() - started)
            self._query_failed(peer)
            raise
        self.query_seconds.observe(type_name(request.type), "ok", value=self.clock.seconds() - started)
        if reply is not None:
            self._learn(reply.closer_peers)
            self._learn(reply.provider_peers)
        self._query_succeeded(peer)
        return reply

    def _learn(self, peers: Iterable[KadPeer]) -> None:
        """Remember addresses heard from third parties, briefly."""
        for entry in peers:
            if entry.peer != self.host.peer_id and entry.addrs:
                self.host.peerstore.add_addrs(entry.peer, entry.addrs, TEMP_ADDR_TTL)

    def _dialable(self, peer: PeerID) -> bool:
        return self.host.is_connected(peer) or bool(self.host.peerstore.addrs(peer))

    def _seeds(self, target: bytes) -> list[PeerID]:
        seeds = self.routing_table.closest(target, self.k)
        if not seeds:
            # Nobody verified yet (e.g. right after start): try connected kad
            # servers and the bootstrap peers; non-servers fail fast.
            seeds = [p for p in self.host.connected_peers()
                     if self.host.peerstore.supports(p, self.protocol)]
            seeds += [p for p, _ in self.bootstrap_peers if p not in seeds]
        return [p for p in seeds if p != self.host.peer_id]

    async def _lookup(self, key: bytes, msg_type: MessageType,
                      on_reply: Callable[[PeerID, KadMessage, Lookup], None] | None = None) -> Lookup:
        """Drive an iterative lookup for ``key`` with requests of ``msg_type``."""
        target = kad_id(key)
        started = self.clock.seconds()
        lookup = Lookup(target, self._seeds(target), k=self.k, alpha=self.alpha,
                        exclude=[self.host.peer_id])
        pending: dict[PeerID, Deferred] = {}
        wake: list[Deferred] = []

        def finished(result, peer: PeerID) -> None:
            pending.pop(peer, None)
            if isinstance(result, Failure):
                if not result.check(CancelledError):
                    log.debug("kad: {peer} failed a lookup query: {error}", peer=str(peer),
                              error=result.value)
                lookup.on_failure(peer)
            else:
                closer = [p.peer for p in result.closer_peers
                          if p.peer != self.host.peer_id and self._dialable(p.peer)]
                lookup.on_response(peer, closer)
                if on_reply is not None:
                    try:
                        on_reply(peer, result, lookup)
                    except Exception:
                        log.failure("kad lookup callback failed")
            if wake:
                wake.pop().callback(None)

        try:
            while True:
                issued = lookup.next_queries()
                for peer in issued:
                    d = Deferred.fromCoroutine(self.request(peer, KadMessage(type=msg_type, key=key)))
                    pending[peer] = d
                    d.addBoth(finished, peer)
                if lookup.done:
                    break
                if not pending:
                    if issued:
                        continue  # they all failed at once (e.g. no address): ask the next ones
                    break
                waiter: Deferred = Deferred()
                wake.append(waiter)
                await waiter
        finally:
            for d in list(pending.values()):
                d.cancel()
        self.lookup_seconds.observe(type_name(msg_type), value=self.clock.seconds() - started)
        if self.lookup_observer is not None:
            try:
                self.lookup_observer(key, msg_type, lookup)
            except Exception:
                log.failure("kad lookup observer failed")
        return lookup

    async def get_closest_peers(self, key: bytes) -> list[PeerID]:
        """The k peers closest to ``key`` (raw bytes; a peer's multihash for peers)
        that answered an iterative FIND_NODE lookup, nearest first."""
        lookup = await self._lookup(bytes(key), MessageType.FIND_NODE)
        return lookup.closest()

    def _known_addrs(self, peer: PeerID) -> list[Multiaddr]:
        known = self.host.peerstore.addrs(peer)
        if not known:
            known = [c.remote_addr.to_bytes() for c in self.host.connections(peer)
                     if c.remote_addr is not None]
        return _multiaddrs(known)

    async def find_peer(self, peer: PeerID) -> list[Multiaddr]:
        """Addresses of ``peer``: from a live connection or the peerstore if we
        have them, else from a FIND_NODE lookup.  Empty if nobody knows it."""
        if peer == self.host.peer_id:
            return self.host.listen_addrs()
        known = self._known_addrs(peer)
        if known:
            return known
        await self.lookup_peer(peer)  # _learn stored what it found in the peerstore
        return _multiaddrs(self.host.peerstore.addrs(peer))

    async def lookup_peer(self, peer: PeerID) -> list[Multiaddr]:
        """Ask the network, not the peerstore: a FIND_NODE lookup for ``peer``
        that stops as soon as some peer reports its addresses, or ``peer``
        itself answers a query.  Returns the addresses so reported (for an
        answer of ``peer`` itself, those we reached it at); empty if nobody
        knows it."""
        found: dict[bytes, None] = {}

        def on_reply(sender: PeerID, reply: KadMessage, lookup: Lookup) -> None:
            if sender == peer:
                found.update(dict.fromkeys(a.to_bytes() for a in self._known_addrs(peer)))
                lookup.stop()
                return
            for entry in reply.closer_peers:
                if entry.peer == peer and entry.addrs:
                    found.update(dict.fromkeys(bytes(a) for a in entry.addrs))
                    lookup.stop()

        await self._lookup(peer.to_bytes(), MessageType.FIND_NODE, on_reply)
        return _multiaddrs(found)

    async def find_peer_addrs(self, peer: PeerID) -> list[Multiaddr]:
        """Alias of :meth:`find_peer`, for the swarm's dial hook."""
        return await self.find_peer(peer)

    def _own_addrs(self) -> list[bytes]:
        return [a.to_bytes() for a in self.host.listen_addrs()]

    async def provide(self, key: bytes) -> int:
        """Announce us as a provider of ``key`` (e.g. a multihash) to the k closest
        peers; we also record it locally.  Returns how many peers took it."""
        key = bytes(key)
        if not key or len(key) > MAX_KEY_LEN:
            raise ValueError(f"provider key of {len(key)} bytes")
        self.providers.add(key, self.host.peer_id)
        closest = await self.get_closest_peers(key)
        msg = KadMessage(type=MessageType.ADD_PROVIDER, key=key,
                         provider_peers=[KadPeer(self.host.peer_id, tuple(self._own_addrs()))])
        results = await DeferredList(
            [Deferred.fromCoroutine(self.request(p, msg, expect_reply=False)) for p in closest],
            consumeErrors=True)
        stored = sum(1 for ok, _ in results if ok)
        log.debug("kad: provided {key} to {n} of {m} peers", key=key.hex(), n=stored, m=len(closest))
        return stored

    def _provider_addrs(self, provider: PeerID, stored: Iterable[bytes]) -> list[bytes]:
        if provider == self.host.peer_id:
            return self._own_addrs()
        addrs = list(stored)
        for addr in self.host.peerstore.addrs(provider):
            if addr not in addrs:
                addrs.append(addr)
        return addrs

    async def find_providers(self, key: bytes, count: int = K) -> list[tuple[PeerID, list[Multiaddr]]]:
        """Up to ``count`` providers of ``key`` with their addresses: our own
        records first, then from an iterative GET_PROVIDERS lookup."""
        key = bytes(key)
        found: OrderedDict[PeerID, list[bytes]] = OrderedDict()
        for provider, addrs in self.providers.get(key):
            found[provider] = self._provider_addrs(provider, addrs)
        if len(found) < count:
            def on_reply(_from: PeerID, reply: KadMessage, lookup: Lookup) -> None:
                for entry in reply.provider_peers:
                    addrs = found.setdefault(entry.peer, [])
                    for addr in entry.addrs:
                        if addr not in addrs:
                            addrs.append(addr)
                if len(found) >= count:
                    lookup.stop()

            await self._lookup(key, MessageType.GET_PROVIDERS, on_reply)
        return [(p, _multiaddrs(a)) for p, a in list(found.items())[:count]]

    # -- rendezvous --------------------------------------------------------------------------

    def advertise(self, topic: str, ttl: float = ADVERTISE_TTL) -> None:
        """Keep us listed as a rendezvous peer of ``topic``: provide its key now and
        again at 7/8 of ``ttl`` (go's ``dutil.Advertise``), retrying after
        :data:`ADVERTISE_RETRY` when nobody took it."""
        if topic in self._advertised:
            return
        self._advertised[topic] = None
        self._spawn(self._advertise(topic, ttl))

    def stop_advertising(self, topic: str) -> None:
        call = self._advertised.pop(topic, None)
        if call is not None and call.active():
            call.cancel()
        self.providers.remove(rendezvous_key(topic), self.host.peer_id)

    async def _advertise(self, topic: str, ttl: float) -> None:
        if topic not in self._advertised:
            return
        try:
            stored = await self.provide(rendezvous_key(topic))
        except CancelledError:
            raise
        except Exception as exc:
            log.info("kad: advertising {topic} failed: {error}", topic=topic, error=exc)
            stored = 0
        if topic not in self._advertised:
            return
        delay = ttl * 7 / 8 if stored else ADVERTISE_RETRY
        self._advertised[topic] = self.clock.callLater(
            delay, lambda: self._spawn(self._advertise(topic, ttl)))

    async def find_rendezvous_peers(self, topic: str, count: int = 100) -> list[tuple[PeerID, list[Multiaddr]]]:
        """Peers advertising ``topic`` (go's ``FindPeers``), with their addresses."""
        return await self.find_providers(rendezvous_key(topic), count)

    # -- server side -------------------------------------------------------------------------

    async def _serve(self, stream, conn) -> None:
        """Answer requests on an inbound stream until the peer closes it."""
        peer = conn.peer
        try:
            while True:
                request = await self._timed(read_message(stream, self.max_message_size),
                                            STREAM_IDLE_TIMEOUT)
                if request is None:
                    break
                reply = self.handle_request(peer, request)
                if reply is not None:
                    await write_message(stream, reply, self.max_message_size)
            await stream.close()
        except (KadCodecError, KadProtocolError, TimeoutError) as exc:
            log.info("kad: closing stream from {peer}: {error}", peer=str(peer), error=exc)
            stream.reset()

    def handle_request(self, sender: PeerID, request: KadMessage) -> KadMessage | None:
        """The reply to ``request`` from ``sender`` (None for ADD_PROVIDER).

        Raises :class:`KadProtocolError` for requests we refuse.
        """
        kind = request.type
        self.requests_served.inc(type_name(kind))
        if kind == MessageType.PING:
            return KadMessage(type=MessageType.PING)
        if not request.key:
            raise KadProtocolError(f"{kind} request without a key")
        if kind == MessageType.FIND_NODE:
            return KadMessage(type=kind, closer_peers=self._closer_peers(request.key, sender))
        if kind == MessageType.GET_VALUE:
            return KadMessage(type=kind, key=request.key,
                              closer_peers=self._closer_peers(request.key, sender))
        if kind in (MessageType.GET_PROVIDERS, MessageType.ADD_PROVIDER) and len(request.key) > MAX_KEY_LEN:
            raise KadProtocolError(f"provider key of {len(request.key)} bytes")
        if kind == MessageType.GET_PROVIDERS:
            providers = [KadPeer(p, tuple(self._provider_addrs(p, addrs)))
                         for p, addrs in self.providers.get(request.key)]
            return KadMessage(type=kind, key=request.key, provider_peers=providers,
                              closer_peers=self._closer_peers(request.key, sender))
        if kind == MessageType.ADD_PROVIDER:
            self._add_provider(sender, request)
            return None
        raise KadProtocolError(f"unsupported kad request type {kind}")

    def _add_provider(self, sender: PeerID, request: KadMessage) -> None:
        for entry in request.provider_peers:
            if entry.peer != sender:
                # Only a peer may announce itself (go and js have the same rule).
                log.info("kad: {sender} tried to add {other} as a provider", sender=str(sender),
                         other=str(entry.peer))
                continue
            if not entry.addrs:
                log.debug("kad: provider record from {sender} without addresses", sender=str(sender))
                continue
            self.providers.add(request.key, sender, entry.addrs)

    def _closer_peers(self, key: bytes, requester: PeerID) -> list[KadPeer]:
        """The k peers we know closest to ``key``: never the requester, never us,
        only peers with addresses.  For FIND_NODE of a peer we know (e.g. a
        connected client-mode peer outside the table) that peer comes first,
        as in go, so it can be found through us."""
        target_peer = None
        try:
            target_peer = PeerID.from_bytes(key)
        except InvalidPeerID:
            pass
        exclude = {requester, self.host.peer_id}
        candidates = self.routing_table.closest(kad_id(key), self.k, exclude=exclude)
        if target_peer is not None and target_peer not in exclude and target_peer not in candidates:
            candidates = [target_peer] + candidates[: self.k - 1]
        out = []
        for peer in candidates:
            addrs = self.host.peerstore.addrs(peer)
            if not addrs:
                continue
            connection = (ConnectionType.CONNECTED if self.host.is_connected(peer)
                          else ConnectionType.NOT_CONNECTED)
            out.append(KadPeer(peer, tuple(addrs), connection))
        return out
