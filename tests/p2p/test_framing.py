"""aicn.p2p.framing: one frame reader for every uvarint-framed protocol."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from aicn.p2p.deadline import with_timeout
from aicn.p2p.framing import (
    FrameError,
    FrameTooLarge,
    FrameTruncated,
    LengthPrefixedReader,
    length_prefixed,
    read_frame,
    read_frames_to_eof,
)
from aicn.p2p.stream import MuxedStream, Stream
from aicn.p2p.varint import encode_uvarint
from aicn.p2p.yamux import YamuxConfig, YamuxSession
from tests.p2p.fakestream import StreamPair

GIB4 = encode_uvarint(4 << 30)


def run(coro):
    return Deferred.fromCoroutine(coro)


class ReaderTests(SynchronousTestCase):
    @given(st.lists(st.binary(max_size=300), max_size=8), st.integers(1, 50))
    def test_any_split_gives_the_same_frames(self, payloads, step):
        wire = b"".join(length_prefixed(p) for p in payloads)
        reader = LengthPrefixedReader(1000)
        got = []
        for i in range(0, len(wire), step):
            got += reader.feed(wire[i:i + step])
        self.assertEqual(got, payloads)
        self.assertEqual(reader.buffered, 0)

    def test_a_4gib_prefix_is_refused_before_the_body(self):
        for prefix in (GIB4, encode_uvarint(1 << 63)):
            reader = LengthPrefixedReader(1 << 20)
            with self.assertRaises(FrameTooLarge):
                reader.feed(prefix + b"abc")

    def test_bad_varints_are_frame_errors(self):
        for data in (b"\xff" * 11, b"\x80\x00"):  # too long; non-minimal
            with self.assertRaises(FrameError):
                LengthPrefixedReader().feed(data)


class StreamReadTests(SynchronousTestCase):
    def setUp(self):
        self.pair = StreamPair()

    def test_one_frame_leaves_the_rest_unread(self):
        self.pair.a.write(length_prefixed(b"hello") + b"tail")
        self.assertEqual(self.successResultOf(run(read_frame(self.pair.b, 100))), b"hello")
        self.assertEqual(self.successResultOf(self.pair.b.read(4)), b"tail")

    def test_clean_eof_is_none_only_when_allowed(self):
        self.pair.a.close_write()
        self.assertIsNone(self.successResultOf(run(read_frame(self.pair.b, 100, eof_ok=True))))
        f = self.failureResultOf(run(read_frame(self.pair.b, 100)), FrameTruncated)
        self.assertIsInstance(f.value, EOFError)

    def test_eof_inside_a_frame_is_truncated(self):
        self.pair.a.write(length_prefixed(b"hello")[:3])
        self.pair.a.close_write()
        self.failureResultOf(run(read_frame(self.pair.b, 100)), FrameTruncated)

    def test_a_4gib_prefix_fails_at_once_without_waiting_for_the_body(self):
        self.pair.a.write(GIB4 + b"xyz")  # the writer never sends the rest
        self.failureResultOf(run(read_frame(self.pair.b, 1 << 20)), FrameTooLarge)

    def test_frames_to_eof_bounds_count_and_size(self):
        self.pair.a.write(length_prefixed(b"1") * 3)
        self.pair.a.close_write()
        self.failureResultOf(run(read_frames_to_eof(self.pair.b, 10, 2)), FrameError)
        other = StreamPair()
        other.a.write(length_prefixed(b"1") + length_prefixed(b"22"))
        other.a.close_write()
        self.assertEqual(self.successResultOf(run(read_frames_to_eof(other.b, 10, 2))), [b"1", b"22"])


class StreamInterfaceTests(SynchronousTestCase):
    def test_yamux_streams_are_muxed_streams(self):
        session = YamuxSession(True, lambda data: None, Clock(), YamuxConfig(keepalive_interval=None))
        stream = session.open_stream()
        self.assertIsInstance(stream, MuxedStream)
        self.assertIsInstance(StreamPair().a, Stream)
        self.assertNotIsInstance(StreamPair().a, MuxedStream)  # pull API only


class DeadlineTests(SynchronousTestCase):
    def test_cancels_after_the_deadline(self):
        clock = Clock()
        work = Deferred()
        d = with_timeout(work, 5, clock)
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.2)
        self.failureResultOf(d, TimeoutError)
