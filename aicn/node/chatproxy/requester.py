"""The requester's end of ``/chat-proxy/0.0.1``: send the request, stream the answer.

:func:`proxy_chat_stream` opens the stream, writes the request and returns a
:class:`TunnelStream` once the worker's response head arrived.  Its body is
then delivered into a consumer (the API's HTTP response) with the yamux
stream as the consumer's push producer, so a slow client stops the window
from being refilled and, end to end, the worker from reading its model.
"""

from __future__ import annotations

from typing import AsyncIterator, Callable, Optional, Union

from twisted.internet.defer import CancelledError, Deferred

from aicn.errors import AICNError, ErrorCode
from aicn.log import Logger
from aicn.models.chat import CHAT_TIMEOUT
from aicn.models.image import IMAGE_TIMEOUT
from aicn.models.http import Timeout, with_timeout
from aicn.node.chatproxy.wire import (
    CHAT_PROXY,
    IMAGE_EDIT_PATH,
    IMAGE_GEN_PATH,
    MAX_ERROR_BODY,
    MAX_REQUEST_HEAD,
    READ_SIZE,
    encode_request,
    error_from_reply,
    stream_error,
)
from aicn.node.httpwire import END, HTTPWireError, MessageParser, ResponseHead, end_to_end_headers
from aicn.node.modelstream import Consumer, ModelStream, Outcome
from aicn.p2p.multistream import ProtocolRejected
from aicn.p2p.stream import MuxedStream, StreamError

__all__ = ["TunnelStream", "proxy_chat_stream", "proxy_edit_stream", "proxy_image_stream"]

log = Logger()


class TunnelStream(ModelStream):
    """A worker's HTTP response, head parsed, body still on the libp2p stream.

    Consume the body once: :meth:`deliver` it into a consumer, read it with
    :meth:`iter_body` (or :meth:`error` for a non-200 answer), or drop it
    with :meth:`abort` (the stream is reset: the worker aborts the model).
    """

    def __init__(self, stream: MuxedStream, parser: MessageParser, head: ResponseHead, pending: list[bytes],
                 ended: bool, *, node_id: Optional[str] = None) -> None:
        super().__init__(head.status, head.reason, end_to_end_headers(head.headers), node_id=node_id)
        self.stream = stream
        self._parser = parser
        self._pending = pending
        self._ended = ended
        self._consumer: Optional[Consumer] = None
        self._read = False
        self._why: Optional[str] = None

    # -- ModelStream ---------------------------------------------------------------------

    def _start(self, consumer: Consumer) -> None:
        for chunk in self._pending:
            consumer.write(chunk)
        if self._ended:
            self._finish(Outcome.COMPLETE)
            return
        self._consumer = consumer
        consumer.registerProducer(self.stream, True)
        self.stream.set_data_callback(self._on_data, self._on_eof)

    def _stop(self) -> None:
        # The consumer went away with its client: no unregisterProducer on it.
        self._consumer = None
        self.stream.reset()

    def _finish(self, outcome: Outcome, why: object = None) -> None:
        if self.outcome is not None:
            return
        if self._consumer is not None:
            self._consumer.unregisterProducer()
            self._consumer = None
        if outcome is Outcome.COMPLETE:
            Deferred.fromCoroutine(_close_quietly(self.stream))
        else:
            self.stream.reset()
            self._why = str(why)
            log.info("chat stream relay ended early: {why}", why=why)
        self._end(outcome)

    def _handle(self, events) -> None:
        for event in events:
            if self.outcome is not None:
                return
            if event is END:
                self._finish(Outcome.COMPLETE)
            elif self._consumer is not None:
                self._consumer.write(event)

    def _on_data(self, data: bytes) -> None:
        try:
            self._handle(self._parser.feed(data))
        except HTTPWireError as exc:
            self._finish(Outcome.BROKEN, f"bad HTTP from worker: {exc}")

    def _on_eof(self, exc: Optional[Exception]) -> None:
        if exc is not None:
            self._finish(Outcome.BROKEN, f"stream failed: {exc}")
            return
        try:
            self._handle(self._parser.feed_eof())
        except HTTPWireError as exc:
            self._finish(Outcome.BROKEN, f"worker closed the stream early: {exc}")

    # -- pushing to callbacks --------------------------------------------------------------

    @property
    def content_type(self) -> bytes:
        """The response's Content-Type (``b""`` if none)."""
        values = [v for n, v in self.headers if n.lower() == b"content-type"]
        return values[0] if values else b""

    def push(self, on_data: Callable[[bytes], object], on_end: Callable[[bool, Optional[str]], object]):
        """:meth:`deliver` for a caller that transforms the body (the OpenAI
        relay): ``on_data(chunk)`` as chunks arrive, then ``on_end(ok, why)``
        once (``why``: what broke; None after :meth:`abort`).

        Returns the libp2p stream, an ``IPushProducer``: pausing it stops the
        yamux window from being refilled, which pushes back on the worker.
        """
        if self._read or self._delivering:
            raise RuntimeError("the response body was already consumed")
        self._delivering = True
        self.when_done().addCallback(
            lambda outcome: on_end(outcome is Outcome.COMPLETE, self._why if outcome is Outcome.BROKEN else None))
        self._consumer = _Callbacks(on_data)
        for chunk in self._pending:
            on_data(chunk)
        if self._ended:
            self._finish(Outcome.COMPLETE)
        else:
            self.stream.set_data_callback(self._on_data, self._on_eof)
        return self.stream

    # -- pulling the body ----------------------------------------------------------------

    async def iter_body(self) -> AsyncIterator[bytes]:
        """Yield body chunks as they arrive; raise 1017 "Read chat stream
        failed" if the worker or the stream fails before the end."""
        if self._read or self._delivering:
            raise RuntimeError("the response body was already consumed")
        self._read = True
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

    async def error(self) -> AICNError:
        """The error a non-200 answer stands for (its body read, at most 64 KiB)."""
        body = bytearray()
        chunks = self.iter_body()
        try:
            async for chunk in chunks:
                body += chunk
                if len(body) > MAX_ERROR_BODY:
                    break
        except AICNError:
            pass
        finally:
            await chunks.aclose()
        return error_from_reply(self.status, bytes(body))


class _Callbacks:
    """A consumer of plain callbacks (no producer: the caller holds the stream)."""

    def __init__(self, on_data: Callable[[bytes], object]) -> None:
        self.write = on_data

    def registerProducer(self, producer, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


async def _close_quietly(stream) -> None:
    try:
        await stream.close()
    except StreamError:
        pass


#: The 1017 messages of a tunnelled chat and (Go v0.2.3's words) of a tunnelled image edit.
CHAT_MESSAGES = ("Write chat stream failed", "Read chat stream failed")
EDIT_MESSAGES = ("Write image edit request into libp2p stream failed",
                 "Read image edit response from libp2p stream failed")


async def proxy_chat_stream(host, peer, project: str, model: str, body_json_bytes: bytes,
                            original_host_header: Optional[Union[str, bytes]] = None, *, addrs=None,
                            reactor=None, head_timeout: float = CHAT_TIMEOUT, cid: str = "") -> TunnelStream:
    """Send a streaming chat request to ``peer`` over ``/chat-proxy/0.0.1``.

    Returns once the worker's response head arrived.  Raises
    :class:`~aicn.errors.AICNError` 1017 "Open stream with peer node
    failed", "Write chat stream failed" or "Read chat stream failed", and
    1004 when the head has not arrived ``head_timeout`` seconds after the
    call (dialling and opening the stream included; the stream is reset).
    Cancelling the call resets the stream too.  The body that follows the
    head is not bounded by ``head_timeout``.  ``original_host_header`` is
    the client's Host header (spec behaviour).  ``cid`` (Go v0.2.3) names the
    model instance the worker is to use.
    """
    try:
        request = encode_request(project, model, body_json_bytes, original_host_header, cid=cid)
    except HTTPWireError:
        raise stream_error(CHAT_MESSAGES[0]) from None
    return await _tunnel(host, peer, request, addrs=addrs, reactor=reactor, head_timeout=head_timeout,
                         messages=CHAT_MESSAGES)


async def proxy_edit_stream(host, peer, project: str, model: str, content_type: bytes, body: bytes, *,
                            cid: str = "", addrs=None, reactor=None,
                            head_timeout: float = IMAGE_TIMEOUT) -> TunnelStream:
    """Send an image edit (a ``multipart/form-data`` ``body``) to ``peer`` over
    ``/chat-proxy/0.0.1``, as Go v0.2.3 does (``POST /api/v0/image/edit``).

    Returns once the worker's response head arrived; errors as
    :func:`proxy_chat_stream`'s, with Go's messages for an edit.  A body over
    the worker's limit is answered ``413`` (the envelope says the limit).
    """
    try:
        request = encode_request(project, model, body, cid=cid, path=IMAGE_EDIT_PATH, content_type=content_type)
    except HTTPWireError:
        raise stream_error(EDIT_MESSAGES[0]) from None
    return await _tunnel(host, peer, request, addrs=addrs, reactor=reactor, head_timeout=head_timeout,
                         messages=EDIT_MESSAGES)


#: Go v0.2.3's 1017 messages of a tunnelled image generation.
IMAGE_MESSAGES = ("Write image gen request into libp2p stream failed",
                  "Read image gen response from libp2p stream failed")


async def proxy_image_stream(host, peer, project: str, model: str, body_json_bytes: bytes, *,
                             cid: str = "", addrs=None, reactor=None,
                             head_timeout: float = IMAGE_TIMEOUT) -> TunnelStream:
    """Send an image generation (Go's ``ImageGenModelRequest`` JSON) to ``peer`` over
    ``/chat-proxy/0.0.1``, as Go v0.2.3 does for ``response_format: b64_json``
    (``POST /api/v0/image/gen``); errors as :func:`proxy_chat_stream`'s, with Go's messages."""
    try:
        request = encode_request(project, model, body_json_bytes, cid=cid, path=IMAGE_GEN_PATH)
    except HTTPWireError:
        raise stream_error(IMAGE_MESSAGES[0]) from None
    return await _tunnel(host, peer, request, addrs=addrs, reactor=reactor, head_timeout=head_timeout,
                         messages=IMAGE_MESSAGES)


async def _tunnel(host, peer, request: bytes, *, addrs, reactor, head_timeout: float,
                  messages: tuple[str, str]) -> TunnelStream:
    """Write ``request`` on a new tunnel stream; the response once its head came (within ``head_timeout``)."""
    reactor = reactor if reactor is not None else host.reactor
    opened: list = []
    d = Deferred.fromCoroutine(_request_head(host, peer, request, addrs, opened, messages))
    try:
        return await with_timeout(d, head_timeout, reactor)
    except Timeout:
        for stream in opened:
            stream.reset()
        log.info("chat-proxy: no response head from {peer} within {timeout}s", peer=str(peer),
                 timeout=head_timeout)
        raise AICNError(ErrorCode.TIMEOUT,
                        f"Processing timeout: no answer from node {peer} within {head_timeout:g} s") from None
    except CancelledError:
        for stream in opened:
            stream.reset()
        raise


async def _request_head(host, peer, request: bytes, addrs, opened: list, messages: tuple[str, str]) -> TunnelStream:
    """Open the stream (appended to ``opened``), write the request, read the response head."""
    write_failed, read_failed = messages
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
    try:
        await stream.write(request)
        await stream.close_write()
    except StreamError as exc:
        log.info("chat-proxy: writing to {peer} failed: {error}", peer=str(peer), error=exc)
        stream.reset()
        raise stream_error(_failed(exc, write_failed)) from None

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
        raise stream_error(_failed(exc, read_failed)) from None
    return TunnelStream(stream, parser, response_head, pending, ended)


def _failed(exc: Exception, message: str) -> str:
    # A lazily opened stream that the worker refused: the open failed, as
    # it does when the refusal comes during a full negotiation.
    return "Open stream with peer node failed" if isinstance(exc, ProtocolRejected) else message
