"""bench/h11wire.py's H11MessageParser reads well-formed messages as httpwire.MessageParser does.

The two must give the same events (adjacent body bytes joined: the parsers may split a
body differently), ``unused`` and ``body_size`` for the messages the chat-proxy tunnel
carries, fed whole and split at every byte boundary, so that bench/routing.py
--parser h11 compares parsers, not behaviours.  Skipped where h11 is not installed
(it is no dependency of aicn).
"""

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from aicn.node import httpwire
from aicn.node.httpwire import END, HTTPWireError, RequestHead, ResponseHead

try:
    import h11  # noqa: F401 (only whether it is there)
except ImportError:
    h11 = None

BODY = b'{"model":"fast","stream":true,"messages":[{"role":"user","content":"Hello"}]}'
REQUEST = (b"POST /v1/chat/completions?model=fast&project=P HTTP/1.1\r\nHost: chat-proxy\r\n"
           b"User-Agent: Go-http-client/1.1\r\nContent-Length: %d\r\nContent-Type: application/json\r\n"
           b"Accept-Encoding: gzip\r\n\r\n" % len(BODY)) + BODY
EVENTS = [b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n', b"data: " + b"x" * 300 + b"\n\n",
          b"data: [DONE]\n\n"]
SSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-Accel-Buffering: no\r\n"
       b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(httpwire.encode_chunk(e) for e in EVENTS)
       + httpwire.LAST_CHUNK)
UNTIL_EOF = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it, until the stream ends"
JSON_REPLY = b'{"code":0,"choices":[]}'
LENGTH_REPLY = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % len(JSON_REPLY)) + JSON_REPLY
NO_CONTENT = b"HTTP/1.1 204 No Content\r\nDate: Mon, 07 Dec 2026 01:00:00 GMT\r\n\r\n"
HEAD_REPLY = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1234\r\n\r\n"


def joined(events):
    """``events`` with runs of body bytes joined into one."""
    out = []
    for event in events:
        if isinstance(event, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += event
        else:
            out.append(event)
    return out


class H11WireEquivalenceTests(SynchronousTestCase):
    def setUp(self):
        if h11 is None:
            raise SkipTest("h11 is not installed (pip install h11): bench/h11wire.py needs it")
        from bench.h11wire import H11MessageParser

        self.parsers = (httpwire.MessageParser, H11MessageParser)

    def read(self, parser_class, kind, pieces, eof=False, **kw):
        parser = parser_class(kind, **kw)
        events = []
        for piece in pieces:
            events += parser.feed(piece)
        if eof:
            events += parser.feed_eof()
        return joined(events), parser

    def assertSame(self, kind, message, eof=False, splits=True, **kw):
        """Both parsers give the same events for ``message`` whole and cut in two at every byte."""
        cuts = [None] + (list(range(len(message) + 1)) if splits else [])
        results = []
        for cut in cuts:
            pieces = [message] if cut is None else [message[:cut], message[cut:]]
            (want, p1), (got, p2) = (self.read(cls, kind, pieces, eof, **kw) for cls in self.parsers)
            self.assertEqual(got, want, f"cut at {cut}")
            self.assertEqual((p2.done, p2.unused, p2.body_size, p2.head), (p1.done, p1.unused, p1.body_size, p1.head),
                             f"cut at {cut}")
            results.append(want)
        return results[0]

    def test_content_length_request(self):
        events = self.assertSame("request", REQUEST)
        head = events[0]
        self.assertIsInstance(head, RequestHead)
        self.assertEqual((head.method, head.path, head.version), (b"POST", "/v1/chat/completions", b"HTTP/1.1"))
        self.assertIn((b"User-Agent", b"Go-http-client/1.1"), head.headers)  # names keep their case
        self.assertEqual(events[1:], [BODY, END])

    def test_request_with_bytes_after_it(self):
        self.assertSame("request", REQUEST + b"GET / HTTP/1.1\r\n", splits=False)

    def test_request_without_body(self):
        events = self.assertSame("request", b"GET /v1/models HTTP/1.1\r\nHost: chat-proxy\r\n\r\n")
        self.assertEqual(events[1:], [END])

    def test_chunked_sse_response_split_at_every_byte(self):
        events = self.assertSame("response", SSE)
        self.assertIsInstance(events[0], ResponseHead)
        self.assertEqual((events[0].status, events[0].reason), (200, b"OK"))
        self.assertEqual(events[1:], [b"".join(EVENTS), END])

    def test_chunked_response_fed_byte_by_byte(self):
        want, _ = self.read(self.parsers[0], "response", [SSE[i:i + 1] for i in range(len(SSE))])
        got, _ = self.read(self.parsers[1], "response", [SSE[i:i + 1] for i in range(len(SSE))])
        self.assertEqual(got, want)

    def test_content_length_response(self):
        self.assertEqual(self.assertSame("response", LENGTH_REPLY)[1:], [JSON_REPLY, END])

    def test_response_until_eof(self):
        events = self.assertSame("response", UNTIL_EOF, eof=True)
        self.assertEqual(events[1:], [b"all of it, until the stream ends", END])

    def test_no_content_response(self):
        self.assertEqual(self.assertSame("response", NO_CONTENT)[1:], [END])

    def test_response_to_head(self):
        events = self.assertSame("response", HEAD_REPLY, request_method=b"HEAD")
        self.assertEqual(events[1:], [END])

    def test_incomplete_message_at_eof(self):
        for cls in self.parsers:
            parser = cls("response")
            parser.feed(SSE[:-3])
            self.assertRaises(HTTPWireError, parser.feed_eof)

    def test_body_limits(self):
        for cls in self.parsers:
            # Over the request default (1 MiB) by Content-Length, and by bytes once lowered.
            self.assertRaises(HTTPWireError, cls("request").feed,
                              b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n")
            parser = cls("response", max_body=10)
            parser.feed(SSE[:SSE.index(b"\r\n\r\n") + 4])
            self.assertRaises(HTTPWireError, parser.feed, SSE[SSE.index(b"\r\n\r\n") + 4:])
            self.assertGreater(parser.body_size, 10)

    def test_malformed_is_httpwireerror(self):
        for cls in self.parsers:
            self.assertRaises(HTTPWireError, cls("request").feed, b"POST / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
            self.assertRaises(HTTPWireError, cls("response").feed, b"HTTP/1.1 2000 OK\r\n\r\n")

    def test_install_puts_it_in_every_module_that_imported_messageparser(self):
        import io
        import sys

        from aicn.node.chatproxy import requester, wire
        from bench import h11wire

        modules = (httpwire, requester, wire)
        before = [m.MessageParser for m in modules]
        self.addCleanup(lambda: [setattr(m, "MessageParser", p) for m, p in zip(modules, before)])
        self.patch(sys, "stderr", io.StringIO())
        patched = h11wire.install()
        self.assertEqual([m.MessageParser for m in modules], [h11wire.H11MessageParser] * 3)
        self.assertLessEqual({"aicn.node.httpwire", "aicn.node.chatproxy.requester", "aicn.node.chatproxy.wire"},
                             set(patched))
        self.assertIn("h11wire: MessageParser is h11", sys.stderr.getvalue())
