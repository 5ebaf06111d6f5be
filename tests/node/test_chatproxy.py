"""/chat-proxy/0.0.1 end to end: two real hosts on loopback, an in-test SSE
model server, a twisted.web front end and a streaming HTTP client."""

import base64
import json
import os

from twisted.internet import protocol, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from aicn.config import AIModel, AIProject
from aicn.errors import AICNError
from aicn.models.http import BodyPump, body_ended_cleanly, make_http_client
from aicn.api.streaming import ClientWatch, send_stream
from aicn.models.errors import ModelError
from aicn.node.chatproxy import (
    CHAT_PROXY,
    chat_proxy_handler,
    local_chat_stream,
    proxy_chat_stream,
    proxy_edit_stream,
    proxy_image_stream,
)
from aicn.node.chatproxy.wire import error_from_reply
from aicn.node.openairoute import parse_completion
from aicn.node.modelstream import Outcome
from aicn.node.modelwork import ModelWorker
from aicn.p2p.host import Host
from aicn.p2p import swarm as swarm_module
from aicn.p2p.keys import PrivateKey
from aicn.p2p.maddr import parse
from tests.util import wait_for

from ..models.servers import json_reply, serve

BODY = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()


def sse(i):
    return b'data: {"object":"chat.completion.chunk","choices":[{"delta":{"content":"w%d"}}]}\n\n' % i


class SSEModel:
    """Writes one chunk at once, the rest (and [DONE]) after ``release`` fires."""

    def __init__(self, rest=3):
        self.release = Deferred()
        self.rest = rest
        self.finished = False

    def __call__(self, request):
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.write(sse(0))

        def more(_):
            if request._disconnected:
                return
            for i in range(1, self.rest + 1):
                request.write(sse(i))
            request.write(b"data: [DONE]\n\n")
            request.finish()
            self.finished = True

        self.release.addCallback(more)
        return NOT_DONE_YET


class StreamingClient:
    """A treq request whose body is collected chunk by chunk."""

    def __init__(self):
        self.chunks = []
        self.ended = Deferred()
        self.pump = BodyPump(self.chunks.append, lambda reason: self.ended.callback(reason.value))

    @property
    def data(self):
        return b"".join(self.chunks)

    async def post(self, url, body):
        client = make_http_client(reactor)
        self.response = await client.post(url, data=body, headers={b"Content-Type": [b"application/json"]},
                                          unbuffered=True)
        self.response.deliverBody(self.pump)
        return self.response


class SilentFactory(protocol.Factory):
    """Accepts TCP connections and never says a word."""

    def __init__(self):
        self.accepted = []

    def buildProtocol(self, addr):
        self.accepted.append(protocol.Protocol())
        return self.accepted[-1]


class FrontEnd(Resource):
    """The requester's HTTP API stand-in: relays through proxy_chat_stream
    (or local_chat_stream) and records how each relay ended."""

    isLeaf = True

    def __init__(self, host, peer, addrs, local_url=None):
        super().__init__()
        self.host, self.peer, self.addrs, self.local_url = host, peer, addrs, local_url
        self.results = []
        self.done = Deferred()
        #: The clock and limit of the wait for the response head (None: the defaults).
        self.clock = None
        self.head_timeout = None

    def render_POST(self, request):
        Deferred.fromCoroutine(self.handle(request))
        return NOT_DONE_YET

    async def handle(self, request):
        body = request.content.read()
        client = ClientWatch(request)
        try:
            if self.local_url:
                stream = await local_chat_stream(self.local_url, body, reactor=reactor)
            else:
                limits = {} if self.head_timeout is None else {"head_timeout": self.head_timeout}
                stream = await proxy_chat_stream(self.host, self.peer, "P", "M", body,
                                                 request.getHeader(b"host"), addrs=self.addrs,
                                                 reactor=self.clock, **limits)
            send_stream(request, stream, client)
            ok = await stream.when_done() is Outcome.COMPLETE
        except AICNError as exc:
            request.setHeader(b"content-type", b"application/json")
            request.write(json.dumps(exc.to_json()).encode())
            request.finish()
            ok = exc
        self.results.append(ok)
        self.done.callback(ok)


async def read_to_end(stream) -> bytes:
    """Every byte a raw libp2p stream delivers until the peer's FIN."""
    answer = b""
    while data := await stream.read():
        answer += data
    return answer


class TwoHosts(TestCase):
    """A worker and a requester host on loopback, a model server, a front end (no tests)."""

    async def make_host(self):
        host = Host(reactor, PrivateKey.generate(), ping_interval=None)
        await host.start(["/ip4/127.0.0.1/tcp/0"])
        self.addCleanup(lambda: Deferred.fromCoroutine(host.stop()))
        self.hosts.append(host)
        return host

    async def setup(self, model_handler, models=None, **handler_args):
        self.hosts = []
        self.model_url, self.model = await serve(self, model_handler)
        self.worker = await self.make_host()
        self.requester = await self.make_host()
        models = models if models is not None else {("P", "M"): self.model_url + "/v1/chat/completions"}
        self.lookups = []

        def lookup(project, model, cid, kind):
            self.lookups.append((project, model, cid, kind))
            return models.get((project, model))

        self.worker.set_stream_handler(CHAT_PROXY, chat_proxy_handler(lookup, reactor=reactor, **handler_args))
        self.front = FrontEnd(self.requester, self.worker.peer_id, self.worker.listen_addrs())
        self.front_url, _ = await serve(self, lambda r: self.front.render(r))

    def assert_no_streams(self):
        for host in self.hosts:
            for conn in host.connections():
                self.assertEqual(dict(conn.session.streams), {}, f"streams left on {host.peer_id}")

    async def no_stream_leaks(self):
        def empty():
            return all(not conn.session.streams for host in self.hosts for conn in host.connections())

        await wait_for(empty)
        self.assert_no_streams()


class ChatProxyTests(TwoHosts):
    async def test_chunks_arrive_before_the_model_finishes(self):
        model = SSEModel()
        await self.setup(model)
        client = StreamingClient()
        response = await client.post(self.front_url + "/api/v0/chat/completion", BODY)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/event-stream; charset=utf-8"])
        await wait_for(lambda: sse(0) in client.data)
        self.assertFalse(model.finished)  # first chunk relayed while the model is still generating
        model.release.callback(None)
        reason = await client.ended
        self.assertTrue(body_ended_cleanly(reason))
        self.assertEqual(client.data, sse(0) + sse(1) + sse(2) + sse(3) + b"data: [DONE]\n\n")
        self.assertEqual(await self.front.done, True)
        # The worker forwarded the body as it came, to the registered API.
        method, uri, headers, sent = self.model.requests[0]
        self.assertEqual((method, uri, sent), (b"POST", b"/v1/chat/completions", BODY))
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(self.lookups, [("P", "M", "", 0)])
        await self.no_stream_leaks()

    async def test_worker_dies_mid_stream(self):
        model = SSEModel()
        await self.setup(model)
        client = StreamingClient()
        await client.post(self.front_url + "/", BODY)
        await wait_for(lambda: sse(0) in client.data)
        started = reactor.seconds()
        await self.worker.stop()
        reason = await client.ended
        self.assertLess(reactor.seconds() - started, 5)
        self.assertFalse(body_ended_cleanly(reason))  # the client knows it is incomplete
        self.assertEqual(await self.front.done, False)
        await self.model.dropped  # and the dead worker's model request went too
        await self.no_stream_leaks()

    async def test_client_disconnect_cancels_the_model_request(self):
        model = SSEModel()
        await self.setup(model)
        client = StreamingClient()
        await client.post(self.front_url + "/", BODY)
        await wait_for(lambda: sse(0) in client.data)
        client.pump.abort()
        await self.model.dropped  # the model server saw its connection drop
        self.assertEqual(await self.front.done, False)
        self.assertFalse(model.finished)
        await self.no_stream_leaks()

    async def test_unknown_model_resets_the_stream(self):
        await self.setup(SSEModel(), models={})
        client = StreamingClient()
        await client.post(self.front_url + "/", BODY)
        await client.ended
        self.assertEqual(json.loads(client.data), {"code": 1017, "message": "Read chat stream failed"})
        self.assertEqual(self.model.requests, [])
        await self.no_stream_leaks()

    async def test_unreachable_model_is_a_502_with_1006(self):
        await self.setup(SSEModel(), models={("P", "M"): "http://127.0.0.1:1/v1/chat/completions"})
        client = StreamingClient()
        response = await client.post(self.front_url + "/", BODY)
        await client.ended
        self.assertEqual(response.code, 502)
        body = json.loads(client.data)
        self.assertEqual(body["code"], 1006)
        self.assertTrue(body["message"].startswith("Post HTTP request error"))
        await self.no_stream_leaks()

    async def test_head_timeout_is_1004_and_never_cuts_a_flowing_stream(self):
        flowing = SSEModel()

        def model(request):
            # The first call never gets an answer; the second streams.
            return NOT_DONE_YET if len(self.model.requests) == 1 else flowing(request)

        await self.setup(model)
        self.front.clock, self.front.head_timeout = Clock(), 30
        client = StreamingClient()
        posted = Deferred.fromCoroutine(client.post(self.front_url + "/", BODY))
        await wait_for(lambda: self.model.requests)  # the worker called the model
        self.front.clock.advance(29.9)
        self.assertFalse(self.front.done.called)
        self.front.clock.advance(0.1)
        await posted
        await client.ended
        self.assertEqual(json.loads(client.data), {
            "code": 1004, "message": f"Processing timeout: no answer from node {self.worker.peer_id} within 30 s"})
        await self.model.dropped  # the reset stream made the worker give up the model request
        await self.no_stream_leaks()

        # Once the head is in, the limit is off: the stream flows as long as it takes.
        self.front.done = Deferred()
        client = StreamingClient()
        await client.post(self.front_url + "/", BODY)
        await wait_for(lambda: sse(0) in client.data)
        self.front.clock.advance(3600)
        flowing.release.callback(None)
        self.assertTrue(body_ended_cleanly(await client.ended))
        self.assertEqual(client.data, sse(0) + sse(1) + sse(2) + sse(3) + b"data: [DONE]\n\n")
        self.assertEqual(self.front.clock.getDelayedCalls(), [])  # the head timeout was cancelled
        await self.no_stream_leaks()

    async def test_head_timeout_covers_the_dial(self):
        await self.setup(SSEModel())
        # An address where TCP connects but the libp2p handshake never gets an answer.
        silent = SilentFactory()
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(silent)
        self.addCleanup(port.stopListening)
        self.front.addrs = [parse(f"/ip4/127.0.0.1/tcp/{port.getHost().port}")]
        self.front.clock, self.front.head_timeout = Clock(), 5
        client = StreamingClient()
        posted = Deferred.fromCoroutine(client.post(self.front_url + "/", BODY))
        await wait_for(lambda: silent.accepted)
        self.front.clock.advance(4.9)
        self.assertFalse(self.front.done.called)  # the handshake hangs
        self.front.clock.advance(0.1)
        await posted
        await client.ended
        self.assertEqual(json.loads(client.data), {
            "code": 1004, "message": f"Processing timeout: no answer from node {self.worker.peer_id} within 5 s"})
        # (The abandoned handshake ends with its own timeout; end it now.)
        silent.accepted[0].transport.abortConnection()
        await deferLater(reactor, 0.05, lambda: None)

    async def test_open_stream_failure(self):
        await self.setup(SSEModel())
        self.worker.remove_stream_handler(CHAT_PROXY)
        client = StreamingClient()
        await client.post(self.front_url + "/", BODY)
        await client.ended
        self.assertEqual(json.loads(client.data), {"code": 1017, "message": "Open stream with peer node failed"})

    async def identified(self):
        """Connect and wait until the requester knows the worker serves the tunnel;
        record the streams opened lazily from then on."""
        await self.requester.connect(self.worker.peer_id, self.worker.listen_addrs())
        await wait_for(lambda: self.requester.peerstore.supports(self.worker.peer_id, CHAT_PROXY))
        lazy = []
        real = swarm_module.select_lazily

        async def spy(stream, protocol):
            lazy.append(protocol)
            await real(stream, protocol)

        self.patch(swarm_module, "select_lazily", spy)
        return lazy

    async def test_lazy_stream_once_identified(self):
        """With the worker identified, the request rides behind the proposal."""
        model = SSEModel(rest=0)
        await self.setup(model)
        lazy = await self.identified()
        model.release.callback(None)
        client = StreamingClient()
        response = await client.post(self.front_url + "/", BODY)
        self.assertTrue(body_ended_cleanly(await client.ended))
        self.assertEqual(response.code, 200)
        self.assertEqual(client.data, sse(0) + b"data: [DONE]\n\n")
        self.assertEqual(lazy, [CHAT_PROXY])
        self.assertEqual(self.model.requests[0][3], BODY)
        await self.no_stream_leaks()

    async def test_lazy_stream_refused(self):
        """Identify was wrong (the handler went away): 1017 "Open stream with
        peer node failed" as with a full negotiation; the connection stays."""
        await self.setup(SSEModel())
        lazy = await self.identified()
        conn = self.requester.connections(self.worker.peer_id)
        self.worker.remove_stream_handler(CHAT_PROXY)
        await wait_for(lambda: not self.requester.peerstore.supports(self.worker.peer_id, CHAT_PROXY))
        self.requester.peerstore.set_protocols(self.worker.peer_id, [CHAT_PROXY])  # stale knowledge
        client = StreamingClient()
        await client.post(self.front_url + "/", BODY)
        await client.ended
        self.assertEqual(json.loads(client.data), {"code": 1017, "message": "Open stream with peer node failed"})
        self.assertEqual(lazy, [CHAT_PROXY])
        self.assertEqual(self.requester.connections(self.worker.peer_id), conn)
        await self.no_stream_leaks()

    async def test_json_reply_passes_through(self):
        reply = b'{"code": 0, "message": "ok", "choices": []}'

        def handler(request):
            request.setHeader(b"content-type", b"application/json")
            return reply

        await self.setup(handler)
        client = StreamingClient()
        response = await client.post(self.front_url + "/", BODY)
        await client.ended
        self.assertEqual((response.code, client.data), (200, reply))
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        await self.no_stream_leaks()

    async def test_large_body_with_backpressure(self):
        """8 MiB through a yamux window of 256 KiB with a client that pauses:
        nothing is lost, order kept."""
        blob = bytes(range(256)) * 4096  # 1 MiB

        def handler(request):
            request.setHeader(b"content-type", b"application/octet-stream")
            for _ in range(8):
                request.write(blob)
            request.finish()
            return NOT_DONE_YET

        await self.setup(handler)
        client = StreamingClient()
        await client.post(self.front_url + "/", BODY)
        await wait_for(lambda: client.chunks)
        client.pump.pauseProducing()
        await deferLater(reactor, 0.3, lambda: None)
        # While the client is paused, the relay must not have buffered the whole reply.
        self.assertLess(len(client.data), 8 * len(blob))
        client.pump.resumeProducing()
        reason = await client.ended
        self.assertTrue(body_ended_cleanly(reason))
        self.assertEqual(client.data, blob * 8)
        await self.no_stream_leaks()

    async def test_garbage_request_resets(self):
        await self.setup(SSEModel())
        stream = await self.requester.new_stream(self.worker.peer_id, [CHAT_PROXY], self.worker.listen_addrs())
        await stream.write(b"GARBAGE\r\n\r\n")
        with self.assertRaises(Exception):
            while await stream.read():
                pass
        await self.no_stream_leaks()


class Lease:
    """A lookup's lease that counts its releases."""

    def __init__(self, api):
        self.api = api
        self.released = 0

    def release(self):
        self.released += 1


class TunnelKindTests(TwoHosts):
    """Go v0.2.3's other tunnel requests (image edit, b64 image) and the body limit of each kind."""

    FORM_TYPE = b"multipart/form-data; boundary=xyz"

    def form(self, size):
        return b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n' \
            + b"\x89" * size + b"\r\n--xyz--\r\n"

    async def setup_edit(self, **handler_args):
        reply = b'{"created": 1, "data": [{"b64_json": "aGk="}]}'
        self.lease = Lease(None)

        def handler(request):
            return json_reply(request, reply, status=201)

        await self.setup(handler, models={}, **handler_args)
        self.lease.api = self.model_url + "/v1/images/edits?token=t"

        def lookup(project, model, cid, kind):
            self.lookups.append((project, model, cid, kind))
            return self.lease

        self.worker.set_stream_handler(CHAT_PROXY, chat_proxy_handler(lookup, reactor=reactor, **handler_args))
        return reply

    async def edit(self, body, **kwargs):
        return await proxy_edit_stream(self.requester, self.worker.peer_id, "P", "edit", self.FORM_TYPE, body,
                                       addrs=self.worker.listen_addrs(), reactor=reactor, **kwargs)

    async def read_all(self, stream):
        return b"".join([chunk async for chunk in stream.iter_body()])

    async def test_image_edit_reaches_the_model_as_go_sends_it(self):
        reply = await self.setup_edit()
        body = self.form(2 * 1024 * 1024)  # over the chat limit, within the edit limit (32 MiB)
        stream = await self.edit(body, cid="c7")
        self.assertEqual(stream.status, 201)
        self.assertEqual(await self.read_all(stream), reply)
        # Looked up as an image edit (type 2), with its cid; the lease ended with the call.
        self.assertEqual(self.lookups, [("P", "edit", "c7", 2)])
        self.assertEqual(self.lease.released, 1)
        # The model got the form as it was sent, and the API's own query parameters.
        [(method, uri, headers, sent)] = self.model.requests
        self.assertEqual((method, uri), (b"POST", b"/v1/images/edits?token=t"))
        self.assertEqual(headers.getRawHeaders(b"content-type"), [self.FORM_TYPE])
        self.assertEqual(sent, body)
        await self.no_stream_leaks()

    async def test_other_query_parameters_are_forwarded(self):
        await self.setup_edit()
        stream = await self.requester.new_stream(self.worker.peer_id, [CHAT_PROXY], self.worker.listen_addrs())
        body = self.form(10)
        await stream.write(b"POST /api/v0/image/edit?cid=&model=edit&project=P&size=512x512 HTTP/1.1\r\n"
                           b"Host: 127.0.0.1:8080\r\nContent-Type: " + self.FORM_TYPE +
                           b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await stream.close_write()
        while await stream.read():
            pass
        [(_, uri, _, sent)] = self.model.requests
        self.assertEqual((uri, sent), (b"/v1/images/edits?token=t&size=512x512", body))
        self.assertEqual(self.lookups, [("P", "edit", "", 2)])

    async def test_edit_over_its_limit_is_413_with_the_limit(self):
        await self.setup_edit(edit_max_body=256 * 1024)
        stream = await self.edit(self.form(300 * 1024))
        self.assertEqual(stream.status, 413)
        error = await stream.error()
        self.assertEqual(error.code, 1001)
        self.assertIn("exceeds this node's limit of 262144 (API.ImageEditMaxBodyBytes)", error.message)
        self.assertEqual(self.model.requests, [])  # never forwarded
        self.assertEqual(self.lease.released, 1)
        await self.no_stream_leaks()

    async def test_chat_keeps_its_1_mib_limit(self):
        await self.setup_edit()
        big = json.dumps({"model": "M", "messages": [{"role": "user", "content": "x" * (1024 * 1024)}]}).encode()
        stream = await proxy_chat_stream(self.requester, self.worker.peer_id, "P", "M", big,
                                         addrs=self.worker.listen_addrs(), reactor=reactor)
        self.assertEqual(stream.status, 413)
        error = await stream.error()
        self.assertEqual(error.code, 1001)
        self.assertIn("exceeds this node's limit of 1048576", error.message)
        self.assertEqual((self.model.requests, self.lookups), ([], [("P", "M", "", 0)]))
        await self.no_stream_leaks()

    async def test_chunked_body_over_the_limit_is_refused_too(self):
        await self.setup_edit(edit_max_body=64 * 1024)
        stream = await self.requester.new_stream(self.worker.peer_id, [CHAT_PROXY], self.worker.listen_addrs())
        await stream.write(b"POST /api/v0/image/edit?model=edit&project=P HTTP/1.1\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            await stream.write(b"8000\r\n" + b"a" * 0x8000 + b"\r\n")
        await stream.write(b"0\r\n\r\n")
        await stream.close_write()
        answer = await read_to_end(stream)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:80])
        self.assertIn(b"exceeds this node's limit of 65536", answer)
        self.assertEqual(self.model.requests, [])
        await self.no_stream_leaks()

    async def test_b64_image_request_asks_for_an_image_model(self):
        await self.setup_edit()
        stream = await self.requester.new_stream(self.worker.peer_id, [CHAT_PROXY], self.worker.listen_addrs())
        body = b'{"model": "sd", "prompt": "a cat", "response_format": "b64_json"}'
        await stream.write(b"POST /api/v0/image/gen?cid=&model=sd&project=P HTTP/1.1\r\n"
                           b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await stream.close_write()
        while await stream.read():
            pass
        self.assertEqual(self.lookups, [("P", "sd", "", 1)])
        [(_, _, _, sent)] = self.model.requests
        self.assertEqual(sent, body)


class TunnelImageTests(TwoHosts):
    """A b64 image generation answered by the worker's ``image_answer`` hook (the node's)."""

    BODY = b'{"model": "sd", "prompt": "a cat", "n": 1, "response_format": "b64_json"}'

    async def setup_hook(self, answer):
        self.calls = []
        self.lease = Lease(None)
        await self.setup(lambda request: json_reply(request, b"{}"), models={})
        self.lease.api = self.model_url + "/v1/images/generations"

        def lookup(project, model, cid, kind):
            self.lookups.append((project, model, cid, kind))
            return self.lease

        def hook(api_url, head, body):
            self.calls.append((api_url, head.query_value("project"), head.query_value("cid"), body))
            return answer()

        self.worker.set_stream_handler(CHAT_PROXY, chat_proxy_handler(lookup, reactor=reactor, image_answer=hook))

    async def read_all(self, stream):
        return b"".join([chunk async for chunk in stream.iter_body()])

    async def image(self):
        return await proxy_image_stream(self.requester, self.worker.peer_id, "P", "sd", self.BODY, cid="c1",
                                        addrs=self.worker.listen_addrs(), reactor=reactor)

    async def test_the_hook_answers_instead_of_the_model(self):
        reply = b'{"code": 0, "message": "ok", "created": 5, "data": [{"b64_json": "aGk="}]}'

        async def answer():
            return reply

        await self.setup_hook(answer)
        stream = await self.image()
        self.assertEqual(stream.status, 200)
        self.assertIn((b"Content-Type", b"application/json"), stream.headers)
        self.assertEqual(await self.read_all(stream), reply)
        self.assertEqual(self.calls, [(self.lease.api, "P", "c1", self.BODY)])
        self.assertEqual(self.lookups, [("P", "sd", "c1", 1)])
        self.assertEqual((self.model.requests, self.lease.released), ([], 1))
        await self.no_stream_leaks()

    async def test_a_model_error_is_502_with_its_code(self):
        async def answer():
            raise ModelError("Post HTTP request error, 500")

        await self.setup_hook(answer)
        stream = await self.image()
        self.assertEqual(stream.status, 502)
        error = await stream.error()
        self.assertEqual((error.code, error.message), (1006, "Post HTTP request error, 500"))
        self.assertEqual(self.lease.released, 1)
        await self.no_stream_leaks()

    async def test_a_requester_that_leaves_cancels_the_hook(self):
        cancelled = []
        pending = Deferred(lambda d: cancelled.append(True))
        await self.setup_hook(lambda: pending)
        stream = await self.requester.new_stream(self.worker.peer_id, [CHAT_PROXY], self.worker.listen_addrs())
        await stream.write(b"POST /api/v0/image/gen?model=sd&project=P HTTP/1.1\r\n"
                           b"Content-Length: %d\r\n\r\n" % len(self.BODY) + self.BODY)
        await stream.close_write()
        await wait_for(lambda: self.calls)
        stream.reset()
        await wait_for(lambda: cancelled)
        self.assertEqual(self.lease.released, 1)
        await self.no_stream_leaks()


class GoRequesterImageTests(TwoHosts):
    """A Go v0.2.3 requester's b64 image generation, byte for byte, at our node's worker."""

    async def test_a_file_path_comes_back_inline_as_go_reads_it(self):
        image = b"\x89PNG a cat"
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(image)

        def model(request):  # the spec's contract: a file path on the worker's machine
            return json_reply(request, json.dumps({"code": 0, "message": "ok", "data": [{"url": path}]}).encode())

        await self.setup(model, models={})
        projects = [AIProject("P", (AIModel("sd", self.model_url + "/v1/images/generations", type=1),))]
        worker = ModelWorker(reactor, lambda: projects, node_id=str(self.worker.peer_id))
        self.worker.set_stream_handler(CHAT_PROXY, worker.chat_proxy_handler())
        # Go's http.Request.Write of handleImageGenRequest's request (json.Marshal of ImageGenModelRequest).
        body = (b'{"model":"sd","prompt":"a cat","n":1,"size":"","width":0,"height":0,'
                b'"response_format":"b64_json","wallet":"","signature":"","hash":""}')
        stream = await self.requester.new_stream(self.worker.peer_id, [CHAT_PROXY], self.worker.listen_addrs())
        await stream.write(b"POST /api/v0/image/gen?cid=&model=sd&project=P HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
                           b"User-Agent: Go-http-client/1.1\r\nContent-Length: %d\r\n"
                           b"Content-Type: application/json\r\n\r\n" % len(body) + body)
        await stream.close_write()
        answer = await read_to_end(stream)
        head, _, content = answer.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK\r\n"), head)
        self.assertIn(b"Content-Length: %d" % len(content), head)
        reply = json.loads(content)  # Go: json.Unmarshal into types.ImageGenerationResponse
        self.assertEqual((reply["code"], reply["message"]), (0, "ok"))
        self.assertGreater(reply["created"], 0)
        self.assertEqual(reply["data"], [{"b64_json": base64.b64encode(image).decode()}])
        # The model got the v0.2.3 fields that were set, and the call is no longer in flight.
        [(_, _, _, sent)] = self.model.requests
        self.assertEqual(json.loads(sent)["response_format"], "b64_json")
        self.assertEqual(worker.in_flight("P", "sd"), 0)
        await self.no_stream_leaks()

    async def test_bad_json_is_400_with_1001(self):
        await self.setup(lambda request: json_reply(request, b"{}"), models={})
        projects = [AIProject("P", (AIModel("sd", self.model_url, type=1),))]
        worker = ModelWorker(reactor, lambda: projects, node_id=str(self.worker.peer_id))
        self.worker.set_stream_handler(CHAT_PROXY, worker.chat_proxy_handler())
        stream = await proxy_image_stream(self.requester, self.worker.peer_id, "P", "sd", b'{"prompt": 7}',
                                          addrs=self.worker.listen_addrs(), reactor=reactor)
        self.assertEqual(stream.status, 400)
        error = await stream.error()
        self.assertEqual((error.code, error.message), (1001, "bad image request: prompt must be a string"))
        self.assertEqual(self.model.requests, [])
        await self.no_stream_leaks()


class LocalChatStreamTests(TestCase):
    async def setup(self, model):
        self.model_url, self.model = await serve(self, model)
        self.front = FrontEnd(None, None, None, local_url=self.model_url + "/v1/chat/completions")
        self.front_url, _ = await serve(self, lambda r: self.front.render(r))

    async def test_relays_and_finishes(self):
        model = SSEModel(rest=1)
        await self.setup(model)
        client = StreamingClient()
        await client.post(self.front_url, BODY)
        await wait_for(lambda: sse(0) in client.data)
        self.assertFalse(model.finished)
        model.release.callback(None)
        self.assertTrue(body_ended_cleanly(await client.ended))
        self.assertEqual(client.data, sse(0) + sse(1) + b"data: [DONE]\n\n")
        self.assertEqual(self.model.requests[0][3], BODY)
        self.assertEqual(await self.front.done, True)

    async def test_client_disconnect_cancels(self):
        model = SSEModel()
        await self.setup(model)
        client = StreamingClient()
        await client.post(self.front_url, BODY)
        await wait_for(lambda: sse(0) in client.data)
        client.pump.abort()
        await self.model.dropped
        self.assertEqual(await self.front.done, False)

    async def test_unreachable_model(self):
        self.front = FrontEnd(None, None, None, local_url="http://127.0.0.1:1/")
        url, _ = await serve(self, lambda r: self.front.render(r))
        client = StreamingClient()
        await client.post(url, BODY)
        await client.ended
        self.assertEqual(json.loads(client.data)["code"], 1006)


class WorkerReplyTests(SynchronousTestCase):
    """Reading a worker's (or its model's) answer: any bytes give an AICNError, never an exception."""

    def test_deep_or_surrogate_json(self):
        # Found by the fuzz harness: json.loads raised RecursionError for deeply nested bodies.
        for body in (b"[" * 100000, b'{"a":' * 50000):
            for status in (400, 502):
                self.assertIsInstance(error_from_reply(status, body), AICNError)
            with self.assertRaises(ModelError):
                parse_completion(body)
        error = error_from_reply(502, b'{"code": 1006, "message": "down \\ud800"}')
        self.assertEqual((error.code, error.message), (1006, "down \ufffd"))
        for raw in (b"Infinity", b"NaN"):  # int(code) raised OverflowError / ValueError
            with self.assertRaises(ModelError):
                parse_completion(b'{"code": %s, "choices": []}' % raw)
        reply = parse_completion(b'{"choices": [{"message": {"content": "\\udc00"}}]}')
        self.assertEqual(reply["choices"][0]["message"]["content"], "\ufffd")
