"""Keys and peer IDs against the libp2p peer-ids spec and independent implementations."""

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from aicn.p2p.keys import InvalidKey, KeyType, PrivateKey, PublicKey, parse_key_type
from aicn.p2p.peerid import InvalidPeerID, PeerID, b58decode, b58encode
from aicn.p2p.varint import VarintError, decode_uvarint, encode_uvarint

# Test vectors of the libp2p spec, peer-ids/peer-ids.md "Test vectors" (hex of the
# PublicKey/PrivateKey protobufs; each public key belongs to the private key).
SPEC_SECP256K1_PRIV = "0802122053DADF1D5A164D6B4ACDB15E24AA4C5B1D3461BDBD42ABEDB0A4404D56CED8FB"
SPEC_SECP256K1_PUB = "08021221037777e994e452c21604f91de093ce415f5432f701dd8cd1a7a6fea0e630bfca99"
SPEC_ED25519_PRIV = (
    "080112407e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d"
    "1ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
)
SPEC_ED25519_PUB = "080112201ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
SPEC_ECDSA_PUB = (
    "0803125b3059301306072a8648ce3d020106082a8648ce3d03010703420004de3d300fa36ae0e8"
    "f5d530899d83abab44abf3161f162a4bc901d8e6ecda020e8b6d5f8da30525e71d6851510c098e"
    "5c47c646a597fb4dcec034e9f77c409e62"
)
# An ECDSA PublicKey whose DER names secp112r1, a curve OpenSSL does not support.
UNSUPPORTED_CURVE_PUB = "0803" + "1234" + (
    "3032301006072a8648ce3d020106052b81040006031e0004cdd2d10a4f2abc8324f17439d6a461947a41fd7c84000e331a901534"
)

# A key made by js-libp2p (@libp2p/crypto), printed by its peer-id package: raw
# secp256k1 scalar and the resulting peer ID.
JS_SECP256K1_SCALAR = "db82e7408fbe37e0641087557f3535a34049d19d27f6939f43b47418cd981434"
JS_SECP256K1_PEER_ID = "16Uiu2HAmE1zdG92om3Y49m3ZeT5T3jAZCZ1w7JGWi93NWGRbjmW1"


class SpecVectorTests(SynchronousTestCase):
    def test_secp256k1_vector(self):
        key = PrivateKey.unmarshal(bytes.fromhex(SPEC_SECP256K1_PRIV))
        self.assertEqual(key.key_type, KeyType.Secp256k1)
        self.assertEqual(key.public_key.marshal().hex(), SPEC_SECP256K1_PUB)
        self.assertEqual(key.marshal().hex(), SPEC_SECP256K1_PRIV.lower())
        pid = key.peer_id()
        # Identity multihash: 0x00, length 37, then the 37-byte protobuf.
        self.assertEqual(pid.to_bytes(), bytes([0, 37]) + bytes.fromhex(SPEC_SECP256K1_PUB))
        self.assertTrue(str(pid).startswith("16Uiu2"))

    def test_ed25519_vector(self):
        key = PrivateKey.unmarshal(bytes.fromhex(SPEC_ED25519_PRIV))
        self.assertEqual(key.public_key.marshal().hex(), SPEC_ED25519_PUB)
        self.assertEqual(key.marshal().hex(), SPEC_ED25519_PRIV)
        self.assertTrue(str(key.peer_id()).startswith("12D3KooW"))

    def test_ed25519_legacy_96_byte_form(self):
        raw = bytes.fromhex(SPEC_ED25519_PRIV)[4:]
        key = PrivateKey.from_raw(KeyType.Ed25519, raw + raw[32:])
        self.assertEqual(key.public_key.marshal().hex(), SPEC_ED25519_PUB)
        with self.assertRaises(InvalidKey):
            PrivateKey.from_raw(KeyType.Ed25519, raw + bytes(32))

    def test_ecdsa_public_key_hashes_to_sha256_peer_id(self):
        pub = PublicKey.unmarshal(bytes.fromhex(SPEC_ECDSA_PUB))
        self.assertEqual(pub.key_type, KeyType.ECDSA)
        pid = PeerID.from_public_key(pub)
        self.assertEqual(pid.to_bytes()[:2], b"\x12\x20")
        self.assertTrue(str(pid).startswith("Qm"))
        self.assertIsNone(pid.extract_public_key())

    def test_js_made_key(self):
        key = PrivateKey.from_raw(KeyType.Secp256k1, bytes.fromhex(JS_SECP256K1_SCALAR))
        self.assertEqual(str(key.peer_id()), JS_SECP256K1_PEER_ID)


class KeyTests(SynchronousTestCase):
    def test_sign_verify_both_types(self):
        for kind in ("secp256k1", "ed25519"):
            key = PrivateKey.generate(kind)
            sig = key.sign(b"payload")
            self.assertTrue(key.public_key.verify(b"payload", sig))
            self.assertFalse(key.public_key.verify(b"payload!", sig))
            self.assertFalse(PrivateKey.generate(kind).public_key.verify(b"payload", sig))
            self.assertFalse(key.public_key.verify(b"payload", b"\x30\x00garbage"))

    def test_secp256k1_signatures_are_low_s(self):
        n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        key = PrivateKey.generate()
        for i in range(64):
            _, s = decode_dss_signature(key.sign(b"m%d" % i))
            self.assertLessEqual(s, n // 2)

    def test_roundtrip_marshal(self):
        for kind in ("secp256k1", "ed25519"):
            key = PrivateKey.generate(kind)
            again = PrivateKey.unmarshal(key.marshal())
            self.assertEqual(again.public_key, key.public_key)
            self.assertEqual(PublicKey.unmarshal(key.public_key.marshal()), key.public_key)

    def test_ecdh_is_symmetric(self):
        a, b = PrivateKey.generate(), PrivateKey.generate()
        self.assertEqual(a.ecdh(b.public_key), b.ecdh(a.public_key))
        self.assertEqual(len(a.ecdh(b.public_key)), 32)
        with self.assertRaises(InvalidKey):
            a.ecdh(PrivateKey.generate("ed25519").public_key)

    def test_bad_keys(self):
        for raw in (b"", b"\x08\x02", b"\x08\x09\x12\x01\x00", b"\x08\x02\x12\x21" + b"\x05" * 33,
                    b"\x08\x02\x12\x20" + b"\x00" * 32, b"\x0b", b"\x08\x02\x12\xff\xff"):
            with self.assertRaises(InvalidKey):
                PublicKey.unmarshal(raw)
        with self.assertRaises(InvalidKey):
            PrivateKey.unmarshal(b"\x08\x02\x12\x20" + b"\x00" * 32)  # zero scalar
        with self.assertRaises(InvalidKey):
            parse_key_type("rsa4096")
        self.assertEqual(parse_key_type("ED25519"), KeyType.Ed25519)

    def test_unsupported_curve_is_invalid_key(self):
        # Found by the fuzz harness: cryptography's UnsupportedAlgorithm (not a ValueError)
        # escaped unmarshal, past identify's, records' and pubsub's InvalidKey handlers.
        with self.assertRaises(InvalidKey):
            PublicKey.unmarshal(bytes.fromhex(UNSUPPORTED_CURVE_PUB))

    def test_parsed_public_keys_are_shared(self):
        # Parsing is cached: the same bytes give the same (immutable) key object,
        # and a key type given as a plain int still yields a KeyType.
        key = PrivateKey.generate().public_key
        first = PublicKey.unmarshal(key.marshal())
        self.assertIs(PublicKey.unmarshal(bytearray(key.marshal())), first)
        self.assertIs(PublicKey.from_raw(KeyType.Secp256k1, key.raw), PublicKey.from_raw(2, key.raw))
        self.assertIs(PublicKey.from_raw(2, key.raw).key_type, KeyType.Secp256k1)
        self.assertTrue(first.verify(b"m", PrivateKey.generate().sign(b"m")) is False)
        for _ in range(2):  # a failure is not cached as a result
            with self.assertRaises(InvalidKey):
                PublicKey.unmarshal(b"\x08\x02\x12\x21" + b"\x05" * 33)

    @given(st.binary(max_size=80))
    def test_garbage_public_keys_raise_invalid_key(self, raw):
        try:
            PublicKey.unmarshal(raw)
        except InvalidKey:
            pass


class PeerIDTests(SynchronousTestCase):
    def test_text_forms(self):
        key = PrivateKey.generate()
        pid = key.peer_id()
        self.assertEqual(PeerID.from_string(str(pid)), pid)
        self.assertEqual(PeerID.from_string(pid.to_cid()), pid)
        self.assertTrue(pid.to_cid().startswith("bafz"))
        self.assertEqual(pid.extract_public_key(), key.public_key)
        self.assertTrue(pid.matches_public_key(key.public_key))
        self.assertFalse(pid.matches_public_key(PrivateKey.generate().public_key))

    def test_text_is_canonical_whatever_the_construction(self):
        pid = PrivateKey.generate().peer_id()
        text = str(pid)
        for other in (PeerID.from_string(text), PeerID.from_string(" " + text + " "),
                      PeerID.from_bytes(pid.to_bytes()), PeerID.from_string(pid.to_cid())):
            self.assertEqual(str(other), text)
            self.assertEqual(repr(other), f"PeerID({text})")
            self.assertEqual(other.short(), text[:6] + "…" + text[-6:])

    def test_spec_cid_example(self):
        # peer-ids.md: the same ID as base58 multihash and as CIDv1 base32.
        legacy = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
        cid = "bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxe"
        self.assertEqual(PeerID.from_string(legacy), PeerID.from_string(cid))
        self.assertEqual(PeerID.from_string(legacy).to_cid(), cid)

    def test_invalid(self):
        for text in ("", "Q0", "bafyfoo", "zzz", "16Uiu2HAm" + "l" * 20, "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5"):
            with self.assertRaises(InvalidPeerID):
                PeerID.from_string(text)

    @given(st.binary(max_size=64))
    def test_base58_roundtrip(self, data):
        self.assertEqual(b58decode(b58encode(data)), data)

    @given(st.text(max_size=60))
    def test_garbage_text_raises_invalid_peer_id(self, text):
        try:
            PeerID.from_string(text)
        except InvalidPeerID:
            pass


class VarintTests(SynchronousTestCase):
    @given(st.integers(min_value=0, max_value=2**64 - 1))
    def test_roundtrip(self, n):
        enc = encode_uvarint(n)
        self.assertEqual(decode_uvarint(enc + b"tail"), (n, len(enc)))
        self.assertIsNone(decode_uvarint(enc[:-1]))

    def test_rejects(self):
        for raw in (b"\x80\x00", b"\xff" * 11, b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f"):
            with self.assertRaises(VarintError):
                decode_uvarint(raw)
        with self.assertRaises(VarintError):
            encode_uvarint(-1)

    @given(st.binary(max_size=24))
    def test_garbage(self, raw):
        try:
            decode_uvarint(raw)
        except VarintError:
            pass


class Secp256k1CrossCheckTests(SynchronousTestCase):
    """Our libsecp256k1 signatures against OpenSSL's ECDSA, both ways, high S included."""

    N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

    def test_both_directions_and_high_s(self):
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

        key = PrivateKey.generate()
        openssl_key = ec.derive_private_key(int.from_bytes(key.raw, "big"), ec.SECP256K1())
        for i in range(16):
            msg = b"cross-check %d" % i
            ours = key.sign(msg)
            openssl_key.public_key().verify(ours, msg, ec.ECDSA(hashes.SHA256()))  # raises if invalid
            theirs = openssl_key.sign(msg, ec.ECDSA(hashes.SHA256()))
            self.assertTrue(key.public_key.verify(msg, theirs))
            r, s = decode_dss_signature(theirs)
            high = encode_dss_signature(r, s if s > self.N // 2 else self.N - s)
            self.assertTrue(key.public_key.verify(msg, high))
            self.assertFalse(key.public_key.verify(msg + b"!", high))
        self.assertFalse(key.public_key.verify(b"m", encode_dss_signature(0, 1)))
        self.assertFalse(key.public_key.verify(b"m", encode_dss_signature(1, self.N)))
