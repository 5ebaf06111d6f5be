"""Two hosts on loopback: identify both ways, identify-push, ping, perf."""

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from aicn import AGENT_VERSION, PROTOCOL_VERSION
from aicn.p2p import perf
from aicn.p2p.host import Host
from aicn.p2p.keys import PrivateKey
from tests.util import wait_for


class HostTests(TestCase):
    async def make(self, key_type="secp256k1"):
        host = Host(reactor, PrivateKey.generate(key_type), ping_interval=None)
        await host.start(["/ip4/127.0.0.1/tcp/0"])
        self.addCleanup(lambda: Deferred.fromCoroutine(host.stop()))
        return host

    async def test_identify_both_ways(self):
        a, b = await self.make(), await self.make("ed25519")
        events = []

        class Obs:
            def identified(self, peer, result):
                events.append((peer, result))

        a.add_observer(Obs())
        await a.connect(b.peer_id, b.listen_addrs())
        await wait_for(lambda: events and a.peerstore.protocols(b.peer_id) and b.peerstore.protocols(a.peer_id))
        peer, result = events[0]
        self.assertEqual(peer, b.peer_id)
        self.assertEqual(result.protocol_version, PROTOCOL_VERSION)
        self.assertEqual(result.agent_version, AGENT_VERSION)
        self.assertIn("/ipfs/ping/1.0.0", a.peerstore.protocols(b.peer_id))
        self.assertIn("/ipfs/id/1.0.0", b.peerstore.protocols(a.peer_id))
        self.assertEqual(a.peerstore.agent(b.peer_id), AGENT_VERSION)
        # b's listen address is known to a from the signed record / listen addrs.
        self.assertIn(b.listen_addrs()[0].to_bytes(), a.peerstore.addrs(b.peer_id))
        # observedAddr: a saw itself through b's eyes.
        self.assertIsNotNone(result.observed_addr)

    async def test_identify_push_on_new_protocol(self):
        a, b = await self.make(), await self.make()
        await a.connect(b.peer_id, b.listen_addrs())
        await wait_for(lambda: a.peerstore.protocols(b.peer_id))

        async def handler(stream, conn):
            stream.close()

        b.set_stream_handler("/aicn-test/new/1.0.0", handler)
        await wait_for(lambda: a.peerstore.supports(b.peer_id, "/aicn-test/new/1.0.0"))

    async def test_ping_records_latency(self):
        a, b = await self.make(), await self.make()
        rtts = await a.ping(b.peer_id, 3) if a.peerstore.addrs(b.peer_id) else None
        self.assertIsNone(rtts)  # unknown peer: no addresses yet
        await a.connect(b.peer_id, b.listen_addrs())
        rtts = await a.ping(b.peer_id, 3)
        self.assertEqual(len(rtts), 3)
        self.assertTrue(all(0 <= r < 5 for r in rtts))
        self.assertIsNotNone(a.peerstore.latency(b.peer_id))

    async def test_perf(self):
        a, b = await self.make(), await self.make()
        stream = await a.new_stream(b.peer_id, [perf.PERF], b.listen_addrs())
        result = await perf.perf(stream, 3 * 1024 * 1024, 5 * 1024 * 1024, reactor)
        self.assertEqual(result.upload_bytes, 3 * 1024 * 1024)
        self.assertEqual(result.download_bytes, 5 * 1024 * 1024)
