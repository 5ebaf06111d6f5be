"""The HTTP API operations that the application protocol implements.

:class:`ApplicationBackend` is a :class:`~aicn.node.backend.NodeBackend`
over an :class:`~aicn.node.application.Application`; the node composes it
with the backends of other features (swarm, models).  Shapes follow the spec
(``aicn-http-api.md``); the Klein app wraps results in ``{code, message, data}``.
"""

from __future__ import annotations

from aicn import hostinfo as _hostinfo
from aicn.errors import AICNError, unsupported
from aicn.wire import protocol_pb2 as pb
from aicn.node.application import PEER_FRESH_AGE, AnswerError, Application
from aicn.node.backend import NodeBackend

__all__ = ["LIST_LIMIT", "NOT_REGISTERED_MESSAGE", "ApplicationBackend"]

#: The most entries the list endpoints return (as the Go node).
LIST_LIMIT = 100
#: ``message`` of an unregister for a project that was not registered (code 0).
NOT_REGISTERED_MESSAGE = "Project not existed"


def _unique(values, limit: int) -> list:
    seen: dict = {}
    for value in values:
        if value not in seen:
            seen[value] = None
            if len(seen) >= limit:
                break
    return list(seen)


class ApplicationBackend(NodeBackend):
    """Peer, host-info and AI-project endpoints, answered through ``app``."""

    def __init__(self, app: Application) -> None:
        self.app = app

    # -- requests to one node ---------------------------------------------------------

    async def peer_info(self, node_id: str, timeout: float | None = None) -> dict:
        """``/api/v0/peer``: ``{peer_id, protocol_version, agent_version, addresses, protocols}``."""
        res = await self.app.request(node_id, pb.PEER_IDENTITY, pb.PeerIdentityRequest(), timeout=timeout)
        return {
            "peer_id": node_id,
            "protocol_version": res.protocol_version,
            "agent_version": res.agent_version,
            "addresses": list(res.listen_addrs),
            "protocols": list(res.protocols),
        }

    async def host_info(self, node_id: str, timeout: float | None = None) -> dict:
        """``/api/v0/host/info``: ``{os, cpu, memory, disk, gpu}``.

        A node that could only partly collect answers 1011 with its error
        text; the partial data comes along as the error's ``data``.
        """
        try:
            res = await self.app.request(node_id, pb.HOST_INFO, pb.HostInfoRequest(), timeout=timeout)
        except AnswerError as exc:
            if exc.response is not None:
                raise AICNError(exc.code, exc.message, data=_hostinfo.from_proto(exc.response)) from None
            raise
        return _hostinfo.from_proto(res)

    async def project_peer(self, node_id: str, timeout: float | None = None) -> list:
        """``/api/v0/ai/project/peer``: ``[{project, models: [name]}]``."""
        res = await self.app.request(node_id, pb.AI_PROJECT, pb.AIProjectRequest(), timeout=timeout)
        return [{"project": p.project, "models": list(p.models)} for p in res.projects]

    # -- our registry -----------------------------------------------------------------

    async def register_project(self, project: str, models: list[dict]) -> None:
        await self.app.register(project, models)

    async def unregister_project(self, project: str) -> str | None:
        """``None`` (message "ok") when it was registered, else :data:`NOT_REGISTERED_MESSAGE`."""
        return None if await self.app.unregister(project) else NOT_REGISTERED_MESSAGE

    # -- the peers-collect store ------------------------------------------------------

    async def collected_peers(self) -> list:
        """``/api/v0/peers``: node IDs with a stored heartbeat (collectors only, else 1010)."""
        if not self.app.collector:
            raise unsupported()
        return _unique((r.node_id for r in self.app.fresh_peers(float("inf"))), LIST_LIMIT)

    async def projects_list(self) -> list:
        """``/api/v0/ai/projects/list``: project names in the stored heartbeats."""
        return _unique(
            (p.get("project") for r in self.app.fresh_peers(float("inf")) for p in _projects(r)),
            LIST_LIMIT,
        )

    async def projects_models(self, project: str) -> list:
        """``/api/v0/ai/projects/models``: model names of ``project`` in the stored heartbeats."""
        return _unique(
            (m for r in self.app.fresh_peers(float("inf")) for p in _projects(r)
             if p.get("project") == project for m in p.get("models") or ()),
            LIST_LIMIT,
        )

    async def projects_peers(self, project: str, model: str) -> list:
        """``/api/v0/ai/projects/peers``: nodes whose heartbeat (< 10 min old) lists
        ``project`` (and ``model``, unless empty)."""
        return _unique(
            (r.node_id for r in self.app.fresh_peers(PEER_FRESH_AGE)
             if any(p.get("project") == project and (not model or model in (p.get("models") or ()))
                    for p in _projects(r))),
            LIST_LIMIT,
        )

    # -- pubsub -----------------------------------------------------------------------

    async def pubsub_peers(self) -> list:
        """``/api/v0/pubsub/peers``: peers subscribed to our topic."""
        return self.app.topic_peers()


def _projects(record) -> list[dict]:
    """The ``[{project, models}]`` of a stored heartbeat, ignoring anything malformed."""
    projects = record.projects if isinstance(record.projects, list) else []
    return [p for p in projects if isinstance(p, dict) and isinstance(p.get("project"), str)]
