"""Circuit relay v2 messages as plain values, their framing, and vouchers.

Pure: no streams, no reactor (except :func:`read_message` and the ``read_``/``write_`` helpers,
two thin helpers over :class:`aicn.p2p.stream.Stream`).  Every malformed
input raises :class:`RelayCodecError`.

* :func:`encode_hop` / :func:`decode_hop`, :func:`encode_stop` /
  :func:`decode_stop` convert between message bodies (no length prefix) and
  the :class:`HopMessage` / :class:`StopMessage` dataclasses;
* :func:`make_voucher` / :func:`open_voucher` build and verify the signed
  reservation voucher (envelope domain ``libp2p-relay-rsvp``, payload type
  ``03 02``);
* :func:`limit_from_wire` turns a received ``Limit`` into seconds and bytes.
  js-libp2p 2.x puts *milliseconds* in ``Limit.duration`` (120000 for its
  2 min default) while the spec and go use seconds, so values above a day are
  read as milliseconds and the result is clamped to a day.

Decoding is strict about the message and lenient inside it: addresses that
are not valid binary multiaddrs are dropped, as go and js do.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

from google.protobuf.message import DecodeError

from aicn.p2p import binaddr
from aicn.p2p.keys import PrivateKey
from aicn.p2p.pb import circuit_pb2, voucher_pb2
from aicn.p2p.peerid import InvalidPeerID, PeerID
from aicn.p2p.record import RecordError, open_envelope, seal
from aicn.p2p.framing import FrameError, length_prefixed, read_frame
from aicn.p2p.stream import Stream

HOP_PROTOCOL = "/libp2p/circuit/relay/0.2.0/hop"
STOP_PROTOCOL = "/libp2p/circuit/relay/0.2.0/stop"

#: Largest hop/stop message we read or write (go uses 4 KiB; ours carry a few addrs and a voucher).
MAX_MESSAGE_SIZE = 8 * 1024
#: Addresses kept from one ``Peer`` or ``Reservation``.
MAX_ADDRS = 32
#: Envelope domain and payload type (multicodec 0x0302) of reservation vouchers.
VOUCHER_DOMAIN = "libp2p-relay-rsvp"
VOUCHER_PAYLOAD_TYPE = b"\x03\x02"
#: Longest circuit duration we believe a relay announces (seconds).
MAX_PLAUSIBLE_DURATION = 24 * 3600


class RelayCodecError(ValueError):
    """A hop/stop message or voucher is malformed, oversized or forged."""


class HopType(enum.IntEnum):
    RESERVE = 0
    CONNECT = 1
    STATUS = 2


class StopType(enum.IntEnum):
    CONNECT = 0
    STATUS = 1


class Status(enum.IntEnum):
    UNUSED = 0
    OK = 100
    RESERVATION_REFUSED = 200
    RESOURCE_LIMIT_EXCEEDED = 201
    PERMISSION_DENIED = 202
    CONNECTION_FAILED = 203
    NO_RESERVATION = 204
    MALFORMED_MESSAGE = 400
    UNEXPECTED_MESSAGE = 401


def status_name(status: Optional[int]) -> str:
    """Readable name of a status code (unknown codes as numbers)."""
    if status is None:
        return "no status"
    try:
        return Status(status).name
    except ValueError:
        return f"status {status}"


@dataclass(frozen=True)
class Limit:
    """Limits of a relayed connection: ``duration`` seconds, ``data`` bytes per
    direction; ``None`` or 0 means no limit."""

    duration: Optional[int] = None
    data: Optional[int] = None

    @property
    def limited(self) -> bool:
        return bool(self.duration) or bool(self.data)


@dataclass(frozen=True)
class PeerInfo:
    """A ``Peer``: a peer ID and binary multiaddrs."""

    peer: PeerID
    addrs: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Reservation:
    """A ``Reservation``: expiry (Unix seconds), relay addrs (with ``/p2p``), voucher envelope."""

    expire: int
    addrs: tuple[bytes, ...] = ()
    voucher: Optional[bytes] = None


@dataclass(frozen=True)
class HopMessage:
    type: HopType
    peer: Optional[PeerInfo] = None
    reservation: Optional[Reservation] = None
    limit: Optional[Limit] = None
    status: Optional[int] = None


@dataclass(frozen=True)
class StopMessage:
    type: StopType
    peer: Optional[PeerInfo] = None
    limit: Optional[Limit] = None
    status: Optional[int] = None


# -- encoding -----------------------------------------------------------------------------


def _fill_peer(pb, info: PeerInfo) -> None:
    pb.id = info.peer.to_bytes()
    pb.addrs.extend(info.addrs)


def _fill_limit(pb, limit: Limit) -> None:
    if limit.duration:
        pb.duration = min(int(limit.duration), 0xFFFFFFFF)
    if limit.data:
        pb.data = int(limit.data)


def encode_hop(msg: HopMessage) -> bytes:
    """Body of a ``HopMessage`` (no length prefix)."""
    pb = circuit_pb2.HopMessage(type=int(msg.type))
    if msg.peer is not None:
        _fill_peer(pb.peer, msg.peer)
    if msg.reservation is not None:
        r = msg.reservation
        pb.reservation.expire = r.expire
        pb.reservation.addrs.extend(r.addrs)
        if r.voucher is not None:
            pb.reservation.voucher = r.voucher
    if msg.limit is not None:
        pb.limit.SetInParent()
        _fill_limit(pb.limit, msg.limit)
    if msg.status is not None:
        pb.status = int(msg.status)
    return pb.SerializeToString(deterministic=True)


def encode_stop(msg: StopMessage) -> bytes:
    """Body of a ``StopMessage`` (no length prefix)."""
    pb = circuit_pb2.StopMessage(type=int(msg.type))
    if msg.peer is not None:
        _fill_peer(pb.peer, msg.peer)
    if msg.limit is not None:
        pb.limit.SetInParent()
        _fill_limit(pb.limit, msg.limit)
    if msg.status is not None:
        pb.status = int(msg.status)
    return pb.SerializeToString(deterministic=True)


# -- decoding -----------------------------------------------------------------------------


def _parse(cls, body: bytes):
    if len(body) > MAX_MESSAGE_SIZE:
        raise RelayCodecError(f"message of {len(body)} bytes exceeds {MAX_MESSAGE_SIZE}")
    pb = cls()
    try:
        pb.ParseFromString(bytes(body))
    except (DecodeError, ValueError) as exc:
        raise RelayCodecError(f"malformed {cls.__name__}: {exc}") from None
    return pb


def _addrs(values) -> tuple[bytes, ...]:
    out = []
    for value in values:
        try:
            out.append(binaddr.validate(value))
        except binaddr.BinaryMultiaddrError:
            continue
        if len(out) >= MAX_ADDRS:
            break
    return tuple(out)


def _peer(pb) -> PeerInfo:
    try:
        peer = PeerID.from_bytes(pb.id)
    except InvalidPeerID as exc:
        raise RelayCodecError(f"invalid peer ID: {exc}") from None
    return PeerInfo(peer, _addrs(pb.addrs))


def _limit(pb) -> Limit:
    return Limit(pb.duration if pb.HasField("duration") else None,
                 pb.data if pb.HasField("data") else None)


def _enum(cls, value: int, what: str):
    try:
        return cls(value)
    except ValueError:
        raise RelayCodecError(f"unknown {what} {value}") from None


def decode_hop(body: bytes) -> HopMessage:
    """Parse a ``HopMessage`` body; :class:`RelayCodecError` if it is not one."""
    pb = _parse(circuit_pb2.HopMessage, body)
    if not pb.HasField("type"):
        raise RelayCodecError("HopMessage without type")
    reservation = None
    if pb.HasField("reservation"):
        r = pb.reservation
        reservation = Reservation(r.expire, _addrs(r.addrs), r.voucher if r.HasField("voucher") else None)
    return HopMessage(
        type=_enum(HopType, pb.type, "HopMessage type"),
        peer=_peer(pb.peer) if pb.HasField("peer") else None,
        reservation=reservation,
        limit=_limit(pb.limit) if pb.HasField("limit") else None,
        status=pb.status if pb.HasField("status") else None,
    )


def decode_stop(body: bytes) -> StopMessage:
    """Parse a ``StopMessage`` body; :class:`RelayCodecError` if it is not one."""
    pb = _parse(circuit_pb2.StopMessage, body)
    if not pb.HasField("type"):
        raise RelayCodecError("StopMessage without type")
    return StopMessage(
        type=_enum(StopType, pb.type, "StopMessage type"),
        peer=_peer(pb.peer) if pb.HasField("peer") else None,
        limit=_limit(pb.limit) if pb.HasField("limit") else None,
        status=pb.status if pb.HasField("status") else None,
    )


def limit_from_wire(limit: Optional[Limit]) -> Limit:
    """A received limit in seconds/bytes, with js's milliseconds recognised and
    implausible durations clamped to :data:`MAX_PLAUSIBLE_DURATION`."""
    if limit is None:
        return Limit()
    duration = limit.duration or None
    if duration is not None and duration > MAX_PLAUSIBLE_DURATION:
        duration = max(1, duration // 1000)  # js-libp2p sends milliseconds
        duration = min(duration, MAX_PLAUSIBLE_DURATION)
    return Limit(duration, limit.data or None)


# -- vouchers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Voucher:
    relay: PeerID
    peer: PeerID
    expiration: int


def make_voucher(relay_key: PrivateKey, peer: PeerID, expiration: int) -> bytes:
    """A signed voucher envelope: ``relay_key``'s peer will relay to ``peer`` until ``expiration``."""
    payload = voucher_pb2.ReservationVoucher(
        relay=relay_key.peer_id().to_bytes(), peer=peer.to_bytes(), expiration=expiration
    ).SerializeToString(deterministic=True)
    return seal(relay_key, VOUCHER_DOMAIN, VOUCHER_PAYLOAD_TYPE, payload)


def open_voucher(data: bytes, relay: Optional[PeerID] = None, peer: Optional[PeerID] = None) -> Voucher:
    """Verify a voucher envelope; check the signer is the relay named inside
    (and ``relay``/``peer`` when given).  :class:`RelayCodecError` otherwise."""
    try:
        env = open_envelope(data, VOUCHER_DOMAIN, VOUCHER_PAYLOAD_TYPE)
    except RecordError as exc:
        raise RelayCodecError(f"bad voucher envelope: {exc}") from None
    pb = _parse(voucher_pb2.ReservationVoucher, env.payload)
    try:
        v_relay = PeerID.from_bytes(pb.relay)
        v_peer = PeerID.from_bytes(pb.peer)
    except InvalidPeerID as exc:
        raise RelayCodecError(f"voucher with invalid peer ID: {exc}") from None
    if not v_relay.matches_public_key(env.public_key):
        raise RelayCodecError("voucher is not signed by its relay")
    if relay is not None and v_relay != relay:
        raise RelayCodecError(f"voucher is from {v_relay}, expected {relay}")
    if peer is not None and v_peer != peer:
        raise RelayCodecError(f"voucher is for {v_peer}, expected {peer}")
    return Voucher(v_relay, v_peer, pb.expiration)


# -- framing over a stream ------------------------------------------------------------------


async def read_message(stream: Stream, max_size: int = MAX_MESSAGE_SIZE) -> bytes:
    """Read one length-prefixed message, consuming only its own bytes
    (the relayed connection's bytes follow it on the same stream)."""
    try:
        return await read_frame(stream, max_size)
    except FrameError as exc:
        raise RelayCodecError(f"bad relay message framing: {exc}") from None


async def read_hop(stream: Stream) -> HopMessage:
    return decode_hop(await read_message(stream))


async def read_stop(stream: Stream) -> StopMessage:
    return decode_stop(await read_message(stream))


async def write_hop(stream: Stream, msg: HopMessage) -> None:
    await stream.write(length_prefixed(encode_hop(msg)))


async def write_stop(stream: Stream, msg: StopMessage) -> None:
    await stream.write(length_prefixed(encode_stop(msg)))
