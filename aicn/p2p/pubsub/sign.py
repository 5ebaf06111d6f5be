"""StrictSign message signing and validation, and sequence numbers (pure).

The signature covers ``b"libp2p-pubsub:" + Message{from, data, seqno, topic}``
protobuf-encoded with fields 1 to 4 only, in field order; ``signature`` and
``key`` are left out.  We build those bytes by hand (:func:`signing_bytes`)
so that they never depend on a protobuf runtime's field ordering.

Compatibility notes:

* go omits ``key`` when the public key is inlined in the peer id (ed25519,
  secp256k1), js always sends it.  A present ``key`` must hash to ``from``.
* js strips leading zero bytes from ``seqno`` before signing and re-encodes
  a received seqno minimally before verifying; a seqno with a leading zero
  therefore never verifies in js.  Our seqnos are a 64-bit counter seeded
  from Unix nanoseconds, as go's, whose top byte is never zero.
* Messages are identified by author plus seqno padded to 8 bytes, so a js
  (stripped) and a go (padded) encoding of one seqno are the same message.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence

from aicn.p2p.keys import InvalidKey, PrivateKey, PublicKey
from aicn.p2p.pb import rpc_pb2
from aicn.p2p.peerid import InvalidPeerID, PeerID
from aicn.p2p.varint import encode_uvarint

SIGN_PREFIX = b"libp2p-pubsub:"
SEQNO_LEN = 8
#: Most topics one message may name (old go sent a list; everyone now sends one).
MAX_TOPICS = 16
#: Longest topic name we accept.
MAX_TOPIC_LEN = 1024


class MessageError(ValueError):
    """A pubsub message is malformed or lacks a field StrictSign requires."""


class SignatureError(MessageError):
    """A pubsub message's key or signature is invalid."""


def _field(number: int, value: bytes) -> bytes:
    # Length-delimited field: tag (number << 3 | wire type 2), length, bytes.
    return encode_uvarint(number << 3 | 2) + encode_uvarint(len(value)) + value


def signing_bytes(
    from_: Optional[bytes], data: Optional[bytes], seqno: Optional[bytes], topics: Sequence[str]
) -> bytes:
    """The bytes a StrictSign signature covers; ``None`` means "field absent"."""
    out = bytearray(SIGN_PREFIX)
    if from_ is not None:
        out += _field(1, from_)
    if data is not None:
        out += _field(2, data)
    if seqno is not None:
        out += _field(3, seqno)
    for topic in topics:
        out += _field(4, topic.encode("utf-8"))
    return bytes(out)


def sign_message(key: PrivateKey, topic: str, data: bytes, seqno: bytes) -> rpc_pb2.Message:
    """A signed message from ``key``'s peer; ``key`` is set only if not inlined in the id."""
    author = PeerID.from_public_key(key.public_key)
    from_ = author.to_bytes()
    msg = rpc_pb2.Message(data=data, seqno=seqno, topicIDs=[topic])
    setattr(msg, "from", from_)  # "from" is a Python keyword
    msg.signature = key.sign(signing_bytes(from_, data, seqno, [topic]))
    if author.extract_public_key() is None:
        msg.key = key.public_key.marshal()
    return msg


@dataclass(frozen=True)
class ValidMessage:
    """A message that passed :func:`validate_message`."""

    author: PeerID
    data: bytes
    #: As received (js may have stripped leading zeros).
    seqno: bytes
    topics: tuple[str, ...]

    @property
    def message_id(self) -> bytes:
        return message_id(self.author, self.seqno)


def message_key(msg: rpc_pb2.Message) -> tuple[PeerID, bytes]:
    """The author and dedup id of a received message, checked cheaply before verifying.

    Raises :class:`MessageError` if ``from`` or ``seqno`` is missing or bad.
    """
    if not msg.HasField("from") or not msg.HasField("seqno"):
        raise MessageError("message lacks from or seqno")
    try:
        author = PeerID.from_bytes(getattr(msg, "from"))
    except InvalidPeerID as exc:
        raise MessageError(f"message from is not a peer id: {exc}") from None
    if len(msg.seqno) > SEQNO_LEN:
        raise MessageError(f"seqno of {len(msg.seqno)} bytes")
    return author, message_id(author, msg.seqno)


def validate_message(msg: rpc_pb2.Message, max_data: Optional[int] = None) -> ValidMessage:
    """Check a received message under StrictSign.

    Raises :class:`MessageError` when a required field is missing or bad
    (``from``, ``data``, ``seqno`` of at most 8 bytes, one or more valid
    topics, ``signature``) and :class:`SignatureError` when the key does not
    belong to ``from`` or the signature does not verify.
    """
    for name in ("from", "data", "seqno", "signature"):
        if not msg.HasField(name):
            raise MessageError(f"message lacks {name}")
    from_ = getattr(msg, "from")
    try:
        author = PeerID.from_bytes(from_)
    except InvalidPeerID as exc:
        raise MessageError(f"message from is not a peer id: {exc}") from None
    if len(msg.seqno) > SEQNO_LEN:
        raise MessageError(f"seqno of {len(msg.seqno)} bytes")
    if max_data is not None and len(msg.data) > max_data:
        raise MessageError(f"message data of {len(msg.data)} bytes exceeds {max_data}")
    topics = list(msg.topicIDs)
    if not topics or len(topics) > MAX_TOPICS:
        raise MessageError(f"message names {len(topics)} topics")
    for topic in topics:
        # upb hands proto2 strings that are not valid UTF-8 back as bytes.
        if not isinstance(topic, str) or not topic or len(topic) > MAX_TOPIC_LEN:
            raise MessageError("message has an invalid topic")

    key = _author_key(msg, author)
    signed = signing_bytes(from_, msg.data, msg.seqno, topics)
    if not key.verify(signed, msg.signature):
        raise SignatureError(f"invalid signature on message from {author}")
    return ValidMessage(author=author, data=bytes(msg.data), seqno=bytes(msg.seqno), topics=tuple(topics))


def _author_key(msg: rpc_pb2.Message, author: PeerID) -> PublicKey:
    """The key to verify with: ``key`` if sent (it must hash to ``from``), else the inlined one."""
    if msg.HasField("key"):
        try:
            key = PublicKey.unmarshal(msg.key)
        except InvalidKey as exc:
            raise SignatureError(f"message key is invalid: {exc}") from None
        if not author.matches_public_key(key):
            raise SignatureError(f"message key does not belong to {author}")
        return key
    try:
        key = author.extract_public_key()
    except InvalidKey as exc:
        raise SignatureError(f"key inlined in {author} is invalid: {exc}") from None
    if key is None:
        raise SignatureError(f"message from {author} lacks the key its peer id hashes")
    return key


# -- sequence numbers and message ids -----------------------------------------------------


def normalise_seqno(seqno: bytes) -> bytes:
    """``seqno`` as 8 bytes, left-padded with zeros (js strips them)."""
    return bytes(seqno).rjust(SEQNO_LEN, b"\0")


def message_id(author: PeerID, seqno: bytes) -> bytes:
    """The dedup key: author's peer id bytes plus the 8-byte seqno."""
    return author.to_bytes() + normalise_seqno(seqno)


class SeqnoCounter:
    """8-byte big-endian sequence numbers whose first byte is never zero.

    Seeded from Unix time in nanoseconds, as go does, so numbers keep rising
    across restarts; a seed below 2**56 (a test clock) gets its top byte set.
    """

    def __init__(self, seed: Optional[int] = None) -> None:
        value = time.time_ns() if seed is None else seed
        value %= 1 << 64
        if value < 1 << 56:
            value += 1 << 56
        self._next = value

    def next(self) -> bytes:
        value = self._next
        self._next = value + 1 if value + 1 < 1 << 64 else 1 << 56
        return value.to_bytes(SEQNO_LEN, "big")
