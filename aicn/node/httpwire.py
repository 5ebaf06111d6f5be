"""A small, pure (sans-IO) HTTP/1.1 message codec for the chat-proxy tunnel.

``/chat-proxy/0.0.1`` carries one raw HTTP/1.1 request and one raw HTTP/1.1
response over a libp2p stream (as Go's ``Request.Write`` / ``Response.Write``
put them there).  This module turns bytes into events and back, with no I/O:

* :class:`MessageParser` -- feed bytes, get a head (:class:`RequestHead` or
  :class:`ResponseHead`), body chunks (``bytes``) and :data:`END`.
* :class:`ChunkedDecoder` / :func:`encode_chunk` / :data:`LAST_CHUNK` --
  ``Transfer-Encoding: chunked``.
* :func:`encode_request_head` / :func:`encode_response_head` and
  :func:`end_to_end_headers` for writing.

Anything malformed or over a limit raises :class:`HTTPWireError`, never
another exception type.  The parser is at least as strict as Go's net/http
reader where a difference could frame a message two ways (request
smuggling): a bare CR anywhere, a chunk line or chunk data not ended by
CRLF, a chunk size other than bare hex digits, a malformed chunk extension,
two Host headers, differing Content-Length values, any Transfer-Encoding but
one ``chunked`` (and none in HTTP/1.0), obs-fold lines, whitespace before a
header's colon and control characters in header values are all refused.  It
stays lenient, like Go, about bare LF line endings in a message head and
blank lines before a request line: Go writers emit neither, and neither
changes where a message ends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Optional, Union
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "HTTPWireError",
    "RequestHead",
    "ResponseHead",
    "MessageParser",
    "ChunkedDecoder",
    "END",
    "LAST_CHUNK",
    "encode_chunk",
    "encode_request_head",
    "encode_response_head",
    "end_to_end_headers",
    "HOP_BY_HOP",
]

#: Default limit on a message head (request/status line plus headers).
MAX_HEAD_SIZE = 64 * 1024
#: Limit on one chunk-size line (with extensions) and on one trailer line.
MAX_CHUNK_LINE = 4096
#: Limit on the trailer section of a chunked body.
MAX_TRAILER_SIZE = 16 * 1024

#: Headers that describe one connection, not the message (RFC 9110 §7.6.1),
#: plus the framing headers, which every hop computes for itself.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    }
)

LAST_CHUNK = b"0\r\n\r\n"

# Each is used with fullmatch (``$`` would also match before a final LF).
_TOKEN_CHARS = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN = re.compile(_TOKEN_CHARS)
_VERSION = re.compile(rb"HTTP/1\.[01]")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
_DIGITS = re.compile(rb"[0-9]{1,18}")
_BLANK_LINES = re.compile(rb"(?:\r?\n)*")
#: Bytes that are not field content (RFC 9110 §5.5: VCHAR, obs-text, SP and HTAB are).
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_QUOTED_STRING = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
#: ``*( BWS ";" BWS ext-name [ BWS "=" BWS ext-value ] )`` (RFC 9112 §7.1.1), at least one.
_CHUNK_EXT = re.compile(
    rb"(?:[ \t]*;[ \t]*%b(?:[ \t]*=[ \t]*(?:%b|%b))?)+" % (_TOKEN_CHARS, _TOKEN_CHARS, _QUOTED_STRING)
)


class HTTPWireError(Exception):
    """Malformed or oversized HTTP/1.1 data."""


class _End:
    """The end-of-message event."""

    def __repr__(self) -> str:
        return "END"


#: Event emitted by :class:`MessageParser` once the body is complete.
END = _End()

Headers = list[tuple[bytes, bytes]]


def _get(headers: Headers, name: bytes) -> list[bytes]:
    name = name.lower()
    return [v for k, v in headers if k.lower() == name]


@dataclass
class RequestHead:
    """A parsed request line and headers (names keep their case)."""

    method: bytes
    target: bytes
    version: bytes
    headers: Headers = field(default_factory=list)

    def get(self, name: bytes) -> list[bytes]:
        """Every value of header ``name`` (case-insensitive)."""
        return _get(self.headers, name)

    def _split(self):
        try:
            return urlsplit(self.target.decode("latin-1"))
        except ValueError as exc:  # e.g. "//[x": urlsplit insists on a valid IPv6 host
            raise HTTPWireError(f"bad request target: {exc}") from None

    @property
    def path(self) -> str:
        """The target's path, decoded as latin-1 (:class:`HTTPWireError` for an unparsable target)."""
        return self._split().path

    @property
    def query(self) -> dict[str, list[str]]:
        """The target's query parameters (``?model=m&project=p``)."""
        query = self._split().query
        try:
            return parse_qs(query, keep_blank_values=True, errors="strict")
        except (ValueError, UnicodeDecodeError) as exc:
            raise HTTPWireError(f"bad query string: {exc}") from None

    def query_value(self, name: str) -> str:
        """The first value of query parameter ``name``, or ``""``."""
        values = self.query.get(name)
        return values[0] if values else ""


@dataclass
class ResponseHead:
    """A parsed status line and headers."""

    version: bytes
    status: int
    reason: bytes
    headers: Headers = field(default_factory=list)

    def get(self, name: bytes) -> list[bytes]:
        """Every value of header ``name`` (case-insensitive)."""
        return _get(self.headers, name)


Event = Union[RequestHead, ResponseHead, bytes, _End]


def _split_lines(block: bytes) -> list[bytes]:
    """The lines of a head ``block`` (its final line ending already cut off).

    CRLF is the standard; a bare LF is tolerated as Go's textproto does.  A CR
    anywhere else -- not right before an LF -- is refused: it is no line
    ending, and a peer that took it for one would read other headers (RFC 9112
    §2.2; Go keeps it in the line and refuses it as a header value byte).
    """
    lines = block.split(b"\n")
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines[:-1]] + lines[-1:]
    for line in lines:
        if b"\r" in line:
            raise HTTPWireError(f"bare CR in message head line {line[:64]!r}")
    return lines


def _parse_headers(lines: list[bytes]) -> Headers:
    headers: Headers = []
    for line in lines:
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            raise HTTPWireError("obsolete header line folding")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise HTTPWireError(f"bad header line {line[:64]!r}")
        value = value.strip(b" \t")
        if _CTL.search(value):
            raise HTTPWireError(f"control character in header value of {name[:32]!r}")
        headers.append((name, value))
    return headers


def parse_request_head(block: bytes) -> RequestHead:
    """Parse a request head (without the blank line that ends it)."""
    lines = _split_lines(block)
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise HTTPWireError(f"bad request line {lines[0][:64]!r}")
    method, target, version = parts
    if not _TOKEN.fullmatch(method) or not target or not _VERSION.fullmatch(version):
        raise HTTPWireError(f"bad request line {lines[0][:64]!r}")
    if any(c < 0x21 or c == 0x7F for c in target):
        raise HTTPWireError("bad request target")
    headers = _parse_headers(lines[1:])
    if len(_get(headers, b"host")) > 1:
        raise HTTPWireError("too many Host headers")  # Go's server refuses them too
    return RequestHead(method, target, version, headers)


def parse_response_head(block: bytes) -> ResponseHead:
    """Parse a response head (without the blank line that ends it)."""
    lines = _split_lines(block)
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if not _VERSION.fullmatch(version) or len(code) != 3 or not code.isdigit():
        raise HTTPWireError(f"bad status line {lines[0][:64]!r}")
    if _CTL.search(reason):
        raise HTTPWireError(f"control character in status line {lines[0][:64]!r}")
    status = int(code)
    if status < 100:
        raise HTTPWireError(f"bad status code {status}")
    return ResponseHead(version, status, reason, _parse_headers(lines[1:]))


def content_length(headers: Headers) -> Optional[int]:
    """The Content-Length (None if absent); conflicting values are an error."""
    values = set(_get(headers, b"content-length"))  # already trimmed of SP and HTAB
    if not values:
        return None
    if len(values) != 1:
        raise HTTPWireError("conflicting Content-Length headers")
    (value,) = values
    if not _DIGITS.fullmatch(value):
        raise HTTPWireError(f"bad Content-Length {value[:32]!r}")
    return int(value)


def is_chunked(headers: Headers) -> bool:
    """True if there is a Transfer-Encoding header; anything but one saying ``chunked`` is an error.

    As Go's net/http: a single header, its value ``chunked`` (any case), with
    no other coding and no empty list elements.
    """
    values = _get(headers, b"transfer-encoding")
    if not values:
        return False
    if len(values) != 1:
        raise HTTPWireError(f"too many Transfer-Encoding headers {b', '.join(values)[:64]!r}")
    if values[0].lower() != b"chunked":
        raise HTTPWireError(f"unsupported Transfer-Encoding {values[0][:64]!r}")
    return True


def _chunk_size(line: bytes) -> int:
    """The size of a chunk-size line (without its CRLF); its extensions are checked, then ignored.

    Like Go: trailing SP/HTAB is trimmed, and the size is hex digits only, up to
    the first ``;`` (no whitespace around them, no sign, no ``0x``).
    """
    line = line.rstrip(b" \t")
    size_text, semi, _ = line.partition(b";")
    if not _HEX.fullmatch(size_text):
        if re.fullmatch(rb"[0-9A-Fa-f]+", size_text):
            raise HTTPWireError(f"chunk size too large {size_text[:32]!r}")
        raise HTTPWireError(f"bad chunk size {line[:32]!r}")
    if semi and not _CHUNK_EXT.fullmatch(line, len(size_text)):
        raise HTTPWireError(f"bad chunk extension {line[:64]!r}")
    return int(size_text, 16)


class ChunkedDecoder:
    """Incremental decoder of a ``chunked`` body.

    :meth:`feed` returns the data it could decode; once the last chunk and
    the trailers were read, :attr:`done` is true and :attr:`unused` holds
    any bytes after the body.
    """

    def __init__(self) -> None:
        self._buf = b""
        self._remaining = 0  # data bytes left in the current chunk
        self._state = "size"  # size | data | data-crlf | trailer | done
        self._trailer_size = 0
        self.unused = b""

    @property
    def done(self) -> bool:
        """True after the terminating chunk and trailers."""
        return self._state == "done"

    def feed(self, data: bytes) -> list[bytes]:
        """Decode what ``data`` completes; raise :class:`HTTPWireError` on garbage."""
        if self._state == "done":
            self.unused += data
            return []
        buf = self._buf + data
        out: list[bytes] = []
        pos = 0
        while pos < len(buf):
            state = self._state
            if state == "data":
                n = min(self._remaining, len(buf) - pos)
                out.append(buf[pos : pos + n])
                pos += n
                self._remaining -= n
                if self._remaining == 0:
                    self._state = "data-crlf"
                continue
            if state == "data-crlf":
                # Exactly CRLF, as Go's chunked reader wants ("malformed chunked encoding").
                if buf.startswith(b"\r\n", pos):
                    pos += 2
                elif buf[pos:] == b"\r":
                    break  # wait for the LF
                else:
                    raise HTTPWireError(f"missing CRLF after chunk data (got {buf[pos : pos + 2]!r})")
                self._state = "size"
                continue
            end = buf.find(b"\n", pos)
            if end < 0:
                if len(buf) - pos > MAX_CHUNK_LINE:
                    raise HTTPWireError("chunk line too long")
                break
            line = buf[pos:end]
            if len(line) > MAX_CHUNK_LINE:
                raise HTTPWireError("chunk line too long")
            # Every chunk-size, trailer and final line ends in CRLF, with no CR before it
            # (Go: "chunked line ends with bare LF", "invalid CR in chunked line").
            if not line.endswith(b"\r"):
                raise HTTPWireError(f"chunked line ends with bare LF: {line[:32]!r}")
            line = line[:-1]
            if b"\r" in line:
                raise HTTPWireError(f"bare CR in chunked line {line[:32]!r}")
            pos = end + 1
            if state == "size":
                size = _chunk_size(line)
                if size == 0:
                    self._state = "trailer"
                else:
                    self._remaining = size
                    self._state = "data"
            else:  # trailer
                self._trailer_size += len(line) + 2
                if self._trailer_size > MAX_TRAILER_SIZE:
                    raise HTTPWireError("chunked trailers too large")
                if not line:
                    self._state = "done"
                    self.unused = buf[pos:]
                    pos = len(buf)
                    break
                _parse_headers([line])  # validate, then drop: we never use trailers
        self._buf = buf[pos:] if self._state != "done" else b""
        return [chunk for chunk in out if chunk]


class MessageParser:
    """Incremental parser of one HTTP/1.1 request or response.

    ``MessageParser("request")`` or ``MessageParser("response")``.
    :meth:`feed` returns events: first the head, then body ``bytes``, then
    :data:`END`.  :meth:`feed_eof` tells it the transport ended (which ends
    a response body that runs until EOF).  Bytes after the message are kept
    in :attr:`unused`.  ``max_body`` bounds the body (requests: 1 MiB by
    default; responses: unbounded, since they are relayed, not buffered).
    """

    def __init__(self, kind: str, *, max_head: int = MAX_HEAD_SIZE, max_body: Optional[int] = None,
                 request_method: bytes = b"POST") -> None:
        if kind not in ("request", "response"):
            raise ValueError("kind must be 'request' or 'response'")
        self.kind = kind
        self.max_head = max_head
        self.max_body = max_body if max_body is not None else (1024 * 1024 if kind == "request" else None)
        self.request_method = request_method
        self.head: Optional[Union[RequestHead, ResponseHead]] = None
        self.body_size = 0
        self.done = False
        self.unused = b""
        self._buf = b""
        self._mode = "head"  # head | length | chunked | eof | done
        self._left = 0
        self._chunked: Optional[ChunkedDecoder] = None

    def feed(self, data: bytes) -> list[Event]:
        """Consume ``data``; return the events it completes."""
        if self.done:
            self.unused += data
            return []
        events: list[Event] = []
        if self._mode == "head":
            buf = self._buf + data
            # Tolerate (like Go) empty lines (CRLF or LF) before a request line.
            if self.kind == "request":
                buf = buf[_BLANK_LINES.match(buf).end() :]
                if buf == b"\r":
                    self._buf = buf  # a CR: wait for its LF
                    return events
            match = re.search(rb"\r?\n\r?\n", buf)
            if match is None:
                if len(buf) > self.max_head:
                    raise HTTPWireError("message head too large")
                self._buf = buf
                return events
            if match.start() > self.max_head:
                raise HTTPWireError("message head too large")
            block = buf[: match.start()]
            data = buf[match.end() :]
            self._buf = b""
            self._start_body(block, events)
            if self.done:
                self.unused = data
                return events
        self._body(data, events)
        return events

    def feed_eof(self) -> list[Event]:
        """The transport ended: finish an until-EOF body, else raise if incomplete."""
        if self.done:
            return []
        if self._mode == "eof":
            self._finish(b"")
            return [END]
        raise HTTPWireError("connection ended before the message was complete")

    # -- internals -------------------------------------------------------------------

    def _start_body(self, block: bytes, events: list[Event]) -> None:
        if self.kind == "request":
            head = parse_request_head(block)
        else:
            head = parse_response_head(block)
        self.head = head
        events.append(head)
        if head.version == b"HTTP/1.0" and head.get(b"transfer-encoding"):
            # RFC 9112 §6.1: faulty framing (and Go would ignore the header, framing it otherwise).
            raise HTTPWireError("Transfer-Encoding in an HTTP/1.0 message")
        chunked = is_chunked(head.headers)
        length = content_length(head.headers)
        if chunked and length is not None:
            raise HTTPWireError("both Transfer-Encoding and Content-Length")
        if self.kind == "response" and (
            head.status < 200 or head.status in (204, 304) or self.request_method == b"HEAD"
        ):
            if 100 <= head.status < 200:
                raise HTTPWireError("interim (1xx) responses are not supported")
            self._finish(b"", events)
        elif chunked:
            self._mode = "chunked"
            self._chunked = ChunkedDecoder()
        elif length is not None:
            if self.max_body is not None and length > self.max_body:
                raise HTTPWireError(f"body of {length} bytes exceeds {self.max_body}")
            self._mode = "length"
            self._left = length
            if length == 0:
                self._finish(b"", events)
        elif self.kind == "request":
            self._finish(b"", events)  # no framing header: no body
        else:
            self._mode = "eof"

    def _count(self, n: int) -> None:
        self.body_size += n
        if self.max_body is not None and self.body_size > self.max_body:
            raise HTTPWireError(f"body exceeds {self.max_body} bytes")

    def _body(self, data: bytes, events: list[Event]) -> None:
        if not data:
            return
        mode = self._mode
        if mode == "length":
            n = min(self._left, len(data))
            self._count(n)
            events.append(data[:n])
            self._left -= n
            if self._left == 0:
                self._finish(data[n:], events)
        elif mode == "chunked":
            decoder = self._chunked
            assert decoder is not None
            for chunk in decoder.feed(data):
                self._count(len(chunk))
                events.append(chunk)
            if decoder.done:
                self._finish(decoder.unused, events)
        elif mode == "eof":
            self._count(len(data))
            events.append(data)

    def _finish(self, rest: bytes, events: Optional[list[Event]] = None) -> None:
        self._mode = "done"
        self.done = True
        self.unused = rest
        if events is not None:
            events.append(END)


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (empty data encodes to nothing, not the last chunk)."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)


def _check_header(name: bytes, value: bytes) -> None:
    if not _TOKEN.fullmatch(name) or any(c in value for c in (b"\r", b"\n", b"\x00")):
        raise HTTPWireError(f"bad header {name[:32]!r}")


def _encode_headers(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    out = []
    for name, value in headers:
        _check_header(name, value)
        out.append(b"%b: %b\r\n" % (name, value))
    return b"".join(out)


def encode_request_head(method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """``METHOD target HTTP/1.1`` plus headers plus the blank line."""
    if not _TOKEN.fullmatch(method) or not target or any(c <= 0x20 or c == 0x7F for c in target):
        raise HTTPWireError("bad request line")
    return b"%b %b HTTP/1.1\r\n%b\r\n" % (method, target, _encode_headers(headers))


def encode_response_head(status: int, reason: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """``HTTP/1.1 status reason`` plus headers plus the blank line."""
    if not 100 <= status <= 999 or any(c in reason for c in (b"\r", b"\n")):
        raise HTTPWireError("bad status line")
    return b"HTTP/1.1 %d %b\r\n%b\r\n" % (status, reason, _encode_headers(headers))


def end_to_end_headers(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """Drop hop-by-hop and framing headers (and any named in ``Connection``)."""
    headers = list(headers)
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    return [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP and n.lower() not in named]
