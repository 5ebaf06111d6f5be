"""Both wire schemas per peer: decoding a body the peer's way, converting, error codes (pure).

A Go node speaks one schema, the one of its release (``header.client_version``,
identify's ``agent_version``; :mod:`aicn.wire.versions`); an aicn node
understands both and answers a request in the schema it came in.  The two
schemas give four field numbers different meanings (``proto/README.md``), and
protobuf decodes most bytes of one as *something* in the other: a v0.2.3
model entry becomes a v0.1.2 model name full of control characters, a v0.1.2
text becomes v0.2.3 "JSON" content that is none.  So a body is decoded the
way its sender's version says first, and judged:

* **fits** -- no identifier (project, model, role, cid, url, ...) holds a
  control character, every v0.2.3 model entry has a name and every v0.2.3
  chat content is a JSON string or array.  A decode that does not fit is a
  schema mismatch, not data: the other schema is tried.
* **clean** -- besides, no field is unknown to the schema (except v0.1.3+'s
  ``node_type`` on v0.1.2's AI-project answer, which v0.1.3 to v0.1.8 send
  with v0.1.2's model names).  The first clean decode wins, else the first
  that fits (a newer release may add fields); none fitting is a
  :class:`~aicn.node.envelope.BodyDecodeError`.

Our messages are schema-neutral where they carry more than both schemas share
(:class:`~aicn.models.chat.ChatRequest`, :class:`~aicn.models.chat.ChatResult`,
:class:`~aicn.models.image.ImageRequest`, :class:`~aicn.models.image.ImageResult`:
``to_protobuf(module)``), or a message of either schema, converted by
:func:`convert`.

Error codes: ``result_code`` is numbered as its message's schema numbers them
(Go v0.1.9 renumbered, :data:`aicn.errors.V023_CODES`); :func:`code_to_wire`
and :func:`code_from_wire` map ours out and theirs in.  Codes neither table
knows (a model's own) pass as they are.
"""

from __future__ import annotations

import json

from google.protobuf import unknown_fields
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message as ProtoMessage

from aicn.errors import FROM_V023_CODES, V023_CODES, ErrorCode
from aicn.models.chat import ChatRequest, ChatResult
from aicn.models.image import ImageRequest, ImageResult
from aicn.node.envelope import BodyDecodeError, decode_body
from aicn.wire.versions import V012, V023, module_of, version_of

__all__ = [
    "other",
    "judge",
    "decode_body_tolerant",
    "convert",
    "to_wire",
    "code_to_wire",
    "code_from_wire",
    "printable",
]

#: String fields that name things: a control character there means a misread.
_IDENTIFIERS = frozenset({
    "project", "model", "models", "role", "cid", "api", "ipfs_node", "image_name", "url", "response_format",
    "wallet", "signature", "hash", "finish_reason", "object", "id", "size",
})
_STRING = FieldDescriptor.TYPE_STRING
_MESSAGE = FieldDescriptor.TYPE_MESSAGE
#: Unknown fields that do not make a decode unclean: (message full name, field number).
_TOLERATED_UNKNOWN = frozenset({("protocol.AIProjectResponse", 2)})


def other(version: str) -> str:
    """The schema that is not ``version``."""
    return V012 if version == V023 else V023


def printable(text: str) -> bool:
    """No C0 control character and no DEL (what a name never holds)."""
    return not any(ch < " " or ch == "\x7f" for ch in text)


def _content_is_json(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), (str, list))
    except (ValueError, UnicodeDecodeError):
        return False


def _walk(message: ProtoMessage, problems: list[str], unknown: list[str]) -> None:
    name = message.DESCRIPTOR.full_name
    for field in unknown_fields.UnknownFieldSet(message):
        if (name, field.field_number) not in _TOLERATED_UNKNOWN:
            unknown.append(f"{name}.{field.field_number}")
    if name == "protocol_v023.AIModelOfProject" and not message.model:
        problems.append("a model entry without a name")
    if name == "protocol_v023.ChatCompletionMessage" and not _content_is_json(message.content):
        problems.append("chat content that is no JSON string or array")
    for field, value in message.ListFields():
        values = value if field.is_repeated else [value]
        if field.type == _MESSAGE:
            for sub in values:
                _walk(sub, problems, unknown)
        elif field.type == _STRING and field.name in _IDENTIFIERS:
            if not all(printable(v) for v in values):
                problems.append(f"control characters in {name}.{field.name}")


def judge(message: ProtoMessage) -> tuple[list[str], list[str]]:
    """``(problems, unknown fields)`` of a decoded message: it fits when there are no
    problems, and is clean when there are no unknown fields either."""
    problems: list[str] = []
    unknown: list[str] = []
    _walk(message, problems, unknown)
    return problems, unknown


def decode_body_tolerant(msg_type: int, data: bytes,
                         first: str) -> tuple[str, str | None, ProtoMessage | None]:
    """Decode a plaintext body trying ``first``'s schema, then the other's (module docstring).

    Returns ``(schema, kind, message)``; ``kind`` is ``"req"``, ``"res"`` or None (an
    empty body, the same in both).  Raises :class:`BodyDecodeError` when neither fits
    (or :class:`~aicn.node.envelope.UnknownMessageType`).
    """
    fitting: list[tuple[str, str | None, ProtoMessage | None]] = []
    reasons: list[str] = []
    for version in (first, other(first)):
        try:
            kind, message = decode_body(msg_type, data, module_of(version))
        except BodyDecodeError as exc:
            reasons.append(f"{version}: {exc}")
            continue
        if message is None:
            return version, kind, message
        problems, unknown = judge(message)
        if problems:
            reasons.append(f"{version}: {problems[0]}")
            continue
        if not unknown:
            return version, kind, message
        fitting.append((version, kind, message))
    if fitting:
        return fitting[0]
    raise BodyDecodeError("body fits neither schema (" + "; ".join(reasons) + ")")


# -- conversions ------------------------------------------------------------------------------


def _projects_response(response, wire):
    """An ``AIProjectResponse`` in ``wire``'s schema; v0.1.2 keeps the model names only."""
    if version_of(response) == version_of(wire):
        return response
    if version_of(wire) == V012:
        return wire.AIProjectResponse(projects=[
            wire.AIProjectOfNode(project=p.project, models=[m.model for m in p.models])
            for p in response.projects])
    return wire.AIProjectResponse(projects=[
        wire.AIProjectOfNode(project=p.project, models=[wire.AIModelOfProject(model=m) for m in p.models])
        for p in response.projects])


def convert(message: ProtoMessage, version: str) -> ProtoMessage:
    """A request or response body message of either schema in ``version``'s schema."""
    if version_of(message) == version:
        return message
    wire = module_of(version)
    name = message.DESCRIPTOR.name
    if name == "ChatCompletionRequest":
        return ChatRequest.from_protobuf(message).to_protobuf(wire)
    if name == "ChatCompletionResponse":
        return ChatResult.from_protobuf(message).to_protobuf(wire)
    if name == "ImageGenerationRequest":
        return ImageRequest.from_protobuf(message).to_protobuf(wire)
    if name == "ImageGenerationResponse":
        return ImageResult.from_protobuf(message).to_protobuf(wire)
    if name == "AIProjectResponse":
        return _projects_response(message, wire)
    # Identity, host info and the empty requests: the same encoding in both.
    converted = getattr(wire, name).FromString(message.SerializeToString())
    converted.DiscardUnknownFields()
    return converted


def to_wire(value, version: str) -> ProtoMessage:
    """A schema-neutral object (``to_protobuf(module)``) or a message of either schema,
    as a message of ``version``'s schema."""
    if isinstance(value, ProtoMessage):
        return convert(value, version)
    return value.to_protobuf(module_of(version))


def code_to_wire(code: int, version: str) -> int:
    """Our ``result_code`` as a ``version`` peer numbers it."""
    if version != V023:
        return int(code)
    try:
        return V023_CODES[ErrorCode(code)]
    except ValueError:
        return int(code)


def code_from_wire(code: int, version: str) -> int:
    """A ``version`` peer's ``result_code`` in our numbering (its 1007 is our 1006)."""
    if version != V023:
        return int(code)
    found = FROM_V023_CODES.get(int(code))
    return int(found) if found is not None else int(code)

