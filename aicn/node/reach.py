"""Whether a request to a node can be delivered, decided before it is sent.

A request over pubsub (v0.1.2 has no acknowledgement) to a node that is not
there would wait out its whole timeout: 2 minutes for a peer query, 190 or
330 s for a model call.  :meth:`Reachability.check` answers at once, or
within :data:`LOOKUP_TIMEOUT`, from the evidence this node has:

1. no peer at all on our topic: nothing we publish reaches anyone; fail now;
2. the target is subscribed to the topic through one of our own neighbours,
   or connected to us: reachable;
3. a heartbeat of the target heard in the last :data:`PEER_FRESH_AGE`
   seconds: reachable, unless our connection to it closed after that
   heartbeat (a node that went away; alive, it is heard again within one
   heartbeat interval);
4. a DHT lookup (:meth:`~aicn.p2p.kad.KadDHT.lookup_peer`) in which some
   peer reports the target, or the target answers: reachable;
5. otherwise it fails with 1005 (the spec's "node discovery and routing
   errors") and a message naming each missing piece of evidence, e.g.
   ``node 16Uiu2… is not reachable: not connected, no heartbeat in the last
   10 min, not among our 2 peers on topic DeepBrainChain, not found in the
   DHT``.

1004 stays what it is: a request that was delivered (as far as we know) and
not answered in time.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from aicn.errors import AICNError, ErrorCode
from aicn.log import Logger
from aicn.models.http import Timeout, with_timeout
from aicn.p2p.peerid import PeerID

__all__ = ["LOOKUP_TIMEOUT", "PEER_FRESH_AGE", "Reachability", "unreachable"]

log = Logger()

#: Heartbeats younger than this (seconds) are evidence that a node is there
#: (the age ``/ai/projects/peers`` and ``/proxy`` routing use too).
PEER_FRESH_AGE = 10 * 60.0
#: Longest wait for the DHT lookup of a node we have no other evidence of.
LOOKUP_TIMEOUT = 5.0
#: Most disconnect times remembered (the oldest go first).
MAX_TRACKED = 10000


def unreachable(node_id: str, why: str) -> AICNError:
    """1005 ``node <id> is not reachable: <why>``."""
    return AICNError(ErrorCode.RENDEZVOUS, f"node {node_id} is not reachable: {why}")


def _ago(seconds: float) -> str:
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


class Reachability:
    """The delivery evidence for requests on ``topic`` (see the module docstring).

    :param clock: time source.
    :param pubsub: anything with ``peers(topic)``.
    :param host: the libp2p host (``is_connected``, ``add_observer``), or None.
    :param dht: a :class:`~aicn.p2p.kad.KadDHT` (``lookup_peer``), or None.
    :param lookup_timeout: seconds the DHT lookup may take.
    :param fresh_age: seconds a heartbeat counts as evidence.
    """

    def __init__(self, clock: IReactorTime, pubsub: Any, topic: str, *, host: Any = None, dht: Any = None,
                 lookup_timeout: float = LOOKUP_TIMEOUT, fresh_age: float = PEER_FRESH_AGE) -> None:
        self.clock = clock
        self.pubsub = pubsub
        self.topic = topic
        self.host = host
        self.dht = dht
        self.lookup_timeout = lookup_timeout
        self.fresh_age = fresh_age
        #: node id -> when our last connection to it closed.
        self._left: OrderedDict[str, float] = OrderedDict()
        if host is not None:
            host.add_observer(self)

    # -- host observer ------------------------------------------------------------------

    def disconnected(self, conn) -> None:
        if self.host.is_connected(conn.peer):
            return
        node_id = str(conn.peer)
        self._left.pop(node_id, None)
        self._left[node_id] = self.clock.seconds()
        while len(self._left) > MAX_TRACKED:
            self._left.popitem(last=False)

    # -- the check -------------------------------------------------------------------------

    async def check(self, node_id: str, heard_at: float | None = None) -> str:
        """The evidence that a request to ``node_id`` can be delivered
        (``"subscribed"``, ``"connected"``, ``"heartbeat"`` or ``"dht"``); raises
        :func:`unreachable` (1005) when there is none.

        ``heard_at`` is when the node's latest heartbeat arrived (None: never).
        """
        topic_peers = {str(p) for p in self.pubsub.peers(self.topic)}
        if not topic_peers:
            raise unreachable(node_id, f"this node has no peers on topic {self.topic}, "
                                       "so no request can be delivered")
        if node_id in topic_peers:
            return "subscribed"
        peer = PeerID.from_string(node_id)
        if self.host is not None and self.host.is_connected(peer):
            return "connected"
        now = self.clock.seconds()
        left = self._left.get(node_id)
        fresh = heard_at is not None and now - heard_at <= self.fresh_age
        if fresh and (left is None or left < heard_at):
            return "heartbeat"

        reasons = ["not connected" if left is None else f"disconnected {_ago(now - left)}"]
        if fresh:
            reasons[0] += f", after its last heartbeat ({_ago(now - heard_at)})"
        else:
            reasons.append(f"no heartbeat in the last {self.fresh_age / 60:.0f} min")
        count = len(topic_peers)
        reasons.append(f"not among our {count} peer{'s' if count != 1 else ''} on topic {self.topic}")
        if self.dht is None:
            reasons.append("no DHT to look it up")
        elif await self._found(peer):
            return "dht"
        else:
            reasons.append("not found in the DHT")
        raise unreachable(node_id, ", ".join(reasons))

    async def _found(self, peer: PeerID) -> bool:
        try:
            addrs = await with_timeout(Deferred.fromCoroutine(self.dht.lookup_peer(peer)), self.lookup_timeout,
                                       self.clock)
        except Timeout:
            log.debug("DHT lookup of {peer} took over {seconds}s", peer=str(peer), seconds=self.lookup_timeout)
            return False
        except Exception as exc:  # a lookup fails in many ways; it found nothing
            log.info("DHT lookup of {peer} failed: {error}", peer=str(peer), error=repr(exc))
            return False
        return bool(addrs)
