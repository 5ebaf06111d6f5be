"""Pubsub RPC framing: uvarint length-prefixed ``RPC`` protobufs (pure, no I/O).

Every RPC on a ``/floodsub/1.0.0`` stream is one length-prefixed protobuf.
Zero-length frames are legal: js sends an empty RPC as its first frame when
it has no subscriptions.  A length prefix above the limit fails at once,
before the body is buffered.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from google.protobuf.message import DecodeError

from aicn.p2p.pb import rpc_pb2
from aicn.p2p.framing import FrameTooLarge, LengthPrefixedReader, length_prefixed
from aicn.p2p.varint import VarintError

#: The floodsub protocol id (gossipsub peers speak it too).
FLOODSUB = "/floodsub/1.0.0"

#: Largest ``data`` we publish or accept (go-libp2p-pubsub's default).
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
#: Room for the rest of an RPC (from, seqno, topic, signature, key, framing)
#: around a maximum-size message.
RPC_OVERHEAD = 64 * 1024

RPC = rpc_pb2.RPC
Message = rpc_pb2.Message


class RPCError(ValueError):
    """A pubsub RPC frame is malformed or too large."""


class RPCTooLarge(RPCError):
    """A frame's length prefix exceeds the limit."""


def encode_rpc(rpc: RPC) -> bytes:
    """One RPC as a length-prefixed frame."""
    return length_prefixed(rpc.SerializeToString())


def subscriptions_frame(changes: Iterable[tuple[str, bool]]) -> bytes:
    """A frame announcing ``(topic, subscribe)`` changes; empty RPC if none."""
    rpc = RPC()
    for topic, subscribe in changes:
        rpc.subscriptions.add(subscribe=subscribe, topicid=topic)
    return encode_rpc(rpc)


def publish_frame(message: Message) -> bytes:
    """A frame carrying one published or forwarded message."""
    rpc = RPC()
    rpc.publish.append(message)
    return encode_rpc(rpc)


def decode_rpc(body: bytes) -> RPC:
    """Parse one frame body.  Raises :class:`RPCError` for anything malformed."""
    rpc = RPC()
    try:
        rpc.ParseFromString(bytes(body))
    except DecodeError as exc:
        raise RPCError(f"malformed pubsub RPC: {exc}") from None
    return rpc


class RPCReader:
    """Incremental decoder: feed bytes from a stream, get complete RPCs back.

    Raises :class:`RPCTooLarge` for a frame over ``max_frame`` and
    :class:`RPCError` for bad framing or a malformed protobuf; the stream is
    unusable afterwards (framing is lost), so the caller should reset it.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_MESSAGE_SIZE + RPC_OVERHEAD) -> None:
        self._frames = LengthPrefixedReader(max_frame)

    def feed(self, data: bytes) -> Iterator[RPC]:
        """Add ``data``; return an iterator over the RPCs it completed.

        Framing errors raise here; a malformed protobuf raises when the
        iterator reaches it, so the RPCs before it can still be handled.
        """
        try:
            bodies = self._frames.feed(data)
        except FrameTooLarge as exc:
            raise RPCTooLarge(str(exc)) from None
        except VarintError as exc:
            raise RPCError(f"bad pubsub framing: {exc}") from None
        return map(decode_rpc, bodies)

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a frame."""
        return self._frames.buffered
