"""A length that claims 4 GiB is refused before anything of that size is allocated or read.

Every length prefix a peer or client controls: uvarint frames (multistream,
identify, kad, pubsub, relay, AutoNAT), yamux's u32 DATA length, lengths
inside protobufs (envelopes, handshake payloads, keys, multiaddrs, peer ids),
HTTP's Content-Length and chunk sizes.  Each check runs the decoder under
:mod:`tracemalloc` (peak well under 1 MiB) and, over a stream, with the
stream still open: the refusal must come from the prefix alone, not from
waiting for (or reading) the body.  Noise's prefix is a u16: 64 KiB is its
bound by construction.
"""

from __future__ import annotations

import struct
import tracemalloc

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from aicn.node.envelope import EnvelopeError, decode_message as decode_envelope
from aicn.node.httpwire import HTTPWireError, MessageParser
from aicn.p2p import binaddr
from aicn.p2p.framing import FrameTooLarge, LengthPrefixedReader, read_frame
from aicn.p2p.identify import MAX_IDENTIFY_SIZE, IdentifyError, decode_frames, request_identify
from aicn.p2p.kad.codec import KadCodecError, MessageDecoder, decode_message as decode_kad
from aicn.p2p.kad.rpc import read_message as kad_read_message
from aicn.p2p.keys import InvalidKey, PublicKey
from aicn.p2p.multistream import MultistreamError, MultistreamListener, encode_message, negotiate_inbound
from aicn.p2p.noise import NoiseError, NoiseTransport, CipherState, decode_handshake_payload
from aicn.p2p.peerid import InvalidPeerID, PeerID
from aicn.p2p.pubsub.rpc import RPCReader, RPCTooLarge
from aicn.p2p.record import RecordError, open_peer_record
from aicn.p2p.relay.codec import RelayCodecError, read_hop
from aicn.p2p.varint import encode_uvarint
from aicn.p2p.yamux import TYPE_DATA, VERSION, FrameDecoder, YamuxConfig, YamuxProtocolError, YamuxSession
from tests.fuzz.harness import ADDR, REMOTE_PEER
from tests.p2p.fakestream import FakeContext, StreamPair

FOUR_GIB = 1 << 32
PREFIX = encode_uvarint(FOUR_GIB)
#: Most a refusal may allocate (the decoders' own objects; nothing near 4 GiB, or even 1 MiB).
SMALL = 256 * 1024


def peak(fn, *args, **kwargs) -> tuple[object, int]:
    """``fn(*args)``'s result (or the exception it raised) and its peak traced allocation."""
    tracemalloc.start()
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:
        result = exc
    finally:
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, top


def open_stream(data: bytes):
    """The reading end of a stream that carries ``data`` and stays open (no FIN)."""
    pair = StreamPair()
    pair.a.write(data)
    return pair.b


def outcome(coro):
    """What a coroutine over fake streams ended with, or None while it still waits."""
    results = []
    Deferred.fromCoroutine(coro).addBoth(results.append)
    if not results:
        return None
    result = results[0]
    return result.value if isinstance(result, Failure) else result


class FrameTests(SynchronousTestCase):
    """uvarint length-prefixed frames."""

    def assertRefusedOpen(self, coro_factory, error, prefix=PREFIX):
        stream = open_stream(prefix)
        result, top = peak(outcome, coro_factory(stream))
        self.assertIsInstance(result, error, "refused from the prefix alone, the stream still open")
        self.assertLess(top, SMALL)
        self.assertEqual(stream.bytes_read, len(prefix))

    def test_reader(self):
        for limit in (4096, 4 << 20):
            result, top = peak(LengthPrefixedReader(limit).feed, PREFIX + b"x" * 100)
            self.assertIsInstance(result, FrameTooLarge)
            self.assertLess(top, SMALL)

    def test_read_frame(self):
        self.assertRefusedOpen(lambda s: read_frame(s, 1 << 20), FrameTooLarge)

    def test_multistream(self):
        header = encode_message("/multistream/1.0.0")
        result, top = peak(MultistreamListener(["/a"]).receive, header + PREFIX)
        self.assertIsInstance(result, MultistreamError)
        self.assertLess(top, SMALL)
        stream = open_stream(header + PREFIX)
        result = outcome(negotiate_inbound(stream, ["/a"]))
        self.assertIsInstance(result, MultistreamError)
        self.assertEqual(stream.bytes_read, len(header) + len(PREFIX))

    def test_identify(self):
        ctx = FakeContext(None, REMOTE_PEER, ADDR)
        self.assertRefusedOpen(lambda s: request_identify(s, ctx), IdentifyError)
        result, top = peak(decode_frames, encode_uvarint(MAX_IDENTIFY_SIZE + 1) + PREFIX)
        self.assertIsInstance(result, IdentifyError)

    def test_kad(self):
        self.assertRefusedOpen(lambda s: kad_read_message(s), KadCodecError)
        result, top = peak(MessageDecoder().feed, PREFIX)
        self.assertIsInstance(result, KadCodecError)
        self.assertLess(top, SMALL)

    def test_pubsub(self):
        result, top = peak(RPCReader().feed, PREFIX)
        self.assertIsInstance(result, RPCTooLarge)
        self.assertLess(top, SMALL)

    def test_relay(self):
        self.assertRefusedOpen(read_hop, RelayCodecError)

    def test_longest_varints(self):
        # 2**64 - 1, and an eleventh byte, are refused as readily.
        for prefix in (encode_uvarint((1 << 64) - 1), b"\xff" * 10 + b"\x01"):
            result, top = peak(LengthPrefixedReader(4096).feed, prefix)
            self.assertIsInstance(result, FrameTooLarge if len(prefix) == 10 else ValueError)


class YamuxTests(SynchronousTestCase):
    """yamux's u32 DATA length."""

    HEADER = struct.pack(">BBHII", VERSION, TYPE_DATA, 0, 1, 0xFFFFFFFF)

    def test_decoder_refuses_at_the_header(self):
        decoder = FrameDecoder()
        result, top = peak(lambda: list(decoder.feed(self.HEADER)))
        self.assertIsInstance(result, YamuxProtocolError)
        self.assertLess(top, SMALL)
        self.assertEqual(decoder.buffered, 0)

    def test_session_sends_go_away_and_closes(self):
        sent = []
        session = YamuxSession(False, sent.append, Clock(), YamuxConfig(keepalive_interval=None,
                                                                        ping_on_start=False),
                               on_stream=lambda stream: None)
        _, top = peak(session.data_received, self.HEADER + b"x" * 1000)
        self.assertTrue(session.closed)
        self.assertLess(top, SMALL)
        go_away = struct.unpack(">BBHII", b"".join(sent)[-12:])
        self.assertEqual((go_away[1], go_away[4]), (3, 1))  # GO_AWAY, protocol error


class NoiseTests(SynchronousTestCase):
    def test_the_u16_prefix_bounds_a_frame(self):
        transport = NoiseTransport(CipherState(b"k" * 32), CipherState(b"k" * 32))
        result, top = peak(transport.decrypt, b"\xff\xff" + b"x" * 100)
        self.assertEqual((result, transport.buffered), (b"", 102))  # waiting for at most 65535 bytes
        self.assertLess(top, SMALL)


class ProtobufTests(SynchronousTestCase):
    """Length-delimited fields that claim 4 GiB, inside messages."""

    def test_every_decoder(self):
        field = b"\x0a" + PREFIX + b"x" * 16  # field 1, wire type 2
        cases = [
            (decode_envelope, field, EnvelopeError),
            (decode_kad, field, KadCodecError),
            (decode_handshake_payload, field, NoiseError),
            (PublicKey.unmarshal, b"\x08\x01\x12" + PREFIX + b"x", InvalidKey),
            (open_peer_record, field, RecordError),
            (PeerID.from_bytes, b"\x12" + PREFIX + b"x", InvalidPeerID),
            (binaddr.components, encode_uvarint(54) + PREFIX + b"x", binaddr.BinaryMultiaddrError),  # /dns4
        ]
        for decode, data, error in cases:
            result, top = peak(decode, data)
            self.assertIsInstance(result, error, decode)
            self.assertLess(top, SMALL, decode)


class HTTPTests(SynchronousTestCase):
    """The chat tunnel's HTTP (the API site's own bound is in tests.api.test_site)."""

    def test_request_content_length_is_refused_at_the_head(self):
        parser = MessageParser("request")
        result, top = peak(parser.feed, b"POST / HTTP/1.1\r\nContent-Length: 4294967296\r\n\r\n")
        self.assertIsInstance(result, HTTPWireError)
        self.assertLess(top, SMALL)

    def test_response_bodies_stream_whatever_they_announce(self):
        # A response is relayed as it comes, never buffered: what it announces costs nothing.
        chunk = b"x" * 65536
        for head in (b"Content-Length: 4294967296\r\n", b"Transfer-Encoding: chunked\r\n"):
            parser = MessageParser("response")
            size = b"100000000\r\n" if b"chunked" in head else b""  # a 4 GiB chunk
            parser.feed(b"HTTP/1.1 200 OK\r\n" + head + b"\r\n" + size)

            def body():
                return sum(len(e) for _ in range(16) for e in parser.feed(chunk) if isinstance(e, bytes))

            received, top = peak(body)
            self.assertEqual(received, 16 * len(chunk))
            self.assertLess(top, SMALL)

    def test_request_chunks_are_bounded_by_the_body_limit(self):
        parser = MessageParser("request", max_body=1 << 20)
        parser.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n100000000\r\n")
        with self.assertRaises(HTTPWireError):
            for _ in range(17):
                parser.feed(b"x" * 65536)
