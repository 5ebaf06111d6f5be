"""Dial history and the startup dials: who we were connected to, and reconnecting.

The Go node keeps ``conns.db``; we keep the ``dial_history`` table of
:class:`aicn.storage.Database`: per peer an address, the last connection
time, the last success and the number of consecutive failed dials.

:class:`DialHistory` observes the host and records every new connection:

* outbound: the address we dialled (the connection's remote address), as Go
  does;
* inbound: the remote address of an inbound connection is the peer's
  ephemeral source port, useless for dialling back (Go records it anyway), so
  we wait for identify and record the peer's best listen address instead:
  public before private before loopback, and loopback only when the peer
  itself connected from loopback.  A peer that announces no usable address is
  not recorded.

:func:`connect_startup_peers` runs once at startup:

1. prune the history (≥ 10 failures in a row and no success for 30 days);
2. give the bootstrap peers permanent addresses in the peerstore and protect
   them in the connection manager;
3. dial every history peer in parallel; a failure increments its counter, a
   success resets it;
4. dial the bootstrap peers not yet connected.

Step 4 has two policies.  By default (``history_threshold=None``) the
bootstrap peers are always dialled, concurrently with the history: they are
the network's hubs (pubsub and DHT go through them), and the Go node does
the same since v0.1.9.  With ``history_threshold=N`` they are dialled only if
fewer than ``N`` history peers connected, after the history dials (Go v0.1.2
used 4 and counted public addresses only; we count every connected history
peer, so that LAN and loopback deployments behave the same); in that mode a
bootstrap peer found in the history is dialled with the history too.

Nothing here raises on a failed dial or a bad entry: each is logged at info
with its reason.  We never dial ourselves (a bootstrap node usually lists
itself in its own ``Bootstrap``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

import attrs
from multiaddr import Multiaddr
from twisted.internet.defer import Deferred, DeferredList

from aicn.log import Logger
from aicn.p2p import maddr
from aicn.p2p.peerid import InvalidPeerID, PeerID
from aicn.p2p.peerstore import PERMANENT_ADDR_TTL
from aicn.storage import StorageError

__all__ = [
    "BOOTSTRAP_TAG",
    "STARTUP_DIAL_TIMEOUT",
    "DialHistory",
    "StartupSummary",
    "choose_listen_addr",
    "parse_bootstrap",
    "connect_startup_peers",
]

log = Logger()

#: Protection tag of bootstrap peers in the connection manager.
BOOTSTRAP_TAG = "bootstrap"
#: Limit for one startup dial (all of a peer's addresses together).
STARTUP_DIAL_TIMEOUT = 30.0


def _rank(addr: Multiaddr, allow_loopback: bool) -> int | None:
    """0 public, 1 private, 2 loopback; ``None`` when not usable for dialling back."""
    try:
        kind, host, port = maddr.tcp_target(addr)
    except maddr.InvalidMultiaddr:
        return None
    if port == 0:
        return None
    if kind.startswith("dns"):
        return 0
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if ip.is_unspecified or ip.is_multicast or ip.is_link_local:
        return None
    if ip.is_loopback:
        return 2 if allow_loopback else None
    return 0 if ip.is_global else 1


def choose_listen_addr(listen_addrs: Iterable[bytes | str | Multiaddr],
                       remote_addr: Multiaddr | None) -> Multiaddr | None:
    """The listen address to remember for a peer that connected to us.

    Public before private before loopback, in the peer's order within a
    rank; loopback addresses only when ``remote_addr`` is loopback (or
    unknown): another machine's 127.0.0.1 is not that machine.
    """
    allow_loopback = True
    if remote_addr is not None:
        allow_loopback = _rank(remote_addr, True) == 2
    best: tuple[int, Multiaddr] | None = None
    for raw in listen_addrs:
        try:
            addr = maddr.parse(raw)
            transport, _ = maddr.split_peer(addr)
        except (maddr.InvalidMultiaddr, ValueError, TypeError, KeyError, IndexError):
            # The multiaddr package parses binary addresses lazily: garbage
            # bytes fail here, with its own assorted errors.
            continue
        rank = _rank(transport, allow_loopback)
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, transport)
    return best[1] if best else None


class DialHistory:
    """Records each new connection in the database's dial history (see the module docstring)."""

    def __init__(self, host, db, clock) -> None:
        self.host = host
        self.db = db
        self.clock = clock
        #: Inbound peers whose listen address we still wait for from identify.
        self._waiting_identify: set[PeerID] = set()
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self.host.add_observer(self)

    def stop(self) -> None:
        if self._started:
            self._started = False
            self.host.remove_observer(self)
            self._waiting_identify.clear()

    # -- host events ------------------------------------------------------------------------

    def connected(self, conn) -> None:
        if conn.direction == "Outbound" and conn.remote_addr is not None:
            self.record_success(conn.peer, conn.remote_addr)
        else:
            self._waiting_identify.add(conn.peer)

    def identified(self, peer: PeerID, result) -> None:
        if peer not in self._waiting_identify:
            return  # outbound (recorded already) or recorded on an earlier identify
        self._waiting_identify.discard(peer)
        remote = None
        for conn in self.host.connections(peer):
            if conn.direction == "Outbound":
                return  # we dialled it meanwhile; that address was recorded
            remote = remote or conn.remote_addr
        addr = choose_listen_addr(result.addrs, remote)
        if addr is None:
            log.debug("Not recording {peer} in the dial history: no usable listen address",
                      peer=str(peer))
            return
        self.record_success(peer, addr)

    def disconnected(self, conn) -> None:
        if not self.host.connections(conn.peer):
            self._waiting_identify.discard(conn.peer)

    # -- recording ----------------------------------------------------------------------------

    def record_success(self, peer: PeerID, addr: Multiaddr | str) -> None:
        """Remember ``peer`` at ``addr`` (without ``/p2p``), connected now."""
        try:
            self.db.record_success(str(peer), str(addr), self.clock.seconds())
        except StorageError as exc:
            log.warn("Cannot record {peer} in the dial history: {error}", peer=str(peer), error=exc)


@attrs.define
class StartupSummary:
    """What :func:`connect_startup_peers` did."""

    #: History entries pruned before dialling.
    pruned: int = 0
    history_connected: list[PeerID] = attrs.Factory(list)
    history_failed: list[PeerID] = attrs.Factory(list)
    bootstrap_connected: list[PeerID] = attrs.Factory(list)
    bootstrap_failed: list[PeerID] = attrs.Factory(list)
    #: Whether the bootstrap peers were dialled (see ``history_threshold``).
    bootstrap_dialled: bool = False


def parse_bootstrap(bootstrap: Iterable[str], self_id: PeerID | None = None) -> dict[PeerID, list[Multiaddr]]:
    """Group ``…/p2p/<id>`` addresses by peer; bad entries and ourselves are logged and skipped."""
    peers: dict[PeerID, list[Multiaddr]] = {}
    for text in bootstrap:
        try:
            transport, peer = maddr.split_peer(text)
        except maddr.InvalidMultiaddr as exc:
            log.warn("Ignoring bootstrap address {addr}: {error}", addr=text, error=exc)
            continue
        if peer is None:
            log.warn("Ignoring bootstrap address {addr}: no /p2p/<peer id>", addr=text)
            continue
        if peer == self_id:
            log.info("Not dialling bootstrap address {addr}: it is this node", addr=text)
            continue
        addrs = peers.setdefault(peer, [])
        if str(transport) and transport not in addrs:
            addrs.append(transport)
    return peers


async def _dial(host, clock, peer: PeerID, addrs: Sequence[Multiaddr] | None, timeout: float):
    d = Deferred.fromCoroutine(host.connect(peer, addrs))
    return await d.addTimeout(timeout, clock)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _record(db, call: str, *args) -> object:
    try:
        return getattr(db, call)(*args)
    except StorageError as exc:
        log.warn("Dial history: {call} failed: {error}", call=call, error=exc)
        return None


async def connect_startup_peers(host, db, bootstrap: Sequence[str], clock, connmgr=None, *,
                                history_threshold: int | None = None,
                                dial_timeout: float = STARTUP_DIAL_TIMEOUT) -> StartupSummary:
    """Prune the dial history, then dial it and the bootstrap peers (see the module docstring).

    ``bootstrap``: ``…/p2p/<id>`` multiaddrs.  ``connmgr`` (optional) gets the
    bootstrap peers protected under :data:`BOOTSTRAP_TAG`.  Never raises for
    a failed dial or a bad entry; returns a :class:`StartupSummary`.
    """
    summary = StartupSummary()
    me = host.peer_id
    summary.pruned = _record(db, "prune_history", clock.seconds()) or 0
    if summary.pruned:
        log.info("Pruned {count} dead peers from the dial history", count=summary.pruned)

    boot = parse_bootstrap(bootstrap, me)
    for peer, addrs in boot.items():
        host.peerstore.add_addrs(peer, [a.to_bytes() for a in addrs], PERMANENT_ADDR_TTL)
        if connmgr is not None:
            connmgr.protect(peer, BOOTSTRAP_TAG)

    try:
        records = db.history()
    except StorageError as exc:
        log.warn("Cannot read the dial history: {error}", error=exc)
        records = []

    async def dial_history_peer(record) -> None:
        try:
            peer = PeerID.from_string(record.peer_id)
            transport, addr_peer = maddr.split_peer(record.address)
            if addr_peer is not None and addr_peer != peer:
                raise maddr.InvalidMultiaddr(f"address {record.address} is for another peer")
        except (InvalidPeerID, maddr.InvalidMultiaddr) as exc:
            log.info("Bad dial history entry {peer}: {error}", peer=record.peer_id, error=exc)
            _record(db, "record_failure", record.peer_id, clock.seconds())
            return
        if peer == me:
            return  # never ourselves
        if peer in boot and history_threshold is None:
            return  # dialled as a bootstrap peer, at its configured addresses
        try:
            conn = await _dial(host, clock, peer, [transport], dial_timeout)
        except Exception as exc:
            failures = _record(db, "record_failure", record.peer_id, clock.seconds())
            log.info("History peer {peer} at {addr} unreachable ({failures} failures in a row): {error}",
                     peer=record.peer_id, addr=record.address, failures=failures, error=_reason(exc))
            summary.history_failed.append(peer)
            return
        addr = conn.remote_addr if conn.direction == "Outbound" and conn.remote_addr is not None else transport
        _record(db, "record_success", record.peer_id, str(addr), clock.seconds())
        summary.history_connected.append(peer)

    async def dial_bootstrap_peer(peer: PeerID, addrs: list[Multiaddr]) -> None:
        if host.is_connected(peer):
            summary.bootstrap_connected.append(peer)
            return
        try:
            conn = await _dial(host, clock, peer, addrs or None, dial_timeout)
        except Exception as exc:
            _record(db, "record_failure", str(peer), clock.seconds())  # no-op unless in the history
            log.info("Bootstrap peer {peer} unreachable: {error}", peer=str(peer),
                     error=_reason(exc))
            summary.bootstrap_failed.append(peer)
            return
        if conn.direction == "Outbound" and conn.remote_addr is not None:
            _record(db, "record_success", str(peer), str(conn.remote_addr), clock.seconds())
        summary.bootstrap_connected.append(peer)

    def run_all(coros) -> Deferred:
        return DeferredList([Deferred.fromCoroutine(c) for c in coros], consumeErrors=True)

    def bootstrap_dials() -> list:
        return [dial_bootstrap_peer(p, a) for p, a in boot.items()]

    history_dials = [dial_history_peer(r) for r in records]
    if history_threshold is None:
        summary.bootstrap_dialled = True
        await run_all(history_dials + bootstrap_dials())
    else:
        await run_all(history_dials)
        if len(summary.history_connected) < history_threshold:
            summary.bootstrap_dialled = True
            await run_all(bootstrap_dials())
        else:
            log.info("{count} history peers connected: not dialling the bootstrap peers",
                     count=len(summary.history_connected))
    log.info("Startup dials: {hc} history peers connected, {hf} unreachable; "
             "{bc} bootstrap peers connected, {bf} unreachable",
             hc=len(summary.history_connected), hf=len(summary.history_failed),
             bc=len(summary.bootstrap_connected), bf=len(summary.bootstrap_failed))
    return summary
