"""The node: one object behind the HTTP API, composed of the layers below it.

:class:`Node` is the :class:`~aicn.node.backend.NodeBackend` of a running
node.  The AICN application answers peer, host-info and project endpoints
(inherited from :class:`~aicn.node.appbackend.ApplicationBackend`); the
libp2p host answers ``/id`` and the swarm endpoints; the DHT answers
rendezvous queries; the model endpoints come from
:class:`~aicn.node.modelapi.ModelBackend`, the OpenAI-compatible ones
(``/v1``) from :class:`~aicn.node.openairoute.OpenAIRouting`, image edits
from :class:`~aicn.node.imageedit.ImageEditBackend`, the bootstrap list from
:class:`~aicn.node.bootstrap.BootstrapPeers`.  Anything not wired answers 1010.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from aicn import AGENT_VERSION, PROTOCOL_VERSION
from aicn.errors import AICNError, ErrorCode, parameter_error, unsupported
from aicn.duration import format_go_duration
from aicn.log import Logger
from aicn.node.appbackend import ApplicationBackend
from aicn.node.bootstrap import BootstrapPeers
from aicn.node.imageedit import ImageEditBackend
from aicn.node.modelapi import ModelBackend
from aicn.node.modelstats import ModelRequestStats
from aicn.node.modelwork import ModelWorker
from aicn.node.openairoute import OpenAIRouting
from aicn.node.routing import NodeSelector
from aicn.p2p import maddr
from aicn.p2p.host import Host
from aicn.p2p.peerid import InvalidPeerID, PeerID
from aicn.p2p.peerstore import PERMANENT_ADDR_TTL

log = Logger()

#: How long ``/swarm/connect`` waits for a dial (the Go node: 60 s).
CONNECT_TIMEOUT = 60.0
#: Connection tag of peers connected through ``/swarm/connect``.
USER_CONNECT_TAG = "user-connect"


def identify_dict(host: Host) -> dict:
    """``/api/v0/id`` and PEER_IDENTITY answers: what we are and where we listen."""
    return {
        "peer_id": str(host.peer_id),
        "protocol_version": PROTOCOL_VERSION,
        "agent_version": AGENT_VERSION,
        "addresses": [maddr.to_text(a) for a in host.listen_addrs()],
        "protocols": host.protocols,
    }


class Node(OpenAIRouting, ImageEditBackend, ModelBackend, ApplicationBackend):
    """The backend of the HTTP API for a running node.

    ``worker`` serves our registered models (default: one over ``app``'s
    registry); ``selector`` ranks nodes for ``/proxy`` requests (default: a
    :class:`~aicn.node.routing.NodeSelector` on the reactor's clock);
    ``bootstrap`` keeps the bootstrap list (without one the bootstrap
    endpoints answer 1010).
    """

    def __init__(self, reactor, host: Host, app, *, dht=None, topic: str = "DeepBrainChain",
                 worker: ModelWorker | None = None, selector: NodeSelector | None = None,
                 bootstrap: BootstrapPeers | None = None) -> None:
        super().__init__(app)
        self.bootstrap = bootstrap
        self.reactor = reactor
        self.host = host
        self.dht = dht
        self.topic = topic
        self.worker = worker if worker is not None else ModelWorker(reactor, app.projects, node_id=app.node_id)
        self.selector = selector if selector is not None else NodeSelector(reactor)
        self._models_seen: dict = {}
        self.model_stats = ModelRequestStats(reactor)

    # -- /api/v0/id -------------------------------------------------------------------------

    def identify_info(self) -> dict:
        return identify_dict(self.host)

    # -- rendezvous -------------------------------------------------------------------------

    async def rendezvous_peers(self) -> list:
        if self.dht is None:
            return await super().rendezvous_peers()
        try:
            found = await self.dht.find_rendezvous_peers(self.topic)
        except Exception as exc:  # lookups fail in many ways; the client gets the reason
            raise AICNError(ErrorCode.RENDEZVOUS, f"Rendezvous error: {exc}") from None
        return [str(peer) for peer, _ in found]

    # -- swarm ------------------------------------------------------------------------------

    async def swarm_peers(self) -> list:
        out = []
        for conn in self.host.connections():
            latency = self.host.peerstore.latency(conn.peer)
            out.append({
                "id": conn.id,
                "peer": str(conn.peer),
                "addr": str(conn.remote_addr) if conn.remote_addr is not None else "",
                "latency": format_go_duration(latency or 0.0),
                "direction": conn.direction,
            })
        return out

    async def swarm_addrs(self) -> list:
        from multiaddr import Multiaddr

        out = []
        store = self.host.peerstore
        for peer in store.peers():
            if peer == self.host.peer_id:
                continue
            addrs = []
            for raw in store.addrs(peer):
                try:
                    addrs.append(str(Multiaddr(raw)))
                except Exception:  # the peerstore validated them; be defensive anyway
                    continue
            if addrs:
                out.append({"peer": str(peer), "addrs": addrs})
        return out

    @staticmethod
    def _parse_peer_addr(text: str):
        try:
            transport, peer = maddr.split_peer(text)
        except maddr.InvalidMultiaddr as exc:
            raise parameter_error(f"invalid node_addr: {exc}") from None
        if peer is None:
            raise parameter_error("node_addr must end with /p2p/<peer id>")
        return transport, peer

    async def swarm_connect(self, addr: str) -> None:
        transport, peer = self._parse_peer_addr(addr)
        if peer == self.host.peer_id:
            raise parameter_error("Cannot connect to the node itself")
        if str(transport):
            self.host.peerstore.add_addrs(peer, [transport.to_bytes()], PERMANENT_ADDR_TTL)
        try:
            d = Deferred.fromCoroutine(self.host.connect(peer, [transport] if str(transport) else None))
            conn = await d.addTimeout(CONNECT_TIMEOUT, self.reactor)
        except Exception as exc:  # DialError, timeout: the reason goes to the client
            log.info("swarm/connect to {addr} failed: {error}", addr=addr, error=exc)
            raise AICNError(ErrorCode.INTERNAL, f"Internal server error: {exc}") from None
        conn.tags.add(USER_CONNECT_TAG)

    async def swarm_disconnect(self, addr: str) -> None:
        _, peer = self._parse_peer_addr(addr)
        if not self.host.disconnect(peer):
            raise AICNError(ErrorCode.INTERNAL, f"Internal server error: not connected to {peer}")

    def connection_facts(self, node_id: str) -> tuple[int, int]:
        """``(connectivity, latency)`` as Go v0.2.3: 1 connected, else 0; the round trip in µs (0: none)."""
        try:
            peer = PeerID.from_string(node_id)
        except InvalidPeerID:
            return 0, 0
        latency = self.host.peerstore.latency(peer)
        return (1 if self.host.is_connected(peer) else 0), int(round((latency or 0.0) * 1e6))

    # -- bootstrap peers (Go v0.2.3) --------------------------------------------------------

    def _bootstrap(self) -> BootstrapPeers:
        if self.bootstrap is None:
            raise unsupported()
        return self.bootstrap

    async def bootstrap_list(self) -> list[str]:
        return self._bootstrap().list()

    async def bootstrap_add(self, addr: str) -> None:
        await self._bootstrap().add(addr)

    async def bootstrap_remove(self, addr: str) -> None:
        await self._bootstrap().remove(addr)
