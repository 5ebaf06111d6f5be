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

log = Logger()

#: Go HEAD's HTTP client timeout for chat models.
CHAT_TIMEOUT = 180.0

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
    """A chat completion in the spec's shape."""

    created: int
    choices: list[dict] = field(default_factory=list)
    usage: dict = field(default_factory=lambda: {"completion_tokens": 0, "prompt_tokens": 0, "total_tokens": 0})

    def to_json(self) -> dict:
        """``{created, choices[{index, message{role, content}, finish_reason}], usage{...}}``."""
        return {"created": self.created, "choices": self.choices, "usage": self.usage}

    def to_protobuf(self) -> pb.ChatCompletionResponse:
        """The protobuf reply body of a CHAT_COMPLETION request."""
        return result_to_protobuf(self)

    @classmethod
    def from_protobuf(cls, response: pb.ChatCompletionResponse) -> "ChatResult":
        """From a protobuf reply body."""
        return result_from_protobuf(response)

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
        )


def result_to_protobuf(result: ChatResult) -> pb.ChatCompletionResponse:
    """:class:`ChatResult` → ``ChatCompletionResponse``."""
    return pb.ChatCompletionResponse(
        created=result.created,
        choices=[
            pb.ChatCompletionResponse.ChatResponseChoice(
                index=c["index"],
                message=pb.ChatCompletionMessage(role=c["message"]["role"], content=c["message"]["content"]),
                finish_reason=c["finish_reason"],
            )
            for c in result.choices
        ],
        usage=pb.ChatCompletionResponse.ChatResponseUsage(**result.usage),
    )


def result_from_protobuf(response: pb.ChatCompletionResponse) -> ChatResult:
    """``ChatCompletionResponse`` → :class:`ChatResult`."""
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
    )


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


def chat_request_from_protobuf(request: pb.ChatCompletionRequest) -> dict:
    """``{project, model, messages[{role, content}], stream}`` from a protobuf request."""
    return {
        "project": request.project,
        "model": request.model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "stream": request.stream,
    }


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
