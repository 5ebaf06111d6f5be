"""Peerstore: TTL expiry on a Clock, connection TTLs, EWMA latency, caps, records."""

from multiaddr import Multiaddr
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from aicn.p2p.identify import IdentifyInfo, build_identify, parse_identify
from aicn.p2p.keys import PrivateKey
from aicn.p2p.peerid import PeerID
from aicn.p2p.peerstore import (
    CONNECTED_ADDR_TTL,
    PERMANENT_ADDR_TTL,
    RECENTLY_CONNECTED_ADDR_TTL,
    TEMP_ADDR_TTL,
    Peerstore,
    PeerstoreError,
)
from aicn.p2p.record import RecordError, make_peer_record

KEY = PrivateKey.generate("secp256k1")
OTHER = PrivateKey.generate("ed25519")
P = KEY.peer_id()
Q = OTHER.peer_id()


def ma(port: int) -> bytes:
    return Multiaddr(f"/ip4/127.0.0.1/tcp/{port}").to_bytes()


def fake_peer(i: int) -> PeerID:
    # A sha2-256 multihash peer ID (no inlined key), distinct per i.
    return PeerID(b"\x12\x20" + i.to_bytes(32, "big"))


class AddrTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.ps = Peerstore(self.clock)

    def test_ttl_expiry(self):
        self.ps.add_addrs(P, [ma(1)], TEMP_ADDR_TTL)
        self.ps.add_addrs(P, [ma(2)], PERMANENT_ADDR_TTL)
        self.clock.advance(TEMP_ADDR_TTL - 1)
        self.assertEqual(self.ps.addrs(P), [ma(1), ma(2)])
        self.clock.advance(1)
        self.assertEqual(self.ps.addrs(P), [ma(2)])

    def test_readd_extends_never_shortens(self):
        self.ps.add_addrs(P, [ma(1)], 100)
        self.ps.add_addrs(P, [ma(1)], 10)
        self.clock.advance(50)
        self.assertEqual(self.ps.addrs(P), [ma(1)])
        self.ps.add_addrs(P, [ma(1)], 200)
        self.clock.advance(199)
        self.assertEqual(self.ps.addrs(P), [ma(1)])

    def test_nonpositive_ttl_ignored(self):
        self.ps.add_addrs(P, [ma(1)], 0)
        self.assertEqual(self.ps.addrs(P), [])

    def test_connected_then_disconnected(self):
        self.ps.connected(P)
        self.ps.add_addrs(P, [ma(1)], CONNECTED_ADDR_TTL)
        self.ps.add_addrs(P, [ma(2)], TEMP_ADDR_TTL)
        self.clock.advance(10_000)
        self.assertEqual(self.ps.addrs(P), [ma(1)])
        self.ps.disconnected(P)
        self.clock.advance(RECENTLY_CONNECTED_ADDR_TTL - 1)
        self.assertEqual(self.ps.addrs(P), [ma(1)])
        self.clock.advance(1)
        self.assertEqual(self.ps.addrs(P), [])

    def test_gc(self):
        self.ps.add_addrs(P, [ma(1), ma(2)], 10)
        self.ps.add_addrs(Q, [ma(3)], 10)
        self.ps.set_protocols(Q, ["/x"])
        self.clock.advance(10)
        self.assertEqual(self.ps.gc(), 3)
        self.assertEqual(self.ps.peers(), [Q])  # P had nothing left

    def test_addr_cap_evicts_soonest_expiring(self):
        ps = Peerstore(self.clock, max_addrs_per_peer=3)
        ps.add_addrs(P, [ma(1)], 10)
        ps.add_addrs(P, [ma(2)], 100)
        ps.add_addrs(P, [ma(3)], 50)
        ps.add_addrs(P, [ma(4)], 1000)
        self.assertEqual(sorted(ps.addrs(P)), sorted([ma(2), ma(3), ma(4)]))
        ps.add_addrs(P, [ma(5)], 5)  # would be the first to die: not kept
        self.assertNotIn(ma(5), ps.addrs(P))
        ps.add_addrs(P, [ma(n) for n in range(100, 200)], PERMANENT_ADDR_TTL)
        self.assertEqual(len(ps.addrs(P)), 3)


class PeerCapTests(SynchronousTestCase):
    def test_lru_spares_connected_and_permanent(self):
        ps = Peerstore(Clock(), max_peers=3)
        ps.connected(fake_peer(0))
        ps.add_addrs(fake_peer(1), [ma(1)], PERMANENT_ADDR_TTL)
        ps.add_addrs(fake_peer(2), [ma(2)], TEMP_ADDR_TTL)
        ps.add_addrs(fake_peer(3), [ma(3)], TEMP_ADDR_TTL)
        self.assertEqual(set(ps.peers()), {fake_peer(0), fake_peer(1), fake_peer(3)})
        ps.set_agent(fake_peer(3), "x")  # touch: now the most recent
        for i in range(4, 100):
            ps.add_addrs(fake_peer(i), [ma(i)], TEMP_ADDR_TTL)
        self.assertEqual(set(ps.peers()), {fake_peer(0), fake_peer(1), fake_peer(99)})

    def test_remove(self):
        ps = Peerstore(Clock())
        ps.set_protocols(P, ["/a"])
        ps.remove(P)
        self.assertEqual((ps.peers(), ps.protocols(P)), ([], []))


class MetadataTests(SynchronousTestCase):
    def setUp(self):
        self.ps = Peerstore(Clock())

    def test_protocols_replaced(self):
        self.ps.set_protocols(P, ["/b", "/a"])
        self.assertEqual(self.ps.protocols(P), ["/a", "/b"])
        self.ps.set_protocols(P, ["/c"])
        self.assertEqual(self.ps.protocols(P), ["/c"])
        self.assertTrue(self.ps.supports(P, "/c"))
        self.assertFalse(self.ps.supports(P, "/a"))
        self.assertFalse(self.ps.supports(Q, "/c"))

    def test_public_key(self):
        self.assertEqual(self.ps.public_key(P), KEY.public_key)  # inlined in the ID
        self.assertIsNone(self.ps.public_key(fake_peer(1)))  # hashed ID, nothing stored
        with self.assertRaises(PeerstoreError):
            self.ps.set_public_key(P, OTHER.public_key)
        self.ps.set_public_key(Q, OTHER.public_key)
        self.assertEqual(self.ps.public_key(Q), OTHER.public_key)

    def test_agent(self):
        self.assertIsNone(self.ps.agent(P))
        self.ps.set_agent(P, "go-libp2p", "ipfs/0.1.0")
        self.ps.set_agent(P, "js-libp2p")
        self.assertEqual((self.ps.agent(P), self.ps.protocol_version(P)), ("js-libp2p", "ipfs/0.1.0"))

    def test_latency_ewma(self):
        self.assertIsNone(self.ps.latency(P))
        self.ps.record_latency(P, 1.0)
        self.assertEqual(self.ps.latency(P), 1.0)
        self.ps.record_latency(P, 2.0)
        self.assertAlmostEqual(self.ps.latency(P), 1.1)
        self.ps.record_latency(P, 0.0)
        self.assertAlmostEqual(self.ps.latency(P), 0.99)
        self.ps.record_latency(P, float("nan"))
        self.ps.record_latency(P, -1)
        self.assertAlmostEqual(self.ps.latency(P), 0.99)


class RecordTests(SynchronousTestCase):
    def setUp(self):
        self.ps = Peerstore(Clock())

    def test_newer_only(self):
        self.assertTrue(self.ps.consume_peer_record(make_peer_record(KEY, [ma(1)], 5), TEMP_ADDR_TTL))
        self.assertFalse(self.ps.consume_peer_record(make_peer_record(KEY, [ma(2)], 5), TEMP_ADDR_TTL))
        self.assertFalse(self.ps.consume_peer_record(make_peer_record(KEY, [ma(3)], 4), TEMP_ADDR_TTL))
        self.assertEqual(self.ps.addrs(P), [ma(1)])
        newer = make_peer_record(KEY, [ma(6)], 6)
        self.assertTrue(self.ps.consume_peer_record(newer, TEMP_ADDR_TTL))
        self.assertEqual((self.ps.peer_record(P), self.ps.peer_record_seq(P)), (newer, 6))

    def test_wrong_peer(self):
        with self.assertRaises(RecordError):
            self.ps.consume_peer_record(make_peer_record(KEY, [], 1), TEMP_ADDR_TTL, expected_peer=Q)

    def test_consume_identify(self):
        info = IdentifyInfo(KEY.public_key, (ma(1),), ("/a",), agent_version="ag",
                            signed_peer_record=make_peer_record(KEY, [ma(2)], 9))
        res = parse_identify(build_identify(info, None), P, is_push=False)
        self.ps.consume_identify(res)
        self.assertEqual(self.ps.addrs(P), [ma(2)])  # the signed record wins
        self.assertEqual((self.ps.protocols(P), self.ps.agent(P)), (["/a"], "ag"))
        self.assertEqual(self.ps.peer_record_seq(P), 9)
        unsigned = IdentifyInfo(KEY.public_key, (ma(3),), ("/b",))
        self.ps.consume_identify(parse_identify(build_identify(unsigned, None), P, False))
        self.assertEqual(self.ps.addrs(P), [ma(2), ma(3)])
        self.assertEqual(self.ps.protocols(P), ["/b"])
