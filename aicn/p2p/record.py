"""Signed envelopes (libp2p RFC 0002) and peer records (RFC 0003).

An envelope carries a payload, its type, the signer's public key and a
signature over the *domain-separated* fields::

    uvarint(len(domain))  || domain
    uvarint(len(type))    || type
    uvarint(len(payload)) || payload

so that a signature made for one purpose (domain) never verifies for another.
A peer record is an envelope with domain ``"libp2p-peer-record"``, payload
type ``03 01`` (the multicodec ``libp2p-peer-record``, as raw bytes the way go
and js write it) and a ``PeerRecord`` protobuf payload: the peer ID, a
sequence number that increases with every new record, and the addresses.

Decoding is strict about authenticity (signature, type, signer == record's
peer) and lenient about content: addresses we cannot parse are dropped.
"""

from __future__ import annotations

from typing import NamedTuple

from google.protobuf.message import DecodeError

from aicn.log import Logger
from aicn.p2p import binaddr
from aicn.p2p.keys import InvalidKey, PrivateKey, PublicKey
from aicn.p2p.pb import envelope_pb2, peer_record_pb2
from aicn.p2p.peerid import InvalidPeerID, PeerID
from aicn.p2p.varint import MAX_UINT64, encode_uvarint

log = Logger()

#: Domain string of peer record envelopes.
PEER_RECORD_DOMAIN = "libp2p-peer-record"
#: Payload type of peer records: multicodec 0x0301 as the two raw bytes go/js use.
PEER_RECORD_PAYLOAD_TYPE = b"\x03\x01"
#: Largest envelope we decode.  A record with 32 addresses is well under 4 KiB.
MAX_ENVELOPE_SIZE = 64 * 1024
#: Most addresses we keep from one record.
MAX_RECORD_ADDRS = 64


class RecordError(ValueError):
    """An envelope or peer record is malformed, forged, or not what we expected."""


class Envelope(NamedTuple):
    """A decoded envelope whose signature has been verified."""

    public_key: PublicKey
    payload_type: bytes
    payload: bytes
    signature: bytes


class PeerRecord(NamedTuple):
    """The content of a verified peer record."""

    peer_id: PeerID
    seq: int
    addrs: list[bytes]


def signing_buffer(domain: str, payload_type: bytes, payload: bytes) -> bytes:
    """The bytes an envelope signature covers (RFC 0002 "Signature Production")."""
    d = domain.encode("utf-8")
    return b"".join(
        (
            encode_uvarint(len(d)),
            d,
            encode_uvarint(len(payload_type)),
            payload_type,
            encode_uvarint(len(payload)),
            payload,
        )
    )


def seal(key: PrivateKey, domain: str, payload_type: bytes, payload: bytes) -> bytes:
    """Sign ``payload`` and return the encoded ``Envelope``."""
    signature = key.sign(signing_buffer(domain, payload_type, payload))
    env = envelope_pb2.Envelope(
        public_key=key.public_key.marshal(),
        payload_type=payload_type,
        payload=payload,
        signature=signature,
    )
    return env.SerializeToString(deterministic=True)


def open_envelope(data: bytes, domain: str, expected_type: bytes | None = None) -> Envelope:
    """Decode an envelope and verify its signature under ``domain``.

    Raises :class:`RecordError` for a malformed or oversized envelope, an
    undecodable key, a wrong payload type (when ``expected_type`` is given),
    or a bad signature.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RecordError("envelope must be bytes")
    if len(data) > MAX_ENVELOPE_SIZE:
        raise RecordError(f"envelope of {len(data)} bytes exceeds {MAX_ENVELOPE_SIZE}")
    env = envelope_pb2.Envelope()
    try:
        env.ParseFromString(bytes(data))
    except DecodeError as exc:
        raise RecordError(f"malformed envelope: {exc}") from None
    try:
        key = PublicKey.unmarshal(env.public_key)
    except InvalidKey as exc:
        raise RecordError(f"envelope has an invalid public key: {exc}") from None
    if expected_type is not None and env.payload_type != expected_type:
        raise RecordError(
            f"envelope payload type {env.payload_type.hex()} is not {expected_type.hex()}"
        )
    if not key.verify(signing_buffer(domain, env.payload_type, env.payload), env.signature):
        raise RecordError("envelope signature is invalid")
    return Envelope(key, env.payload_type, env.payload, env.signature)


def make_peer_record(key: PrivateKey, addrs: list[bytes], seq: int) -> bytes:
    """Build and sign a peer record for ``key``'s peer; return the envelope bytes.

    ``addrs`` are binary multiaddrs without ``/p2p``; ``seq`` must be a uint64
    that is larger than in any record this peer sent before (we use Unix time
    in milliseconds, like js-libp2p).
    """
    if not 0 <= seq <= MAX_UINT64:
        raise ValueError(f"peer record seq out of range: {seq}")
    rec = peer_record_pb2.PeerRecord(peer_id=key.peer_id().to_bytes(), seq=seq)
    for addr in addrs:
        rec.addresses.add(multiaddr=binaddr.validate(addr))
    payload = rec.SerializeToString(deterministic=True)
    return seal(key, PEER_RECORD_DOMAIN, PEER_RECORD_PAYLOAD_TYPE, payload)


def open_peer_record(envelope_bytes: bytes, expected_peer: PeerID | None = None) -> PeerRecord:
    """Verify a signed peer record; return ``(peer_id, seq, addrs)``.

    Raises :class:`RecordError` when the envelope is malformed or its
    signature invalid, the payload type is not a peer record, the record's
    peer ID is not the signer's, or (with ``expected_peer``) the record is
    for another peer.  Addresses that do not parse are dropped, and at most
    :data:`MAX_RECORD_ADDRS` are kept.
    """
    env = open_envelope(envelope_bytes, PEER_RECORD_DOMAIN, PEER_RECORD_PAYLOAD_TYPE)
    rec = peer_record_pb2.PeerRecord()
    try:
        rec.ParseFromString(env.payload)
    except DecodeError as exc:
        raise RecordError(f"malformed peer record: {exc}") from None
    try:
        peer = PeerID.from_bytes(rec.peer_id)
    except InvalidPeerID as exc:
        raise RecordError(f"peer record has an invalid peer ID: {exc}") from None
    if not peer.matches_public_key(env.public_key):
        raise RecordError(f"peer record for {peer} is signed by another key")
    if expected_peer is not None and peer != expected_peer:
        raise RecordError(f"peer record is for {peer}, expected {expected_peer}")
    addrs = []
    for info in rec.addresses:
        try:
            addrs.append(binaddr.validate(info.multiaddr))
        except binaddr.BinaryMultiaddrError as exc:
            log.debug("dropping bad address in peer record of {peer}: {error}", peer=peer, error=exc)
            continue
        if len(addrs) >= MAX_RECORD_ADDRS:
            break
    return PeerRecord(peer, rec.seq, addrs)
