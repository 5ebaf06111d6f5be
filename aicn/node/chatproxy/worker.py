"""The worker's end of ``/chat-proxy/0.0.1``: call the model, relay its answer.

The body is forwarded to the registered model API and the model's raw
HTTP/1.1 response is written back chunk by chunk, then the stream is
closed.  SSE framing is the model's business and passes through untouched.
Back-pressure: reading from the model stops while the yamux send window is
full.  A reset stream (the requester left) aborts the model request.
"""

from __future__ import annotations

import inspect
from typing import Awaitable, Callable, Optional, Union

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from aicn.log import Logger
from aicn.models.chat import CHAT_TIMEOUT, open_chat_stream
from aicn.models.errors import ModelError
from aicn.models.http import BodyPump, Timeout, body_ended_cleanly, with_timeout
from aicn.node.chatproxy.wire import REQUEST_READ_TIMEOUT, encode_error_response, read_request
from aicn.node.httpwire import (
    LAST_CHUNK,
    HTTPWireError,
    RequestHead,
    encode_chunk,
    encode_response_head,
    end_to_end_headers,
)
from aicn.p2p.stream import MuxedStream, StreamError

__all__ = ["LookupModel", "chat_proxy_handler", "serve_chat_proxy"]

log = Logger()

#: ``(project, model, cid) ->`` the model's API URL, or a lease (``.api``, ``.release()``, called
#: when the stream ends), or None; or an awaitable of one.
LookupModel = Callable[[str, str, str], Union[Optional[object], Awaitable[Optional[object]]]]


def _upstream_headers(head: RequestHead) -> dict:
    headers: dict = {}
    for name, value in end_to_end_headers(head.headers):
        if name.lower() in (b"host", b"expect"):
            continue  # the model's own Host is set by the client library
        headers.setdefault(name, []).append(value)
    return headers


async def serve_chat_proxy(stream: MuxedStream, conn, lookup_model: LookupModel, *, reactor, client=None,
                           head_timeout: float = CHAT_TIMEOUT) -> None:
    """Serve one ``/chat-proxy/0.0.1`` stream (the worker side).

    ``lookup_model(project, model, cid)`` (``cid``: Go v0.2.3's query parameter
    naming the model instance, "" when absent) returns the model API URL or a
    lease with ``api`` and ``release()`` (or a Deferred/coroutine of one), or
    None: then the stream is reset, as the Go node does.  ``client`` is an
    optional treq client / IAgent for the model call.  A model that cannot be reached is answered with ``502`` and a
    ``{code: 1006, message}`` JSON body.  Never raises.
    """
    peer = str(getattr(conn, "peer", "?"))
    try:
        head, body = await with_timeout(Deferred.fromCoroutine(read_request(stream)), REQUEST_READ_TIMEOUT,
                                        reactor)
        project, model = head.query_value("project"), head.query_value("model")
        cid = head.query_value("cid")
    except (HTTPWireError, Timeout, StreamError, EOFError) as exc:
        log.info("Bad chat-proxy request from {peer}: {error}", peer=peer, error=exc)
        stream.reset()
        return
    try:
        found = lookup_model(project, model, cid)
        if isinstance(found, Deferred) or inspect.isawaitable(found):
            found = await found
    except Exception:
        log.failure("Model lookup failed for {project}/{model}", project=project, model=model)
        found = None
    api_url = getattr(found, "api", found)
    if not api_url:
        log.info("chat-proxy from {peer}: no model {project}/{model}{cid}", peer=peer, project=project,
                 model=model, cid=f" (cid {cid})" if cid else "")
        stream.reset()
        return
    try:
        await _call_and_relay(stream, head, body, api_url, peer, reactor=reactor, client=client,
                              head_timeout=head_timeout)
    finally:
        release = getattr(found, "release", None)
        if release is not None:
            release()


async def _call_and_relay(stream: MuxedStream, head: RequestHead, body: bytes, api_url: str, peer: str, *,
                          reactor, client, head_timeout: float) -> None:
    """Call the model with the tunnelled body and relay its answer onto ``stream``."""
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
            await stream.write(encode_error_response(502, b"Bad Gateway", exc))
            await stream.close()
        except StreamError:
            stream.reset()
        return
    abort.clear()

    await _relay_upstream(stream, response, abort, peer)


async def _relay_upstream(stream: MuxedStream, response, abort: list, peer: str) -> None:
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
