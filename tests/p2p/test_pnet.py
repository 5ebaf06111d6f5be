"""Tests for the PSK v1 private network codec."""

import base64

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from aicn.p2p.pnet import (
    NONCE_SIZE,
    InvalidPSK,
    PnetCodec,
    XSalsa20,
    hsalsa20,
    parse_psk,
)

# The key every DBC node uses by default.
DBC_PSK = bytes.fromhex("f504f536a912a8cf7d00adacee8ed20270c5040d961d7f3da4fccbcbec0ec48a")

# NaCl / libsodium "stream3" vector: crypto_stream_xsalsa20, first 64 bytes.
NACL_KEY = bytes.fromhex("1b27556473e985d462cd51197a9a46c76009549eac6474f206c4ee0844f68389")
NACL_NONCE = bytes.fromhex("69696ee955b62b73cd62bda875fc73d68219e0036b7a0b37")
NACL_STREAM = bytes.fromhex(
    "eea6a7251c1e72916d11c2cb214d3c252539121d8e234e652d651fa4c8cff880"
    "309e645a74e9e0a60d8243acd9177ab51a1beb8d5a2f5d700c093c5e55855796"
)
NACL_SUBKEY = bytes.fromhex("dc908dda0b9344a953629b733820778880f3ceb421bb61b91cbd4c3e66256ce4")


class XSalsa20Tests(SynchronousTestCase):
    def test_dbc_psk_zero_nonce(self):
        stream = XSalsa20(DBC_PSK, bytes(24)).process(bytes(64))
        self.assertEqual(
            stream.hex(),
            "3f221461ee709cd220e1813fbc19d1cdc52e9cb839fcf929c029eab0fa292518"
            "e4fc530bb0d8b2ac73dc73c6b182d618255bc70c8b7839d86228c01ee4446bc1",
        )

    def test_dbc_psk_counting_nonce(self):
        stream = XSalsa20(DBC_PSK, bytes(range(24))).process(bytes(32))
        self.assertEqual(
            stream.hex(), "c636515d5b6ef6b8e442e8f40eb16867ff73c3961eb35ccbe550090429a46c86"
        )

    def test_nacl_stream3(self):
        self.assertEqual(hsalsa20(NACL_KEY, NACL_NONCE[:16]), NACL_SUBKEY)
        self.assertEqual(XSalsa20(NACL_KEY, NACL_NONCE).process(bytes(64)), NACL_STREAM)

    @given(st.lists(st.integers(0, 200), max_size=12))
    def test_chunking_does_not_matter(self, sizes):
        """The keystream is continuous: any split of the input gives the same output."""
        total = sum(sizes)
        whole = XSalsa20(NACL_KEY, NACL_NONCE).process(bytes(total))
        cipher = XSalsa20(NACL_KEY, NACL_NONCE)
        self.assertEqual(b"".join(cipher.process(bytes(n)) for n in sizes), whole)

    def test_bad_sizes(self):
        self.assertRaises(InvalidPSK, XSalsa20, bytes(31), bytes(24))
        self.assertRaises(ValueError, XSalsa20, bytes(32), bytes(23))


class PnetCodecTests(SynchronousTestCase):
    def test_round_trip_both_directions(self):
        a = PnetCodec(DBC_PSK)
        b = PnetCodec(DBC_PSK)
        self.assertEqual(len(a.local_nonce), NONCE_SIZE)
        self.assertNotEqual(a.local_nonce, b.local_nonce)
        wire_ab = a.local_nonce + a.encrypt(b"/multistream/1.0.0\n")
        wire_ba = b.local_nonce + b.encrypt(b"hello")
        self.assertEqual(b.decrypt(wire_ab), b"/multistream/1.0.0\n")
        self.assertEqual(a.decrypt(wire_ba), b"hello")
        self.assertEqual(a.decrypt(b.encrypt(b"more")), b"more")

    def test_ciphertext_uses_own_nonce_from_block_zero(self):
        codec = PnetCodec(DBC_PSK, nonce=bytes(24))
        self.assertEqual(
            codec.encrypt(bytes(8)).hex(), "3f221461ee709cd2"
        )

    def test_nonce_split_over_reads(self):
        sender = PnetCodec(DBC_PSK)
        receiver = PnetCodec(DBC_PSK)
        wire = sender.local_nonce + sender.encrypt(b"abcdef")
        out = b""
        for i in range(len(wire)):
            out += receiver.decrypt(wire[i : i + 1])
            self.assertEqual(receiver.remote_nonce_received, i >= NONCE_SIZE - 1)
        self.assertEqual(out, b"abcdef")

    @given(st.binary(max_size=300), st.lists(st.integers(1, 64), min_size=1, max_size=20))
    def test_round_trip_any_split(self, payload, cuts):
        sender = PnetCodec(DBC_PSK)
        receiver = PnetCodec(DBC_PSK)
        wire = sender.local_nonce + sender.encrypt(payload)
        out, pos, i = [], 0, 0
        while pos < len(wire):
            step = cuts[i % len(cuts)]
            out.append(receiver.decrypt(wire[pos : pos + step]))
            pos += step
            i += 1
        self.assertEqual(b"".join(out), payload)

    def test_wrong_key_gives_garbage(self):
        sender = PnetCodec(DBC_PSK)
        receiver = PnetCodec(NACL_KEY)
        plain = b"\x13/multistream/1.0.0\n"
        self.assertNotEqual(receiver.decrypt(sender.local_nonce + sender.encrypt(plain)), plain)

    def test_bad_psk_length(self):
        self.assertRaises(InvalidPSK, PnetCodec, b"short")


class ParsePSKTests(SynchronousTestCase):
    def test_hex(self):
        self.assertEqual(parse_psk(DBC_PSK.hex()), DBC_PSK)
        self.assertEqual(parse_psk(" " + DBC_PSK.hex().upper() + "\n"), DBC_PSK)
        self.assertEqual(parse_psk(DBC_PSK.hex().encode()), DBC_PSK)

    def test_key_file_base16(self):
        text = "/key/swarm/psk/1.0.0/\n/base16/\n" + DBC_PSK.hex() + "\n"
        self.assertEqual(parse_psk(text), DBC_PSK)
        self.assertEqual(parse_psk(text.replace("\n", "\r\n")), DBC_PSK)

    def test_key_file_base64(self):
        text = "/key/swarm/psk/1.0.0/\n/base64/\n" + base64.b64encode(DBC_PSK).decode()
        self.assertEqual(parse_psk(text), DBC_PSK)

    def test_key_file_bin(self):
        key = b"\n" * 3 + bytes(range(29))  # binary keys may contain newlines
        self.assertEqual(parse_psk(b"/key/swarm/psk/1.0.0/\n/bin/\n" + key), key)

    def test_errors(self):
        for bad in [
            "",
            "abcd",
            "zz" * 32,
            DBC_PSK.hex()[:-2],
            "/key/swarm/psk/1.0.0/\n/base16/",
            "/key/swarm/psk/1.0.0/\n/base16/\n" + DBC_PSK.hex()[:-2],
            "/key/swarm/psk/1.0.0/\n/base58/\n" + DBC_PSK.hex(),
            "/key/swarm/psk/1.0.0/\n/base64/\n!!!!",
            b"\xff" * 64,
        ]:
            with self.assertRaises(InvalidPSK, msg=repr(bad)):
                parse_psk(bad)

    @given(st.one_of(st.text(max_size=100), st.binary(max_size=100)))
    def test_garbage_raises_invalid_psk(self, data):
        try:
            key = parse_psk(data)
        except InvalidPSK:
            return
        self.assertEqual(len(key), 32)
