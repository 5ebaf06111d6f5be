"""Unsigned LEB128 varints and uvarint length-prefixed framing.

This is the framing used by multistream-select, identify, kad, pubsub and
most other libp2p protocols.  Everything here is pure: no I/O, no reactor.
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


def length_prefixed(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length as a uvarint."""
    return encode_uvarint(len(payload)) + payload


class FrameTooLarge(VarintError):
    """A length prefix announces more bytes than the receiver allows."""


class LengthPrefixedReader:
    """Incremental decoder for uvarint length-prefixed messages.

    Feed it bytes as they arrive; it returns every complete message.  A
    length prefix above ``max_size`` raises :class:`FrameTooLarge` at once,
    before the body is buffered, so a peer cannot make us hold a huge frame.
    """

    def __init__(self, max_size: int = 4 * 1024 * 1024) -> None:
        self.max_size = max_size
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the complete messages it finished, in order."""
        self._buf += data
        messages = []
        pos = 0
        buf = self._buf
        while True:
            decoded = decode_uvarint(buf, pos)
            if decoded is None:
                break
            length, body_start = decoded
            if length > self.max_size:
                raise FrameTooLarge(f"frame of {length} bytes exceeds limit of {self.max_size}")
            if len(buf) - body_start < length:
                break
            messages.append(bytes(buf[body_start : body_start + length]))
            pos = body_start + length
        if pos:
            del buf[:pos]
        return messages

    @property
    def buffered(self) -> int:
        """How many bytes are waiting for the rest of their frame."""
        return len(self._buf)
