"""The twisted.web ``Site`` that serves the HTTP API, with slow-client bounds.

twisted.web's only timeout is an idle timeout, reset by every byte received,
so a client that sends its request head one byte every few seconds
("slowloris") holds a connection for ever.  :class:`APIChannel` adds the
deadlines Go's ``http.Server`` has (``ReadHeaderTimeout``, a body deadline):

* the request head (request line and headers) must be complete
  ``header_timeout`` seconds after its first byte, or after the connection
  opened for the first request;
* the body, ``body_timeout`` seconds after the head;
* a keep-alive connection may wait ``idle_timeout`` seconds for its next
  request (twisted.web's own timeout; it is off while a request is being
  answered, so long model streams are not cut).

A connection past a deadline gets ``408 Request Timeout`` and is closed.
twisted.web spools a request body to a temporary file before the API sees
it, whatever its size: a body over ``max_body`` (the largest any route takes)
is answered ``413`` and the connection closed -- at once for a Content-Length
that announces it (4 GiB costs nothing), as soon as the excess arrives for a
chunked one.  :class:`APISite` also bounds the open connections: past
``max_connections`` a new one is answered ``503`` and closed at once.  Each event is counted in
:attr:`APISite.stats` and logged at most once per :data:`LOG_INTERVAL`.
"""

from __future__ import annotations

import json
from collections import Counter

from twisted.internet.protocol import Protocol
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from aicn.config.schema import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_IMAGE_EDIT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
)
from aicn.log import Logger, LogThrottle
from aicn.tcp import set_tcp_nodelay

__all__ = ["APISite", "APIChannel", "APIRequest", "STAT_NAMES"]

log = Logger()

#: Least seconds between two log lines about timed-out or refused connections.
LOG_INTERVAL = 10.0
#: Seconds a timed-out client gets to take the 408 before the socket is aborted.
ABORT_AFTER = 5.0

#: The counters in :attr:`APISite.stats`.
STAT_NAMES = (
    "connections",  # accepted
    "refused",  # over max_connections: 503 and closed
    "header_timeouts",  # request head not complete in time: 408 and closed
    "body_timeouts",  # request body not complete in time: 408 and closed
    "too_large",  # request body over max_body: 413 and closed
)

_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                     b"Content-Type: text/plain\r\nContent-Length: 16\r\n\r\nRequest timeout\n")
_TOO_LARGE_RESPONSE = (b"HTTP/1.1 413 Content Too Large\r\nConnection: close\r\n"
                       b"Content-Type: text/plain\r\nContent-Length: 23\r\n\r\nRequest body too large\n")


class APIRequest(Request):
    """A :class:`~twisted.web.server.Request` that stops storing its body past the site's ``max_body``."""

    _received = 0

    def handleContentChunk(self, data: bytes) -> None:
        channel = self.channel
        if channel is None or channel.refused:
            return
        self._received += len(data)
        limit = channel.site.max_body
        if limit is not None and self._received > limit:
            channel.refuse_too_large()  # a chunked body (a declared length is refused earlier)
            return
        super().handleContentChunk(data)


def _overload_response() -> bytes:
    body = json.dumps({"code": 5000, "message": "Too many connections", "data": None}).encode() + b"\n"
    return (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


class _Refuse(Protocol):
    """Answers 503 and hangs up (a connection over ``max_connections``)."""

    def connectionMade(self) -> None:
        self.transport.write(_overload_response())
        self.transport.loseConnection()


class APIChannel(HTTPChannel):
    """An :class:`~twisted.web.http.HTTPChannel` with head and body deadlines.

    The phases of a request: ``head`` (deadline running), ``body`` (deadline
    running), ``busy`` (being answered: no deadline), then ``idle`` (the
    idle timeout) until the next request's first byte.
    """

    _phase = "head"
    _deadline = None
    _abort_call = None
    #: Answered 413: every further byte is dropped.
    refused = False

    def connectionMade(self) -> None:
        set_tcp_nodelay(self.transport)
        super().connectionMade()
        self.site.channel_opened(self)
        self._start_deadline("head")

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            return
        if self._phase == "idle" and data:
            self._start_deadline("head")
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        limit = self.site.max_body
        if limit is not None and self.length is not None and self.length > limit:
            self.refuse_too_large()  # before a byte of it is read, let alone stored
        elif self.length == 0:
            self._stop_deadline("busy")  # allContentReceived follows at once
        else:
            self._start_deadline("body")

    def allContentReceived(self) -> None:
        self._stop_deadline("busy")
        super().allContentReceived()

    def requestDone(self, request) -> None:
        # Before the base class replays pipelined bytes through dataReceived.
        self._stop_deadline("idle")
        super().requestDone(request)

    def connectionLost(self, reason) -> None:
        self._stop_deadline("closed")
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        self.site.channel_closed(self)
        super().connectionLost(reason)

    # -- deadlines ---------------------------------------------------------------------

    def _start_deadline(self, phase: str) -> None:
        self._stop_deadline(phase)
        seconds = self.site.header_timeout if phase == "head" else self.site.body_timeout
        if seconds:
            self._deadline = self.callLater(seconds, self._expired)

    def _stop_deadline(self, phase: str) -> None:
        self._phase = phase
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def refuse_too_large(self) -> None:
        """Answer ``413`` (no answer has started: the body is not complete) and close."""
        if self.refused:
            return
        self.refused = True
        self._stop_deadline("closed")
        self.site.too_large()
        self.setTimeout(None)
        self.transport.write(_TOO_LARGE_RESPONSE)
        self.loseConnection()
        self._abort_call = self.callLater(ABORT_AFTER, self.transport.abortConnection)

    def _expired(self) -> None:
        self._deadline = None
        phase = self._phase
        self._phase = "closed"
        self.site.timed_out(phase)
        self.setTimeout(None)
        # No answer has started (a request is only dispatched once its body is in).
        self.transport.write(_TIMEOUT_RESPONSE)
        self.loseConnection()
        # A client that does not read could keep the socket in closing state.
        self._abort_call = self.callLater(ABORT_AFTER, self.transport.abortConnection)


class APISite(Site):
    """A quiet :class:`~twisted.web.server.Site` serving :class:`APIChannel`
    connections, at most ``max_connections`` at once (``None``: no bound);
    Nagle's algorithm is off on each, and request bodies are left to the API.

    A streamed answer is relayed in small writes (SSE events); with Nagle on,
    a write waits while an earlier one is unacknowledged, and the client may
    delay that ACK by up to 40 ms.  ``header_timeout`` and ``body_timeout``
    (seconds; 0 or None: none) are the request deadlines of
    :class:`APIChannel`, ``idle_timeout`` twisted.web's keep-alive timeout;
    ``max_body`` bytes (None: no bound) the largest request body taken in.
    """

    noisy = False

    def __init__(self, resource, *, reactor=None, header_timeout: float | None = DEFAULT_HEADER_TIMEOUT,
                 body_timeout: float | None = DEFAULT_BODY_TIMEOUT,
                 idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
                 max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
                 max_body: int | None = DEFAULT_IMAGE_EDIT_MAX_BODY_BYTES) -> None:
        # The API reads bodies itself, within its limits; twisted.web would
        # otherwise parse every form (of any size) into request.args first.
        super().__init__(resource, timeout=idle_timeout, reactor=reactor, parsePOSTFormSubmission=False)
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        self.max_body = max_body
        self.requestFactory = APIRequest
        #: Counters named in :data:`STAT_NAMES`.
        self.stats: Counter[str] = Counter()
        self.open_connections = 0
        self._timeout_log = LogThrottle(self.reactor, self._log_timeouts, LOG_INTERVAL)
        self._refused_log = LogThrottle(self.reactor, self._log_refused, LOG_INTERVAL)
        self._too_large_log = LogThrottle(self.reactor, self._log_too_large, LOG_INTERVAL)

    def protocol(self) -> APIChannel:
        """The channel for a new connection (``Factory.buildProtocol`` calls it)."""
        return APIChannel()


    def buildProtocol(self, addr):
        if self.max_connections is not None and self.open_connections >= self.max_connections:
            self.stats["refused"] += 1
            self._refused_log.hit()
            return _Refuse()
        return super().buildProtocol(addr)

    def stopFactory(self) -> None:
        self._timeout_log.stop()
        self._refused_log.stop()
        self._too_large_log.stop()
        super().stopFactory()

    # -- channel events ------------------------------------------------------------------

    def channel_opened(self, channel: APIChannel) -> None:
        self.open_connections += 1
        self.stats["connections"] += 1

    def channel_closed(self, channel: APIChannel) -> None:
        self.open_connections -= 1

    def timed_out(self, phase: str) -> None:
        self.stats["header_timeouts" if phase == "head" else "body_timeouts"] += 1
        self._timeout_log.hit()

    def too_large(self) -> None:
        self.stats["too_large"] += 1
        self._too_large_log.hit()

    def _log_too_large(self, count: int) -> None:
        log.info("HTTP API: refused {count} request(s) with a body over {limit} bytes ({total} since start)",
                 count=count, limit=self.max_body, total=self.stats["too_large"])

    def _log_timeouts(self, count: int) -> None:
        log.info("HTTP API: closed {count} connection(s) that sent a request too slowly (header timeout "
                 "{header}s, body timeout {body}s; {heads} heads and {bodies} bodies since start)",
                 count=count, header=self.header_timeout, body=self.body_timeout,
                 heads=self.stats["header_timeouts"], bodies=self.stats["body_timeouts"])

    def _log_refused(self, count: int) -> None:
        log.warn("HTTP API: refused {count} connection(s) over the limit of {limit} open connections "
                 "({total} since start)", count=count, limit=self.max_connections,
                 total=self.stats["refused"])
