"""Wiring: settings in, a running node out, as a tree of Twisted services.

``twistd aicn`` (see ``twisted/plugins/aicn_plugin.py``) calls
:func:`makeService`.  :class:`NodeService` is a ``MultiService`` whose
children are the node's parts, in start order (stopped in reverse):

1. construction locks the data directory (``aicn.lock``: one node per
   directory), loads the identity key and opens the database (fatal, with a
   clear message, when any is unusable); the lock goes once the node stops;
2. ``host``, ``listen``: the libp2p host on the listen addresses;
3. ``pubsub``, ``connmgr``, ``dial-history``, ``dht``, the relay and AutoNAT
   parts, ``app`` (topic subscription, heartbeats);
4. ``api``: the HTTP API, a ``StreamServerEndpointService``;
5. ``join-network``, once both listen: dial the history and bootstrap peers,
   start the DHT and advertise the rendezvous record.

A start-up failure (a port in use) stops the reactor with a critical log;
under twistd the process then exits with status 1 (:func:`makeService`).

Everything takes the reactor as an argument; only :func:`makeService`, the
twistd edge, picks the global one.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.python.failure import Failure

from aicn import AGENT_VERSION, __version__, hostinfo
from aicn.api.app import NodeAPI
from aicn.api.site import APISite
from aicn.config import ConfigError, NodeSettings, Options, load_settings
from aicn.datadir import DataDirLock, DataDirLockError
from aicn.identity import ensure_data_dir, load_identity
from aicn.log import Logger, log_to_file, set_log_level
from aicn.wire import protocol_pb2 as pb
from aicn.node.application import Application
from aicn.node.bootstrap import BootstrapPeers
from aicn.node.chatproxy import CHAT_PROXY
from aicn.node.dialhistory import DialHistory, connect_startup_peers, parse_bootstrap
from aicn.node.envelope import BODY_TYPES
from aicn.node.modelwork import ModelWorker
from aicn.node.node import Node, identify_dict
from aicn.node.reach import Reachability
from aicn.node.status import NodeStatus
from aicn.p2p.connmgr import ConnectionManager
from aicn.p2p.host import Host
from aicn.p2p.kad import KadDHT
from aicn.p2p.peerid import InvalidPeerID, PeerID
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


class ComponentService(service.Service):
    """One component's ``start``/``stop`` as a child service.

    ``stop`` may return a Deferred or a coroutine; ``stopService`` hands it to
    the parent, which waits for it (children stop in reverse order).
    """

    def __init__(self, name: str, start: Callable[[], Any] | None = None,
                 stop: Callable[[], Any] | None = None) -> None:
        self.setName(name)
        self._start, self._stop = start, stop

    def startService(self) -> None:
        super().startService()
        if self._start is not None:
            self._start()

    def stopService(self):
        super().stopService()
        if self._stop is None:
            return None
        result = self._stop()
        if isinstance(result, Coroutine):
            return Deferred.fromCoroutine(result)
        return result


class TaskService(service.Service):
    """A coroutine run once the service starts, cancelled when it stops.

    ``failed`` is called with the failure of a task that raises; the default
    logs it.
    """

    def __init__(self, name: str, task: Callable[[], Coroutine], *,
                 failed: Callable[[Failure], None] | None = None) -> None:
        self.setName(name)
        self._task = task
        self._failed = failed
        self.done: Deferred | None = None

    def startService(self) -> None:
        super().startService()
        self.done = Deferred.fromCoroutine(self._task())
        self.done.addErrback(self._report)

    def _report(self, failure: Failure) -> None:
        if failure.check(CancelledError) and not self.running:
            return None
        if self._failed is not None:
            self._failed(failure)
        else:
            log.failure("{name} failed", failure=failure, name=self.name)
        return None

    def stopService(self):
        super().stopService()
        if self.done is not None and not self.done.called:
            self.done.cancel()


class _ListeningEndpoint:
    """A server endpoint that tells us when it listens (or cannot).

    A failure goes to ``listening`` only: the node reports it once, as a
    start-up error, instead of ``StreamServerEndpointService`` logging a
    traceback too.
    """

    def __init__(self, endpoint, listening: Deferred) -> None:
        self._endpoint = endpoint
        self._listening = listening

    def listen(self, factory):
        d = self._endpoint.listen(factory)
        d.addCallbacks(self._listened, self._failed)
        return d

    def _listened(self, port):
        self._listening.callback(port)
        return port

    def _failed(self, failure):
        self._listening.errback(failure)
        return None  # the service then has no port to stop


class NodeService(service.MultiService):
    """The whole node, as a tree of child services.

    Construction opens the node's files (identity key, database) and builds
    the components; each component is a named child (``host``, ``pubsub``,
    ``dht``, ``app``, ``api`` …, see :meth:`namedServices`), started in the
    order added and stopped in reverse, so the database closes last.
    :attr:`ready` fires once the libp2p host listens and the API serves.
    """

    def __init__(self, settings: NodeSettings, reactor) -> None:
        super().__init__()
        self.settings = settings
        self.reactor = reactor
        #: Held from here until the node has stopped (see :mod:`aicn.datadir`).
        self.lock = DataDirLock(settings.data_dir)
        try:
            ensure_data_dir(settings.data_dir)
            # Before the key and the database: a second node must not touch them.
            self.lock.acquire()
            self.key = load_identity(settings)
            self.db = Database(settings.data_dir / DB_FILE)
        except (ConfigError, StorageError, DataDirLockError) as exc:
            self.lock.release()
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
                                  default_ipfs=settings.ipfs_api,
                                  edit_max_body=settings.image_edit_max_body_bytes)
        self.app = Application(reactor, self.key, self.pubsub, self.db, settings,
                               identify_provider=lambda: identify_dict(self.host),
                               hostinfo_provider=lambda: hostinfo.collect_in_thread(reactor),
                               model_handlers=self.worker.model_handlers(),
                               request_timeouts=request_timeouts(settings.config.app.request_timeout),
                               reachability=Reachability(reactor, self.pubsub, settings.topic, host=self.host,
                                                         dht=self.dht),
                               peer_agent=self._peer_agent, model_load=self.worker.in_flight)
        # A call starting or ending changes the `idle` our v0.2.3 heartbeats carry.
        self.worker.on_load_change = self.app.load_changed
        self.host.set_stream_handler(CHAT_PROXY, self.worker.chat_proxy_handler())
        self.bootstrap = BootstrapPeers(self.host, reactor, settings.bootstrap, connmgr=self.connmgr,
                                        dht=self.dht, relay_client=self.relay_client,
                                        config_path=settings.config_path)
        self.node = Node(reactor, self.host, self.app, dht=self.dht, topic=settings.topic, worker=self.worker,
                         bootstrap=self.bootstrap)
        #: What the metrics, health checks and dashboard read.
        self.status = NodeStatus(reactor, host=self.host, app=self.app, db=self.db, pubsub=self.pubsub,
                                 dht=self.dht, model_stats=self.node.model_stats,
                                 relay_service=self.relay_service, relay_client=self.relay_client,
                                 autonat=self.autonat, autonat_service=self.autonat_service,
                                 bootstrap_peers=list(bootstrap), listen_configured=bool(settings.listen))
        self.api = NodeAPI(self.node, token=settings.api_token, max_body=settings.max_body_bytes,
                           clock=reactor, envelope=settings.api_envelope,
                           image_edit_max_body=settings.image_edit_max_body_bytes, status=self.status)
        api = settings.config.api
        #: The HTTP API's site (its ``stats``).
        self.site = APISite(self.api.resource(), reactor=reactor, header_timeout=api.header_timeout,
                            body_timeout=api.body_timeout, idle_timeout=api.idle_timeout,
                            max_connections=api.max_connections,
                            max_body=max(settings.max_body_bytes, settings.image_edit_max_body_bytes))
        #: The API's listening port, once it listens.
        self.api_port = None
        #: Why the start failed (the failure), or None.
        self.start_failure: Failure | None = None
        #: Fires once the host listens and the API serves (tests and tools wait on it).
        self.ready: Deferred = Deferred()
        self._listening: Deferred = Deferred()
        self._up: Deferred = Deferred()  # as ready, for join-network alone
        self._build_tree()

    def _build_tree(self) -> None:
        """The children, in start order; each stops before the ones added before it."""
        add = self.addService
        add(ComponentService("database", stop=self.db.close))
        add(ComponentService("host", stop=self.host.stop))
        add(TaskService("listen", self._listen, failed=self._start_failed))
        add(ComponentService("pubsub", stop=self.pubsub.close))
        add(ComponentService("connmgr", self.connmgr.start, self.connmgr.stop))
        add(ComponentService("dial-history", self.dial_history.start, self.dial_history.stop))
        add(ComponentService("dht", stop=self.dht.stop))
        for name, svc in (("relay-service", self.relay_service), ("autonat-service", self.autonat_service)):
            if svc is not None:
                add(ComponentService(name, svc.start, svc.stop))
        # Before any dial, so that the first identified peers are asked.
        add(ComponentService("autonat", self.autonat.start, self.autonat.stop))
        add(ComponentService("relay-client", stop=self.relay_client.stop))
        add(ComponentService("app", self.app.start, self.app.stop))
        api = StreamServerEndpointService(_ListeningEndpoint(self._api_endpoint(), self._listening),
                                          self.site)
        api.setName("api")
        add(api)
        add(TaskService("join-network", self._join_network))

    def startService(self) -> None:
        log.info("aicn {version} starting as {peer_id} (data dir {data_dir})", version=__version__,
                 peer_id=str(self.key.peer_id()), data_dir=str(self.settings.data_dir))
        self.lock.write_pid()  # twistd may have forked into a daemon since we locked
        super().startService()

    async def _listen(self) -> None:
        """The host's listeners and the API's, then :attr:`ready`."""
        bound = await self.host.start(self.settings.listen)
        self.api_port = await self._listening
        api_host = self.api_port.getHost()
        log.info("aicn {agent} ready: peer {peer_id}, p2p {addrs}, API http://{host}:{port}",
                 agent=AGENT_VERSION, peer_id=str(self.host.peer_id), addrs=[str(a) for a in bound],
                 host=self.settings.api_host, port=api_host.port)
        self._up.callback(None)
        self.ready.callback(None)

    def _peer_agent(self, node_id: str) -> str | None:
        """Identify's ``agent_version`` of a peer (a Go node's release), or None."""
        try:
            return self.host.peerstore.agent(PeerID.from_string(node_id))
        except InvalidPeerID:
            return None

    def _reachability_changed(self, reachability: str) -> None:
        public = reachability == "public"
        log.info("Reachability is now {reachability}", reachability=reachability)
        self.dht.set_reachability(public)
        if not self.settings.relay_client:
            self.relay_client.set_reachability(public)

    async def _join_network(self) -> None:
        """Once ready: dial known peers, then bring up the DHT and advertise ourselves."""
        try:
            await self._up
        except Exception:
            return  # the start failed, and _start_failed said why
        summary = await connect_startup_peers(self.host, self.db, self.settings.bootstrap, self.reactor,
                                              self.connmgr)
        log.info("Startup dials: {history} history and {bootstrap} bootstrap peers connected",
                 history=len(summary.history_connected), bootstrap=len(summary.bootstrap_connected))
        await self.dht.start()
        self.dht.advertise(self.settings.topic)
        if self.settings.relay_client:
            self.relay_client.start()

    def stopService(self):
        """Stop the children one at a time, last added first.

        Unlike ``MultiService``, which stops them all at once, each child
        stops only after the one added after it has stopped: the host's
        connections close before the database does.
        """
        service.Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_children())

    async def _stop_children(self) -> None:
        for child in reversed(list(self)):
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                log.failure("stopping {name} failed", name=child.name)
        self.lock.release()  # the database is closed: another node may have the directory

    def _api_endpoint(self):
        host, port = self.settings.api_host, self.settings.api_port
        if ":" in host:
            return endpoints.TCP6ServerEndpoint(self.reactor, port, LISTEN_BACKLOG, interface=host)
        return endpoints.TCP4ServerEndpoint(self.reactor, port, LISTEN_BACKLOG, interface=host)

    def _start_failed(self, failure: Failure) -> None:
        self.start_failure = failure
        log.critical("aicn cannot start: {error}", error=failure.getErrorMessage())
        if not self._up.called:
            self._up.errback(failure)
        if not self.ready.called:
            self.ready.errback(failure)
            self.ready.addErrback(lambda _: None)  # logged above; waiters already had it
        # The failure can come before twistd has started the reactor.
        if self.reactor.running:
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)


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
        node = NodeService(settings, reactor)
    except (ConfigError, StartupError) as exc:
        raise SystemExit(f"aicn: {exc}") from None
    atexit.register(_exit_status, node)
    return node


def _exit_status(node: NodeService) -> None:
    """At interpreter exit: status 1 when the node failed to start.

    twistd returns normally once its reactor has stopped, so a node whose
    start failed after the reactor ran (a port in use) would exit with 0,
    and a supervisor would take the failure for a clean stop.  Nothing in
    twistd carries an exit status, so this hook, registered by the twistd
    edge only (in-process nodes never exit the process), ends the process
    with ``os._exit(1)``.  It runs at interpreter exit, after twistd's own
    clean-up (pid file, log observers), not in a shutdown trigger; it
    flushes stdio first, as ``os._exit`` skips that.
    """
    if node.start_failure is None:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken: nothing left to save
            pass
    os._exit(1)
