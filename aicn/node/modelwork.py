"""The worker side of model requests: our registered models, served to the network.

:class:`ModelWorker` answers CHAT_COMPLETION and IMAGE_GENERATION requests
that arrive over pubsub (:meth:`ModelWorker.model_handlers`, for
:class:`~aicn.node.application.Application`) and streamed chats that arrive
over ``/chat-proxy/0.0.1`` (:meth:`ModelWorker.chat_proxy_handler`).

Model lookup: the registered models of the project with that name (and,
when the request names one, Go v0.2.3's ``cid``, the model instance) and the
wanted type (0 chat, 1 image), else those with that name whatever their type
-- the spec's node matched on project and model name only, so registrations
of its era may carry the default type 0 for an image model.  Of these the
one with the fewest calls in flight, the first on a tie: Go v0.2.3's
``GetModelInfo``.  Calls in flight are counted per instance
(:meth:`ModelWorker.in_flight`, the ``idle`` of v0.2.3 heartbeats).

Requests come in either schema (:class:`~aicn.models.chat.ChatRequest`,
:class:`~aicn.models.image.ImageRequest` read both) and are answered with
schema-neutral results that the application writes in the requester's.  An
image request of v0.2.3 gets v0.2.3's answer (:func:`generate_images_v023`),
one of v0.1.2 (or a local one) the spec's IPFS hand-off.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Optional

import attrs

from aicn import jsontext
from aicn.config import AIModel, AIProject
from aicn.config.schema import DEFAULT_IMAGE_EDIT_MAX_BODY_BYTES
from aicn.errors import parameter_error
from aicn.log import Logger
from aicn.models.chat import CHAT_MODEL, ChatRequest, chat_completion
from aicn.models.errors import ModelError
from aicn.models.http import make_http_client
from aicn.models.image import IMAGE_MODEL, ImageRequest, generate_images, generate_images_v023
from aicn.wire import protocol_pb2 as pb
from aicn.wire.versions import V023
from aicn.node.application import RequestContext
from aicn.node.chatproxy import chat_proxy_handler

__all__ = ["CHAT_MODEL", "IMAGE_MODEL", "ModelLease", "ModelWorker", "find_model", "find_models"]

log = Logger()



def find_models(projects: Iterable[AIProject], project: str, model: str, kind: int,
                cid: str = "") -> list[AIModel]:
    """The registered instances that can serve ``project``/``model`` (``cid``: that instance only),
    those of type ``kind`` if there are any, in registration order."""
    same_kind, other_kind = [], []
    for entry in projects:
        if entry.project != project:
            continue
        for m in entry.models:
            if m.model != model or not m.api or (cid and m.cid != cid):
                continue
            (same_kind if m.type == kind else other_kind).append(m)
    return same_kind or other_kind


def find_model(projects: Iterable[AIProject], project: str, model: str, kind: int, cid: str = "",
               load: Callable[[AIModel], int] = lambda m: 0) -> Optional[AIModel]:
    """The model for ``project``/``model`` (see the module docstring): of :func:`find_models`
    the one with the lowest ``load``, the first on a tie."""
    found = find_models(projects, project, model, kind, cid)
    return min(found, key=load) if found else None


def _not_registered(project: str, model: str, cid: str) -> str:
    which = f" (cid {cid})" if cid else ""
    return f"Model {model}{which} of project {project} is not registered on this node"


@attrs.define(eq=False)
class ModelLease:
    """One call to a model instance, counted in flight until :meth:`release`."""

    project: str
    model: AIModel
    _worker: "ModelWorker"
    _released: bool = False

    @property
    def api(self) -> str:
        return self.model.api

    def release(self) -> None:
        """The call ended (idempotent)."""
        if not self._released:
            self._released = True
            self._worker._end_call(self.project, self.model)


class ModelWorker:
    """Calls our registered models on behalf of other nodes (and of our own API).

    :param reactor: clock and TCP for the model and IPFS HTTP calls.
    :param projects: returns our registrations (``Application.projects``).
    :param node_id: our peer id (recorded in image histories).
    :param default_ipfs: ``App.IpfsStorageAPI``, used when a request names no IPFS node.
    :param client: a treq client / IAgent for model and IPFS calls (default: a new one).
    :param chat_timeout: limit on a chat model call (None: the library default).
    :param edit_max_body: the body limit of an image edit that arrives over the tunnel
        (``API.ImageEditMaxBodyBytes``).

    :attr:`on_load_change` (settable; ``Application.load_changed``) is called
    whenever a call starts or ends, so heartbeats can carry the new counts.
    """

    def __init__(self, reactor, projects: Callable[[], Iterable[AIProject]], *, node_id: str,
                 default_ipfs: Optional[str] = None, client=None, chat_timeout: Optional[float] = None,
                 edit_max_body: int = DEFAULT_IMAGE_EDIT_MAX_BODY_BYTES) -> None:
        self.reactor = reactor
        self._projects = projects
        self.node_id = node_id
        self.default_ipfs = default_ipfs or None
        self.client = client if client is not None else make_http_client(reactor)
        self._chat_timeout = chat_timeout
        self.edit_max_body = edit_max_body
        self._calls: Counter[tuple[str, str, str]] = Counter()
        self.on_load_change: Optional[Callable[[], None]] = None

    def _load_changed(self) -> None:
        if self.on_load_change is not None:
            try:
                self.on_load_change()
            except Exception:  # a heartbeat must never break a model call
                log.failure("Load-change hook failed")

    def in_flight(self, project: str, model: str, cid: str = "") -> int:
        """Calls in flight to the instance ``project``/``model``/``cid`` (all ways: pubsub, tunnel)."""
        return self._calls[(project, model, cid)]

    def lookup(self, project: str, model: str, kind: int = CHAT_MODEL, cid: str = "") -> Optional[AIModel]:
        """Our registered model for ``project``/``model`` (and ``cid``), or None."""
        return find_model(self._projects(), project, model, kind, cid,
                          load=lambda m: self._calls[(project, m.model, m.cid)])

    def lease(self, project: str, model: str, kind: int = CHAT_MODEL, cid: str = "") -> ModelLease:
        """:meth:`lookup`'s model, counted in flight until the lease is released;
        :class:`ModelError` (1006) if we have none (Go's message)."""
        found = self.lookup(project, model, kind, cid)
        if found is None:
            raise ModelError(_not_registered(project, model, cid))
        self._calls[(project, found.model, found.cid)] += 1
        self._load_changed()
        return ModelLease(project, found, self)

    def _end_call(self, project: str, model: AIModel) -> None:
        key = (project, model.model, model.cid)
        self._calls[key] -= 1
        if self._calls[key] <= 0:
            del self._calls[key]
        self._load_changed()

    def serves(self, project: str, model: str) -> bool:
        """Whether we have a model registered under that project and name."""
        return self.lookup(project, model) is not None

    def api_url(self, project: str, model: str, kind: int = CHAT_MODEL, cid: str = "") -> str:
        """The model's API URL; :class:`ModelError` (1006) if we have none."""
        found = self.lookup(project, model, kind, cid)
        if found is None:
            raise ModelError(_not_registered(project, model, cid))
        return found.api

    # -- pubsub requests --------------------------------------------------------------

    def model_handlers(self) -> dict:
        """``{CHAT_COMPLETION: ..., IMAGE_GENERATION: ...}`` for the Application."""
        return {pb.CHAT_COMPLETION: self.chat_handler, pb.IMAGE_GENERATION: self.image_handler}

    async def chat_handler(self, request, context: RequestContext):
        """Answer a non-streamed CHAT_COMPLETION (either schema, or a :class:`ChatRequest`):
        call the model instance, map its reply (a :class:`~aicn.models.chat.ChatResult`)."""
        req = ChatRequest.coerce(request)
        lease = self.lease(req.project, req.model, CHAT_MODEL, req.cid)
        kwargs = {} if self._chat_timeout is None else {"timeout": self._chat_timeout}
        try:
            result = await chat_completion(self.client, lease.api, req.model, req.messages,
                                           reactor=self.reactor, extra=req.model_extra(), **kwargs)
        finally:
            lease.release()
        return 0, "ok", result

    async def image_handler(self, request, context: RequestContext):
        """Answer IMAGE_GENERATION (either schema, or an :class:`ImageRequest`): model call, then
        the spec's IPFS upload and history file, or for a v0.2.3 requester v0.2.3's answer."""
        req = ImageRequest.coerce(request)
        lease = self.lease(req.project, req.model, IMAGE_MODEL, req.cid)
        # A local request (a /proxy request that picked us) has no pubsub id.
        request_id = context.request_id or str(uuid.uuid4())
        try:
            if context.wire == V023:
                result = await generate_images_v023(self.client, lease.api, req, request_id=request_id,
                                                    default_ipfs=self.default_ipfs, reactor=self.reactor)
            else:
                result = await generate_images(self.client, lease.api, req.params(), request_id=request_id,
                                               req_node_id=context.requester, res_node_id=self.node_id,
                                               default_ipfs=self.default_ipfs, reactor=self.reactor)
        finally:
            lease.release()
        return 0, "ok", result

    # -- /chat-proxy/0.0.1 ------------------------------------------------------------

    def _stream_lookup(self, project: str, model: str, cid: str = "", kind: int = CHAT_MODEL) -> Optional[ModelLease]:
        try:
            return self.lease(project, model, kind, cid)
        except ModelError:
            return None

    def chat_proxy_handler(self):
        """The stream handler for ``host.set_stream_handler(CHAT_PROXY, ...)``: chats, and Go
        v0.2.3's image edits (bodies up to ``edit_max_body``) and b64 images."""
        return chat_proxy_handler(self._stream_lookup, reactor=self.reactor,
                                  edit_max_body=self.edit_max_body, image_answer=self._tunnel_image)

    async def _tunnel_image(self, api_url: str, head, body: bytes) -> bytes:
        """A tunnelled image generation (Go v0.2.3 sends ``response_format: b64_json`` this way,
        past pubsub's 1 MiB): answered as a v0.2.3 IMAGE_GENERATION, in Go's JSON."""
        try:
            req = ImageRequest.from_model_json(head.query_value("project"), head.query_value("model"),
                                               head.query_value("cid"), jsontext.loads(body))
        except ValueError as exc:
            raise parameter_error(f"bad image request: {exc}") from None
        result = await generate_images_v023(self.client, api_url, req, request_id=str(uuid.uuid4()),
                                            default_ipfs=self.default_ipfs, reactor=self.reactor)
        return json.dumps(result.to_model_json()).encode()
