"""Chat model calls: the OpenAI-like contract of the spec (``docs/model_api.md``).

* :func:`chat_completion` -- a non-streamed call, mapped to :class:`ChatResult`
  (the spec's ``{created, choices, usage}``), which converts to and from the
  protobuf ``ChatCompletionResponse``.
* :func:`open_chat_stream` -- a streamed call whose response is returned
  unbuffered, for relaying chunk by chunk (see :mod:`aicn.node.chatproxy`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

from twisted.internet.defer import CancelledError, Deferred
from twisted.web.http_headers import Headers

from aicn import jsontext
from aicn.log import Logger
from aicn.models.errors import ModelError, code_number
from aicn.models.http import (
    MAX_REPLY_SIZE,
    ReplyTooLarge,
    Timeout,
    as_http_client,
    make_http_client,
    read_body,
    with_timeout,
)
from aicn.wire import protocol_pb2 as pb
from aicn.wire import protocol_v023_pb2 as pb23
from aicn.wire.versions import V023, version_of

log = Logger()

#: Go HEAD's HTTP client timeout for chat models.
CHAT_TIMEOUT = 180.0
#: The registration type of chat models.
CHAT_MODEL = 0

_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1


def _int(value: Any, high: int = _INT32_MAX) -> int:
    """A JSON number as a protobuf-safe int (0 if absent or not a whole number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    if isinstance(value, float) and not value.is_integer():
        return 0
    return max(-high - 1, min(high, int(value)))


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    # A content-parts array or any other JSON: keep it readable, not lost.
    return json.dumps(value, ensure_ascii=False)


@dataclass
class ChatResult:
    """A chat completion in the spec's shape (and Go v0.2.3's ``id`` and ``object``)."""

    created: int
    choices: list[dict] = field(default_factory=list)
    usage: dict = field(default_factory=lambda: {"completion_tokens": 0, "prompt_tokens": 0, "total_tokens": 0})
    id: str = ""
    object: str = ""

    def to_json(self) -> dict:
        """``{created, choices[{index, message{role, content}, finish_reason}], usage{...}}``, with
        ``id`` and ``object`` when known (a v0.2.3 worker or the model sent them)."""
        body = {"created": self.created, "choices": self.choices, "usage": self.usage}
        for name in ("id", "object"):
            if getattr(self, name):
                body[name] = getattr(self, name)
        return body

    def to_protobuf(self, wire=pb):
        """The protobuf reply body of a CHAT_COMPLETION request, in ``wire``'s schema
        (:mod:`aicn.wire.protocol_pb2` or :mod:`~aicn.wire.protocol_v023_pb2`)."""
        return result_to_protobuf(self, wire)

    @classmethod
    def from_protobuf(cls, response) -> "ChatResult":
        """From a protobuf reply body of either schema."""
        return result_from_protobuf(response)

    @classmethod
    def coerce(cls, value) -> "ChatResult":
        """``value`` itself, or the result a reply body of either schema holds."""
        return value if isinstance(value, cls) else result_from_protobuf(value)

    @classmethod
    def from_model_json(cls, reply: Mapping, now: int) -> "ChatResult":
        """Map a model's JSON reply; ``now`` stands in for a missing ``created``."""
        created = reply.get("created")
        created = _int(created, _INT64_MAX) if isinstance(created, (int, float)) and not isinstance(created, bool) else now
        choices = []
        raw_choices = reply.get("choices")
        for i, choice in enumerate(raw_choices if isinstance(raw_choices, list) else []):
            if not isinstance(choice, Mapping):
                continue
            message = choice.get("message")
            message = message if isinstance(message, Mapping) else {}
            choices.append(
                {
                    "index": _int(choice.get("index", i)),
                    "message": {"role": _text(message.get("role")), "content": _text(message.get("content"))},
                    "finish_reason": _text(choice.get("finish_reason")),
                }
            )
        usage = reply.get("usage")
        usage = usage if isinstance(usage, Mapping) else {}
        return cls(
            created=created,
            choices=choices,
            usage={
                "completion_tokens": _int(usage.get("completion_tokens")),
                "prompt_tokens": _int(usage.get("prompt_tokens")),
                "total_tokens": _int(usage.get("total_tokens")),
            },
            id=reply["id"] if isinstance(reply.get("id"), str) else "",
            object=reply["object"] if isinstance(reply.get("object"), str) else "",
        )


def result_to_protobuf(result: ChatResult, wire=pb):
    """:class:`ChatResult` → ``ChatCompletionResponse`` of ``wire``'s schema (v0.2.3's has
    ``id`` and ``object``; its choices' message is ``ChatCompletionResponseMessage``)."""
    v023 = version_of(wire) == V023
    message_cls = wire.ChatCompletionResponseMessage if v023 else wire.ChatCompletionMessage
    extra = {"id": result.id, "object": result.object} if v023 else {}
    return wire.ChatCompletionResponse(
        created=result.created,
        choices=[
            wire.ChatCompletionResponse.ChatResponseChoice(
                index=c["index"],
                message=message_cls(role=c["message"]["role"], content=c["message"]["content"]),
                finish_reason=c["finish_reason"],
            )
            for c in result.choices
        ],
        usage=wire.ChatCompletionResponse.ChatResponseUsage(**result.usage),
        **extra,
    )


def result_from_protobuf(response) -> ChatResult:
    """``ChatCompletionResponse`` of either schema → :class:`ChatResult` (the choices'
    content is a string in both)."""
    v023 = version_of(response) == V023
    return ChatResult(
        created=response.created,
        choices=[
            {
                "index": c.index,
                "message": {"role": c.message.role, "content": c.message.content},
                "finish_reason": c.finish_reason,
            }
            for c in response.choices
        ],
        usage={
            "completion_tokens": response.usage.completion_tokens,
            "prompt_tokens": response.usage.prompt_tokens,
            "total_tokens": response.usage.total_tokens,
        },
        id=response.id if v023 else "",
        object=response.object if v023 else "",
    )


def _content_from_json(raw: bytes) -> str | list:
    """A v0.2.3 message's content (raw JSON): its string or parts array; anything else (a
    v0.1.9 node's plain text, other JSON) as text."""
    try:
        value = jsontext.loads(raw)  # a peer's bytes: deep nesting is a ValueError there
    except ValueError:
        value = None
    if isinstance(value, (str, list)):
        return value
    return bytes(raw).decode("utf-8", "replace")


def _content_to_json(content: Any) -> bytes:
    return json.dumps("" if content is None else content, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass
class ChatRequest:
    """A non-streamed chat request as it travels between nodes, whatever the schema.

    ``messages`` are ``{role, content}`` with a string content or (Go v0.2.3) a
    content-parts array.  v0.2.3's ``cid`` picks the model instance at the
    worker; ``temperature``, ``top_p`` and the wallet fields reach its model.
    """

    project: str
    model: str
    messages: list[dict] = field(default_factory=list)
    stream: bool = False
    cid: str = ""
    temperature: float = 0.0
    top_p: float = 0.0
    wallet: str = ""
    signature: str = ""
    hash: str = ""

    @classmethod
    def from_params(cls, params: Mapping, *, stream: bool = False) -> "ChatRequest":
        """From the HTTP API's validated chat parameters."""
        options = params.get("options") or {}
        return cls(project=params["project"], model=params["model"],
                   messages=[{"role": m.get("role", ""), "content": m.get("content", "")}
                             for m in params.get("messages") or ()],
                   stream=stream, cid=params.get("cid") or "",
                   temperature=float(options.get("temperature") or 0.0),
                   top_p=float(options.get("top_p") or 0.0),
                   wallet=params.get("wallet") or "", signature=params.get("signature") or "",
                   hash=params.get("hash") or "")

    def to_protobuf(self, wire=pb):
        """The ``ChatCompletionRequest`` of ``wire``'s schema.  v0.1.2 carries a parts array as
        its JSON text and has none of v0.2.3's fields; v0.2.3's content is JSON and its
        wallet is always set, as Go writes it."""
        if version_of(wire) != V023:
            return chat_request_to_protobuf(self.project, self.model, self.messages, self.stream)
        return pb23.ChatCompletionRequest(
            project=self.project, model=self.model, stream=self.stream, cid=self.cid,
            temperature=self.temperature, top_p=self.top_p,
            messages=[pb23.ChatCompletionMessage(role=m.get("role", ""),
                                                 content=_content_to_json(m.get("content")))
                      for m in self.messages],
            wallet=pb23.WalletVerification(wallet=self.wallet, signature=self.signature, hash=self.hash),
        )

    @classmethod
    def from_protobuf(cls, request) -> "ChatRequest":
        """From a ``ChatCompletionRequest`` of either schema."""
        if version_of(request) != V023:
            return cls(project=request.project, model=request.model, stream=request.stream,
                       messages=[{"role": m.role, "content": m.content} for m in request.messages])
        return cls(project=request.project, model=request.model, stream=request.stream, cid=request.cid,
                   temperature=request.temperature, top_p=request.top_p,
                   messages=[{"role": m.role, "content": _content_from_json(m.content)}
                             for m in request.messages],
                   wallet=request.wallet.wallet, signature=request.wallet.signature, hash=request.wallet.hash)

    @classmethod
    def coerce(cls, value) -> "ChatRequest":
        """``value`` itself, or the request a protobuf message of either schema holds."""
        return value if isinstance(value, cls) else cls.from_protobuf(value)

    def model_extra(self) -> dict:
        """What the model gets besides ``model``, ``messages`` and ``stream``: Go v0.2.3's wallet
        fields (``omitempty``), and ``temperature``/``top_p`` when set (Go drops them)."""
        extra: dict = {name: getattr(self, name) for name in ("wallet", "signature", "hash")
                       if getattr(self, name)}
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if value:
                # float32 on the wire: 0.7 arrives as 0.699999988; keep what the client meant.
                extra[name] = round(value, 6)
        return extra


def chat_request_to_protobuf(project: str, model: str, messages: Iterable[Mapping], stream: bool = False
                             ) -> pb.ChatCompletionRequest:
    """The protobuf request body for a CHAT_COMPLETION message."""
    return pb.ChatCompletionRequest(
        project=project,
        model=model,
        # A content-parts array (Go v0.2.3) has no place in v0.1.2's string: its JSON text goes.
        messages=[pb.ChatCompletionMessage(role=m.get("role", ""), content=_text(m.get("content")))
                  for m in messages],
        stream=stream,
    )


def chat_request_from_protobuf(request) -> dict:
    """``{project, model, messages[{role, content}], stream}`` from a protobuf request of either schema."""
    parsed = ChatRequest.from_protobuf(request)
    return {"project": parsed.project, "model": parsed.model, "messages": parsed.messages,
            "stream": parsed.stream}


def chat_request_body(model: str, messages: Iterable[Mapping], *, stream: bool = False,
                      extra: Optional[Mapping] = None) -> bytes:
    """The JSON the node sends to a chat model: ``{"model","messages","stream"}`` (+ ``extra``)."""
    body: dict = {"model": model, "messages": [{"role": m.get("role", ""), "content": m.get("content", "")}
                                               for m in messages], "stream": stream}
    if extra:
        body.update(extra)
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def parse_chat_reply(status: int, body: bytes, now: int) -> ChatResult:
    """Judge a model's HTTP reply (pure): :class:`ChatResult` or :class:`ModelError`."""
    try:
        reply = jsontext.loads(body)
    except ValueError:
        reply = None
    if status != 200:
        detail = _model_message(reply)
        raise ModelError(f"Post HTTP request error, {status}" + (f": {detail}" if detail else ""))
    if not isinstance(reply, dict):
        raise ModelError("Model HTTP response is not JSON")
    code = reply.get("code")
    if isinstance(code, (int, float)) and not isinstance(code, bool) and code != 0:
        message = _model_message(reply) or f"Model returned code {code}"
        raise ModelError(message, model_code=code_number(code))
    return ChatResult.from_model_json(reply, now)


def _model_message(reply: Any) -> str:
    """The model's own error text: ``message`` or OpenAI's ``error.message``."""
    if not isinstance(reply, dict):
        return ""
    message = reply.get("message")
    if isinstance(message, str) and message:
        return message
    error = reply.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    if isinstance(error, str):
        return error
    return ""


async def chat_completion(agent_or_treq_client, api_url: str, model: str, messages: Iterable[Mapping], *,
                          reactor, timeout: float = CHAT_TIMEOUT, extra: Optional[Mapping] = None,
                          max_reply: int = MAX_REPLY_SIZE) -> ChatResult:
    """POST a non-streamed chat request to ``api_url`` and map the reply.

    ``agent_or_treq_client`` is a treq ``HTTPClient`` or an ``IAgent``;
    ``reactor`` provides the clock for ``timeout`` (the whole call: connect,
    headers and body).  Raises :class:`ModelError` (1006) on any failure.
    """
    client = as_http_client(agent_or_treq_client)
    body = chat_request_body(model, messages, stream=False, extra=extra)

    async def call():
        response = await client.post(api_url, data=body, headers={b"Content-Type": [b"application/json"]},
                                     unbuffered=True)
        return response.code, await read_body(response, max_reply)

    try:
        status, content = await with_timeout(Deferred.fromCoroutine(call()), timeout, reactor)
    except Timeout:
        log.info("Chat model {url} timed out after {timeout}s", url=api_url, timeout=timeout)
        raise ModelError("Post HTTP request error, timeout") from None
    except ReplyTooLarge as exc:
        raise ModelError(f"Post HTTP request error, {exc}") from None
    except Exception as exc:  # connection refused, DNS, reset, bad URL...
        log.info("Chat model {url} failed: {error}", url=api_url, error=exc)
        raise ModelError(f"Post HTTP request error, {_describe(exc)}") from None
    return parse_chat_reply(status, content, int(reactor.seconds()))


def _describe(exc: Exception) -> str:
    reasons = getattr(exc, "reasons", None)  # ResponseFailed / RequestTransmissionFailed
    if reasons:
        return "; ".join(r.getErrorMessage() for r in reasons)
    return str(exc) or type(exc).__name__


async def open_chat_stream(api_url: str, body_bytes: bytes, headers: Optional[Mapping] = None, *, reactor,
                           client=None, timeout: float = CHAT_TIMEOUT):
    """POST ``body_bytes`` to a chat model and return its response *unbuffered*.

    The caller relays the body (``response.deliverBody`` with a
    :class:`aicn.models.http.BodyPump`) and aborts it when its consumer goes
    away.  ``headers`` maps names to values (bytes or str; a list for
    repeats); ``Content-Type: application/json`` is the default.  ``timeout``
    bounds the wait for the response head; cancelling the returned coroutine's
    Deferred cancels the upstream request.  Raises :class:`ModelError`.
    """
    client = as_http_client(client) if client is not None else make_http_client(reactor)
    hdrs = Headers()
    for name, value in (headers or {}).items():
        values = value if isinstance(value, (list, tuple)) else [value]
        hdrs.setRawHeaders(name, list(values))
    if not hdrs.hasHeader(b"content-type"):
        hdrs.setRawHeaders(b"content-type", [b"application/json"])
    d = client.post(api_url, data=body_bytes, headers=hdrs, unbuffered=True)
    try:
        return await with_timeout(d, timeout, reactor)
    except Timeout:
        raise ModelError("Post HTTP request error, timeout") from None
    except CancelledError:
        raise
    except Exception as exc:
        log.info("Chat model {url} failed: {error}", url=api_url, error=exc)
        raise ModelError(f"Post HTTP request error, {_describe(exc)}") from None
