"""What crosses a ``/chat-proxy/0.0.1`` stream, for both ends.

The requester writes one raw HTTP/1.1 request
(``POST /api/v0/chat/completion?model=<m>&project=<p>``, JSON body, then
FIN; Go v0.2.3 adds ``cid=<c>``, the model instance, sorted first); the
worker answers with the model's raw HTTP/1.1 response, or resets the stream
when it has no such model (as the Go node does).  When the model
cannot be reached, the worker answers ``502`` with the node's error
envelope ``{"code": 1006, "message": …}``: :func:`encode_error_response`
writes it and :func:`error_from_reply` reads it back (together with the
model's own error bodies), the one place that format lives.

Go v0.2.3 tunnels two more requests the same way, told apart by their path
(:func:`request_kind`): ``/api/v0/image/edit`` (a ``multipart/form-data``
body for an image edit model, type 2) and ``/api/v0/image/gen`` (an image
request answered in ``b64_json``, type 1).  The worker forwards any body
with its Content-Type, and the query parameters other than ``project``,
``model`` and ``cid``, to the model's API.  A request body is bounded by
kind (:data:`MAX_REQUEST_BODY` for chat and image requests, the worker's
``API.ImageEditMaxBodyBytes`` for edits); a larger one is answered ``413``
with the error envelope (1001), never read into memory.
"""

from __future__ import annotations

import json
from typing import Optional, Union
from urllib.parse import urlencode

from aicn import jsontext
from aicn.errors import AICNError, ErrorCode
from aicn.models.chat import parse_chat_reply
from aicn.models.errors import ModelError
from aicn.models.image import IMAGE_MODEL
from aicn.models.imageedit import IMAGE_EDIT_MODEL
from aicn.node.httpwire import (
    END,
    HTTPWireError,
    MessageParser,
    RequestHead,
    content_length,
    encode_request_head,
    encode_response_head,
)

__all__ = [
    "CHAT_PROXY",
    "CHAT_PATH",
    "MAX_REQUEST_HEAD",
    "MAX_REQUEST_BODY",
    "IMAGE_EDIT_PATH",
    "IMAGE_GEN_PATH",
    "BodyTooLarge",
    "TunnelRequest",
    "request_kind",
    "read_request_head",
    "MAX_ERROR_BODY",
    "READ_SIZE",
    "REQUEST_READ_TIMEOUT",
    "stream_error",
    "encode_request",
    "encode_error_response",
    "error_from_reply",
]

#: The protocol id of the tunnel.
CHAT_PROXY = "/chat-proxy/0.0.1"
#: The request paths the Go node writes: chat, and (v0.2.3) image edit and b64 image generation.
CHAT_PATH = b"/api/v0/chat/completion"
IMAGE_EDIT_PATH = b"/api/v0/image/edit"
IMAGE_GEN_PATH = b"/api/v0/image/gen"
#: The model type each path asks for (chat 0, image 1, image edit 2), as registrations name them.
_KINDS = {IMAGE_GEN_PATH.decode(): IMAGE_MODEL, IMAGE_EDIT_PATH.decode(): IMAGE_EDIT_MODEL}
#: Limits on the tunnelled request.
MAX_REQUEST_HEAD = 64 * 1024
MAX_REQUEST_BODY = 1024 * 1024
#: Most bytes of an error body read before the first byte of a stream.
MAX_ERROR_BODY = 64 * 1024
#: A requester must deliver its whole request within this time.
REQUEST_READ_TIMEOUT = 30.0
READ_SIZE = 64 * 1024
_UNBOUNDED = 1 << 62
#: The Host header when the client gave none (what the Go node sends).
DEFAULT_HOST = b"127.0.0.1:8080"


def stream_error(message: str) -> AICNError:
    """1017 with the spec's message ("Open stream with peer node failed", ...)."""
    return AICNError(ErrorCode.STREAM, message)


def encode_request(project: str, model: str, body: bytes,
                   host_header: Optional[Union[str, bytes]] = None, *, cid: str = "", path: bytes = CHAT_PATH,
                   content_type: bytes = b"application/json") -> bytes:
    """The tunnel request: head and ``body`` (JSON for chat, multipart for an edit at
    :data:`IMAGE_EDIT_PATH`); ``cid`` only when one is given (Go v0.2.3 writes ``cid=`` even
    empty; Go's ``url.Values.Encode`` sorts the keys, so it comes first).  Raises
    ``HTTPWireError`` for a Host header or Content-Type that cannot be sent."""
    host = host_header or DEFAULT_HOST
    if isinstance(host, str):
        host = host.encode("latin-1", "replace")
    query = ([("cid", cid)] if cid else []) + [("model", model), ("project", project)]
    target = path + b"?" + urlencode(query).encode("ascii")
    return encode_request_head(b"POST", target, [
        (b"Host", host),
        (b"User-Agent", b"aicn"),
        (b"Content-Length", b"%d" % len(body)),
        (b"Content-Type", content_type),
    ]) + body


class BodyTooLarge(HTTPWireError):
    """A tunnelled request body over the limit of its kind."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"request body of {size} bytes exceeds the limit of {limit}")
        self.size = size
        self.limit = limit


def request_kind(head: RequestHead) -> int:
    """The model type a tunnel request asks for, by its path: 2 for an image edit, 1 for an
    image, else 0 (chat: the spec-era node and Go v0.1.2 write only chat requests)."""
    return _KINDS.get(head.path, 0)


class TunnelRequest:
    """A tunnel request whose head was read; its body is read with :meth:`read_body`."""

    def __init__(self, head: RequestHead, parser: MessageParser, body: list[bytes], ended: bool) -> None:
        self.head = head
        self._parser = parser
        self._body = body
        self._ended = ended

    @property
    def declared_length(self) -> Optional[int]:
        """The head's Content-Length (None when chunked)."""
        return content_length(self.head.headers)

    async def read_body(self, stream, limit: int) -> bytes:
        """The whole body, at most ``limit`` bytes: :class:`BodyTooLarge` as soon as a
        Content-Length or the bytes read say it is larger.  Raises ``HTTPWireError``,
        ``StreamError`` or ``EOFError`` as :func:`read_request_head`."""
        declared = self.declared_length
        if declared is not None and declared > limit:
            raise BodyTooLarge(declared, limit)
        parser = self._parser
        parser.max_body = limit
        size = sum(map(len, self._body))
        while not self._ended:
            if size > limit:
                raise BodyTooLarge(size, limit)
            data = await stream.read(READ_SIZE)
            try:
                events = parser.feed(data) if data else parser.feed_eof()
            except HTTPWireError:
                if parser.body_size > limit:
                    raise BodyTooLarge(parser.body_size, limit) from None
                raise
            for event in events:
                if event is END:
                    self._ended = True
                else:
                    self._body.append(event)
                    size += len(event)
        if size > limit:
            raise BodyTooLarge(size, limit)
        return b"".join(self._body)


async def read_request_head(stream) -> TunnelRequest:
    """The worker's read of a tunnel request's head (at most :data:`MAX_REQUEST_HEAD`
    bytes); the body follows with :meth:`TunnelRequest.read_body`, under the limit of the
    request's kind, known once the head is.  Raises ``HTTPWireError``, ``StreamError`` or
    ``EOFError``.
    """
    # No body limit yet: read_body sets the one of the request's kind (and checks the
    # Content-Length against it).  What arrives with the head is one read, <= READ_SIZE.
    parser = MessageParser("request", max_head=MAX_REQUEST_HEAD, max_body=_UNBOUNDED)
    head: Optional[RequestHead] = None
    body: list[bytes] = []
    ended = False
    while head is None:
        data = await stream.read(READ_SIZE)
        events = parser.feed(data) if data else parser.feed_eof()
        for event in events:
            if isinstance(event, RequestHead):
                head = event
            elif event is END:
                ended = True
            else:
                body.append(event)
    return TunnelRequest(head, parser, body, ended)


def encode_error_response(status: int, reason: bytes, error: AICNError) -> bytes:
    """The worker's answer for a model it could not call: head and JSON envelope."""
    body = json.dumps(error.to_json()).encode()
    head = encode_response_head(status, reason, [(b"Content-Type", b"application/json"),
                                                 (b"Content-Length", b"%d" % len(body))])
    return head + body


def error_from_reply(status: int, body: bytes) -> AICNError:
    """The error a non-200 answer stands for: a worker's ``{code, message}``
    envelope as it is, else the model's own error (1006, its message)."""
    try:
        reply = jsontext.loads(body)
    except ValueError:
        reply = None
    if isinstance(reply, dict) and isinstance(reply.get("code"), int) and reply["code"] \
            and isinstance(reply.get("message"), str) and "choices" not in reply:
        return AICNError(reply["code"], reply["message"])
    try:
        parse_chat_reply(status, body, 0)
    except ModelError as exc:
        return exc
    return ModelError(f"Post HTTP request error, {status}")
