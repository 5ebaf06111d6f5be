"""uvarint length-prefixed frames: the one home of libp2p's message framing.

multistream-select, identify, kad, pubsub, relay and AutoNAT all put each
message behind its length as an unsigned varint.  Two readers cover them:

* :class:`LengthPrefixedReader`, pure: feed bytes as they arrive, get whole
  frames (pubsub, kad's push decoder, identify);
* :func:`read_frame`, over a :class:`~aicn.p2p.stream.Stream`: exactly one
  frame, consuming only its own bytes, for protocols whose frame is followed
  by other data on the same stream (multistream, kad requests, relay).

Both refuse a length above their limit as soon as the prefix is complete,
before reading or buffering the body, so a peer announcing 4 GiB makes us
hold a few bytes, not 4 GiB.  Protocol modules turn :class:`FrameError` into
their own error type.
"""

from __future__ import annotations

from aicn.p2p.stream import IncompleteRead, Stream
from aicn.p2p.varint import MAX_VARINT_LEN, VarintError, decode_uvarint, encode_uvarint

__all__ = [
    "FrameError",
    "FrameTooLarge",
    "FrameTruncated",
    "LengthPrefixedReader",
    "length_prefixed",
    "read_frame",
    "read_frames_to_eof",
]


class FrameError(VarintError):
    """A frame's length prefix is malformed, too large, or its bytes are missing."""


class FrameTooLarge(FrameError):
    """A length prefix announces more bytes than the receiver allows."""


class FrameTruncated(FrameError, EOFError):
    """The stream ended inside a frame (an ``EOFError`` too, as EOF is what it is)."""


def length_prefixed(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length as a uvarint."""
    return encode_uvarint(len(payload)) + payload


def _check(length: int, max_size: int) -> None:
    if length > max_size:
        raise FrameTooLarge(f"frame of {length} bytes exceeds limit of {max_size}")


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
            try:
                decoded = decode_uvarint(buf, pos)
            except VarintError as exc:
                raise FrameError(str(exc)) from None
            if decoded is None:
                break
            length, body_start = decoded
            _check(length, self.max_size)
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


async def read_frame(stream: Stream, max_size: int, *, eof_ok: bool = False) -> bytes | None:
    """Read exactly one frame from ``stream``; later bytes stay unread.

    With ``eof_ok``, a clean EOF before the frame's first byte gives ``None``
    (the peer is done sending requests); otherwise it is a
    :class:`FrameTruncated`, as is an EOF inside the frame.
    """
    first = await stream.read(1)
    if not first:
        if eof_ok:
            return None
        raise FrameTruncated("stream ended before a frame")
    prefix = bytearray(first)
    try:
        while prefix[-1] & 0x80:
            if len(prefix) >= MAX_VARINT_LEN:
                raise FrameError("varint too long")
            prefix += await stream.readexactly(1)
        try:
            length = decode_uvarint(prefix)[0]  # complete: the loop stopped on a final byte
        except VarintError as exc:
            raise FrameError(str(exc)) from None
        _check(length, max_size)
        return await stream.readexactly(length) if length else b""
    except IncompleteRead as exc:
        raise FrameTruncated(f"stream ended inside a frame: {exc}") from None


async def read_frames_to_eof(stream: Stream, max_size: int, max_frames: int,
                             chunk: int = 65536) -> list[bytes]:
    """Read frames until the peer half-closes, with the limits enforced as bytes arrive.

    Raises :class:`FrameError` past ``max_frames`` frames, and
    :class:`FrameTruncated` for an EOF inside a frame.
    """
    reader = LengthPrefixedReader(max_size)
    frames: list[bytes] = []
    while True:
        data = await stream.read(chunk)
        if not data:
            break
        frames += reader.feed(data)
        if len(frames) > max_frames:
            raise FrameError(f"more than {max_frames} messages on one stream")
    if reader.buffered:
        raise FrameTruncated(f"stream ended inside a message ({reader.buffered} bytes left)")
    return frames
