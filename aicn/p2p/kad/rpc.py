"""Reading and writing kad messages on a stream (thin I/O over :mod:`.codec`)."""

from __future__ import annotations

from aicn.p2p.kad.codec import MAX_MESSAGE_SIZE, KadCodecError, KadMessage, decode_message, encode_frame
from aicn.p2p.framing import FrameError, FrameTooLarge, read_frame
from aicn.p2p.stream import Stream


async def read_message(stream: Stream, max_size: int = MAX_MESSAGE_SIZE) -> KadMessage | None:
    """Read exactly one message; ``None`` on a clean EOF before its first byte.

    Only the message's own bytes are consumed, so a stream can carry several
    requests.  Raises :class:`KadCodecError` for a bad or oversized length
    prefix, a truncated message or an invalid body.
    """
    try:
        body = await read_frame(stream, max_size, eof_ok=True)
    except FrameTooLarge as exc:
        raise KadCodecError(f"message too large: {exc}") from None
    except FrameError as exc:
        raise KadCodecError(f"bad message framing: {exc}") from None
    return None if body is None else decode_message(body)


async def write_message(stream: Stream, msg: KadMessage, max_size: int = MAX_MESSAGE_SIZE) -> None:
    """Write one length-prefixed message (waits for flow control)."""
    await stream.write(encode_frame(msg, max_size))
