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
"""

from __future__ import annotations

import json
from typing import Optional, Union
from urllib.parse import urlencode

from aicn import jsontext
from aicn.errors import AICNError, ErrorCode
from aicn.models.chat import parse_chat_reply
from aicn.models.errors import ModelError
from aicn.node.httpwire import END, MessageParser, RequestHead, encode_request_head, encode_response_head

__all__ = [
    "CHAT_PROXY",
    "CHAT_PATH",
    "MAX_REQUEST_HEAD",
    "MAX_REQUEST_BODY",
    "MAX_ERROR_BODY",
    "READ_SIZE",
    "REQUEST_READ_TIMEOUT",
    "stream_error",
    "encode_request",
    "read_request",
    "encode_error_response",
    "error_from_reply",
]

#: The protocol id of the tunnel.
CHAT_PROXY = "/chat-proxy/0.0.1"
#: The request path the Go node writes (the worker ignores it).
CHAT_PATH = b"/api/v0/chat/completion"
#: Limits on the tunnelled request.
MAX_REQUEST_HEAD = 64 * 1024
MAX_REQUEST_BODY = 1024 * 1024
#: Most bytes of an error body read before the first byte of a stream.
MAX_ERROR_BODY = 64 * 1024
#: A requester must deliver its whole request within this time.
REQUEST_READ_TIMEOUT = 30.0
READ_SIZE = 64 * 1024
#: The Host header when the client gave none (what the Go node sends).
DEFAULT_HOST = b"127.0.0.1:8080"


def stream_error(message: str) -> AICNError:
    """1017 with the spec's message ("Open stream with peer node failed", ...)."""
    return AICNError(ErrorCode.STREAM, message)


def encode_request(project: str, model: str, body: bytes,
                   host_header: Optional[Union[str, bytes]] = None, *, cid: str = "") -> bytes:
    """The tunnel request: head and JSON ``body``; ``cid`` only when one is given (Go v0.2.3
    writes ``cid=`` even empty; Go's ``url.Values.Encode`` sorts the keys, so it comes first).
    Raises ``HTTPWireError`` for a Host header that cannot be sent."""
    host = host_header or DEFAULT_HOST
    if isinstance(host, str):
        host = host.encode("latin-1", "replace")
    query = ([("cid", cid)] if cid else []) + [("model", model), ("project", project)]
    target = CHAT_PATH + b"?" + urlencode(query).encode("ascii")
    return encode_request_head(b"POST", target, [
        (b"Host", host),
        (b"User-Agent", b"aicn"),
        (b"Content-Length", b"%d" % len(body)),
        (b"Content-Type", b"application/json"),
    ]) + body


async def read_request(stream) -> tuple[RequestHead, bytes]:
    """The worker's read of one tunnel request (head and whole body, bounded).

    Raises ``HTTPWireError``, ``StreamError`` or ``EOFError``.
    """
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
