"""An in-memory stream pair implementing :class:`aicn.p2p.stream.Stream`.

Each direction has a bounded receive buffer (the "window"): a writer's
Deferred fires only once all its bytes fit into the reader's buffer, and the
reader frees space by reading, so back-pressure works as with yamux.
Everything runs synchronously (no reactor): a write that fits wakes a pending
read at once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

from twisted.internet.defer import Deferred, fail, succeed

from aicn.p2p.keys import PrivateKey
from aicn.p2p.peerid import PeerID
from aicn.p2p.stream import IncompleteRead, StreamClosed, StreamReset


class _Write:
    __slots__ = ("data", "offset", "d")

    def __init__(self, data: bytes, d: Deferred) -> None:
        self.data = memoryview(data)
        self.offset = 0
        self.d = d


class FakeStream:
    """One end of a :class:`StreamPair`."""

    def __init__(self, name: str, window: int, protocol: Optional[str]) -> None:
        self.name = name
        self.protocol = protocol
        self.window = window
        self.peer: FakeStream  # set by StreamPair
        self._inbox = bytearray()
        self._fin_received = False
        self._discard = False
        self._reset: Optional[StreamReset] = None
        self._pending: Optional[tuple[Deferred, int, bool, bytearray]] = None
        self._waking = False
        self._rewake = False
        self._writes: deque[_Write] = deque()
        self._fin_queued = False
        self.fin_sent = False
        self._fin_waiters: list[Deferred] = []
        #: Statistics for assertions.
        self.bytes_written = 0  # bytes moved into the peer's buffer
        self.bytes_read = 0  # bytes handed to our reader
        self.max_buffered = 0  # high-water mark of our receive buffer
        self.write_calls = 0

    # -- state ----------------------------------------------------------------

    @property
    def is_reset(self) -> bool:
        return self._reset is not None

    @property
    def buffered(self) -> int:
        return len(self._inbox)

    @property
    def remote_closed(self) -> bool:
        """The peer sent FIN."""
        return self._fin_received

    # -- reading --------------------------------------------------------------

    def read(self, max_bytes: int = -1) -> Deferred:
        self._check_read()
        if max_bytes == 0:
            return succeed(b"")
        if self._inbox:
            return succeed(self._take(max_bytes))
        if self._reset is not None:
            return fail(self._reset)
        if self._fin_received or self._discard:
            return succeed(b"")
        d: Deferred = Deferred()
        self._pending = (d, max_bytes, False, bytearray())
        return d

    def readexactly(self, n: int) -> Deferred:
        self._check_read()
        if n < 0:
            raise ValueError("n must be >= 0")
        if len(self._inbox) >= n:
            return succeed(self._take(n))
        if self._reset is not None:
            return fail(self._reset)
        if self._fin_received or self._discard:
            return fail(IncompleteRead(self._take(-1), n))
        d: Deferred = Deferred()
        self._pending = (d, n, True, bytearray())
        self._wake()
        return d

    def _check_read(self) -> None:
        if self._pending is not None:
            raise RuntimeError("a read is already pending")

    def _take(self, n: int) -> bytes:
        if n < 0 or n >= len(self._inbox):
            data = bytes(self._inbox)
            self._inbox.clear()
        else:
            data = bytes(self._inbox[:n])
            del self._inbox[:n]
        self.bytes_read += len(data)
        if data:
            self.peer._pump()  # freed window: the writer may continue
        return data

    def _wake(self) -> None:
        """Satisfy (or fail) the pending read if possible."""
        # Reading frees window, which lets the writer push more and call us
        # again; the outer call sees that data, so a nested one does nothing.
        if self._waking:
            self._rewake = True
            return
        self._waking = True
        try:
            while self._pending is not None:
                self._rewake = False
                self._wake_pending()
                if not self._rewake:
                    break
        finally:
            self._waking = False

    def _wake_pending(self) -> None:
        d, n, exact, parts = self._pending
        if self._reset is not None:
            self._pending = None
            d.errback(self._reset)
            return
        if not exact:
            if self._inbox:
                self._pending = None
                d.callback(self._take(n))
            elif self._fin_received or self._discard:
                self._pending = None
                d.callback(b"")
            return
        # readexactly: consume as data arrives so n may exceed the window.
        while self._inbox and len(parts) < n:
            parts += self._take(n - len(parts))
        if len(parts) == n:
            self._pending = None
            d.callback(bytes(parts))
        elif self._fin_received or self._discard:
            self._pending = None
            d.errback(IncompleteRead(bytes(parts), n))

    # -- writing --------------------------------------------------------------

    def write(self, data: bytes) -> Deferred:
        self.write_calls += 1
        if self._reset is not None:
            return fail(self._reset)
        if self._fin_queued:
            return fail(StreamClosed("write after close_write"))
        if not data:
            return succeed(None)
        d: Deferred = Deferred()
        self._writes.append(_Write(bytes(data), d))
        self._pump()
        return d

    def close_write(self) -> Deferred:
        if self._reset is not None:
            return succeed(None) if self.fin_sent else fail(self._reset)
        if self.fin_sent:
            return succeed(None)
        d: Deferred = Deferred()
        self._fin_waiters.append(d)
        self._fin_queued = True
        self._pump()
        return d

    def close(self) -> Deferred:
        if self._reset is None:
            self._discard = True
            self._inbox.clear()
            self.peer._pump()
            self._wake()
        return self.close_write()

    def reset(self) -> None:
        if self._reset is not None:
            return
        self._terminate(StreamReset(f"{self.name} reset locally"))
        self.peer._terminate(StreamReset(f"{self.name} reset by peer"))

    def _terminate(self, exc: StreamReset) -> None:
        if self._reset is not None:
            return
        self._reset = exc
        self._inbox.clear()
        writes, self._writes = self._writes, deque()
        waiters, self._fin_waiters = self._fin_waiters, []
        self._wake()
        for w in writes:
            w.d.errback(exc)
        for d in waiters:
            d.errback(exc)

    def _pump(self) -> None:
        """Move queued writes into the peer's buffer as far as its window allows."""
        peer = self.peer
        done = []
        while self._writes and self._reset is None:
            w = self._writes[0]
            space = peer.window - len(peer._inbox)
            if space <= 0:
                break
            if peer._discard:  # the reader closed: bytes vanish, as on the wire
                chunk_len = len(w.data) - w.offset
            else:
                chunk = w.data[w.offset : w.offset + space]
                chunk_len = len(chunk)
                peer._inbox += chunk
                peer.max_buffered = max(peer.max_buffered, len(peer._inbox))
            w.offset += chunk_len
            self.bytes_written += chunk_len
            if w.offset == len(w.data):
                self._writes.popleft()
                done.append(w.d)
        if not self._writes and self._fin_queued and not self.fin_sent and self._reset is None:
            self.fin_sent = True
            peer._fin_received = True
            waiters, self._fin_waiters = self._fin_waiters, []
            done.extend(waiters)
        peer._wake()
        for d in done:
            d.callback(None)


class StreamPair:
    """Two connected :class:`FakeStream` ends, ``a`` (dialer) and ``b`` (listener)."""

    def __init__(self, window: int = 256 * 1024, protocol: Optional[str] = None) -> None:
        self.a = FakeStream("a", window, protocol)
        self.b = FakeStream("b", window, protocol)
        self.a.peer = self.b
        self.b.peer = self.a


@dataclass
class FakeContext:
    """Connection metadata for identify handlers (implements ``IdentifyContext``)."""

    local_key: PrivateKey
    remote_peer: PeerID
    remote_addr: Optional[bytes]
    info_factory: Callable[[], object] = field(default=lambda: None)

    def info(self):
        return self.info_factory()
