"""What the HTTP API asks of the node.

:class:`NodeBackend` lists every operation the API offers.  Each default
raises 1010 "Unsupported function", so an endpoint whose feature has not been
built answers that, never invented data; :class:`aicn.node.node.Node`
overrides the operations it implements.
"""

from __future__ import annotations

from aicn.errors import unsupported


class NodeBackend:
    """Operations behind the HTTP API; all are async except ``identify_info``.

    ``timeout`` (and ``params["timeout"]`` of the model operations) is the
    request's own limit in seconds on the wait for the remote node, or None
    for the node's default.
    """

    def identify_info(self) -> dict:
        """``/api/v0/id``: our own ``{peer_id, protocol_version, agent_version, addresses, protocols}``."""
        raise unsupported()

    async def collected_peers(self) -> list:
        raise unsupported()

    async def peer_info(self, node_id: str, timeout: float | None = None) -> dict:
        raise unsupported()

    async def host_info(self, node_id: str, timeout: float | None = None) -> dict:
        raise unsupported()

    async def rendezvous_peers(self) -> list:
        raise unsupported()

    async def chat_completion(self, params: dict):
        """``/api/v0/chat/completion``: the ``data`` dict, an ``Answer``, or a
        ``ModelStream`` for ``stream: true`` (:mod:`aicn.node.modelstream`)."""
        raise unsupported()

    async def chat_completion_proxy(self, params: dict):
        """As :meth:`chat_completion`, for a node chosen by project and model."""
        raise unsupported()

    async def image_gen(self, params: dict) -> dict:
        raise unsupported()

    async def image_gen_proxy(self, params: dict):
        """The ``data`` of the node chosen by project and model, as an ``Answer`` naming it."""
        raise unsupported()

    async def image_edit(self, params: dict):
        """``/api/v0/image/edit`` (Go v0.2.3): the named node's image edit model, given ``params``
        ``{node_id, project, model, cid, fields: [(name, value)], files: [(name, filename,
        content_type, bytes)], timeout}``; the model's answer as a ``ModelStream`` (relayed as it
        came, as Go does) or a data dict."""
        raise unsupported()

    async def image_edit_proxy(self, params: dict):
        """As :meth:`image_edit`, for a node chosen by project and model."""
        raise unsupported()

    # -- the OpenAI-compatible API (/v1); see aicn.node.openairoute ---------------------

    def model_catalog(self) -> list:
        """``/v1/models``: a ``CatalogEntry`` per model the network serves."""
        raise unsupported()

    def resolve_model(self, name: str, pin: str | None = None) -> tuple[str, str]:
        """``(project, model)`` of a requested model id or bare name."""
        raise unsupported()

    async def chat(self, project: str, model: str, body: dict, *, pin: str | None = None) -> tuple[str, dict]:
        """A routed non-streamed chat: ``(node_id, the model's JSON answer)``."""
        raise unsupported()

    async def open_chat_stream(self, project: str, model: str, body: dict, *, pin: str | None = None):
        """A routed streamed chat: a ``ModelStream`` whose head came."""
        raise unsupported()

    async def generate_images(self, project: str, model: str, params: dict, *,
                              pin: str | None = None) -> tuple[str, dict]:
        """A routed image generation: ``(node_id, {ipfs_node, choices})``."""
        raise unsupported()

    async def fetch_image(self, ipfs_node: str, cid: str) -> bytes:
        """A stored image's bytes."""
        raise unsupported()

    async def projects_list(self) -> list:
        raise unsupported()

    async def projects_models(self, project: str) -> list:
        raise unsupported()

    async def projects_peers(self, project: str, model: str) -> list:
        raise unsupported()

    async def projects_peers_detail(self, project: str, model: str) -> list[dict]:
        """Go v0.2.3's ``/ai/projects/peers``: ``[{node_id, connectivity, latency (µs), idle, cid}]``;
        by default the nodes of :meth:`projects_peers`, with nothing known of them."""
        return [{"node_id": node_id, "connectivity": 0, "latency": 0, "idle": 0, "cid": ""}
                for node_id in await self.projects_peers(project, model)]

    async def register_project(self, project: str, models: list[dict]) -> None:
        raise unsupported()

    async def unregister_project(self, project: str) -> str | None:
        raise unsupported()

    async def project_peer(self, node_id: str, timeout: float | None = None) -> list:
        raise unsupported()

    async def project_peer_detail(self, node_id: str, timeout: float | None = None) -> list[dict]:
        """Go v0.2.3's ``/ai/project/peer``: ``[{project, models: [{model, api, type, cid, idle}]}]``
        (what is known; by default the names of :meth:`project_peer`)."""
        return [{"project": p["project"], "models": [{"model": m} for m in p["models"]]}
                for p in await self.project_peer(node_id, timeout)]

    async def register_model(self, project: str, model: dict) -> None:
        """Go v0.2.3's ``/ai/model/register``: add or replace one model ``{model, api, type[, cid]}``
        (a model is known by its name and ``cid``)."""
        raise unsupported()

    async def unregister_model(self, project: str, model: str, cid: str) -> str | None:
        """Go v0.2.3's ``/ai/model/unregister``: ``None`` (message "ok") when it was registered,
        else the message to answer with (code 0)."""
        raise unsupported()

    async def swarm_peers(self) -> list:
        raise unsupported()

    async def swarm_addrs(self) -> list:
        raise unsupported()

    async def swarm_connect(self, addr: str) -> None:
        raise unsupported()

    async def swarm_disconnect(self, addr: str) -> None:
        raise unsupported()

    async def pubsub_peers(self) -> list:
        raise unsupported()

    # -- bootstrap peers (Go v0.2.3) --------------------------------------------------------

    async def bootstrap_list(self) -> list[str]:
        """The bootstrap multiaddrs."""
        raise unsupported()

    async def bootstrap_add(self, addr: str) -> None:
        """Dial ``addr`` (``…/p2p/<id>``) and, once connected, keep it as a bootstrap peer."""
        raise unsupported()

    async def bootstrap_remove(self, addr: str) -> None:
        """Hang up on ``addr``'s peer and drop it from the bootstrap peers."""
        raise unsupported()
