"""A peer with another private network key: a distinct error, a counter and a
warning once per host and window, on both sides of the connection."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from aicn.log import RateLimit
from aicn.p2p.host import Host
from aicn.p2p.keys import PrivateKey
from aicn.p2p.swarm import PSK_MISMATCH_LOG_WINDOW, DialError
from tests.util import DBC_PSK, wait_for

OTHER_PSK = bytes(range(32))


class RateLimitTests(SynchronousTestCase):
    def test_once_per_key_and_window(self):
        clock = Clock()
        limit = RateLimit(clock, 600)
        self.assertTrue(limit.allow("10.0.0.1"))
        self.assertFalse(limit.allow("10.0.0.1"))
        self.assertTrue(limit.allow("10.0.0.2"))  # another host: its own window
        clock.advance(599)
        self.assertFalse(limit.allow("10.0.0.1"))
        clock.advance(1)
        self.assertTrue(limit.allow("10.0.0.1"))
        self.assertFalse(limit.allow("10.0.0.1"))  # a new window from now

    def test_bounded_memory_forgets_the_oldest_first(self):
        clock = Clock()
        limit = RateLimit(clock, 600, max_keys=3)
        for n in range(3):
            self.assertTrue(limit.allow(n))
            clock.advance(1)
        self.assertTrue(limit.allow(3))  # full: key 0, the oldest, is forgotten
        self.assertEqual(len(limit._last), 3)
        self.assertTrue(limit.allow(0))
        self.assertFalse(limit.allow(3))
        clock.advance(600)
        self.assertTrue(limit.allow(4))  # expired keys go first
        self.assertEqual(list(limit._last), [4])


class PSKMismatchTests(TestCase):
    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    async def make(self, psk):
        host = Host(reactor, PrivateKey.generate(), psk=psk, ping_interval=None)
        await host.start(["/ip4/127.0.0.1/tcp/0"])
        self.addCleanup(lambda: Deferred.fromCoroutine(host.stop()))
        return host

    def warnings(self, direction):
        return [e for e in self.events
                if (e.get("log_format") or "").startswith("private network key mismatch with")
                and e["direction"] == direction]

    async def test_both_sides_count_it_and_warn_once_per_host_and_window(self):
        a, b = await self.make(OTHER_PSK), await self.make(DBC_PSK)
        for attempt in range(1, 4):
            with self.assertRaises(DialError) as cm:
                await a.connect(b.peer_id, b.listen_addrs())
            self.assertIn("private network key mismatch", str(cm.exception))
            self.assertEqual(a.swarm.stats["psk_mismatch"], attempt)
            await wait_for(lambda: b.swarm.stats["psk_mismatch"] == attempt)
        (outbound,) = self.warnings("outbound")
        self.assertEqual(outbound["address"], str(b.listen_addrs()[0]))
        self.assertEqual(outbound["log_level"].name, "warn")
        (inbound,) = self.warnings("inbound")
        self.assertTrue(inbound["address"].startswith("/ip4/127.0.0.1/tcp/"), inbound)
        self.assertEqual(a.swarm.connections() + b.swarm.connections(), [])
        # The per-connection upgrade line is not logged at info level for each attempt.
        self.assertEqual([e for e in self.events if "Upgrade of" in (e.get("log_format") or "")], [])
        # After the window, the next mismatch is reported again (the swarms use the
        # reactor; the window is the swarm's).
        for host in (a, b):
            host.swarm._psk_warnings.clock = clock = Clock()
            clock.advance(PSK_MISMATCH_LOG_WINDOW + reactor.seconds())
        with self.assertRaises(DialError):
            await a.connect(b.peer_id, b.listen_addrs())
        await wait_for(lambda: len(self.warnings("inbound")) == 2)
        self.assertEqual(len(self.warnings("outbound")), 2)

    async def test_a_peer_without_a_key_is_diagnosed_by_the_side_with_one(self):
        keyed, plain = await self.make(DBC_PSK), await self.make(None)
        with self.assertRaises(DialError):
            await plain.connect(keyed.peer_id, keyed.listen_addrs())
        await wait_for(lambda: keyed.swarm.stats["psk_mismatch"] == 1)
        self.assertEqual(len(self.warnings("inbound")), 1)
        with self.assertRaises(DialError) as cm:
            await keyed.connect(plain.peer_id, plain.listen_addrs())
        self.assertIn("uses no private network key", str(cm.exception))
        self.assertEqual(keyed.swarm.stats["psk_mismatch"], 2)
        self.assertEqual(self.warnings("outbound"), [])  # one warning per host: given inbound already
        self.assertEqual(plain.swarm.stats["psk_mismatch"], 0)  # it cannot tell a key from garbage
