"""KadDHT on real hosts over loopback: lookups, providers, modes, admission."""

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from aicn.p2p.host import Host
from aicn.p2p.kad import DEFAULT_PROTOCOL, KadDHT, KadMessage, KadPeer, MessageType, rendezvous_key
from aicn.p2p.keys import PrivateKey
from aicn.p2p.ping import PING
from aicn.p2p.multistream import ProtocolNotSupported
from aicn.p2p.swarm import DialError
from tests.util import wait_for


def addrs_of(host):
    return [a.to_bytes() for a in host.listen_addrs()]


class KadTestCase(TestCase):
    async def make_host(self):
        host = Host(reactor, PrivateKey.generate("secp256k1"), ping_interval=None, enable_perf=False)
        await host.start(["/ip4/127.0.0.1/tcp/0"])
        self.addCleanup(lambda: Deferred.fromCoroutine(host.stop()))
        return host

    async def make_dht(self, mode="server", bootstrap=(), **kwargs):
        host = await self.make_host()
        dht = KadDHT(host, mode=mode, refresh_interval=None,
                     bootstrap_peers=[(d.host.peer_id, d.host.listen_addrs()) for d in bootstrap],
                     **kwargs)
        self.addCleanup(lambda: Deferred.fromCoroutine(dht.stop()))
        await dht.start()
        return dht

    async def newcomer(self, entry, **kwargs):
        """A client-mode node connected to ``entry`` only (no bootstrap lookup yet)."""
        z = await self.make_dht(mode="client", **kwargs)
        await z.host.connect(entry.host.peer_id, entry.host.listen_addrs())
        await wait_for(lambda: entry.host.peer_id in z.routing_table)
        return z

    async def make_network(self, size):
        """``size`` server-mode nodes, each bootstrapped from the previous one."""
        dhts = [await self.make_dht()]
        for _ in range(size - 1):
            dhts.append(await self.make_dht(bootstrap=[dhts[-1]]))
        # Admission (identify + ping) is asynchronous; let it settle.
        await wait_for(lambda: all(len(d.routing_table) >= 1 for d in dhts))
        return dhts


class NetworkTests(KadTestCase):
    async def test_find_unconnected_peer_and_providers(self):
        dhts = await self.make_network(8)
        z = await self.newcomer(dhts[0])
        target = dhts[-1]
        self.assertEqual(z.host.peerstore.addrs(target.host.peer_id), [])
        found = await z.find_peer(target.host.peer_id)
        self.assertEqual([a.to_bytes() for a in found], addrs_of(target.host))
        self.assertNotIn(z.host.peer_id, [p for d in dhts for p in d.routing_table.peers()],
                         "a client-mode node entered a routing table")

        # Providers: a server provides a key, the client finds it.
        provider = dhts[3]
        key = rendezvous_key("some content")
        stored = await provider.provide(key)
        self.assertGreater(stored, 0)
        providers = await z.find_providers(key, count=5)
        self.assertIn(provider.host.peer_id, [p for p, _ in providers])
        addrs = dict(providers)[provider.host.peer_id]
        self.assertEqual([a.to_bytes() for a in addrs], addrs_of(provider.host))

        # Rendezvous: go's dutil.Advertise / FindPeers equivalent.
        dhts[5].advertise("DeepBrainChain")
        await wait_for(lambda: any(d.providers.get(rendezvous_key("DeepBrainChain"))
                                   for d in dhts if d is not dhts[5]))
        peers = await z.find_rendezvous_peers("DeepBrainChain")
        self.assertIn(dhts[5].host.peer_id, [p for p, _ in peers])

    async def test_lookup_observer_sees_find_peer_lookup(self):
        dhts = await self.make_network(5)
        z = await self.newcomer(dhts[0])
        seen = []
        z.lookup_observer = lambda key, kind, lookup: seen.append((key, kind, lookup))
        target = dhts[-1].host.peer_id
        self.assertEqual(z.host.peerstore.addrs(target), [])
        found = await z.find_peer(target)
        self.assertEqual([a.to_bytes() for a in found], addrs_of(dhts[-1].host))
        [(key, kind, lookup)] = seen
        self.assertEqual((key, kind), (target.to_bytes(), MessageType.FIND_NODE))
        self.assertTrue(lookup.stopped)  # ended early: an answer named the target
        self.assertGreaterEqual(lookup.hops(target), 1)
        self.assertGreaterEqual(lookup.queried, 1)
        # A failing observer does not break lookups.
        z.lookup_observer = lambda *args: 1 / 0
        self.assertEqual(len(await z.get_closest_peers(b"k")), len(dhts))
        self.flushLoggedErrors(ZeroDivisionError)

    async def test_closest_peers_and_dial_through_routing(self):
        dhts = await self.make_network(6)
        z = await self.newcomer(dhts[0], route_dials=True)
        # Dial a peer we have no address for: the swarm asks the DHT.
        target = dhts[-1]
        self.assertEqual(z.host.peerstore.addrs(target.host.peer_id), [])
        rtts = await z.host.ping(target.host.peer_id)
        self.assertEqual(len(rtts), 1)
        self.assertTrue(z.host.is_connected(target.host.peer_id))
        closest = await z.get_closest_peers(b"any key")
        servers = {d.host.peer_id for d in dhts}
        self.assertEqual(len(closest), len(servers))  # fewer than k servers: all of them
        self.assertEqual(set(closest), servers)
        # Unknown everywhere: a clean DialError.
        stranger = PrivateKey.generate("secp256k1").peer_id()
        with self.assertRaises(DialError):
            await z.host.connect(stranger)


class ServerTests(KadTestCase):
    async def connected_pair(self, server_kwargs=None):
        a = await self.make_dht(mode="server", **(server_kwargs or {}))
        b = await self.make_dht(mode="client", bootstrap=[a])
        await wait_for(lambda: a.host.peerstore.protocols(b.host.peer_id)
                       and b.host.peerstore.supports(a.host.peer_id, DEFAULT_PROTOCOL))
        return a, b

    async def test_add_provider_spoofing_rejected(self):
        a, b = await self.connected_pair()
        key = rendezvous_key("spoof")
        someone_else = PrivateKey.generate("secp256k1").peer_id()
        spoof = KadMessage(MessageType.ADD_PROVIDER, key=key,
                           provider_peers=[KadPeer(someone_else, tuple(addrs_of(b.host)))])
        await b.request(a.host.peer_id, spoof, expect_reply=False)
        no_addrs = KadMessage(MessageType.ADD_PROVIDER, key=key, provider_peers=[KadPeer(b.host.peer_id)])
        await b.request(a.host.peer_id, no_addrs, expect_reply=False)
        # A PING on the same server proves the earlier requests were processed.
        await b.request(a.host.peer_id, KadMessage(MessageType.PING))
        self.assertEqual(a.providers.get(key), [])
        honest = KadMessage(MessageType.ADD_PROVIDER, key=key,
                            provider_peers=[KadPeer(b.host.peer_id, tuple(addrs_of(b.host)))])
        await b.request(a.host.peer_id, honest, expect_reply=False)
        await b.request(a.host.peer_id, KadMessage(MessageType.PING))
        self.assertEqual(a.providers.get(key), [(b.host.peer_id, addrs_of(b.host))])
        # And GET_PROVIDERS hands it out with those addresses.
        reply = await b.request(a.host.peer_id, KadMessage(MessageType.GET_PROVIDERS, key=key))
        self.assertEqual(reply.provider_peers, [KadPeer(b.host.peer_id, tuple(addrs_of(b.host)))])

    async def test_find_node_never_returns_requester_or_self(self):
        a = await self.make_dht(mode="server")
        b = await self.make_dht(mode="server", bootstrap=[a])
        c = await self.make_dht(mode="server", bootstrap=[a])
        await wait_for(lambda: {b.host.peer_id, c.host.peer_id} <= set(a.routing_table.peers()))
        for key in (b.host.peer_id.to_bytes(), a.host.peer_id.to_bytes(), b"random"):
            reply = await b.request(a.host.peer_id, KadMessage(MessageType.FIND_NODE, key=key))
            ids = [p.peer for p in reply.closer_peers]
            self.assertEqual(ids, [c.host.peer_id])
            self.assertEqual(reply.closer_peers[0].addrs, tuple(addrs_of(c.host)))

    async def test_find_node_names_connected_client_peer(self):
        # go includes the target itself when it knows its addresses, even if
        # it is not in the routing table (e.g. a client-mode peer): this is
        # how peers find each other through a server they both use.
        a = await self.make_dht(mode="server")
        client = await self.make_dht(mode="client", bootstrap=[a])
        asker = await self.make_dht(mode="client", bootstrap=[a])
        await wait_for(lambda: a.host.peerstore.addrs(client.host.peer_id))
        self.assertNotIn(client.host.peer_id, a.routing_table)
        found = await asker.find_peer(client.host.peer_id)
        self.assertEqual([m.to_bytes() for m in found], addrs_of(client.host))

    async def test_client_mode_neither_advertises_nor_answers(self):
        server = await self.make_dht(mode="server")
        client = await self.make_dht(mode="auto", bootstrap=[server])
        await wait_for(lambda: server.host.peerstore.protocols(client.host.peer_id))
        self.assertNotIn(DEFAULT_PROTOCOL, server.host.peerstore.protocols(client.host.peer_id))
        self.assertNotIn(DEFAULT_PROTOCOL, client.host.protocols)
        with self.assertRaises(ProtocolNotSupported):
            await server._rpc(client.host.peer_id, KadMessage(MessageType.PING))
        # auto mode serves once AutoNAT says we are public (identify-push tells peers).
        client.set_reachability(True)
        await wait_for(lambda: server.host.peerstore.supports(client.host.peer_id, DEFAULT_PROTOCOL))
        reply = await server._rpc(client.host.peer_id, KadMessage(MessageType.PING))
        self.assertEqual(reply.type, MessageType.PING)
        await wait_for(lambda: client.host.peer_id in server.routing_table)
        client.set_reachability(False)
        await wait_for(lambda: client.host.peer_id not in server.routing_table)

    async def test_admission_requires_identify_and_ping(self):
        server = await self.make_dht(mode="server")

        async def silent(stream, conn):
            stream.close()

        kad_and_ping = await self.make_host()
        kad_and_ping.set_stream_handler(DEFAULT_PROTOCOL, silent)
        kad_no_ping = await self.make_host()
        kad_no_ping.set_stream_handler(DEFAULT_PROTOCOL, silent)
        kad_no_ping.remove_stream_handler(PING)
        no_kad = await self.make_host()
        for host in (kad_and_ping, kad_no_ping, no_kad):
            await host.connect(server.host.peer_id, server.host.listen_addrs())
        await wait_for(lambda: all(server.host.peerstore.protocols(h.peer_id)
                                   for h in (kad_and_ping, kad_no_ping, no_kad)))
        await wait_for(lambda: kad_and_ping.peer_id in server.routing_table)
        await wait_for(lambda: not server._verifying)
        self.assertNotIn(kad_no_ping.peer_id, server.routing_table)
        self.assertNotIn(no_kad.peer_id, server.routing_table)
        # Dropping the protocol (identify-push) takes a peer out again.
        kad_and_ping.remove_stream_handler(DEFAULT_PROTOCOL)
        await wait_for(lambda: kad_and_ping.peer_id not in server.routing_table)

    async def test_repeated_failures_remove_peer(self):
        a, b = await self.connected_pair()
        c = await self.make_dht(mode="server", bootstrap=[a])
        await wait_for(lambda: c.host.peer_id in a.routing_table)
        await c.host.stop()  # gone: connections closed, nothing listening
        await wait_for(lambda: not a.host.is_connected(c.host.peer_id))
        with self.assertRaises(Exception):
            await a.request(c.host.peer_id, KadMessage(MessageType.PING))
        self.assertIn(c.host.peer_id, a.routing_table)  # one failure is forgiven
        with self.assertRaises(Exception):
            await a.request(c.host.peer_id, KadMessage(MessageType.PING))
        self.assertNotIn(c.host.peer_id, a.routing_table)

    async def test_garbage_request_resets_stream_only(self):
        a, b = await self.connected_pair()
        stream = await b.host.new_stream(a.host.peer_id, [DEFAULT_PROTOCOL])
        await stream.write(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")
        self.assertEqual(await _read_or_reset(stream), "reset")
        # The connection and the server survive.
        reply = await b.request(a.host.peer_id, KadMessage(MessageType.PING))
        self.assertEqual(reply.type, MessageType.PING)


async def _read_or_reset(stream):
    from aicn.p2p.stream import StreamError

    try:
        data = await stream.read()
    except StreamError:
        return "reset"
    return data
