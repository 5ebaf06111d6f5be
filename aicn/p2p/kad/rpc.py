"""Reading and writing kad messages on a stream (thin I/O over :mod:`.codec`)."""

from __future__ import annotations

from aicn.p2p.kad.codec import MAX_MESSAGE_SIZE, KadCodecError, KadMessage, decode_message, encode_frame
from aicn.p2p.stream import IncompleteRead, Stream
from aicn.p2p.varint import MAX_VARINT_LEN, VarintError, decode_uvarint


async def read_message(stream: Stream, max_size: int = MAX_MESSAGE_SIZE) -> KadMessage | None:
    """Read exactly one message; ``None`` on a clean EOF before its first byte.

    Only the message's own bytes are consumed, so a stream can carry several
    requests.  Raises :class:`KadCodecError` for a bad or oversized length
    prefix, a truncated message or an invalid body.
    """
    first = await stream.read(1)
    if not first:
        return None
    prefix = bytearray(first)
    try:
        while prefix[-1] & 0x80:
            if len(prefix) >= MAX_VARINT_LEN:
                raise KadCodecError("length prefix too long")
            prefix += await stream.readexactly(1)
        decoded = decode_uvarint(prefix)
        length = decoded[0]  # complete: the loop stopped on a final byte
        if length > max_size:
            raise KadCodecError(f"message of {length} bytes exceeds limit of {max_size}")
        body = await stream.readexactly(length) if length else b""
    except VarintError as exc:
        raise KadCodecError(f"bad length prefix: {exc}") from None
    except IncompleteRead as exc:
        raise KadCodecError(f"stream ended inside a message: {exc}") from None
    return decode_message(body)


async def write_message(stream: Stream, msg: KadMessage, max_size: int = MAX_MESSAGE_SIZE) -> None:
    """Write one length-prefixed message (waits for flow control)."""
    await stream.write(encode_frame(msg, max_size))
