"""Tests for the sans-IO multistream-select cores."""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from aicn.p2p.multistream import (
    PROTOCOL_ID,
    MultistreamDialer,
    MultistreamError,
    MultistreamListener,
    NegotiationFailed,
    encode_message,
    lazy_select,
)

HEADER = b"\x13/multistream/1.0.0\n"
NOISE = b"\x07/noise\n"
protocol_ids = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), min_size=1, max_size=40
).filter(lambda p: p not in ("na", "ls", PROTOCOL_ID))


def run(dialer, listener, chunk=None):
    """Drive both cores against each other; ``chunk`` splits every write."""
    to_listener = dialer.start()
    to_dialer = listener.start()
    while to_listener or to_dialer:
        if to_listener:
            data, to_listener = to_listener, b""
            for piece in _split(data, chunk):
                if not listener.done:
                    to_dialer += listener.receive(piece)
        if to_dialer:
            data, to_dialer = to_dialer, b""
            for piece in _split(data, chunk):
                if not dialer.done:
                    to_listener += dialer.receive(piece)


def _split(data, chunk):
    if not chunk:
        return [data]
    return [data[i : i + chunk] for i in range(0, len(data), chunk)]


class WireFormatTests(SynchronousTestCase):
    def test_encode(self):
        self.assertEqual(encode_message(PROTOCOL_ID), HEADER)
        self.assertEqual(encode_message("/noise"), NOISE)
        self.assertEqual(encode_message("na"), b"\x03na\n")
        long = "/" + "x" * 200
        self.assertEqual(encode_message(long)[:2], b"\xca\x01")

    def test_dialer_pipelines_header_and_proposal(self):
        """js sends exactly these 28 bytes in one write."""
        self.assertEqual(MultistreamDialer(["/noise"]).start(), HEADER + NOISE)

    def test_listener_answers_pipelined_proposal(self):
        listener = MultistreamListener({"/noise"})
        self.assertEqual(listener.start(), HEADER)
        self.assertEqual(listener.receive(HEADER + NOISE + b"\x00\x20noise"), NOISE)
        self.assertEqual(listener.protocol, "/noise")
        self.assertEqual(listener.leftover, b"\x00\x20noise")

    def test_listener_na_then_accept(self):
        listener = MultistreamListener(lambda p: p == "/yamux/1.0.0")
        self.assertEqual(listener.receive(HEADER + encode_message("/mplex/6.7.0")), b"\x03na\n")
        self.assertFalse(listener.done)
        self.assertEqual(
            listener.receive(encode_message("/yamux/1.0.0")), encode_message("/yamux/1.0.0")
        )
        self.assertEqual(listener.protocol, "/yamux/1.0.0")

    def test_listener_ls(self):
        listener = MultistreamListener({"/a"}, protocols_for_ls=["/a", "/b"])
        inner = encode_message("/a") + encode_message("/b") + b"\n"
        self.assertEqual(listener.receive(HEADER + encode_message("ls")), bytes([len(inner)]) + inner)
        plain = MultistreamListener({"/a"})
        self.assertEqual(plain.receive(HEADER + encode_message("ls")), b"\x03na\n")

    def test_dialer_byte_by_byte_with_leftover(self):
        dialer = MultistreamDialer(["/noise"])
        dialer.start()
        wire = HEADER + NOISE + b"payload"
        for i in range(len(wire) - 7):
            self.assertEqual(dialer.receive(wire[i : i + 1]), b"")
        self.assertTrue(dialer.done)
        self.assertEqual(dialer.leftover, b"")
        dialer2 = MultistreamDialer(["/noise"])
        dialer2.receive(wire)
        self.assertEqual(dialer2.leftover, b"payload")

    def test_dialer_falls_back_and_fails(self):
        dialer = MultistreamDialer(["/tls/1.0.0", "/noise"])
        self.assertEqual(dialer.receive(HEADER + b"\x03na\n"), NOISE)
        self.assertEqual(dialer.proposed, "/noise")
        with self.assertRaises(NegotiationFailed):
            dialer.receive(b"\x03na\n")
        # the failure sticks
        self.assertRaises(NegotiationFailed, dialer.receive, b"")

    def test_dialer_rejects_wrong_echo(self):
        dialer = MultistreamDialer(["/noise"])
        self.assertRaises(MultistreamError, dialer.receive, HEADER + encode_message("/tls/1.0.0"))

    def test_wrong_header(self):
        self.assertRaises(
            MultistreamError, MultistreamListener({"/x"}).receive, encode_message("/multistream/2.0.0")
        )
        # A first message of the wrong length fails before its body arrives.
        self.assertRaises(MultistreamError, MultistreamListener({"/x"}).receive, b"\x50")

    def test_limits(self):
        listener = MultistreamListener({"/x"}, max_message=100)
        listener.receive(HEADER)
        self.assertRaises(MultistreamError, listener.receive, encode_message("/" + "y" * 100))
        listener = MultistreamListener({"/x"})
        listener.receive(HEADER)
        self.assertRaises(MultistreamError, listener.receive, b"\xff\xff")
        rounds = MultistreamListener(set(), max_rounds=3)
        rounds.receive(HEADER + encode_message("/a") * 3)
        self.assertRaises(MultistreamError, rounds.receive, encode_message("/a"))

    def test_malformed_messages(self):
        for bad in [b"\x00", b"\x02a\x00", b"\x03\xff\xfe\n", b"\x80\x00"]:
            listener = MultistreamListener({"/x"})
            listener.receive(HEADER)
            with self.assertRaises(MultistreamError, msg=bad):
                listener.receive(bad)

    def test_empty_dialer_list(self):
        self.assertRaises(ValueError, MultistreamDialer, [])


class NegotiationTests(SynchronousTestCase):
    @given(
        st.lists(protocol_ids, min_size=1, max_size=5, unique=True),
        st.lists(protocol_ids, max_size=5, unique=True),
        st.sampled_from([None, 1, 2, 5, 13]),
    )
    def test_round_trip(self, proposals, supported, chunk):
        dialer = MultistreamDialer(proposals)
        listener = MultistreamListener(set(supported))
        expected = next((p for p in proposals if p in supported), None)
        if expected is None:
            self.assertRaises(NegotiationFailed, run, dialer, listener, chunk)
            return
        run(dialer, listener, chunk)
        self.assertEqual(dialer.protocol, expected)
        self.assertEqual(listener.protocol, expected)
        self.assertEqual(dialer.leftover, b"")
        self.assertEqual(listener.leftover, b"")

    @given(st.binary(max_size=200))
    def test_garbage_to_listener(self, data):
        listener = MultistreamListener({"/noise"})
        try:
            listener.receive(data)
        except MultistreamError:
            pass

    @given(st.binary(max_size=200))
    def test_garbage_after_header(self, data):
        listener = MultistreamListener({"/noise"})
        dialer = MultistreamDialer(["/a", "/noise"])
        for core in (listener, dialer):
            try:
                core.receive(HEADER + data)
            except MultistreamError:
                pass

    @given(st.binary(max_size=200), st.integers(1, 10))
    def test_garbage_in_pieces(self, data, step):
        dialer = MultistreamDialer(["/noise"])
        try:
            for i in range(0, len(data), step):
                if dialer.done:
                    break
                dialer.receive(data[i : i + step])
        except MultistreamError:
            pass


class LazySelectTests(SynchronousTestCase):
    def test_wire(self):
        self.assertEqual(lazy_select("/noise"), (HEADER + NOISE, HEADER + NOISE))

    @given(protocol_ids, st.binary(max_size=100))
    def test_listener_answers_exactly_the_prediction(self, protocol, data):
        """A listener that accepts answers exactly the predicted bytes (after
        its header, which it sends first), and the pipelined data is left over."""
        request, answer = lazy_select(protocol)
        listener = MultistreamListener({protocol})
        sent = listener.start() + listener.receive(request + data)
        self.assertEqual(sent, answer)
        self.assertEqual(listener.leftover, data)

    @given(protocol_ids)
    def test_refusal_differs(self, protocol):
        request, answer = lazy_select(protocol)
        listener = MultistreamListener(set())
        sent = listener.start() + listener.receive(request)
        self.assertEqual(sent, HEADER + encode_message("na"))
        self.assertNotEqual(sent, answer)
