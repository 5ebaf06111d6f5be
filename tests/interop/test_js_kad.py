"""Our Kademlia DHT against js-libp2p kad-dht 2.x on ``/dbc/kad/1.0.0``, over pnet.

* js D finds js A through a FIND_NODE that our server-mode node answers
  (A and D are connected to our node only);
* our node finds a js peer through js server-mode DHT peers, and dials it
  through peer routing;
* rendezvous provider records cross both ways: our key for
  "DeepBrainChain" is the multihash of the CID js (and go) use.
"""

from __future__ import annotations

import base64

from multiaddr import Multiaddr
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from aicn.p2p.host import Host
from aicn.p2p.kad import DEFAULT_PROTOCOL, KadDHT, rendezvous_cid, rendezvous_key
from aicn.p2p.keys import PrivateKey
from aicn.p2p.peerid import PeerID
from tests.interop.jspeer import js_available, js_unavailable_reason, start_js_peer

DBC_PSK_HEX = "f504f536a912a8cf7d00adacee8ed20270c5040d961d7f3da4fccbcbec0ec48a"
TOPIC = "DeepBrainChain"


def cid_text(topic: str) -> str:
    """CIDv1 (raw, sha2-256) text in js's default base32 multibase."""
    return "b" + base64.b32encode(rendezvous_cid(topic)).decode().lower().rstrip("=")


async def wait_for_async(check, timeout=20.0, interval=0.1):
    for _ in range(int(timeout / interval)):
        if await check():
            return
        await deferLater(reactor, interval, lambda: None)
    raise AssertionError("condition not reached in time")


class JSKadTests(TestCase):
    timeout = 180
    if not js_available():
        skip = js_unavailable_reason()

    async def our_dht(self, mode, **kwargs) -> KadDHT:
        host = Host(reactor, PrivateKey.generate("secp256k1"), psk=bytes.fromhex(DBC_PSK_HEX),
                    ping_interval=None)
        await host.start(["/ip4/127.0.0.1/tcp/0"])
        self.addCleanup(lambda: Deferred.fromCoroutine(host.stop()))
        dht = KadDHT(host, mode=mode, refresh_interval=None, **kwargs)
        await dht.start()
        self.addCleanup(lambda: Deferred.fromCoroutine(dht.stop()))
        return dht

    async def js(self, *flags):
        peer = await start_js_peer(reactor, "--psk", DBC_PSK_HEX, *flags)
        self.addCleanup(peer.stop)
        return peer

    @staticmethod
    def full_addr(dht: KadDHT) -> str:
        return f"{dht.host.listen_addrs()[0]}/p2p/{dht.host.peer_id}"

    async def wait_in_js_table(self, js, peer: PeerID):
        async def check():
            status = await js.call("status")
            return str(peer) in (status.get("dht_routing_table") or [])
        await wait_for_async(check)

    async def test_js_finds_js_through_our_server(self):
        ours = await self.our_dht("server")
        a = await self.js("--dht-protocol", DEFAULT_PROTOCOL)
        d = await self.js("--dht-protocol", DEFAULT_PROTOCOL)
        await a.call("dial", addr=self.full_addr(ours))
        await d.call("dial", addr=self.full_addr(ours))
        # js admits us only after identify lists the protocol and a ping succeeds.
        await self.wait_in_js_table(d, ours.host.peer_id)
        a_id = PeerID.from_string(a.peer_id)
        await wait_for_async(self._has_addrs(ours, a_id))
        peers = await d.call("peers")
        self.assertEqual([p["peer_id"] for p in peers["peers"]], [str(ours.host.peer_id)])

        found = await d.call("find_peer", peer=a.peer_id)
        self.assertEqual(found["peer_id"], a.peer_id)
        self.assertEqual(found["from"], str(ours.host.peer_id))
        expected = [str(m.decapsulate(Multiaddr(f"/p2p/{a.peer_id}"))) for m in map(Multiaddr, a.addrs)]
        self.assertTrue(set(expected) <= set(found["addrs"]), (expected, found["addrs"]))
        # And D can now reach A directly with those addresses.
        reply = await d.call("ping", peer=a.peer_id)
        self.assertGreaterEqual(reply["rtt_ms"], 0)

    @staticmethod
    def _has_addrs(ours: KadDHT, peer: PeerID):
        async def check():
            return bool(ours.host.peerstore.addrs(peer))
        return check

    async def test_we_find_js_peer_through_js_dht(self):
        s1 = await self.js("--dht-server")
        s2 = await self.js("--dht-server")
        await s2.call("dial", addr=s1.addrs[0])
        await self.wait_in_js_table(s1, PeerID.from_string(s2.peer_id))

        ours = await self.our_dht("client", route_dials=True)
        s1_id = PeerID.from_string(s1.peer_id)
        s2_id = PeerID.from_string(s2.peer_id)
        await ours.host.connect(s1_id, [Multiaddr(s1.addrs[0])])
        await wait_for_async(self._in_table(ours, s1_id))
        self.assertFalse(ours.host.peerstore.addrs(s2_id))

        addrs = await ours.find_peer(s2_id)
        expected = {str(Multiaddr(a).decapsulate(Multiaddr(f"/p2p/{s2.peer_id}"))) for a in s2.addrs}
        self.assertTrue(expected <= {str(m) for m in addrs}, (expected, addrs))
        # Peer routing in the dial path: forget the addresses, ping by id alone.
        ours.host.peerstore.clear_addrs(s2_id)
        rtts = await ours.host.ping(s2_id)
        self.assertEqual(len(rtts), 1)

        # closest peers through js servers (FIND_NODE answers we parse)
        closest = await ours.get_closest_peers(b"some key")
        self.assertEqual(set(closest), {s1_id, s2_id})

    @staticmethod
    def _in_table(ours: KadDHT, peer: PeerID):
        async def check():
            return peer in ours.routing_table
        return check

    async def test_rendezvous_provider_records_both_ways(self):
        s1 = await self.js("--dht-server")
        ours = await self.our_dht("server")
        await s1.call("dial", addr=self.full_addr(ours))
        s1_id = PeerID.from_string(s1.peer_id)
        await self.wait_in_js_table(s1, ours.host.peer_id)
        await wait_for_async(self._in_table(ours, s1_id))

        # js provides the CID; we find it under our rendezvous key.
        await s1.call("provide", cid=cid_text(TOPIC))
        peers = await ours.find_rendezvous_peers(TOPIC)
        self.assertIn(s1_id, [p for p, _ in peers])

        # We advertise; js's findProviders of the same CID lists us.
        stored = await ours.provide(rendezvous_key(TOPIC))
        self.assertGreaterEqual(stored, 1)
        reply = await s1.call("find_providers", cid=cid_text(TOPIC), max=5)
        found = {p["peer_id"]: p["addrs"] for p in reply["providers"]}
        self.assertIn(str(ours.host.peer_id), found)
        self.assertIn(str(ours.host.listen_addrs()[0]), found[str(ours.host.peer_id)])
