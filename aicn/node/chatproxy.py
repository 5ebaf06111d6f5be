"""Streaming chat between nodes: the ``/chat-proxy/0.0.1`` tunnel.

The requester writes one raw HTTP/1.1 request onto a libp2p stream
(``POST /api/v0/chat/completion?model=<m>&project=<p>``, JSON body); the
worker forwards the body to its registered model API and writes the model's
raw HTTP/1.1 response back, chunk by chunk, then closes the stream.  SSE
framing is the model's business and passes through untouched.

Back-pressure runs end to end: the worker stops reading from the model while
the yamux send window is full; the requester registers the yamux stream as
the push producer of the client's HTTP response, so a slow client stops the
window from being refilled.  A client that goes away resets the stream, and
a reset stream makes the worker abort the model request.

* Worker: :func:`serve_chat_proxy` / :func:`chat_proxy_handler`.
* Requester: :func:`proxy_chat_stream` → :class:`ProxyResponse`
  (:meth:`~ProxyResponse.relay_to` a twisted.web request, or
  :meth:`~ProxyResponse.iter_body`).
* Same node: :func:`local_chat_stream`.
"""

from __future__ import annotations

import inspect
import json
from typing import AsyncIterator, Awaitable, Callable, Optional, Union
from urllib.parse import urlencode

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from aicn.errors import AICNError, ErrorCode
from aicn.log import Logger
from aicn.models.chat import CHAT_TIMEOUT, open_chat_stream, parse_chat_reply
from aicn.models.errors import ModelError
from aicn.models.http import BodyPump, Timeout, body_ended_cleanly, read_body, with_timeout
from aicn.node.httpwire import (
    END,
    LAST_CHUNK,
    HTTPWireError,
    MessageParser,
    RequestHead,
    ResponseHead,
    encode_chunk,
    encode_request_head,
    encode_response_head,
    end_to_end_headers,
)
from aicn.p2p.stream import StreamError
from aicn.p2p.swarm import ProtocolRejected

log = Logger()

#: The protocol id of the tunnel.
CHAT_PROXY = "/chat-proxy/0.0.1"
#: The request path the Go node writes (the worker ignores it).
CHAT_PATH = b"/api/v0/chat/completion"
#: Limits on the tunnelled request.
MAX_REQUEST_HEAD = 64 * 1024
MAX_REQUEST_BODY = 1024 * 1024
#: A requester must deliver its whole request within this time.
REQUEST_READ_TIMEOUT = 30.0
READ_SIZE = 64 * 1024

LookupModel = Callable[[str, str], Union[Optional[str], Awaitable[Optional[str]]]]


def stream_error(message: str) -> AICNError:
    """1017 with the spec's message ("Open stream with peer node failed", ...)."""
    return AICNError(ErrorCode.STREAM, message)


# -- worker side ---------------------------------------------------------------------------


async def _read_request(stream) -> tuple[RequestHead, bytes]:
    parser = MessageParser("request", max_head=MAX_REQUEST_HEAD, max_body=MAX_REQUEST_BODY)
    head: Optional[RequestHead] = None
    body: list[bytes] = []
    while True:
        data = await stream.read(READ_SIZE)
        events = parser.feed(data) if data else parser.feed_eof()
        for event in events:
            if isinstance(event, RequestHead):
                head = event
            elif event is END:
                assert head is not None
                return head, b"".join(body)
            else:
                body.append(event)


def _upstream_headers(head: RequestHead) -> dict:
    headers: dict = {}
    for name, value in end_to_end_headers(head.headers):
        if name.lower() in (b"host", b"expect"):
            continue  # the model's own Host is set by the client library
        headers.setdefault(name, []).append(value)
    return headers


async def _write_error(stream, status: int, reason: bytes, error: AICNError) -> None:
    body = json.dumps(error.to_json()).encode()
    head = encode_response_head(status, reason, [(b"Content-Type", b"application/json"),
                                                 (b"Content-Length", b"%d" % len(body))])
    await stream.write(head + body)
    await stream.close()


async def serve_chat_proxy(stream, conn, lookup_model: LookupModel, *, reactor, client=None,
                           head_timeout: float = CHAT_TIMEOUT) -> None:
    """Serve one ``/chat-proxy/0.0.1`` stream (the worker side).

    ``lookup_model(project, model)`` returns the model API URL (or a
    Deferred/coroutine of it), or None: then the stream is reset, as the Go
    node does.  ``client`` is an optional treq client / IAgent for the model
    call.  A model that cannot be reached is answered with ``502`` and a
    ``{code: 1006, message}`` JSON body.  Never raises.
    """
    peer = str(getattr(conn, "peer", "?"))
    try:
        head, body = await with_timeout(Deferred.fromCoroutine(_read_request(stream)), REQUEST_READ_TIMEOUT,
                                        reactor)
        project, model = head.query_value("project"), head.query_value("model")
    except (HTTPWireError, Timeout, StreamError, EOFError) as exc:
        log.info("Bad chat-proxy request from {peer}: {error}", peer=peer, error=exc)
        stream.reset()
        return
    try:
        api_url = lookup_model(project, model)
        if isinstance(api_url, Deferred) or inspect.isawaitable(api_url):
            api_url = await api_url
    except Exception:
        log.failure("Model lookup failed for {project}/{model}", project=project, model=model)
        api_url = None
    if not api_url:
        log.info("chat-proxy from {peer}: no model {project}/{model}", peer=peer, project=project, model=model)
        stream.reset()
        return

    # From here on the request side of the stream only tells us whether the
    # requester is still there: a reset means "abort the model request".
    # (The requester's FIN came with its request, so watch for the stream
    # ending, not for EOF.)
    abort: list[Callable[[], object]] = []

    def ended(_=None) -> None:
        if stream.is_reset:
            log.debug("chat-proxy requester {peer} went away", peer=peer)
            for cancel in list(abort):
                cancel()

    stream.set_data_callback(lambda _data: None, ended)
    stream.when_closed().addCallback(ended)

    upstream = Deferred.fromCoroutine(open_chat_stream(api_url, body, _upstream_headers(head), reactor=reactor,
                                                       client=client, timeout=head_timeout))
    abort.append(upstream.cancel)
    try:
        response = await upstream
    except CancelledError:
        stream.reset()
        return
    except ModelError as exc:
        log.info("chat-proxy model {url} failed: {error}", url=api_url, error=exc.message)
        try:
            await _write_error(stream, 502, b"Bad Gateway", exc)
        except StreamError:
            stream.reset()
        return
    abort.clear()

    await _relay_upstream(stream, response, abort, peer)


async def _relay_upstream(stream, response, abort: list, peer: str) -> None:
    """Write the model's response onto the stream as it arrives."""
    length = response.length if isinstance(response.length, int) else None
    headers = end_to_end_headers([(n, v) for n, vs in response.headers.getAllRawHeaders() for v in vs])
    chunked = length is None
    headers.append((b"Transfer-Encoding", b"chunked") if chunked else (b"Content-Length", b"%d" % length))
    finished: Deferred = Deferred()
    failed: list[Failure] = []

    def on_data(data: bytes) -> None:
        d = stream.write(encode_chunk(data) if chunked else data)
        if not d.called:
            # The yamux window is full: stop reading the model until it drains.
            pump.pauseProducing()
            d.addCallback(lambda _: pump.resumeProducing())
        d.addErrback(write_failed)

    def write_failed(failure: Failure) -> None:
        failed.append(failure)
        pump.abort()

    def on_end(reason: Failure) -> None:
        finished.callback(reason.value)  # a value: "ended" is not an error here

    pump = BodyPump(on_data, on_end)
    abort.append(pump.abort)
    try:
        await stream.write(encode_response_head(response.code, response.phrase or b"", headers))
    except StreamError:
        pump.abort()
        response.deliverBody(pump)  # the body is then discarded, the connection closed
        stream.reset()
        return
    response.deliverBody(pump)
    reason = await finished
    if failed or not body_ended_cleanly(reason):
        log.info("chat-proxy relay to {peer} ended early: {reason}", peer=peer,
                 reason=failed[0].getErrorMessage() if failed else reason)
        stream.reset()
        return
    try:
        if chunked:
            await stream.write(LAST_CHUNK)
        await stream.close()
    except StreamError:
        stream.reset()


def chat_proxy_handler(lookup_model: LookupModel, *, reactor, client=None, head_timeout: float = CHAT_TIMEOUT):
    """An ``async def handler(stream, conn)`` for ``host.set_stream_handler(CHAT_PROXY, ...)``."""

    async def handler(stream, conn) -> None:
        await serve_chat_proxy(stream, conn, lookup_model, reactor=reactor, client=client,
                               head_timeout=head_timeout)

    return handler


# -- requester side ---------------------------------------------------------------------------


class ProxyResponse:
    """A worker's HTTP response, head parsed, body still on the stream.

    Consume the body once: :meth:`relay_to` (a twisted.web request) or
    :meth:`iter_body`; or drop it with :meth:`abort`.
    """

    def __init__(self, stream, parser: MessageParser, head: ResponseHead, pending: list[bytes], ended: bool) -> None:
        self.stream = stream
        self.status: int = head.status
        self.reason: bytes = head.reason
        self.headers: list[tuple[bytes, bytes]] = head.headers
        self._parser = parser
        self._pending = pending
        self._ended = ended
        self._consumed = False
        self._aborted = False

    @property
    def content_type(self) -> bytes:
        values = [v for n, v in self.headers if n.lower() == b"content-type"]
        return values[0] if values else b""

    def abort(self) -> None:
        """Drop the response: reset the stream (the worker aborts the model)."""
        self._aborted = True
        self.stream.reset()

    def _take(self) -> None:
        if self._consumed:
            raise RuntimeError("the response body was already consumed")
        self._consumed = True

    async def iter_body(self) -> AsyncIterator[bytes]:
        """Yield body chunks as they arrive; raise 1017 "Read chat stream
        failed" if the worker or the stream fails before the end."""
        self._take()
        for chunk in self._pending:
            yield chunk
        ended = self._ended
        try:
            while not ended:
                try:
                    data = await self.stream.read(READ_SIZE)
                    events = self._parser.feed(data) if data else self._parser.feed_eof()
                except (StreamError, HTTPWireError, EOFError) as exc:
                    log.info("Reading chat stream failed: {error}", error=exc)
                    self.stream.reset()
                    raise stream_error("Read chat stream failed") from None
                for event in events:
                    if event is END:
                        ended = True
                    else:
                        yield event
        except GeneratorExit:
            self.stream.reset()
            raise
        await _close_quietly(self.stream)

    def deliver(self, on_data: Callable[[bytes], object],
                on_end: Callable[[bool, Optional[str]], object]):
        """Push the body to ``on_data(chunk)`` as it arrives, then call
        ``on_end(ok, why)`` once: ``ok`` when the whole body came, else
        ``why`` says what broke (None after :meth:`abort`).  The stream is
        then closed (reset if the body was not complete).

        Returns the stream, an ``IPushProducer``: pausing it stops the yamux
        window from being refilled, which pushes back on the worker.
        """
        self._take()
        stream, parser = self.stream, self._parser
        over: list[bool] = []

        def end(ok: bool, why: Optional[str]) -> None:
            if over:
                return
            over.append(True)
            if ok:
                Deferred.fromCoroutine(_close_quietly(stream))
            else:
                stream.reset()
            on_end(ok, why)

        def handle(events) -> None:
            for event in events:
                if over:
                    return
                if event is END:
                    end(True, None)
                else:
                    on_data(event)

        def on_stream_data(data: bytes) -> None:
            try:
                handle(parser.feed(data))
            except HTTPWireError as exc:
                end(False, f"bad HTTP from worker: {exc}")

        def on_eof(exc: Optional[Exception]) -> None:
            if exc is not None:
                end(False, None if stream.is_reset and self._aborted else f"stream failed: {exc}")
                return
            try:
                handle(parser.feed_eof())
            except HTTPWireError as exc:
                end(False, f"worker closed the stream early: {exc}")

        for chunk in self._pending:
            on_data(chunk)
        if self._ended:
            end(True, None)
        else:
            stream.set_data_callback(on_stream_data, on_eof)
        return stream

    def relay_to(self, request) -> Deferred:
        """Copy status, headers and body to a twisted.web ``request`` and finish it.

        The stream is the request's push producer, so a slow client pauses
        the stream (and so the worker).  If the client goes away the stream
        is reset; if the worker fails mid-body the client's connection is
        closed without the terminating chunk, so the client sees an
        incomplete response.  Fires with True when the whole body was
        relayed, False otherwise; never fails.
        """
        self._take()
        done: Deferred = Deferred()
        stream, parser = self.stream, self._parser
        state = {"over": False, "producer": False}

        request.setResponseCode(self.status, self.reason or None)
        for name, value in end_to_end_headers(self.headers):
            request.responseHeaders.addRawHeader(name, value)

        def end(ok: bool, why: object = None) -> None:
            if state["over"]:
                return
            state["over"] = True
            if state["producer"]:
                state["producer"] = False
                request.unregisterProducer()
            if ok:
                request.finish()
                Deferred.fromCoroutine(_close_quietly(stream))
            else:
                stream.reset()
                if why is not None:
                    log.info("chat stream relay ended early: {why}", why=why)
                    # Headers are out: end the response without the final
                    # chunk so that the client knows it is incomplete.
                    request.loseConnection()
            done.callback(ok)

        def client_gone(failure: Failure) -> None:
            if not state["over"]:
                log.debug("HTTP client left a chat stream: {why}", why=failure.getErrorMessage())
                state["producer"] = False  # the channel is gone with it
                end(False)

        def handle(events) -> None:
            for event in events:
                if state["over"]:
                    return
                if event is END:
                    end(True)
                else:
                    request.write(event)

        def on_data(data: bytes) -> None:
            try:
                handle(parser.feed(data))
            except HTTPWireError as exc:
                end(False, f"bad HTTP from worker: {exc}")

        def on_eof(exc: Optional[Exception]) -> None:
            if exc is not None:
                end(False, f"stream failed: {exc}")
                return
            try:
                handle(parser.feed_eof())
            except HTTPWireError as exc:
                end(False, f"worker closed the stream early: {exc}")

        request.notifyFinish().addErrback(client_gone)
        for chunk in self._pending:
            request.write(chunk)
        if self._ended:
            end(True)
            return done
        if state["over"]:
            return done
        request.registerProducer(stream, True)
        state["producer"] = True
        stream.set_data_callback(on_data, on_eof)
        return done


async def _close_quietly(stream) -> None:
    try:
        await stream.close()
    except StreamError:
        pass


async def proxy_chat_stream(host, peer, project: str, model: str, body_json_bytes: bytes,
                            original_host_header: Optional[Union[str, bytes]] = None, *, addrs=None,
                            reactor=None, head_timeout: float = CHAT_TIMEOUT) -> ProxyResponse:
    """Send a streaming chat request to ``peer`` over ``/chat-proxy/0.0.1``.

    Returns once the worker's response head arrived.  Raises
    :class:`~aicn.errors.AICNError` 1017 "Open stream with peer node
    failed", "Write chat stream failed" or "Read chat stream failed", and
    1004 when the head has not arrived ``head_timeout`` seconds after the
    call (dialling and opening the stream included; the stream is reset).
    The body that follows the head is not bounded by it.
    ``original_host_header`` is the client's Host header (spec behaviour).
    """
    reactor = reactor if reactor is not None else host.reactor
    opened: list = []
    d = Deferred.fromCoroutine(_request_head(host, peer, project, model, body_json_bytes, original_host_header,
                                             addrs, opened))
    try:
        return await with_timeout(d, head_timeout, reactor)
    except CancelledError:
        # The client went away: the worker must learn it too (a reset aborts its model call).
        for stream in opened:
            stream.reset()
        raise
    except Timeout:
        for stream in opened:
            stream.reset()
        log.info("chat-proxy: no response head from {peer} within {timeout}s", peer=str(peer),
                 timeout=head_timeout)
        raise AICNError(ErrorCode.TIMEOUT,
                        f"Processing timeout: no answer from node {peer} within {head_timeout:g} s") from None


async def _request_head(host, peer, project: str, model: str, body_json_bytes: bytes, original_host_header,
                        addrs, opened: list) -> ProxyResponse:
    """Open the stream (appended to ``opened``), write the request, read the response head."""
    try:
        # Lazy: when identify says the worker serves the tunnel, the request
        # goes out right behind the protocol proposal, one round trip sooner.
        # A refusal then shows up on the first read (ProtocolRejected).
        stream = await host.new_stream(peer, [CHAT_PROXY], addrs, lazy=True)
    except CancelledError:
        raise
    except Exception as exc:
        log.info("chat-proxy: opening a stream to {peer} failed: {error}", peer=str(peer), error=exc)
        raise stream_error("Open stream with peer node failed") from None
    opened.append(stream)

    host_header = original_host_header or b"127.0.0.1:8080"
    if isinstance(host_header, str):
        host_header = host_header.encode("latin-1", "replace")
    target = CHAT_PATH + b"?" + urlencode([("model", model), ("project", project)]).encode("ascii")
    try:
        head = encode_request_head(b"POST", target, [
            (b"Host", host_header),
            (b"User-Agent", b"aicn"),
            (b"Content-Length", b"%d" % len(body_json_bytes)),
            (b"Content-Type", b"application/json"),
        ])
    except HTTPWireError:
        stream.reset()
        raise stream_error("Write chat stream failed") from None
    try:
        await stream.write(head + body_json_bytes)
        await stream.close_write()
    except StreamError as exc:
        log.info("chat-proxy: writing to {peer} failed: {error}", peer=str(peer), error=exc)
        stream.reset()
        raise stream_error(_failed(exc, "Write chat stream failed")) from None

    parser = MessageParser("response", max_head=MAX_REQUEST_HEAD)
    response_head = None
    pending: list[bytes] = []
    ended = False
    try:
        while response_head is None:
            data = await stream.read(READ_SIZE)
            events = parser.feed(data) if data else parser.feed_eof()
            for event in events:
                if isinstance(event, ResponseHead):
                    response_head = event
                elif event is END:
                    ended = True
                else:
                    pending.append(event)
    except (StreamError, HTTPWireError, EOFError) as exc:
        log.info("chat-proxy: reading the response of {peer} failed: {error}", peer=str(peer), error=exc)
        stream.reset()
        raise stream_error(_failed(exc, "Read chat stream failed")) from None
    return ProxyResponse(stream, parser, response_head, pending, ended)


def _failed(exc: Exception, message: str) -> str:
    # A lazily opened stream that the worker refused: the open failed, as
    # it does when the refusal comes during a full negotiation.
    return "Open stream with peer node failed" if isinstance(exc, ProtocolRejected) else message


# -- same node ------------------------------------------------------------------------------


def _discard(response) -> None:
    """Drop an unbuffered treq response: its connection is closed."""
    pump = BodyPump(lambda _data: None, lambda _reason: None)
    response.deliverBody(pump)
    pump.abort()


async def _model_error(response, reactor) -> ModelError:
    """The :class:`ModelError` for a model's non-200 streaming answer."""
    try:
        body = await with_timeout(read_body(response, 64 * 1024), REQUEST_READ_TIMEOUT, reactor)
    except Exception:  # too large, too slow, cut: the status says enough
        body = b""
    try:
        parse_chat_reply(response.code, body, 0)
    except ModelError as exc:
        return exc
    return ModelError(f"Post HTTP request error, {response.code}")


async def local_chat_stream(api_url: str, body: bytes, request, *, reactor, client=None,
                            head_timeout: float = CHAT_TIMEOUT, reject_errors: bool = False) -> bool:
    """Pipe a model's streaming response straight into a twisted.web request.

    Raises :class:`ModelError` if the model cannot be reached (nothing has
    been written then, so the caller renders the JSON error); with
    ``reject_errors`` also if it answers with a status other than 200 (its
    body, read up to 64 KiB, gives the message).  Afterwards
    the request is finished here: True if the whole body was relayed.  The
    model connection is the request's push producer (a slow client pauses
    it); a client that leaves aborts it.
    """
    upstream = Deferred.fromCoroutine(open_chat_stream(api_url, body, None, reactor=reactor, client=client,
                                                       timeout=head_timeout))
    gone: list[Failure] = []
    abort: list[Callable[[], object]] = [upstream.cancel]

    def client_gone(failure: Failure) -> None:
        gone.append(failure)
        for cancel in abort:
            cancel()

    request.notifyFinish().addErrback(client_gone)
    try:
        response = await upstream
    except CancelledError:
        return False
    if gone:
        _discard(response)  # the client left while the model answered: close its connection
        return False
    abort.clear()
    if reject_errors and response.code != 200:
        raise await _model_error(response, reactor)

    request.setResponseCode(response.code, response.phrase or None)
    for name, values in response.headers.getAllRawHeaders():
        if name.lower() not in (b"content-length", b"transfer-encoding", b"connection", b"keep-alive"):
            request.responseHeaders.setRawHeaders(name, values)

    finished: Deferred = Deferred()
    pump = BodyPump(request.write, lambda reason: finished.callback(reason.value))
    abort.append(pump.abort)
    request.registerProducer(pump, True)
    response.deliverBody(pump)
    reason = await finished
    if gone:
        return False
    request.unregisterProducer()
    if body_ended_cleanly(reason):
        request.finish()
        return True
    log.info("Model stream {url} failed: {reason}", url=api_url, reason=reason)
    request.loseConnection()
    return False


__all__ = [
    "CHAT_PROXY",
    "ProxyResponse",
    "chat_proxy_handler",
    "local_chat_stream",
    "proxy_chat_stream",
    "serve_chat_proxy",
    "stream_error",
]
