"""The requester side of model calls: the chat and image endpoints of the HTTP API.

* ``/api/v0/chat/completion``: to our own node, the registered model is
  called directly; to another node, a non-streamed request travels as an
  encrypted CHAT_COMPLETION message over pubsub and a streamed one over a
  ``/chat-proxy/0.0.1`` stream (dialled through the DHT when we are not
  connected).
* ``/api/v0/image/gen``: IMAGE_GENERATION over pubsub (not to ourselves, as
  the Go node).
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

Streamed responses are written to the twisted.web request here; the backend
method then returns ``NOT_DONE_YET`` once the request is over.  An error
before the first byte is raised as an :class:`~aicn.errors.AICNError`
(1017 for the tunnel, 1006 for the model) and rendered as the JSON envelope.
"""

from __future__ import annotations

import json
from typing import Optional

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET

from aicn.errors import AICNError, ErrorCode, parameter_error
from aicn.log import Logger
from aicn.models.chat import (
    CHAT_TIMEOUT,
    ChatResult,
    chat_request_body,
    chat_request_to_protobuf,
    parse_chat_reply,
)
from aicn.models.errors import ModelError
from aicn.models.image import ImageResult, image_request_to_protobuf
from aicn.wire import protocol_pb2 as pb
from aicn.node.application import PEER_FRESH_AGE
from aicn.node.chatproxy import ProxyResponse, local_chat_stream, proxy_chat_stream
from aicn.node.modelwork import ModelWorker
from aicn.node.routing import Candidate, NodeSelector
from aicn.p2p.peerid import InvalidPeerID, PeerID

__all__ = ["NODE_HEADER", "ModelBackend"]

log = Logger()

#: Response header naming the node that answered a ``/proxy`` request.
NODE_HEADER = b"X-AICN-Node"
#: Most bytes of an error body read from a worker before the first byte.
MAX_ERROR_BODY = 64 * 1024


def _shield(d: Deferred) -> Deferred:
    """A Deferred with ``d``'s result whose cancellation leaves ``d`` running.

    Klein cancels a route's Deferred when the client goes away; a relay in
    progress must then clean up by itself (it watches the request), not be
    interrupted half-way through a write.
    """
    out: Deferred = Deferred()

    def forward(result):
        if not out.called:
            (out.errback if isinstance(result, Failure) else out.callback)(result)

    d.addBoth(forward)
    return out


def _gone(request) -> bool:
    return bool(getattr(request, "_disconnected", False)) or bool(getattr(request, "finished", False))


async def _request_over(request) -> None:
    """Wait until ``request`` is finished or its connection is gone."""
    if _gone(request):
        return
    try:
        await request.notifyFinish()
    except Exception:
        pass


async def _error_from_head(response: ProxyResponse) -> AICNError:
    """The error a worker's non-200 response stands for (its body is read, bounded)."""
    body = bytearray()
    chunks = response.iter_body()
    try:
        async for chunk in chunks:
            body += chunk
            if len(body) > MAX_ERROR_BODY:
                break
    except AICNError:
        pass
    finally:
        await chunks.aclose()
    try:
        reply = json.loads(bytes(body))
    except (ValueError, UnicodeDecodeError):
        reply = None
    # The worker's own error (model unreachable): {code, message}.
    if isinstance(reply, dict) and isinstance(reply.get("code"), int) and reply["code"] \
            and isinstance(reply.get("message"), str) and "choices" not in reply:
        return AICNError(reply["code"], reply["message"])
    try:
        parse_chat_reply(response.status, bytes(body), 0)
    except ModelError as exc:
        return exc
    return ModelError(f"Post HTTP request error, {response.status}")


class ModelBackend:
    """The model endpoints of :class:`~aicn.node.backend.NodeBackend`.

    Needs ``self.reactor``, ``self.host``, ``self.app``, ``self.worker`` (a
    :class:`~aicn.node.modelwork.ModelWorker`) and ``self.selector`` (a
    :class:`~aicn.node.routing.NodeSelector`).
    """

    reactor: object
    host: object
    app: object
    worker: ModelWorker
    selector: NodeSelector

    # -- direct requests ----------------------------------------------------------------

    async def chat_completion(self, request, params: dict):
        if params["stream"]:
            return await _shield(Deferred.fromCoroutine(self._stream_direct(request, params)))
        return await self._chat_once(params["node_id"], params, params.get("timeout"))

    async def image_gen(self, params: dict) -> dict:
        if params["node_id"] == self.app.node_id:
            raise parameter_error("Cannot be sent to the node itself")
        return await self._image_once(params["node_id"], params, params.get("timeout"))

    async def _chat_once(self, node_id: str, params: dict, timeout: Optional[float]) -> dict:
        req = chat_request_to_protobuf(params["project"], params["model"], params["messages"], stream=False)
        res = await self.app.request(node_id, pb.CHAT_COMPLETION, req, timeout=timeout)
        return ChatResult.from_protobuf(res).to_json()

    async def _image_once(self, node_id: str, params: dict, timeout: Optional[float]) -> dict:
        res = await self.app.request(node_id, pb.IMAGE_GENERATION, image_request_to_protobuf(params),
                                     timeout=timeout)
        return ImageResult.from_protobuf(res).to_json()

    @staticmethod
    def _stream_body(params: dict) -> bytes:
        return chat_request_body(params["model"], params["messages"], stream=True)

    async def _stream_direct(self, request, params: dict):
        node_id, timeout = params["node_id"], params.get("timeout")
        if node_id == self.app.node_id:
            await self._stream_local(request, params, timeout)
        else:
            try:
                peer = PeerID.from_string(node_id)
            except InvalidPeerID:
                raise parameter_error("invalid node_id") from None
            await self._stream_remote(request, params, peer, timeout)
        await _request_over(request)
        return NOT_DONE_YET

    async def _stream_local(self, request, params: dict, timeout: Optional[float]) -> bool:
        """Our own model, piped into ``request``; ModelError before the first byte."""
        api = self.worker.api_url(params["project"], params["model"])
        return await local_chat_stream(api, self._stream_body(params), request, reactor=self.reactor,
                                       client=self.worker.client, reject_errors=True,
                                       head_timeout=CHAT_TIMEOUT if timeout is None else timeout)

    async def _open_remote(self, request, params: dict, peer: PeerID, timeout: Optional[float]) -> ProxyResponse:
        """A worker's response head; AICNError (1017/1006, 1004 after
        ``timeout``, default: that of non-streamed chat) if it is no success."""
        if timeout is None:
            timeout = self.app.requests.timeout_for(pb.CHAT_COMPLETION)
        response = await proxy_chat_stream(self.host, peer, params["project"], params["model"],
                                           self._stream_body(params), request.getHeader(b"host"),
                                           reactor=self.reactor, head_timeout=timeout)
        if response.status != 200:
            raise await _error_from_head(response)
        if _gone(request):
            response.abort()
        return response

    async def _stream_remote(self, request, params: dict, peer: PeerID, timeout: Optional[float], *,
                             header: bool = False) -> bool:
        response = await self._open_remote(request, params, peer, timeout)
        if header:
            request.setHeader(NODE_HEADER, str(peer).encode("ascii"))
        if _gone(request):
            return False
        return await response.relay_to(request)

    # -- /proxy: routing by project and model -------------------------------------------------

    def proxy_candidates(self, project: str, model: str) -> list[Candidate]:
        """Nodes that serve ``project``/``model``: fresh heartbeats (the
        collector store and those every node hears) and our own registry."""
        own = self.app.node_id
        seen: dict[str, Candidate] = {}
        if self.worker.serves(project, model):
            seen[own] = Candidate(own, local=True)
        records = list(self.app.recent_heartbeats(PEER_FRESH_AGE))
        try:
            records += self.app.fresh_peers(PEER_FRESH_AGE)
        except AICNError as exc:
            log.warn("Cannot read collected heartbeats: {error}", error=exc.message)
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
        attempts.append({"node_id": node_id, "code": int(exc.code), "message": exc.message})
        log.info("proxy {project}/{model}: {node} failed ({code} {message}); cooling down {cooldown}s",
                 project=service[0], model=service[1], node=node_id, code=int(exc.code), message=exc.message,
                 cooldown=cooldown)

    async def _proxy_call(self, request, params: dict, call) -> dict:
        service, plan = self._plan(params)
        deadline = self._deadline(params)
        attempts: list[dict] = []
        for candidate in plan.attempts:
            if request is not None and _gone(request):
                raise AICNError(ErrorCode.PROXY, "client went away")
            left = self._time_left(deadline)
            if left is not None and left <= 0:
                raise self._all_failed(attempts, params, deadline)
            try:
                data = await call(candidate.node_id, params, left)
            except AICNError as exc:
                self._failed(attempts, candidate.node_id, service, exc)
                continue
            self.selector.succeeded(candidate.node_id, service)
            if request is not None:
                request.setHeader(NODE_HEADER, candidate.node_id.encode("ascii"))
            return data
        raise self._all_failed(attempts, params, deadline)

    async def chat_completion_proxy(self, request, params: dict):
        if params["stream"]:
            return await _shield(Deferred.fromCoroutine(self._stream_proxy(request, params)))
        return await self._proxy_call(request, params, self._chat_once)

    async def image_gen_proxy(self, request, params: dict) -> dict:
        return await self._proxy_call(request, params, self._image_once)

    async def _stream_proxy(self, request, params: dict):
        service, plan = self._plan(params)
        deadline = self._deadline(params)
        attempts: list[dict] = []
        for candidate in plan.attempts:
            if _gone(request):
                return NOT_DONE_YET
            left = self._time_left(deadline)
            if left is not None and left <= 0:
                raise self._all_failed(attempts, params, deadline)
            node = candidate.node_id
            try:
                if candidate.local:
                    request.setHeader(NODE_HEADER, node.encode("ascii"))
                    ok = await self._stream_local(request, params, left)
                else:
                    ok = await self._stream_remote(request, params, PeerID.from_string(node), left, header=True)
            except AICNError as exc:  # before the first byte: try the next node
                self._failed(attempts, node, service, exc)
                continue
            if ok:
                self.selector.succeeded(node, service)
            elif not _client_left(request):
                # Broken mid-stream: too late to fail over, but not the node to pick next time.
                self.selector.failed(node, service)
            await _request_over(request)
            return NOT_DONE_YET
        raise self._all_failed(attempts, params, deadline)


def _client_left(request) -> bool:
    """Right after a relay ended: whether the client left (its connection is
    already gone), as opposed to the relay closing it because the node failed."""
    return bool(getattr(request, "_disconnected", False))


def _serves(record, project: str, model: str) -> bool:
    projects = record.projects if isinstance(record.projects, list) else []
    return any(isinstance(p, dict) and p.get("project") == project and model in (p.get("models") or ())
               for p in projects)


def node_header(value: Optional[bytes]) -> Optional[str]:
    """The node id of an ``X-AICN-Node`` header value."""
    return value.decode("ascii") if value else None
