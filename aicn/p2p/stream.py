"""The stream interface application protocols are written against.

Every protocol handler (identify, ping, perf, kad, ...) gets one negotiated,
muxed stream with this pull API; the muxer (yamux, mplex) provides it.  The
exception types live here so that handlers need not import a muxer: a muxer's
own exceptions should be (or subclass) these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional, Protocol, runtime_checkable

from twisted.internet.defer import Deferred


class StreamError(Exception):
    """Base class of stream failures."""


class StreamReset(StreamError):
    """The stream was reset, locally, by the peer, or because its connection ended."""


class StreamClosed(StreamError):
    """A write after :meth:`Stream.close_write`."""


class PrefixMismatch(StreamReset):
    """The first inbound bytes differed from those :meth:`Stream.expect_prefix`
    required (or the peer closed before sending them all); the stream was reset."""

    def __init__(self, message: str, received: bytes = b"") -> None:
        super().__init__(message)
        #: The bytes that arrived in place of the prefix (up to its length).
        self.received = received


class IncompleteRead(StreamError, EOFError):
    """EOF came before :meth:`Stream.readexactly` had all its bytes."""

    def __init__(self, partial: bytes, expected: int) -> None:
        super().__init__(f"{len(partial)} bytes read before EOF, {expected} expected")
        self.partial = partial
        self.expected = expected


@runtime_checkable
class Stream(Protocol):
    """A bidirectional byte stream with half-close and flow control.

    Only one read may be pending at a time.  This pull API is all that the
    request/response protocols (identify, ping, kad, relay, AutoNAT) use;
    :class:`MuxedStream` adds what long-lived relays of bytes need.
    """

    #: The protocol id negotiated for this stream (e.g. ``"/ipfs/ping/1.0.0"``).
    protocol: Optional[str]

    def read(self, max_bytes: int = -1) -> Deferred:
        """Fire with 1..max_bytes bytes (all buffered ones if negative), or
        ``b""`` once the peer half-closed; fail with :class:`StreamReset`."""

    def readexactly(self, n: int) -> Deferred:
        """Fire with exactly ``n`` bytes; fail with :class:`IncompleteRead`
        (an ``EOFError``) or :class:`StreamReset`."""

    def write(self, data: bytes) -> Deferred:
        """Queue ``data``; fire once it was accepted within the peer's flow
        control window.  Awaiting it is the back-pressure point."""

    def close_write(self) -> Deferred:
        """Half-close (FIN) after all queued data."""

    def close(self) -> Deferred:
        """Half-close and discard any further inbound data."""

    def reset(self) -> None:
        """Abort both directions; pending operations fail with :class:`StreamReset`."""

    @property
    def is_reset(self) -> bool:
        """True once the stream was reset (either side) or its connection ended."""


@runtime_checkable
class MuxedStream(Stream, Protocol):
    """A :class:`Stream` of a muxer, with push mode and flow control hooks.

    Besides pulling with :meth:`read`, a reader may switch to push mode
    (:meth:`set_data_callback`, with :meth:`pauseProducing` and
    :meth:`resumeProducing` for back-pressure: the stream is an
    ``IPushProducer`` of its inbound bytes); a writer may register a producer
    (the stream is an ``IConsumer`` of outbound bytes).  The chat-proxy
    tunnel, pubsub and circuit relay use these; yamux provides them.
    """

    def when_closed(self) -> Deferred:
        """A new Deferred firing with None once both directions are closed or the stream reset."""

    def expect_prefix(self, data: bytes, error: Optional[Callable[[bytes], StreamReset]] = None) -> None:
        """Require the first inbound bytes to be exactly ``data`` and strip them;
        other bytes reset the stream with ``error(received)`` (default
        :class:`PrefixMismatch`).  Call before any data arrived."""

    # push mode (IPushProducer of inbound bytes)

    def set_data_callback(self, on_data: Callable[[bytes], object],
                          on_eof: Optional[Callable[[Optional[Exception]], object]] = None) -> None:
        """Deliver every inbound chunk to ``on_data``; ``on_eof(None)`` on the
        peer's FIN, ``on_eof(exc)`` on a reset."""

    def pauseProducing(self) -> None:
        """Stop delivering inbound data (and granting the peer send window)."""

    def resumeProducing(self) -> None:
        """Resume delivery after :meth:`pauseProducing`."""

    def stopProducing(self) -> None:
        """The consumer is gone: reset the stream."""

    # IConsumer of outbound bytes

    def registerProducer(self, producer, streaming: bool) -> None:
        """Register a producer, paused while the peer's window is full."""

    def unregisterProducer(self) -> None:
        """Forget the registered producer."""
