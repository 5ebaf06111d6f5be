"""Signed envelopes (RFC 0002), peer records (RFC 0003) and binary multiaddrs."""

from hypothesis import given, settings, strategies as st
from multiaddr import Multiaddr
from twisted.trial.unittest import SynchronousTestCase

from aicn.p2p import binaddr, record
from aicn.p2p.keys import PrivateKey
from aicn.p2p.pb import envelope_pb2, peer_record_pb2
from aicn.p2p.record import (
    PEER_RECORD_DOMAIN,
    PEER_RECORD_PAYLOAD_TYPE,
    RecordError,
    make_peer_record,
    open_envelope,
    open_peer_record,
    seal,
    signing_buffer,
)

SECP = PrivateKey.generate("secp256k1")
ED = PrivateKey.generate("ed25519")
OTHER = PrivateKey.generate("secp256k1")


def ma(text: str) -> bytes:
    return Multiaddr(text).to_bytes()


ADDRS = [ma("/ip4/127.0.0.1/tcp/4001"), ma("/ip6/::1/udp/4001/quic-v1"), ma("/dns4/example.com/tcp/443/wss")]
# Made once: secp256k1 DER signatures vary in length, hypothesis needs a fixed input.
GOOD_RECORD = make_peer_record(SECP, ADDRS, 7)


class SigningBufferTests(SynchronousTestCase):
    def test_layout(self):
        # Worked by hand from RFC 0002: every field is uvarint-length-prefixed.
        buf = signing_buffer("libp2p-peer-record", b"\x03\x01", b"xyz")
        self.assertEqual(buf, b"\x12libp2p-peer-record" + b"\x02\x03\x01" + b"\x03xyz")

    def test_long_payload_uses_multibyte_length(self):
        buf = signing_buffer("d", b"t", b"a" * 300)
        self.assertEqual(buf[:5], b"\x01d\x01t" + b"\xac")
        self.assertEqual(buf[5:7], b"\x02" + b"a")


class EnvelopeTests(SynchronousTestCase):
    def test_seal_open(self):
        for key in (SECP, ED):
            env = open_envelope(seal(key, "my-domain", b"\x01", b"payload"), "my-domain")
            self.assertEqual(env.public_key, key.public_key)
            self.assertEqual((env.payload_type, env.payload), (b"\x01", b"payload"))

    def test_wrong_domain_rejected(self):
        data = seal(SECP, "my-domain", b"\x01", b"payload")
        with self.assertRaises(RecordError):
            open_envelope(data, "other-domain")

    def test_wire_fields(self):
        # Field numbers public_key=1, payload_type=2, payload=3, signature=5.
        data = seal(SECP, "d", b"\x03\x01", b"p")
        self.assertEqual(data[:2], b"\x0a\x25")  # field 1, 37-byte PublicKey protobuf
        env = envelope_pb2.Envelope.FromString(data)
        self.assertEqual(env.public_key, SECP.public_key.marshal())
        self.assertIn(b"\x2a", data)  # field 5 tag

    def test_oversized(self):
        with self.assertRaises(RecordError):
            open_envelope(b"\x00" * (record.MAX_ENVELOPE_SIZE + 1), "d")


class PeerRecordTests(SynchronousTestCase):
    def test_round_trip(self):
        for key in (SECP, ED):
            data = make_peer_record(key, ADDRS, 1700000000000)
            peer, seq, addrs = open_peer_record(data, key.peer_id())
            self.assertEqual((peer, seq, addrs), (key.peer_id(), 1700000000000, ADDRS))

    def test_expected_peer_optional(self):
        self.assertEqual(open_peer_record(make_peer_record(SECP, [], 1)).peer_id, SECP.peer_id())

    def test_payload_layout(self):
        env = envelope_pb2.Envelope.FromString(make_peer_record(SECP, ADDRS[:1], 5))
        self.assertEqual(env.payload_type, b"\x03\x01")
        rec = peer_record_pb2.PeerRecord.FromString(env.payload)
        self.assertEqual(rec.peer_id, SECP.peer_id().to_bytes())
        self.assertEqual(rec.seq, 5)
        self.assertEqual([a.multiaddr for a in rec.addresses], ADDRS[:1])

    def test_wrong_peer(self):
        with self.assertRaises(RecordError):
            open_peer_record(make_peer_record(SECP, ADDRS, 1), OTHER.peer_id())

    def test_tampered_payload(self):
        env = envelope_pb2.Envelope.FromString(make_peer_record(SECP, ADDRS, 1))
        rec = peer_record_pb2.PeerRecord.FromString(env.payload)
        rec.seq = 2
        env.payload = rec.SerializeToString()
        with self.assertRaises(RecordError):
            open_peer_record(env.SerializeToString())

    def test_tampered_signature(self):
        env = envelope_pb2.Envelope.FromString(make_peer_record(ED, ADDRS, 1))
        env.signature = bytes([env.signature[0] ^ 1]) + env.signature[1:]
        with self.assertRaises(RecordError):
            open_peer_record(env.SerializeToString())

    def test_wrong_payload_type(self):
        # Validly signed, but not a peer record.
        payload = envelope_pb2.Envelope.FromString(make_peer_record(SECP, ADDRS, 1)).payload
        data = seal(SECP, PEER_RECORD_DOMAIN, b"\x03\x02", payload)
        with self.assertRaises(RecordError):
            open_peer_record(data)

    def test_record_for_other_peer_signed_by_us(self):
        # Signer is SECP, but the record claims to be OTHER's.
        rec = peer_record_pb2.PeerRecord(peer_id=OTHER.peer_id().to_bytes(), seq=1)
        data = seal(SECP, PEER_RECORD_DOMAIN, PEER_RECORD_PAYLOAD_TYPE, rec.SerializeToString())
        with self.assertRaises(RecordError):
            open_peer_record(data)

    def test_bad_addresses_dropped(self):
        rec = peer_record_pb2.PeerRecord(peer_id=SECP.peer_id().to_bytes(), seq=1)
        rec.addresses.add(multiaddr=b"\xff\xff\xff")
        rec.addresses.add(multiaddr=ADDRS[0])
        data = seal(SECP, PEER_RECORD_DOMAIN, PEER_RECORD_PAYLOAD_TYPE, rec.SerializeToString())
        self.assertEqual(open_peer_record(data).addrs, [ADDRS[0]])

    def test_make_rejects_bad_input(self):
        with self.assertRaises(binaddr.BinaryMultiaddrError):
            make_peer_record(SECP, [b"junk"], 1)
        with self.assertRaises(ValueError):
            make_peer_record(SECP, [], -1)

    @settings(max_examples=50, deadline=None)
    @given(
        st.integers(min_value=0, max_value=2**64 - 1),
        st.lists(st.sampled_from(ADDRS), max_size=5),
    )
    def test_round_trip_property(self, seq, addrs):
        self.assertEqual(open_peer_record(make_peer_record(SECP, addrs, seq)), (SECP.peer_id(), seq, addrs))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300))
    def test_garbage(self, data):
        try:
            open_peer_record(data)
        except RecordError:
            pass

    @settings(max_examples=200, deadline=None)
    @given(st.data())
    def test_mutated_records(self, data):
        good = bytearray(GOOD_RECORD)
        i = data.draw(st.integers(0, len(good) - 1))
        good[i] ^= data.draw(st.integers(1, 255))
        try:
            open_peer_record(bytes(good))
        except RecordError:
            pass
        else:  # the signature covers payload and type: content never changes silently
            self.assertEqual(open_peer_record(bytes(good)).addrs, ADDRS)


class BinaddrTests(SynchronousTestCase):
    def test_components(self):
        self.assertEqual(binaddr.components(ma("/ip4/1.2.3.4/tcp/80")), [(4, b"\x01\x02\x03\x04"), (6, b"\x00\x50")])

    def test_strip_p2p(self):
        pid = SECP.peer_id()
        base = ma("/ip4/127.0.0.1/tcp/46170")
        self.assertEqual(binaddr.strip_p2p(base + binaddr.p2p_component(pid)), (base, pid))
        self.assertEqual(binaddr.strip_p2p(base), (base, None))
        self.assertEqual(ma(f"/ip4/127.0.0.1/tcp/46170/p2p/{pid}"), base + binaddr.p2p_component(pid))

    def test_invalid(self):
        for bad in (b"", b"\x04\x01\x02", b"\xff\x7f", b"\xa5\x03\x02ab", b"\x80"):
            with self.assertRaises(binaddr.BinaryMultiaddrError):
                binaddr.components(bad)

    @given(st.binary(max_size=64))
    def test_garbage(self, data):
        try:
            binaddr.strip_p2p(data)
        except binaddr.BinaryMultiaddrError:
            pass
