"""Binary multiaddrs as they travel in protobufs (identify, peer records, kad).

A binary multiaddr is a sequence of ``uvarint(code) || value`` components,
where the value is fixed-size, absent, or ``uvarint(length) || bytes``
depending on the protocol.  This module only *walks* that structure, so that
identify and peer records can validate addresses received from the network,
drop the ones they cannot parse, and strip a trailing ``/p2p/<id>``.  It is
pure and never raises anything but :class:`BinaryMultiaddrError`.  Text
conversion belongs to the ``multiaddr`` package.
"""

from __future__ import annotations

from aicn.p2p.peerid import InvalidPeerID, PeerID
from aicn.p2p.varint import VarintError, decode_uvarint, encode_uvarint

#: ``P_P2P`` is the ``/p2p`` (formerly ``/ipfs``) protocol code.
P_P2P = 421

_VAR = -1  # value is uvarint-length-prefixed

#: Protocol code -> value size in bytes (0: no value, _VAR: length-prefixed).
#: Codes from the multicodec table; unknown codes make an address invalid,
#: since its length cannot be known.
_SIZES: dict[int, int] = {
    4: 4,  # ip4
    6: 2,  # tcp
    33: 2,  # dccp
    41: 16,  # ip6
    42: _VAR,  # ip6zone
    43: 1,  # ipcidr
    53: _VAR,  # dns
    54: _VAR,  # dns4
    55: _VAR,  # dns6
    56: _VAR,  # dnsaddr
    132: 2,  # sctp
    273: 2,  # udp
    275: 0,  # p2p-webrtc-star
    276: 0,  # p2p-webrtc-direct
    277: 0,  # p2p-stardust
    280: 0,  # webrtc-direct
    281: 0,  # webrtc
    290: 0,  # p2p-circuit
    301: 0,  # udt
    302: 0,  # utp
    400: _VAR,  # unix
    P_P2P: _VAR,  # p2p
    443: 0,  # https
    444: 12,  # onion (80-bit hash + port)
    445: 37,  # onion3 (35-byte key hash + port)
    446: _VAR,  # garlic64
    447: _VAR,  # garlic32
    448: 0,  # tls
    449: _VAR,  # sni
    454: 0,  # noise
    460: 0,  # quic
    461: 0,  # quic-v1
    465: 0,  # webtransport
    466: _VAR,  # certhash
    477: 0,  # ws
    478: 0,  # wss
    479: 0,  # p2p-websocket-star
    480: 0,  # http
    481: _VAR,  # http-path
    777: 8,  # memory
}

#: Longest binary multiaddr we accept; real ones are well under 100 bytes.
MAX_MULTIADDR_LEN = 1024


class BinaryMultiaddrError(ValueError):
    """Bytes are not a binary multiaddr we can parse."""


def components(data: bytes) -> list[tuple[int, bytes]]:
    """Split a binary multiaddr into ``(code, value)`` pairs.

    Raises :class:`BinaryMultiaddrError` for an empty or oversized address, a
    truncated component, an unknown protocol code, or a ``/p2p`` value that is
    not a peer ID multihash.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BinaryMultiaddrError("multiaddr must be bytes")
    data = bytes(data)
    if not data:
        raise BinaryMultiaddrError("empty multiaddr")
    if len(data) > MAX_MULTIADDR_LEN:
        raise BinaryMultiaddrError(f"multiaddr longer than {MAX_MULTIADDR_LEN} bytes")
    out = []
    pos = 0
    try:
        while pos < len(data):
            decoded = decode_uvarint(data, pos)
            if decoded is None:
                raise BinaryMultiaddrError("truncated protocol code")
            code, pos = decoded
            size = _SIZES.get(code)
            if size is None:
                raise BinaryMultiaddrError(f"unknown multiaddr protocol code {code}")
            if size == _VAR:
                decoded = decode_uvarint(data, pos)
                if decoded is None:
                    raise BinaryMultiaddrError("truncated component length")
                size, pos = decoded
            if pos + size > len(data):
                raise BinaryMultiaddrError("truncated component value")
            value = data[pos : pos + size]
            pos += size
            if code == P_P2P:
                PeerID.from_bytes(value)
            out.append((code, value))
    except VarintError as exc:
        raise BinaryMultiaddrError(f"malformed varint in multiaddr: {exc}") from None
    except InvalidPeerID as exc:
        raise BinaryMultiaddrError(f"invalid /p2p component: {exc}") from None
    return out


def validate(data: bytes) -> bytes:
    """Return ``data`` as ``bytes`` if it parses, else raise :class:`BinaryMultiaddrError`."""
    components(data)
    return bytes(data)


def strip_p2p(data: bytes) -> tuple[bytes, PeerID | None]:
    """Split off a trailing ``/p2p/<id>``: ``(address without it, peer or None)``.

    js-libp2p appends ``/p2p/<id>`` to identify's observedAddr, go does not;
    callers use this to treat both alike.  An address that is *only*
    ``/p2p/<id>`` is returned unchanged (nothing would be left).
    """
    parts = components(data)
    if len(parts) < 2 or parts[-1][0] != P_P2P:
        return bytes(data), None
    peer = PeerID.from_bytes(parts[-1][1])
    tail = p2p_component(peer)
    return bytes(data[: len(data) - len(tail)]), peer


def p2p_component(peer: PeerID) -> bytes:
    """The binary ``/p2p/<id>`` component for ``peer``."""
    mh = peer.to_bytes()
    return encode_uvarint(P_P2P) + encode_uvarint(len(mh)) + mh
