"""An in-memory pubsub bus for application tests.

:class:`FakeBus` connects any number of :class:`FakePubSub` endpoints (one per
node) that offer the interface the application consumes (``subscribe``,
``unsubscribe``, ``publish``, ``peers``).  A publication is delivered to every
subscriber of its topic, the publisher included, as a :class:`PubSubMessage`
whose ``from_peer`` is the publisher; tests can inspect every published
payload (:attr:`FakeBus.published`), inject arbitrary messages
(:meth:`FakeBus.inject`) and hold deliveries (:attr:`FakeBus.paused`).

Delivery is synchronous but never re-entrant: a publication made while
another is being delivered (a reply published by a handler) is queued and
delivered once the current one is done, still before the outer ``publish``
returns.  So an answer can arrive before the request's ``publish`` call
completes, which the application must cope with.
"""

from __future__ import annotations

from collections import deque

import attrs

from aicn.p2p.peerid import PeerID


@attrs.frozen
class PubSubMessage:
    """What a subscriber gets (same fields as the floodsub router's message)."""

    from_peer: PeerID | None
    data: bytes
    seqno: bytes
    topic: str
    received_from: PeerID | None


@attrs.frozen
class Publication:
    """One published payload, as the bus saw it."""

    from_peer: PeerID
    topic: str
    data: bytes


class FakeBus:
    """Connects :class:`FakePubSub` endpoints."""

    def __init__(self) -> None:
        self.endpoints: list[FakePubSub] = []
        self.published: list[Publication] = []
        #: While True, publications are recorded but not delivered.
        self.paused = False
        self._queue: deque[PubSubMessage] = deque()
        self._delivering = False
        self._seqno = 0

    def pubsub(self, peer_id: PeerID) -> "FakePubSub":
        """A new endpoint for the node ``peer_id``."""
        endpoint = FakePubSub(self, peer_id)
        self.endpoints.append(endpoint)
        return endpoint

    def payloads(self, topic: str | None = None) -> list[bytes]:
        """Every payload published (on ``topic``), in order."""
        return [p.data for p in self.published if topic is None or p.topic == topic]

    def inject(self, topic: str, data: bytes, from_peer: PeerID | None, received_from: PeerID | None = None) -> None:
        """Deliver ``data`` as if ``from_peer`` had published it (not recorded in :attr:`published`)."""
        self._seqno += 1
        self._enqueue(PubSubMessage(from_peer, bytes(data), self._seqno.to_bytes(8, "big"), topic,
                                    received_from or from_peer))

    def _publish(self, sender: "FakePubSub", topic: str, data: bytes) -> None:
        self.published.append(Publication(sender.peer_id, topic, bytes(data)))
        self._seqno += 1
        if not self.paused:
            self._enqueue(PubSubMessage(sender.peer_id, bytes(data), self._seqno.to_bytes(8, "big"), topic,
                                        sender.peer_id))

    def _enqueue(self, message: PubSubMessage) -> None:
        self._queue.append(message)
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._queue:
                current = self._queue.popleft()
                for endpoint in list(self.endpoints):
                    for handler in list(endpoint.handlers.get(current.topic, ())):
                        handler(current)
        finally:
            self._delivering = False


class FakePubSub:
    """One node's view of the bus."""

    def __init__(self, bus: FakeBus, peer_id: PeerID) -> None:
        self.bus = bus
        self.peer_id = peer_id
        self.handlers: dict[str, list] = {}
        #: When set, :meth:`publish` raises it.
        self.publish_error: Exception | None = None

    def subscribe(self, topic: str, handler) -> None:
        self.handlers.setdefault(topic, []).append(handler)

    def unsubscribe(self, topic: str, handler=None) -> None:
        if handler is None:
            self.handlers.pop(topic, None)
        elif handler in self.handlers.get(topic, ()):
            self.handlers[topic].remove(handler)

    async def publish(self, topic: str, data: bytes) -> None:
        if self.publish_error is not None:
            raise self.publish_error
        self.bus._publish(self, topic, data)

    def peers(self, topic: str | None = None) -> list[PeerID]:
        return [
            e.peer_id for e in self.bus.endpoints
            if e is not self and (topic is None and e.handlers or e.handlers.get(topic))
        ]
