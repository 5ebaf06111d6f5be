"""What we know about other peers: addresses with TTLs, protocols, keys, latency.

Pure and in memory; time comes from an injected clock (``seconds()``), so
expiry is testable with ``task.Clock``.  Modelled on go-libp2p's memory
peerstore:

* Addresses carry a TTL.  :data:`PERMANENT_ADDR_TTL` and
  :data:`CONNECTED_ADDR_TTL` never expire; when a peer disconnects, its
  connected addresses become :data:`RECENTLY_CONNECTED_ADDR_TTL` ones
  (:meth:`Peerstore.disconnected`).  Expired addresses vanish on read and on
  :meth:`Peerstore.gc`.  Re-adding an address only ever extends its life.
* Memory is bounded: at most ``max_addrs_per_peer`` addresses per peer (the
  soonest-expiring one makes room), and at most ``max_peers`` peers, evicting
  the least recently updated peer that is neither connected nor holding
  permanent addresses.
* A signed peer record replaces the previous one only if its sequence
  number is higher.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Iterable, Optional

from aicn.log import Logger
from aicn.p2p.keys import InvalidKey, PublicKey
from aicn.p2p.peerid import PeerID
from aicn.p2p.record import RecordError, open_peer_record

log = Logger()

#: Addresses we were told to keep forever (bootstrap peers, config).
PERMANENT_ADDR_TTL = math.inf
#: Addresses of a live connection; they never expire while it lasts.
CONNECTED_ADDR_TTL = 1e15
#: After a disconnect (go: 15 minutes).
RECENTLY_CONNECTED_ADDR_TTL = 15 * 60.0
#: Addresses heard from third parties (e.g. kad), go's TempAddrTTL.
TEMP_ADDR_TTL = 2 * 60.0

#: EWMA smoothing factor for latency, as go-libp2p's metrics.
LATENCY_EWMA_ALPHA = 0.1
MAX_PROTOCOLS = 512


class PeerstoreError(ValueError):
    """Data offered to the peerstore is inconsistent (e.g. a key for another peer)."""


class _Peer:
    __slots__ = (
        "addrs",
        "protocols",
        "public_key",
        "agent",
        "protocol_version",
        "latency",
        "record_seq",
        "record",
        "connected",
    )

    def __init__(self) -> None:
        #: address -> (expiry time, ttl); insertion-ordered.
        self.addrs: dict[bytes, tuple[float, float]] = {}
        self.protocols: frozenset[str] = frozenset()
        self.public_key: Optional[PublicKey] = None
        self.agent: Optional[str] = None
        self.protocol_version: Optional[str] = None
        self.latency: Optional[float] = None
        self.record_seq: Optional[int] = None
        self.record: Optional[bytes] = None
        self.connected = False

    def pinned(self) -> bool:
        return self.connected or any(ttl == PERMANENT_ADDR_TTL for _, ttl in self.addrs.values())


class Peerstore:
    """In-memory peer metadata; ``clock`` provides ``seconds()``."""

    def __init__(self, clock, max_addrs_per_peer: int = 32, max_peers: int = 10_000) -> None:
        self._clock = clock
        self.max_addrs_per_peer = max_addrs_per_peer
        self.max_peers = max_peers
        self._peers: OrderedDict[PeerID, _Peer] = OrderedDict()

    # -- bookkeeping ---------------------------------------------------------------

    def _get(self, peer: PeerID) -> Optional[_Peer]:
        return self._peers.get(peer)

    def _touch(self, peer: PeerID) -> _Peer:
        """The peer's entry, created if needed, marked most recently used."""
        data = self._peers.get(peer)
        if data is None:
            data = self._peers[peer] = _Peer()
            self._evict()
        else:
            self._peers.move_to_end(peer)
        return data

    def _evict(self) -> None:
        excess = len(self._peers) - self.max_peers
        if excess <= 0:
            return
        newest = next(reversed(self._peers))
        for peer in list(self._peers):
            if excess <= 0:
                break
            if peer != newest and not self._peers[peer].pinned():
                del self._peers[peer]
                excess -= 1

    def peers(self) -> list[PeerID]:
        """Every peer we hold anything about."""
        return list(self._peers)

    def remove(self, peer: PeerID) -> None:
        """Forget everything about ``peer``."""
        self._peers.pop(peer, None)

    def connected(self, peer: PeerID) -> None:
        """``peer`` has a live connection: keep it (and its data) from eviction."""
        self._touch(peer).connected = True

    def disconnected(self, peer: PeerID) -> None:
        """The last connection to ``peer`` closed: its connected addresses now
        expire after :data:`RECENTLY_CONNECTED_ADDR_TTL`."""
        data = self._get(peer)
        if data is None:
            return
        data.connected = False
        self.update_addrs(peer, CONNECTED_ADDR_TTL, RECENTLY_CONNECTED_ADDR_TTL)

    # -- addresses -----------------------------------------------------------------

    def add_addrs(self, peer: PeerID, addrs: Iterable[bytes], ttl: float) -> None:
        """Add binary multiaddrs for ``peer``, valid for ``ttl`` seconds.

        Known addresses keep the later of their old and new expiry.  A TTL
        of zero or less is ignored.
        """
        if ttl <= 0:
            return
        data = self._touch(peer)
        now = self._clock.seconds()
        expiry = now + ttl
        self._expire(data, now)
        for addr in addrs:
            addr = bytes(addr)
            old = data.addrs.get(addr)
            if old is not None:
                if expiry > old[0]:
                    data.addrs[addr] = (expiry, ttl)
                continue
            if len(data.addrs) >= self.max_addrs_per_peer:
                victim = min(data.addrs, key=lambda a: data.addrs[a][0])
                if data.addrs[victim][0] >= expiry:
                    continue  # every known address outlives this one
                del data.addrs[victim]
            data.addrs[addr] = (expiry, ttl)

    def update_addrs(self, peer: PeerID, old_ttl: float, new_ttl: float) -> None:
        """Give every address of ``peer`` that was added with ``old_ttl`` the new TTL from now."""
        data = self._get(peer)
        if data is None:
            return
        now = self._clock.seconds()
        for addr, (_, ttl) in list(data.addrs.items()):
            if ttl == old_ttl:
                if new_ttl <= 0:
                    del data.addrs[addr]
                else:
                    data.addrs[addr] = (now + new_ttl, new_ttl)

    def clear_addrs(self, peer: PeerID) -> None:
        """Drop all of ``peer``'s addresses."""
        data = self._get(peer)
        if data is not None:
            data.addrs.clear()

    def addrs(self, peer: PeerID) -> list[bytes]:
        """``peer``'s unexpired addresses, oldest first."""
        data = self._get(peer)
        if data is None:
            return []
        self._expire(data, self._clock.seconds())
        return list(data.addrs)

    @staticmethod
    def _expire(data: _Peer, now: float) -> int:
        dead = [a for a, (expiry, _) in data.addrs.items() if expiry <= now]
        for addr in dead:
            del data.addrs[addr]
        return len(dead)

    def gc(self) -> int:
        """Drop expired addresses everywhere, and peers left with nothing; return
        the number of addresses dropped."""
        now = self._clock.seconds()
        dropped = 0
        for peer, data in list(self._peers.items()):
            dropped += self._expire(data, now)
            if not (data.addrs or data.protocols or data.public_key or data.record or data.connected):
                del self._peers[peer]
        return dropped

    # -- signed peer records ---------------------------------------------------------

    def consume_peer_record(self, envelope: bytes, ttl: float, expected_peer: Optional[PeerID] = None) -> bool:
        """Verify and store a signed peer record, adding its addresses with ``ttl``.

        Returns ``False`` (and changes nothing) if the record is not newer than
        the one we hold.  Raises :class:`~aicn.p2p.record.RecordError` if it
        does not verify.
        """
        peer, seq, addrs = open_peer_record(envelope, expected_peer)
        data = self._get(peer)
        if data is not None and data.record_seq is not None and seq <= data.record_seq:
            return False
        data = self._touch(peer)
        data.record_seq = seq
        data.record = bytes(envelope)
        self.add_addrs(peer, addrs, ttl)
        return True

    def peer_record(self, peer: PeerID) -> Optional[bytes]:
        """The envelope of the newest signed record of ``peer``, if any."""
        data = self._get(peer)
        return data.record if data else None

    def peer_record_seq(self, peer: PeerID) -> Optional[int]:
        data = self._get(peer)
        return data.record_seq if data else None

    # -- protocols, key, agent, latency ---------------------------------------------

    def set_protocols(self, peer: PeerID, protocols: Iterable[str]) -> None:
        """Replace ``peer``'s protocol list (identify sends the full list)."""
        protos = frozenset(p for p in protocols if isinstance(p, str))
        if len(protos) > MAX_PROTOCOLS:
            protos = frozenset(sorted(protos)[:MAX_PROTOCOLS])
        self._touch(peer).protocols = protos

    def protocols(self, peer: PeerID) -> list[str]:
        """``peer``'s protocols, sorted."""
        data = self._get(peer)
        return sorted(data.protocols) if data else []

    def supports(self, peer: PeerID, protocol: str) -> bool:
        data = self._get(peer)
        return data is not None and protocol in data.protocols

    def set_public_key(self, peer: PeerID, key: PublicKey) -> None:
        """Store ``peer``'s key; :class:`PeerstoreError` if it is not ``peer``'s."""
        if not peer.matches_public_key(key):
            raise PeerstoreError(f"key does not belong to {peer}")
        self._touch(peer).public_key = key

    def public_key(self, peer: PeerID) -> Optional[PublicKey]:
        """The stored key, else the one inlined in the peer ID, else ``None``."""
        data = self._get(peer)
        if data is not None and data.public_key is not None:
            return data.public_key
        try:
            return peer.extract_public_key()
        except InvalidKey:
            return None

    def set_agent(self, peer: PeerID, agent: Optional[str], protocol_version: Optional[str] = None) -> None:
        """Store the agent (and protocol version, when given) identify reported."""
        data = self._touch(peer)
        if agent is not None:
            data.agent = agent
        if protocol_version is not None:
            data.protocol_version = protocol_version

    def agent(self, peer: PeerID) -> Optional[str]:
        data = self._get(peer)
        return data.agent if data else None

    def protocol_version(self, peer: PeerID) -> Optional[str]:
        data = self._get(peer)
        return data.protocol_version if data else None

    def record_latency(self, peer: PeerID, seconds: float) -> None:
        """Fold an RTT sample into ``peer``'s EWMA (the first sample sets it)."""
        if not (seconds >= 0 and math.isfinite(seconds)):
            return
        data = self._touch(peer)
        if data.latency is None:
            data.latency = seconds
        else:
            data.latency = (1 - LATENCY_EWMA_ALPHA) * data.latency + LATENCY_EWMA_ALPHA * seconds

    def latency(self, peer: PeerID) -> Optional[float]:
        """The smoothed RTT in seconds, or ``None`` without samples."""
        data = self._get(peer)
        return data.latency if data else None

    # -- identify ------------------------------------------------------------------

    def consume_identify(self, result, connected: bool = True) -> None:
        """Apply an :class:`~aicn.p2p.identify.IdentifyResult` for ``result.peer``.

        Stores key, protocols, agent and versions.  Addresses come from the
        signed record when it is valid and newer; otherwise the listen
        addresses are added (connected TTL while ``connected``, else
        recently-connected).  A push without protocols still replaces them,
        as in go.
        """
        peer = result.peer
        if peer is None:
            return
        ttl = CONNECTED_ADDR_TTL if connected else RECENTLY_CONNECTED_ADDR_TTL
        if result.public_key is not None:
            self.set_public_key(peer, result.public_key)
        self.set_protocols(peer, result.protocols)
        self.set_agent(peer, result.agent_version, result.protocol_version)
        used_record = False
        if result.signed_record_envelope is not None:
            try:
                used_record = self.consume_peer_record(result.signed_record_envelope, ttl, peer)
            except RecordError as exc:  # parse_identify verified it; be safe anyway
                log.info("bad peer record from {peer}: {error}", peer=peer, error=exc)
        if not used_record and result.signed_record is None:
            self.add_addrs(peer, result.listen_addrs, ttl)
