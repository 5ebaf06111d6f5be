"""The pure kad cores: key space, k-buckets, provider records, codec, lookup."""

import hashlib
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from aicn.p2p.kad.codec import (
    MAX_MESSAGE_SIZE,
    ConnectionType,
    KadCodecError,
    KadMessage,
    KadPeer,
    KadRecord,
    MessageDecoder,
    MessageType,
    decode_message,
    encode_frame,
    encode_message,
)
from aicn.p2p.kad.dht import rendezvous_cid, rendezvous_key
from aicn.p2p.kad.keyspace import common_prefix_len, distance, kad_id
from aicn.p2p.kad.lookup import Lookup, PeerState
from aicn.p2p.kad.providers import ProviderStore
from aicn.p2p.kad.routing import RoutingTable
from aicn.p2p.kad.rpc import read_message, write_message
from aicn.p2p.maddr import parse
from aicn.p2p.pb import kad_pb2
from aicn.p2p.peerid import PeerID
from aicn.p2p.varint import encode_uvarint

from .fakestream import StreamPair


def fake_peer(n: int) -> PeerID:
    """A syntactically valid peer ID (identity multihash of 8 arbitrary bytes)."""
    return PeerID(b"\x00\x08" + n.to_bytes(8, "big"))


ADDR = parse("/ip4/127.0.0.1/tcp/4001").to_bytes()
ADDR2 = parse("/ip6/::1/tcp/4002").to_bytes()


def result(d: Deferred):
    out = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


class KeyspaceTests(SynchronousTestCase):
    def test_kad_id_is_sha256_of_the_multihash(self):
        peer = fake_peer(7)
        self.assertEqual(kad_id(peer), hashlib.sha256(peer.to_bytes()).digest())
        self.assertEqual(kad_id(b"abc"), hashlib.sha256(b"abc").digest())

    def test_distance_and_prefix(self):
        a = bytes(32)
        b = bytes([0x80]) + bytes(31)
        c = bytes([0x01]) + bytes(31)
        self.assertEqual(distance(a, a), 0)
        self.assertEqual(distance(a, b), distance(b, a))
        self.assertEqual(common_prefix_len(a, b), 0)
        self.assertEqual(common_prefix_len(a, c), 7)
        self.assertEqual(common_prefix_len(a, a), 256)
        self.assertLess(distance(a, c), distance(a, b))

    def test_rendezvous_key_is_the_cid_multihash(self):
        # go: cid.NewCidV1(cid.Raw, mh.Sum(ns, SHA2_256)); kad-dht provides cid.Hash().
        key = rendezvous_key("DeepBrainChain")
        self.assertEqual(key[:2], b"\x12\x20")
        self.assertEqual(key[2:], hashlib.sha256(b"DeepBrainChain").digest())
        self.assertEqual(rendezvous_cid("DeepBrainChain"), b"\x01\x55" + key)


class RoutingTableTests(SynchronousTestCase):
    def setUp(self):
        self.local = fake_peer(0)
        self.checks = []
        self.table = RoutingTable(self.local, k=3, needs_check=self.checks.append)

    def peers_in_bucket(self, index, count):
        out = []
        n = 1
        while len(out) < count:
            p = fake_peer(n)
            if self.table.bucket_index(p) == index:
                out.append(p)
            n += 1
        return out

    def test_add_and_lru(self):
        a, b, c = self.peers_in_bucket(0, 3)
        for p in (a, b, c):
            self.assertTrue(self.table.add(p))
        self.assertEqual(self.table.bucket(0), [a, b, c])
        self.assertTrue(self.table.add(a))  # seen again: moves to the tail
        self.assertEqual(self.table.bucket(0), [b, c, a])
        self.assertIn(a, self.table)
        self.assertEqual(len(self.table), 3)
        self.assertFalse(self.table.add(self.local))
        self.assertNotIn(self.local, self.table)

    def test_full_bucket_checks_head_and_keeps_it_if_alive(self):
        a, b, c, d, e = self.peers_in_bucket(0, 5)
        for p in (a, b, c):
            self.table.add(p)
        self.assertFalse(self.table.add(d))
        self.assertFalse(self.table.add(e))
        self.assertEqual(self.checks, [a])  # one check per outstanding head
        self.assertNotIn(d, self.table)
        self.assertEqual(self.table.replacements(0), [d, e])
        self.table.seen(a)  # head answered the ping: newcomers stay out
        self.assertEqual(self.table.bucket(0), [b, c, a])
        self.table.add(d)
        self.assertEqual(self.checks, [a, b])

    def test_dead_head_is_replaced_by_newest_candidate(self):
        a, b, c, d, e = self.peers_in_bucket(0, 5)
        for p in (a, b, c, d, e):
            self.table.add(p)
        self.assertEqual(self.checks, [a])
        self.assertTrue(self.table.remove(a))
        self.assertEqual(self.table.bucket(0), [b, c, e])
        self.assertEqual(self.table.replacements(0), [d])
        self.assertFalse(self.table.remove(a))

    def test_closest_matches_brute_force(self):
        table = RoutingTable(self.local, k=20)
        peers = [fake_peer(n) for n in range(1, 200)]
        for p in peers:
            table.add(p)
        target = kad_id(b"some key")
        inside = table.peers()
        expected = sorted(inside, key=lambda p: distance(kad_id(p), target))[:20]
        self.assertEqual(table.closest(target), expected)
        self.assertEqual(table.closest(target, 5, exclude=[expected[0]]), expected[1:6])

    def test_buckets_by_common_prefix(self):
        table = RoutingTable(self.local, k=20)
        for n in range(1, 300):
            p = fake_peer(n)
            table.add(p)
            self.assertEqual(table.bucket_index(p), common_prefix_len(kad_id(self.local), kad_id(p)))
        self.assertTrue(all(len(table.bucket(i)) <= 20 for i in range(256)))


class ProviderStoreTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = ProviderStore(self.clock, ttl=100.0, max_per_key=3, max_records=5)

    def test_add_get_expire(self):
        p = fake_peer(1)
        self.store.add(b"key", p, [ADDR])
        self.assertEqual(self.store.get(b"key"), [(p, [ADDR])])
        self.clock.advance(60)
        self.store.add(b"key", p)  # refresh without addrs keeps them
        self.clock.advance(60)
        self.assertEqual(self.store.get(b"key"), [(p, [ADDR])])
        self.clock.advance(41)
        self.assertEqual(self.store.get(b"key"), [])
        self.assertEqual(len(self.store), 0)

    def test_caps_evict_least_recently_announced(self):
        peers = [fake_peer(n) for n in range(1, 5)]
        for p in peers:
            self.store.add(b"k1", p)
        self.assertEqual([p for p, _ in self.store.get(b"k1")], peers[:0:-1])
        for n, key in enumerate([b"k2", b"k3", b"k4"]):
            self.store.add(key, peers[0])
        self.assertEqual(len(self.store), 5)
        # The oldest of k1's records went to make room.
        self.assertEqual([p for p, _ in self.store.get(b"k1")], [peers[3], peers[2]])

    def test_gc_and_bad_keys(self):
        self.store.add(b"a", fake_peer(1))
        self.clock.advance(50)
        self.store.add(b"b", fake_peer(1))
        self.clock.advance(60)
        self.assertEqual(self.store.gc(), 1)
        self.assertEqual(len(self.store), 1)
        self.assertRaises(ValueError, self.store.add, b"", fake_peer(1))
        self.assertRaises(ValueError, self.store.add, b"x" * 81, fake_peer(1))


peer_ids = st.integers(min_value=0, max_value=2**64 - 1).map(fake_peer)
addrs = st.sampled_from([ADDR, ADDR2])
kad_peers = st.builds(
    KadPeer,
    peer_ids,
    st.lists(addrs, max_size=2, unique=True).map(tuple),
    st.sampled_from(list(ConnectionType)),
)
messages = st.builds(
    KadMessage,
    type=st.sampled_from(list(MessageType)),
    key=st.binary(max_size=64),
    closer_peers=st.lists(kad_peers, max_size=5, unique_by=lambda p: p.peer),
    provider_peers=st.lists(kad_peers, max_size=5, unique_by=lambda p: p.peer),
    record=st.none() | st.builds(KadRecord, st.binary(max_size=8), st.binary(max_size=8), st.text(max_size=8)),
    cluster_level=st.integers(min_value=0, max_value=5),
)


class CodecTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(messages)
    def test_round_trip(self, msg):
        frame = encode_frame(msg)
        decoded = MessageDecoder().feed(frame)
        self.assertEqual(decoded, [msg])

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300))
    def test_garbage_body_raises_codec_error_only(self, data):
        try:
            decode_message(data)
        except KadCodecError:
            pass

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.binary(max_size=40), max_size=8))
    def test_garbage_stream_raises_codec_error_only(self, chunks):
        decoder = MessageDecoder(max_size=1000)
        try:
            for chunk in chunks:
                decoder.feed(chunk)
        except KadCodecError:
            pass

    def test_js_find_node_request_bytes(self):
        # js sends only type and key (facts 34-35); so do we (proto3, no clusterLevelRaw).
        key = bytes.fromhex("0025080212") + bytes(32)
        body = encode_message(KadMessage(MessageType.FIND_NODE, key=key))
        self.assertEqual(body, b"\x08\x04\x12" + bytes([len(key)]) + key)
        self.assertEqual(encode_message(KadMessage(MessageType.PUT_VALUE)), b"")

    def test_oversized_frame_rejected_before_body(self):
        decoder = MessageDecoder()
        with self.assertRaises(KadCodecError):
            decoder.feed(encode_uvarint(MAX_MESSAGE_SIZE + 1))
        big = KadMessage(MessageType.PUT_VALUE, record=KadRecord(value=b"x" * MAX_MESSAGE_SIZE))
        self.assertRaises(KadCodecError, encode_frame, big)

    def test_bad_entries_dropped_and_p2p_suffix_stripped(self):
        pb = kad_pb2.Message(type=MessageType.FIND_NODE)
        good = fake_peer(5)
        pb.closerPeers.add(id=b"\xff\xff", addrs=[ADDR])  # not a multihash
        with_p2p = parse(f"/ip4/127.0.0.1/tcp/4001/p2p/{good}").to_bytes()
        pb.closerPeers.add(id=good.to_bytes(), addrs=[with_p2p, b"\x99garbage", ADDR2])
        pb.closerPeers.add(id=good.to_bytes(), addrs=[ADDR])  # duplicate
        msg = decode_message(pb.SerializeToString())
        self.assertEqual(msg.closer_peers, [KadPeer(good, (ADDR, ADDR2))])

    def test_unknown_type_is_kept_as_int(self):
        body = kad_pb2.Message(type=5).SerializeToString().replace(b"\x08\x05", b"\x08\x09")
        self.assertEqual(decode_message(body).type, 9)


class RpcStreamTests(SynchronousTestCase):
    def test_several_messages_then_eof(self):
        pair = StreamPair()
        one = KadMessage(MessageType.PING)
        two = KadMessage(MessageType.FIND_NODE, key=b"k", closer_peers=[KadPeer(fake_peer(1), (ADDR,))])
        _run(write_message(pair.a, one))
        _run(write_message(pair.a, two))
        result(pair.a.close_write())
        self.assertEqual(_run(read_message(pair.b)), one)
        self.assertEqual(_run(read_message(pair.b)), two)
        self.assertIsNone(_run(read_message(pair.b)))

    def test_truncated_and_oversized(self):
        pair = StreamPair()
        result(pair.a.write(encode_frame(KadMessage(MessageType.FIND_NODE, key=b"abcdef"))[:-2]))
        result(pair.a.close_write())
        self.assertRaises(KadCodecError, _run, read_message(pair.b))
        pair = StreamPair()
        result(pair.a.write(encode_uvarint(2000)))
        self.assertRaises(KadCodecError, _run, read_message(pair.b, max_size=1000))


def _run(coro):
    return result(Deferred.fromCoroutine(coro))


class FakeNetwork:
    """Peers that each know a fixed list of others; answers are delivered by the test."""

    def __init__(self, size: int, seed: int = 1) -> None:
        rng = random.Random(seed)
        self.peers = [fake_peer(rng.getrandbits(63)) for _ in range(size)]
        self.knows = {}
        for p in self.peers:
            # Everyone knows the 8 peers closest to itself plus 4 random ones:
            # enough structure for lookups to converge.
            me = kad_id(p)
            near = sorted((q for q in self.peers if q != p), key=lambda q: distance(kad_id(q), me))[:8]
            self.knows[p] = near + rng.sample(self.peers, 4)

    def answer(self, peer, target):
        return sorted(self.knows[peer], key=lambda q: distance(kad_id(q), target))[:20]


class LookupTests(SynchronousTestCase):
    def run_lookup(self, lookup, net, dead=(), on_query=None):
        """Answer every query immediately (in batches), as a driver would."""
        queried = []
        while not lookup.done:
            batch = lookup.next_queries()
            self.assertLessEqual(lookup.in_flight, lookup.alpha)
            if not batch:
                break
            queried.extend(batch)
            for peer in batch:
                if on_query:
                    on_query(peer)
                if peer in dead:
                    lookup.on_failure(peer)
                else:
                    lookup.on_response(peer, net.answer(peer, lookup.target))
        return queried

    def test_finds_the_k_closest(self):
        net = FakeNetwork(300)
        target = kad_id(b"wanted")
        seeds = net.peers[:3]
        lookup = Lookup(target, seeds, k=20, alpha=3)
        queried = self.run_lookup(lookup, net)
        self.assertTrue(lookup.done)
        expected = sorted(net.peers, key=lambda p: distance(kad_id(p), target))[:20]
        self.assertEqual(lookup.closest(), expected)
        self.assertLess(len(queried), 300)  # it did not just flood the network
        self.assertEqual(len(queried), len(set(queried)))  # nobody asked twice

    def test_alpha_limits_concurrency_and_failures_free_slots(self):
        peers = [fake_peer(n) for n in range(10)]
        lookup = Lookup(kad_id(b"x"), peers, k=20, alpha=3)
        first = lookup.next_queries()
        self.assertEqual(len(first), 3)
        self.assertEqual(lookup.next_queries(), [])
        lookup.on_failure(first[0])  # e.g. the driver's per-request timeout fired
        self.assertEqual(lookup.state(first[0]), PeerState.FAILED)
        self.assertEqual(len(lookup.next_queries()), 1)
        lookup.on_response(first[0], [])  # a late answer after the timeout is ignored
        self.assertEqual(lookup.state(first[0]), PeerState.FAILED)

    def test_dead_peers_are_skipped(self):
        net = FakeNetwork(200, seed=2)
        target = kad_id(b"other")
        dead = set(sorted(net.peers, key=lambda p: distance(kad_id(p), target))[:5])
        lookup = Lookup(target, net.peers[:3], k=20, alpha=3)
        self.run_lookup(lookup, net, dead=dead)
        expected = sorted((p for p in net.peers if p not in dead),
                          key=lambda p: distance(kad_id(p), target))[:20]
        self.assertEqual(lookup.closest(), expected)

    def test_done_without_seeds_and_stop(self):
        self.assertTrue(Lookup(kad_id(b"x"), []).done)
        lookup = Lookup(kad_id(b"x"), [fake_peer(1), fake_peer(2)], alpha=1)
        self.assertEqual(len(lookup.next_queries()), 1)
        lookup.stop()
        self.assertTrue(lookup.done)
        self.assertEqual(lookup.next_queries(), [])

    def test_excluded_peer_never_queried(self):
        me = fake_peer(1)
        lookup = Lookup(kad_id(b"x"), [me, fake_peer(2)], exclude=[me])
        batch = lookup.next_queries()
        self.assertEqual(batch, [fake_peer(2)])
        lookup.on_response(fake_peer(2), [me])
        self.assertTrue(lookup.done)
        self.assertEqual(lookup.closest(), [fake_peer(2)])

    def test_hops_and_queried(self):
        a, b, c, d = (fake_peer(n) for n in range(1, 5))
        lookup = Lookup(kad_id(b"x"), [a], alpha=1)
        self.assertEqual((lookup.hops(a), lookup.hops(b), lookup.queried), (0, None, 0))
        self.assertEqual(lookup.next_queries(), [a])
        self.assertEqual(lookup.queried, 1)
        lookup.on_response(a, [b])
        self.assertEqual(lookup.next_queries(), [b])
        lookup.on_response(b, [c, a])  # a is not re-heard deeper
        self.assertEqual((lookup.hops(a), lookup.hops(b), lookup.hops(c)), (0, 1, 2))
        self.assertEqual(lookup.next_queries(), [c])
        lookup.on_failure(c)
        self.assertEqual(lookup.queried, 3)  # failures count as queried
        self.assertIsNone(lookup.hops(d))
