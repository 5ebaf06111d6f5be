"""The requester side of model calls: the chat and image endpoints of the HTTP API.

* ``/api/v0/chat/completion``: to our own node, the registered model is
  called directly; to another node, a non-streamed request travels as an
  encrypted CHAT_COMPLETION message over pubsub and a streamed one over a
  ``/chat-proxy/0.0.1`` stream (dialled through the DHT when we are not
  connected).
* ``/api/v0/image/gen``: IMAGE_GENERATION over pubsub (not to ourselves, as
  the Go node); with ``response_format: b64_json`` to a node of v0.2.3's
  schema, through the tunnel instead (``POST /api/v0/image/gen``, Go
  v0.2.3's way: images inline would pass pubsub's 1 MiB limit).
* ``/api/v0/chat/completion/proxy`` and ``/api/v0/image/gen/proxy``: the
  node is chosen here (:class:`~aicn.node.routing.NodeSelector`) among
  those whose heartbeat of the last 10 minutes lists the project and model,
  and ourselves if we serve it; candidates are tried one after another, up
  to three; a stream fails over only before its first byte.  The response
  names the node that answered in an ``X-AICN-Node`` header; when no node
  works the answer is 1016, with ``data`` listing each attempt.

A request's ``timeout`` (``params["timeout"]``, seconds, or None for the
defaults) bounds the wait for the node's answer; for a stream, the wait for
its response head (the model's first byte), never a stream that is flowing.
On ``/proxy`` it bounds the whole request, all attempts together.

A streamed chat returns a :class:`~aicn.node.modelstream.ModelStream` once
the model's response head is known; the API delivers its body to the client
(and aborts it if the client leaves).  An error before the first byte is
raised as an :class:`~aicn.errors.AICNError` (1017 for the tunnel, 1006 for
the model) and rendered as the JSON envelope.  ``/proxy`` results name the
node that answered (:class:`~aicn.node.modelstream.Answer`,
:attr:`ModelStream.node_id`); nothing here touches an HTTP request.

Every request is counted and timed in :attr:`ModelBackend.model_stats`
(:mod:`aicn.node.modelstats`).
"""

from __future__ import annotations

import json
from typing import Optional

from twisted.internet.defer import Deferred

from aicn.errors import AICNError, ErrorCode, parameter_error
from aicn.log import Logger
from aicn.models.chat import CHAT_TIMEOUT, ChatRequest, ChatResult, chat_request_body
from aicn.models.http import Timeout, with_timeout
from aicn.models.image import IMAGE_TIMEOUT, ImageRequest, ImageResult, parse_image_items
from aicn.wire import protocol_pb2 as pb
from aicn.wire.versions import V023
from aicn.node.application import PEER_FRESH_AGE
from aicn.node.chatproxy import local_chat_stream, proxy_chat_stream, proxy_image_stream
from aicn.node.modelstats import ModelRequestStats
from aicn.node.modelstream import Answer, ModelStream, Outcome
from aicn.node.modelwork import ModelWorker
from aicn.node.routing import Candidate, NodeSelector
from aicn.p2p.peerid import InvalidPeerID, PeerID

__all__ = ["ModelBackend"]

log = Logger()

#: Most bytes of a tunnelled image answer (its images inline as base64).
MAX_TUNNEL_IMAGE_REPLY = 128 * 1024 * 1024


class ModelBackend:
    """The model endpoints of :class:`~aicn.node.backend.NodeBackend`.

    Needs ``self.reactor``, ``self.host``, ``self.app``, ``self.worker`` (a
    :class:`~aicn.node.modelwork.ModelWorker`), ``self.selector`` (a
    :class:`~aicn.node.routing.NodeSelector`) and ``self.model_stats`` (a
    :class:`~aicn.node.modelstats.ModelRequestStats`).
    """

    reactor: object
    host: object
    app: object
    worker: ModelWorker
    selector: NodeSelector
    model_stats: ModelRequestStats

    async def _measured(self, kind: str, route: str, node: Optional[str], request):
        """Await ``request`` (a coroutine), counting and timing it in :attr:`model_stats`.

        ``node``: the node a direct request goes to (a ``/proxy`` result names its own).
        """
        timer = self.model_stats.start(kind, route)
        try:
            result = await request
        except BaseException as exc:
            timer.failed(exc, node)
            raise
        if isinstance(result, ModelStream):
            timer.streaming(result, result.node_id or node)
        elif isinstance(result, Answer):
            timer.answered(result.node_id)
        else:
            timer.answered(node)
        return result

    def _direct_node(self, params: dict) -> str:
        """The node label of a direct request: its ``node_id`` when that is a peer id, else ``""``."""
        node_id = params.get("node_id") or ""
        try:
            PeerID.from_string(node_id)
        except InvalidPeerID:
            return ""
        return node_id

    # -- direct requests ----------------------------------------------------------------

    async def chat_completion(self, params: dict):
        """Data, or a :class:`ModelStream` for ``stream: true``."""
        node = self._direct_node(params)
        if params["stream"]:
            return await self._measured("chat_stream", "direct", node, self._stream_direct(params))
        return await self._measured("chat", "direct", node,
                                    self._chat_once(params["node_id"], params, params.get("timeout")))

    async def image_gen(self, params: dict) -> dict:
        return await self._measured("image", "direct", self._direct_node(params), self._image_direct(params))

    async def _image_direct(self, params: dict) -> dict:
        if params["node_id"] == self.app.node_id:
            raise parameter_error("Cannot be sent to the node itself")
        return await self._image_once(params["node_id"], params, params.get("timeout"))

    async def _chat_once(self, node_id: str, params: dict, timeout: Optional[float]) -> dict:
        # Schema-neutral: the application writes it in the node's schema (v0.2.3's cid,
        # temperature, top_p and wallet fields only reach v0.2.3 peers).
        req = ChatRequest.from_params(params)
        res = await self.app.request(node_id, pb.CHAT_COMPLETION, req, timeout=timeout)
        return ChatResult.coerce(res).to_json()

    async def _image_once(self, node_id: str, params: dict, timeout: Optional[float]) -> dict:
        req = ImageRequest.from_params(params)
        if (req.response_format == "b64_json" and node_id != self.app.node_id
                and self.app.wire_for(node_id, req) == V023):
            return await self._image_tunnel(node_id, req, timeout)
        res = await self.app.request(node_id, pb.IMAGE_GENERATION, req, timeout=timeout)
        return ImageResult.coerce(res).to_json()

    async def _image_tunnel(self, node_id: str, req: ImageRequest, timeout: Optional[float]) -> dict:
        """A b64 image generation through ``/chat-proxy/0.0.1``, as Go v0.2.3 sends it; the
        whole call (dial, model, answer) within ``timeout`` (default: Go's 300 s for images)."""
        try:
            peer = PeerID.from_string(node_id)
        except InvalidPeerID:
            raise parameter_error("invalid node_id") from None
        limit = IMAGE_TIMEOUT if timeout is None else timeout
        opened: list = []
        call = Deferred.fromCoroutine(self._image_tunnel_call(peer, req, limit, opened))
        try:
            return await with_timeout(call, limit, self.reactor)
        except Timeout:
            raise AICNError(ErrorCode.TIMEOUT,
                            f"Processing timeout: no answer from node {node_id} within {limit:g} s") from None
        finally:
            for stream in opened:
                stream.stream.reset()  # cut short (timeout, cancel, too large): the worker stops

    async def _image_tunnel_call(self, peer: PeerID, req: ImageRequest, limit: float, opened: list) -> dict:
        body = json.dumps(req.to_model_json()).encode()
        log.info("image/gen {project}/{model}: b64 through the tunnel to node {peer}", project=req.project,
                 model=req.model, peer=str(peer))
        stream = await proxy_image_stream(self.host, peer, req.project, req.model, body, cid=req.cid,
                                          reactor=self.reactor, head_timeout=limit)
        opened.append(stream)
        if stream.status != 200:
            raise await stream.error()
        content = bytearray()
        async for chunk in stream.iter_body():
            content += chunk
            if len(content) > MAX_TUNNEL_IMAGE_REPLY:
                raise AICNError(ErrorCode.STREAM, f"The image answer of node {peer} exceeds "
                                                  f"{MAX_TUNNEL_IMAGE_REPLY} bytes")
        opened.clear()  # read to its end; iter_body closed the stream
        created, items = parse_image_items(200, bytes(content))  # a {code != 0} answer: 1006
        return ImageResult.from_items(created, items).to_json()

    @staticmethod
    def _stream_body(params: dict) -> bytes:
        """The tunnelled model request: ``{model, messages, stream}`` and, as Go v0.2.3 sends
        them, the wallet fields (and temperature/top_p) that are set."""
        extra = ChatRequest.from_params(params, stream=True).model_extra()
        return chat_request_body(params["model"], params["messages"], stream=True, extra=extra)

    async def _stream_direct(self, params: dict) -> ModelStream:
        node_id, timeout = params["node_id"], params.get("timeout")
        if node_id == self.app.node_id:
            return await self._stream_local(params, timeout)
        try:
            peer = PeerID.from_string(node_id)
        except InvalidPeerID:
            raise parameter_error("invalid node_id") from None
        return await self._stream_remote(params, peer, timeout)

    async def _stream_local(self, params: dict, timeout: Optional[float], *,
                            node_id: Optional[str] = None) -> ModelStream:
        """Our own model's stream; ModelError before the first byte."""
        api = self.worker.api_url(params["project"], params["model"], cid=params.get("cid") or "")
        return await local_chat_stream(api, self._stream_body(params), reactor=self.reactor,
                                       client=self.worker.client, reject_errors=True, node_id=node_id,
                                       head_timeout=CHAT_TIMEOUT if timeout is None else timeout)

    async def _stream_remote(self, params: dict, peer: PeerID, timeout: Optional[float], *,
                             node_id: Optional[str] = None) -> ModelStream:
        """A worker's stream; AICNError (1017/1006, 1004 after ``timeout``,
        default: that of non-streamed chat) if its head is no success."""
        if timeout is None:
            timeout = self.app.requests.timeout_for(pb.CHAT_COMPLETION)
        stream = await proxy_chat_stream(self.host, peer, params["project"], params["model"],
                                         self._stream_body(params), params.get("host_header"),
                                         reactor=self.reactor, head_timeout=timeout,
                                         cid=params.get("cid") or "")
        if stream.status != 200:
            raise await stream.error()
        stream.node_id = node_id
        return stream

    # -- /proxy: routing by project and model -------------------------------------------------

    def proxy_candidates(self, project: str, model: str) -> list[Candidate]:
        """Nodes that serve ``project``/``model``: fresh heartbeats (the
        collector store and those every node hears) and our own registry."""
        own = self.app.node_id
        seen: dict[str, Candidate] = {}
        if self.worker.serves(project, model):
            seen[own] = Candidate(own, local=True)
        records = self.app.heartbeat_records(PEER_FRESH_AGE)
        for record in records:
            node_id = record.node_id
            if node_id in seen or node_id == own or not _serves(record, project, model):
                continue
            try:
                peer = PeerID.from_string(node_id)
            except InvalidPeerID:
                continue
            seen[node_id] = Candidate(node_id, connected=self.host.is_connected(peer),
                                      latency=self.host.peerstore.latency(peer))
        return list(seen.values())

    def _plan(self, params: dict):
        service = (params["project"], params["model"])
        candidates = self.proxy_candidates(*service)
        plan = self.selector.plan(candidates, service)
        if not plan.attempts:
            if plan.cooling:
                raise AICNError(ErrorCode.PROXY,
                                f"All {len(plan.cooling)} nodes that support the project model failed recently;"
                                f" retry in {plan.retry_after:.0f}s")
            raise AICNError(ErrorCode.PROXY, "Cannot find a node that supports the project model")
        return service, plan

    def _all_failed(self, attempts: list[dict], params: dict, deadline: Optional[float]) -> AICNError:
        left = self._time_left(deadline)
        within = f" within the timeout of {params['timeout']:g} s" if left is not None and left <= 0 else ""
        return AICNError(ErrorCode.PROXY, f"All nodes failed in {len(attempts)} requests{within}", data=attempts)

    def _time_left(self, deadline: Optional[float]) -> Optional[float]:
        """Seconds until ``deadline`` (None: no deadline)."""
        return None if deadline is None else deadline - self.reactor.seconds()

    def _deadline(self, params: dict) -> Optional[float]:
        timeout = params.get("timeout")
        return None if timeout is None else self.reactor.seconds() + timeout

    def _failed(self, attempts: list, node_id: str, service, exc: AICNError) -> None:
        cooldown = self.selector.failed(node_id, service)
        self.model_stats.failover(node_id, exc)
        attempts.append({"node_id": node_id, "code": int(exc.code), "message": exc.message})
        log.info("proxy {project}/{model}: {node} failed ({code} {message}); cooling down {cooldown}s",
                 project=service[0], model=service[1], node=node_id, code=int(exc.code), message=exc.message,
                 cooldown=cooldown)

    async def _proxy_call(self, params: dict, call) -> Answer:
        service, plan = self._plan(params)
        deadline = self._deadline(params)
        attempts: list[dict] = []
        for candidate in plan.attempts:
            left = self._time_left(deadline)
            if left is not None and left <= 0:
                raise self._all_failed(attempts, params, deadline)
            try:
                data = await call(candidate.node_id, params, left)
            except AICNError as exc:
                self._failed(attempts, candidate.node_id, service, exc)
                continue
            self.selector.succeeded(candidate.node_id, service)
            return Answer(data, candidate.node_id)
        raise self._all_failed(attempts, params, deadline)

    async def chat_completion_proxy(self, params: dict):
        """An :class:`Answer`, or a :class:`ModelStream` for ``stream: true``."""
        if params["stream"]:
            return await self._measured("chat_stream", "proxy", None, self._stream_proxy(params))
        return await self._measured("chat", "proxy", None, self._proxy_call(params, self._chat_once))

    async def image_gen_proxy(self, params: dict) -> Answer:
        return await self._measured("image", "proxy", None, self._proxy_call(params, self._image_once))

    async def _stream_proxy(self, params: dict, *, local=None, remote=None) -> ModelStream:
        """The first candidate's stream that starts well (``local(params, timeout, node_id=)``
        for ourselves, ``remote(params, peer, timeout, node_id=)`` for another node: by default
        a streamed chat's)."""
        local = local if local is not None else self._stream_local
        remote = remote if remote is not None else self._stream_remote
        service, plan = self._plan(params)
        deadline = self._deadline(params)
        attempts: list[dict] = []
        for candidate in plan.attempts:
            left = self._time_left(deadline)
            if left is not None and left <= 0:
                raise self._all_failed(attempts, params, deadline)
            node = candidate.node_id
            try:
                if candidate.local:
                    stream = await local(params, left, node_id=node)
                else:
                    stream = await remote(params, PeerID.from_string(node), left, node_id=node)
            except AICNError as exc:  # before the first byte: try the next node
                self._failed(attempts, node, service, exc)
                continue
            stream.when_done().addCallback(self._stream_ended, node, service)
            return stream
        raise self._all_failed(attempts, params, deadline)

    def _stream_ended(self, outcome: Outcome, node: str, service) -> None:
        if outcome is Outcome.COMPLETE:
            self.selector.succeeded(node, service)
        elif outcome is Outcome.BROKEN:
            # Broken mid-stream: too late to fail over, but not the node to pick next time.
            self.selector.failed(node, service)


def _serves(record, project: str, model: str) -> bool:
    projects = record.projects if isinstance(record.projects, list) else []
    return any(isinstance(p, dict) and p.get("project") == project and model in (p.get("models") or ())
               for p in projects)
