"""Pure floodsub cores: RPC framing, StrictSign signing and validation, seqnos, seen cache."""

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from aicn.p2p.keys import KeyType, PrivateKey, PublicKey
from aicn.p2p.pb import rpc_pb2
from aicn.p2p.peerid import PeerID
from aicn.p2p.pubsub.rpc import (
    RPCError,
    RPCReader,
    RPCTooLarge,
    decode_rpc,
    encode_rpc,
    publish_frame,
    subscriptions_frame,
)
from aicn.p2p.pubsub.seen import SeenCache
from aicn.p2p.pubsub.sign import (
    MessageError,
    SeqnoCounter,
    SignatureError,
    message_id,
    message_key,
    normalise_seqno,
    sign_message,
    signing_bytes,
    validate_message,
)

SEED = bytes(range(32))
# The ed25519 key with seed 00 01 .. 1f and its peer id (identity multihash
# of the PublicKey protobuf 08 01 12 20 <key>).
PUB = bytes.fromhex("03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8")
PEER_ID = "12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB"


def message(**fields):
    msg = rpc_pb2.Message()
    for name, value in fields.items():
        if name == "topic":
            msg.topicIDs.append(value)
        else:
            setattr(msg, name.rstrip("_"), value)
    return msg


def signed(key, topic, data, seqno, include_key=False):
    """Sign as js does: whatever seqno bytes it sends, and optionally `key`."""
    from_ = PeerID.from_public_key(key.public_key).to_bytes()
    msg = message(from_=from_, data=data, seqno=seqno, topic=topic)
    msg.signature = key.sign(signing_bytes(from_, data, seqno, [topic]))
    if include_key:
        msg.key = key.public_key.marshal()
    return msg


class SigningGoldenTests(SynchronousTestCase):
    def test_exact_bytes(self):
        key = PrivateKey.from_raw(KeyType.Ed25519, SEED)
        self.assertEqual(str(PeerID.from_public_key(key.public_key)), PEER_ID)
        msg = sign_message(key, "DeepBrainChain", b"hello", bytes.fromhex("1800000000000001"))
        from_ = bytes.fromhex("0024080112 20".replace(" ", "")) + PUB
        # Fields 1-4 in order, each tag | length | bytes, after the prefix.
        expected_signed = (
            b"libp2p-pubsub:"
            + b"\x0a\x26" + from_
            + b"\x12\x05hello"
            + b"\x1a\x08" + bytes.fromhex("1800000000000001")
            + b"\x22\x0eDeepBrainChain"
        )
        self.assertEqual(
            signing_bytes(from_, b"hello", bytes.fromhex("1800000000000001"), ["DeepBrainChain"]),
            expected_signed,
        )
        # ed25519 signatures are deterministic (RFC 8032); check with an independent verifier too.
        signature = bytes.fromhex(
            "f537aa43d3c0f2f423c7c044490f0dcd5d8e33903af128c8b4b55c281327c6cb"
            "a33c007537eb0a3568bd3f59ed39ef8020a8a165f2bf551b016e9cb718e07509"
        )
        self.assertEqual(msg.signature, signature)
        ed25519.Ed25519PublicKey.from_public_bytes(PUB).verify(signature, expected_signed)
        # go behaviour: no `key` field, the key is inlined in the peer id.
        self.assertFalse(msg.HasField("key"))
        self.assertEqual(
            msg.SerializeToString(),
            expected_signed[len(b"libp2p-pubsub:"):] + b"\x2a\x40" + signature,
        )
        self.assertEqual(validate_message(msg).author, PeerID.from_string(PEER_ID))

    @given(
        from_=st.binary(max_size=300), data=st.binary(max_size=300), seqno=st.binary(max_size=9),
        topics=st.lists(st.text(max_size=40), max_size=3),
    )
    def test_hand_encoding_matches_protobuf(self, from_, data, seqno, topics):
        msg = rpc_pb2.Message(data=data, seqno=seqno, topicIDs=topics)
        setattr(msg, "from", from_)
        self.assertEqual(
            signing_bytes(from_, data, seqno, topics),
            b"libp2p-pubsub:" + msg.SerializeToString(deterministic=True),
        )

    def test_secp256k1_round_trip(self):
        key = PrivateKey.generate("secp256k1")
        msg = sign_message(key, "t", b"x", SeqnoCounter().next())
        self.assertFalse(msg.HasField("key"))
        valid = validate_message(msg)
        self.assertEqual((valid.author, valid.data, valid.topics), (key.peer_id(), b"x", ("t",)))


class ValidationTests(SynchronousTestCase):
    def setUp(self):
        self.key = PrivateKey.generate("secp256k1")

    def test_js_style_key_and_stripped_seqno(self):
        # js sends `key` even for inlined keys and strips leading zeros from seqno.
        msg = signed(self.key, "demo", b"from js", b"\x01\x02\x03", include_key=True)
        valid = validate_message(msg)
        self.assertEqual(valid.seqno, b"\x01\x02\x03")
        self.assertEqual(valid.message_id, self.key.peer_id().to_bytes() + bytes(5) + b"\x01\x02\x03")

    def test_leading_zero_seqno_verifies_over_received_bytes(self):
        msg = signed(self.key, "t", b"py", (5).to_bytes(8, "big"))
        valid = validate_message(msg)
        self.assertEqual(valid.seqno, bytes(7) + b"\x05")
        # Stripped and padded encodings are the same message.
        stripped = signed(self.key, "t", b"py", b"\x05")
        self.assertEqual(message_key(stripped)[1], message_key(msg)[1])

    def test_key_not_matching_from(self):
        msg = signed(self.key, "t", b"x", b"\x01", include_key=True)
        msg.key = PrivateKey.generate("secp256k1").public_key.marshal()
        self.assertRaises(SignatureError, validate_message, msg)
        msg.key = b"\x08\x02\x12\x01x"
        self.assertRaises(SignatureError, validate_message, msg)

    def test_tampered(self):
        for field, value in (("data", b"y"), ("seqno", b"\x02"), ("from", PrivateKey.generate().peer_id().to_bytes())):
            msg = signed(self.key, "t", b"x", b"\x01")
            setattr(msg, field, value)
            self.assertRaises(SignatureError, validate_message, msg)
        msg = signed(self.key, "t", b"x", b"\x01")
        msg.topicIDs[0] = "u"
        self.assertRaises(SignatureError, validate_message, msg)

    def test_hashed_peer_id_needs_key(self):
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        der = rsa_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        public = PublicKey.from_raw(KeyType.RSA, der)
        from_ = PeerID.from_public_key(public).to_bytes()
        self.assertIsNone(PeerID.from_bytes(from_).extract_public_key())
        msg = message(from_=from_, data=b"d", seqno=b"\x07", topic="t")
        msg.signature = rsa_key.sign(
            signing_bytes(from_, b"d", b"\x07", ["t"]), padding.PKCS1v15(), hashes.SHA256()
        )
        self.assertRaises(SignatureError, validate_message, msg)  # no key to verify with
        msg.key = public.marshal()
        self.assertEqual(validate_message(msg).author, PeerID.from_bytes(from_))

    def test_required_fields(self):
        good = signed(self.key, "t", b"x", b"\x01")
        for field in ("from", "data", "seqno", "signature", "topicIDs"):
            msg = rpc_pb2.Message()
            msg.CopyFrom(good)
            msg.ClearField(field)
            self.assertRaises(MessageError, validate_message, msg)

    def test_bad_fields(self):
        self.assertRaises(MessageError, validate_message, signed(self.key, "t", b"x", bytes(9) + b"\x01"))
        msg = signed(self.key, "t", b"x" * 11, b"\x01")
        self.assertRaises(MessageError, validate_message, msg, 10)
        self.assertEqual(validate_message(msg, 11).data, b"x" * 11)
        msg.ParseFromString(msg.SerializeToString() + b"\x22\x02\xff\xfe")  # a non-UTF-8 topic
        self.assertRaises(MessageError, validate_message, msg)
        bad_from = signed(self.key, "t", b"x", b"\x01")
        setattr(bad_from, "from", b"\x12\x05abc")
        self.assertRaises(MessageError, validate_message, bad_from)
        self.assertRaises(MessageError, message_key, bad_from)

    @settings(max_examples=200)
    @given(st.binary(max_size=400))
    def test_garbage_messages(self, raw):
        msg = rpc_pb2.Message()
        try:
            msg.ParseFromString(raw)
        except Exception:
            return
        with self.assertRaises(MessageError):  # SignatureError is a MessageError
            validate_message(msg)


class SeqnoTests(SynchronousTestCase):
    @given(st.integers(min_value=0, max_value=(1 << 64) - 1))
    def test_never_a_leading_zero(self, seed):
        counter = SeqnoCounter(seed)
        values = [counter.next() for _ in range(3)]
        for value in values:
            self.assertEqual(len(value), 8)
            self.assertNotEqual(value[0], 0)
        self.assertEqual(len(set(values)), 3)

    def test_seeded_from_unix_nanoseconds(self):
        a, b = SeqnoCounter().next(), SeqnoCounter().next()
        self.assertEqual(int.from_bytes(b, "big") >= int.from_bytes(a, "big"), True)
        counter = SeqnoCounter(1000)
        self.assertEqual(int.from_bytes(counter.next(), "big") + 1, int.from_bytes(counter.next(), "big"))

    def test_normalise(self):
        self.assertEqual(normalise_seqno(b"\x01"), bytes(7) + b"\x01")
        self.assertEqual(normalise_seqno(b""), bytes(8))
        peer = PrivateKey.generate().peer_id()
        self.assertEqual(message_id(peer, b"\x01"), message_id(peer, bytes(7) + b"\x01"))


class SeenCacheTests(SynchronousTestCase):
    def test_ttl(self):
        clock = Clock()
        seen = SeenCache(clock, ttl=120)
        self.assertTrue(seen.add(b"a"))
        self.assertFalse(seen.add(b"a"))
        clock.advance(60)
        seen.add(b"b")
        clock.advance(59.9)
        self.assertIn(b"a", seen)
        clock.advance(0.1)
        self.assertNotIn(b"a", seen)
        self.assertIn(b"b", seen)
        self.assertEqual(len(seen), 1)
        self.assertTrue(seen.add(b"a"))  # forgotten, so new again
        clock.advance(60)
        self.assertNotIn(b"b", seen)

    def test_size_cap(self):
        seen = SeenCache(Clock(), ttl=120, max_entries=3)
        for key in (b"1", b"2", b"3", b"4"):
            seen.add(key)
        self.assertEqual(len(seen), 3)
        self.assertNotIn(b"1", seen)
        self.assertIn(b"4", seen)
        self.assertEqual(seen.evicted, 1)


class RPCTests(SynchronousTestCase):
    def test_zero_length_frame_is_an_empty_rpc(self):
        self.assertEqual(subscriptions_frame([]), b"\x00")
        rpcs = list(RPCReader().feed(b"\x00\x00"))
        self.assertEqual(len(rpcs), 2)
        self.assertEqual(rpcs[0], rpc_pb2.RPC())

    def test_subscriptions_and_publish(self):
        frame = subscriptions_frame([("a", True), ("b", False)])
        (rpc,) = RPCReader().feed(frame)
        self.assertEqual([(s.topicid, s.subscribe) for s in rpc.subscriptions], [("a", True), ("b", False)])
        msg = signed(PrivateKey.generate(), "t", b"x", b"\x01")
        (rpc,) = RPCReader().feed(publish_frame(msg))
        self.assertEqual(list(rpc.publish), [msg])

    def test_control_is_parsed_and_ignored(self):
        # A gossipsub peer's control field (IHAVE etc.) must not break decoding.
        rpc = decode_rpc(b"\x1a\x06\x0a\x04\x0a\x02ab")
        self.assertTrue(rpc.HasField("control"))

    def test_oversize_frame_rejected_before_body(self):
        reader = RPCReader(max_frame=100)
        with self.assertRaises(RPCTooLarge):
            reader.feed(b"\xe5\x01")  # length 229, no body yet
        self.assertTrue(issubclass(RPCTooLarge, RPCError))

    def test_bad_varint(self):
        self.assertRaises(RPCError, RPCReader().feed, b"\xff" * 11)

    def test_rpcs_before_a_malformed_one_survive(self):
        rpcs = RPCReader().feed(subscriptions_frame([("a", True)]) + b"\x03\xff\xff\xff")
        self.assertEqual(next(rpcs).subscriptions[0].topicid, "a")
        self.assertRaises(RPCError, next, rpcs)

    @given(
        st.lists(
            st.tuples(
                st.lists(st.tuples(st.text(max_size=20), st.booleans()), max_size=4),
                st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=8), st.text(max_size=10)), max_size=3),
            ),
            max_size=5,
        ),
        st.integers(min_value=1, max_value=50),
    )
    def test_round_trip_any_chunking(self, rpcs, chunk):
        originals = []
        stream = b""
        for subs, msgs in rpcs:
            rpc = rpc_pb2.RPC()
            for topic, sub in subs:
                rpc.subscriptions.add(topicid=topic, subscribe=sub)
            for data, seqno, topic in msgs:
                rpc.publish.add(data=data, seqno=seqno, topicIDs=[topic])
            originals.append(rpc)
            stream += encode_rpc(rpc)
        reader = RPCReader()
        out = []
        for i in range(0, len(stream), chunk):
            out += reader.feed(stream[i : i + chunk])
        self.assertEqual(out, originals)
        self.assertEqual(reader.buffered, 0)

    @settings(max_examples=300)
    @given(st.binary(max_size=300))
    def test_garbage_frames(self, raw):
        reader = RPCReader(max_frame=200)
        try:
            for rpc in reader.feed(raw):
                self.assertIsInstance(rpc, rpc_pb2.RPC)
        except RPCError:
            pass

    @settings(max_examples=300)
    @given(st.binary(max_size=300))
    def test_garbage_bodies(self, raw):
        try:
            decode_rpc(raw)
        except RPCError:
            pass
