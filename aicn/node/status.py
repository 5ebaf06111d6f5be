"""What a running node can tell about itself: the dashboard's state and readiness.

:class:`NodeStatus` holds the node's components (host, pubsub, DHT, the
application, relays, AutoNAT, the model request counters) and reads them
when asked; it changes nothing.  The HTTP API serves :meth:`NodeStatus.state`
to the dashboard, :meth:`NodeStatus.readiness` as ``/health/readiness``, and
its Prometheus collector (:mod:`aicn.api.metrics`) reads the same
components through it.

Everything read here is bounded: the state lists at most
:data:`MAX_PEERS` peers and :data:`MAX_SERVING` serving entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import attrs

from aicn import AGENT_VERSION, PROTOCOL_VERSION
from aicn.node.reach import PEER_FRESH_AGE
from aicn.p2p import maddr
from aicn.p2p.peerid import InvalidPeerID, PeerID
from aicn.storage import StorageError

__all__ = ["MAX_PEERS", "MAX_SERVING", "Check", "NodeStatus"]


#: Most connected peers listed in the state.
MAX_PEERS = 500
#: Most (project, model, node) entries listed in the state.
MAX_SERVING = 1000
#: Most model-request counter rows listed in the state.
MAX_REQUEST_ROWS = 200


@attrs.frozen
class Check:
    """One readiness check: its name, whether it passes, and why."""

    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict:
        return {"name": self.name, "state": "ok" if self.ok else "failing", "detail": self.detail}


class NodeStatus:
    """Read-only views of a node's components.

    Every component but ``host`` and ``app`` is optional (None: not running
    on this node).  ``bootstrap_peers`` are the configured bootstrap peer ids
    (ours excluded); ``listen_configured`` is False for a dial-out-only node
    (``--listen none``).
    """

    def __init__(self, clock, *, host, app, db=None, pubsub=None, dht=None, model_stats=None,
                 relay_service=None, relay_client=None, autonat=None, autonat_service=None,
                 bootstrap_peers: Sequence[PeerID] = (), listen_configured: bool = True) -> None:
        self.clock = clock
        self.host = host
        self.app = app
        self.db = db
        self.pubsub = pubsub
        self.dht = dht
        self.model_stats = model_stats
        self.relay_service = relay_service
        self.relay_client = relay_client
        self.autonat = autonat
        self.autonat_service = autonat_service
        self.bootstrap_peers = tuple(bootstrap_peers)
        self.listen_configured = listen_configured
        self.started_at = clock.seconds()

    # -- readiness --------------------------------------------------------------------

    @property
    def reachability(self) -> str:
        """AutoNAT's verdict: ``public``, ``private`` or ``unknown``."""
        return self.autonat.reachability if self.autonat is not None else "unknown"

    def checks(self) -> list[Check]:
        """The readiness checks: libp2p listening, database open, peers."""
        out = []
        bound = self.host.swarm.listen_addrs()
        if not self.listen_configured:
            out.append(Check("listening", True, "dial-out only (no listen addresses configured)"))
        else:
            out.append(Check("listening", bool(bound),
                             f"listening on {len(bound)} addresses" if bound else "not listening yet"))
        if self.db is None:
            out.append(Check("database", True, "no database"))
        else:
            try:
                version = self.db.schema_version
            except StorageError as exc:
                out.append(Check("database", False, str(exc)))
            else:
                out.append(Check("database", True, f"open, schema version {version}"))
        peers = len(self.host.connected_peers())
        if self.bootstrap_peers:
            out.append(Check("peers", peers > 0, f"{peers} connected peers, "
                             f"{len(self.bootstrap_peers)} bootstrap peers configured"))
        else:
            out.append(Check("peers", True, f"{peers} connected peers, no bootstrap peers configured"))
        return out

    def readiness(self) -> tuple[bool, list[Check]]:
        """``(ready, checks)``: ready when every check passes."""
        checks = self.checks()
        return all(c.ok for c in checks), checks

    # -- the dashboard's state --------------------------------------------------------------

    def state(self) -> dict:
        """This node, its peers, the network's models and the counters, as plain JSON."""
        return {
            "now": self.clock.seconds(),
            "node": self._node(),
            "peers": self._peers(),
            "serving": self._serving(),
            "counters": self._counters(),
        }

    def _node(self) -> dict:
        host = self.host
        relay_service = None
        if self.relay_service is not None:
            relay_service = {"reservations": self.relay_service.active_reservations(),
                             "circuits": self.relay_service.active_circuits,
                             "bytes_relayed": self.relay_service.bytes_relayed}
        reservations = []
        if self.relay_client is not None:
            now = self.clock.seconds()
            for relay, r in sorted(self.relay_client.reservations.items(), key=lambda kv: str(kv[0])):
                reservations.append({"relay": str(relay), "expires_in": max(0.0, r.expire - now),
                                     "addrs": [str(a) for a in r.addrs]})
        dht = None
        if self.dht is not None:
            dht = {"mode": self.dht.mode, "serving": self.dht.serving,
                   "routing_table": len(self.dht.routing_table)}
        return {
            "peer_id": str(host.peer_id),
            "agent_version": AGENT_VERSION,
            "protocol_version": PROTOCOL_VERSION,
            "addresses": [maddr.to_text(a) for a in host.listen_addrs()],
            "reachability": self.reachability,
            "topic": self.app.topic,
            "collector": self.app.collector,
            "uptime": self.clock.seconds() - self.started_at,
            "dht": dht,
            "relay_reservations": reservations,
            "relay_service": relay_service,
            "projects": [{"project": p.project, "models": [m.model for m in p.models]}
                         for p in self.app.projects()],
        }

    def _peers(self) -> list[dict]:
        host = self.host
        topic_peers = set(self.pubsub.peers(self.app.topic)) if self.pubsub is not None else set()
        out = []
        for conn in host.connections()[:MAX_PEERS]:
            latency = host.peerstore.latency(conn.peer)
            out.append({
                "peer": str(conn.peer),
                "addr": str(conn.remote_addr) if conn.remote_addr is not None else "",
                "direction": conn.direction.lower(),
                "relayed": bool(conn.relayed),
                "latency_ms": None if latency is None else round(latency * 1000, 3),
                "agent": host.peerstore.agent(conn.peer) or "",
                "streams": len(conn.session.streams),
                "on_topic": conn.peer in topic_peers,
                "opened": conn.opened_at,
            })
        return out

    def _serving(self) -> list[dict]:
        """Who serves which model: our registry, then heartbeats (fresh ones only), newest first."""
        now = self.clock.seconds()
        own = self.app.node_id
        rows: dict[tuple[str, str, str], dict] = {}
        connected = {str(p) for p in self.host.connected_peers()}
        for project in self.app.projects():
            for model in project.models:
                rows[(project.project, model.model, own)] = {
                    "project": project.project, "model": model.model, "node_id": own,
                    "heartbeat_age": 0.0, "local": True, "connected": False}
        records = self.app.heartbeat_records(PEER_FRESH_AGE, collected=self.app.collector)
        for record in sorted(records, key=lambda r: -r.received_at):
            if record.node_id == own or not _is_peer_id(record.node_id):
                continue
            projects = record.projects if isinstance(record.projects, list) else []
            for entry in projects:
                if not isinstance(entry, dict) or not isinstance(entry.get("project"), str):
                    continue
                for model in entry.get("models") or ():
                    if len(rows) >= MAX_SERVING:
                        break
                    key = (entry["project"], str(model), record.node_id)
                    if key in rows:
                        continue
                    rows[key] = {"project": key[0], "model": key[1], "node_id": record.node_id,
                                 "heartbeat_age": max(0.0, now - record.received_at), "local": False,
                                 "connected": record.node_id in connected}
        return sorted(rows.values(), key=lambda r: (r["project"], r["model"], r["heartbeat_age"]))

    def _counters(self) -> dict:
        swarm = self.host.swarm
        out: dict[str, Any] = {
            "connections_opened": int(swarm.connections_opened.total()),
            "connections_closed": int(swarm.connections_closed.total()),
            "streams_opened": int(swarm.streams_opened.total()),
            "known_peers": len(self.host.peerstore.peers()),
            "fresh_heartbeats": len(self.app.recent_heartbeats(PEER_FRESH_AGE)),
        }
        if self.pubsub is not None:
            out["pubsub"] = self.pubsub.stats
        app = dict(self.app.stats)
        out["application"] = {name: app.get(name, 0) for name in sorted(app)}
        out["model_requests"] = self._model_requests()
        return out

    def _model_requests(self) -> Optional[dict]:
        stats = self.model_stats
        if stats is None:
            return None
        rows = [{"kind": k, "route": r, "code": c, "node": n, "count": int(v)}
                for (k, r, c, n), v in stats.requests.items()]
        rows.sort(key=lambda row: -row["count"])
        total = sum(row["count"] for row in rows)
        ok = sum(row["count"] for row in rows if row["code"] == "0")
        return {"total": total, "ok": ok, "failed": total - ok, "in_flight": stats.in_flight,
                "rows": rows[:MAX_REQUEST_ROWS]}


def _is_peer_id(text: str) -> bool:
    try:
        PeerID.from_string(text)
    except InvalidPeerID:
        return False
    return True
