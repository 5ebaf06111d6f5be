"""Fuzz targets of the libp2p decoders (see :mod:`tests.fuzz.harness`)."""

from __future__ import annotations

import hashlib
import struct

from twisted.internet.task import Clock

from aicn.p2p import binaddr
from aicn.p2p.framing import FrameError, LengthPrefixedReader, length_prefixed, read_frame
from aicn.p2p.identify import (
    IdentifyError,
    IdentifyInfo,
    build_identify,
    decode_frames,
    encode_frame as identify_frame,
    handle_identify_push,
    parse_identify,
    request_identify,
)
from aicn.p2p.kad import KadDHT, KadMessage, KadPeer, KadProtocolError, MessageType
from aicn.p2p.kad.codec import KadCodecError, KadRecord, MessageDecoder, encode_frame as kad_frame
from aicn.p2p.kad.rpc import read_message as kad_read_message
from aicn.p2p.keys import InvalidKey, PublicKey
from aicn.p2p.multistream import (
    MultistreamDialer,
    MultistreamError,
    MultistreamListener,
    encode_message as ms_message,
    negotiate_inbound,
)
from aicn.p2p.noise import (
    MAX_FRAME,
    SIGNATURE_PREFIX,
    CipherState,
    HandshakePayload,
    NoiseError,
    NoiseHandshake,
    NoiseTransport,
    XXHandshakeState,
    decode_handshake_payload,
    encode_handshake_payload,
)
from aicn.p2p.peerid import InvalidPeerID, PeerID
from aicn.p2p.peerstore import Peerstore
from aicn.p2p.pubsub.floodsub import FLOODSUB, FloodSub
from aicn.p2p.pubsub.rpc import RPC, publish_frame, subscriptions_frame
from aicn.p2p.pubsub.sign import sign_message
from aicn.p2p.record import RecordError, make_peer_record, open_envelope, open_peer_record
from aicn.p2p.relay.codec import (
    HopMessage,
    HopType,
    Limit,
    PeerInfo,
    RelayCodecError,
    Reservation,
    Status,
    StopMessage,
    StopType,
    decode_hop,
    decode_stop,
    encode_hop,
    encode_stop,
    limit_from_wire,
    make_voucher,
    open_voucher,
    read_hop,
)
from aicn.p2p.autonat import AutoNATCodecError, DialRequest, DialResponse, decode_message as autonat_decode
from aicn.p2p.autonat import encode_request as autonat_request, encode_response as autonat_response
from aicn.p2p.stream import StreamError
from aicn.p2p.varint import VarintError, decode_uvarint, encode_uvarint
from aicn.p2p.yamux import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    FrameDecoder,
    SessionClosed,
    StreamLimitExceeded,
    YamuxConfig,
    YamuxProtocolError,
    YamuxSession,
    encode_frame as yamux_frame,
)
from tests.fuzz.harness import (
    ADDR,
    ADDR6,
    FAILED,
    LOCAL_EPHEMERAL,
    LOCAL_KEY,
    LOCAL_PEER,
    LOCAL_STATIC,
    MUXERS,
    REMOTE_EPHEMERAL,
    REMOTE_KEY,
    REMOTE_PEER,
    REMOTE_SECP,
    REMOTE_STATIC,
    Target,
    attempt,
    drive,
    halves,
    outcome,
    pieces,
    same,
    stream_with,
)
from tests.p2p.fakestream import FakeContext, StreamPair

# -- varint and frames ------------------------------------------------------------------------


def t_varint(data: bytes) -> None:
    decoded = attempt(VarintError, decode_uvarint, data)
    if decoded not in (FAILED, None):
        value, end = decoded
        if encode_uvarint(value) != data[:end]:
            raise AssertionError(f"varint {data[:end].hex()} decoded to {value}, which encodes otherwise")


FRAME_LIMIT = 4096


def _frames_whole(data: bytes):
    reader = LengthPrefixedReader(FRAME_LIMIT)
    return reader.feed(data), reader.buffered


def _frames_split(data: bytes):
    reader = LengthPrefixedReader(FRAME_LIMIT)
    frames = []
    for piece in halves(data):
        frames += reader.feed(piece)
    return frames, reader.buffered


async def _read_frames(stream) -> list[bytes]:
    frames = []
    while True:
        frame = await read_frame(stream, FRAME_LIMIT, eof_ok=True)
        if frame is None:
            return frames
        frames.append(frame)


def t_framing(data: bytes) -> None:
    same(outcome(FrameError, _frames_whole, data), outcome(FrameError, _frames_split, data),
          "LengthPrefixedReader")
    frames = attempt(FrameError, drive, _read_frames(stream_with(data)))
    whole = attempt(FrameError, _frames_whole, data)
    if frames is not FAILED and whole is not FAILED and (whole[1] or frames != whole[0]):
        raise AssertionError("read_frame read a stream that LengthPrefixedReader finds incomplete or other")


def _framing_seeds() -> list[bytes]:
    return [length_prefixed(b"hello") + length_prefixed(b""), length_prefixed(b"x" * 300),
            encode_uvarint(FRAME_LIMIT + 1), b"\x80\x80", b"\x00"]


# -- multistream-select -----------------------------------------------------------------------

MS_SUPPORTED = ("/ipfs/id/1.0.0", "/yamux/1.0.0", "/noise")


def _ms_feed(make, pieces: list[bytes]):
    negotiator = make()
    negotiator.start()
    out, leftover = b"", b""
    for piece in pieces:
        if negotiator.done:
            leftover += piece
            continue
        out += negotiator.receive(piece)
        if negotiator.done:
            leftover = negotiator.leftover
    return out, negotiator.protocol, leftover


def _ms_listener():
    return MultistreamListener(MS_SUPPORTED, protocols_for_ls=MS_SUPPORTED)


def _ms_dialer():
    return MultistreamDialer(["/yamux/1.0.0", "/mplex/6.7.0"])


def t_multistream(data: bytes) -> None:
    for make in (_ms_listener, _ms_dialer):
        same(outcome(MultistreamError, _ms_feed, make, [data]),
              outcome(MultistreamError, _ms_feed, make, halves(data)), "multistream")
    negotiation = negotiate_inbound(stream_with(data), MS_SUPPORTED)
    protocol = attempt((MultistreamError, FrameError), drive, negotiation)
    if protocol is not FAILED and protocol not in MS_SUPPORTED:
        raise AssertionError(f"negotiated {protocol!r}, which we do not support")


def _ms_seeds() -> list[bytes]:
    header = ms_message("/multistream/1.0.0")
    return [header + ms_message("/yamux/1.0.0") + b"rest", header + ms_message("/mplex/6.7.0")
            + ms_message("ls") + ms_message("/noise"), header + ms_message("na"), header + b"\x05na\n"]


# -- noise ------------------------------------------------------------------------------------


def _frame16(message: bytes) -> bytes:
    return struct.pack(">H", len(message)) + message


def t_noise_payload(data: bytes) -> None:
    """The handshake payload a peer sends, in message 2 (to us as initiator) and 3 (as responder)."""
    payload = data[: MAX_FRAME - 200]
    # We initiate; the remote's msg2 carries the payload.
    us = NoiseHandshake(True, LOCAL_KEY, MUXERS, LOCAL_STATIC, ephemeral_key=LOCAL_EPHEMERAL)
    them = XXHandshakeState(False, REMOTE_STATIC, b"", REMOTE_EPHEMERAL)
    them.read_message(us.start()[2:])
    if attempt(NoiseError, us.receive, _frame16(them.write_message(payload))) is not FAILED:
        _check_peer(us, payload)
    # We respond; the remote's msg3 carries it.
    us = NoiseHandshake(False, LOCAL_KEY, MUXERS, LOCAL_STATIC, ephemeral_key=LOCAL_EPHEMERAL)
    them = XXHandshakeState(True, REMOTE_STATIC, b"", REMOTE_EPHEMERAL)
    msg2 = us.receive(_frame16(them.write_message(b"")))
    them.read_message(msg2[2:])
    if attempt(NoiseError, us.receive, _frame16(them.write_message(payload))) is not FAILED:
        if not us.complete or us.remote_peer_id is None:
            raise AssertionError("noise accepted message 3 without completing or knowing the peer")
        _check_peer(us, payload)
    decoded = attempt(NoiseError, decode_handshake_payload, data)
    if decoded is not FAILED and not all(isinstance(m, str) for m in decoded.stream_muxers):
        raise AssertionError("a stream muxer name is not a str")


def _check_peer(handshake: NoiseHandshake, payload: bytes) -> None:
    # Only a payload signed by the remote's identity over its static key passes.
    key = PublicKey.unmarshal(decode_handshake_payload(payload).identity_key)
    if handshake.remote_peer_id != PeerID.from_public_key(key):
        raise AssertionError("noise accepted a peer other than the payload's key")


def _noise_payload_seeds() -> list[bytes]:
    static = REMOTE_STATIC.public_key().public_bytes_raw()
    good = HandshakePayload(REMOTE_KEY.public_key.marshal(), REMOTE_KEY.sign(SIGNATURE_PREFIX + static),
                            stream_muxers=["/yamux/1.0.0", "/mplex/6.7.0"])
    secp = HandshakePayload(REMOTE_SECP.public_key.marshal(), REMOTE_SECP.sign(SIGNATURE_PREFIX + static))
    bad_sig = HandshakePayload(REMOTE_KEY.public_key.marshal(), b"\x00" * 64, has_extensions=True)
    return [encode_handshake_payload(p) for p in (good, secp, bad_sig)] + [b""]


_K1, _K2 = hashlib.sha256(b"k1").digest(), hashlib.sha256(b"k2").digest()


def _decrypt_all(pieces: list[bytes]) -> bytes:
    transport = NoiseTransport(CipherState(_K1), CipherState(_K2))
    return b"".join(transport.decrypt(piece) for piece in pieces) + b"|%d" % transport.buffered


def t_noise_wire(data: bytes) -> None:
    """Raw bytes as the first handshake messages (we respond), and as transport frames."""
    us = NoiseHandshake(False, LOCAL_KEY, MUXERS, LOCAL_STATIC, ephemeral_key=LOCAL_EPHEMERAL)
    for piece in halves(data):
        if attempt(NoiseError, us.receive, piece) is FAILED or us.complete:
            break
    same(outcome(NoiseError, _decrypt_all, [data]), outcome(NoiseError, _decrypt_all, halves(data)),
          "NoiseTransport.decrypt")


def _noise_wire_seeds() -> list[bytes]:
    sender = NoiseTransport(CipherState(_K2), CipherState(_K1))
    frames = sender.encrypt(b"hello") + sender.encrypt(b"") + sender.encrypt(b"x" * 200)
    initiator = XXHandshakeState(True, REMOTE_STATIC, b"", REMOTE_EPHEMERAL)
    return [frames, _frame16(initiator.write_message(b"")), b"\x00\x10" + b"\x00" * 16, b"\xff\xff"]


# -- yamux ------------------------------------------------------------------------------------


def _yamux_feed(pieces: list[bytes]):
    decoder = FrameDecoder(max_data_length=4096)
    frames = []
    try:
        for piece in pieces:
            for frame in decoder.feed(piece):
                frames.append(tuple(frame))
    except YamuxProtocolError:
        return frames, "error"
    return frames, decoder.buffered


def t_yamux_frames(data: bytes) -> None:
    same(_yamux_feed([data]), _yamux_feed(halves(data)), "yamux FrameDecoder")


_YAMUX_CONFIG = YamuxConfig(keepalive_interval=None, ping_on_start=False, max_inbound_streams=8)


def _read_forever(stream) -> None:
    def more(data):
        if data:
            _read_forever(stream)

    stream.read(-1).addCallbacks(more, lambda f: None)


def t_yamux_session(data: bytes) -> None:
    """A session (we listen) fed the bytes in pieces: it must never raise nor log a failure."""
    sent: list[bytes] = []
    streams = []

    def on_stream(stream) -> None:
        streams.append(stream)
        if stream.stream_id % 4 == 1:
            stream.set_data_callback(lambda chunk: None, lambda reason: None)
        else:
            _read_forever(stream)
        stream.write(b"pong").addErrback(lambda f: None)

    session = YamuxSession(False, sent.append, Clock(), _YAMUX_CONFIG, on_stream=on_stream)
    for piece in pieces(data):
        session.data_received(piece)
    out = attempt((SessionClosed, StreamLimitExceeded), session.open_stream)
    if out is not FAILED:
        out.write(b"ping" * 100).addErrback(lambda f: None)
    session.connection_lost(None)
    if len(streams) > len(data) // 12:
        raise AssertionError("more inbound streams than SYN frames")


def _yamux_seeds() -> list[bytes]:
    return [
        yamux_frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0) + yamux_frame(TYPE_DATA, 0, 1, data=b"hello")
        + yamux_frame(TYPE_DATA, FLAG_FIN, 1, data=b"") + yamux_frame(TYPE_PING, FLAG_SYN, 0, 7),
        yamux_frame(TYPE_DATA, FLAG_SYN, 3, data=b"x" * 100) + yamux_frame(TYPE_WINDOW_UPDATE, 0, 3, 1 << 20)
        + yamux_frame(TYPE_WINDOW_UPDATE, FLAG_RST, 3, 0),
        yamux_frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 5, 0) + yamux_frame(TYPE_WINDOW_UPDATE, FLAG_ACK, 2, 0)
        + yamux_frame(TYPE_PING, FLAG_ACK, 0, 0) + yamux_frame(TYPE_GO_AWAY, 0, 0, 1),
        yamux_frame(TYPE_DATA, 0, 1, data=b"late"),
    ]


# -- identify ---------------------------------------------------------------------------------

_IDENTIFY_CTX = FakeContext(LOCAL_KEY, REMOTE_PEER, ADDR)


def _check_identify(result) -> None:
    for name in ("protocol_version", "agent_version"):
        value = getattr(result, name)
        if value is not None and not isinstance(value, str):
            raise AssertionError(f"identify {name} is {type(value).__name__}")
    if not all(isinstance(p, str) for p in result.protocols):
        raise AssertionError("an identify protocol is not a str")
    for addr in result.listen_addrs + ([result.observed_addr] if result.observed_addr else []):
        binaddr.validate(addr)


def t_identify(data: bytes) -> None:
    result = attempt((IdentifyError, StreamError), drive, request_identify(stream_with(data), _IDENTIFY_CTX))
    if result is not FAILED:
        if result.peer != REMOTE_PEER:
            raise AssertionError("identify accepted a response from another peer")
        _check_identify(result)
    pushed = drive(handle_identify_push(stream_with(data), _IDENTIFY_CTX))  # never raises
    if pushed is not None:
        _check_identify(pushed)
    frames = attempt(IdentifyError, decode_frames, data)
    if frames is not FAILED:
        parsed = attempt(IdentifyError, parse_identify, b"".join(frames), None, False)
        if parsed is not FAILED:
            _check_identify(parsed)


def _identify_seeds() -> list[bytes]:
    record = make_peer_record(REMOTE_KEY, [ADDR, ADDR6], 7)
    info = IdentifyInfo(REMOTE_KEY.public_key, (ADDR, ADDR6), ("/ipfs/id/1.0.0", "/floodsub/1.0.0"),
                        signed_peer_record=record)
    full = build_identify(info, ADDR)
    push = build_identify(info, None, include_key=False, include_observed=False)
    half = len(full) // 2
    return [identify_frame(full), identify_frame(push),
            identify_frame(full[:half]) + identify_frame(full[half:]),
            identify_frame(build_identify(IdentifyInfo(LOCAL_KEY.public_key), None))]


# -- kad --------------------------------------------------------------------------------------


class _KadHost:
    """What KadDHT's server side asks of a host."""

    def __init__(self, clock) -> None:
        self.reactor = clock
        self.peer_id = LOCAL_PEER
        self.peerstore = Peerstore(clock)
        self.peerstore.add_addrs(REMOTE_PEER, [ADDR], float("inf"))

    def is_connected(self, peer) -> bool:
        return peer == REMOTE_PEER


def _check_kad(msg: KadMessage) -> None:
    if not isinstance(msg.key, bytes) or not isinstance(msg.cluster_level, int):
        raise AssertionError("kad message fields of the wrong type")
    for peer in msg.closer_peers + msg.provider_peers:
        for addr in peer.addrs:
            binaddr.validate(addr)


def t_kad(data: bytes) -> None:
    messages = attempt(KadCodecError, MessageDecoder(max_size=FRAME_LIMIT).feed, data)
    for msg in [] if messages is FAILED else messages:
        _check_kad(msg)
    clock = Clock()
    dht = KadDHT(_KadHost(clock), clock, refresh_interval=None)
    stream = stream_with(data)
    while True:
        msg = attempt(KadCodecError, drive, kad_read_message(stream, FRAME_LIMIT))
        if msg is FAILED or msg is None:
            break
        _check_kad(msg)
        reply = attempt(KadProtocolError, dht.handle_request, REMOTE_PEER, msg)
        if reply not in (FAILED, None):
            kad_frame(reply)  # our answer encodes


def _kad_seeds() -> list[bytes]:
    peer = KadPeer(REMOTE_PEER, (ADDR, ADDR6), 1)
    return [
        kad_frame(KadMessage(MessageType.FIND_NODE, key=REMOTE_PEER.to_bytes())),
        kad_frame(KadMessage(MessageType.ADD_PROVIDER, key=b"k" * 34, provider_peers=[peer]))
        + kad_frame(KadMessage(MessageType.GET_PROVIDERS, key=b"k" * 34)),
        kad_frame(KadMessage(MessageType.PING)) + kad_frame(KadMessage(MessageType.GET_VALUE, key=b"v",
                                                                       record=KadRecord(b"v", b"1", "now"))),
        kad_frame(KadMessage(MessageType.FIND_NODE, key=b"x", closer_peers=[peer, peer])),
    ]


# -- pubsub -----------------------------------------------------------------------------------

TOPIC = "DeepBrainChain"


class _PubsubConn:
    def __init__(self, peer) -> None:
        self.peer = peer
        self.closed = False

    async def new_stream(self, protocols):
        return StreamPair(protocol=protocols[0]).a


class _PubsubHost:
    """What FloodSub asks of a host: one connected peer, our stream to it never read."""

    def __init__(self, clock) -> None:
        self.reactor = clock
        self.peer_id = LOCAL_PEER
        self.handlers: dict = {}
        self.conn = _PubsubConn(REMOTE_PEER)

    def set_stream_handler(self, protocol, handler) -> None:
        self.handlers[protocol] = handler

    def remove_stream_handler(self, protocol) -> None:
        self.handlers.pop(protocol, None)

    def add_observer(self, observer) -> None:
        pass

    def remove_observer(self, observer) -> None:
        pass

    def connected_peers(self):
        return [REMOTE_PEER]

    def is_connected(self, peer) -> bool:
        return peer == REMOTE_PEER

    def connections(self, peer=None):
        return [self.conn]

    @property
    def peerstore(self):
        return self

    def supports(self, peer, protocol) -> bool:
        return False


def t_pubsub(data: bytes) -> None:
    """The floodsub stream handler reading RPCs from the remote (never raises)."""
    clock = Clock()
    host = _PubsubHost(clock)
    floodsub = FloodSub(host, clock, max_message_size=FRAME_LIMIT, seqno_seed=1)
    delivered = []
    floodsub.subscribe(TOPIC, delivered.append)
    try:
        drive(host.handlers[FLOODSUB](stream_with(data, FLOODSUB), host.conn))
    finally:
        floodsub.close()
    for message in delivered:
        if message.topic != TOPIC or not isinstance(message.data, bytes):
            raise AssertionError("floodsub delivered a message of another topic or type")


def _pubsub_seeds() -> list[bytes]:
    signed = sign_message(REMOTE_KEY, TOPIC, b"hello", (1 << 56).to_bytes(8, "big"))
    js = sign_message(REMOTE_SECP, TOPIC, b"{}", b"\x01")
    js.key = REMOTE_SECP.public_key.marshal()
    forged = sign_message(REMOTE_KEY, TOPIC, b"hello", (2 << 56).to_bytes(8, "big"))
    forged.data = b"changed"
    control = RPC()
    control.control.SetInParent()
    return [subscriptions_frame([(TOPIC, True), ("other", False)]) + publish_frame(signed),
            subscriptions_frame([]) + publish_frame(js) + publish_frame(js), publish_frame(forged),
            length_prefixed(control.SerializeToString())]


# -- circuit relay ----------------------------------------------------------------------------


def t_relay(data: bytes) -> None:
    hop = attempt(RelayCodecError, decode_hop, data)
    if hop is not FAILED:
        limit_from_wire(hop.limit)
        if hop.reservation is not None and hop.reservation.voucher is not None:
            attempt(RelayCodecError, open_voucher, hop.reservation.voucher, REMOTE_PEER, LOCAL_PEER)
    stop = attempt(RelayCodecError, decode_stop, data)
    if stop is not FAILED:
        limit_from_wire(stop.limit)
    attempt(RelayCodecError, drive, read_hop(stream_with(data)))
    attempt(RelayCodecError, open_voucher, data)


def _relay_seeds() -> list[bytes]:
    voucher = make_voucher(REMOTE_KEY, LOCAL_PEER, 1_700_000_000)
    reservation = Reservation(1_700_000_000, (ADDR,), voucher)
    return [
        encode_hop(HopMessage(HopType.STATUS, reservation=reservation, limit=Limit(120_000, 1 << 17),
                              status=Status.OK)),
        encode_hop(HopMessage(HopType.CONNECT, peer=PeerInfo(REMOTE_PEER, (ADDR, ADDR6)))),
        encode_stop(StopMessage(StopType.CONNECT, peer=PeerInfo(REMOTE_PEER, (ADDR,)),
                                limit=Limit(60, None))),
        encode_stop(StopMessage(StopType.STATUS, status=Status.CONNECTION_FAILED)),
        voucher,
    ]


# -- AutoNAT ----------------------------------------------------------------------------------


def t_autonat(data: bytes) -> None:
    msg = attempt(AutoNATCodecError, autonat_decode, data)
    if isinstance(msg, DialRequest):
        if not isinstance(msg.peer, PeerID):
            raise AssertionError("DIAL peer is not a PeerID")
        for addr in msg.addrs:
            binaddr.validate(addr)
    elif isinstance(msg, DialResponse):
        if not isinstance(msg.status, int) or not isinstance(msg.text, str):
            raise AssertionError(f"DIAL_RESPONSE status {msg.status!r} / text {msg.text!r} of the wrong type")
        if msg.addr is not None and not isinstance(msg.addr, bytes):
            raise AssertionError("DIAL_RESPONSE addr is not bytes")


def _autonat_seeds() -> list[bytes]:
    return [autonat_request(REMOTE_PEER, [ADDR, ADDR6]), autonat_response(0, "ok", ADDR),
            autonat_response(100, "dial error"), autonat_response(200)]


# -- records, keys, peer ids, multiaddrs ------------------------------------------------------


def t_records(data: bytes) -> None:
    attempt(RecordError, open_peer_record, data)
    attempt(RecordError, open_envelope, data, "libp2p-routing-state")
    attempt(InvalidKey, PublicKey.unmarshal, data)
    attempt(InvalidPeerID, PeerID.from_bytes, data)
    attempt(InvalidPeerID, PeerID.from_string, data.decode("latin-1"))
    attempt(binaddr.BinaryMultiaddrError, binaddr.strip_p2p, data)


def _records_seeds() -> list[bytes]:
    return [make_peer_record(REMOTE_KEY, [ADDR, ADDR6], 1), make_peer_record(REMOTE_SECP, [ADDR], 2),
            REMOTE_SECP.public_key.marshal(), REMOTE_KEY.public_key.marshal(), REMOTE_PEER.to_bytes(),
            str(REMOTE_PEER).encode(), REMOTE_PEER.to_cid().encode(),
            ADDR + binaddr.p2p_component(REMOTE_PEER)]


# -- the list -----------------------------------------------------------------------------

P2P_TARGETS = [
    Target("varint", t_varint, ("VarintError",), lambda: [b"\x00", b"\xac\x02", b"\xff" * 9 + b"\x01"],
           "aicn.p2p.varint.decode_uvarint; re-encoding gives the same bytes", max_len=16),
    Target("framing", t_framing, ("FrameError",), _framing_seeds,
           "aicn.p2p.framing: LengthPrefixedReader (whole = split) and read_frame over a stream"),
    Target("multistream", t_multistream, ("MultistreamError", "FrameError"), _ms_seeds,
           "multistream-select listener and dialer (whole = split), negotiate_inbound over a stream",
           dictionary=(b"/multistream/1.0.0\n", b"na\n", b"ls\n", b"/yamux/1.0.0\n")),
    Target("noise_payload", t_noise_payload, ("NoiseError",), _noise_payload_seeds,
           "noise handshake payload in messages 2 and 3 of a real XX handshake: decode, key, signature"),
    Target("noise_wire", t_noise_wire, ("NoiseError",), _noise_wire_seeds,
           "noise: raw handshake frames to a responder; transport frames (whole = split)"),
    Target("yamux_frames", t_yamux_frames, ("YamuxProtocolError",), _yamux_seeds,
           "yamux FrameDecoder (whole = split)"),
    Target("yamux_session", t_yamux_session, ("none: data_received never raises",), _yamux_seeds,
           "a yamux session fed frames in pieces, with inbound streams read and written"),
    Target("identify", t_identify, ("IdentifyError", "StreamError"), _identify_seeds,
           "identify: request_identify and handle_identify_push over a stream, decode_frames,"
           " parse_identify"),
    Target("kad", t_kad, ("KadCodecError", "KadProtocolError"), _kad_seeds,
           "kad: MessageDecoder, rpc.read_message over a stream, KadDHT.handle_request of what decodes"),
    Target("pubsub", t_pubsub, ("none: the stream handler never raises",), _pubsub_seeds,
           "floodsub's inbound stream handler: RPC framing, subscriptions, StrictSign validation, delivery"),
    Target("relay", t_relay, ("RelayCodecError",), _relay_seeds,
           "circuit relay v2: decode_hop, decode_stop, read_hop over a stream, vouchers, limits"),
    Target("autonat", t_autonat, ("AutoNATCodecError",), _autonat_seeds, "AutoNAT v1 decode_message"),
    Target("records", t_records, ("RecordError", "InvalidKey", "InvalidPeerID", "BinaryMultiaddrError"),
           _records_seeds, "signed envelopes, peer records, public keys, peer ids, binary multiaddrs"),
]

