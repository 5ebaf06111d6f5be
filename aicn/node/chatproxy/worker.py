"""The worker's end of ``/chat-proxy/0.0.1``: call the model, relay its answer.

The head is read first: its path tells the kind of request (chat, or Go
v0.2.3's image edit and b64 image generation, :func:`~aicn.node.chatproxy.wire.request_kind`),
which picks the model and bounds the body.  The body is then forwarded to
the registered model API (with its Content-Type and the query parameters
other than project, model and cid) and the model's raw HTTP/1.1 response is
written back chunk by chunk, then the stream is closed.  SSE framing is the
model's business and passes through untouched.  Back-pressure: reading from
the model stops while the yamux send window is full.  A reset stream (the
requester left) aborts the model request.

A b64 image generation may instead be answered by an ``image_answer`` hook
(the node's: the model's images as ``{code, message, created, data}``, a
file path of the spec's contract inlined as ``b64_json``, which a raw relay
would hand the requester as a path on this machine).
"""

from __future__ import annotations

import inspect
from typing import Awaitable, Callable, Optional, Union

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from urllib.parse import urlencode

from aicn.config.schema import DEFAULT_IMAGE_EDIT_MAX_BODY_BYTES
from aicn.errors import AICNError, ErrorCode
from aicn.log import Logger
from aicn.models.chat import CHAT_MODEL, CHAT_TIMEOUT, open_chat_stream
from aicn.models.errors import ModelError
from aicn.models.http import BodyPump, Timeout, body_ended_cleanly, with_timeout
from aicn.models.image import IMAGE_MODEL, IMAGE_TIMEOUT
from aicn.models.imageedit import IMAGE_EDIT_MODEL
from aicn.node.chatproxy.wire import (
    MAX_REQUEST_BODY,
    REQUEST_READ_TIMEOUT,
    BodyTooLarge,
    encode_error_response,
    read_request_head,
    request_kind,
)
from aicn.node.httpwire import (
    LAST_CHUNK,
    HTTPWireError,
    RequestHead,
    encode_chunk,
    encode_response_head,
    end_to_end_headers,
)
from aicn.p2p.stream import MuxedStream, StreamError

__all__ = ["DEFAULT_EDIT_MAX_BODY", "ImageAnswer", "LookupModel", "chat_proxy_handler", "serve_chat_proxy"]

log = Logger()

#: ``(project, model, cid, kind) ->`` the model's API URL, or a lease (``.api``, ``.release()``,
#: called when the stream ends), or None; or an awaitable of one.  ``kind``: the model type the
#: request asks for (0 chat, 1 image, 2 image edit).
LookupModel = Callable[[str, str, str, int], Union[Optional[object], Awaitable[Optional[object]]]]

#: ``(api_url, head, body) ->`` the JSON answer to a tunnelled b64 image generation (200), or
#: :class:`~aicn.errors.AICNError` (a model error is answered 502, any other 400).
ImageAnswer = Callable[[str, RequestHead, bytes], Awaitable[bytes]]

#: The body limit of a tunnelled image edit when none is given (``API.ImageEditMaxBodyBytes``'s default).
DEFAULT_EDIT_MAX_BODY = DEFAULT_IMAGE_EDIT_MAX_BODY_BYTES
#: How long a refused requester may go on sending (discarded) before its stream is reset.
DRAIN_TIMEOUT = REQUEST_READ_TIMEOUT
_QUERY_ROUTING = ("project", "model", "cid")


def _upstream_headers(head: RequestHead) -> dict:
    headers: dict = {}
    for name, value in end_to_end_headers(head.headers):
        if name.lower() in (b"host", b"expect"):
            continue  # the model's own Host is set by the client library
        headers.setdefault(name, []).append(value)
    return headers


async def serve_chat_proxy(stream: MuxedStream, conn, lookup_model: LookupModel, *, reactor, client=None,
                           head_timeout: float = CHAT_TIMEOUT, edit_max_body: int = DEFAULT_EDIT_MAX_BODY,
                           image_timeout: float = IMAGE_TIMEOUT,
                           image_answer: Optional[ImageAnswer] = None) -> None:
    """Serve one ``/chat-proxy/0.0.1`` stream (the worker side).

    ``lookup_model(project, model, cid, kind)`` (``cid``: Go v0.2.3's query
    parameter naming the model instance, "" when absent; ``kind``: the model
    type the request's path asks for) returns the model API URL or a lease
    with ``api`` and ``release()`` (or a Deferred/coroutine of one), or None:
    then the stream is reset, as the Go node does.  ``client`` is an optional
    treq client / IAgent for the model call.  A chat or image request body may
    have 1 MiB, an image edit ``edit_max_body`` bytes; a larger one is answered
    ``413`` with ``{code: 1001, message}``.  A model that cannot be reached is
    answered ``502`` with ``{code: 1006, message}``.  ``head_timeout`` bounds the
    wait for a chat model's response head, ``image_timeout`` that of an image or
    image edit model.  ``image_answer`` (optional) answers an image generation
    instead of the raw relay.  Never raises.
    """
    peer = str(getattr(conn, "peer", "?"))
    try:
        request = await with_timeout(Deferred.fromCoroutine(read_request_head(stream)), REQUEST_READ_TIMEOUT,
                                     reactor)
        head = request.head
        project, model = head.query_value("project"), head.query_value("model")
        cid = head.query_value("cid")
        kind = request_kind(head)
    except (HTTPWireError, Timeout, StreamError, EOFError) as exc:
        log.info("Bad chat-proxy request from {peer}: {error}", peer=peer, error=exc)
        stream.reset()
        return
    try:
        found = lookup_model(project, model, cid, kind)
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
        limit = edit_max_body if kind == IMAGE_EDIT_MODEL else MAX_REQUEST_BODY
        try:
            body = await with_timeout(Deferred.fromCoroutine(request.read_body(stream, limit)),
                                      REQUEST_READ_TIMEOUT, reactor)
        except BodyTooLarge as exc:
            await _refuse_large(stream, exc, kind, peer, reactor)
            return
        except (HTTPWireError, Timeout, StreamError, EOFError) as exc:
            log.info("Bad chat-proxy request body from {peer}: {error}", peer=peer, error=exc)
            stream.reset()
            return
        if kind == IMAGE_MODEL and image_answer is not None:
            await _answer_image(stream, image_answer(api_url, head, body), peer)
            return
        timeout = head_timeout if kind == CHAT_MODEL else image_timeout
        await _call_and_relay(stream, head, body, _forward_url(api_url, head), peer, reactor=reactor,
                              client=client, head_timeout=timeout)
    finally:
        release = getattr(found, "release", None)
        if release is not None:
            release()


def _forward_url(api_url: str, head: RequestHead) -> str:
    """The model URL with the request's other query parameters (as Go forwards them)."""
    extra = [(name, value) for name, values in head.query.items() if name not in _QUERY_ROUTING
             for value in values]
    if not extra:
        return api_url
    return api_url + ("&" if "?" in api_url else "?") + urlencode(extra)


async def _refuse_large(stream: MuxedStream, exc: BodyTooLarge, kind: int, peer: str, reactor) -> None:
    """Answer 413 and discard what the requester still sends (so that it reads the answer,
    not a reset), for at most :data:`DRAIN_TIMEOUT` seconds."""
    what, key = ("image edit", " (API.ImageEditMaxBodyBytes)") if kind == IMAGE_EDIT_MODEL else ("request", "")
    error = AICNError(ErrorCode.PARAMETER,
                      f"The {what} body of {exc.size} bytes exceeds this node's limit of {exc.limit}{key}")
    log.info("chat-proxy from {peer}: {message}", peer=peer, message=error.message)
    try:
        await stream.write(encode_error_response(413, b"Request Entity Too Large", error))
        await stream.close()  # half-close; the rest of the request is discarded
    except StreamError:
        stream.reset()
        return
    timer = reactor.callLater(DRAIN_TIMEOUT, stream.reset)
    stream.when_closed().addBoth(lambda _: timer.cancel() if timer.active() else None)


def _on_reset(stream: MuxedStream, peer: str) -> list[Callable[[], object]]:
    """The list of calls to make if the requester resets the stream (it left).

    From here on the request side of the stream only tells us whether the
    requester is still there: its FIN came with its request, so watch for the
    stream ending, not for EOF."""
    abort: list[Callable[[], object]] = []

    def ended(_=None) -> None:
        if stream.is_reset:
            log.debug("chat-proxy requester {peer} went away", peer=peer)
            for cancel in list(abort):
                cancel()

    stream.set_data_callback(lambda _data: None, ended)
    stream.when_closed().addCallback(ended)
    return abort


async def _answer_image(stream: MuxedStream, answer: Awaitable[bytes], peer: str) -> None:
    """Write the hook's JSON answer (or its error) and close; a reset stream cancels the hook."""
    call = Deferred.fromCoroutine(answer) if inspect.iscoroutine(answer) else answer
    _on_reset(stream, peer).append(call.cancel)
    try:
        reply = await call
    except CancelledError:
        stream.reset()
        return
    except AICNError as exc:
        log.info("chat-proxy image for {peer} failed: {error}", peer=peer, error=exc.message)
        status, reason = (502, b"Bad Gateway") if isinstance(exc, ModelError) else (400, b"Bad Request")
        reply = encode_error_response(status, reason, exc)
    except Exception:
        log.failure("chat-proxy image for {peer} failed", peer=peer)
        reply = encode_error_response(500, b"Internal Server Error",
                                      AICNError(ErrorCode.INTERNAL, "Image generation failed"))
    else:
        reply = encode_response_head(200, b"OK", [(b"Content-Type", b"application/json"),
                                                  (b"Content-Length", b"%d" % len(reply))]) + reply
    await _send_last(stream, reply)


async def _send_last(stream: MuxedStream, data: bytes) -> None:
    """Write ``data``, the whole answer, and half-close (reset if the stream is gone)."""
    try:
        await stream.write(data)
        await stream.close()
    except StreamError:
        stream.reset()


async def _call_and_relay(stream: MuxedStream, head: RequestHead, body: bytes, api_url: str, peer: str, *,
                          reactor, client, head_timeout: float) -> None:
    """Call the model with the tunnelled body and relay its answer onto ``stream``."""
    abort = _on_reset(stream, peer)  # a reset means "abort the model request"
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
        await _send_last(stream, encode_error_response(502, b"Bad Gateway", exc))
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


def chat_proxy_handler(lookup_model: LookupModel, *, reactor, client=None, head_timeout: float = CHAT_TIMEOUT,
                       edit_max_body: int = DEFAULT_EDIT_MAX_BODY, image_timeout: float = IMAGE_TIMEOUT,
                       image_answer: Optional[ImageAnswer] = None):
    """An ``async def handler(stream, conn)`` for ``host.set_stream_handler(CHAT_PROXY, ...)``
    (the arguments: :func:`serve_chat_proxy`'s)."""

    async def handler(stream, conn) -> None:
        await serve_chat_proxy(stream, conn, lookup_model, reactor=reactor, client=client,
                               head_timeout=head_timeout, edit_max_body=edit_max_body,
                               image_timeout=image_timeout, image_answer=image_answer)

    return handler
