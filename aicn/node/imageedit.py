"""Go v0.2.3's image edit endpoints on the node: ``/api/v0/image/edit`` and ``/image/edit/proxy``.

Our own image edit model (registration type 2) is called here: the form the
API validated goes to the model as ``multipart/form-data`` and its raw
answer comes back as a :class:`~aicn.node.modelstream.ModelStream`, relayed
as it came (status, headers, body), as the Go node relays it.

Another node's model is reached through the ``/chat-proxy/0.0.1`` tunnel,
as Go v0.2.3 sends it (``POST /api/v0/image/edit?cid=&model=&project=``,
the same multipart body; :func:`~aicn.node.chatproxy.proxy_edit_stream`),
dialled like a streamed chat when we are not connected (Go answers 1017
then).  Its answer is relayed as it came when it is a success (2xx); any
other status is an error before the first byte (the worker's envelope --
413 for a body over its ``API.ImageEditMaxBodyBytes`` -- or the model's own
error, 1006), so that ``/proxy`` can try the next node.
"""

from __future__ import annotations

from typing import Optional

from aicn.errors import parameter_error
from aicn.log import Logger
from aicn.models.chat import open_chat_stream
from aicn.models.errors import ModelError
from aicn.models.image import IMAGE_TIMEOUT
from aicn.models.imageedit import IMAGE_EDIT_MODEL, encode_multipart
from aicn.node.chatproxy import LocalStream, proxy_edit_stream
from aicn.node.modelstream import ModelStream
from aicn.p2p.peerid import InvalidPeerID, PeerID

__all__ = ["ImageEditBackend"]

log = Logger()


class ImageEditBackend:
    """The image edit operations of :class:`~aicn.node.backend.NodeBackend`.

    Needs ``self.reactor``, ``self.app``, ``self.host`` and ``self.worker``
    (for its HTTP client), and of :class:`~aicn.node.modelapi.ModelBackend`
    the ``/proxy`` machinery (``_measured``, ``_stream_proxy``).
    """

    async def image_edit(self, params: dict) -> ModelStream:
        """Our model's answer, or (through the tunnel) that of the node ``params["node_id"]``."""
        return await self._measured("image_edit", "direct", self._direct_node(params), self._edit_direct(params))

    async def _edit_direct(self, params: dict) -> ModelStream:
        node_id = params["node_id"]
        if node_id == self.app.node_id:
            return await self._edit_locally(params, None)
        try:
            peer = PeerID.from_string(node_id)
        except InvalidPeerID:
            raise parameter_error("invalid node_id") from None
        return await self._edit_remote(params, peer, params.get("timeout"))

    async def image_edit_proxy(self, params: dict) -> ModelStream:
        """The answer of a node that serves the model, chosen as for a streamed chat (ourselves
        first when we serve it); 1016 when nobody does or every node failed before its first byte."""
        return await self._measured("image_edit", "proxy", None, self._stream_proxy(
            params, local=self._edit_local_candidate, remote=self._edit_remote))

    async def _edit_local_candidate(self, params: dict, timeout: Optional[float], *,
                                    node_id: Optional[str] = None) -> ModelStream:
        return await self._edit_locally(dict(params, timeout=timeout), node_id)

    async def _edit_remote(self, params: dict, peer: PeerID, timeout: Optional[float], *,
                           node_id: Optional[str] = None) -> ModelStream:
        """The worker's answer over the tunnel; AICNError before the first byte unless it is a 2xx."""
        try:
            content_type, body = encode_multipart(params["fields"], params["files"])
        except ValueError as exc:
            raise parameter_error(str(exc)) from None
        log.info("image/edit {project}/{model}: {size} bytes to node {peer}", project=params["project"],
                 model=params["model"], size=len(body), peer=str(peer))
        stream = await proxy_edit_stream(self.host, peer, params["project"], params["model"],
                                         content_type, body, cid=params.get("cid") or "",
                                         reactor=self.reactor,
                                         head_timeout=IMAGE_TIMEOUT if timeout is None else timeout)
        if not 200 <= stream.status < 300:
            raise await stream.error()
        stream.node_id = node_id
        return stream

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
