"""Unsigned LEB128 varints (libp2p's ``uvarint``), pure: no I/O, no reactor.

Frames built on them live in :mod:`aicn.p2p.framing`.
"""

from __future__ import annotations

#: Largest value we encode or decode: a uint64.
MAX_UINT64 = (1 << 64) - 1
#: A uint64 takes at most 10 LEB128 bytes.
MAX_VARINT_LEN = 10


class VarintError(ValueError):
    """A varint is malformed, too long, or does not fit the allowed range."""


def encode_uvarint(value: int) -> bytes:
    """Encode a non-negative integer (at most 2**64-1) as an unsigned varint."""
    if value < 0 or value > MAX_UINT64:
        raise VarintError(f"varint out of range: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_uvarint(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int] | None:
    """Decode an unsigned varint at ``offset``.

    Returns ``(value, new_offset)``, or ``None`` when ``data`` ends before the
    varint does (more bytes are needed).  Raises :class:`VarintError` for a
    varint longer than 10 bytes, a value over 64 bits, or a non-minimal
    encoding (trailing zero groups), which libp2p forbids.
    """
    value = 0
    shift = 0
    pos = offset
    end = len(data)
    while True:
        if pos >= end:
            return None
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and pos - offset > 1:
                raise VarintError("non-minimal varint encoding")
            if value > MAX_UINT64:
                raise VarintError("varint overflows 64 bits")
            return value, pos
        shift += 7
        if pos - offset >= MAX_VARINT_LEN:
            raise VarintError("varint too long")
