"""Routing for the OpenAI-compatible API (``/v1``): the model catalog and routed model calls.

The API layer (:mod:`aicn.api.openai`) parses and shapes OpenAI requests and
responses; here the node finds the models the network serves and the node
that answers.

* **Catalog** (:meth:`OpenAIRouting.model_catalog`): every ``(project,
  model)`` of a fresh heartbeat (< 10 min: the collector store and the
  heartbeats every node hears) or of our own registry, with the nodes that
  serve it.  Its OpenAI id is ``project/model``; a request may also name the
  bare model when a single project serves a model of that name
  (:func:`resolve_model`).
* **Chat** (:meth:`OpenAIRouting.chat`, :meth:`OpenAIRouting.open_chat_stream`):
  the client's JSON body goes to the model as it came, with ``model`` set to
  the registered name, so that ``max_tokens``, ``temperature``,
  ``stream_options``... reach the model, and its whole answer comes back.
  To another node it travels over ``/chat-proxy/0.0.1`` (a raw HTTP tunnel,
  also when not streamed: the pubsub CHAT_COMPLETION message carries only
  the messages, and a tunnel can be cancelled); to our own model directly.
* **Images** (:meth:`OpenAIRouting.generate_images`): IMAGE_GENERATION, as
  for ``/image/gen/proxy``; :meth:`OpenAIRouting.fetch_image` reads an image
  back from the IPFS node that stored it.

Nodes are chosen as for ``/proxy`` (:meth:`ModelBackend.proxy_candidates
<aicn.node.modelapi.ModelBackend.proxy_candidates>` and the node's shared
:class:`~aicn.node.routing.NodeSelector`): best first, up to three tried in
turn, failing nodes cool down.  An attempt that fails before the answer is
committed to the client (no stream, a timeout, the worker's own error, a
model answer other than 200) moves on to the next node -- except a model's
400, 413 or 422, which blame the request (:class:`ModelRejected`): that ends
the route, and no node cools down for it.  A streamed answer is committed
with its response head, and its outcome is recorded when it ends
(:meth:`RoutedStream.finished`).  A pinned node (``X-AICN-Node``) replaces
the plan by that one node, cooling down or not.

Cancelling the Deferred of a routed call (the client left) cancels the
attempt in progress: a tunnel is reset, so that the worker drops its model
request, and our own model's connection is closed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from typing import Any, Optional

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from aicn import jsontext
from aicn.errors import AICNError, ErrorCode, parameter_error
from aicn.log import Logger
from aicn.models.chat import open_chat_stream as open_model_stream
from aicn.models.errors import ModelError, code_number
from aicn.models.http import MAX_REPLY_SIZE, BodyPump, Timeout, body_ended_cleanly, with_timeout
from aicn.models.image import MAX_IMAGE_SIZE
from aicn.models.ipfs import IPFSClient
from aicn.node.application import PEER_FRESH_AGE
from aicn.node.chatproxy import TunnelStream, proxy_chat_stream
from aicn.node.modelwork import CHAT_MODEL
from aicn.node.routing import Candidate
from aicn.p2p.peerid import InvalidPeerID, PeerID
from aicn.wire import protocol_pb2 as pb

__all__ = [
    "AmbiguousModel",
    "CLIENT_ERROR_STATUSES",
    "CatalogEntry",
    "ModelRejected",
    "RoutedStream",
    "NoNodeAvailable",
    "OpenAIRouting",
    "RouteFailed",
    "UnknownModel",
    "resolve_model",
]

log = Logger()

#: Statuses of a model's answer that blame the request, not the node: passed on, never retried.
CLIENT_ERROR_STATUSES = frozenset({400, 413, 422})
#: Most bytes of a model's error body read.
MAX_ERROR_BODY = 64 * 1024
#: Most models whose first-seen time is remembered (for ``created``).
MAX_SEEN_MODELS = 4096


# -- errors ------------------------------------------------------------------------------------


class UnknownModel(AICNError):
    """No node serves a model of that id or name (1016)."""

    def __init__(self, name: str) -> None:
        super().__init__(ErrorCode.PROXY, f"The model `{name}` does not exist or no node serves it")
        self.name = name


class AmbiguousModel(AICNError):
    """A bare model name that several projects serve (1001)."""

    def __init__(self, name: str, ids: list[str]) -> None:
        super().__init__(ErrorCode.PARAMETER, f"The model name `{name}` is served by several projects"
                                              f" ({', '.join(ids)}): name one of these ids")
        self.name = name
        self.ids = ids


class NoNodeAvailable(AICNError):
    """Nodes serve the model but none can be tried now (1016); ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(ErrorCode.PROXY, message)
        self.retry_after = retry_after


class RouteFailed(AICNError):
    """Every node tried failed (1016); ``data`` lists ``{node_id, code, message}`` per attempt,
    ``timed_out`` says whether each of them timed out."""

    def __init__(self, service: tuple[str, str], attempts: list[dict]) -> None:
        detail = "; ".join(f"{a['node_id']}: {a['message']}" for a in attempts)
        super().__init__(ErrorCode.PROXY, f"All {len(attempts)} nodes tried for {service[0]}/{service[1]}"
                                          f" failed: {detail}", data=attempts)
        self.timed_out = bool(attempts) and all(a["code"] == ErrorCode.TIMEOUT for a in attempts)


class ModelRejected(AICNError):
    """The model answered 400, 413 or 422 (1006): the request's fault.

    ``status`` is the model's; ``error`` its OpenAI error object, if it sent one.
    """

    def __init__(self, status: int, message: str, error: Optional[dict] = None) -> None:
        super().__init__(ErrorCode.MODEL, message)
        self.status = status
        self.error = error


# -- the catalog ----------------------------------------------------------------------------------


@attrs.frozen
class CatalogEntry:
    """A model the network serves."""

    project: str
    model: str
    #: Nodes that serve it (our own first, when we do).
    nodes: tuple[str, ...]
    #: When this node first saw it (Unix seconds).
    created: int

    @property
    def id(self) -> str:
        """The OpenAI model id: ``project/model``."""
        return f"{self.project}/{self.model}"


def resolve_model(name: str, entries: list[CatalogEntry], node: Optional[str] = None) -> tuple[str, str]:
    """``(project, model)`` for a requested model ``name``: an id
    (``project/model``) or a bare model name served by a single project.

    With ``node`` (a pinned node), the models that node serves are looked at
    first; an id that is not in the catalog is then still split at its first
    ``/``, for a node whose heartbeat we have not heard.  Raises
    :class:`UnknownModel` or :class:`AmbiguousModel`.
    """
    pools = [entries]
    if node is not None:
        pools.insert(0, [e for e in entries if node in e.nodes])
    for pool in pools:
        for matches in ([e for e in pool if e.id == name], [e for e in pool if e.model == name]):
            if len(matches) == 1:
                return matches[0].project, matches[0].model
            if matches:
                raise AmbiguousModel(name, sorted(e.id for e in matches))
    if node is not None:
        project, _, model = name.partition("/")
        if project and model:
            return project, model
    raise UnknownModel(name)


def _heartbeat_models(record) -> list[tuple[str, str]]:
    projects = record.projects if isinstance(record.projects, list) else []
    out = []
    for p in projects:
        if not isinstance(p, dict) or not isinstance(p.get("project"), str) or not p["project"]:
            continue
        models = p.get("models")
        for m in models if isinstance(models, list) else ():
            if isinstance(m, str) and m:
                out.append((p["project"], m))
    return out


# -- streamed answers ---------------------------------------------------------------------------------


def _cancellable(d: Deferred) -> tuple[Deferred, list]:
    """A Deferred with ``d``'s result, and a list that is not empty once it was cancelled.

    Cancelling ``d`` can make it fail with any error (the HTTP client wraps
    its cancellation in ``ResponseNeverReceived``): the list tells a
    cancelled call from a failed one.
    """
    cancelled: list = []

    def cancel(_d: Deferred) -> None:
        cancelled.append(True)
        d.cancel()

    out: Deferred = Deferred(cancel)

    def forward(result):
        if not out.called:
            (out.errback if isinstance(result, Failure) else out.callback)(result)

    d.addBoth(forward)
    return out, cancelled


def _why(reason) -> str:
    return reason.getErrorMessage() if isinstance(reason, Failure) else str(reason)


class RoutedStream:
    """A model's answer on its way to a client: the head is in, the body follows.

    Consume the body once, with :meth:`deliver`; or drop it with :meth:`abort`.
    Once a streamed answer is over, the API calls :meth:`finished`, which
    records the node's outcome for the next routing decisions.
    """

    def __init__(self, node_id: str, status: int, content_type: bytes) -> None:
        #: The node that answers.
        self.node_id = node_id
        self.status = status
        self.content_type = content_type
        self._record: Callable[[bool, bool], object] = lambda ok, client_left: None

    def deliver(self, on_data: Callable[[bytes], object], on_end: Callable[[bool, Optional[str]], object]):
        """Push body chunks to ``on_data`` as they arrive, then call
        ``on_end(ok, why)`` once (``why``: what broke, None when aborted).
        Returns an ``IPushProducer`` that pushes back on the model."""
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the answer: the model's request is aborted (over the network too)."""
        raise NotImplementedError

    def finished(self, ok: bool, client_left: bool = False) -> None:
        """Record the outcome: a complete answer clears the node's failures;
        one broken mid-stream (not by the client leaving) counts as a failure."""
        record, self._record = self._record, lambda ok, client_left: None
        record(ok, client_left)


class _TunnelStream(RoutedStream):
    """An answer over ``/chat-proxy/0.0.1``."""

    def __init__(self, node_id: str, response: TunnelStream) -> None:
        super().__init__(node_id, response.status, response.content_type)
        self._response = response

    def deliver(self, on_data, on_end):
        return self._response.push(on_data, on_end)

    def abort(self) -> None:
        self._response.abort()


class _LocalStream(RoutedStream):
    """An answer of our own model (an unbuffered treq response)."""

    def __init__(self, node_id: str, response) -> None:
        content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        super().__init__(node_id, response.code, content_type)
        self._response = response
        self._pump: Optional[BodyPump] = None
        self._aborted = False

    def deliver(self, on_data, on_end):
        def ended(reason) -> None:
            ok = body_ended_cleanly(reason)
            on_end(ok, None if ok or self._aborted else f"model stream failed: {_why(reason)}")

        self._pump = BodyPump(on_data, ended)
        self._response.deliverBody(self._pump)
        return self._pump

    def abort(self) -> None:
        self._aborted = True
        if self._pump is None:
            # Nothing delivered yet: deliver to nowhere, which closes the connection.
            self.deliver(lambda _data: None, lambda _ok, _why: None)
        assert self._pump is not None
        self._pump.abort()


def collect(stream: RoutedStream, limit: int, *, truncate: bool = False) -> Deferred:
    """The body of ``stream``, at most ``limit`` bytes (past it: :class:`ModelError`,
    or with ``truncate`` the first ``limit`` bytes).  Fails with
    :class:`ModelError` when the body breaks; cancelling aborts the stream."""
    parts: list[bytes] = []
    size = [0]
    cancelled: list[bool] = []

    def cancel(_d: Deferred) -> None:
        cancelled.append(True)
        stream.abort()

    done: Deferred = Deferred(cancel)

    def on_data(data: bytes) -> None:
        if done.called or cancelled:
            return
        size[0] += len(data)
        if size[0] > limit:
            parts.append(data[: len(data) - (size[0] - limit)])
            # Settled before the abort, whose end may come at once.
            if truncate:
                done.callback(b"".join(parts))
            else:
                done.errback(ModelError(f"Post HTTP request error, reply larger than {limit} bytes"))
            stream.abort()
            return
        parts.append(data)

    def on_end(ok: bool, why: Optional[str]) -> None:
        if done.called or cancelled:
            return
        if ok:
            done.callback(b"".join(parts))
        else:
            done.errback(ModelError(f"Post HTTP request error, {why or 'aborted'}"))

    stream.deliver(on_data, on_end)
    return done


def _json(body: bytes) -> Any:
    try:
        return jsontext.loads(body)
    except ValueError:
        return None


def _error_text(reply: Any, body: bytes) -> str:
    """A model's own words about an error: OpenAI's ``error.message``, the DBC ``message``, or the text."""
    if isinstance(reply, dict):
        error = reply.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"]:
            return error["message"]
        if isinstance(error, str) and error:
            return error
        for key in ("message", "detail"):
            if isinstance(reply.get(key), str) and reply[key]:
                return reply[key]
    text = body[:300].decode("utf-8", "replace").strip()
    return text if reply is None else ""


async def _head_error(stream: RoutedStream, remote: bool) -> AICNError:
    """What a model answer other than 200 stands for (its body read, bounded)."""
    try:
        body = await collect(stream, MAX_ERROR_BODY, truncate=True)
    except ModelError:
        body = b""
    reply = _json(body)
    if (remote and stream.status == 502 and isinstance(reply, dict) and "error" not in reply
            and isinstance(reply.get("code"), int) and reply["code"]
            and isinstance(reply.get("message"), str)):
        # The worker's own error: its model is unreachable.
        return AICNError(reply["code"], reply["message"])
    text = _error_text(reply, body)
    if stream.status in CLIENT_ERROR_STATUSES:
        error = reply.get("error") if isinstance(reply, dict) else None
        return ModelRejected(stream.status, text or f"The model rejected the request (HTTP {stream.status})",
                             error if isinstance(error, dict) else None)
    return ModelError(f"Post HTTP request error, {stream.status}" + (f": {text}" if text else ""))


def parse_completion(body: bytes) -> dict:
    """A model's non-streamed chat answer: a JSON object with ``choices``,
    else :class:`ModelError` (also for a DBC-style ``code`` other than 0)."""
    reply = _json(body)
    if not isinstance(reply, dict):
        raise ModelError("Model HTTP response is not JSON")
    code = reply.get("code")
    if isinstance(code, (int, float)) and not isinstance(code, bool) and code != 0:
        raise ModelError(_error_text(reply, body) or f"Model returned code {code}",
                         model_code=code_number(code))
    if not isinstance(reply.get("choices"), list):
        raise ModelError("Model HTTP response has no choices")
    return reply


# -- the routing mixin ------------------------------------------------------------------------------


class OpenAIRouting:
    """The ``/v1`` operations of the node backend.

    A mixin of :class:`~aicn.node.node.Node` beside
    :class:`~aicn.node.modelapi.ModelBackend`, whose ``proxy_candidates``,
    ``_failed`` and ``_image_once`` it uses; needs ``reactor``, ``host``,
    ``app``, ``worker``, ``selector`` and a dict ``_models_seen``.
    """

    _models_seen: dict
    proxy_candidates: Callable[[str, str], list]
    _failed: Callable[[list, str, Hashable, AICNError], None]

    # -- catalog --------------------------------------------------------------------------

    def model_catalog(self) -> list[CatalogEntry]:
        """Every model the network serves, by id."""
        own = self.app.node_id
        served: dict[tuple[str, str], dict[str, None]] = {}
        for project in self.app.projects():
            for m in project.models:
                if m.api and m.model:
                    served.setdefault((project.project, m.model), {})[own] = None
        records = self.app.heartbeat_records(PEER_FRESH_AGE)
        for record in records:
            if record.node_id == own:
                continue  # our registry, not our last heartbeat, says what we serve
            for key in _heartbeat_models(record):
                served.setdefault(key, {})[record.node_id] = None
        now = int(self.reactor.seconds())
        seen = self._models_seen
        entries = []
        for key in sorted(served):
            if key not in seen:
                seen[key] = now
                while len(seen) > MAX_SEEN_MODELS:
                    del seen[next(iter(seen))]
            entries.append(CatalogEntry(key[0], key[1], tuple(served[key]), seen[key]))
        return entries

    def resolve_model(self, name: str, pin: Optional[str] = None) -> tuple[str, str]:
        """``(project, model)`` of a requested model (see :func:`resolve_model`); a pin
        that is not a node id is a 1001 first."""
        if pin is not None:
            self._pinned(pin)
        return resolve_model(name, self.model_catalog(), pin)

    # -- routing --------------------------------------------------------------------------

    def _pinned(self, node_id: str) -> Candidate:
        try:
            peer = PeerID.from_string(node_id)
        except InvalidPeerID:
            raise parameter_error(f"X-AICN-Node is not a node id: {node_id}") from None
        if node_id == self.app.node_id:
            return Candidate(node_id, local=True)
        return Candidate(node_id, connected=self.host.is_connected(peer),
                         latency=self.host.peerstore.latency(peer))

    async def _route(self, service: tuple[str, str], pin: Optional[str], attempt) -> tuple[str, Any]:
        """``(node_id, attempt(candidate))`` of the first candidate whose attempt succeeds."""
        if pin is not None:
            candidates: tuple[Candidate, ...] = (self._pinned(pin),)
        else:
            plan = self.selector.plan(self.proxy_candidates(*service), service)
            if not plan.attempts:
                name = f"{service[0]}/{service[1]}"
                if plan.cooling:
                    raise NoNodeAvailable(f"All {len(plan.cooling)} nodes that serve {name} failed recently;"
                                          f" retry in {plan.retry_after:.0f}s", plan.retry_after)
                raise NoNodeAvailable(f"No node serves {name} now")
            candidates = plan.attempts
        attempts: list[dict] = []
        for candidate in candidates:
            d, cancelled = _cancellable(Deferred.fromCoroutine(attempt(candidate)))
            try:
                result = await d
            except ModelRejected:
                raise
            except AICNError as exc:
                if cancelled:
                    # The client left; what the cancelled call failed with says nothing of the node.
                    raise CancelledError() from None
                self._failed(attempts, candidate.node_id, service, exc)
                continue
            return candidate.node_id, result
        raise RouteFailed(service, attempts)

    async def _timed(self, d: Deferred, timeout: float, node_id: str):
        """``d``'s result within ``timeout`` seconds, else 1004."""
        try:
            return await with_timeout(d, timeout, self.reactor)
        except Timeout:
            raise AICNError(ErrorCode.TIMEOUT, f"Processing timeout: no answer from node {node_id}"
                                               f" within {timeout:g} s") from None

    async def _open(self, candidate: Candidate, service: tuple[str, str], payload: bytes,
                    timeout: float) -> RoutedStream:
        """A model's answer with status 200 (else the error it stands for).

        ``timeout`` is a backstop: the callers' own limit, a second shorter,
        decides (and names a timeout 1004 whatever the path).
        """
        timeout += 1.0
        project, model = service
        if candidate.local:
            api = self.worker.api_url(project, model, CHAT_MODEL)
            stream: RoutedStream = _LocalStream(candidate.node_id, await open_model_stream(
                api, payload, None, reactor=self.reactor, client=self.worker.client, timeout=timeout))
        else:
            peer = PeerID.from_string(candidate.node_id)
            response = await proxy_chat_stream(self.host, peer, project, model, payload, reactor=self.reactor,
                                               head_timeout=timeout)
            stream = _TunnelStream(candidate.node_id, response)
        if stream.status != 200:
            raise await _head_error(stream, not candidate.local)
        return stream

    def _chat_timeout(self) -> float:
        return self.app.requests.timeout_for(pb.CHAT_COMPLETION)

    @staticmethod
    def _payload(model: str, body: dict) -> bytes:
        return json.dumps({**body, "model": model}, ensure_ascii=False).encode("utf-8")

    async def chat(self, project: str, model: str, body: dict, *,
                   pin: Optional[str] = None) -> tuple[str, dict]:
        """A non-streamed chat: ``(node_id, the model's JSON answer)``.

        ``body`` is the client's request object; the answer has ``choices``
        (:func:`parse_completion`).  The whole answer must come within the
        chat timeout (``App.RequestTimeout``, default 190 s) per node tried.
        """
        service = (project, model)
        payload = self._payload(model, body)
        timeout = self._chat_timeout()

        async def call(candidate: Candidate) -> dict:
            stream = await self._open(candidate, service, payload, timeout)
            return parse_completion(await collect(stream, MAX_REPLY_SIZE))

        node_id, reply = await self._route(service, pin, lambda candidate: self._timed(
            Deferred.fromCoroutine(call(candidate)), timeout, candidate.node_id))
        self.selector.succeeded(node_id, service)
        return node_id, reply

    async def open_chat_stream(self, project: str, model: str, body: dict, *,
                               pin: Optional[str] = None) -> RoutedStream:
        """A streamed chat: the answer whose head (status 200) came first,
        within the chat timeout per node tried; its body is the caller's to
        relay, and :meth:`RoutedStream.finished` records the outcome."""
        service = (project, model)
        payload = self._payload(model, body)
        timeout = self._chat_timeout()
        def attempt(candidate: Candidate):
            opened = Deferred.fromCoroutine(self._open(candidate, service, payload, timeout))
            return self._timed(opened, timeout, candidate.node_id)

        node_id, stream = await self._route(service, pin, attempt)

        def record(ok: bool, client_left: bool) -> None:
            if ok:
                self.selector.succeeded(node_id, service)
            elif not client_left:
                # Broken mid-stream: too late to fail over, but not the node to pick next time.
                self.selector.failed(node_id, service)
                log.info("v1 {project}/{model}: {node} broke its stream", project=project, model=model,
                         node=node_id)

        stream._record = record
        return stream

    # -- images ---------------------------------------------------------------------------

    async def generate_images(self, project: str, model: str, params: dict, *,
                              pin: Optional[str] = None) -> tuple[str, dict]:
        """``(node_id, {ipfs_node, choices: [{cid, image_name}]})`` of a routed
        IMAGE_GENERATION (or v0.2.3's choices ``{url, b64_json}``); ``params``: ``prompt``,
        ``n``, ``size``, ``ipfs_node``, ``response_format``.

        ``response_format: b64_json`` travels (v0.2.3's field; to a node of v0.2.3's schema
        through the tunnel, as Go v0.2.3 sends it: ``_image_once``): the worker then answers
        with the image itself instead of storing it on IPFS for us to fetch back.  ``url``,
        the default, is not sent: a v0.1.2 answer names IPFS CIDs already."""
        service = (project, model)
        request = {"project": project, "model": model, "prompt": params["prompt"], "n": params.get("n", 1),
                   "size": params.get("size", ""), "ipfs_node": params.get("ipfs_node", "")}
        if params.get("response_format") == "b64_json":
            request["response_format"] = "b64_json"
        node_id, result = await self._route(
            service, pin, lambda candidate: self._image_once(candidate.node_id, request, None))
        self.selector.succeeded(node_id, service)
        return node_id, result

    async def fetch_image(self, ipfs_node: str, cid: str) -> bytes:
        """The bytes of a generated image, from the IPFS node that stored it."""
        return await IPFSClient(self.worker.client, ipfs_node, reactor=self.reactor).cat(cid, MAX_IMAGE_SIZE)
