"""The stream interface application protocols are written against.

Every protocol handler (identify, ping, perf, kad, ...) gets one negotiated,
muxed stream with this pull API; the muxer (yamux, mplex) provides it.  The
exception types live here so that handlers need not import a muxer: a muxer's
own exceptions should be (or subclass) these.
"""

from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

from twisted.internet.defer import Deferred


class StreamError(Exception):
    """Base class of stream failures."""


class StreamReset(StreamError):
    """The stream was reset, locally, by the peer, or because its connection ended."""


class StreamClosed(StreamError):
    """A write after :meth:`Stream.close_write`."""


class IncompleteRead(StreamError, EOFError):
    """EOF came before :meth:`Stream.readexactly` had all its bytes."""

    def __init__(self, partial: bytes, expected: int) -> None:
        super().__init__(f"{len(partial)} bytes read before EOF, {expected} expected")
        self.partial = partial
        self.expected = expected


@runtime_checkable
class Stream(Protocol):
    """A bidirectional byte stream with half-close and flow control.

    Only one read may be pending at a time.
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
