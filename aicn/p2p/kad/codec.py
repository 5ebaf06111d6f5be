"""Kad RPC messages: the protobuf ``Message`` as plain values, and its framing.

Every message on a kad stream is a uvarint length-prefixed ``Message``
protobuf (proto/p2p/kad.proto).  This module is pure: :func:`encode_frame`
turns a :class:`KadMessage` into bytes, :func:`decode_message` parses one
message body, and :class:`MessageDecoder` splits a byte stream into messages.
Every malformed input raises :class:`KadCodecError`.

Decoding is strict about the frame and the protobuf, and lenient inside:
a peer entry with an invalid peer ID, or an address that is not a binary
multiaddr, is dropped rather than failing the whole message, since go and js
both skip bad entries.  A trailing ``/p2p/<id>`` on an address is removed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional

from google.protobuf.message import DecodeError

from aicn.p2p import binaddr
from aicn.p2p.pb import kad_pb2
from aicn.p2p.peerid import InvalidPeerID, PeerID
from aicn.p2p.framing import FrameTooLarge, LengthPrefixedReader, length_prefixed
from aicn.p2p.varint import VarintError

#: Largest message we read or write (go's limit is 4 MiB; real ones are a few KiB).
MAX_MESSAGE_SIZE = 1024 * 1024
#: Peer entries kept from one list of a message; a response carries k (20).
MAX_PEERS_PER_LIST = 100
#: Addresses kept per peer entry.
MAX_ADDRS_PER_PEER = 32


class KadCodecError(ValueError):
    """A kad message is too large, truncated or not a valid ``Message``."""


class MessageType(enum.IntEnum):
    PUT_VALUE = 0
    GET_VALUE = 1
    ADD_PROVIDER = 2
    GET_PROVIDERS = 3
    FIND_NODE = 4
    PING = 5


class ConnectionType(enum.IntEnum):
    NOT_CONNECTED = 0
    CONNECTED = 1
    CAN_CONNECT = 2
    CANNOT_CONNECT = 3


@dataclass(frozen=True)
class KadPeer:
    """A ``Message.Peer``: a peer ID and its binary multiaddrs (no ``/p2p``)."""

    peer: PeerID
    addrs: tuple[bytes, ...] = ()
    connection: int = ConnectionType.NOT_CONNECTED


@dataclass(frozen=True)
class KadRecord:
    """A ``Record`` (values are not stored by aicn; decoded for completeness)."""

    key: bytes = b""
    value: bytes = b""
    time_received: str = ""


@dataclass
class KadMessage:
    """One kad RPC message.  ``type`` is an ``int`` when the peer sent a type
    we do not know (proto3 enums are open)."""

    type: int
    key: bytes = b""
    closer_peers: list[KadPeer] = field(default_factory=list)
    provider_peers: list[KadPeer] = field(default_factory=list)
    record: Optional[KadRecord] = None
    cluster_level: int = 0


def _peer_to_pb(peer: KadPeer, out) -> None:
    out.id = peer.peer.to_bytes()
    out.addrs.extend(peer.addrs)
    if peer.connection:
        out.connection = int(peer.connection)


def encode_message(msg: KadMessage) -> bytes:
    """The protobuf body of ``msg`` (no length prefix)."""
    pb = kad_pb2.Message()
    pb.type = int(msg.type)
    if msg.key:
        pb.key = msg.key
    if msg.cluster_level:
        pb.clusterLevelRaw = msg.cluster_level
    if msg.record is not None:
        pb.record.key = msg.record.key
        pb.record.value = msg.record.value
        pb.record.timeReceived = msg.record.time_received
    for peer in msg.closer_peers:
        _peer_to_pb(peer, pb.closerPeers.add())
    for peer in msg.provider_peers:
        _peer_to_pb(peer, pb.providerPeers.add())
    return pb.SerializeToString()


def encode_frame(msg: KadMessage, max_size: int = MAX_MESSAGE_SIZE) -> bytes:
    """``msg`` with its uvarint length prefix, ready for the stream."""
    body = encode_message(msg)
    if len(body) > max_size:
        raise KadCodecError(f"message of {len(body)} bytes exceeds limit of {max_size}")
    return length_prefixed(body)


def _clean_addr(addr: bytes) -> Optional[bytes]:
    try:
        stripped, _ = binaddr.strip_p2p(addr)
        return binaddr.validate(stripped)
    except binaddr.BinaryMultiaddrError:
        return None


def _peers_from_pb(entries) -> list[KadPeer]:
    out = []
    seen = set()
    for entry in entries[:MAX_PEERS_PER_LIST]:
        try:
            peer = PeerID.from_bytes(entry.id)
        except InvalidPeerID:
            continue
        if peer in seen:
            continue
        seen.add(peer)
        addrs = []
        for raw in entry.addrs[:MAX_ADDRS_PER_PEER]:
            addr = _clean_addr(raw)
            if addr is not None and addr not in addrs:
                addrs.append(addr)
        out.append(KadPeer(peer, tuple(addrs), int(entry.connection)))
    return out


def decode_message(body: bytes) -> KadMessage:
    """Parse one message body; :class:`KadCodecError` if it is not a ``Message``."""
    if len(body) > MAX_MESSAGE_SIZE:
        raise KadCodecError(f"message of {len(body)} bytes exceeds limit of {MAX_MESSAGE_SIZE}")
    pb = kad_pb2.Message()
    try:
        pb.ParseFromString(bytes(body))
    except (DecodeError, ValueError, TypeError, RecursionError) as exc:
        raise KadCodecError(f"invalid kad message: {exc}") from None
    try:
        msg_type: int = MessageType(pb.type)
    except ValueError:
        msg_type = pb.type
    record = None
    if pb.HasField("record"):
        record = KadRecord(pb.record.key, pb.record.value, pb.record.timeReceived)
    return KadMessage(
        type=msg_type,
        key=pb.key,
        closer_peers=_peers_from_pb(pb.closerPeers),
        provider_peers=_peers_from_pb(pb.providerPeers),
        record=record,
        cluster_level=pb.clusterLevelRaw,
    )


class MessageDecoder:
    """Incremental framing: feed stream bytes, get complete :class:`KadMessage` s."""

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self.max_size = max_size
        self._frames = LengthPrefixedReader(max_size)

    def feed(self, data: bytes) -> list[KadMessage]:
        try:
            frames = self._frames.feed(data)
        except FrameTooLarge as exc:
            raise KadCodecError(str(exc)) from None
        except VarintError as exc:
            raise KadCodecError(f"bad length prefix: {exc}") from None
        return [decode_message(frame) for frame in frames]

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message still waiting for the rest."""
        return self._frames.buffered
