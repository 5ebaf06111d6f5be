"""Delivery evidence before a request is sent (aicn.node.reach), on a Clock.

The host and the DHT are small stand-ins with the two calls the check makes
(``is_connected``; ``lookup_peer``); the pubsub side is the in-memory bus.
"Answers within 10 s" is proved on the Clock: nothing left pending after
the lookup timeout, never a wall-clock measurement.
"""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from aicn.errors import AICNError, ErrorCode
from aicn.node.reach import LOOKUP_TIMEOUT, PEER_FRESH_AGE, Reachability
from aicn.p2p.keys import PrivateKey
from aicn.p2p.maddr import parse
from tests.node.fakepubsub import FakeBus

TOPIC = "DeepBrainChain"
US, NEIGHBOUR, TARGET = (PrivateKey.generate("secp256k1").peer_id() for _ in range(3))


class FakeHost:
    def __init__(self) -> None:
        self.connected: set = set()
        self.observers: list = []

    def is_connected(self, peer) -> bool:
        return peer in self.connected

    def add_observer(self, observer) -> None:
        self.observers.append(observer)

    def hang_up(self, peer) -> None:
        self.connected.discard(peer)
        for observer in self.observers:
            observer.disconnected(SimpleNamespace(peer=peer))


class FakeDHT:
    """``lookup_peer`` waits for the test to fire its Deferred (in ``lookups``)."""

    def __init__(self) -> None:
        self.lookups: list = []
        self.cancelled: list = []

    async def lookup_peer(self, peer):
        d = Deferred(lambda _: self.cancelled.append(peer))
        self.lookups.append((peer, d))
        return await d


class ReachabilityTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.bus = FakeBus()
        self.ours = self.bus.pubsub(US)
        self.host = FakeHost()
        self.dht = FakeDHT()
        self.reach = Reachability(self.clock, self.ours, TOPIC, host=self.host, dht=self.dht)

    def join(self, peer) -> None:
        """``peer`` subscribes to the topic (a neighbour of ours on the bus)."""
        self.bus.pubsub(peer).subscribe(TOPIC, lambda m: None)

    def check(self, node=TARGET, heard_at=None) -> Deferred:
        return Deferred.fromCoroutine(self.reach.check(str(node), heard_at))

    def unreachable(self, d) -> str:
        err = self.failureResultOf(d, AICNError).value
        self.assertEqual(err.code, ErrorCode.RENDEZVOUS)
        return err.message

    def test_no_topic_peers_fails_at_once_even_when_connected(self):
        self.host.connected.add(TARGET)
        message = self.unreachable(self.check())
        self.assertEqual(message, f"node {TARGET} is not reachable: this node has no peers on topic "
                                  f"{TOPIC}, so no request can be delivered")
        self.assertEqual(self.dht.lookups, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_subscribed_connected_or_heard_needs_no_lookup(self):
        self.join(NEIGHBOUR)
        self.assertEqual(self.successResultOf(self.check(NEIGHBOUR)), "subscribed")
        self.host.connected.add(TARGET)
        self.assertEqual(self.successResultOf(self.check()), "connected")
        self.host.connected.clear()
        now = self.clock.seconds()
        self.assertEqual(self.successResultOf(self.check(heard_at=now - PEER_FRESH_AGE)), "heartbeat")
        self.assertEqual(self.dht.lookups, [])

    def test_unknown_node_fails_after_the_lookup_timeout(self):
        self.join(NEIGHBOUR)
        d = self.check(heard_at=self.clock.seconds() - PEER_FRESH_AGE - 1)  # too old to count
        [(peer, _)] = self.dht.lookups
        self.assertEqual(peer, TARGET)
        self.clock.advance(LOOKUP_TIMEOUT - 0.1)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertLessEqual(LOOKUP_TIMEOUT, 10)
        self.assertEqual(self.unreachable(d),
                         f"node {TARGET} is not reachable: not connected, no heartbeat in the last 10 min, "
                         f"not among our 1 peer on topic {TOPIC}, not found in the DHT")
        self.assertEqual(self.dht.cancelled, [TARGET])  # the lookup was stopped
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lookup_that_finds_nothing_or_fails_answers_when_it_ends(self):
        self.join(NEIGHBOUR)
        self.join(PrivateKey.generate("secp256k1").peer_id())
        d = self.check()
        self.dht.lookups[0][1].callback([])
        self.assertIn("not among our 2 peers on topic", self.unreachable(d))
        d = self.check()
        self.dht.lookups[1][1].errback(RuntimeError("no route"))
        self.assertIn("not found in the DHT", self.unreachable(d))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_found_in_the_dht(self):
        self.join(NEIGHBOUR)
        d = self.check()
        self.assertNoResult(d)
        self.dht.lookups[0][1].callback([parse("/ip4/127.0.0.1/tcp/4001")])
        self.assertEqual(self.successResultOf(d), "dht")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_heartbeat_before_a_disconnect_is_no_evidence(self):
        self.join(NEIGHBOUR)
        self.host.connected.add(TARGET)
        heard = self.clock.seconds()
        self.clock.advance(30)
        self.host.hang_up(TARGET)
        self.clock.advance(12)
        d = self.check(heard_at=heard)
        self.dht.lookups[0][1].callback([])
        self.assertEqual(self.unreachable(d),
                         f"node {TARGET} is not reachable: disconnected 12 s ago, after its last heartbeat "
                         f"(42 s ago), not among our 1 peer on topic {TOPIC}, not found in the DHT")
        # Alive, it is heard again (through another peer): reachable.
        self.assertEqual(self.successResultOf(self.check(heard_at=self.clock.seconds())), "heartbeat")

    def test_disconnect_of_one_of_several_connections_is_not_recorded(self):
        self.join(NEIGHBOUR)
        self.host.connected.add(TARGET)
        heard = self.clock.seconds()
        self.clock.advance(1)
        for observer in self.host.observers:  # one connection closed, another is still open
            observer.disconnected(SimpleNamespace(peer=TARGET))
        self.host.connected.clear()
        self.assertEqual(self.successResultOf(self.check(heard_at=heard)), "heartbeat")

    def test_without_host_and_dht(self):
        reach = Reachability(self.clock, self.ours, TOPIC)
        self.join(NEIGHBOUR)
        d = Deferred.fromCoroutine(reach.check(str(TARGET)))
        self.assertEqual(self.unreachable(d),
                         f"node {TARGET} is not reachable: not connected, no heartbeat in the last 10 min, "
                         f"not among our 1 peer on topic {TOPIC}, no DHT to look it up")
