"""libp2p identify: ``/ipfs/id/1.0.0`` and ``/ipfs/id/push/1.0.0``.

The responder (or pusher) writes uvarint-length-prefixed ``Identify``
protobufs and half-closes; the reader reads until EOF.  One message is the
norm (js, and us), but go splits a message whose signed peer record would
make it large into two, and protobuf concatenation is merging, so the reader
accepts up to :data:`MAX_MESSAGES` frames and parses their concatenation.

The pure part (:func:`build_identify`, :func:`parse_identify`,
:func:`decode_frames`) knows nothing about streams; the async functions at
the bottom drive it over a :class:`~aicn.p2p.stream.Stream`.

Leniency, because go and js differ: ``observedAddr`` loses a trailing
``/p2p/<id>`` (js adds it, go does not); unparsable listen or observed
addresses are skipped; a signed peer record that is missing is fine, and one
that is invalid or for another peer is ignored (logged).  Strict where it
matters: an identify *response* must carry the public key of the peer we
think we are talking to (pushes omit the key, but one that is present must
match too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol, Sequence

from google.protobuf.message import DecodeError

from aicn import AGENT_VERSION, PROTOCOL_VERSION
from aicn.log import Logger
from aicn.p2p import binaddr
from aicn.p2p.keys import InvalidKey, PrivateKey, PublicKey
from aicn.p2p.pb import identify_pb2
from aicn.p2p.peerid import PeerID
from aicn.p2p.record import PeerRecord, RecordError, make_peer_record, open_peer_record
from aicn.p2p.stream import Stream, StreamError
from aicn.p2p.framing import FrameError, LengthPrefixedReader, length_prefixed, read_frames_to_eof

log = Logger()

ID = "/ipfs/id/1.0.0"
ID_PUSH = "/ipfs/id/push/1.0.0"

#: Largest single Identify message, and largest total read from one stream.
MAX_IDENTIFY_SIZE = 64 * 1024
#: Most length-prefixed messages merged from one stream (go sends up to 2).
MAX_MESSAGES = 10
#: Most listen addresses and protocols kept from one message.
MAX_LISTEN_ADDRS = 64
MAX_PROTOCOLS = 512
#: Longest protocol id or version string kept.
MAX_STRING = 1024


class IdentifyError(ValueError):
    """An identify message is malformed, too large, or from the wrong peer."""


@dataclass(frozen=True)
class IdentifyInfo:
    """What we tell peers about ourselves."""

    public_key: PublicKey
    #: Binary multiaddrs we listen on, without ``/p2p``.
    listen_addrs: tuple[bytes, ...] = ()
    #: Protocols we accept inbound streams for, sorted.
    protocols: tuple[str, ...] = ()
    protocol_version: str = PROTOCOL_VERSION
    agent_version: str = AGENT_VERSION
    #: Envelope bytes of our signed peer record, if any.
    signed_peer_record: Optional[bytes] = None


@dataclass
class IdentifyResult:
    """What a peer told us, after validation."""

    #: The peer the message is from: the expected one, else the key's peer.
    peer: Optional[PeerID]
    #: The peer's key (``None`` only for pushes that omit it).
    public_key: Optional[PublicKey]
    protocol_version: Optional[str]
    agent_version: Optional[str]
    #: Valid listen addresses as sent (binary multiaddrs).
    listen_addrs: list[bytes] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)
    #: Our address as the peer sees it, without ``/p2p`` (``None`` if absent or bad).
    observed_addr: Optional[bytes] = None
    #: The verified signed peer record, if one was sent and is valid.
    signed_record: Optional[PeerRecord] = None
    #: The envelope bytes of that record (to store and pass on, e.g. in kad).
    signed_record_envelope: Optional[bytes] = None
    is_push: bool = False

    @property
    def addrs(self) -> list[bytes]:
        """The addresses to trust: the signed record's if valid, else the listen addrs."""
        if self.signed_record is not None:
            return list(self.signed_record.addrs)
        return list(self.listen_addrs)


class IdentifyContext(Protocol):
    """The connection facts the identify functions need; the swarm provides it.

    * ``local_key``: our identity key.
    * ``remote_peer``: the authenticated peer at the other end.
    * ``remote_addr``: the connection's remote multiaddr (binary, no ``/p2p``),
      sent back as ``observedAddr``; ``None`` when there is none to tell.
    * ``info()``: our current :class:`IdentifyInfo`.
    """

    local_key: PrivateKey
    remote_peer: PeerID
    remote_addr: Optional[bytes]

    def info(self) -> IdentifyInfo: ...


class LocalIdentity:
    """Builds our :class:`IdentifyInfo`, re-signing the peer record on change.

    The record's sequence number is Unix time in milliseconds (as js), bumped
    so it strictly increases even if the clock does not move or goes back.
    ``clock`` is anything with ``seconds()`` (a reactor, ``task.Clock``).
    """

    def __init__(
        self,
        key: PrivateKey,
        clock,
        protocol_version: str = PROTOCOL_VERSION,
        agent_version: str = AGENT_VERSION,
        sign_records: bool = True,
    ) -> None:
        self.key = key
        self.clock = clock
        self.protocol_version = protocol_version
        self.agent_version = agent_version
        self.sign_records = sign_records
        self._seq = 0
        self._cached: Optional[IdentifyInfo] = None

    def next_seq(self) -> int:
        """A record sequence number larger than every earlier one."""
        self._seq = max(int(self.clock.seconds() * 1000), self._seq + 1)
        return self._seq

    def info(self, listen_addrs: Sequence[bytes], protocols: Sequence[str]) -> IdentifyInfo:
        """Our info for these addresses and protocols (cached while they do not change)."""
        addrs = tuple(dict.fromkeys(binaddr.validate(a) for a in listen_addrs))
        protos = tuple(sorted(set(protocols)))
        cached = self._cached
        if cached is not None and cached.listen_addrs == addrs and cached.protocols == protos:
            return cached
        record = make_peer_record(self.key, list(addrs), self.next_seq()) if self.sign_records else None
        self._cached = IdentifyInfo(
            public_key=self.key.public_key,
            listen_addrs=addrs,
            protocols=protos,
            protocol_version=self.protocol_version,
            agent_version=self.agent_version,
            signed_peer_record=record,
        )
        return self._cached


# -- pure encoding and decoding ------------------------------------------------------


def build_identify(
    host_info: IdentifyInfo,
    observed_addr: Optional[bytes],
    include_key: bool = True,
    include_observed: bool = True,
) -> bytes:
    """Encode an ``Identify`` protobuf (without length prefix).

    Pushes pass ``include_key=False, include_observed=False``, as js does.
    """
    msg = identify_pb2.Identify(
        protocolVersion=host_info.protocol_version,
        agentVersion=host_info.agent_version,
        listenAddrs=list(host_info.listen_addrs),
        protocols=list(host_info.protocols),
    )
    if include_key:
        msg.publicKey = host_info.public_key.marshal()
    if include_observed and observed_addr:
        msg.observedAddr = observed_addr
    if host_info.signed_peer_record:
        msg.signedPeerRecord = host_info.signed_peer_record
    return msg.SerializeToString(deterministic=True)


def encode_frame(message: bytes) -> bytes:
    """Length-prefix one encoded message for the wire."""
    return length_prefixed(message)


def decode_frames(data: bytes) -> list[bytes]:
    """Split everything read from an identify stream into message bodies.

    Raises :class:`IdentifyError` for a frame over :data:`MAX_IDENTIFY_SIZE`,
    more than :data:`MAX_MESSAGES` frames, or trailing bytes of a partial frame.
    """
    reader = LengthPrefixedReader(MAX_IDENTIFY_SIZE)
    try:
        frames = reader.feed(data)
    except FrameError as exc:
        raise IdentifyError(f"bad identify framing: {exc}") from None
    if reader.buffered:
        raise IdentifyError(f"identify stream ended inside a message ({reader.buffered} bytes left)")
    if len(frames) > MAX_MESSAGES:
        raise IdentifyError(f"{len(frames)} identify messages on one stream")
    return frames


def _text(value) -> Optional[str]:
    # proto2 strings holding invalid UTF-8 come back from upb as bytes.
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value[:MAX_STRING]


def parse_identify(data: bytes, expected_peer: Optional[PeerID], is_push: bool) -> IdentifyResult:
    """Decode and validate an ``Identify`` protobuf (the concatenated bodies).

    Raises :class:`IdentifyError` when the protobuf is malformed, or the public
    key is missing (responses only), undecodable, or not ``expected_peer``'s.
    Everything else is lenient, see the module docstring.
    """
    if len(data) > MAX_IDENTIFY_SIZE * MAX_MESSAGES:
        raise IdentifyError("identify message too large")
    msg = identify_pb2.Identify()
    try:
        msg.ParseFromString(bytes(data))
    except DecodeError as exc:
        raise IdentifyError(f"malformed identify message: {exc}") from None

    key: Optional[PublicKey] = None
    peer = expected_peer
    if msg.HasField("publicKey"):
        try:
            key = PublicKey.unmarshal(msg.publicKey)
        except InvalidKey as exc:
            raise IdentifyError(f"identify carries an invalid public key: {exc}") from None
        key_peer = PeerID.from_public_key(key)
        if expected_peer is not None and key_peer != expected_peer:
            raise IdentifyError(f"identify public key is {key_peer}'s, expected {expected_peer}")
        peer = key_peer
    elif not is_push:
        raise IdentifyError("identify response lacks the public key")

    listen = []
    for raw in msg.listenAddrs:
        if len(listen) >= MAX_LISTEN_ADDRS:
            break
        try:
            addr, _ = binaddr.strip_p2p(raw)
        except binaddr.BinaryMultiaddrError as exc:
            log.debug("skipping bad listen address from {peer}: {error}", peer=peer, error=exc)
            continue
        if addr not in listen:
            listen.append(addr)

    protocols = []
    for proto in msg.protocols:
        if isinstance(proto, bytes) or not proto or len(proto) > MAX_STRING:
            continue  # not valid UTF-8, empty, or absurd: cannot be a protocol we speak
        protocols.append(proto)
        if len(protocols) >= MAX_PROTOCOLS:
            break

    observed = None
    if msg.HasField("observedAddr"):
        try:
            observed, _ = binaddr.strip_p2p(msg.observedAddr)
        except binaddr.BinaryMultiaddrError as exc:
            log.debug("ignoring bad observed address from {peer}: {error}", peer=peer, error=exc)

    record = envelope = None
    if msg.HasField("signedPeerRecord"):
        try:
            record = open_peer_record(msg.signedPeerRecord, peer)
            envelope = bytes(msg.signedPeerRecord)
        except RecordError as exc:
            log.info("ignoring invalid signed peer record from {peer}: {error}", peer=peer, error=exc)
        else:
            peer = record.peer_id

    return IdentifyResult(
        peer=peer,
        public_key=key,
        protocol_version=_text(msg.protocolVersion) if msg.HasField("protocolVersion") else None,
        agent_version=_text(msg.agentVersion) if msg.HasField("agentVersion") else None,
        listen_addrs=listen,
        protocols=protocols,
        observed_addr=observed,
        signed_record=record,
        signed_record_envelope=envelope,
        is_push=is_push,
    )


# -- stream functions ------------------------------------------------------------------


async def _read_frames(stream: Stream) -> list[bytes]:
    """Read length-prefixed messages until EOF, enforcing the limits as bytes arrive."""
    try:
        return await read_frames_to_eof(stream, MAX_IDENTIFY_SIZE, MAX_MESSAGES)
    except FrameError as exc:
        raise IdentifyError(f"bad identify framing: {exc}") from None


async def _receive(stream: Stream, expected_peer: Optional[PeerID], is_push: bool) -> IdentifyResult:
    try:
        frames = await _read_frames(stream)
        result = parse_identify(b"".join(frames), expected_peer, is_push)
    except IdentifyError:
        stream.reset()
        raise
    try:
        await stream.close()
    except StreamError:
        pass  # the answer is complete; a late reset does not matter
    return result


async def handle_identify(stream: Stream, ctx: IdentifyContext) -> None:
    """Serve ``/ipfs/id/1.0.0``: send our info, then half-close.  Never raises."""
    try:
        msg = build_identify(ctx.info(), ctx.remote_addr)
        await stream.write(encode_frame(msg))
        await stream.close_write()
    except StreamError as exc:
        log.debug("identify to {peer} failed: {error}", peer=ctx.remote_peer, error=exc)
    except Exception:
        log.failure("identify handler for {peer} crashed", peer=ctx.remote_peer)
        stream.reset()


async def request_identify(stream: Stream, ctx: IdentifyContext) -> IdentifyResult:
    """Ask the peer who it is over a fresh ``/ipfs/id/1.0.0`` stream.

    Raises :class:`IdentifyError` (after resetting the stream) for a bad or
    mismatched answer, and :class:`~aicn.p2p.stream.StreamError` if the
    stream fails.
    """
    return await _receive(stream, ctx.remote_peer, is_push=False)


async def handle_identify_push(stream: Stream, ctx: IdentifyContext) -> Optional[IdentifyResult]:
    """Serve ``/ipfs/id/push/1.0.0``: read the pushed update.

    Returns the result for the caller to apply, or ``None`` (logged, stream
    reset) if the push was bad or the stream failed.  Never raises.
    """
    try:
        return await _receive(stream, ctx.remote_peer, is_push=True)
    except (IdentifyError, StreamError) as exc:
        log.info("bad identify push from {peer}: {error}", peer=ctx.remote_peer, error=exc)
    except Exception:
        log.failure("identify push handler for {peer} crashed", peer=ctx.remote_peer)
        stream.reset()
    return None


async def send_identify_push(stream: Stream, ctx: IdentifyContext) -> None:
    """Push our current info (no key, no observed address) and half-close.

    Raises :class:`~aicn.p2p.stream.StreamError` if the stream fails.
    """
    msg = build_identify(ctx.info(), None, include_key=False, include_observed=False)
    await stream.write(encode_frame(msg))
    await stream.close_write()
