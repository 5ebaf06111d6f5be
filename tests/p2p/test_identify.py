"""identify: encoding, lenient decoding of go/js-shaped messages, stream handlers."""

from hypothesis import given, settings, strategies as st
from multiaddr import Multiaddr
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from aicn import AGENT_VERSION, PROTOCOL_VERSION
from aicn.p2p import identify
from aicn.p2p.binaddr import p2p_component
from aicn.p2p.identify import (
    IdentifyError,
    IdentifyInfo,
    LocalIdentity,
    build_identify,
    decode_frames,
    encode_frame,
    handle_identify,
    handle_identify_push,
    parse_identify,
    request_identify,
    send_identify_push,
)
from aicn.p2p.keys import PrivateKey
from aicn.p2p.pb import identify_pb2
from aicn.p2p.record import make_peer_record
from aicn.p2p.stream import StreamReset
from aicn.p2p.varint import encode_uvarint

from .fakestream import FakeContext, StreamPair
from .test_keys import UNSUPPORTED_CURVE_PUB

KEY = PrivateKey.generate("secp256k1")  # the remote peer being identified
ME = PrivateKey.generate("ed25519")
OTHER = PrivateKey.generate("secp256k1")
PEER = KEY.peer_id()


def ma(text: str) -> bytes:
    return Multiaddr(text).to_bytes()


LISTEN = [ma("/ip4/127.0.0.1/tcp/4001"), ma("/ip6/::1/tcp/4001")]
OBSERVED = ma("/ip4/127.0.0.1/tcp/46170")
RECORD = make_peer_record(KEY, LISTEN, 1_700_000_000_000)


def field(num: int, value) -> bytes:
    """Hand-encode one protobuf field: varint for ints, length-delimited otherwise."""
    if isinstance(value, int):
        return encode_uvarint(num << 3) + encode_uvarint(value)
    if isinstance(value, str):
        value = value.encode()
    return encode_uvarint(num << 3 | 2) + encode_uvarint(len(value)) + value


def js_shaped(key=KEY, record=RECORD, observed=OBSERVED + p2p_component(ME.peer_id())) -> bytes:
    """Fields in js-libp2p 2.10's wire order: 5, 6, 1, 2…, 4, 3…, 8; observedAddr with /p2p."""
    protos = ["/floodsub/1.0.0", "/ipfs/id/1.0.0", "/ipfs/id/push/1.0.0", "/ipfs/ping/1.0.0"]
    return b"".join(
        [field(5, "ipfs/0.1.0"), field(6, "js-libp2p/2.10.0 node/20.20.2"), field(1, key.public_key.marshal())]
        + [field(2, a) for a in LISTEN]
        + [field(4, observed)]
        + [field(3, p) for p in protos]
        + [field(8, record)]
    )


def go_shaped(with_record=True) -> list[bytes]:
    """go's chunked form: everything but the record, then the record alone."""
    first = b"".join(
        [field(1, KEY.public_key.marshal())]
        + [field(2, a) for a in LISTEN]
        + [field(3, "/ipfs/id/1.0.0"), field(3, "/ipfs/ping/1.0.0"), field(4, OBSERVED)]
        + [field(5, "ipfs/0.1.0"), field(6, "github.com/libp2p/go-libp2p")]
    )
    return [first, field(8, RECORD)] if with_record else [first]


def run(coro):
    return Deferred.fromCoroutine(coro)


class ParseTests(SynchronousTestCase):
    def test_js_shaped(self):
        res = parse_identify(js_shaped(), PEER, is_push=False)
        self.assertEqual(res.peer, PEER)
        self.assertEqual(res.public_key, KEY.public_key)
        self.assertEqual(res.protocol_version, "ipfs/0.1.0")
        self.assertEqual(res.agent_version, "js-libp2p/2.10.0 node/20.20.2")
        self.assertEqual(res.listen_addrs, LISTEN)
        self.assertEqual(res.observed_addr, OBSERVED)  # /p2p/<our id> stripped
        self.assertIn("/ipfs/ping/1.0.0", res.protocols)
        self.assertEqual(res.signed_record.seq, 1_700_000_000_000)
        self.assertEqual(res.signed_record_envelope, RECORD)
        self.assertEqual(res.addrs, LISTEN)

    def test_go_shaped_two_frames_merge(self):
        data = b"".join(encode_frame(m) for m in go_shaped())
        res = parse_identify(b"".join(decode_frames(data)), PEER, is_push=False)
        self.assertEqual(res.observed_addr, OBSERVED)
        self.assertEqual(res.protocols, ["/ipfs/id/1.0.0", "/ipfs/ping/1.0.0"])
        self.assertEqual(res.agent_version, "github.com/libp2p/go-libp2p")
        self.assertIsNotNone(res.signed_record)

    def test_missing_record_accepted(self):
        res = parse_identify(go_shaped(with_record=False)[0], PEER, is_push=False)
        self.assertIsNone(res.signed_record)
        self.assertEqual(res.addrs, LISTEN)

    def test_mismatched_key_rejected(self):
        with self.assertRaises(IdentifyError):
            parse_identify(js_shaped(key=OTHER), PEER, is_push=False)

    def test_missing_key_rejected_for_response(self):
        msg = identify_pb2.Identify(agentVersion="x").SerializeToString()
        with self.assertRaises(IdentifyError):
            parse_identify(msg, PEER, is_push=False)

    def test_push_without_key_accepted(self):
        # js's push: fields 5, 6, 2, 3, 8 only.
        msg = field(5, "ipfs/0.1.0") + field(6, "js") + field(2, LISTEN[0]) + field(3, "/x/1") + field(8, RECORD)
        res = parse_identify(msg, PEER, is_push=True)
        self.assertIsNone(res.public_key)
        self.assertEqual(res.peer, PEER)
        self.assertEqual(res.protocols, ["/x/1"])
        self.assertEqual(res.signed_record.peer_id, PEER)

    def test_push_with_wrong_key_rejected(self):
        with self.assertRaises(IdentifyError):
            parse_identify(js_shaped(key=OTHER), PEER, is_push=True)

    def test_undecodable_key_rejected(self):
        with self.assertRaises(IdentifyError):
            parse_identify(field(1, b"\x08\x02\x12\x01x"), None, is_push=True)
        # ECDSA on a curve OpenSSL lacks: cryptography raised UnsupportedAlgorithm here.
        with self.assertRaises(IdentifyError):
            parse_identify(field(1, bytes.fromhex(UNSUPPORTED_CURVE_PUB)), None, is_push=False)

    def test_no_expected_peer_uses_key(self):
        self.assertEqual(parse_identify(js_shaped(), None, is_push=False).peer, PEER)

    def test_record_for_other_peer_ignored(self):
        res = parse_identify(js_shaped(record=make_peer_record(OTHER, LISTEN, 5)), PEER, is_push=False)
        self.assertIsNone(res.signed_record)
        self.assertIsNone(res.signed_record_envelope)
        self.assertEqual(res.listen_addrs, LISTEN)

    def test_garbage_record_ignored(self):
        res = parse_identify(js_shaped(record=b"\x0a\x03abc\x2a\x01z"), PEER, is_push=False)
        self.assertIsNone(res.signed_record)

    def test_bad_addresses_skipped(self):
        msg = go_shaped(False)[0] + field(2, b"\xff\xff\xff") + field(4, b"\x04\x01")
        res = parse_identify(msg, PEER, is_push=False)
        self.assertEqual(res.listen_addrs, LISTEN)
        self.assertIsNone(res.observed_addr)  # the last observedAddr (the bad one) wins

    def test_invalid_utf8(self):
        msg = field(1, KEY.public_key.marshal()) + field(6, b"ag\xffent") + field(3, b"\xfe") + field(3, "/ok")
        res = parse_identify(msg, PEER, is_push=False)
        self.assertEqual(res.agent_version, "ag\ufffdent")
        self.assertEqual(res.protocols, ["/ok"])

    def test_decode_frames_errors(self):
        with self.assertRaises(IdentifyError):
            decode_frames(encode_uvarint(identify.MAX_IDENTIFY_SIZE + 1))
        with self.assertRaises(IdentifyError):
            decode_frames(b"\x05abc")  # truncated
        with self.assertRaises(IdentifyError):
            decode_frames(b"\x00" * (identify.MAX_MESSAGES + 1))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=400))
    def test_garbage_parse(self, data):
        for is_push in (False, True):
            try:
                parse_identify(data, PEER, is_push)
            except IdentifyError:
                pass

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=200))
    def test_garbage_frames(self, data):
        try:
            parse_identify(b"".join(decode_frames(data)), None, True)
        except IdentifyError:
            pass

    @settings(max_examples=200, deadline=None)
    @given(st.data())
    def test_mutated_js_message(self, data):
        msg = bytearray(JS_MSG)
        i = data.draw(st.integers(0, len(msg) - 1))
        msg[i] ^= data.draw(st.integers(1, 255))
        try:
            res = parse_identify(bytes(msg), PEER, is_push=False)
        except IdentifyError:
            return
        self.assertEqual(res.public_key, KEY.public_key)

    @settings(max_examples=50, deadline=None)
    @given(
        st.lists(st.sampled_from(LISTEN + [OBSERVED]), max_size=3, unique=True),
        st.lists(st.text(min_size=1, max_size=20), max_size=5, unique=True),
        st.text(max_size=30),
        st.booleans(),
    )
    def test_round_trip(self, addrs, protos, agent, push):
        info = IdentifyInfo(KEY.public_key, tuple(addrs), tuple(sorted(protos)), agent_version=agent)
        data = build_identify(info, OBSERVED, include_key=not push, include_observed=not push)
        res = parse_identify(data, PEER, is_push=push)
        self.assertEqual(res.listen_addrs, addrs)
        self.assertEqual(res.protocols, sorted(protos))
        self.assertEqual(res.agent_version, agent)
        self.assertEqual(res.protocol_version, PROTOCOL_VERSION)
        self.assertEqual(res.observed_addr, None if push else OBSERVED)
        self.assertEqual(res.public_key, None if push else KEY.public_key)


JS_MSG = js_shaped()


class LocalIdentityTests(SynchronousTestCase):
    def test_info_and_seq(self):
        clock = Clock()
        clock.advance(1000)
        local = LocalIdentity(KEY, clock)
        first = local.info([LISTEN[1], LISTEN[0], LISTEN[0]], ["/b", "/a", "/b"])
        self.assertEqual(first.protocols, ("/a", "/b"))
        self.assertEqual(first.listen_addrs, (LISTEN[1], LISTEN[0]))
        self.assertEqual((first.agent_version, first.protocol_version), (AGENT_VERSION, PROTOCOL_VERSION))
        self.assertIs(local.info([LISTEN[1], LISTEN[0]], ["/a", "/b"]), first)  # cached
        rec1 = parse_identify(build_identify(first, None), PEER, False).signed_record
        self.assertEqual(rec1.seq, 1_000_000)
        # The clock did not move, yet the new record's seq must grow.
        second = local.info([LISTEN[0]], ["/a"])
        rec2 = parse_identify(build_identify(second, None), PEER, False).signed_record
        self.assertEqual(rec2.seq, 1_000_001)
        self.assertEqual(rec2.addrs, [LISTEN[0]])
        clock.advance(5)
        self.assertEqual(local.next_seq(), 1_005_000)

    def test_no_record(self):
        info = LocalIdentity(KEY, Clock(), sign_records=False).info(LISTEN, [])
        self.assertIsNone(info.signed_peer_record)
        self.assertFalse(identify_pb2.Identify.FromString(build_identify(info, None)).HasField("signedPeerRecord"))


class StreamTests(SynchronousTestCase):
    def setUp(self):
        self.local = LocalIdentity(KEY, Clock())
        self.pair = StreamPair(protocol=identify.ID)
        # b serves KEY's identity to a, which is ME.
        self.server_ctx = FakeContext(KEY, ME.peer_id(), OBSERVED, lambda: self.local.info(LISTEN, ["/x", identify.ID]))
        self.client_ctx = FakeContext(ME, PEER, LISTEN[0])

    def test_request_response(self):
        served = run(handle_identify(self.pair.b, self.server_ctx))
        self.assertTrue(self.pair.b.fin_sent)
        res = self.successResultOf(run(request_identify(self.pair.a, self.client_ctx)))
        self.successResultOf(served)
        self.assertEqual(res.peer, PEER)
        self.assertEqual(res.observed_addr, OBSERVED)
        self.assertEqual(res.protocols, [identify.ID, "/x"])
        self.assertEqual(res.signed_record.addrs, LISTEN)
        self.assertTrue(self.pair.a.fin_sent)  # the requester closes when done

    def test_response_read_in_small_window(self):
        pair = StreamPair(window=7)
        served = run(handle_identify(pair.b, self.server_ctx))
        res = self.successResultOf(run(request_identify(pair.a, self.client_ctx)))
        self.successResultOf(served)
        self.assertEqual(res.listen_addrs, LISTEN)
        self.assertLessEqual(pair.a.max_buffered, 7)

    def test_go_chunked_response(self):
        d = run(request_identify(self.pair.a, self.client_ctx))
        for m in go_shaped():
            self.pair.b.write(encode_frame(m))
        self.pair.b.close_write()
        self.assertEqual(self.successResultOf(d).signed_record.peer_id, PEER)

    def test_wrong_peer_resets(self):
        ctx = FakeContext(ME, OTHER.peer_id(), None)
        d = run(request_identify(self.pair.a, ctx))
        run(handle_identify(self.pair.b, self.server_ctx))
        self.failureResultOf(d, IdentifyError)
        self.assertTrue(self.pair.a.is_reset)

    def test_oversized_frame_fails_early(self):
        d = run(request_identify(self.pair.a, self.client_ctx))
        self.pair.b.write(encode_uvarint(identify.MAX_IDENTIFY_SIZE + 1) + b"x")
        self.failureResultOf(d, IdentifyError)  # without waiting for EOF
        self.assertTrue(self.pair.b.is_reset)

    def test_truncated(self):
        d = run(request_identify(self.pair.a, self.client_ctx))
        self.pair.b.write(encode_frame(JS_MSG)[:-3])
        self.pair.b.close_write()
        self.failureResultOf(d, IdentifyError)

    def test_reset_propagates(self):
        d = run(request_identify(self.pair.a, self.client_ctx))
        self.pair.b.reset()
        self.failureResultOf(d, StreamReset)

    def test_handler_quiet_on_reset(self):
        self.pair.a.reset()
        self.assertIsNone(self.successResultOf(run(handle_identify(self.pair.b, self.server_ctx))))

    def test_push(self):
        got = run(handle_identify_push(self.pair.a, self.client_ctx))
        self.successResultOf(run(send_identify_push(self.pair.b, self.server_ctx)))
        res = self.successResultOf(got)
        self.assertTrue(res.is_push)
        self.assertIsNone(res.public_key)
        self.assertIsNone(res.observed_addr)
        self.assertEqual(res.peer, PEER)
        self.assertEqual(res.protocols, [identify.ID, "/x"])

    def test_bad_push_returns_none(self):
        got = run(handle_identify_push(self.pair.a, self.client_ctx))
        self.pair.b.write(encode_frame(js_shaped(key=OTHER)))
        self.pair.b.close_write()
        self.assertIsNone(self.successResultOf(got))
        self.assertTrue(self.pair.a.is_reset)
        self.flushLoggedErrors()
