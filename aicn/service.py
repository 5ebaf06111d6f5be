"""Wiring: settings in, a running node out, as a Twisted ``MultiService``.

``twistd aicn`` (see ``twisted/plugins/aicn_plugin.py``) calls
:func:`makeService`.  :class:`NodeService` owns the pieces and their order:

1. load the identity key and open the database (fatal, with a clear message,
   when either is unusable);
2. start the libp2p host on the listen addresses, with floodsub, the
   connection manager and the dial history;
3. serve the HTTP API;
4. in the background: dial the history and bootstrap peers, start the DHT
   (and advertise the rendezvous record), start the AICN application
   (topic subscription, heartbeats).

Everything takes the reactor as an argument; only :func:`makeService`, the
twistd edge, picks the global one.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred

from aicn import AGENT_VERSION, __version__, hostinfo
from aicn.api.app import NodeAPI
from aicn.api.site import APISite
from aicn.config import ConfigError, NodeSettings, Options, load_settings
from aicn.identity import ensure_data_dir, load_identity
from aicn.log import Logger, log_to_file, set_log_level
from aicn.wire import protocol_pb2 as pb
from aicn.node.application import Application
from aicn.node.chatproxy import CHAT_PROXY
from aicn.node.dialhistory import DialHistory, connect_startup_peers, parse_bootstrap
from aicn.node.envelope import BODY_TYPES
from aicn.node.modelwork import ModelWorker
from aicn.node.node import Node, identify_dict
from aicn.node.reach import Reachability
from aicn.p2p.connmgr import ConnectionManager
from aicn.p2p.host import Host
from aicn.p2p.kad import KadDHT
from aicn.p2p.autonat import AutoNATClient, AutoNATService
from aicn.p2p.pubsub import FloodSub
from aicn.p2p.relay import RelayClient, RelayLimits, RelayService
from aicn.p2p.swarm import DIAL_TIMEOUT, LISTEN_BACKLOG
from aicn.storage import DB_FILE, Database, StorageError

log = Logger()

#: How long a requester waits for model answers over pubsub (Go HEAD: 3 and 5
#: minutes; a little more than the worker's own model limits, so that the
#: worker's 1006 "timeout" arrives before our 1004).
MODEL_REQUEST_TIMEOUTS = {pb.CHAT_COMPLETION: 190.0, pb.IMAGE_GENERATION: 330.0}


def request_timeouts(configured: float | None) -> dict[int, float]:
    """Per-type request timeouts: ``App.RequestTimeout`` for every type when
    set, else the 120 s default and :data:`MODEL_REQUEST_TIMEOUTS`."""
    return MODEL_REQUEST_TIMEOUTS if configured is None else dict.fromkeys(BODY_TYPES, configured)


def relay_limits(config) -> RelayLimits:
    """The relay service's limits from ``Swarm.RelayService``."""
    return RelayLimits(
        duration=int(config.max_duration),
        data=config.max_data,
        reservation_ttl=int(config.reservation_ttl),
        max_reservations=config.max_reservations,
        max_reservations_per_ip=config.max_reservations_per_ip,
        max_circuits=config.max_circuits,
        max_circuits_per_peer=config.max_circuits_per_peer,
    )


def raise_fd_limit(settings: NodeSettings) -> int:
    """Raise the soft open-file limit to the hard one (as the Go runtime does
    at start), so that the configured bounds, not ``EMFILE``, limit the node;
    warn when even that is below what the bounds may need.  Returns the limit."""
    try:
        import resource
    except ImportError:  # not POSIX
        return 0
    swarm, api = settings.config.swarm, settings.config.api
    needed = (swarm.max_inbound_connections + swarm.conn_mgr.high_water + api.max_connections
              + 256)  # outbound dials, model and IPFS calls, the database, logs
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warn("Cannot raise the open-file limit from {soft} to {target}: {error}", soft=soft,
                     target=target, error=exc)
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warn("The open-file limit {limit} is below the {needed} descriptors the connection limits "
                 "allow (Swarm.MaxInboundConnections, Swarm.ConnMgr.HighWater, API.MaxConnections)",
                 limit=soft, needed=needed)
    return soft


class StartupError(Exception):
    """The node cannot start; the message says why."""


class NodeService(service.MultiService):
    """The whole node: host, API and background work."""

    def __init__(self, settings: NodeSettings, reactor) -> None:
        super().__init__()
        self.settings = settings
        self.reactor = reactor
        try:
            ensure_data_dir(settings.data_dir)
            self.key = load_identity(settings)
            self.db = Database(settings.data_dir / DB_FILE)
        except (ConfigError, StorageError) as exc:
            raise StartupError(str(exc)) from None
        swarm = settings.config.swarm
        self.host = Host(reactor, self.key, psk=settings.psk, handshake_timeout=swarm.handshake_timeout,
                         dial_timeout=settings.dial_timeout or DIAL_TIMEOUT,
                         max_inbound=swarm.max_inbound_connections,
                         max_pending_inbound=swarm.max_pending_handshakes)
        self.pubsub = FloodSub(self.host, reactor)
        self.connmgr = ConnectionManager.from_config(self.host, reactor, settings.connmgr)
        self.dial_history = DialHistory(self.host, self.db, reactor)
        bootstrap = parse_bootstrap(settings.bootstrap, self.host.peer_id)
        self.dht = KadDHT(self.host, reactor, protocol=settings.kad_protocol, mode=settings.dht_mode,
                          bootstrap_peers=list(bootstrap.items()), route_dials=True)
        # NAT traversal: a relay service on public nodes, reservations on the
        # bootstrap relays when we are not reachable, AutoNAT to find out.
        self.relay_service = (RelayService(self.host, reactor, relay_limits(settings.config.swarm.relay_service))
                              if settings.relay_service else None)
        self.autonat_service = (AutoNATService(self.host, reactor, allow_private=settings.autonat_allow_private)
                                if settings.autonat_service else None)
        self.autonat = AutoNATClient(self.host, reactor)
        self.relay_client = RelayClient(self.host, reactor, relays=list(bootstrap.items()))
        self.autonat.add_listener(self._reachability_changed)
        # The worker reads the registry through the application, which is built
        # with the worker's handlers: hence the lambda.
        self.worker = ModelWorker(reactor, lambda: self.app.projects(), node_id=str(self.key.peer_id()),
                                  default_ipfs=settings.ipfs_api)
        self.app = Application(reactor, self.key, self.pubsub, self.db, settings,
                               identify_provider=lambda: identify_dict(self.host),
                               hostinfo_provider=lambda: hostinfo.collect_in_thread(reactor),
                               model_handlers=self.worker.model_handlers(),
                               request_timeouts=request_timeouts(settings.config.app.request_timeout),
                               reachability=Reachability(reactor, self.pubsub, settings.topic, host=self.host,
                                                         dht=self.dht))
        self.host.set_stream_handler(CHAT_PROXY, self.worker.chat_proxy_handler())
        self.node = Node(reactor, self.host, self.app, dht=self.dht, topic=settings.topic, worker=self.worker)
        self.api = NodeAPI(self.node, token=settings.api_token, max_body=settings.max_body_bytes)
        self._api_port = None
        #: The HTTP API's site (its ``stats``), once serving.
        self.site: APISite | None = None
        self._tasks: set[Deferred] = set()
        #: Fires once the host listens and the API serves (tests and tools wait on it).
        self.ready: Deferred = Deferred()

    def startService(self) -> None:
        super().startService()
        log.info("aicn {version} starting as {peer_id} (data dir {data_dir})", version=__version__,
                 peer_id=str(self.key.peer_id()), data_dir=str(self.settings.data_dir))
        Deferred.fromCoroutine(self._start()).addCallbacks(self.ready.callback, self._start_failed)

    async def _start(self) -> None:
        bound = await self.host.start(self.settings.listen)
        self.connmgr.start()
        self.dial_history.start()
        for svc in (self.relay_service, self.autonat_service):
            if svc is not None:
                svc.start()
        # Before any dial, so that the first identified peers are asked.
        self.autonat.start()
        self.app.start()
        api = self.settings.config.api
        site = APISite(self.api.resource(), reactor=self.reactor, header_timeout=api.header_timeout,
                       body_timeout=api.body_timeout, idle_timeout=api.idle_timeout,
                       max_connections=api.max_connections)
        self.site = site
        self._api_port = await self._api_endpoint().listen(site)
        api_host = self._api_port.getHost()
        log.info("aicn {agent} ready: peer {peer_id}, p2p {addrs}, API http://{host}:{port}",
                 agent=AGENT_VERSION, peer_id=str(self.host.peer_id), addrs=[str(a) for a in bound],
                 host=self.settings.api_host, port=api_host.port)
        self._background(self._join_network())

    def _reachability_changed(self, reachability: str) -> None:
        public = reachability == "public"
        log.info("Reachability is now {reachability}", reachability=reachability)
        self.dht.set_reachability(public)
        if not self.settings.relay_client:
            self.relay_client.set_reachability(public)

    async def _join_network(self) -> None:
        """Dial known peers, then bring up the DHT and advertise ourselves."""
        summary = await connect_startup_peers(self.host, self.db, self.settings.bootstrap, self.reactor,
                                              self.connmgr)
        log.info("Startup dials: {history} history and {bootstrap} bootstrap peers connected",
                 history=len(summary.history_connected), bootstrap=len(summary.bootstrap_connected))
        await self.dht.start()
        self.dht.advertise(self.settings.topic)
        if self.settings.relay_client:
            self.relay_client.start()

    def _background(self, coro) -> None:
        d = Deferred.fromCoroutine(coro)
        self._tasks.add(d)
        d.addErrback(lambda f: log.failure("background start-up task failed", failure=f))
        d.addBoth(lambda _: self._tasks.discard(d))

    def _api_endpoint(self):
        host, port = self.settings.api_host, self.settings.api_port
        if ":" in host:
            return endpoints.TCP6ServerEndpoint(self.reactor, port, LISTEN_BACKLOG, interface=host)
        return endpoints.TCP4ServerEndpoint(self.reactor, port, LISTEN_BACKLOG, interface=host)

    def _start_failed(self, failure) -> None:
        log.critical("aicn cannot start: {error}", error=failure.getErrorMessage())
        self.ready.errback(failure)
        self.ready.addErrback(lambda _: None)  # logged above; waiters already had it
        # The failure can come before twistd has started the reactor.
        if self.reactor.running:
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)

    async def _stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._api_port is not None:
            await self._api_port.stopListening()
        self.app.stop()
        self.autonat.stop()
        self.relay_client.stop()
        for svc in (self.relay_service, self.autonat_service):
            if svc is not None:
                svc.stop()
        await self.dht.stop()
        self.pubsub.close()
        self.dial_history.stop()
        self.connmgr.stop()
        await self.host.stop()
        self.db.close()

    def stopService(self):
        super().stopService()
        return Deferred.fromCoroutine(self._stop())


def makeService(options, reactor=None) -> service.MultiService:
    """twistd's entry point: resolve settings and build the node service."""
    if reactor is None:
        from twisted.internet import reactor
    try:
        settings = load_settings(options)
        set_log_level(settings.log_level)
        log_file = settings.config.app.log_file
        if log_file and "file" in settings.config.app.log_output.split("+"):
            log_to_file(log_file)
        raise_fd_limit(settings)
        return NodeService(settings, reactor)
    except (ConfigError, StartupError) as exc:
        raise SystemExit(f"aicn: {exc}") from None
