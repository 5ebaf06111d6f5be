"""The OpenAI-compatible API under ``/v1`` (a Klein app that :class:`~aicn.api.app.NodeAPI` mounts).

Endpoints, routed by the node (:mod:`aicn.node.openairoute`):

* ``GET /v1/models``, ``GET /v1/models/{id}``: the models the network
  serves, ``id`` = ``project/model``, ``owned_by`` = the project;
* ``POST /v1/chat/completions``: non-streamed, or ``stream: true`` as
  server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``;
* ``POST /v1/images/generations``: ``{created, data: [{url} | {b64_json}]}``;
  ``url`` is ``ipfs://<cid>`` (the node's image path stores images in IPFS),
  ``b64_json`` the image read back from that IPFS node.

Requests name a model by id or, when a single project serves a model of that
name, by the bare name.  An ``X-AICN-Node: <peer id>`` header pins the node;
the response's ``X-AICN-Node`` names the node that answered.  Bodies are
plain JSON with exact keys, as OpenAI's (the ``/api/v0`` endpoints follow
Go's key rule instead); a chat body reaches the model as it came, with
``model`` set to the registered name.

Errors are OpenAI's ``{"error": {"message", "type", "param", "code"}}`` with
the HTTP status an OpenAI SDK maps to its exception classes: 400
``invalid_request_error``, 401 ``invalid_api_key``, 404 ``model_not_found``,
413, 502 (every node tried failed), 503 (no node can be tried now; with
``Retry-After``), 504 (timed out).  When the node has an API token
(``--api-token``, ``API.Token``) every ``/v1`` request needs
``Authorization: Bearer <token>``, which is how OpenAI SDKs send their
``api_key``; without one, any key passes.
"""

from __future__ import annotations

import base64
import hmac
import json
import math
import uuid
from typing import Any, Callable, Optional

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import MethodNotAllowed, NotFound
from zope.interface import implementer

from aicn import jsontext
from aicn.api.errors import HTTPError
from aicn.errors import AICNError, ErrorCode
from aicn.log import Logger
from aicn.node.openairoute import (
    AmbiguousModel,
    ModelRejected,
    RoutedStream,
    NoNodeAvailable,
    RouteFailed,
    UnknownModel,
    collect,
    parse_completion,
)

__all__ = [
    "NODE_HEADER",
    "OpenAIAPI",
    "OpenAIError",
    "SSEParser",
    "chunks_from_completion",
    "convert_events",
    "decode_request_body",
    "model_object",
    "normalize_chunk",
    "normalize_completion",
    "openai_error",
    "parse_chat",
    "parse_images",
]

log = Logger()

#: Request header pinning a node; response header naming the node that answered.
NODE_HEADER = b"X-AICN-Node"
DONE_EVENT = b"data: [DONE]\n\n"
#: Largest SSE event accepted from a model.
MAX_EVENT = 1024 * 1024
#: Largest non-streamed answer converted into chunks, when a model answers a stream request with JSON.
MAX_COMPLETION = 16 * 1024 * 1024
#: OpenAI's limit on ``n`` for image generation.
MAX_IMAGES = 10
IMAGE_FORMATS = ("url", "b64_json")


# -- errors ----------------------------------------------------------------------------------------


class OpenAIError(Exception):
    """An error as OpenAI's API answers it: an HTTP status and ``{"error": {...}}``."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 code: Optional[str] = None, param: Optional[str] = None,
                 headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers

    def to_json(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: Optional[str] = None, code: Optional[str] = None) -> OpenAIError:
    """A 400 ``invalid_request_error``."""
    return OpenAIError(400, message, param=param, code=code)


def openai_error(err: AICNError) -> OpenAIError:
    """The OpenAI error (and HTTP status) a domain error stands for."""
    if isinstance(err, UnknownModel):
        return OpenAIError(404, err.message, param="model", code="model_not_found")
    if isinstance(err, AmbiguousModel):
        return invalid(err.message, "model", "model_ambiguous")
    if isinstance(err, ModelRejected):
        fields = {k: v for k, v in (err.error or {}).items()
                  if k in ("type", "code", "param") and isinstance(v, str)}
        return OpenAIError(400 if err.status == 422 else err.status, err.message,
                           fields.get("type", "invalid_request_error"), fields.get("code"),
                           fields.get("param"))
    if isinstance(err, NoNodeAvailable):
        headers = ((b"Retry-After", b"%d" % math.ceil(err.retry_after)),) if err.retry_after > 0 else ()
        return OpenAIError(503, err.message, "server_error", "no_node_available", headers=headers)
    if isinstance(err, RouteFailed):
        if err.timed_out:
            return OpenAIError(504, err.message, "server_error", "timeout")
        return OpenAIError(502, err.message, "server_error", "upstream_error")
    if isinstance(err, HTTPError):
        if err.status == 413:
            return OpenAIError(413, err.message, code="request_too_large")
        return OpenAIError(err.status, err.message)
    code = err.code
    if code in (ErrorCode.PARAMETER, ErrorCode.PARSING):
        return invalid(err.message)
    if code == ErrorCode.TIMEOUT:
        return OpenAIError(504, err.message, "server_error", "timeout")
    if code == ErrorCode.UNSUPPORTED:
        return OpenAIError(501, err.message, "server_error", "not_implemented")
    if code == ErrorCode.INTERNAL:
        return OpenAIError(500, err.message, "server_error")
    # Model, IPFS, stream, proxy, rendezvous...: a node or its model failed.
    return OpenAIError(502, err.message, "server_error", "upstream_error")


# -- shapes -----------------------------------------------------------------------------------------


def model_object(entry) -> dict:
    """A catalog entry as an OpenAI model object."""
    return {"id": entry.id, "object": "model", "created": entry.created, "owned_by": entry.project}


def _int(value: Any, default: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    if isinstance(value, float) and not math.isfinite(value):  # (math.isfinite(10**400) raises)
        return default
    return int(value)


def _id(value: Any, default: str) -> str:
    return value if isinstance(value, str) and value else default


def _rest(obj: dict, out: dict, skip: tuple[str, ...] = ()) -> dict:
    """``out`` plus the fields of ``obj`` it lacks (``skip`` and the DBC envelope left out)."""
    for key, value in obj.items():
        if key not in out and key not in skip:
            out[key] = value
    return out


_DBC_ENVELOPE = ("code", "message")


def normalize_completion(reply: dict, model_id: str, fallback_id: str, created: int) -> dict:
    """A model's non-streamed chat answer as OpenAI's ``chat.completion``.

    Fields OpenAI defines are filled in where the model left them out
    (``model`` is the id the catalog gives it); others pass through, except
    the DBC contract's ``code``/``message`` envelope; ``usage`` passes through.
    """
    choices = []
    raw = reply.get("choices")
    for i, choice in enumerate(raw if isinstance(raw, list) else []):
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        message = dict(message) if isinstance(message, dict) else {}
        message.setdefault("role", "assistant")
        message.setdefault("content", None)
        choices.append(_rest(choice, {"index": _int(choice.get("index"), i), "message": message,
                                      "logprobs": choice.get("logprobs"),
                                      "finish_reason": choice.get("finish_reason")}))
    out = {"id": _id(reply.get("id"), fallback_id), "object": "chat.completion",
           "created": _int(reply.get("created"), created), "model": model_id, "choices": choices}
    if isinstance(reply.get("usage"), dict):
        out["usage"] = reply["usage"]
    return _rest(reply, out, _DBC_ENVELOPE)


def normalize_chunk(event: Any, model_id: str, fallback_id: str, created: int) -> Optional[dict]:
    """A model's SSE event as OpenAI's ``chat.completion.chunk`` (None: not one to relay).

    An ``{"error": ...}`` event passes through, as OpenAI sends errors mid-stream.
    """
    if not isinstance(event, dict):
        return None
    if "error" in event and "choices" not in event:
        error = event["error"]
        if not isinstance(error, dict):
            error = {"message": str(error)}
        return {"error": {"message": str(error.get("message") or "model error"),
                          "type": error.get("type") or "server_error", "param": error.get("param"),
                          "code": error.get("code")}}
    choices = []
    raw = event.get("choices")
    for i, choice in enumerate(raw if isinstance(raw, list) else []):
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        choices.append(_rest(choice, {"index": _int(choice.get("index"), i),
                                      "delta": delta if isinstance(delta, dict) else {},
                                      "logprobs": choice.get("logprobs"),
                                      "finish_reason": choice.get("finish_reason")}))
    out = {"id": _id(event.get("id"), fallback_id), "object": "chat.completion.chunk",
           "created": _int(event.get("created"), created), "model": model_id, "choices": choices}
    return _rest(event, out, _DBC_ENVELOPE)


def chunks_from_completion(completion: dict, include_usage: bool) -> list[dict]:
    """The chunks of a streamed answer equal to a normalized non-streamed one
    (for a model that answers a stream request with JSON)."""
    base = {"id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"],
            "model": completion["model"]}
    chunks = []
    for c in completion["choices"]:
        delta = {"role": c["message"].get("role", "assistant"), "content": c["message"].get("content")}
        chunks.append({**base, "choices": [{"index": c["index"], "delta": delta, "logprobs": None,
                                            "finish_reason": c.get("finish_reason")}]})
    if include_usage and "usage" in completion:
        chunks.append({**base, "choices": [], "usage": completion["usage"]})
    return chunks


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _event(obj: Any) -> bytes:
    return b"data: " + _dumps(obj) + b"\n\n"


class SSEParser:
    """Server-sent events, fed in arbitrary pieces: yields each event's ``data``
    (its ``data:`` lines joined by newlines), as bytes.  Comments and other
    fields are dropped; an event past :data:`MAX_EVENT` bytes is a ValueError."""

    def __init__(self) -> None:
        self._partial = b""
        self._data: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_EVENT:
            raise ValueError(f"SSE line longer than {MAX_EVENT} bytes")
        out = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    out.append(b"\n".join(self._data))
                    self._data, self._size = [], 0
            elif line.startswith(b"data:"):
                value = line[6:] if line.startswith(b"data: ") else line[5:]
                self._size += len(value)
                if self._size > MAX_EVENT:
                    raise ValueError(f"SSE event longer than {MAX_EVENT} bytes")
                self._data.append(value)
        return out

    def close(self) -> list[bytes]:
        """The last event, if the stream ended without its blank line."""
        out = self.feed(b"\n\n") if (self._partial or self._data) else []
        self._partial = b""
        return out


# -- the relay of a streamed answer ------------------------------------------------------------------


def convert_events(events: list[bytes], model_id: str, chunk_id: str, created: int) -> tuple[bytes, int]:
    """The model's SSE event data (from :class:`SSEParser`) as OpenAI chunk events (pure):
    ``(bytes to send, events dropped)``; the model's ``[DONE]`` is dropped uncounted."""
    out = []
    skipped = 0
    for data in events:
        if data == b"[DONE]":
            continue  # ours comes after the model's stream ended cleanly
        try:
            event = jsontext.loads(data)
        except ValueError:
            event = None
        chunk = normalize_chunk(event, model_id, chunk_id, created)
        if chunk is None:
            skipped += 1
            continue
        out.append(b"data: " + _dumps(chunk) + b"\n\n")
    return b"".join(out), skipped



def _gone(request) -> bool:
    return bool(getattr(request, "_disconnected", False)) or bool(getattr(request, "finished", False))


async def _request_over(request) -> None:
    """Wait until ``request`` is finished or its connection is gone."""
    if _gone(request):
        return
    try:
        await request.notifyFinish()
    except Exception:
        pass


def _shield(d: Deferred) -> Deferred:
    """``d``'s result in a Deferred whose cancellation (Klein's, when the
    client leaves) leaves ``d`` alone: the route cancels it itself, watching the request."""
    out: Deferred = Deferred()

    def forward(result):
        if not out.called:
            (out.errback if isinstance(result, Failure) else out.callback)(result)

    d.addBoth(forward)
    return out


class _Relay:
    """Writes a model's SSE answer to a twisted.web request in OpenAI's chunk
    format, then ``data: [DONE]``.  The model stream is the request's push
    producer (a slow client pauses it); a client that leaves aborts it; a
    stream that breaks ends with an error event and an incomplete response
    (no terminating chunk).  :attr:`done` fires once it is over."""

    def __init__(self, request, stream: RoutedStream, model_id: str, chunk_id: str, created: int) -> None:
        self.request = request
        self.stream = stream
        self.model_id = model_id
        self.chunk_id = chunk_id
        self.created = created
        self.parser = SSEParser()
        self.done: Deferred = Deferred()
        self.over = False
        self.registered = False
        self.skipped = 0

    def start(self) -> None:
        self.request.notifyFinish().addErrback(self._client_gone)
        producer = self.stream.deliver(self._data, self._end)
        if not self.over and not _gone(self.request):
            self.request.registerProducer(_ClientSide(self, producer), True)
            self.registered = True

    def _events(self, events: list[bytes]) -> bytes:
        out, skipped = convert_events(events, self.model_id, self.chunk_id, self.created)
        self.skipped += skipped
        return out

    def _data(self, data: bytes) -> None:
        if self.over:
            return
        try:
            out = self._events(self.parser.feed(data))
        except ValueError as exc:
            self._end(False, f"bad SSE from the model: {exc}")  # before the abort, whose end may come at once
            self.stream.abort()
            return
        if out:
            self.request.write(out)

    def _end(self, ok: bool, why: Optional[str]) -> None:
        if self.over:
            return
        self.over = True
        if self.registered:
            self.registered = False
            self.request.unregisterProducer()
        if self.skipped:
            log.info("v1 stream from {node}: {n} events that are not chunks dropped",
                     node=self.stream.node_id, n=self.skipped)
        tail = b""
        if ok:
            try:
                tail = self._events(self.parser.close())
            except ValueError:
                pass
            self.request.write(tail + DONE_EVENT)
            self.request.finish()
        else:
            log.info("v1 stream from {node} broke: {why}", node=self.stream.node_id, why=why)
            error = OpenAIError(502, f"The node {self.stream.node_id} failed mid-stream: {why}",
                                "server_error", "upstream_error")
            self.request.write(_event(error.to_json()))
            self.request.loseConnection()
        self.stream.finished(ok)
        self.done.callback(ok)

    def _client_gone(self, failure: Optional[Failure]) -> None:
        if self.over:
            return
        log.debug("v1 client left a stream from {node}: {why}", node=self.stream.node_id,
                  why=failure.getErrorMessage() if failure is not None else "connection lost")
        self.over = True
        self.registered = False  # the channel is gone with it
        self.stream.abort()
        self.stream.finished(False, client_left=True)
        self.done.callback(False)


@implementer(IPushProducer)
class _ClientSide:
    """The model stream as the push producer of the client's response.

    The HTTP connection stops its producer when the client goes away, before
    the request learns it: that is the client leaving, not the model failing.
    """

    def __init__(self, relay: _Relay, producer) -> None:
        self._relay = relay
        self._producer = producer

    def pauseProducing(self) -> None:
        self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        self._producer.resumeProducing()

    def stopProducing(self) -> None:
        self._relay._client_gone(None)


# -- request parsing ------------------------------------------------------------------------------------


def _string(body: dict, name: str, required: bool = True) -> Optional[str]:
    value = body.get(name)
    if value is None:
        if required:
            raise invalid(f"Missing required parameter: '{name}'.", name)
        return None
    if not isinstance(value, str) or (required and not value):
        raise invalid(f"Invalid type for '{name}': expected a non-empty string.", name)
    return value


def decode_request_body(raw: bytes) -> dict:
    """A request body as a JSON object; anything else is an :class:`OpenAIError` (400)."""
    try:
        body = jsontext.loads(raw, parse_constant=_no_constant)
    except ValueError:
        raise invalid("We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    return body


def parse_chat(body: dict) -> tuple[str, bool]:
    """``(model, stream)`` of a chat request, checked as OpenAI checks it."""
    model = _string(body, "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty array.", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid(f"Invalid type for 'messages[{i}]': expected an object.", f"messages[{i}]")
        if not isinstance(message.get("role"), str) or not message["role"]:
            raise invalid(f"Missing required parameter: 'messages[{i}].role'.", f"messages[{i}].role")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("Invalid type for 'stream': expected a boolean.", "stream")
    return model, bool(stream)


def parse_images(body: dict) -> dict:
    """``{model, prompt, n, size, response_format, ipfs_node}`` of an image request."""
    params = {"model": _string(body, "model"), "prompt": _string(body, "prompt")}
    n = body.get("n")
    if n is None:
        n = 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_IMAGES:
        raise invalid(f"Invalid 'n': expected an integer from 1 to {MAX_IMAGES}.", "n")
    params["n"] = n
    params["size"] = _string(body, "size", required=False) or ""
    fmt = _string(body, "response_format", required=False) or "url"
    if fmt not in IMAGE_FORMATS:
        raise invalid(f"Invalid 'response_format': expected one of {', '.join(IMAGE_FORMATS)}.",
                      "response_format")
    params["response_format"] = fmt
    # Not OpenAI's: the IPFS RPC node to store the images in (the SDK's extra_body).
    params["ipfs_node"] = _string(body, "ipfs_node", required=False) or ""
    return params


# -- the app -------------------------------------------------------------------------------------------


class OpenAIAPI:
    """The ``/v1`` endpoints over a node backend.

    :param backend: the :class:`~aicn.node.backend.NodeBackend`.
    :param token: the node's API token (None: any key passes).
    :param read_body: reads a request's body within the node's size limit
        (raises a 413 :class:`~aicn.api.errors.HTTPError` past it).
    :param clock: ``seconds()`` for ``created`` fields.
    """

    app = Klein()

    def __init__(self, backend, *, token: Optional[str], read_body: Callable[[Any], bytes], clock) -> None:
        self.backend = backend
        self.token = token or None
        self.read_body = read_body
        self.clock = clock

    def resource(self):
        """The ``IResource`` for ``/v1/``."""
        return self.app.resource()

    # -- rendering --------------------------------------------------------------------

    @staticmethod
    def _json(request, status: int, payload: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        return _dumps(payload)

    def _error(self, request, err: OpenAIError) -> bytes:
        log.info("API {method} {path}: {status} {code} {message}",
                 method=request.method.decode("ascii", "replace"),
                 path=request.path.decode("ascii", "replace"), status=err.status, code=err.code or err.type,
                 message=err.message)
        for name, value in err.headers:
            request.setHeader(name, value)
        if err.status == 401:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="aicn"')
        return self._json(request, err.status, err.to_json())

    @app.handle_errors(OpenAIError)
    def _render_openai_error(self, request, failure):
        return self._error(request, failure.value)

    @app.handle_errors(AICNError)
    def _render_error(self, request, failure):
        return self._error(request, openai_error(failure.value))

    @app.handle_errors(MethodNotAllowed)
    def _method_not_allowed(self, request, failure):
        allowed = getattr(failure.value, "valid_methods", None) or []
        if allowed:
            request.setHeader(b"Allow", ", ".join(allowed).encode("ascii"))
        method = request.method.decode("ascii", "replace")
        return self._error(request, OpenAIError(405, f"Method {method} is not allowed for"
                                                     f" {request.path.decode('utf-8', 'replace')}."))

    @app.handle_errors(NotFound)
    def _not_found(self, request, failure):
        method = request.method.decode("ascii", "replace")
        path = request.path.decode("utf-8", "replace")
        return self._error(request, OpenAIError(404, f"Invalid URL ({method} {path})", code="unknown_url"))

    @app.handle_errors(Exception)
    def _internal(self, request, failure):
        log.failure("Unhandled error serving {path}", failure=failure,
                    path=request.path.decode("utf-8", "replace"))
        return self._error(request, OpenAIError(500, "The server had an error while processing your request.",
                                                "server_error"))

    # -- request helpers ------------------------------------------------------------------

    def authorize(self, request) -> None:
        """The bearer token, when the node has one."""
        if self.token is None:
            return
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        scheme, _, supplied = header.partition(" ")
        supplied = supplied.strip()
        if scheme.lower() != "bearer" or not supplied:
            raise OpenAIError(401, "You didn't provide an API key: send it as 'Authorization: Bearer <key>'.",
                              code="invalid_api_key")
        if not hmac.compare_digest(supplied.encode("utf-8", "replace"), self.token.encode("utf-8")):
            raise OpenAIError(401, "Incorrect API key provided.", code="invalid_api_key")

    def body(self, request) -> dict:
        """The request's JSON object."""
        return decode_request_body(self.read_body(request))

    @staticmethod
    def pin(request) -> Optional[str]:
        value = request.getHeader(NODE_HEADER)
        if value is None:
            return None
        value = value.decode("latin-1").strip()
        return value or None

    async def until_gone(self, request, d: Deferred):
        """``d``'s result; ``d`` is cancelled if the client leaves first."""
        def gone(_failure) -> None:
            if not d.called:
                d.cancel()

        request.notifyFinish().addErrback(gone)
        return await _shield(d)

    def now(self) -> int:
        return int(self.clock.seconds())

    # -- routes ---------------------------------------------------------------------------

    @app.route("/models", methods=["GET"])
    def models(self, request):
        self.authorize(request)
        return self._json(request, 200, {"object": "list",
                                         "data": [model_object(e) for e in self.backend.model_catalog()]})

    @app.route("/models/<path:model>", methods=["GET"])
    def model(self, request, model: str):
        self.authorize(request)
        for entry in self.backend.model_catalog():
            if entry.id == model:
                return self._json(request, 200, model_object(entry))
        raise UnknownModel(model)

    @app.route("/chat/completions", methods=["POST"])
    async def chat_completions(self, request):
        self.authorize(request)
        body = self.body(request)
        name, stream = parse_chat(body)
        pin = self.pin(request)
        project, model = self.backend.resolve_model(name, pin)
        model_id = f"{project}/{model}"
        chunk_id = "chatcmpl-" + uuid.uuid4().hex
        if not stream:
            node, reply = await self.until_gone(request, Deferred.fromCoroutine(
                self.backend.chat(project, model, body, pin=pin)))
            request.setHeader(NODE_HEADER, node.encode("ascii"))
            return self._json(request, 200, normalize_completion(reply, model_id, chunk_id, self.now()))
        answer: RoutedStream = await self.until_gone(request, Deferred.fromCoroutine(
            self.backend.open_chat_stream(project, model, body, pin=pin)))
        if _gone(request):
            answer.abort()
            answer.finished(False, client_left=True)
            return NOT_DONE_YET
        if answer.content_type.split(b";")[0].strip().lower() == b"application/json":
            return await self._chunks_of_completion(request, answer, body, model_id, chunk_id)
        self._sse_head(request, answer.node_id)
        relay = _Relay(request, answer, model_id, chunk_id, self.now())
        relay.start()
        await _shield(relay.done)
        # Klein finishes a request whose route returned, NOT_DONE_YET or not:
        # a broken relay's connection must be gone first (no terminating chunk).
        await _request_over(request)
        return NOT_DONE_YET

    @staticmethod
    def _sse_head(request, node_id: str) -> None:
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(NODE_HEADER, node_id.encode("ascii"))

    async def _chunks_of_completion(self, request, answer: RoutedStream, body: dict, model_id: str,
                                    chunk_id: str) -> bytes:
        """A stream request that the model answered with one JSON completion: sent as its chunks."""
        try:
            reply = parse_completion(await self.until_gone(request, collect(answer, MAX_COMPLETION)))
        except AICNError:
            answer.finished(False, client_left=_gone(request))
            raise
        answer.finished(True)
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        completion = normalize_completion(reply, model_id, chunk_id, self.now())
        self._sse_head(request, answer.node_id)
        return b"".join(_event(c) for c in chunks_from_completion(completion, include_usage)) + DONE_EVENT

    @app.route("/images/generations", methods=["POST"])
    async def images_generations(self, request):
        self.authorize(request)
        params = parse_images(self.body(request))
        pin = self.pin(request)
        project, model = self.backend.resolve_model(params["model"], pin)
        node, result = await self.until_gone(request, Deferred.fromCoroutine(
            self.backend.generate_images(project, model, params, pin=pin)))
        data = []
        for choice in result["choices"]:
            # A spec-era worker names each image by its IPFS CID; a Go v0.2.3 worker may
            # answer with the model's own b64_json or URL instead.
            if params["response_format"] == "b64_json" and choice.get("b64_json"):
                data.append({"b64_json": choice["b64_json"]})
            elif params["response_format"] == "b64_json" and choice.get("cid"):
                image = await self.until_gone(request, Deferred.fromCoroutine(
                    self.backend.fetch_image(result["ipfs_node"], choice["cid"])))
                data.append({"b64_json": base64.b64encode(image).decode("ascii")})
            elif choice.get("cid"):
                data.append({"url": f"ipfs://{choice['cid']}"})
            elif choice.get("url"):
                data.append({"url": choice["url"]})
            elif choice.get("b64_json"):
                data.append({"b64_json": choice["b64_json"]})
        request.setHeader(NODE_HEADER, node.encode("ascii"))
        return self._json(request, 200, {"created": self.now(), "data": data})
