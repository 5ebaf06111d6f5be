"""In-process aicn networks and model servers for end-to-end model tests.

:func:`start_network` runs real :class:`aicn.service.NodeService` instances
(host, floodsub, DHT, application, HTTP API: everything ``twistd aicn``
wires) in this process, on loopback; :class:`ModelNetworkCase` gives a test
case the usual three of them (collector A; B and C joined through A).

Model servers are fixtures returning a :class:`ChatModelFixture`: the
in-test ones (:func:`start_fake_chat_model`) let a test hold the stream open;
:func:`start_llama_model` runs the real llama-cpp-python server with the tiny
model.  :func:`start_real_ipfs` and :func:`start_real_image_server` run the
real js-ipfs daemon and the image model server of :mod:`tests.support`.
Fixtures of real components skip the test when the component is missing.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import attrs
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.server import NOT_DONE_YET

from aicn.config import load_settings
from aicn.models.http import BodyPump, make_http_client
from aicn.node.chatproxy import CHAT_PROXY
from aicn.service import NodeService
from tests.integration.nodeproc import free_port
from tests.models.servers import serve
from tests.support.imageserver import ImageServer, start_image_server
from tests.support.ipfsd import IPFSDaemon, ipfs_skip_reason, start_ipfs
from tests.support.llama import ModelServer, ensure_tiny_model, llama_skip_reason, start_llama_server

#: The project of the chat tests, and a conversation.
P = "DecentralGPT"
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hello"}]


def chat(node_id, model, stream=False, project=P) -> dict:
    """A ``/api/v0/chat/completion`` body (``node_id`` None: for ``/proxy``)."""
    body = {"project": project, "model": model, "messages": MESSAGES, "stream": stream}
    if node_id is not None:
        body["node_id"] = node_id
    return body


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def eventually(check, timeout: float = 20.0, interval: float = 0.05):
    """Poll ``check()`` (sync or async) until it returns a true value; return it."""
    last = None
    for _ in range(int(timeout / interval)):
        last = check()
        if isinstance(last, Deferred) or hasattr(last, "__await__"):
            last = await last
        if last:
            return last
        await sleep(interval)
    raise AssertionError(f"condition not reached; last value {last!r}")


# -- model servers ------------------------------------------------------------------------


def sse_chunk(i: int) -> bytes:
    chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": f"w{i}"}}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


class FakeChatModel:
    """An OpenAI-like chat model: JSON for ``stream: false``; for ``stream: true``
    SSE chunk 0 at once, the others when :attr:`release` fires (or after
    ``delay`` seconds), then ``[DONE]``."""

    def __init__(self, *, chunks: int = 3, hold: bool = False, delay: float = 0.0, answer: str = "Hello!") -> None:
        self.chunks = chunks
        self.hold = hold
        self.delay = delay
        self.answer = answer
        #: Streams waiting for :meth:`release` (hold mode).
        self.waiting: list[Deferred] = []
        self.finished = 0
        self.bodies: list[dict] = []

    def release(self) -> None:
        """Let every held stream finish."""
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(None)

    def __call__(self, request):
        body = json.loads(request.content.read())
        self.bodies.append(body)
        if not body.get("stream"):
            request.setHeader(b"content-type", b"application/json")
            self.finished += 1
            return json.dumps({
                "code": 0, "message": "ok", "created": 1718691167, "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": self.answer},
                             "finish_reason": "stop"}],
                "usage": {"completion_tokens": 3, "prompt_tokens": 5, "total_tokens": 8},
            }).encode()
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.write(sse_chunk(0))

        def rest(_=None):
            if request._disconnected:
                return
            for i in range(1, self.chunks):
                request.write(sse_chunk(i))
            request.write(DONE)
            request.finish()
            self.finished += 1

        if self.hold:
            d = Deferred()
            d.addCallback(rest)
            self.waiting.append(d)
        elif self.delay:
            reactor.callLater(self.delay, rest)
        else:
            rest()
        return NOT_DONE_YET


class PacedSSEModel:
    """A chat model whose streamed answer is large and slow: ``events`` SSE
    events of ``event_size`` bytes each, one every ``interval`` seconds, then
    ``[DONE]``; ``stream: false`` gets a small JSON answer.  :attr:`sent` is
    the exact SSE body, for comparison."""

    def __init__(self, *, events: int = 40, event_size: int = 8 * 1024, interval: float = 0.1) -> None:
        self.events = events
        self.event_size = event_size
        self.interval = interval
        self.sent = bytearray()
        self.finished = 0

    def event(self, i: int) -> bytes:
        head = b'data: {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "'
        tail = b'"}}]}\n\n'
        filler = (b"%05d " % i) * self.event_size
        return head + filler[: self.event_size - len(head) - len(tail)] + tail

    def __call__(self, request):
        body = json.loads(request.content.read())
        if not body.get("stream"):
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({
                "created": 1718691167, "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "paced"},
                             "finish_reason": "stop"}],
                "usage": {"completion_tokens": 1, "prompt_tokens": 2, "total_tokens": 3},
            }).encode()
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")

        def send(i: int) -> None:
            if request._disconnected:
                return
            data = self.event(i) if i < self.events else DONE
            self.sent += data
            request.write(data)
            if i < self.events:
                reactor.callLater(self.interval, send, i + 1)
            else:
                request.finish()
                self.finished += 1

        send(0)
        return NOT_DONE_YET


@attrs.define
class ChatModelFixture:
    """A chat model server as the tests see it."""

    url: str
    model: str
    #: The in-test model object (None for a real server).
    fake: Optional[FakeChatModel] = None
    #: The recording resource of :func:`tests.models.servers.serve` (None for a real server).
    resource: object = None
    #: The real server's handle (None for an in-test one).
    server: Optional[ModelServer] = None


async def start_fake_chat_model(test, **kwargs) -> ChatModelFixture:
    fake = FakeChatModel(**kwargs)
    base, resource = await serve(test, fake)
    return ChatModelFixture(base + "/v1/chat/completions", "tiny", fake, resource)


_tiny_model_dir: list[str] = []


async def start_llama_model(test, **kwargs) -> ChatModelFixture:
    """The real llama-cpp-python server with the tiny model, stopped at cleanup;
    skips the test when llama-cpp-python is not installed.  ``kwargs`` go to
    :func:`~tests.support.llama.start_llama_server` (``n_ctx``, ...)."""
    reason = llama_skip_reason()
    if reason:
        raise SkipTest(reason)
    if not _tiny_model_dir:
        # Generated once per test run (about a second), shared by the tests.
        _tiny_model_dir.append(os.path.abspath("tiny-model"))
    path = ensure_tiny_model(_tiny_model_dir[0])
    server = await start_llama_server(reactor, path, **kwargs)
    test.addCleanup(lambda: Deferred.fromCoroutine(server.stop()))
    return ChatModelFixture(server.chat_url, server.model, server=server)


async def start_real_ipfs(test) -> IPFSDaemon:
    """A js-ipfs daemon (offline, loopback), stopped at cleanup; skips the test
    when js-ipfs is not installed."""
    reason = ipfs_skip_reason()
    if reason:
        raise SkipTest(reason)
    daemon = await start_ipfs(reactor, os.path.abspath(test.mktemp()))
    test.addCleanup(lambda: Deferred.fromCoroutine(daemon.stop()))
    return daemon


async def start_real_image_server(test) -> ImageServer:
    """The DBC-contract image model server writing PNGs into a fresh
    directory (``.out_dir``), stopped at cleanup."""
    server = await start_image_server(reactor, os.path.abspath(test.mktemp()))
    test.addCleanup(lambda: Deferred.fromCoroutine(server.stop()))
    return server


def dead_model_url() -> str:
    """A URL on which nothing listens."""
    return f"http://127.0.0.1:{free_port()}/v1/chat/completions"


# -- nodes ------------------------------------------------------------------------------------


class InProcessNode:
    """A NodeService in this process."""

    def __init__(self, service: NodeService) -> None:
        self.service = service
        #: The node's API token, sent by :meth:`call` (None: no token).
        self.token: Optional[str] = service.settings.api_token

    @property
    def peer_id(self) -> str:
        return str(self.service.host.peer_id)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.service.api_port.getHost().port}"

    @property
    def p2p_addr(self) -> str:
        return f"{self.service.host.listen_addrs()[0]}/p2p/{self.peer_id}"

    async def call(self, path: str, body=None, method: str = "POST"):
        """``(response, decoded JSON)``."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        resp = await treq.request(method, self.api + path, data=data, persistent=False, headers=headers)
        return resp, json.loads(await resp.content())

    async def register(self, project: str, model: str, api: str, kind: int = 0) -> None:
        _, body = await self.call("/api/v0/ai/project/register",
                                  {"project": project, "models": [{"model": model, "api": api, "type": kind}]})
        assert body == {"code": 0, "message": "ok"}, body

    async def stop(self) -> None:
        if self.service.running:
            await self.service.stopService()


async def start_node(test, *args, collector: bool = False, bootstrap: Optional[str] = None,
                     ipfs_api: Optional[str] = None, api_token: Optional[str] = None,
                     app_config: Optional[dict] = None, config: Optional[dict] = None) -> InProcessNode:
    """A node on loopback, stopped at cleanup; ``app_config`` adds ``App`` keys of the config file,
    ``config`` other sections (``{"API": {...}}``)."""
    data_dir = os.path.abspath(test.mktemp())
    os.makedirs(data_dir)
    config_path = os.path.join(data_dir, "config.json")
    app = {"PeersCollect": {"HeartbeatInterval": "1s"}, **(app_config or {})}
    if ipfs_api:
        app["IpfsStorageAPI"] = ipfs_api
    with open(config_path, "w") as f:
        json.dump({**(config or {}), "App": app}, f)
    options = {"config": config_path, "listen": ["/ip4/127.0.0.1/tcp/0"], "port": 0, "data_dir": data_dir,
               "log_level": "warn"}
    if collector:
        options.update(collector=True, dht_mode="server")
    if bootstrap:
        options["bootstrap"] = [bootstrap]
    if api_token:
        options["api_token"] = api_token
    service = NodeService(load_settings(options), reactor)
    node = InProcessNode(service)
    service.startService()
    test.addCleanup(node.stop)
    await service.ready
    return node


async def start_network(test, n: int = 3, **kwargs) -> list[InProcessNode]:
    """A collector (also the bootstrap node) and ``n - 1`` nodes joined to it;
    returns once every node sees the others on the topic."""
    first = await start_node(test, collector=True, **kwargs)
    nodes = [first]
    for _ in range(n - 1):
        nodes.append(await start_node(test, bootstrap=first.p2p_addr, **kwargs))

    async def joined():
        for node in nodes:
            _, peers = await node.call("/api/v0/pubsub/peers")
            if node is first and len(peers) < n - 1:
                return False
            if node is not first and first.peer_id not in peers:
                return False
        return True

    await eventually(joined)
    return nodes


async def wait_serving(nodes, project: str, model: str, node_ids) -> None:
    """Until every node heard a heartbeat listing ``node_ids`` for project/model."""
    wanted = set(node_ids)

    def heard():
        for node in nodes:
            have = {r.node_id for r in node.service.app.recent_heartbeats()
                    if any(p["project"] == project and model in p["models"] for p in r.projects)}
            if not (wanted - {node.peer_id}) <= have:
                return False
        return True

    await eventually(heard)


class ModelNetworkCase(TestCase):
    """A test case on a three-node network: :meth:`network` starts it."""

    timeout = 120

    async def network(self, **kwargs) -> list[InProcessNode]:
        """Start collector A and nodes B, C (``self.a``/``self.b``/``self.c``);
        ``kwargs`` go to :func:`start_node` (``ipfs_api``)."""
        self.nodes = await start_network(self, 3, **kwargs)
        self.a, self.b, self.c = self.nodes
        return self.nodes

    async def no_leaks(self) -> None:
        """Until no ``/chat-proxy/0.0.1`` stream is open on any node."""
        await eventually(lambda: not open_chat_streams(self.nodes), timeout=5)


# -- streaming client ---------------------------------------------------------------------------


class StreamingClient:
    """A POST whose response body is collected chunk by chunk, with arrival times."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.times: list[float] = []
        self.ended: Deferred = Deferred()
        self.pump = BodyPump(self._data, lambda reason: self.ended.callback(reason.value))

    def _data(self, data: bytes) -> None:
        self.chunks.append(data)
        self.times.append(reactor.seconds())

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def header(self, name: bytes) -> Optional[str]:
        values = self.response.headers.getRawHeaders(name)
        return values[0].decode() if values else None

    async def post(self, url: str, body: dict, headers: Optional[dict] = None):
        client = make_http_client(reactor)
        self.response = await client.post(url, data=json.dumps(body).encode(),
                                          headers={b"Content-Type": [b"application/json"], **(headers or {})},
                                          unbuffered=True)
        self.response.deliverBody(self.pump)
        return self.response


def open_chat_streams(nodes) -> list:
    """The ``/chat-proxy/0.0.1`` streams still open on any node (pubsub and
    DHT streams are long-lived by design and not counted)."""
    return [s for node in nodes for conn in node.service.host.connections()
            for s in list(conn.session.streams.values()) if getattr(s, "protocol", None) == CHAT_PROXY]
