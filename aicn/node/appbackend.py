"""The HTTP API operations that the application protocol implements.

:class:`ApplicationBackend` is a :class:`~aicn.node.backend.NodeBackend`
over an :class:`~aicn.node.application.Application`; the node composes it
with the backends of other features (swarm, models).  Shapes follow the spec
(``aicn-http-api.md``); the Klein app wraps results in ``{code, message, data}``.
"""

from __future__ import annotations

from aicn import hostinfo as _hostinfo
from aicn.config import AIModel
from aicn.errors import AICNError, unsupported
from aicn.wire import protocol_pb2 as pb
from aicn.node.application import PEER_FRESH_AGE, AnswerError, Application, heartbeat_projects
from aicn.node.backend import NodeBackend

__all__ = ["LIST_LIMIT", "NOT_REGISTERED_MESSAGE", "MODEL_NOT_REGISTERED_MESSAGE", "ApplicationBackend"]

#: The most entries the list endpoints return (as the Go node).
LIST_LIMIT = 100
#: ``message`` of an unregister for a project that was not registered (code 0).
NOT_REGISTERED_MESSAGE = "Project not existed"
#: ``message`` of a model unregister for a model that was not registered (Go v0.2.3's, code 0).
MODEL_NOT_REGISTERED_MESSAGE = "not existed"


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

    async def _projects_of(self, node_id: str, timeout: float | None) -> list[dict]:
        res = await self.app.request(node_id, pb.AI_PROJECT, pb.AIProjectRequest(), timeout=timeout)
        return heartbeat_projects(res)[0]

    async def project_peer(self, node_id: str, timeout: float | None = None) -> list:
        """``/api/v0/ai/project/peer``: ``[{project, models: [name]}]`` (a v0.2.3 answer's
        distinct names)."""
        return [{"project": p["project"], "models": p["models"]}
                for p in await self._projects_of(node_id, timeout)]

    async def project_peer_detail(self, node_id: str, timeout: float | None = None) -> list:
        """Go v0.2.3's ``/ai/project/peer``: ours in full from the registry, another node's from its
        answer (model names over the v0.1.2 wire; type, idle and cid over v0.2.3's, never the API)."""
        if node_id != self.app.node_id:
            return [{"project": p["project"],
                     "models": p.get("instances") or [{"model": m} for m in p["models"]]}
                    for p in await self._projects_of(node_id, timeout)]
        return [{"project": p.project,
                 "models": [{"model": m.model, "api": m.api, "type": m.type, "cid": m.cid, "idle": 0}
                            for m in p.models]}
                for p in self.app.projects()]

    # -- our registry -----------------------------------------------------------------

    async def register_project(self, project: str, models: list[dict]) -> None:
        await self.app.register(project, models)

    async def unregister_project(self, project: str) -> str | None:
        """``None`` (message "ok") when it was registered, else :data:`NOT_REGISTERED_MESSAGE`."""
        return None if await self.app.unregister(project) else NOT_REGISTERED_MESSAGE

    def _registered_models(self, project: str) -> list[AIModel]:
        for entry in self.app.projects():
            if entry.project == project:
                return list(entry.models)
        return []

    async def register_model(self, project: str, model: dict) -> None:
        """Go v0.2.3's ``/ai/model/register``: the model of that name and ``cid`` is replaced in
        place, or added at the end of its project (a new project when there is none)."""
        new = AIModel(model=model["model"], api=model.get("api", ""), type=int(model.get("type", 0)),
                      cid=model.get("cid", ""))
        models = self._registered_models(project)
        for i, old in enumerate(models):
            if (old.model, old.cid) == (new.model, new.cid):
                models[i] = new
                break
        else:
            models.append(new)
        await self.app.register(project, models)

    async def unregister_model(self, project: str, model: str, cid: str) -> str | None:
        """Go v0.2.3's ``/ai/model/unregister``: drop the model of that name and ``cid``; a project
        left without models goes too.  :data:`MODEL_NOT_REGISTERED_MESSAGE` when there was none."""
        models = self._registered_models(project)
        rest = [m for m in models if (m.model, m.cid) != (model, cid)]
        if len(rest) == len(models):
            return MODEL_NOT_REGISTERED_MESSAGE
        if rest:
            await self.app.register(project, rest)
        else:
            await self.app.unregister(project)
        return None

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

    async def projects_peers_detail(self, project: str, model: str) -> list[dict]:
        """Go v0.2.3's ``/ai/projects/peers``: the nodes of :meth:`projects_peers` with their
        connection (:meth:`connection_facts`) and, where the heartbeat tells, the model's ``cid``
        and ``idle``."""
        out: dict[str, dict] = {}
        for record in self.app.fresh_peers(PEER_FRESH_AGE):
            if record.node_id in out:
                continue
            found = _find_model(record, project, model)
            if found is None:
                continue
            connectivity, latency = self.connection_facts(record.node_id)
            out[record.node_id] = {"node_id": record.node_id, "connectivity": connectivity,
                                   "latency": latency, "idle": found.get("idle", 0),
                                   "cid": found.get("cid", "")}
            if len(out) >= LIST_LIMIT:
                break
        return list(out.values())

    def connection_facts(self, node_id: str) -> tuple[int, int]:
        """``(connectivity, latency in µs)`` of a node, as Go v0.2.3 reports them (0, 0: unknown)."""
        return 0, 0

    # -- pubsub -----------------------------------------------------------------------

    async def pubsub_peers(self) -> list:
        """``/api/v0/pubsub/peers``: peers subscribed to our topic."""
        return self.app.topic_peers()


def _find_model(record, project: str, model: str) -> dict | None:
    """The entry of ``model`` (any, when empty) of ``project`` in a heartbeat: ``{model[, type, cid, idle]}``
    (v0.1.2 heartbeats list models by name, v0.2.3 ones as ``instances``; of several instances the
    least busy, as Go picks), or None."""
    for p in _projects(record):
        if p.get("project") != project:
            continue
        instances = [m for m in p.get("instances") or () if isinstance(m, dict)
                     and (not model or m.get("model") == model)]
        if instances:
            return min(instances, key=lambda m: m.get("idle", 0) if isinstance(m.get("idle"), int) else 0)
        for m in p.get("models") or ():
            entry = {"model": m} if isinstance(m, str) else m if isinstance(m, dict) else None
            if entry is not None and (not model or entry.get("model") == model):
                return entry
        if not model:
            return {}  # the project, without models
    return None


def _projects(record) -> list[dict]:
    """The ``[{project, models}]`` of a stored heartbeat, ignoring anything malformed."""
    projects = record.projects if isinstance(record.projects, list) else []
    return [p for p in projects if isinstance(p, dict) and isinstance(p.get("project"), str)]
