"""The yamux stream multiplexer (``/yamux/1.0.0``).

Implements the hashicorp yamux spec (mirrored in libp2p/specs ``yamux``) so that
it interoperates with go-yamux and js-libp2p's ``@chainsafe/libp2p-yamux``.

Layers, bottom up:

* :class:`FrameDecoder` / :func:`encode_frame` -- the pure frame codec.
* :class:`YamuxSession` -- the sans-IO session: bytes in through
  :meth:`YamuxSession.data_received`, bytes out through the ``send`` callable
  it was built with.  Timers (keep-alive pings) go through an
  ``IReactorTime`` that is passed in.
* :class:`YamuxStream` -- one logical stream, with an ``await``-able API
  (``read``/``readexactly``/``write``) and a Twisted producer/consumer face.
* :class:`YamuxProtocol` -- a thin ``Protocol`` running a session directly
  over a byte transport.

Flow control follows go-yamux and js-libp2p: every stream starts with a
256 KiB receive window; the window is re-granted as the *application*
consumes data (so a slow reader pushes back on the sender), and it doubles
(up to :attr:`YamuxConfig.max_window`) when the window is used up within four
round-trip times of the previous update.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime
from aicn.log import Logger
from aicn.p2p import stream as stream_api
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "PROTOCOL_ID",
    "TYPE_DATA",
    "TYPE_WINDOW_UPDATE",
    "TYPE_PING",
    "TYPE_GO_AWAY",
    "FLAG_SYN",
    "FLAG_ACK",
    "FLAG_FIN",
    "FLAG_RST",
    "GO_AWAY_NORMAL",
    "GO_AWAY_PROTOCOL_ERROR",
    "GO_AWAY_INTERNAL_ERROR",
    "INITIAL_WINDOW",
    "Frame",
    "FrameDecoder",
    "encode_frame",
    "YamuxError",
    "YamuxProtocolError",
    "StreamReset",
    "PrefixMismatch",
    "StreamClosed",
    "SessionClosed",
    "StreamLimitExceeded",
    "IncompleteRead",
    "YamuxConfig",
    "YamuxSession",
    "YamuxStream",
    "YamuxProtocol",
]

log = Logger()

#: multistream-select protocol id.
PROTOCOL_ID = "/yamux/1.0.0"

VERSION = 0

TYPE_DATA = 0
TYPE_WINDOW_UPDATE = 1
TYPE_PING = 2
TYPE_GO_AWAY = 3

FLAG_SYN = 0x1
FLAG_ACK = 0x2
FLAG_FIN = 0x4
FLAG_RST = 0x8

GO_AWAY_NORMAL = 0
GO_AWAY_PROTOCOL_ERROR = 1
GO_AWAY_INTERNAL_ERROR = 2

#: Window every stream starts with, in each direction (spec: 256 KiB).
INITIAL_WINDOW = 256 * 1024

HEADER = struct.Struct(">BBHII")
HEADER_SIZE = HEADER.size  # 12
_MAX_U32 = 0xFFFFFFFF


# --------------------------------------------------------------------------
# Errors


class YamuxError(Exception):
    """Base class for every yamux error."""


class YamuxProtocolError(YamuxError):
    """The peer broke the protocol (bad frame, window overrun, ...)."""


class StreamReset(YamuxError, stream_api.StreamReset):
    """The stream was reset (by the peer, locally, or because the session ended)."""


class PrefixMismatch(StreamReset, stream_api.PrefixMismatch):
    """The first inbound bytes differed from those :meth:`YamuxStream.expect_prefix`
    required (or the peer closed before sending them all); the stream was reset."""

    def __init__(self, message: str, received: bytes = b"") -> None:
        stream_api.PrefixMismatch.__init__(self, message, received)


class StreamClosed(YamuxError, stream_api.StreamClosed):
    """Writing to a stream whose write side is already closed."""


class SessionClosed(YamuxError):
    """The session is closed or going away; no new streams can be opened."""


class StreamLimitExceeded(YamuxError):
    """Too many concurrent outbound streams on this session."""


class IncompleteRead(YamuxError, stream_api.IncompleteRead):
    """EOF came before :meth:`YamuxStream.readexactly` got all its bytes."""

    def __init__(self, partial: bytes, expected: int) -> None:
        stream_api.IncompleteRead.__init__(self, partial, expected)


# --------------------------------------------------------------------------
# Frame codec (pure)


class Frame(NamedTuple):
    """One yamux frame.

    ``length`` is the payload length for DATA, the window delta for
    WINDOW_UPDATE, the opaque value for PING and the error code for GO_AWAY.
    ``data`` is the payload (DATA only; empty otherwise).
    """

    type: int
    flags: int
    stream_id: int
    length: int
    data: bytes = b""

    def encode(self) -> bytes:
        """Serialize the frame (header, then the payload for DATA)."""
        return encode_frame(self.type, self.flags, self.stream_id, self.length, self.data)


def encode_frame(frame_type: int, flags: int, stream_id: int, length: int = 0, data: bytes = b"") -> bytes:
    """Encode one frame.  For DATA frames ``length`` is taken from ``data``."""
    if frame_type == TYPE_DATA:
        return HEADER.pack(VERSION, frame_type, flags, stream_id, len(data)) + data
    return HEADER.pack(VERSION, frame_type, flags, stream_id, length)


class FrameDecoder:
    """Incremental yamux frame decoder.

    :meth:`feed` accepts any slice of the byte stream (several frames, or a
    fraction of one) and yields each complete frame.  DATA frames announcing
    more than ``max_data_length`` bytes are rejected as soon as their header
    is seen, so a peer can never make us buffer more than that.
    """

    def __init__(self, max_data_length: int = 16 * 1024 * 1024) -> None:
        self.max_data_length = max_data_length
        self._buf = bytearray()
        self._failed: Optional[YamuxError] = None

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> Iterator[Frame]:
        """Add ``data`` and yield the frames it completes, in order.

        Raises :class:`YamuxProtocolError` (lazily, after yielding the good
        frames before it) on a bad version, unknown type or oversized frame;
        the decoder then stays failed.
        """
        if self._failed is not None:
            raise self._failed
        if self._buf:
            self._buf += data
            src = self._buf
        else:
            # Common case: nothing pending, parse straight out of ``data``.
            src = data
        view = memoryview(src)
        end = len(src)
        pos = 0
        unpack = HEADER.unpack_from
        try:
            while end - pos >= HEADER_SIZE:
                version, ftype, flags, stream_id, length = unpack(src, pos)
                if version != VERSION:
                    raise self._fail(f"unsupported yamux version {version}")
                if ftype == TYPE_DATA:
                    if length > self.max_data_length:
                        raise self._fail(
                            f"DATA frame of {length} bytes exceeds the {self.max_data_length} byte limit"
                        )
                    start = pos + HEADER_SIZE
                    if end - start < length:
                        break
                    payload = bytes(view[start : start + length])
                    pos = start + length
                elif ftype <= TYPE_GO_AWAY:
                    payload = b""
                    pos += HEADER_SIZE
                else:
                    raise self._fail(f"unknown yamux frame type {ftype}")
                yield Frame(ftype, flags, stream_id, length, payload)
        finally:
            view.release()
            if self._failed is None:
                if src is self._buf:
                    if pos:
                        del self._buf[:pos]
                elif pos < end:
                    self._buf = bytearray(data[pos:])

    def _fail(self, message: str) -> YamuxProtocolError:
        self._failed = YamuxProtocolError(message)
        self._buf = bytearray()
        return self._failed


# --------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class YamuxConfig:
    """Tunables of a :class:`YamuxSession` (defaults match js-libp2p)."""

    #: Receive window each stream starts with (>= 256 KiB; the excess is
    #: announced in the SYN/ACK frame).
    initial_window: int = INITIAL_WINDOW
    #: Upper bound of a stream's auto-tuned receive window.
    max_window: int = 16 * 1024 * 1024
    #: Largest DATA payload we send in one frame.  65507 = the largest noise
    #: plaintext (65535 - 16-byte tag) minus the 12-byte yamux header, so a
    #: full DATA frame is exactly one noise message instead of a large one
    #: plus a 12-byte straggler.
    max_frame_size: int = 65535 - 16 - 12
    #: Concurrent streams the peer may open; extra SYNs are answered with RST.
    max_inbound_streams: int = 1000
    #: Concurrent streams we may open.
    max_outbound_streams: int = 1000
    #: Seconds between keep-alive pings (None: no keep-alive).  A ping still
    #: unanswered when the next one is due closes the session.
    keepalive_interval: Optional[float] = 30.0
    #: Send a PING as soon as the session starts, to learn the RTT early.
    ping_on_start: bool = True
    #: Grow receive windows when they are consumed quickly (needs an RTT).
    auto_tune: bool = True

    def __post_init__(self) -> None:
        if self.initial_window < INITIAL_WINDOW:
            raise ValueError("initial_window must be at least 256 KiB")
        if self.max_window < self.initial_window or self.max_window > _MAX_U32:
            raise ValueError("max_window must be between initial_window and 2**32-1")
        if self.max_frame_size <= 0:
            raise ValueError("max_frame_size must be positive")


# --------------------------------------------------------------------------
# Streams


class _Observers:
    """A one-shot event that hands each waiter its own Deferred."""

    def __init__(self) -> None:
        self.fired = False
        self._waiters: list[Deferred] = []

    def wait(self) -> Deferred:
        if self.fired:
            return succeed(None)
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d

    def fire(self) -> None:
        if self.fired:
            return
        self.fired = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)


class _PendingRead:
    __slots__ = ("deferred", "size", "exact", "parts", "got")

    def __init__(self, deferred: Deferred, size: int, exact: bool) -> None:
        self.deferred = deferred
        self.size = size
        self.exact = exact
        self.parts: list[bytes] = []
        self.got = 0


class _PendingWrite:
    __slots__ = ("view", "offset", "deferred")

    def __init__(self, view: memoryview, deferred: Optional[Deferred]) -> None:
        self.view = view
        self.offset = 0
        self.deferred = deferred


@implementer(IPushProducer, IConsumer)
class YamuxStream:
    """One yamux stream.

    Pull API (``await``-able Deferreds): :meth:`read`, :meth:`readexactly`,
    :meth:`write`, :meth:`close_write`, :meth:`close`, :meth:`reset`.

    Push API: :meth:`set_data_callback` delivers inbound data as it arrives;
    as an ``IPushProducer`` the stream stops delivering (and stops granting
    window to the peer) while paused.  As an ``IConsumer`` it accepts an
    upstream producer that is paused while the send window is exhausted.

    Unread inbound data never exceeds the receive window: the peer only gets
    more window when the application consumes data.
    """

    #: Protocol negotiated on this stream; set by the layer above.
    protocol: Optional[str]

    def __init__(self, session: "YamuxSession", stream_id: int, outbound: bool) -> None:
        self.session = session
        self.stream_id = stream_id
        self.outbound = outbound
        self.protocol = None

        cfg = session.config
        # Receive side.  Invariant: _recv_credit + _buffered + _unacked
        # (+ bytes held by a pending readexactly) == _recv_window.
        self._recv_window = cfg.initial_window
        self._recv_credit = INITIAL_WINDOW  # what the peer believes it may send
        self._unacked = cfg.initial_window - INITIAL_WINDOW  # consumed, not yet re-granted
        self._epoch_start = session.clock.seconds()
        self._chunks: deque[bytes] = deque()
        self._head = 0  # bytes of _chunks[0] already consumed
        self._buffered = 0
        self._pending_read: Optional[_PendingRead] = None
        self._fin_received = False
        self._read_discard = False  # close(): drop inbound data
        self._data_cb: Optional[Callable[[bytes], object]] = None
        self._eof_cb: Optional[Callable[[Optional[Exception]], object]] = None
        self._eof_delivered = False
        self._paused = False
        # expect_prefix(): bytes still to match, position in them, error factory.
        self._expect: Optional[bytes] = None
        self._expect_pos = 0
        self._expect_error: Optional[Callable[[bytes], YamuxError]] = None

        # Send side.
        self._send_window = INITIAL_WINDOW
        self._writes: deque[_PendingWrite] = deque()
        self._fin_queued = False
        self._fin_sent = False
        self._fin_waiters = _Observers()
        self._producer = None
        self._producer_streaming = True
        self._producer_paused = False
        self._pull_scheduled = False

        self._need_ack = not outbound
        self._reset_error: Optional[YamuxError] = None
        self._done = False
        self._closed = _Observers()
        self._remote_closed = _Observers()

    def __repr__(self) -> str:
        return f"<YamuxStream {self.stream_id} {'out' if self.outbound else 'in'} {self.protocol or ''}>"

    # -- state -------------------------------------------------------------

    @property
    def is_reset(self) -> bool:
        """True once the stream was reset (either side) or its session ended."""
        return self._reset_error is not None

    @property
    def is_done(self) -> bool:
        """True once both directions are closed or the stream was reset."""
        return self._done

    @property
    def read_buffered(self) -> int:
        """Bytes received but not yet consumed by the application."""
        return self._buffered

    @property
    def receive_window(self) -> int:
        """Current (possibly auto-tuned) receive window size."""
        return self._recv_window

    @property
    def send_window(self) -> int:
        """Bytes we may still send before the peer grants more."""
        return self._send_window

    @property
    def write_buffered(self) -> int:
        """Bytes accepted by :meth:`write` but still waiting for send window."""
        return sum(len(w.view) - w.offset for w in self._writes)

    def when_closed(self) -> Deferred:
        """Deferred firing (with None) once the stream is finished: both sides
        closed, or reset.  Each call returns a new Deferred."""
        return self._closed.wait()

    def when_remote_closed(self) -> Deferred:
        """Deferred firing (with None) once the peer sent FIN or the stream was reset."""
        return self._remote_closed.wait()

    # -- reading ---------------------------------------------------------------

    def read(self, max_bytes: int = -1) -> Deferred:
        """Read up to ``max_bytes`` (all buffered data if negative).

        Fires with at least one byte, or ``b""`` at EOF (peer sent FIN);
        fails with :class:`StreamReset` if the stream was reset.
        """
        self._check_can_read()
        if max_bytes == 0:
            return succeed(b"")
        if self._buffered:
            return succeed(self._take(max_bytes))
        if self._reset_error is not None:
            return fail(self._reset_error)
        if self._fin_received or self._read_discard:
            return succeed(b"")
        return self._wait_read(max_bytes, exact=False)

    def readexactly(self, n: int) -> Deferred:
        """Read exactly ``n`` bytes.

        Fails with :class:`IncompleteRead` if EOF comes first, or
        :class:`StreamReset`.  ``n`` may exceed the receive window: bytes
        are consumed (and window granted) as they arrive.
        """
        self._check_can_read()
        if n < 0:
            raise ValueError("n must be >= 0")
        if self._buffered >= n:
            return succeed(self._take(n) if n else b"")
        if self._reset_error is not None:
            return fail(self._reset_error)
        if self._fin_received or self._read_discard:
            return fail(IncompleteRead(self._take(-1), n))
        pending = self._wait_read(n, exact=True)
        self._feed_pending()
        return pending

    def _check_can_read(self) -> None:
        if self._data_cb is not None:
            raise RuntimeError("stream is in data-callback mode")
        if self._pending_read is not None:
            raise RuntimeError("a read is already pending on this stream")

    def _wait_read(self, size: int, exact: bool) -> Deferred:
        def cancel(d: Deferred) -> None:
            pending = self._pending_read
            if pending is not None and pending.deferred is d:
                self._pending_read = None
                if pending.parts:
                    # Give consumed bytes back so a later read sees them.
                    self._chunks.appendleft(b"".join(pending.parts))
                    if self._head and len(self._chunks) > 1:
                        first = self._chunks[1][self._head :]
                        self._chunks[1] = first
                        self._head = 0
                    self._buffered += pending.got

        d: Deferred = Deferred(cancel)
        self._pending_read = _PendingRead(d, size, exact)
        return d

    def set_data_callback(
        self,
        on_data: Callable[[bytes], object],
        on_eof: Optional[Callable[[Optional[Exception]], object]] = None,
    ) -> None:
        """Switch to push mode: ``on_data(chunk)`` gets every inbound chunk,
        ``on_eof(None)`` the peer's FIN, ``on_eof(exc)`` a reset.

        Use :meth:`pauseProducing`/:meth:`resumeProducing` for back-pressure.
        Already buffered data is delivered at once (unless paused).
        """
        if self._pending_read is not None:
            raise RuntimeError("a read is pending on this stream")
        self._data_cb = on_data
        self._eof_cb = on_eof
        self._deliver()

    def expect_prefix(self, data: bytes, error: Optional[Callable[[bytes], YamuxError]] = None) -> None:
        """Require the first inbound bytes to be exactly ``data``.

        Those bytes are consumed here: readers and the data callback only see
        what follows them (they may arrive in any number of frames, and a
        frame may carry the prefix and application data together).  They
        still count against the receive window, and are re-granted as if the
        application had read them.

        If different bytes arrive, or the peer half-closes before the whole
        prefix came, the stream is reset (RST sent) and pending and later
        reads and writes fail with ``error(received)``, by default a
        :class:`PrefixMismatch`; ``received`` is what arrived in place of the
        prefix, at most as long as it.

        This lets a dialer pipeline its data behind a protocol proposal whose
        successful answer is known in advance (lazy multistream-select).
        Call it before any data has arrived, normally right after
        :meth:`YamuxSession.open_stream`.
        """
        if self._buffered or self._fin_received or self._reset_error is not None or self._expect is not None:
            raise RuntimeError("expect_prefix() must be called once, before any data arrived")
        if data:
            self._expect = bytes(data)
            self._expect_pos = 0
            self._expect_error = error

    def _match_prefix(self, data: bytes) -> bytes:
        """Strip what ``data`` holds of the expected prefix; return the rest
        (b"" if nothing is left or the stream was reset on a mismatch)."""
        expect = self._expect
        pos = self._expect_pos
        k = min(len(expect) - pos, len(data))
        if data[:k] != expect[pos : pos + k]:
            self._prefix_failed(expect[:pos] + data[:k], "differ from")
            return b""
        pos += k
        if pos == len(expect):
            self._expect = None
            self._expect_error = None
        else:
            self._expect_pos = pos
        self._consumed(k)
        return data[k:] if k < len(data) else b""

    def _prefix_failed(self, received: bytes, how: str) -> None:
        expect, factory = self._expect, self._expect_error
        self._expect = None
        self._expect_error = None
        if factory is not None:
            exc = factory(received)
        else:
            exc = PrefixMismatch(
                f"stream {self.stream_id}: first inbound bytes {received[:64]!r} {how} the expected {expect[:64]!r}",
                received,
            )
        self._reset_with(exc)

    # IPushProducer (inbound direction)

    def pauseProducing(self) -> None:
        """Stop delivering data to the data callback (and stop granting window)."""
        self._paused = True

    def resumeProducing(self) -> None:
        """Resume delivery after :meth:`pauseProducing`."""
        self._paused = False
        self._deliver()

    def stopProducing(self) -> None:
        """The consumer is gone: reset the stream."""
        self.reset()

    def _take(self, n: int) -> bytes:
        """Remove up to ``n`` (all if negative) buffered bytes, marking them consumed."""
        chunks = self._chunks
        if n < 0 or n >= self._buffered:
            n = self._buffered
            if len(chunks) == 1:
                out = chunks[0]
                if self._head:
                    out = out[self._head :]
            else:
                if self._head:
                    chunks[0] = chunks[0][self._head :]
                out = b"".join(chunks)
            chunks.clear()
            self._head = 0
        else:
            parts = []
            need = n
            while need:
                chunk = chunks[0]
                avail = len(chunk) - self._head
                if avail <= need:
                    parts.append(chunk[self._head :] if self._head else chunk)
                    chunks.popleft()
                    self._head = 0
                    need -= avail
                else:
                    parts.append(chunk[self._head : self._head + need])
                    self._head += need
                    need = 0
            out = parts[0] if len(parts) == 1 else b"".join(parts)
        self._buffered -= n
        self._consumed(n)
        return out

    def _feed_pending(self) -> None:
        """Satisfy the pending read from the buffer / EOF / reset if possible."""
        pending = self._pending_read
        if pending is None:
            return
        if pending.exact:
            if self._buffered:
                want = pending.size - pending.got
                chunk = self._take(want)
                pending.parts.append(chunk)
                pending.got += len(chunk)
            if pending.got >= pending.size:
                self._pending_read = None
                pending.deferred.callback(b"".join(pending.parts))
            elif self._reset_error is not None:
                self._pending_read = None
                pending.deferred.errback(self._reset_error)
            elif self._fin_received or self._read_discard:
                self._pending_read = None
                pending.deferred.errback(IncompleteRead(b"".join(pending.parts), pending.size))
            return
        if self._buffered:
            self._pending_read = None
            pending.deferred.callback(self._take(pending.size))
        elif self._reset_error is not None:
            self._pending_read = None
            pending.deferred.errback(self._reset_error)
        elif self._fin_received or self._read_discard:
            self._pending_read = None
            pending.deferred.callback(b"")

    def _deliver(self) -> None:
        """Push buffered data (then EOF) to the data callback while not paused."""
        cb = self._data_cb
        if cb is None:
            self._feed_pending()
            return
        while self._buffered and not self._paused and self._data_cb is cb:
            chunk = self._chunks[0]
            if self._head:
                chunk = chunk[self._head :]
            self._chunks.popleft()
            self._head = 0
            self._buffered -= len(chunk)
            self._consumed(len(chunk))
            self._call_data_cb(chunk)
        if (
            not self._buffered
            and not self._eof_delivered
            and (self._fin_received or self._reset_error is not None)
            and self._data_cb is cb
        ):
            self._eof_delivered = True
            if self._eof_cb is not None:
                try:
                    self._eof_cb(self._reset_error)
                except Exception:
                    log.failure("yamux stream {stream} EOF callback failed", stream=self.stream_id)

    def _call_data_cb(self, chunk: bytes) -> None:
        try:
            self._data_cb(chunk)  # type: ignore[misc]
        except Exception:
            log.failure("yamux stream {stream} data callback failed; resetting", stream=self.stream_id)
            self.reset()

    def _consumed(self, n: int) -> None:
        """The application consumed ``n`` bytes: maybe give the peer more window."""
        self._unacked += n
        self._send_window_update()

    def _send_window_update(self, force: bool = False) -> None:
        if self._fin_received or self._reset_error is not None or self.session._closed:
            return
        # Like go-yamux: batch updates until half the window is free again.
        if not force and self._unacked < self._recv_window // 2:
            return
        session = self.session
        now = session.clock.seconds()
        rtt = session.rtt
        flags = self._take_flags()
        # Auto-tune (like go-yamux/js): half the window was consumed within
        # 4 RTTs of the previous update, so the window limits throughput.
        if (
            not force
            and flags == 0
            and session.config.auto_tune
            and rtt is not None
            and rtt > 0
            and self._recv_window < session.config.max_window
            and now - self._epoch_start < 4 * rtt
        ):
            grown = min(self._recv_window * 2, session.config.max_window)
            self._unacked += grown - self._recv_window
            self._recv_window = grown
        self._epoch_start = now
        delta = self._unacked
        if delta == 0 and flags == 0:
            return
        self._unacked = 0
        self._recv_credit += delta
        session._emit(HEADER.pack(VERSION, TYPE_WINDOW_UPDATE, flags, self.stream_id, delta))

    def _take_flags(self) -> int:
        if self._need_ack:
            self._need_ack = False
            return FLAG_ACK
        return 0

    # -- writing ---------------------------------------------------------------

    def write(self, data: bytes) -> Deferred:
        """Queue ``data`` for sending.

        The returned Deferred fires once all of ``data`` was handed to the
        session within the peer's window: awaiting it is the back-pressure
        point.  It fails with :class:`StreamReset` if the stream is reset
        first, or :class:`StreamClosed` after :meth:`close_write`.  When an
        ``IConsumer`` producer is registered, failures go to the producer's
        ``stopProducing`` instead and the Deferred never fails.
        """
        if self._reset_error is not None:
            return self._write_failed(self._reset_error)
        if self._fin_queued:
            return self._write_failed(StreamClosed("write after close_write"))
        if not data:
            return succeed(None)
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)  # the caller may mutate its buffer later
        d: Deferred = Deferred()
        self._writes.append(_PendingWrite(memoryview(data), d))
        self._flush()
        return d

    def _write_failed(self, exc: Exception) -> Deferred:
        if self._producer is not None:
            return succeed(None)
        return fail(exc)

    def close_write(self) -> Deferred:
        """Half-close: send FIN after all queued data.  Fires once FIN is sent."""
        if self._reset_error is not None:
            return fail(self._reset_error) if not self._fin_sent else succeed(None)
        if not self._fin_queued:
            self._fin_queued = True
            self._flush()
        return self._fin_waiters.wait()

    def close(self) -> Deferred:
        """Close both directions gracefully: FIN our side and discard further
        inbound data (a pending read sees EOF).  Fires once FIN is sent; use
        :meth:`when_closed` to wait for the peer's FIN too.  Closing a reset
        stream is a no-op, so cleanup code can always call it."""
        if self._reset_error is not None:
            return succeed(None)
        if not self._read_discard:
            self._read_discard = True
            dropped = self._buffered
            self._chunks.clear()
            self._head = 0
            self._buffered = 0
            if dropped:
                self._consumed(dropped)
            self._feed_pending()
        return self.close_write()

    def reset(self) -> None:
        """Abort the stream: send RST and fail pending reads and writes."""
        self._reset_with(StreamReset(f"stream {self.stream_id} reset locally"))

    def _reset_with(self, exc: YamuxError) -> None:
        if self._reset_error is not None or self._done:
            return
        if not self.session._closed:
            self.session._emit(
                HEADER.pack(VERSION, TYPE_WINDOW_UPDATE, FLAG_RST | self._take_flags(), self.stream_id, 0)
            )
        self._terminate(exc)

    # IConsumer (outbound direction)

    def registerProducer(self, producer, streaming: bool) -> None:
        """Register an upstream producer, paused while the send window is full."""
        if self._producer is not None:
            raise RuntimeError("a producer is already registered")
        self._producer = producer
        self._producer_streaming = streaming
        self._producer_paused = False
        if self._reset_error is not None:
            producer.stopProducing()
        elif not streaming:
            self._schedule_pull()
        else:
            self._update_producer()

    def unregisterProducer(self) -> None:
        """Forget the registered producer."""
        self._producer = None

    def _schedule_pull(self) -> None:
        # Pull producers are asked for more from the reactor, not recursively.
        if self._pull_scheduled:
            return
        self._pull_scheduled = True

        def pull() -> None:
            self._pull_scheduled = False
            producer = self._producer
            if producer is not None and not self._producer_streaming and not self._writes and not self.is_reset:
                producer.resumeProducing()

        self.session.clock.callLater(0, pull)

    def _update_producer(self) -> None:
        producer = self._producer
        if producer is None:
            return
        if not self._producer_streaming:
            if not self._writes:
                self._schedule_pull()
            return
        if self._writes and not self._producer_paused:
            self._producer_paused = True
            producer.pauseProducing()
        elif not self._writes and self._producer_paused:
            self._producer_paused = False
            producer.resumeProducing()

    def _flush(self) -> None:
        """Send queued data as far as the send window and session allow."""
        session = self.session
        writes = self._writes
        done: list[Deferred] = []
        max_frame = session.config.max_frame_size
        while writes and self._send_window > 0 and session._can_send():
            item = writes[0]
            remaining = len(item.view) - item.offset
            n = min(remaining, self._send_window, max_frame)
            if n == remaining and item.offset == 0:
                payload = item.view.obj if n == len(item.view.obj) else item.view
            else:
                payload = item.view[item.offset : item.offset + n]
            session._emit(HEADER.pack(VERSION, TYPE_DATA, self._take_flags(), self.stream_id, n) + payload)
            self._send_window -= n
            item.offset += n
            if item.offset == len(item.view):
                writes.popleft()
                item.view.release()
                if item.deferred is not None:
                    done.append(item.deferred)
        if writes:
            session._blocked.add(self)
        else:
            session._blocked.discard(self)
            if self._fin_queued and not self._fin_sent and not session._closed:
                self._fin_sent = True
                session._emit(HEADER.pack(VERSION, TYPE_WINDOW_UPDATE, FLAG_FIN | self._take_flags(), self.stream_id, 0))
                self._fin_waiters.fire()
                self._maybe_done()
        self._update_producer()
        for d in done:
            d.callback(None)

    # -- events from the session -------------------------------------------

    def _on_window_update(self, delta: int) -> None:
        self._send_window += delta
        if self._writes or (self._fin_queued and not self._fin_sent):
            self._flush()

    def _on_data(self, data: bytes) -> None:
        n = len(data)
        if n > self._recv_credit:
            raise YamuxProtocolError(
                f"stream {self.stream_id} received {n} bytes with only {self._recv_credit} window left"
            )
        self._recv_credit -= n
        if self._expect is not None and n and not self._fin_received and self._reset_error is None:
            data = self._match_prefix(data)
            n = len(data)
            if not n:
                return
        if self._fin_received or self._read_discard or self._reset_error is not None:
            # Nobody will read this; count it consumed so the peer is not stalled.
            if n:
                self._consumed(n)
            return
        if not n:
            return
        self._chunks.append(data)
        self._buffered += n
        self._deliver()

    def _on_fin(self) -> None:
        if self._fin_received:
            return
        if self._expect is not None and self._reset_error is None:
            self._prefix_failed(self._expect[: self._expect_pos], "(then end of stream) fall short of")
            return
        self._fin_received = True
        self._remote_closed.fire()
        self._deliver()
        self._maybe_done()

    def _on_rst(self) -> None:
        self._terminate(StreamReset(f"stream {self.stream_id} reset by peer"))

    def _maybe_done(self) -> None:
        if self._fin_sent and self._fin_received and not self._done:
            self._done = True
            self.session._stream_done(self)
            self._closed.fire()

    def _terminate(self, exc: YamuxError) -> None:
        """Reset locally (no frame sent): fail everything, drop buffers."""
        if self._reset_error is not None:
            return
        self._reset_error = exc
        self._chunks.clear()
        self._head = 0
        self._buffered = 0
        writes, self._writes = self._writes, deque()
        self.session._blocked.discard(self)
        producer = self._producer
        if not self._done:
            self._done = True
            self.session._stream_done(self)
        self._remote_closed.fire()
        self._feed_pending()
        if self._data_cb is not None:
            self._deliver()
        for w in writes:
            if w.deferred is not None:
                if producer is not None:
                    w.deferred.callback(None)
                else:
                    w.deferred.errback(exc)
        if self._fin_queued and not self._fin_sent:
            # Wake close_write() waiters; the stream is gone anyway.
            self._fin_waiters.fire()
        if producer is not None:
            # Kept registered so its late writes are dropped quietly.
            try:
                producer.stopProducing()
            except Exception:
                log.failure("producer.stopProducing failed")
        self._closed.fire()


# --------------------------------------------------------------------------
# Session


@implementer(IPushProducer)
class YamuxSession:
    """A yamux session over one reliable byte channel (sans-IO).

    :param is_initiator: True on the dialer side (odd stream ids).
    :param send: called with bytes to write to the channel.  It must not call
        back into :meth:`data_received` synchronously.
    :param clock: timers for keep-alive pings and RTT measurement.
    :param config: tunables.
    :param close_transport: called once when the session ends on its own
        (:meth:`close`, protocol error, keep-alive timeout).

    Inbound streams go to :attr:`on_stream`; outbound ones come from
    :meth:`open_stream`.  As an ``IPushProducer`` the session can be
    registered on the underlying transport: while paused, stream data stays
    queued (and write Deferreds pending).
    """

    def __init__(
        self,
        is_initiator: bool,
        send: Callable[[bytes], object],
        clock: IReactorTime,
        config: Optional[YamuxConfig] = None,
        close_transport: Optional[Callable[[], object]] = None,
        on_stream: Optional[Callable[[YamuxStream], object]] = None,
    ) -> None:
        self.is_initiator = is_initiator
        self.config = config if config is not None else YamuxConfig()
        self.clock = clock
        #: Called with each stream the peer opens.
        self.on_stream = on_stream
        #: Latest measured round-trip time in seconds (None until a PING returned).
        self.rtt: Optional[float] = None
        #: GO_AWAY code received from the peer, if any.
        self.remote_go_away: Optional[int] = None
        self._send = send
        self._close_transport = close_transport
        self._decoder = FrameDecoder(self.config.max_window)
        self._streams: dict[int, YamuxStream] = {}
        self._inbound = 0
        self._outbound = 0
        self._next_id = 1 if is_initiator else 2
        self._blocked: set[YamuxStream] = set()
        self._paused = False
        self._closed = False
        self._go_away_sent = False
        self._close_reason: Optional[YamuxError] = None
        self._session_closed = _Observers()
        self._cork = 0
        self._out: list[bytes] = []
        self._out_size = 0
        self._ping_id = 0
        self._pings: dict[int, tuple[float, Deferred]] = {}
        self._keepalive_call: Optional[IDelayedCall] = None
        self._keepalive_ping: Optional[int] = None
        if self.config.ping_on_start:
            # Only for self.rtt; nobody waits on the result.
            self._start_ping()[1].addErrback(lambda f: None)
        if self.config.keepalive_interval:
            self._keepalive_call = clock.callLater(self.config.keepalive_interval, self._keepalive)

    @classmethod
    def for_channel(
        cls,
        channel,
        clock: IReactorTime,
        config: Optional[YamuxConfig] = None,
        on_stream: Optional[Callable[[YamuxStream], object]] = None,
    ) -> "YamuxSession":
        """Build a session over a secured channel (``write``,
        ``loseConnection``, ``is_initiator``, optionally ``registerProducer``).

        The returned session has ``data_received``/``connection_lost`` for
        the channel to call.  If the channel accepts a producer, the session
        registers itself so a full transport pauses stream writers.
        """
        session = cls(
            channel.is_initiator,
            channel.write,
            clock,
            config,
            close_transport=channel.loseConnection,
            on_stream=on_stream,
        )
        register = getattr(channel, "registerProducer", None)
        if register is not None:
            try:
                register(session, True)
            except RuntimeError:
                log.debug("yamux: channel already has a producer; running without transport back-pressure")
        return session

    def __repr__(self) -> str:
        role = "initiator" if self.is_initiator else "responder"
        return f"<YamuxSession {role} streams={len(self._streams)}{' closed' if self._closed else ''}>"

    # -- public API --------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the session has ended."""
        return self._closed

    @property
    def streams(self) -> dict[int, YamuxStream]:
        """Live streams by id (a copy)."""
        return dict(self._streams)

    def when_closed(self) -> Deferred:
        """Deferred firing (with None) when the session ends."""
        return self._session_closed.wait()

    def open_stream(self) -> YamuxStream:
        """Open an outbound stream (WINDOW_UPDATE+SYN is sent at once).

        Raises :class:`SessionClosed` after GO_AWAY (either way) or close,
        :class:`StreamLimitExceeded` past ``max_outbound_streams``.
        """
        if self._closed or self._go_away_sent:
            raise SessionClosed("session is closed")
        if self.remote_go_away is not None:
            raise SessionClosed(f"peer sent GO_AWAY (code {self.remote_go_away})")
        if self._outbound >= self.config.max_outbound_streams:
            raise StreamLimitExceeded(f"{self._outbound} outbound streams already open")
        stream_id = self._next_id
        if stream_id > _MAX_U32:
            raise SessionClosed("stream ids exhausted")
        self._next_id += 2
        stream = YamuxStream(self, stream_id, outbound=True)
        self._streams[stream_id] = stream
        self._outbound += 1
        delta = stream._unacked
        stream._unacked = 0
        stream._recv_credit += delta
        self._emit(HEADER.pack(VERSION, TYPE_WINDOW_UPDATE, FLAG_SYN, stream_id, delta))
        return stream

    def ping(self) -> Deferred:
        """Send a PING; the Deferred fires with the RTT in seconds (also
        stored in :attr:`rtt`), or fails with :class:`SessionClosed`."""
        if self._closed:
            return fail(SessionClosed("session is closed"))
        return self._start_ping()[1]

    def close(self, code: int = GO_AWAY_NORMAL) -> None:
        """Send GO_AWAY, reset every stream and close the channel."""
        if self._closed:
            return
        self._send_go_away(code)
        self._teardown(SessionClosed("session closed locally"))
        self._lose_transport()

    def data_received(self, data: bytes) -> None:
        """Feed bytes from the channel.  Never raises: protocol violations
        send GO_AWAY(protocol error) and close the session."""
        if self._closed:
            return
        self._cork += 1
        try:
            for frame in self._decoder.feed(data):
                self._handle_frame(frame)
                if self._closed:
                    break
        except YamuxProtocolError as e:
            log.warn("yamux protocol error: {error}", error=str(e))
            self._fatal(e, GO_AWAY_PROTOCOL_ERROR)
        except Exception as e:
            log.failure("yamux internal error")
            self._fatal(YamuxError(f"internal error: {e!r}"), GO_AWAY_INTERNAL_ERROR)
        finally:
            self._cork -= 1
            if not self._cork:
                self._flush_out()

    def connection_lost(self, reason: Optional[Failure] = None) -> None:
        """The channel is gone: reset every stream."""
        if self._closed:
            return
        why = reason.getErrorMessage() if isinstance(reason, Failure) else str(reason or "connection lost")
        self._teardown(StreamReset(f"connection lost: {why}"))

    # IPushProducer (towards the transport)

    def pauseProducing(self) -> None:
        """The transport is full: hold stream data until resumed."""
        self._paused = True

    def resumeProducing(self) -> None:
        """The transport drained: send queued stream data."""
        self._paused = False
        for stream in list(self._blocked):
            if self._paused:
                break
            stream._flush()

    def stopProducing(self) -> None:
        """The transport will not take more data."""
        self.connection_lost(Failure(SessionClosed("transport stopped")))

    # -- internals ---------------------------------------------------------

    def _can_send(self) -> bool:
        return not self._paused and not self._closed

    def _emit(self, frame: bytes) -> None:
        if self._closed:
            return
        if self._cork:
            self._out.append(frame)
            self._out_size += len(frame)
            if self._out_size >= self.config.max_frame_size:
                self._flush_out()
        else:
            self._send(frame)

    def _flush_out(self) -> None:
        out = self._out
        if not out:
            return
        self._out = []
        self._out_size = 0
        self._send(out[0] if len(out) == 1 else b"".join(out))

    def _handle_frame(self, frame: Frame) -> None:
        ftype = frame.type
        if ftype == TYPE_DATA or ftype == TYPE_WINDOW_UPDATE:
            self._handle_stream_frame(frame)
        elif ftype == TYPE_PING:
            self._handle_ping(frame)
        else:
            self._handle_go_away(frame)

    def _handle_stream_frame(self, frame: Frame) -> None:
        stream_id = frame.stream_id
        flags = frame.flags
        if stream_id == 0:
            raise YamuxProtocolError("DATA/WINDOW_UPDATE on stream 0")
        new = False
        if flags & FLAG_SYN:
            stream = self._incoming_syn(stream_id)
            new = stream is not None
        else:
            stream = self._streams.get(stream_id)
        if stream is None:
            # Stream already gone (or refused): late frames are harmless.
            return
        if flags & FLAG_RST:
            stream._on_rst()
            return
        if frame.type == TYPE_DATA:
            stream._on_data(frame.data)
        elif frame.length:
            stream._on_window_update(frame.length)
        if flags & FLAG_FIN:
            stream._on_fin()
        if new:
            self._deliver_new_stream(stream)

    def _incoming_syn(self, stream_id: int) -> Optional[YamuxStream]:
        if (stream_id & 1) == (1 if self.is_initiator else 0):
            raise YamuxProtocolError(f"peer opened stream {stream_id} with our parity")
        if stream_id in self._streams:
            raise YamuxProtocolError(f"duplicate SYN for stream {stream_id}")
        if self._go_away_sent or self._inbound >= self.config.max_inbound_streams or self.on_stream is None:
            log.debug("yamux: refusing inbound stream {stream}", stream=stream_id)
            self._emit(HEADER.pack(VERSION, TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, 0))
            return None
        stream = YamuxStream(self, stream_id, outbound=False)
        self._streams[stream_id] = stream
        self._inbound += 1
        return stream

    def _deliver_new_stream(self, stream: YamuxStream) -> None:
        try:
            self.on_stream(stream)  # type: ignore[misc]
        except Exception:
            log.failure("yamux on_stream callback failed; resetting stream {stream}", stream=stream.stream_id)
            stream.reset()
            return
        # Accept now unless the handler already sent something carrying ACK.
        if stream._need_ack and not stream.is_reset:
            stream._send_window_update(force=True)

    def _handle_ping(self, frame: Frame) -> None:
        if frame.flags & FLAG_SYN:
            self._emit(HEADER.pack(VERSION, TYPE_PING, FLAG_ACK, 0, frame.length))
        elif frame.flags & FLAG_ACK:
            entry = self._pings.pop(frame.length, None)
            if entry is None:
                return
            sent_at, d = entry
            self.rtt = max(0.0, self.clock.seconds() - sent_at)
            if self._keepalive_ping == frame.length:
                self._keepalive_ping = None
            d.callback(self.rtt)

    def _handle_go_away(self, frame: Frame) -> None:
        self.remote_go_away = frame.length
        if frame.length != GO_AWAY_NORMAL:
            log.warn("yamux peer sent GO_AWAY with error code {code}", code=frame.length)

    def _start_ping(self) -> tuple[int, Deferred]:
        opaque = self._ping_id
        self._ping_id = (self._ping_id + 1) & _MAX_U32
        d: Deferred = Deferred()
        self._pings[opaque] = (self.clock.seconds(), d)
        self._emit(HEADER.pack(VERSION, TYPE_PING, FLAG_SYN, 0, opaque))
        return opaque, d

    def _keepalive(self) -> None:
        self._keepalive_call = None
        if self._closed:
            return
        if self._keepalive_ping is not None:
            log.warn("yamux keep-alive ping unanswered; closing session")
            self._fatal(SessionClosed("keep-alive timeout"), GO_AWAY_INTERNAL_ERROR)
            return
        opaque, d = self._start_ping()
        d.addErrback(lambda f: None)
        self._keepalive_ping = opaque
        self._keepalive_call = self.clock.callLater(self.config.keepalive_interval, self._keepalive)

    def _stream_done(self, stream: YamuxStream) -> None:
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
            if stream.outbound:
                self._outbound -= 1
            else:
                self._inbound -= 1
        self._blocked.discard(stream)

    def _send_go_away(self, code: int) -> None:
        if not self._go_away_sent:
            self._go_away_sent = True
            self._emit(HEADER.pack(VERSION, TYPE_GO_AWAY, 0, 0, code))
            if self._cork:
                self._flush_out()

    def _fatal(self, exc: YamuxError, code: int) -> None:
        if self._closed:
            return
        self._send_go_away(code)
        self._teardown(exc)
        self._lose_transport()

    def _lose_transport(self) -> None:
        if self._close_transport is not None:
            close, self._close_transport = self._close_transport, None
            try:
                close()
            except Exception:
                log.failure("yamux: closing the transport failed")

    def _teardown(self, exc: YamuxError) -> None:
        if self._closed:
            return
        self._flush_out()
        self._closed = True
        self._close_reason = exc
        self._out = []
        if self._keepalive_call is not None and self._keepalive_call.active():
            self._keepalive_call.cancel()
        self._keepalive_call = None
        pings, self._pings = self._pings, {}
        for _, d in pings.values():
            d.errback(SessionClosed(str(exc)))
        stream_exc = exc if isinstance(exc, StreamReset) else StreamReset(f"session ended: {exc}")
        for stream in list(self._streams.values()):
            stream._terminate(stream_exc)
        self._streams.clear()
        self._blocked.clear()
        self._session_closed.fire()


# --------------------------------------------------------------------------
# Twisted adapter


class YamuxProtocol(Protocol):
    """Run a :class:`YamuxSession` directly over a Twisted transport.

    The session exists from ``connectionMade`` on (:attr:`session`); it is
    registered as the transport's producer so a full socket buffer pauses
    stream writers.
    """

    def __init__(
        self,
        clock: IReactorTime,
        is_initiator: bool,
        on_stream: Optional[Callable[[YamuxStream], object]] = None,
        config: Optional[YamuxConfig] = None,
    ) -> None:
        self.clock = clock
        self.is_initiator = is_initiator
        self.on_stream = on_stream
        self.config = config
        self.session: Optional[YamuxSession] = None

    def connectionMade(self) -> None:
        transport = self.transport
        self.session = YamuxSession(
            self.is_initiator,
            transport.write,
            self.clock,
            self.config,
            close_transport=transport.loseConnection,
            on_stream=self.on_stream,
        )
        try:
            transport.registerProducer(self.session, True)
        except RuntimeError:
            log.debug("yamux: transport already has a producer")

    def dataReceived(self, data: bytes) -> None:
        self.session.data_received(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.session is not None:
            self.session.connection_lost(reason)
