"""The pure HTTP/1.1 codec of the chat-proxy tunnel."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from aicn.node.httpwire import (
    END,
    LAST_CHUNK,
    ChunkedDecoder,
    HTTPWireError,
    MessageParser,
    RequestHead,
    ResponseHead,
    encode_chunk,
    encode_request_head,
    encode_response_head,
    end_to_end_headers,
)

GO_REQUEST = (
    b"POST /api/v0/chat/completion?model=Llama3-8B&project=DecentralGPT HTTP/1.1\r\n"
    b"Host: 127.0.0.1:6000\r\n"
    b"User-Agent: Go-http-client/1.1\r\n"
    b"Content-Length: 17\r\n"
    b"Content-Type: application/json\r\n"
    b"\r\n"
    b'{"stream": true}\n'
)


def parse_all(kind, data, pieces=1, eof=False, **kw):
    """Feed ``data`` in ``pieces`` parts; return (head, body, ended, parser)."""
    parser = MessageParser(kind, **kw)
    events = []
    step = max(1, len(data) // pieces)
    for i in range(0, len(data), step):
        events += parser.feed(data[i : i + step])
    if eof:
        events += parser.feed_eof()
    head = events[0] if events and isinstance(events[0], (RequestHead, ResponseHead)) else None
    body = b"".join(e for e in events if isinstance(e, bytes))
    return head, body, events[-1:] == [END], parser


class RequestTests(SynchronousTestCase):
    def test_go_request(self):
        for pieces in (1, 3, len(GO_REQUEST)):
            head, body, ended, _ = parse_all("request", GO_REQUEST, pieces)
            self.assertEqual(head.method, b"POST")
            self.assertEqual(head.path, "/api/v0/chat/completion")
            self.assertEqual(head.query_value("model"), "Llama3-8B")
            self.assertEqual(head.query_value("project"), "DecentralGPT")
            self.assertEqual(head.query_value("cid"), "")
            self.assertEqual(head.get(b"content-type"), [b"application/json"])
            self.assertEqual(body, b'{"stream": true}\n')
            self.assertTrue(ended)

    def test_chunked_request_and_leftover(self):
        data = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n1;ext=1\r\nd\r\n0\r\nX-T: 1\r\n\r\nNEXT"
        head, body, ended, parser = parse_all("request", data, 7)
        self.assertEqual(body, b"abcd")
        self.assertTrue(ended)
        self.assertEqual(parser.unused, b"NEXT")

    def test_request_without_framing_has_no_body(self):
        head, body, ended, _ = parse_all("request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(body, b"")
        self.assertTrue(ended)

    def test_bare_lf_tolerated(self):
        head, body, ended, _ = parse_all("request", b"POST /a HTTP/1.1\nContent-Length: 2\n\nhi")
        self.assertEqual((head.path, body, ended), ("/a", b"hi", True))

    def test_limits(self):
        with self.assertRaises(HTTPWireError):
            MessageParser("request", max_head=100).feed(b"POST / HTTP/1.1\r\nX: " + b"a" * 200)
        with self.assertRaises(HTTPWireError):
            MessageParser("request").feed(b"POST / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n")
        parser = MessageParser("request", max_body=10)
        parser.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        with self.assertRaises(HTTPWireError):
            parser.feed(b"20\r\n" + b"x" * 32)

    def test_bad_requests(self):
        for bad in [
            b"POST /\r\n\r\n",
            b"POST / HTTP/2.0\r\n\r\n",
            b"POST / HTTP/1.1\r\nbad header\r\n\r\n",
            b"POST / HTTP/1.1\r\n folded\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\naXX",
        ]:
            with self.assertRaises(HTTPWireError, msg=bad):
                MessageParser("request").feed(bad)

    def test_unparsable_target_is_a_wire_error(self):
        # Found by the fuzz harness: urlsplit raised ValueError ("Invalid IPv6 URL") out of
        # path / query_value, past the worker's HTTPWireError handler.
        head, _, ended, _ = parse_all("request", b"POST //[x?project=a HTTP/1.1\r\n\r\n")
        self.assertTrue(ended)
        with self.assertRaises(HTTPWireError):
            head.query_value("project")
        with self.assertRaises(HTTPWireError):
            head.path

    def test_incomplete_at_eof(self):
        parser = MessageParser("request")
        parser.feed(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab")
        with self.assertRaises(HTTPWireError):
            parser.feed_eof()


class ResponseTests(SynchronousTestCase):
    def test_chunked_sse(self):
        data = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            + encode_chunk(b"data: {}\n\n")
            + encode_chunk(b"data: [DONE]\n\n")
            + LAST_CHUNK
        )
        for pieces in (1, 5, len(data)):
            head, body, ended, _ = parse_all("response", data, pieces)
            self.assertEqual((head.status, head.reason), (200, b"OK"))
            self.assertEqual(body, b"data: {}\n\ndata: [DONE]\n\n")
            self.assertTrue(ended)

    def test_until_eof(self):
        head, body, ended, _ = parse_all("response", b"HTTP/1.1 200 OK\r\n\r\nabc", eof=True)
        self.assertEqual((body, ended), (b"abc", True))

    def test_no_body_statuses(self):
        for status in (204, 304):
            head, body, ended, _ = parse_all("response", b"HTTP/1.1 %d X\r\n\r\n" % status)
            self.assertTrue(ended)
        with self.assertRaises(HTTPWireError):
            MessageParser("response").feed(b"HTTP/1.1 100 Continue\r\n\r\n")

    def test_response_body_unbounded_by_default(self):
        head, body, ended, _ = parse_all("response", b"HTTP/1.1 200 OK\r\nContent-Length: 3000000\r\n\r\n"
                                         + b"x" * 3000000)
        self.assertEqual((len(body), ended), (3000000, True))

    def test_bad_status_lines(self):
        for bad in [b"HTTP/1.1 2000 OK\r\n\r\n", b"HTTP/1.1 abc OK\r\n\r\n", b"FTP 200 OK\r\n\r\n",
                    b"HTTP/1.1 099 x\r\n\r\n"]:
            with self.assertRaises(HTTPWireError):
                MessageParser("response").feed(bad)


class EncodeTests(SynchronousTestCase):
    def test_encode_heads(self):
        self.assertEqual(
            encode_request_head(b"POST", b"/p?a=1", [(b"Host", b"h"), (b"Content-Length", b"0")]),
            b"POST /p?a=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
        )
        self.assertEqual(encode_response_head(502, b"Bad Gateway", []), b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
        with self.assertRaises(HTTPWireError):
            encode_request_head(b"POST", b"/a b", [])
        with self.assertRaises(HTTPWireError):
            encode_response_head(200, b"OK", [(b"X", b"a\r\nInjected: 1")])

    def test_end_to_end_headers(self):
        headers = [(b"Content-Type", b"text/event-stream"), (b"Transfer-Encoding", b"chunked"),
                   (b"Connection", b"close, X-Private"), (b"X-Private", b"1"), (b"Content-Length", b"5"),
                   (b"Keep-Alive", b"timeout=5"), (b"Cache-Control", b"no-cache")]
        self.assertEqual(end_to_end_headers(headers),
                         [(b"Content-Type", b"text/event-stream"), (b"Cache-Control", b"no-cache")])


bodies = st.lists(st.binary(min_size=0, max_size=300), max_size=8)


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(bodies, st.integers(1, 50), st.booleans())
    def test_chunked_round_trip(self, parts, step, crlf_trailer):
        wire = b"".join(encode_chunk(p) for p in parts) + (b"0\r\nX-A: b\r\n\r\n" if crlf_trailer else LAST_CHUNK)
        decoder = ChunkedDecoder()
        out = []
        for i in range(0, len(wire), step):
            out += decoder.feed(wire[i : i + step])
        self.assertTrue(decoder.done)
        self.assertEqual(b"".join(out), b"".join(parts))

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=2000), st.integers(1, 64), st.sampled_from(["length", "chunked"]))
    def test_request_round_trip(self, body, step, framing):
        if framing == "length":
            wire = encode_request_head(b"POST", b"/x?model=m", [(b"Content-Length", b"%d" % len(body))]) + body
        else:
            wire = (encode_request_head(b"POST", b"/x?model=m", [(b"Transfer-Encoding", b"chunked")])
                    + encode_chunk(body) + LAST_CHUNK)
        head, got, ended, parser = parse_all("request", wire, max(1, len(wire) // step))
        self.assertEqual((got, ended, parser.unused), (body, True, b""))

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=400), st.sampled_from(["request", "response"]), st.integers(1, 40))
    def test_garbage_raises_only_wire_error(self, data, kind, step):
        parser = MessageParser(kind, max_head=256, max_body=512)
        try:
            for i in range(0, len(data), step):
                parser.feed(data[i : i + step])
            parser.feed_eof()
        except HTTPWireError:
            pass

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300))
    def test_garbage_after_valid_head(self, data):
        for prefix in (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                       b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"):
            parser = MessageParser("request" if prefix.startswith(b"POST") else "response")
            try:
                parser.feed(prefix)
                parser.feed(data)
                parser.feed_eof()
            except HTTPWireError:
                pass
            try:
                parser.head and parser.head.__class__ is RequestHead and parser.head.query
            except HTTPWireError:
                pass


def rejects(test, kind, data, fragment):
    """``data`` (whole, then byte by byte) raises an HTTPWireError that mentions ``fragment``."""
    for step in (len(data), 1):
        parser = MessageParser(kind)
        with test.assertRaises(HTTPWireError, msg=(data, step)) as caught:
            for i in range(0, len(data), step):
                parser.feed(data[i : i + step])
        test.assertIn(fragment, str(caught.exception), data)


class BareCRTests(SynchronousTestCase):
    """A CR not followed by LF is never a line ending (RFC 9112 §2.2); Go's textproto
    keeps it in the line, then refuses it as a header value byte."""

    def test_in_request_line(self):
        rejects(self, "request", b"POST /a\rHTTP/1.1\r\nContent-Length: 0\r\n\r\n", "bare CR")
        rejects(self, "request", b"POST /a HTTP/1.1\r\rContent-Length: 0\r\n\r\n", "bare CR")

    def test_in_status_line(self):
        rejects(self, "response", b"HTTP/1.1 200 O\rK\r\nContent-Length: 0\r\n\r\n", "bare CR")
        rejects(self, "response", b"HTTP/1.1 200 OK\r\rContent-Length: 0\r\n\r\n", "bare CR")

    def test_in_header_lines(self):
        for head in (b"POST / HTTP/1.1\r\nX-A: 1\rContent-Length: 5\r\n\r\n",
                     b"POST / HTTP/1.1\r\nX-A: 1\r\r\nContent-Length: 0\r\n\r\n",
                     b"POST / HTTP/1.1\r\nContent-Length: 0\r\nX-A: 1\r\r\n\r\n",  # eaten by the end match
                     b"POST / HTTP/1.1\r\nX-A\r: 1\r\n\r\n"):
            rejects(self, "request", head, "bare CR")
        rejects(self, "response", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: 1\r\r\n\r\n", "bare CR")

    def test_before_the_request_line(self):
        # Blank lines (CRLF or LF) before the request line are tolerated; a lone CR is not one.
        head, _, ended, _ = parse_all("request", b"\r\n\nPOST /a HTTP/1.1\r\n\r\n", 1)
        self.assertEqual((head.path, ended), ("/a", True))
        head, _, ended, _ = parse_all("request", b"\r\n\nPOST /a HTTP/1.1\r\n\r\n", 100)
        self.assertEqual((head.path, ended), ("/a", True))
        rejects(self, "request", b"\rPOST /a HTTP/1.1\r\n\r\n", "bare CR")
        rejects(self, "request", b"\r\n\r\rPOST /a HTTP/1.1\r\n\r\n", "bare CR")


CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"


class ChunkedFramingTests(SynchronousTestCase):
    """Chunked framing follows Go's chunked reader (net/http/internal/chunked.go), which
    wants every chunk line to end in CRLF with no CR before it, and CRLF after the data."""

    def chunked_body(self, body):
        head, got, ended, parser = parse_all("request", CHUNKED_HEAD + body + b"NEXT", 1)
        self.assertEqual((ended, parser.unused), (True, b"NEXT"))
        return got

    def test_valid_framing_still_parses(self):
        self.assertEqual(self.chunked_body(b"3\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n"), b"abc0123456789")
        # Go trims trailing SP/HTAB off a chunk-size line.
        self.assertEqual(self.chunked_body(b"3 \t\r\nabc\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n"), b"abc")
        self.assertEqual(self.chunked_body(b'3;a;b=1; c = "x \\" y"\r\nabc\r\n0;z\r\n\r\n'), b"abc")

    def test_bare_lf_in_chunk_lines(self):
        for body, fragment in [
            (b"3\nabc\r\n0\r\n\r\n", "bare LF"),  # chunk-size line
            (b"3\r\nabc\n0\r\n\r\n", "CRLF after chunk data"),
            (b"3\r\nabc\r\n0\n\r\n", "bare LF"),  # last-chunk line
            (b"3\r\nabc\r\n0\r\nX-T: 1\n\r\n", "bare LF"),  # trailer line
            (b"3\r\nabc\r\n0\r\n\n", "bare LF"),  # the blank line that ends the trailers
        ]:
            rejects(self, "request", CHUNKED_HEAD + body, fragment)

    def test_bare_cr_in_chunk_lines(self):
        for body in [b"3\r\r\nabc\r\n0\r\n\r\n", b"3;a\rb\r\nabc\r\n0\r\n\r\n", b"3\r\nabc\r\n0\r\r\n\r\n",
                     b"3\r\nabc\r\n0\r\nX-T: 1\r\r\n\r\n", b"3\r\nabc\r\n0\r\nX-T: 1\rX-U: 2\r\n\r\n"]:
            rejects(self, "request", CHUNKED_HEAD + body, "CR")

    def test_bad_chunk_sizes(self):
        for size in [b"", b" 3", b"\t3", b"3 ;a", b"0x3", b"+3", b"-3", b"3 3", b"g", b"1" * 16,
                     b"0" * 15 + b"3"]:
            rejects(self, "request", CHUNKED_HEAD + size + b"\r\nabc\r\n0\r\n\r\n", "chunk size")

    def test_bad_chunk_extensions(self):
        for ext in [b";", b";=1", b";a=", b";a b", b";a=1 2", b";a=\"x", b";a=\x00", b";a\x01", b";\x7f",
                    b";a=\"\x01\"", b" ;a"]:
            rejects(self, "request", CHUNKED_HEAD + b"3" + ext + b"\r\nabc\r\n0\r\n\r\n", "chunk")


class HeaderStrictnessTests(SynchronousTestCase):
    """Header fields that Go's http.ReadRequest / ReadResponse refuse, or would frame differently."""

    def test_duplicate_host(self):
        # Go's server: "too many Host headers".
        for hosts in (b"Host: a\r\nHost: b\r\n", b"Host: a\r\nhost: a\r\n"):
            rejects(self, "request", b"POST / HTTP/1.1\r\n" + hosts + b"Content-Length: 0\r\n\r\n", "Host")
        head, _, ended, _ = parse_all("request", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual((head.get(b"host"), ended), ([b"a"], True))

    def test_content_length_values(self):
        # Identical duplicates are one length (Go too); differing ones, lists, signs, blanks are refused.
        head, body, ended, _ = parse_all(
            "request", b"POST / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length:  2 \r\n\r\nhi")
        self.assertEqual((body, ended), (b"hi", True))
        for value in (b"2\r\nContent-Length: 02", b"2, 2", b"+2", b"", b" ", b"0x2", b"2 2", b"1" * 19,
                      b"2\x0b", b"\x0c2"):
            rejects(self, "request", b"POST / HTTP/1.1\r\nContent-Length: " + value + b"\r\n\r\nhi", "Content-Length")

    def test_control_characters_in_values(self):
        for c in [b"\x00", b"\x01", b"\x08", b"\x0b", b"\x0c", b"\x1b", b"\x1f", b"\x7f"]:
            rejects(self, "request", b"POST / HTTP/1.1\r\nX-A: a" + c + b"b\r\n\r\n", "control character")
            rejects(self, "response", b"HTTP/1.1 200 OK\r\nX-A: a" + c + b"b\r\n\r\n", "control character")
        head, _, _, _ = parse_all("request", b"POST / HTTP/1.1\r\nX-A: a\tb \xe9\xff\r\n\r\n")
        self.assertEqual(head.get(b"x-a"), [b"a\tb \xe9\xff"])  # HTAB, SP and obs-text are field content

    def test_control_characters_in_reason(self):
        for c in [b"\x00", b"\x01", b"\x7f", b"\x1b"]:
            rejects(self, "response", b"HTTP/1.1 200 O" + c + b"K\r\nContent-Length: 0\r\n\r\n", "status line")
        head, _, _, _ = parse_all("response", b"HTTP/1.1 200 Tr\xe8s\tbien\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(head.reason, b"Tr\xe8s\tbien")

    def test_header_name_syntax(self):
        # Already refused: obs-fold (any line), whitespace before the colon, an empty or non-token name.
        for line in (b"X-A: 1\r\n b", b"X-A: 1\r\n\tb", b"X-A : 1", b"X-A\t: 1", b": 1", b"X\xe9: 1", b"X(A): 1"):
            rejects(self, "request", b"POST / HTTP/1.1\r\n" + line + b"\r\n\r\n", "header")

    def test_transfer_encoding_must_be_exactly_chunked(self):
        # Go: one Transfer-Encoding header, its value "chunked" -- else "unsupported transfer encoding".
        for te in (b"Transfer-Encoding: \r\n", b"Transfer-Encoding: ,chunked\r\n", b"Transfer-Encoding: chunked,\r\n",
                   b"Transfer-Encoding: chunked\r\nTransfer-Encoding: \r\n",
                   b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"):
            rejects(self, "request", b"POST / HTTP/1.1\r\n" + te + b"Content-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                    "Transfer-Encoding")
        head, body, ended, _ = parse_all("request", b"POST / HTTP/1.1\r\nTransfer-Encoding:  Chunked \r\n\r\n"
                                         b"3\r\nabc\r\n0\r\n\r\n")
        self.assertEqual((body, ended), (b"abc", True))

    def test_transfer_encoding_in_http_1_0(self):
        # RFC 9112 §6.1: faulty framing; Go ignores the header there (and would frame differently).
        rejects(self, "request", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                "HTTP/1.0")
        rejects(self, "response", b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                "HTTP/1.0")
