"""multistream-select 1.0.0, sans-IO (libp2p specs ``connections/README.md``).

Every message is a uvarint length, UTF-8 text and ``\\n``; the length counts
the newline.  Both sides start with the header ``/multistream/1.0.0``.  The
dialer proposes protocols one at a time; the listener echoes the one it
accepts or answers ``na``.

The two cores here never touch a transport: feed them received bytes, write
out what they return.  Once negotiation is over they hand back the bytes that
arrived after the last multistream message (``leftover``), which belong to
the negotiated protocol.  They are used for the connection upgrade (security
and muxer) and, through :func:`negotiate_outbound`, :func:`select_lazily`
and :func:`negotiate_inbound` at the end of this module, on every muxed
stream.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Sequence

from aicn.p2p.framing import FrameError, FrameTruncated, read_frame
from aicn.p2p.stream import MuxedStream, PrefixMismatch, Stream
from aicn.p2p.varint import VarintError, decode_uvarint, encode_uvarint

__all__ = [
    "PROTOCOL_ID",
    "NA",
    "LS",
    "MultistreamError",
    "NegotiationFailed",
    "encode_message",
    "lazy_select",
    "MultistreamDialer",
    "MultistreamListener",
    "ProtocolNotSupported",
    "ProtocolRejected",
    "negotiate_outbound",
    "negotiate_inbound",
    "select_lazily",
]

#: The multistream-select header.
PROTOCOL_ID = "/multistream/1.0.0"
#: Listener's answer for an unsupported protocol.
NA = "na"
#: Dialer's request for the listener's protocol list.
LS = "ls"
#: Largest message (length prefix value, newline included) we accept.
DEFAULT_MAX_MESSAGE = 1024
#: Most proposals / answers we go through before giving up.
DEFAULT_MAX_ROUNDS = 32

_HEADER_MSG_LEN = len(PROTOCOL_ID) + 1


class MultistreamError(Exception):
    """The peer sent something that is not valid multistream-select."""


class NegotiationFailed(MultistreamError):
    """Negotiation ended without a protocol both sides support."""


def encode_message(text: str) -> bytes:
    """Encode one multistream message: uvarint length, text, newline."""
    body = text.encode("utf-8") + b"\n"
    return encode_uvarint(len(body)) + body


_HEADER = encode_message(PROTOCOL_ID)
_NA = encode_message(NA)


def lazy_select(protocol: str) -> tuple[bytes, bytes]:
    """Optimistic ("lazy") selection of one protocol, as go-libp2p does for
    a protocol the peer is known to support.

    Returns ``(request, answer)``: the dialer sends ``request`` (header and
    proposal) and may write its protocol data right behind it without
    waiting; a listener that accepts answers exactly ``answer`` (its header
    and the echo), so anything else means rejection (``na``) or an invalid
    peer.  Listeners need nothing special: they already accept data
    pipelined behind the proposal.
    """
    proposal = encode_message(protocol)
    return _HEADER + proposal, _HEADER + proposal


def _encode_ls_response(protocols: Iterable[str]) -> bytes:
    # go-multistream's format: one length-prefixed message whose body is the
    # protocols, each encoded as a message, followed by a final newline.
    inner = b"".join(encode_message(p) for p in protocols) + b"\n"
    return encode_uvarint(len(inner)) + inner


class _MessageBuffer:
    """Splits incoming bytes into multistream messages, one at a time."""

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        # A length prefix this long already announces more than max_message.
        self._max_prefix = len(encode_uvarint(max_message))
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    def next_message(self, expect_len: int | None = None) -> str | None:
        """Return the next complete message without its newline, or ``None``.

        ``expect_len``: the only valid length for this message (used for the
        header), so that garbage, such as a wrong-PSK stream, fails at once
        instead of waiting for a long bogus message.
        """
        try:
            decoded = decode_uvarint(self._buf, self._pos)
        except VarintError as exc:
            raise MultistreamError(f"bad message length: {exc}") from None
        if decoded is None:
            if len(self._buf) - self._pos >= self._max_prefix:
                raise MultistreamError("message length prefix too long")
            return None
        length, start = decoded
        if expect_len is not None and length != expect_len:
            raise MultistreamError(f"expected a {PROTOCOL_ID} header, got a {length}-byte message")
        if length > self.max_message:
            raise MultistreamError(f"message of {length} bytes exceeds limit {self.max_message}")
        if length == 0:
            raise MultistreamError("empty message")
        end = start + length
        if len(self._buf) < end:
            return None
        if self._buf[end - 1] != 0x0A:
            raise MultistreamError("message does not end with a newline")
        try:
            text = self._buf[start : end - 1].decode("utf-8")
        except UnicodeDecodeError:
            raise MultistreamError("message is not valid UTF-8") from None
        self._pos = end
        return text

    def rest(self) -> bytes:
        out = bytes(self._buf[self._pos :])
        self._buf = bytearray()
        self._pos = 0
        return out


class _Negotiator:
    """State shared by both roles."""

    def __init__(self, max_message: int, max_rounds: int) -> None:
        self._reader = _MessageBuffer(max_message)
        self._max_rounds = max_rounds
        self._rounds = 0
        self._header_received = False
        self._failed: MultistreamError | None = None
        #: The negotiated protocol, once :attr:`done`.
        self.protocol: str | None = None
        #: Bytes that arrived after negotiation finished (for the protocol).
        self.leftover = b""

    @property
    def done(self) -> bool:
        """Whether a protocol has been agreed on."""
        return self.protocol is not None

    @property
    def header_received(self) -> bool:
        """Whether the peer's ``/multistream/1.0.0`` header has arrived."""
        return self._header_received

    def receive(self, data: bytes) -> bytes:
        """Feed received bytes; return bytes to send (possibly empty).

        Raises :class:`MultistreamError` (or :class:`NegotiationFailed`) when
        the exchange is invalid or no protocol is left; the caller should then
        close the connection or stream.
        """
        if self._failed is not None:
            raise self._failed
        if self.done:
            raise MultistreamError("negotiation is already finished")
        self._reader.feed(data)
        out = []
        try:
            while not self.done:
                if not self._header_received:
                    msg = self._reader.next_message(expect_len=_HEADER_MSG_LEN)
                    if msg is None:
                        break
                    if msg != PROTOCOL_ID:
                        raise MultistreamError(f"unsupported multistream header {msg!r}")
                    self._header_received = True
                    continue
                msg = self._reader.next_message()
                if msg is None:
                    break
                self._rounds += 1
                if self._rounds > self._max_rounds:
                    raise MultistreamError(f"gave up after {self._max_rounds} rounds")
                out.append(self._handle(msg))
        except MultistreamError as exc:
            self._failed = exc
            raise
        if self.done:
            self.leftover = self._reader.rest()
        return b"".join(out)

    def _handle(self, msg: str) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError


class MultistreamDialer(_Negotiator):
    """The proposing side.

    ``start()`` returns the header and the first proposal in one piece (as
    js-libp2p and go-libp2p write them); on ``na`` the next protocol is
    proposed; when the list is exhausted :class:`NegotiationFailed` is raised.
    """

    def __init__(
        self,
        protocols: Sequence[str],
        max_message: int = DEFAULT_MAX_MESSAGE,
        max_rounds: int = DEFAULT_MAX_ROUNDS,
    ) -> None:
        super().__init__(max_message, max_rounds)
        if not protocols:
            raise ValueError("need at least one protocol to propose")
        self._protocols = list(protocols)
        self._index = 0

    @property
    def proposed(self) -> str:
        """The protocol currently on the table."""
        return self._protocols[self._index]

    def start(self) -> bytes:
        """Bytes to send first: header plus the first proposal."""
        return _HEADER + encode_message(self._protocols[0])

    def _handle(self, msg: str) -> bytes:
        if msg == self.proposed:
            self.protocol = msg
            return b""
        if msg == NA:
            self._index += 1
            if self._index >= len(self._protocols):
                raise NegotiationFailed(
                    f"peer supports none of {', '.join(self._protocols)}"
                )
            return encode_message(self.proposed)
        raise MultistreamError(f"unexpected answer {msg[:64]!r} to proposal {self.proposed!r}")


class MultistreamListener(_Negotiator):
    """The answering side.

    ``supported`` is a container of protocol ids or a predicate.  ``start()``
    returns the header, which may be sent at once (as go-multistream does)
    since the dialer reads the header before anything else.  Header and
    proposal may arrive in one read (js pipelines them).  ``ls`` is answered
    when ``protocols_for_ls`` is given, otherwise with ``na``.
    """

    def __init__(
        self,
        supported: Container[str] | Callable[[str], bool],
        protocols_for_ls: Iterable[str] | None = None,
        max_message: int = DEFAULT_MAX_MESSAGE,
        max_rounds: int = DEFAULT_MAX_ROUNDS,
    ) -> None:
        super().__init__(max_message, max_rounds)
        self._supports = supported if callable(supported) else supported.__contains__
        self._ls = list(protocols_for_ls) if protocols_for_ls is not None else None

    def start(self) -> bytes:
        """Bytes to send first: our header."""
        return _HEADER

    def _handle(self, msg: str) -> bytes:
        if msg == LS and self._ls is not None:
            return _encode_ls_response(self._ls)
        if msg != PROTOCOL_ID and msg != NA and self._supports(msg):
            self.protocol = msg
            return encode_message(msg)
        return _NA


class ProtocolNotSupported(MultistreamError):
    """The peer supports none of the protocols we asked for on a stream."""


class ProtocolRejected(PrefixMismatch, ProtocolNotSupported):
    """A lazily selected protocol was refused (or answered with something
    other than its echo) after the stream was handed out.

    It surfaces on the stream's reads and writes, so it is a stream error
    (a :class:`~aicn.p2p.stream.StreamReset`) as well as a
    :class:`ProtocolNotSupported`.
    """


# -- over a stream ------------------------------------------------------------------------


async def _read_message(stream: Stream) -> bytes:
    """Read one multistream message exactly (prefix included), leaving later bytes unread."""
    try:
        body = await read_frame(stream, DEFAULT_MAX_MESSAGE)
    except FrameTruncated:
        raise
    except FrameError as exc:
        raise MultistreamError(f"bad multistream message: {exc}") from None
    return encode_uvarint(len(body)) + body


async def negotiate_outbound(stream: Stream, protocols: Sequence[str]) -> str:
    """Run multistream-select as dialer on ``stream``; return the agreed protocol."""
    dialer = MultistreamDialer(list(protocols))
    await stream.write(dialer.start())
    try:
        while not dialer.done:
            reply = dialer.receive(await _read_message(stream))
            if reply:
                await stream.write(reply)
    except NegotiationFailed as exc:
        raise ProtocolNotSupported(str(exc)) from None
    return dialer.protocol


async def select_lazily(stream: MuxedStream, protocol: str) -> None:
    """Propose ``protocol`` on ``stream`` without waiting for the answer.

    The expected answer (header and echo) is stripped from the stream's
    input as it arrives; any other answer resets the stream with
    :class:`ProtocolRejected`.
    """
    request, answer = lazy_select(protocol)
    na = encode_message(NA)
    header_len = len(answer) - len(encode_message(protocol))

    def rejected(received: bytes) -> ProtocolRejected:
        rest = received[header_len:]
        if (received[:header_len] == answer[:header_len] and rest and na.startswith(rest[: len(na)])
                and not answer.startswith(received)):
            why = f"peer does not support {protocol}"
        else:  # an invalid answer, or the stream ended before the whole one came
            why = f"peer did not confirm {protocol}: got {received[:80]!r}"
        return ProtocolRejected(why, received)

    stream.expect_prefix(answer, rejected)
    stream.protocol = protocol
    await stream.write(request)


async def negotiate_inbound(stream: Stream, supported) -> str:
    """Run multistream-select as listener on ``stream``; return the chosen protocol."""
    listener = MultistreamListener(supported)
    out = listener.start()
    if out:
        await stream.write(out)
    while not listener.done:
        reply = listener.receive(await _read_message(stream))
        if reply:
            await stream.write(reply)
    return listener.protocol
