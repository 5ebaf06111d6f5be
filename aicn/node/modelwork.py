"""The worker side of model requests: our registered models, served to the network.

:class:`ModelWorker` answers CHAT_COMPLETION and IMAGE_GENERATION requests
that arrive over pubsub (:meth:`ModelWorker.model_handlers`, for
:class:`~aicn.node.application.Application`) and streamed chats that arrive
over ``/chat-proxy/0.0.1`` (:meth:`ModelWorker.chat_proxy_handler`).

Model lookup: the first registered model of the project with that name and
the wanted type (0 chat, 1 image), else the first with that name whatever its
type -- the spec's node matched on project and model name only, so
registrations of its era may carry the default type 0 for an image model.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Optional

from aicn.config import AIModel, AIProject
from aicn.log import Logger
from aicn.models.chat import chat_completion, chat_request_from_protobuf
from aicn.models.errors import ModelError
from aicn.models.http import make_http_client
from aicn.models.image import generate_images, image_request_from_protobuf
from aicn.wire import protocol_pb2 as pb
from aicn.node.application import RequestContext
from aicn.node.chatproxy import chat_proxy_handler

__all__ = ["CHAT_MODEL", "IMAGE_MODEL", "ModelWorker", "find_model"]

log = Logger()

#: Model types of the registration API.
CHAT_MODEL = 0
IMAGE_MODEL = 1


def find_model(projects: Iterable[AIProject], project: str, model: str, kind: int) -> Optional[AIModel]:
    """The registered model for ``project``/``model`` (see the module docstring)."""
    fallback = None
    for entry in projects:
        if entry.project != project:
            continue
        for m in entry.models:
            if m.model != model or not m.api:
                continue
            if m.type == kind:
                return m
            if fallback is None:
                fallback = m
    return fallback


class ModelWorker:
    """Calls our registered models on behalf of other nodes (and of our own API).

    :param reactor: clock and TCP for the model and IPFS HTTP calls.
    :param projects: returns our registrations (``Application.projects``).
    :param node_id: our peer id (recorded in image histories).
    :param default_ipfs: ``App.IpfsStorageAPI``, used when a request names no IPFS node.
    :param client: a treq client / IAgent for model and IPFS calls (default: a new one).
    :param chat_timeout: limit on a chat model call (None: the library default).
    """

    def __init__(self, reactor, projects: Callable[[], Iterable[AIProject]], *, node_id: str,
                 default_ipfs: Optional[str] = None, client=None, chat_timeout: Optional[float] = None) -> None:
        self.reactor = reactor
        self._projects = projects
        self.node_id = node_id
        self.default_ipfs = default_ipfs or None
        self.client = client if client is not None else make_http_client(reactor)
        self._chat_timeout = chat_timeout

    def lookup(self, project: str, model: str, kind: int = CHAT_MODEL) -> Optional[AIModel]:
        """Our registered model for ``project``/``model``, or None."""
        return find_model(self._projects(), project, model, kind)

    def serves(self, project: str, model: str) -> bool:
        """Whether we have a model registered under that project and name."""
        return self.lookup(project, model) is not None

    def api_url(self, project: str, model: str, kind: int = CHAT_MODEL) -> str:
        """The model's API URL; :class:`ModelError` (1006) if we have none."""
        found = self.lookup(project, model, kind)
        if found is None:
            raise ModelError(f"Model {model} of project {project} is not registered on this node")
        return found.api

    # -- pubsub requests --------------------------------------------------------------

    def model_handlers(self) -> dict:
        """``{CHAT_COMPLETION: ..., IMAGE_GENERATION: ...}`` for the Application."""
        return {pb.CHAT_COMPLETION: self.chat_handler, pb.IMAGE_GENERATION: self.image_handler}

    async def chat_handler(self, request: pb.ChatCompletionRequest, context: RequestContext):
        """Answer a non-streamed CHAT_COMPLETION: call the model, map its reply."""
        params = chat_request_from_protobuf(request)
        api = self.api_url(params["project"], params["model"], CHAT_MODEL)
        kwargs = {} if self._chat_timeout is None else {"timeout": self._chat_timeout}
        result = await chat_completion(self.client, api, params["model"], params["messages"],
                                       reactor=self.reactor, **kwargs)
        return 0, "ok", result.to_protobuf()

    async def image_handler(self, request: pb.ImageGenerationRequest, context: RequestContext):
        """Answer IMAGE_GENERATION: model call, IPFS upload, history file."""
        params = image_request_from_protobuf(request)
        api = self.api_url(params["project"], params["model"], IMAGE_MODEL)
        # A local request (a /proxy request that picked us) has no pubsub id.
        request_id = context.request_id or str(uuid.uuid4())
        result = await generate_images(self.client, api, params, request_id=request_id,
                                       req_node_id=context.requester, res_node_id=self.node_id,
                                       default_ipfs=self.default_ipfs, reactor=self.reactor)
        return 0, "ok", result.to_protobuf()

    # -- /chat-proxy/0.0.1 ------------------------------------------------------------

    def _stream_lookup(self, project: str, model: str) -> Optional[str]:
        found = self.lookup(project, model, CHAT_MODEL)
        return found.api if found is not None else None

    def chat_proxy_handler(self):
        """The stream handler for ``host.set_stream_handler(CHAT_PROXY, ...)``."""
        return chat_proxy_handler(self._stream_lookup, reactor=self.reactor)
