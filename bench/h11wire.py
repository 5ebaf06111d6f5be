"""An h11-based stand-in for :class:`aicn.node.httpwire.MessageParser`, and a
micro-benchmark of the two (issue 13 item 6: "replace httpwire with h11 unless
measured slower").

:class:`H11MessageParser` has the interface of ``httpwire.MessageParser``
(``feed`` / ``feed_eof``, the same events, ``head``, ``done``, ``unused``,
``body_size``, ``max_body``; :class:`~aicn.node.httpwire.HTTPWireError` for
anything h11 refuses and for the limits) but lets h11 do the parsing.  h11 is
a connection state machine, so a request is read by an ``h11.SERVER``
connection, and a response by an ``h11.CLIENT`` connection that first "sent"
a synthetic request with ``request_method`` (so that HEAD, 204 and 304 are
framed right).  :func:`install` puts it in the place of ``MessageParser`` in
this process (``bench/routing.py --parser h11`` runs both nodes so).

It is not the production parser and not as strict as httpwire about framing
(h11 has its own rules); it is here to be measured.  h11 is not a dependency of
aicn: ``pip install h11`` to use this module.

    python bench/h11wire.py [--requests 10000] [--events 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Union

import h11

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from aicn.node import httpwire  # noqa: E402 (after the path)
from aicn.node.httpwire import END, MAX_HEAD_SIZE, HTTPWireError, RequestHead, ResponseHead  # noqa: E402

__all__ = ["H11MessageParser", "install"]


class H11MessageParser(httpwire.MessageParser):
    """``httpwire.MessageParser`` with h11 underneath (see the module docstring): its
    constructor (arguments, defaults, attributes), h11's parsing in :meth:`feed`."""

    def __init__(self, kind: str, *, max_head: int = MAX_HEAD_SIZE, max_body: Optional[int] = None,
                 request_method: bytes = b"POST") -> None:
        super().__init__(kind, max_head=max_head, max_body=max_body, request_method=request_method)
        if kind == "request":
            self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        else:
            self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_head)
            headers = [(b"Host", b"chat-proxy")]
            if request_method not in (b"GET", b"HEAD"):
                headers.append((b"Content-Length", b"0"))
            self._conn.send(h11.Request(method=request_method, target=b"/", headers=headers))
            self._conn.send(h11.EndOfMessage())

    def feed(self, data: bytes) -> list:
        """Consume ``data``; return the events it completes."""
        if self.done:
            self.unused += data
            return []
        if not data:
            return []
        self._conn.receive_data(data)
        return self._events()

    def feed_eof(self) -> list:
        """The transport ended: finish an until-EOF body, else raise if incomplete."""
        if self.done:
            return []
        self._conn.receive_data(b"")
        events = self._events()
        if not self.done:
            raise HTTPWireError("connection ended before the message was complete")
        return events

    def _events(self) -> list:
        conn = self._conn
        events: list = []
        try:
            while True:
                event = conn.next_event()
                cls = type(event)
                if cls is h11.Data:
                    chunk = bytes(event.data)
                    self.body_size += len(chunk)
                    if self.max_body is not None and self.body_size > self.max_body:
                        raise HTTPWireError(f"body exceeds {self.max_body} bytes")
                    events.append(chunk)
                elif cls is h11.EndOfMessage:
                    self.done = True
                    self.unused = conn.trailing_data[0]
                    events.append(END)
                    return events
                elif cls is h11.Request or cls is h11.Response:
                    events.append(self._head(event))
                elif event is h11.NEED_DATA or event is h11.PAUSED:
                    return events
                elif cls is h11.InformationalResponse:
                    raise HTTPWireError("interim (1xx) responses are not supported")
                elif cls is h11.ConnectionClosed:
                    raise HTTPWireError("connection ended before the message was complete")
                else:  # pragma: no cover - h11 has no other events for a peer's message
                    raise HTTPWireError(f"unexpected h11 event {event!r}")
        except h11.RemoteProtocolError as exc:
            raise HTTPWireError(str(exc)) from None

    def _head(self, event) -> Union[RequestHead, ResponseHead]:
        headers = event.headers.raw_items()  # (name as sent, value): bytes, already checked by h11
        version = b"HTTP/" + event.http_version
        if isinstance(event, h11.Request):
            head: Union[RequestHead, ResponseHead] = RequestHead(event.method, event.target, version,
                                                                 headers)
        else:
            head = ResponseHead(version, event.status_code, event.reason, headers)
        self.head = head
        lengths = head.get(b"content-length")
        if lengths and self.max_body is not None and int(lengths[0]) > self.max_body:
            raise HTTPWireError(f"body of {int(lengths[0])} bytes exceeds {self.max_body}")
        return head


def install() -> list[str]:
    """Put :class:`H11MessageParser` where ``MessageParser`` is, in this process: in
    ``aicn.node.httpwire`` and in every loaded ``aicn`` module that imported the name
    (the chat-proxy modules are imported first).  Returns the modules patched."""
    import importlib

    original = httpwire.MessageParser
    for name in ("aicn.node.chatproxy.wire", "aicn.node.chatproxy.requester", "aicn.node.chatproxy.worker",
                 "aicn.node.chatproxy.local"):
        importlib.import_module(name)
    patched = []
    for name, module in list(sys.modules.items()):
        if (name == "aicn" or name.startswith("aicn.")) and getattr(module, "MessageParser", None) is original:
            module.MessageParser = H11MessageParser
            patched.append(name)
    print(f"h11wire: MessageParser is h11 {h11.__version__} in {', '.join(sorted(patched))}",
          file=sys.stderr, flush=True)
    return patched


# -- the micro-benchmark ------------------------------------------------------------------


def chat_request() -> bytes:
    """A chat-proxy request as Go's Request.Write puts it on the tunnel, ~300 bytes of JSON."""
    body = json.dumps({"model": "fast", "stream": True, "messages": [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        {"role": "user", "content": "Hello! " + "What is the capital of France? " * 6}]}).encode()
    head = (b"POST /v1/chat/completions?model=fast&project=Bench HTTP/1.1\r\n"
            b"Host: chat-proxy\r\nUser-Agent: Go-http-client/1.1\r\n"
            b"Content-Length: %d\r\nContent-Type: application/json\r\nAccept-Encoding: gzip\r\n\r\n" % len(body))
    return head + body


def sse_response(events: int, size: int = 200) -> bytes:
    """A chunked SSE response of ``events`` events of ``size`` bytes (one chunk each), then [DONE]."""
    pad = max(0, size - 70)
    event = b'data: {"object":"chat.completion.chunk","choices":[{"delta":{"content":"' + b"x" * pad + b'"}}]}\n\n'
    chunk = httpwire.encode_chunk(event)
    head = httpwire.encode_response_head(200, b"OK", [(b"Content-Type", b"text/event-stream"),
                                                      (b"Transfer-Encoding", b"chunked")])
    return head + chunk * events + httpwire.encode_chunk(b"data: [DONE]\n\n") + httpwire.LAST_CHUNK


def bench_requests(parser_class, message: bytes, n: int) -> float:
    """Seconds to parse ``n`` requests, each fed in one piece to a new parser."""
    start = time.perf_counter()
    for _ in range(n):
        parser = parser_class("request")
        events = parser.feed(message)
        assert events[-1] is END
    return time.perf_counter() - start


def bench_stream(parser_class, message: bytes, piece: int) -> float:
    """Seconds to parse ``message`` (a response) fed in ``piece``-byte pieces."""
    pieces = [message[i:i + piece] for i in range(0, len(message), piece)]
    start = time.perf_counter()
    parser = parser_class("response")
    size = 0
    for data in pieces:
        for event in parser.feed(data):
            if type(event) is bytes:
                size += len(event)
    elapsed = time.perf_counter() - start
    assert parser.done and size == parser.body_size
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description="httpwire vs h11: parse time of chat requests and an SSE stream")
    ap.add_argument("--requests", type=int, default=10000, help="chat requests to parse")
    ap.add_argument("--events", type=int, default=100000, help="SSE events in the streamed response")
    ap.add_argument("--event-size", type=int, default=200, help="bytes per SSE event")
    ap.add_argument("--piece", type=int, default=16 * 1024, help="bytes per feed() of the response")
    ap.add_argument("--repeat", type=int, default=3, help="runs per parser (the best counts)")
    args = ap.parse_args()

    parsers = {"httpwire": httpwire.MessageParser, "h11": H11MessageParser}
    request = chat_request()
    response = sse_response(args.events, args.event_size)
    print(f"h11 {h11.__version__}, Python {sys.version.split()[0]}")
    json_size = len(request.split(b"\r\n\r\n", 1)[1])
    print(f"(a) {args.requests} chat requests of {len(request)} bytes ({json_size} bytes of JSON,"
          " Content-Length), one feed each")
    print(f"(b) chunked SSE response, {args.events} events of {args.event_size} bytes"
          f" ({len(response) / 1e6:.1f} MB), fed in {args.piece}-byte pieces")
    req, sse = {}, {}
    for _ in range(args.repeat):  # interleaved, so that a noisy neighbour hits both
        for name, cls in parsers.items():
            req[name] = min(req.get(name, float("inf")), bench_requests(cls, request, args.requests))
            sse[name] = min(sse.get(name, float("inf")), bench_stream(cls, response, args.piece))
    print(f"{'':12}{'µs/request':>12}{'SSE MB/s':>12}{'µs/event':>12}")
    for name in parsers:
        print(f"{name:12}{req[name] / args.requests * 1e6:12.1f}{len(response) / sse[name] / 1e6:12.1f}"
              f"{sse[name] / args.events * 1e6:12.2f}")
    print(f"{'h11/httpwire':12}{req['h11'] / req['httpwire']:12.2f}{sse['httpwire'] / sse['h11']:12.2f}"
          f"{sse['h11'] / sse['httpwire']:12.2f}   (time ratios; MB/s column: throughput ratio)")


if __name__ == "__main__":
    main()
