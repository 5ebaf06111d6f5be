"""The routing table: 256 k-buckets by common prefix length with our own id.

Pure and synchronous.  Within a bucket peers are kept least recently seen
first.  A full bucket never drops a live peer for a newcomer: the newcomer
waits in the bucket's replacement cache and the table asks its owner to check
the bucket's head (``needs_check(head)``, usually a ping).  If the head
answers, the owner calls :meth:`RoutingTable.seen` and the head moves to the
tail; if it does not, the owner calls :meth:`RoutingTable.remove`, and the
most recent replacement takes its place.  This is Kademlia's "prefer old,
proven peers" rule, and what js kad-dht does with its ping queue.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable

from aicn.p2p.kad.keyspace import KEY_BITS, common_prefix_len, distance, kad_id
from aicn.p2p.peerid import PeerID

#: Bucket size in go, js and the paper.
K = 20


class _Bucket:
    __slots__ = ("peers", "replacements", "checking")

    def __init__(self) -> None:
        #: peer -> kad id, least recently seen first.
        self.peers: OrderedDict[PeerID, bytes] = OrderedDict()
        #: candidates waiting for a slot, most recent last.
        self.replacements: OrderedDict[PeerID, bytes] = OrderedDict()
        #: the head whose liveness check is outstanding, if any.
        self.checking: PeerID | None = None


class RoutingTable:
    """Kademlia k-buckets around ``local_peer_id``.

    ``needs_check(peer)`` is called (at most once per outstanding check and
    bucket) when a newcomer finds the bucket full; its owner must answer
    with :meth:`seen` or :meth:`remove` for that peer.
    """

    def __init__(self, local_peer_id: PeerID, k: int = K,
                 needs_check: Callable[[PeerID], None] | None = None) -> None:
        if k < 1:
            raise ValueError("k must be positive")
        self.local_peer_id = local_peer_id
        self.local_id = kad_id(local_peer_id)
        self.k = k
        self.needs_check = needs_check
        # Bucket i holds peers sharing exactly i leading bits with us; a peer
        # can never share all 256 (that would be a sha256 collision with us).
        self._buckets = [_Bucket() for _ in range(KEY_BITS)]

    # -- queries -------------------------------------------------------------------

    def bucket_index(self, peer: PeerID) -> int:
        """The bucket ``peer`` belongs in (its common prefix length with us)."""
        return min(common_prefix_len(self.local_id, kad_id(peer)), KEY_BITS - 1)

    def __contains__(self, peer: object) -> bool:
        if not isinstance(peer, PeerID) or peer == self.local_peer_id:
            return False
        return peer in self._buckets[self.bucket_index(peer)].peers

    def __len__(self) -> int:
        return sum(len(b.peers) for b in self._buckets)

    def peers(self) -> list[PeerID]:
        """Every peer in the table, bucket by bucket."""
        return [p for b in self._buckets for p in b.peers]

    def bucket(self, index: int) -> list[PeerID]:
        """The peers of bucket ``index``, least recently seen first."""
        return list(self._buckets[index].peers)

    def replacements(self, index: int) -> list[PeerID]:
        """Candidates waiting for bucket ``index``, most recent last."""
        return list(self._buckets[index].replacements)

    def closest(self, key_id: bytes, count: int | None = None,
                exclude: Iterable[PeerID] = ()) -> list[PeerID]:
        """Up to ``count`` (default k) peers nearest to the key-space id ``key_id``."""
        count = self.k if count is None else count
        excluded = set(exclude)
        ranked = sorted(
            ((distance(kid, key_id), p) for b in self._buckets for p, kid in b.peers.items()
             if p not in excluded),
            key=lambda item: item[0],
        )
        return [p for _, p in ranked[:count]]

    # -- updates -------------------------------------------------------------------

    def add(self, peer: PeerID) -> bool:
        """Offer a verified, live peer.  True if it is (now) in the table.

        A known peer is marked as just seen.  If its bucket is full, the peer
        becomes a replacement candidate and the bucket's head is sent to
        ``needs_check``; the result is False.
        """
        if peer == self.local_peer_id:
            return False
        bucket = self._buckets[self.bucket_index(peer)]
        if peer in bucket.peers:
            bucket.peers.move_to_end(peer)
            return True
        if len(bucket.peers) < self.k:
            bucket.peers[peer] = kad_id(peer)
            bucket.replacements.pop(peer, None)
            return True
        bucket.replacements[peer] = kad_id(peer)
        bucket.replacements.move_to_end(peer)
        while len(bucket.replacements) > self.k:
            bucket.replacements.popitem(last=False)
        if bucket.checking is None:
            head = next(iter(bucket.peers))
            bucket.checking = head
            if self.needs_check is not None:
                self.needs_check(head)
        return False

    def seen(self, peer: PeerID) -> None:
        """``peer`` proved alive: move it to its bucket's tail and end any check of it."""
        if peer == self.local_peer_id:
            return
        bucket = self._buckets[self.bucket_index(peer)]
        if peer in bucket.peers:
            bucket.peers.move_to_end(peer)
        if bucket.checking == peer:
            bucket.checking = None

    def remove(self, peer: PeerID) -> bool:
        """Drop ``peer`` (dead or no longer a DHT server); promote the newest
        replacement into the freed slot.  True if it was in the table."""
        if peer == self.local_peer_id:
            return False
        bucket = self._buckets[self.bucket_index(peer)]
        bucket.replacements.pop(peer, None)
        if bucket.checking == peer:
            bucket.checking = None
        if bucket.peers.pop(peer, None) is None:
            return False
        if bucket.replacements:
            newcomer, newcomer_id = bucket.replacements.popitem(last=True)
            bucket.peers[newcomer] = newcomer_id
        return True
