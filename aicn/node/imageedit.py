"""Go v0.2.3's image edit endpoints on the node: ``/api/v0/image/edit`` and ``/image/edit/proxy``.

Our own image edit model (registration type 2) is called here: the form the
API validated goes to the model as ``multipart/form-data`` and its raw
answer comes back as a :class:`~aicn.node.modelstream.ModelStream`, relayed
as it came (status, headers, body), as the Go node relays it.

Another node's model would be reached through the ``/chat-proxy/0.0.1``
tunnel, which carries chat requests only so far: such a request is answered
1010 with a message that says so, never sent.
"""

from __future__ import annotations

from typing import Optional

from aicn.errors import AICNError, ErrorCode, parameter_error, unsupported
from aicn.log import Logger
from aicn.models.chat import open_chat_stream
from aicn.models.errors import ModelError
from aicn.models.image import IMAGE_TIMEOUT
from aicn.models.imageedit import IMAGE_EDIT_MODEL, encode_multipart
from aicn.node.chatproxy import LocalStream
from aicn.p2p.peerid import InvalidPeerID, PeerID

__all__ = ["REMOTE_EDIT_UNSUPPORTED", "ImageEditBackend"]

log = Logger()

#: Why an image edit for another node is refused (1010).
REMOTE_EDIT_UNSUPPORTED = ("image/edit to another node is not supported yet: "
                           "this node's /chat-proxy/0.0.1 tunnel carries chat requests only")


class ImageEditBackend:
    """The image edit operations of :class:`~aicn.node.backend.NodeBackend`.

    Needs ``self.reactor``, ``self.app`` and ``self.worker`` (for its HTTP
    client); ``proxy_candidates`` (of :class:`~aicn.node.modelapi.ModelBackend`)
    tells whether other nodes serve a model.
    """

    async def image_edit(self, params: dict) -> LocalStream:
        node_id = params["node_id"]
        if node_id == self.app.node_id:
            return await self._edit_locally(params, None)
        try:
            PeerID.from_string(node_id)
        except InvalidPeerID:
            raise parameter_error("invalid node_id") from None
        raise unsupported(REMOTE_EDIT_UNSUPPORTED)

    async def image_edit_proxy(self, params: dict) -> LocalStream:
        """Our own model when we serve it; otherwise 1010 when others do, 1016 when nobody does."""
        project, model = params["project"], params["model"]
        if self._edit_model(project, model, params.get("cid", "")) is not None:
            return await self._edit_locally(params, self.app.node_id)
        if self.proxy_candidates(project, model):
            raise unsupported(REMOTE_EDIT_UNSUPPORTED)
        raise AICNError(ErrorCode.PROXY, "Cannot find a node that supports the project model")

    def _edit_model(self, project: str, model: str, cid: str):
        """Our model for an edit: the one with that ``cid`` if one is given (as Go), else the first of
        type 2, else the first of that name."""
        found = [m for p in self.app.projects() if p.project == project for m in p.models
                 if m.model == model and m.api]
        if cid:
            return next((m for m in found if m.cid == cid), None)
        return next((m for m in found if m.type == IMAGE_EDIT_MODEL), found[0] if found else None)

    async def _edit_locally(self, params: dict, node_id: Optional[str]) -> LocalStream:
        project, model = params["project"], params["model"]
        chosen = self._edit_model(project, model, params.get("cid", ""))
        if chosen is None:
            raise ModelError(f"Model {model} of project {project} is not registered on this node")
        try:
            content_type, body = encode_multipart(params["fields"], params["files"])
        except ValueError as exc:
            raise parameter_error(str(exc)) from None
        timeout = params.get("timeout") or IMAGE_TIMEOUT
        log.info("image/edit {project}/{model}: {size} bytes to {url}", project=project, model=model,
                 size=len(body), url=chosen.api)
        response = await open_chat_stream(chosen.api, body, {b"Content-Type": content_type},
                                          reactor=self.reactor, client=self.worker.client, timeout=timeout)
        return LocalStream(response, chosen.api, node_id=node_id)
