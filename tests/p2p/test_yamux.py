"""Tests for aicn.p2p.yamux: frame codec, sessions wired together in memory."""

from __future__ import annotations

import gc
import hashlib
import random
import weakref

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from aicn.p2p.yamux import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    GO_AWAY_NORMAL,
    GO_AWAY_PROTOCOL_ERROR,
    INITIAL_WINDOW,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    Frame,
    FrameDecoder,
    IncompleteRead,
    PrefixMismatch,
    SessionClosed,
    StreamClosed,
    StreamLimitExceeded,
    StreamReset,
    YamuxConfig,
    YamuxError,
    YamuxProtocol,
    YamuxSession,
    encode_frame,
)

KiB = 1024
MiB = 1024 * 1024

# ---------------------------------------------------------------------------
# Frame codec

frames_st = st.one_of(
    st.builds(
        lambda flags, sid, data: Frame(TYPE_DATA, flags, sid, len(data), data),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFFFFFF),
        st.binary(max_size=300),
    ),
    st.builds(
        lambda t, f, s, n: Frame(t, f, s, n),
        st.sampled_from([TYPE_WINDOW_UPDATE, TYPE_PING, TYPE_GO_AWAY]),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFFFFFF),
        st.integers(0, 0xFFFFFFFF),
    ),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


class FrameCodecTests(SynchronousTestCase):
    def test_header_layout(self) -> None:
        """Big-endian version/type/flags/stream id/length, as on js's wire."""
        self.assertEqual(
            encode_frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0),
            bytes.fromhex("00 01 0001 00000001 00000000"),
        )
        self.assertEqual(
            encode_frame(TYPE_DATA, FLAG_ACK | FLAG_FIN, 2, data=b"hi"),
            bytes.fromhex("00 00 0006 00000002 00000002") + b"hi",
        )

    @settings(max_examples=200, deadline=None)
    @given(st.lists(frames_st, max_size=20), st.lists(st.integers(0, 10**6), max_size=10))
    def test_round_trip_any_split(self, frames: list[Frame], cuts: list[int]) -> None:
        wire = b"".join(f.encode() for f in frames)
        decoder = FrameDecoder(max_data_length=1000)
        out = []
        for piece in split(wire, cuts):
            out.extend(decoder.feed(piece))
        self.assertEqual(out, frames)
        self.assertEqual(decoder.buffered, 0)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200), st.lists(st.integers(0, 1000), max_size=5))
    def test_garbage_raises_only_yamux_error(self, garbage: bytes, cuts: list[int]) -> None:
        decoder = FrameDecoder(max_data_length=64)
        try:
            for piece in split(garbage, cuts):
                for frame in decoder.feed(piece):
                    self.assertIsInstance(frame, Frame)
        except YamuxError:
            # A failed decoder stays failed.
            self.assertRaises(YamuxError, list, decoder.feed(b"\x00" * 12))

    def test_bad_version(self) -> None:
        self.assertRaises(YamuxError, list, FrameDecoder().feed(b"\x01" + b"\x00" * 11))

    def test_unknown_type(self) -> None:
        self.assertRaises(YamuxError, list, FrameDecoder().feed(b"\x00\x04" + b"\x00" * 10))

    def test_oversized_data_rejected_at_header(self) -> None:
        """The length check happens before the payload is buffered."""
        header = encode_frame(TYPE_DATA, 0, 1, data=b"x" * 101)[:12]
        self.assertRaises(YamuxError, list, FrameDecoder(max_data_length=100).feed(header))

    def test_good_frames_before_garbage_are_yielded(self) -> None:
        good = encode_frame(TYPE_PING, FLAG_SYN, 0, 7)
        it = FrameDecoder().feed(good + b"\x09" * 12)
        self.assertEqual(next(it), Frame(TYPE_PING, FLAG_SYN, 0, 7))
        self.assertRaises(YamuxError, next, it)

    def test_many_frames_and_partial_tail(self) -> None:
        frames = [Frame(TYPE_DATA, 0, i, 3, b"abc") for i in range(1, 50)]
        wire = b"".join(f.encode() for f in frames)
        decoder = FrameDecoder()
        self.assertEqual(list(decoder.feed(wire[:-5])), frames[:-1])
        self.assertEqual(decoder.buffered, 10)
        self.assertEqual(list(decoder.feed(wire[-5:])), frames[-1:])


# ---------------------------------------------------------------------------
# In-memory wiring


class Pipe:
    """Two sessions connected back to back.

    ``send`` only queues bytes; :meth:`pump` delivers them (optionally in
    random-sized pieces) until both directions are quiet, the way a real
    transport would, without re-entrancy.
    """

    def __init__(
        self,
        clock: Clock | None = None,
        config_a: YamuxConfig | None = None,
        config_b: YamuxConfig | None = None,
        chunking: random.Random | None = None,
    ) -> None:
        self.clock = clock or Clock()
        self.to_b: list[bytes] = []
        self.to_a: list[bytes] = []
        self.closed_a = 0
        self.closed_b = 0
        self.chunking = chunking
        default = YamuxConfig(keepalive_interval=None)
        self.a = YamuxSession(
            True, self.to_b.append, self.clock, config_a or default, close_transport=self._close_a
        )
        self.b = YamuxSession(
            False, self.to_a.append, self.clock, config_b or default, close_transport=self._close_b
        )
        #: Streams B accepted (the default ``on_stream`` just collects them).
        self.accepted: list = []
        self.b.on_stream = self.accepted.append

    def _close_a(self) -> None:
        self.closed_a += 1

    def _close_b(self) -> None:
        self.closed_b += 1

    def _deliver(self, queue: list[bytes], session: YamuxSession) -> bool:
        if not queue:
            return False
        data = b"".join(queue)
        queue.clear()
        if self.chunking is None:
            session.data_received(data)
        else:
            pos = 0
            while pos < len(data):
                n = self.chunking.randint(1, 70000)
                session.data_received(data[pos : pos + n])
                pos += n
        return True

    def pump(self, rounds: int = 100000) -> None:
        for _ in range(rounds):
            moved = self._deliver(self.to_b, self.b)
            moved = self._deliver(self.to_a, self.a) or moved
            if not moved:
                return
        raise AssertionError("pipe never went quiet")


def frames_of(chunks: list[bytes]) -> list[Frame]:
    return list(FrameDecoder().feed(b"".join(chunks)))


def run(coro) -> Deferred:
    return Deferred.fromCoroutine(coro)


async def read_all(stream) -> bytes:
    parts = []
    while True:
        chunk = await stream.read()
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)


def echo_handler(stream) -> None:
    async def echo() -> None:
        while True:
            data = await stream.read()
            if not data:
                break
            await stream.write(data)
        await stream.close_write()

    run(echo())


class SessionTests(SynchronousTestCase):
    def test_open_accept_on_the_wire(self) -> None:
        """Open is WINDOW_UPDATE+SYN delta 0; accept is WINDOW_UPDATE+ACK."""
        pipe = Pipe(config_a=YamuxConfig(keepalive_interval=None, ping_on_start=False),
                    config_b=YamuxConfig(keepalive_interval=None, ping_on_start=False))
        s = pipe.a.open_stream()
        self.assertEqual(frames_of(pipe.to_b), [Frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0)])
        s.write(b"hello")
        self.assertEqual(frames_of(pipe.to_b)[1], Frame(TYPE_DATA, 0, 1, 5, b"hello"))
        pipe._deliver(pipe.to_b, pipe.b)
        self.assertEqual(frames_of(pipe.to_a), [Frame(TYPE_WINDOW_UPDATE, FLAG_ACK, 1, 0)])
        pipe.pump()
        [peer] = pipe.accepted
        self.assertEqual(peer.stream_id, 1)
        self.assertEqual(self.successResultOf(peer.read()), b"hello")

    def test_start_ping(self) -> None:
        """Like js, each side pings on start; the peer answers with ACK and the same opaque."""
        pipe = Pipe(config_a=YamuxConfig(keepalive_interval=None))
        self.assertEqual(frames_of(pipe.to_b), [Frame(TYPE_PING, FLAG_SYN, 0, 0)])
        pipe.clock.advance(0.25)
        pipe._deliver(pipe.to_b, pipe.b)
        self.assertIn(Frame(TYPE_PING, FLAG_ACK, 0, 0), frames_of(pipe.to_a))
        pipe.pump()
        self.assertEqual(pipe.a.rtt, 0.25)

    def test_js_style_syn_on_data(self) -> None:
        """A peer may open with DATA+SYN carrying a payload (and even FIN)."""
        pipe = Pipe()
        pipe.b.data_received(encode_frame(TYPE_DATA, FLAG_SYN | FLAG_FIN, 1, data=b"req"))
        [stream] = pipe.accepted
        self.assertEqual(self.successResultOf(read_all_d(stream)), b"req")

    def test_stream_ids(self) -> None:
        pipe = Pipe()
        self.assertEqual([pipe.a.open_stream().stream_id for _ in range(3)], [1, 3, 5])
        self.assertEqual([pipe.b.open_stream().stream_id for _ in range(3)], [2, 4, 6])

    def test_echo_large(self) -> None:
        """1 MiB through an echo, delivered in random pieces."""
        pipe = Pipe(chunking=random.Random(1))
        pipe.b.on_stream = echo_handler
        payload = random.Random(2).randbytes(MiB)

        async def client() -> bytes:
            s = pipe.a.open_stream()
            reader = read_all_d(s)  # read concurrently, or the echo deadlocks
            await s.write(payload)
            await s.close_write()
            return await reader

        d = run(client())
        pipe.pump()
        self.assertEqual(self.successResultOf(d), payload)
        self.assertEqual(pipe.a.streams, {})
        self.assertEqual(pipe.b.streams, {})

    def test_half_close(self) -> None:
        pipe = Pipe()
        a = pipe.a.open_stream()
        a_closed = a.when_closed()
        a.write(b"question")
        self.successResultOf(a.close_write())
        self.assertRaises(StreamClosed, self.failureResultOf(a.write(b"more")).raiseException)
        pipe.pump()
        [b] = pipe.accepted
        self.assertEqual(self.successResultOf(b.read()), b"question")
        self.assertEqual(self.successResultOf(b.read()), b"")  # EOF
        self.successResultOf(b.when_remote_closed())
        # The other direction still works.
        b.write(b"answer")
        pipe.pump()
        self.assertEqual(self.successResultOf(a.read()), b"answer")
        self.assertNoResult(a_closed)
        self.assertIn(1, pipe.a.streams)
        b.close_write()
        pipe.pump()
        self.assertEqual(self.successResultOf(a.read()), b"")
        self.successResultOf(a_closed)
        self.assertTrue(a.is_done and b.is_done)
        self.assertEqual((pipe.a.streams, pipe.b.streams), ({}, {}))

    def test_reset(self) -> None:
        pipe = Pipe()
        a = pipe.a.open_stream()
        a.write(b"x")
        pipe.pump()
        [b] = pipe.accepted
        self.successResultOf(b.read())
        pending_read = b.read()
        a.reset()
        self.assertTrue(self.failureResultOf(a.write(b"y")).check(StreamReset))
        self.assertTrue(self.failureResultOf(a.read()).check(StreamReset))
        self.assertEqual(frames_of(pipe.to_b)[-1], Frame(TYPE_WINDOW_UPDATE, FLAG_RST, 1, 0))
        pipe.pump()
        self.assertTrue(self.failureResultOf(pending_read).check(StreamReset))
        self.assertTrue(self.failureResultOf(b.write(b"z")).check(StreamReset))
        self.successResultOf(b.when_closed())
        self.assertEqual((pipe.a.streams, pipe.b.streams), ({}, {}))

    def test_reset_fails_pending_writes(self) -> None:
        pipe = Pipe()
        a = pipe.a.open_stream()
        pipe.pump()
        w = a.write(b"x" * (INITIAL_WINDOW + 10))  # more than the window: stays pending
        self.assertNoResult(w)
        pipe.accepted[0].reset()
        pipe.pump()
        self.assertTrue(self.failureResultOf(w).check(StreamReset))

    def test_ping_rtt(self) -> None:
        pipe = Pipe()
        pipe.pump()
        d = pipe.a.ping()
        pipe.clock.advance(0.042)
        pipe.pump()
        self.assertAlmostEqual(self.successResultOf(d), 0.042)
        self.assertAlmostEqual(pipe.a.rtt, 0.042)

    def test_keepalive(self) -> None:
        cfg = YamuxConfig(keepalive_interval=10.0, ping_on_start=False)
        pipe = Pipe(config_a=cfg, config_b=cfg)
        pipe.clock.advance(10)
        self.assertIn(Frame(TYPE_PING, FLAG_SYN, 0, 0), frames_of(pipe.to_b))
        pipe.clock.advance(0.5)
        pipe.pump()
        self.assertEqual(pipe.a.rtt, 0.5)
        # Now the peer goes silent: the next unanswered ping closes the session.
        pipe.clock.advance(9.5)
        pipe.to_b.clear()
        pipe.to_a.clear()
        pipe.clock.advance(10)
        self.assertTrue(pipe.a.closed)
        self.assertEqual(pipe.closed_a, 1)
        self.assertIn(Frame(TYPE_GO_AWAY, 0, 0, 2), frames_of(pipe.to_b))

    def test_go_away(self) -> None:
        pipe = Pipe()
        a = pipe.a.open_stream()
        pipe.pump()
        [b] = pipe.accepted
        pending = a.read()
        closed = pipe.a.when_closed()
        pipe.a.close()
        self.successResultOf(closed)
        self.assertEqual(frames_of(pipe.to_b)[-1], Frame(TYPE_GO_AWAY, 0, 0, GO_AWAY_NORMAL))
        self.assertEqual(pipe.closed_a, 1)
        self.assertTrue(self.failureResultOf(pending).check(StreamReset))
        self.assertRaises(SessionClosed, pipe.a.open_stream)
        pipe.pump()
        self.assertEqual(pipe.b.remote_go_away, GO_AWAY_NORMAL)
        self.assertRaises(SessionClosed, pipe.b.open_stream)
        # Then the transport goes away.
        b_pending = b.read()
        pipe.b.connection_lost(Failure(ConnectionError("gone")))
        f = self.failureResultOf(b_pending)
        self.assertTrue(f.check(StreamReset))
        self.assertIn("gone", f.getErrorMessage())
        self.assertEqual((pipe.a.streams, pipe.b.streams), ({}, {}))

    def test_connection_lost_fails_reads_and_writes(self) -> None:
        pipe = Pipe()
        a = pipe.a.open_stream()
        r = a.read()
        w = a.write(b"x" * (INITIAL_WINDOW * 2))
        pipe.a.connection_lost(Failure(ConnectionError("boom")))
        self.assertTrue(self.failureResultOf(r).check(StreamReset))
        self.assertTrue(self.failureResultOf(w).check(StreamReset))
        self.assertTrue(pipe.a.closed)
        self.assertEqual(pipe.a.streams, {})
        self.assertRaises(SessionClosed, pipe.a.open_stream)

    def test_concurrent_streams(self) -> None:
        """100 streams x 300 KiB each (more than a window) in parallel."""
        pipe = Pipe(chunking=random.Random(3))
        results: dict[int, bytes] = {}

        def handler(stream) -> None:
            async def consume() -> None:
                data = await read_all(stream)
                await stream.write(hashlib.sha256(data).digest())
                await stream.close_write()

            run(consume())

        pipe.b.on_stream = handler
        payloads = [bytes([i]) * (300 * KiB) for i in range(100)]

        async def client(i: int) -> None:
            s = pipe.a.open_stream()
            await s.write(payloads[i])
            await s.close_write()
            results[i] = await read_all(s)

        ds = [run(client(i)) for i in range(100)]
        pipe.pump()
        for d in ds:
            self.successResultOf(d)
        for i in range(100):
            self.assertEqual(results[i], hashlib.sha256(payloads[i]).digest())
        self.assertEqual((pipe.a.streams, pipe.b.streams), ({}, {}))

    def test_slow_reader_back_pressure(self) -> None:
        """A reader that does not read stops the writer at one window."""
        pipe = Pipe()
        a = pipe.a.open_stream()
        w = a.write(b"z" * (2 * MiB))
        pipe.pump()
        [b] = pipe.accepted
        self.assertNoResult(w)
        self.assertEqual(a.send_window, 0)
        self.assertEqual(b.read_buffered, INITIAL_WINDOW)
        self.assertEqual(a.write_buffered, 2 * MiB - INITIAL_WINDOW)
        # Reading a little (less than half a window) does not yet re-open it.
        self.successResultOf(b.read(1000))
        pipe.pump()
        self.assertEqual(a.send_window, 0)
        # Draining lets everything through, never buffering more than a window.
        got = 1000
        while got < 2 * MiB:
            got += len(self.successResultOf(b.read()))
            pipe.pump()
            self.assertLessEqual(b.read_buffered, b.receive_window)
        self.successResultOf(w)

    def test_window_auto_tuning(self) -> None:
        """A fast reader (window used within 4 RTTs) gets its window doubled."""
        cfg = YamuxConfig(keepalive_interval=None, max_window=MiB)
        pipe = Pipe(config_a=cfg, config_b=cfg)
        pipe.pump()
        d = pipe.b.ping()
        pipe.clock.advance(0.01)
        pipe.pump()
        self.successResultOf(d)
        received = []
        pipe.b.on_stream = lambda s: s.set_data_callback(received.append)
        a = pipe.a.open_stream()
        w = a.write(b"q" * (8 * MiB))
        pipe.pump()
        self.successResultOf(w)
        self.assertEqual(sum(map(len, received)), 8 * MiB)
        [b] = pipe.b.streams.values()
        self.assertEqual(b.receive_window, MiB)  # grew, capped at max_window
        self.assertGreater(a.send_window, INITIAL_WINDOW)

    def test_no_auto_tuning_for_slow_consumer(self) -> None:
        cfg = YamuxConfig(keepalive_interval=None)
        pipe = Pipe(config_a=cfg, config_b=cfg)
        pipe.pump()
        d = pipe.b.ping()
        pipe.clock.advance(0.01)
        pipe.pump()
        self.successResultOf(d)
        a = pipe.a.open_stream()
        a.write(b"q" * (2 * MiB))
        pipe.pump()
        [b] = pipe.accepted
        for _ in range(8):
            pipe.clock.advance(1)  # far more than 4 RTTs between updates
            self.successResultOf(b.read())
            pipe.pump()
        self.assertEqual(b.receive_window, INITIAL_WINDOW)

    def test_large_peer_window_and_frame_size(self) -> None:
        """A peer granting a huge window gets data in frames of at most
        max_frame_size (one noise message each: 65535 - 16 - 12)."""
        pipe = Pipe()
        a = pipe.a.open_stream()
        pipe.pump()
        pipe.a.data_received(encode_frame(TYPE_WINDOW_UPDATE, 0, 1, 100 * MiB))
        self.assertEqual(a.send_window, INITIAL_WINDOW + 100 * MiB)
        pipe.to_b.clear()
        self.successResultOf(a.write(b"d" * (3 * MiB)))
        data_frames = [f for f in frames_of(pipe.to_b) if f.type == TYPE_DATA]
        self.assertEqual(sum(f.length for f in data_frames), 3 * MiB)
        self.assertEqual(max(f.length for f in data_frames), YamuxConfig().max_frame_size)
        self.assertEqual(YamuxConfig().max_frame_size + 12 + 16, 65535)

    def test_inbound_stream_limit(self) -> None:
        pipe = Pipe(config_b=YamuxConfig(keepalive_interval=None, max_inbound_streams=2))
        streams = [pipe.a.open_stream() for _ in range(3)]
        reads = [s.read() for s in streams]
        pipe.pump()
        self.assertEqual(len(pipe.accepted), 2)
        self.assertNoResult(reads[0])
        self.assertNoResult(reads[1])
        self.assertTrue(self.failureResultOf(reads[2]).check(StreamReset))
        # Once one finishes, a new one is accepted again.
        streams[0].reset()
        self.failureResultOf(reads[0], StreamReset)
        pipe.pump()
        pipe.a.open_stream()
        pipe.pump()
        self.assertEqual(len(pipe.accepted), 3)

    def test_outbound_stream_limit(self) -> None:
        pipe = Pipe(config_a=YamuxConfig(keepalive_interval=None, max_outbound_streams=2))
        pipe.a.open_stream()
        s = pipe.a.open_stream()
        self.assertRaises(StreamLimitExceeded, pipe.a.open_stream)
        s.reset()
        pipe.a.open_stream()

    def test_no_handler_resets(self) -> None:
        pipe = Pipe()
        pipe.b.on_stream = None
        s = pipe.a.open_stream()
        r = s.read()
        pipe.pump()
        self.assertTrue(self.failureResultOf(r).check(StreamReset))

    def test_handler_exception_resets_stream_only(self) -> None:
        pipe = Pipe()

        def bad(stream):
            raise ValueError("handler bug")

        pipe.b.on_stream = bad
        s = pipe.a.open_stream()
        r = s.read()
        pipe.pump()
        self.assertTrue(self.failureResultOf(r).check(StreamReset))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertFalse(pipe.b.closed)


def read_all_d(stream) -> Deferred:
    return run(read_all(stream))


class ProtocolViolationTests(SynchronousTestCase):
    def assertProtocolError(self, pipe: Pipe, wire: bytes, pending) -> None:
        pipe.to_a.clear()
        pipe.b.data_received(wire)  # must not raise
        self.assertTrue(pipe.b.closed)
        self.assertEqual(pipe.closed_b, 1)
        self.assertEqual(frames_of(pipe.to_a)[-1], Frame(TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR))
        if pending is not None:
            self.assertTrue(self.failureResultOf(pending).check(StreamReset))
        self.assertEqual(pipe.b.streams, {})
        # Further input is ignored.
        pipe.b.data_received(b"\xff" * 100)

    def _pipe_with_stream(self):
        pipe = Pipe()
        pipe.b.data_received(encode_frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0))
        [stream] = pipe.accepted
        return pipe, stream

    def test_data_beyond_window(self) -> None:
        pipe, stream = self._pipe_with_stream()
        pipe.b.data_received(encode_frame(TYPE_DATA, 0, 1, data=b"a" * 200000))
        # Read less than half the window: no update is due, so 62144 bytes remain.
        self.assertEqual(len(self.successResultOf(stream.read(1000))), 1000)
        pipe.b.data_received(encode_frame(TYPE_DATA, 0, 1, data=b"b" * 62144))
        self.assertFalse(pipe.b.closed)
        pending = stream.when_closed()
        self.assertProtocolError(pipe, encode_frame(TYPE_DATA, 0, 1, data=b"c"), None)
        self.successResultOf(pending)
        self.assertTrue(self.failureResultOf(stream.read()).check(StreamReset))

    def test_data_beyond_window_fails_reads(self) -> None:
        pipe, stream = self._pipe_with_stream()
        stream.set_data_callback(lambda d: None)
        stream.pauseProducing()
        wire = encode_frame(TYPE_DATA, 0, 1, data=b"a" * INITIAL_WINDOW) + encode_frame(TYPE_DATA, 0, 1, data=b"b")
        closed = stream.when_closed()
        self.assertProtocolError(pipe, wire, None)
        self.successResultOf(closed)
        self.assertTrue(stream.is_reset)

    def test_unknown_type(self) -> None:
        pipe, stream = self._pipe_with_stream()
        self.assertProtocolError(pipe, b"\x00\x07" + b"\x00" * 10, stream.read())

    def test_bad_version(self) -> None:
        pipe, stream = self._pipe_with_stream()
        self.assertProtocolError(pipe, b"\x02" + b"\x00" * 11, stream.read())

    def test_data_on_stream_zero(self) -> None:
        pipe, stream = self._pipe_with_stream()
        self.assertProtocolError(pipe, encode_frame(TYPE_DATA, 0, 0, data=b"x"), stream.read())

    def test_syn_with_our_parity(self) -> None:
        pipe, stream = self._pipe_with_stream()
        self.assertProtocolError(pipe, encode_frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0), stream.read())

    def test_duplicate_syn(self) -> None:
        pipe, stream = self._pipe_with_stream()
        self.assertProtocolError(pipe, encode_frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0), stream.read())

    def test_frames_for_unknown_streams_ignored(self) -> None:
        pipe = Pipe()
        pipe.b.data_received(encode_frame(TYPE_DATA, 0, 99, data=b"late"))
        pipe.b.data_received(encode_frame(TYPE_WINDOW_UPDATE, FLAG_FIN, 99, 5))
        self.assertFalse(pipe.b.closed)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=400))
    def test_garbage_never_escapes(self, garbage: bytes) -> None:
        pipe = Pipe()
        pipe.b.on_stream = echo_handler
        pipe.b.data_received(garbage)
        pipe.pump()


class ExpectPrefixTests(SynchronousTestCase):
    """YamuxStream.expect_prefix: A's stream must first receive PREFIX from B."""

    PREFIX = b"\x13/multistream/1.0.0\n\x0a/echo/1.0\n"

    def setUp(self) -> None:
        self.pipe = Pipe()
        self.a = self.pipe.a.open_stream()
        self.a.expect_prefix(self.PREFIX)
        self.a.write(b"request")
        self.pipe.pump()
        [self.b] = self.pipe.accepted

    def send(self, *pieces: bytes, fin: bool = False) -> None:
        """B sends each piece as its own DATA frame."""
        for piece in pieces:
            self.b.write(piece)
        if fin:
            self.b.close_write()
        self.pipe.pump()

    def test_split_prefix_then_data(self) -> None:
        """The prefix arrives in pieces; the frame completing it carries data too."""
        self.assertEqual(self.successResultOf(self.b.read()), b"request")
        d = self.a.read()
        self.send(self.PREFIX[:1], self.PREFIX[1:20])
        self.assertNoResult(d)
        self.assertEqual(self.a.read_buffered, 0)
        self.send(self.PREFIX[20:] + b"hello", b" world", fin=True)
        self.assertEqual(self.successResultOf(d), b"hello")
        self.assertEqual(self.successResultOf(read_all_d(self.a)), b" world")
        self.assertFalse(self.a.is_reset)

    def test_prefix_alone_then_eof(self) -> None:
        """Prefix, then FIN: a clean, empty stream."""
        self.send(self.PREFIX, fin=True)
        self.assertEqual(self.successResultOf(read_all_d(self.a)), b"")
        self.assertFalse(self.a.is_reset)

    def test_readexactly_and_data_callback(self) -> None:
        d = self.a.readexactly(3)
        self.send(self.PREFIX + b"ab", b"cd")
        self.assertEqual(self.successResultOf(d), b"abc")
        got: list[bytes] = []
        self.a.set_data_callback(got.append)
        self.send(b"ef")
        self.assertEqual(got, [b"d", b"ef"])

    def test_data_callback_never_sees_prefix(self) -> None:
        pipe = Pipe()
        a = pipe.a.open_stream()
        got: list[bytes] = []
        eof: list = []
        a.set_data_callback(got.append, eof.append)
        a.expect_prefix(b"OK")
        a.write(b"x")
        pipe.pump()
        [b] = pipe.accepted
        b.write(b"O")
        b.write(b"Kdata")
        b.close_write()
        pipe.pump()
        self.assertEqual(got, [b"data"])
        self.assertEqual(eof, [None])

    @settings(max_examples=100, deadline=None)
    @given(st.binary(max_size=200), st.lists(st.integers(0, 10_000), max_size=8))
    def test_any_split(self, payload: bytes, cuts: list[int]) -> None:
        pipe = Pipe()
        a = pipe.a.open_stream()
        a.expect_prefix(self.PREFIX)
        a.write(b"x")
        pipe.pump()
        [b] = pipe.accepted
        for piece in split(self.PREFIX + payload, cuts):
            b.write(piece)
        b.close_write()
        d = read_all_d(a)
        pipe.pump()
        self.assertEqual(self.successResultOf(d), payload)

    def test_mismatch_resets(self) -> None:
        """``na`` instead of the echo: RST goes out, reads and writes fail."""
        d = self.a.read()
        closed = self.a.when_closed()
        self.pipe.to_b.clear()
        self.b.write(self.PREFIX[:20] + b"\x03na\n")
        self.pipe._deliver(self.pipe.to_a, self.pipe.a)
        self.assertIn(Frame(TYPE_WINDOW_UPDATE, FLAG_RST, 1, 0), frames_of(self.pipe.to_b))
        f = self.failureResultOf(d, PrefixMismatch)
        self.assertIsInstance(f.value, StreamReset)
        self.assertEqual(f.value.received, self.PREFIX[:20] + b"\x03na\n")
        self.successResultOf(closed)
        self.failureResultOf(self.a.write(b"more"), PrefixMismatch)
        self.failureResultOf(self.a.read(), PrefixMismatch)
        self.pipe.pump()
        self.failureResultOf(self.b.read(), StreamReset)
        # The session is fine: a new stream works.
        self.assertFalse(self.pipe.a.closed)
        c = self.pipe.a.open_stream()
        c.write(b"again")
        self.pipe.pump()
        self.assertEqual(self.successResultOf(self.pipe.accepted[-1].read()), b"again")
        self.assertEqual(list(self.pipe.a.streams), [c.stream_id])

    def test_mismatch_in_later_frame(self) -> None:
        d = self.a.read()
        self.send(self.PREFIX[:5])
        self.assertNoResult(d)
        self.send(b"garbage")
        self.assertEqual(self.failureResultOf(d, PrefixMismatch).value.received, self.PREFIX[:5] + b"garbage")

    def test_custom_error(self) -> None:
        class Refused(PrefixMismatch):
            pass

        pipe = Pipe()
        a = pipe.a.open_stream()
        seen: list[bytes] = []
        a.expect_prefix(b"yes", lambda received: seen.append(received) or Refused("refused"))
        a.write(b"x")
        d = a.read()
        pipe.pump()
        pipe.accepted[0].write(b"no")
        pipe.pump()
        self.failureResultOf(d, Refused)
        self.assertEqual(seen, [b"no"])

    def test_eof_before_prefix(self) -> None:
        d = self.a.read()
        self.b.write(self.PREFIX[:10])
        self.b.close_write()
        self.pipe.to_b.clear()
        self.pipe._deliver(self.pipe.to_a, self.pipe.a)
        self.assertEqual(self.failureResultOf(d, PrefixMismatch).value.received, self.PREFIX[:10])
        self.assertIn(Frame(TYPE_WINDOW_UPDATE, FLAG_RST, 1, 0), frames_of(self.pipe.to_b))

    def test_peer_reset_before_prefix(self) -> None:
        d = self.a.read()
        self.b.reset()
        self.pipe.pump()
        f = self.failureResultOf(d, StreamReset)
        self.assertNotIsInstance(f.value, PrefixMismatch)

    def test_window_counts_prefix(self) -> None:
        """Prefix bytes use receive window and are re-granted without any read."""
        pipe = Pipe()
        a = pipe.a.open_stream()
        prefix = random.Random(3).randbytes(INITIAL_WINDOW // 2 + 1)
        a.expect_prefix(prefix)
        a.write(b"x")
        pipe.pump()
        [b] = pipe.accepted
        pipe.to_a.clear()
        b.write(prefix[:1000])
        pipe._deliver(pipe.to_a, pipe.a)
        self.assertEqual([f for f in frames_of(pipe.to_b) if f.type == TYPE_WINDOW_UPDATE], [])
        pipe.to_b.clear()
        b.write(prefix[1000:] + b"tail")
        pipe._deliver(pipe.to_a, pipe.a)
        self.assertEqual(frames_of(pipe.to_b), [Frame(TYPE_WINDOW_UPDATE, 0, 1, len(prefix))])
        pipe.pump()
        self.assertEqual(b.send_window, INITIAL_WINDOW - 4)
        self.assertEqual(a.read_buffered, 4)
        # The window is still enforced: the prefix does not add to it.
        b.write(b"y" * (INITIAL_WINDOW - 4))
        pipe.pump()
        self.assertFalse(pipe.a.closed)
        self.assertEqual(a.read_buffered, INITIAL_WINDOW)

    def test_only_before_data(self) -> None:
        self.assertRaises(RuntimeError, self.a.expect_prefix, b"again")
        self.send(self.PREFIX + b"data")
        self.assertRaises(RuntimeError, self.a.expect_prefix, b"more")
        pipe = Pipe()
        a = pipe.a.open_stream()
        a.write(b"x")
        pipe.pump()
        pipe.accepted[0].write(b"early")
        pipe.pump()
        self.assertRaises(RuntimeError, a.expect_prefix, b"late")


class StreamApiTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pipe = Pipe()
        self.a = self.pipe.a.open_stream()
        self.pipe.pump()
        [self.b] = self.pipe.accepted

    def send(self, data: bytes, fin: bool = False) -> None:
        self.a.write(data)
        if fin:
            self.a.close_write()
        self.pipe.pump()

    def test_read_max_bytes(self) -> None:
        self.send(b"abcdef")
        self.send(b"ghij")
        self.assertEqual(self.successResultOf(self.b.read(4)), b"abcd")
        self.assertEqual(self.successResultOf(self.b.read(3)), b"efg")
        self.assertEqual(self.successResultOf(self.b.read()), b"hij")

    def test_readexactly_across_frames(self) -> None:
        d = self.b.readexactly(7)
        self.send(b"abc")
        self.assertNoResult(d)
        self.send(b"defgh")
        self.assertEqual(self.successResultOf(d), b"abcdefg")
        self.assertEqual(self.successResultOf(self.b.read()), b"h")

    def test_readexactly_larger_than_window(self) -> None:
        payload = random.Random(5).randbytes(3 * MiB)
        d = self.b.readexactly(len(payload))
        self.send(payload)
        self.assertEqual(self.successResultOf(d), payload)

    def test_readexactly_incomplete(self) -> None:
        d = self.b.readexactly(10)
        self.send(b"abc", fin=True)
        f = self.failureResultOf(d, IncompleteRead)
        self.assertEqual(f.value.partial, b"abc")
        self.assertEqual(f.value.expected, 10)

    def test_readexactly_reset(self) -> None:
        d = self.b.readexactly(10)
        self.send(b"abc")
        self.a.reset()
        self.pipe.pump()
        self.failureResultOf(d, StreamReset)

    def test_cancel_readexactly_keeps_bytes(self) -> None:
        d = self.b.readexactly(10)
        self.send(b"abc")
        d.cancel()
        self.failureResultOf(d)
        self.send(b"def")
        self.assertEqual(self.successResultOf(self.b.read()), b"abcdef")

    def test_concurrent_reads_refused(self) -> None:
        self.b.read()
        self.assertRaises(RuntimeError, self.b.read)

    def test_data_callback_with_pause(self) -> None:
        got: list[bytes] = []
        eof: list = []
        self.b.set_data_callback(got.append, eof.append)
        self.send(b"one")
        self.assertEqual(got, [b"one"])
        self.assertTrue(IPushProducer.providedBy(self.b))
        self.b.pauseProducing()
        w = self.a.write(b"x" * MiB)
        self.a.close_write()
        self.pipe.pump()
        self.assertEqual(got, [b"one"])
        # "one" was consumed but not yet re-granted (below the update threshold).
        self.assertEqual(self.b.read_buffered, INITIAL_WINDOW - 3)
        self.assertNoResult(w)
        self.assertEqual(eof, [])
        self.b.resumeProducing()
        self.pipe.pump()
        self.successResultOf(w)
        self.assertEqual(b"".join(got), b"one" + b"x" * MiB)
        self.assertEqual(eof, [None])

    def test_data_callback_gets_buffered_data_and_reset(self) -> None:
        self.send(b"early")
        got: list[bytes] = []
        eof: list = []
        self.b.set_data_callback(got.append, eof.append)
        self.assertEqual(got, [b"early"])
        self.a.reset()
        self.pipe.pump()
        [exc] = eof
        self.assertIsInstance(exc, StreamReset)

    def test_close_discards_inbound(self) -> None:
        self.send(b"ignored")
        self.successResultOf(self.b.close())
        self.assertEqual(self.successResultOf(self.b.read()), b"")
        # The sender is never stalled: discarded data is re-granted.
        w = self.a.write(b"y" * MiB)
        self.pipe.pump()
        self.successResultOf(w)
        self.a.close_write()
        self.pipe.pump()
        self.assertTrue(self.b.is_done)
        self.assertEqual(self.pipe.b.streams, {})

    def test_producer_registration(self) -> None:
        @implementer(IPushProducer)
        class Producer:
            def __init__(self) -> None:
                self.events: list[str] = []

            def pauseProducing(self) -> None:
                self.events.append("pause")

            def resumeProducing(self) -> None:
                self.events.append("resume")

            def stopProducing(self) -> None:
                self.events.append("stop")

        producer = Producer()
        self.a.registerProducer(producer, True)
        self.a.write(b"p" * (INITIAL_WINDOW + 1))
        self.assertEqual(producer.events, ["pause"])
        self.pipe.pump()
        self.successResultOf(self.b.read())
        self.pipe.pump()
        self.assertEqual(producer.events, ["pause", "resume"])
        self.b.reset()
        self.pipe.pump()
        self.assertEqual(producer.events, ["pause", "resume", "stop"])
        # Writes after reset are dropped quietly for producer-driven streams.
        self.successResultOf(self.a.write(b"late"))

    def test_session_pause_holds_data(self) -> None:
        """The transport-facing producer: paused session queues stream data."""
        self.pipe.a.pauseProducing()
        w = self.a.write(b"held")
        self.pipe.pump()
        self.assertNoResult(w)
        self.assertEqual(self.b.read_buffered, 0)
        self.pipe.a.resumeProducing()
        self.successResultOf(w)
        self.pipe.pump()
        self.assertEqual(self.successResultOf(self.b.read()), b"held")

    def test_no_leaks(self) -> None:
        """Finished streams are dropped by the session and can be collected."""
        refs = []
        for _ in range(20):
            s = self.pipe.a.open_stream()
            s.write(b"data")
            s.close_write()
            refs.append(weakref.ref(s))
        self.pipe.pump()
        for b in self.pipe.accepted[1:]:
            self.successResultOf(read_all_d(b))
            b.close_write()
            refs.append(weakref.ref(b))
        self.pipe.pump()
        self.assertEqual(set(self.pipe.a.streams), {1})
        self.assertEqual(set(self.pipe.b.streams), {1})
        self.assertEqual((self.pipe.a._inbound, self.pipe.a._outbound), (0, 1))
        self.assertEqual((self.pipe.b._inbound, self.pipe.b._outbound), (1, 0))
        del s, b
        self.pipe.accepted[1:] = []
        gc.collect()
        self.assertEqual([r for r in refs if r() is not None], [])


class ChannelAdapterTests(SynchronousTestCase):
    def test_for_channel(self) -> None:
        class Channel:
            is_initiator = False

            def __init__(self) -> None:
                self.written: list[bytes] = []
                self.lost = 0
                self.producer = None

            def write(self, data: bytes) -> None:
                self.written.append(data)

            def loseConnection(self) -> None:
                self.lost += 1

            def registerProducer(self, producer, streaming) -> None:
                self.producer = producer

        channel = Channel()
        session = YamuxSession.for_channel(channel, Clock(), YamuxConfig(keepalive_interval=None))
        self.assertIs(channel.producer, session)
        self.assertEqual(session.open_stream().stream_id, 2)
        session.close()
        self.assertEqual(channel.lost, 1)
        self.assertEqual(frames_of(channel.written)[-1], Frame(TYPE_GO_AWAY, 0, 0, 0))

    def test_protocol_over_iosim(self) -> None:
        clock = Clock()
        cfg = YamuxConfig(keepalive_interval=None)
        server = YamuxProtocol(clock, False, on_stream=echo_handler, config=cfg)
        client = YamuxProtocol(clock, True, config=cfg)
        _, _, pump = iosim.connectedServerAndClient(lambda: server, lambda: client, greet=True)
        payload = random.Random(9).randbytes(600 * KiB)

        async def go() -> bytes:
            s = client.session.open_stream()
            reader = read_all_d(s)
            await s.write(payload)
            await s.close_write()
            return await reader

        d = run(go())
        for _ in range(200):
            pump.pump()
            if d.called:
                break
        self.assertEqual(self.successResultOf(d), payload)
        client.transport.loseConnection()
        pump.flush()
        self.assertTrue(client.session.closed and server.session.closed)
