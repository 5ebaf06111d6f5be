"""Tests for aicn.node.crypto (Go-compatible body encryption).

The other side of every cross-check is independent of the code under test:
secp256k1 point multiplication is written out below in plain Python, and AES-GCM
comes from pycryptodome instead of ``cryptography``.
"""

from __future__ import annotations

from Crypto.Cipher import AES
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from aicn.node import crypto
from aicn.node.crypto import (
    BodyDecryptError,
    BodyEncryptError,
    decrypt_body,
    encrypt_body,
    key_matches_peer,
    open_body,
    public_key_from_header,
    public_key_from_peer_id,
    seal_body,
    shared_key,
)
from aicn.p2p.keys import KeyType, PrivateKey, PublicKey
from aicn.p2p.peerid import PeerID

# -- an independent secp256k1 (affine coordinates, textbook formulas) -----------------

_P = 2**256 - 2**32 - 977
_G = (
    0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798,
    0x483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8,
)


def _add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    if a[0] == b[0] and (a[1] + b[1]) % _P == 0:
        return None
    if a == b:
        slope = 3 * a[0] * a[0] * pow(2 * a[1], -1, _P)
    else:
        slope = (b[1] - a[1]) * pow(b[0] - a[0], -1, _P)
    x = (slope * slope - a[0] - b[0]) % _P
    return x, (slope * (a[0] - x) - a[1]) % _P


def _mul(k, point):
    result = None
    while k:
        if k & 1:
            result = _add(result, point)
        point = _add(point, point)
        k >>= 1
    return result


def _decompress(data: bytes):
    x = int.from_bytes(data[1:], "big")
    y = pow((x**3 + 7) % _P, (_P + 1) // 4, _P)
    if y & 1 != data[0] & 1:
        y = _P - y
    return x, y


def _compress(point) -> bytes:
    return bytes([2 + (point[1] & 1)]) + point[0].to_bytes(32, "big")


def _ref_shared(private: PrivateKey, public: PublicKey) -> bytes:
    scalar = int.from_bytes(private.raw, "big")
    return _mul(scalar, _decompress(public.raw))[0].to_bytes(32, "big")


def _ref_seal(key: bytes, nonce: bytes, plaintext: bytes) -> bytes:
    ciphertext, tag = AES.new(key, AES.MODE_GCM, nonce=nonce).encrypt_and_digest(plaintext)
    return nonce + ciphertext + tag


def _ref_open(key: bytes, data: bytes) -> bytes:
    cipher = AES.new(key, AES.MODE_GCM, nonce=data[:12])
    return cipher.decrypt_and_verify(data[12:-16], data[-16:])


# -- fixed vector ----------------------------------------------------------------------
# Private keys 0x11…11 and 0x22…22, nonce 00 01 … 0b, plaintext "0a 00" (an empty
# request body).  Computed with the reference functions above and frozen.
KEY_A = PrivateKey.from_raw(KeyType.Secp256k1, bytes([0x11]) * 32)
KEY_B = PrivateKey.from_raw(KeyType.Secp256k1, bytes([0x22]) * 32)
PUB_A = bytes.fromhex("034f355bdcb7cc0af728ef3cceb9615d90684bb5b2ca5f859ab0f0b704075871aa")
PUB_B = bytes.fromhex("02466d7fcae563e5cb09a0d1870bb580344804617879a14949cf22285f1bae3f27")
SHARED_AB = bytes.fromhex("77e0510d5042e2f5e9e59c977b81eeed590cf7d20c1c51da451a8eaa9fdc45ff")
NONCE = bytes(range(12))
SEALED = bytes.fromhex("000102030405060708090a0b" "42a4" "d50a956a00db82cc3a48b8fe3d3d1f99")


class FixedVectorTests(SynchronousTestCase):
    def test_reference_agrees_with_vector(self):
        # Guards the frozen constants against an edit of the reference code.
        self.assertEqual(_compress(_mul(0x11 * int("01" * 32, 16), _G)), PUB_A)
        self.assertEqual(_ref_shared(KEY_A, KEY_B.public_key), SHARED_AB)

    def test_public_keys(self):
        self.assertEqual(KEY_A.public_key.raw, PUB_A)
        self.assertEqual(KEY_B.public_key.raw, PUB_B)

    def test_shared_key_is_symmetric(self):
        self.assertEqual(shared_key(KEY_A, KEY_B.public_key), SHARED_AB)
        self.assertEqual(shared_key(KEY_B, KEY_A.public_key), SHARED_AB)

    def test_encrypt_with_fixed_nonce(self):
        self.patch(crypto, "_random_bytes", lambda n: NONCE[:n])
        self.assertEqual(encrypt_body(KEY_A, KEY_B.public_key, b"\x0a\x00"), SEALED)
        self.assertEqual(encrypt_body(KEY_B, KEY_A.public_key, b"\x0a\x00"), SEALED)

    def test_decrypt_vector(self):
        self.assertEqual(decrypt_body(KEY_B, KEY_A.public_key, SEALED), b"\x0a\x00")
        self.assertEqual(decrypt_body(KEY_A, KEY_B.public_key, SEALED), b"\x0a\x00")


class CrossCheckTests(SynchronousTestCase):
    """Random keys and data against the independent implementation, both ways."""

    @settings(max_examples=25, deadline=None)
    @given(st.binary(max_size=300))
    def test_ours_to_reference(self, plaintext):
        a, b = PrivateKey.generate(), PrivateKey.generate()
        sealed = encrypt_body(a, b.public_key, plaintext)
        self.assertEqual(len(sealed), 12 + len(plaintext) + 16)
        self.assertEqual(_ref_open(_ref_shared(b, a.public_key), sealed), plaintext)

    @settings(max_examples=25, deadline=None)
    @given(st.binary(max_size=300), st.binary(min_size=12, max_size=12))
    def test_reference_to_ours(self, plaintext, nonce):
        a, b = PrivateKey.generate(), PrivateKey.generate()
        sealed = _ref_seal(_ref_shared(a, b.public_key), nonce, plaintext)
        self.assertEqual(decrypt_body(b, a.public_key, sealed), plaintext)

    def test_nonces_differ(self):
        a, b = PrivateKey.generate(), PrivateKey.generate()
        nonces = {encrypt_body(a, b.public_key, b"x")[:12] for _ in range(50)}
        self.assertEqual(len(nonces), 50)


class FailureTests(SynchronousTestCase):
    def test_every_bit_flip_is_rejected(self):
        for i in range(len(SEALED)):
            for bit in (0x01, 0x80):
                bad = bytearray(SEALED)
                bad[i] ^= bit
                self.assertRaises(BodyDecryptError, decrypt_body, KEY_B, KEY_A.public_key, bad)

    def test_truncation(self):
        for n in range(len(SEALED)):
            self.assertRaises(BodyDecryptError, decrypt_body, KEY_B, KEY_A.public_key, SEALED[:n])

    def test_extra_bytes(self):
        self.assertRaises(
            BodyDecryptError, decrypt_body, KEY_B, KEY_A.public_key, SEALED + b"\x00"
        )

    def test_wrong_key(self):
        other = PrivateKey.generate()
        self.assertRaises(BodyDecryptError, decrypt_body, other, KEY_A.public_key, SEALED)
        self.assertRaises(BodyDecryptError, decrypt_body, KEY_B, other.public_key, SEALED)

    def test_ed25519_keys(self):
        ed = PrivateKey.generate("ed25519")
        self.assertRaises(BodyEncryptError, encrypt_body, ed, KEY_A.public_key, b"x")
        self.assertRaises(BodyEncryptError, encrypt_body, KEY_A, ed.public_key, b"x")
        self.assertRaises(BodyDecryptError, decrypt_body, ed, KEY_A.public_key, SEALED)
        self.assertRaises(BodyDecryptError, decrypt_body, KEY_A, ed.public_key, SEALED)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=100))
    def test_garbage(self, data):
        self.assertRaises(BodyDecryptError, decrypt_body, KEY_B, KEY_A.public_key, data)


class KeySourceTests(SynchronousTestCase):
    def test_from_peer_id(self):
        pid = KEY_A.peer_id()
        self.assertTrue(str(pid).startswith("16Uiu2"))
        self.assertEqual(public_key_from_peer_id(pid), KEY_A.public_key)
        self.assertEqual(public_key_from_peer_id(str(pid)), KEY_A.public_key)

    def test_from_peer_id_failures(self):
        ed = PrivateKey.generate("ed25519").peer_id()
        hashed = PeerID(b"\x12\x20" + bytes(32))
        for bad in (ed, str(ed), hashed, "not a peer id", "Qm0"):
            self.assertRaises(BodyEncryptError, public_key_from_peer_id, bad)

    def test_from_header(self):
        header = bytes.fromhex("08021221") + PUB_A  # libp2p PublicKey{Secp256k1, 33 bytes}
        self.assertEqual(KEY_A.public_key.marshal(), header)
        self.assertEqual(public_key_from_header(header), KEY_A.public_key)

    def test_from_header_failures(self):
        ed = PrivateKey.generate("ed25519").public_key.marshal()
        for bad in (b"", b"\x08\x02", ed, bytes.fromhex("08021221") + b"\x05" + PUB_A[1:],
                    bytes.fromhex("08021220") + PUB_A[1:]):
            self.assertRaises(BodyDecryptError, public_key_from_header, bad)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=60))
    def test_header_garbage(self, data):
        try:
            key = public_key_from_header(data)
        except BodyDecryptError:
            return
        self.assertEqual(key.key_type, KeyType.Secp256k1)

    def test_key_matches_peer(self):
        header = KEY_A.public_key.marshal()
        self.assertTrue(key_matches_peer(header, str(KEY_A.peer_id())))
        self.assertFalse(key_matches_peer(header, str(KEY_B.peer_id())))
        self.assertFalse(key_matches_peer(b"junk", str(KEY_A.peer_id())))
        self.assertFalse(key_matches_peer(header, "junk"))


class MessageHelperTests(SynchronousTestCase):
    def test_seal_then_open(self):
        body, node_pub_key = seal_body(KEY_A, public_key_from_peer_id(KEY_B.peer_id()), b"\x0a\x00")
        self.assertEqual(node_pub_key, KEY_A.public_key.marshal())
        self.assertEqual(open_body(KEY_B, node_pub_key, body), b"\x0a\x00")

    def test_open_plaintext(self):
        self.assertEqual(open_body(KEY_B, b"", b"\x0a\x00"), b"\x0a\x00")

    def test_open_bad(self):
        self.assertRaises(BodyDecryptError, open_body, KEY_B, b"\x01", SEALED)
        self.assertRaises(BodyDecryptError, open_body, KEY_B, KEY_B.public_key.marshal(), SEALED)
        self.assertRaises(BodyDecryptError, open_body, KEY_B, KEY_A.public_key.marshal(), b"")
