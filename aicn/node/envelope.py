"""The ``protocol.Message`` envelope of the aicn pubsub topic (pure, no I/O).

Every request, response and heartbeat on the topic is one serialised
``protocol.Message``: a plaintext header, a ``type``, a ``body`` (a serialised
``*Body`` wrapper whose oneof holds either the request or the response,
optionally encrypted) and ``result_code``/``result_message``.

This module builds and parses envelopes and bodies and decides what a received
message is (:func:`classify`); it knows nothing of pubsub, keys or clocks, so
every rule here is testable and fuzzable on its own.

Dispatch (the Go node's rules, in its order, plus two checks it lacks):

1. the header's ``node_id`` must be the pubsub author (``from``) of the
   message, else it is spoofed and dropped (Go never checks this);
2. a present ``node_pub_key`` must be the key of ``node_id``, else dropped
   (a sender cannot claim another node's identity for an encrypted body);
3. ``id == "" and receiver == ""``: a heartbeat (even our own);
4. ``node_id`` is us: our own publication echoed back, ignored;
5. ``receiver`` is not us: someone else's traffic, ignored;
6. otherwise it is addressed to us.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import attrs
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from aicn.wire import protocol_pb2 as pb
from aicn.wire import protocol_v023_pb2 as pb23
from aicn.wire.versions import version_of

__all__ = [
    "MessageType",
    "BODY_TYPES",
    "HEARTBEAT_MESSAGE",
    "EnvelopeError",
    "UnknownMessageType",
    "BodyDecodeError",
    "Disposition",
    "BodyParts",
    "body_parts",
    "type_name",
    "build_message",
    "build_heartbeat",
    "decode_message",
    "encode_request",
    "encode_response",
    "decode_body",
    "classify",
]

MessageType = pb.MessageType

#: ``result_message`` of heartbeats.
HEARTBEAT_MESSAGE = "heartbeat"


@attrs.frozen
class BodyParts:
    """The protobuf classes of one message type: wrapper, request, response."""

    body: type[ProtoMessage]
    request: type[ProtoMessage]
    response: type[ProtoMessage]


#: The body class names of each message type (the same in both schemas).
_BODY_NAMES = {
    pb.PEER_IDENTITY: "PeerIdentity",
    pb.HOST_INFO: "HostInfo",
    pb.AI_PROJECT: "AIProject",
    pb.CHAT_COMPLETION: "ChatCompletion",
    pb.IMAGE_GENERATION: "ImageGeneration",
}


def _parts_of(wire) -> dict[int, BodyParts]:
    return {t: BodyParts(getattr(wire, f"{n}Body"), getattr(wire, f"{n}Request"),
                         getattr(wire, f"{n}Response"))
            for t, n in _BODY_NAMES.items()}


#: The message types this node understands, with their body classes (v0.1.2's).
BODY_TYPES: dict[int, BodyParts] = _parts_of(pb)
_BODY_TYPES_BY_VERSION = {version_of(pb): BODY_TYPES, version_of(pb23): _parts_of(pb23)}


class EnvelopeError(ValueError):
    """Bytes that are not a usable ``protocol.Message`` or body."""


class UnknownMessageType(EnvelopeError):
    """A ``type`` this node does not implement (answered with 1010)."""

    def __init__(self, msg_type: int) -> None:
        super().__init__(f"unknown message type {msg_type}")
        self.msg_type = msg_type


class BodyDecodeError(EnvelopeError):
    """A (decrypted) body that does not parse as its type's wrapper."""


def type_name(msg_type: int) -> str:
    """``PEER_IDENTITY`` etc., or the number for types we do not know."""
    try:
        return pb.MessageType.Name(msg_type)
    except ValueError:
        return str(msg_type)


def body_parts(msg_type: int, wire=pb) -> BodyParts:
    """The body classes of ``msg_type`` in ``wire``'s schema (a generated module or one of
    its messages); :class:`UnknownMessageType` for a type we do not implement."""
    try:
        return _BODY_TYPES_BY_VERSION[version_of(wire)][msg_type]
    except KeyError:
        raise UnknownMessageType(msg_type) from None



# -- envelopes ------------------------------------------------------------------------


def build_message(
    *,
    msg_type: int,
    client_version: str,
    timestamp: int,
    node_id: str,
    request_id: str = "",
    receiver: str = "",
    node_pub_key: bytes = b"",
    body: bytes = b"",
    result_code: int = 0,
    result_message: str = "",
) -> pb.Message:
    """A ``protocol.Message`` with the given header fields (``sign`` is never set)."""
    return pb.Message(
        header=pb.MessageHeader(
            client_version=client_version,
            timestamp=int(timestamp),
            id=request_id,
            node_id=node_id,
            receiver=receiver,
            node_pub_key=bytes(node_pub_key),
        ),
        type=msg_type,
        body=bytes(body),
        result_code=int(result_code),
        result_message=result_message,
    )


def build_heartbeat(
    *, client_version: str, timestamp: int, node_id: str, projects: list[tuple[str, list[str]]] | None = None,
    response: ProtoMessage | None = None,
) -> pb.Message:
    """The AI-project broadcast: no id, no receiver, plaintext ``AIProjectBody{res}``.

    ``response`` is the ``AIProjectResponse`` of either schema; without one,
    v0.1.2's is built from ``projects`` (``[(project, [model names])]``).
    """
    if response is None:
        response = pb.AIProjectResponse(
            projects=[pb.AIProjectOfNode(project=name, models=list(models))
                      for name, models in projects or ()]
        )
    return build_message(
        msg_type=pb.AI_PROJECT,
        client_version=client_version,
        timestamp=timestamp,
        node_id=node_id,
        body=encode_response(pb.AI_PROJECT, response),
        result_message=HEARTBEAT_MESSAGE,
    )


def decode_message(data: bytes) -> pb.Message:
    """Parse published bytes as a ``protocol.Message``; :class:`EnvelopeError` if they are not one."""
    msg = pb.Message()
    try:
        msg.ParseFromString(bytes(data))
    except (DecodeError, RecursionError, ValueError) as exc:
        raise EnvelopeError(f"not a protocol.Message: {exc}") from None
    return msg


# -- bodies ---------------------------------------------------------------------------


def encode_request(msg_type: int, request: ProtoMessage) -> bytes:
    """Serialise ``XBody{req: request}`` (an empty request is ``0a 00``), in ``request``'s schema."""
    parts = body_parts(msg_type, request)
    if not isinstance(request, parts.request):
        raise TypeError(f"{type_name(msg_type)} request must be {parts.request.__name__}")
    return parts.body(req=request).SerializeToString()


def encode_response(msg_type: int, response: ProtoMessage) -> bytes:
    """Serialise ``XBody{res: response}``, in ``response``'s schema."""
    parts = body_parts(msg_type, response)
    if not isinstance(response, parts.response):
        raise TypeError(f"{type_name(msg_type)} response must be {parts.response.__name__}")
    return parts.body(res=response).SerializeToString()


def decode_body(msg_type: int, data: bytes, wire=pb) -> tuple[str | None, ProtoMessage | None]:
    """Parse a plaintext body in ``wire``'s schema (default v0.1.2): ``("req", request)``,
    ``("res", response)`` or ``(None, None)``.

    ``(None, None)`` is a body with neither set (e.g. the empty body of an
    error reply).  Raises :class:`UnknownMessageType` or :class:`BodyDecodeError`.
    Which schema a peer's body is in: :mod:`aicn.node.schemas`.
    """
    parts = body_parts(msg_type, wire)
    body = parts.body()
    try:
        body.ParseFromString(bytes(data))
    except (DecodeError, RecursionError, ValueError) as exc:
        raise BodyDecodeError(f"{type_name(msg_type)} body does not parse: {exc}") from None
    kind = body.WhichOneof("data")
    if kind is None:
        return None, None
    return kind, getattr(body, kind)


# -- dispatch -------------------------------------------------------------------------


class Disposition(enum.Enum):
    """What a received message is to this node (see the module docstring)."""

    SPOOFED = "spoofed"
    BAD_KEY = "bad_key"
    HEARTBEAT = "heartbeat"
    OWN = "own"
    NOT_FOR_US = "not_for_us"
    ADDRESSED = "addressed"


def classify(
    msg: pb.Message,
    own_id: str,
    from_peer: str | None,
    key_matches: Callable[[bytes, str], bool],
) -> Disposition:
    """Apply the dispatch rules to ``msg`` received from pubsub author ``from_peer``.

    ``key_matches(node_pub_key, node_id)`` checks a header key against the
    claimed sender (:func:`aicn.node.crypto.key_matches_peer`).
    """
    header = msg.header
    if from_peer is None or header.node_id != from_peer:
        return Disposition.SPOOFED
    if header.node_pub_key and not key_matches(header.node_pub_key, header.node_id):
        return Disposition.BAD_KEY
    if not header.id and not header.receiver:
        return Disposition.HEARTBEAT
    if header.node_id == own_id:
        return Disposition.OWN
    if header.receiver != own_id:
        return Disposition.NOT_FOR_US
    return Disposition.ADDRESSED
