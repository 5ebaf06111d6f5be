"""The config file's typed model: one frozen class per section, Go's defaults.

The classes mirror the Go node's ``config.Config`` (``pkg/config``) key for
key, so that a Go config round-trips; fields that aicn does not act on are
kept (and said so where they are read, in :mod:`aicn.config.reader`).
"""

from __future__ import annotations

import attrs

from aicn.p2p.swarm import DEFAULT_MAX_INBOUND, DEFAULT_MAX_PENDING_INBOUND
from aicn.p2p.upgrade import DEFAULT_HANDSHAKE_TIMEOUT

__all__ = [
    "ConfigError",
    "DBC_PSK_HEX",
    "DEFAULT_LISTEN",
    "DEFAULT_API_HOST",
    "DEFAULT_API_PORT",
    "DEFAULT_DATA_DIR",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_INBOUND",
    "DEFAULT_MAX_PENDING_HANDSHAKES",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_IMAGE_EDIT_MAX_BODY_BYTES",
    "MAX_IMAGE_EDIT_BODY_BYTES",
    "API_ENVELOPES",
    "WIRE_VERSIONS",
    "MAX_REQUEST_TIMEOUT",
    "ConnMgrConfig",
    "RelayClientConfig",
    "RelayServiceConfig",
    "SwarmConfig",
    "PubsubConfig",
    "RoutingConfig",
    "PeersCollectConfig",
    "AutoUpgradeConfig",
    "AppConfig",
    "APIConfig",
    "IdentityConfig",
    "AIModel",
    "AIProject",
    "Config",
]

#: The pre-shared key of the public DBC network (digest §2).
DBC_PSK_HEX = "f504f536a912a8cf7d00adacee8ed20270c5040d961d7f3da4fccbcbec0ec48a"
DEFAULT_LISTEN = ("/ip4/0.0.0.0/tcp/6001", "/ip6/::/tcp/6001")
DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 6000
DEFAULT_DATA_DIR = "~/.aicn"
DEFAULT_MAX_BODY_BYTES = 1 << 20
#: HTTP API slow-client bounds (``API.HeaderTimeout``, ``BodyTimeout``, ``IdleTimeout``, ``MaxConnections``).
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_MAX_CONNECTIONS = 1024
#: libp2p listener bounds (``Swarm.MaxInboundConnections``, ``MaxPendingHandshakes``; with
#: ``HandshakeTimeout``, aicn.p2p.upgrade.DEFAULT_HANDSHAKE_TIMEOUT): the swarm's defaults.
DEFAULT_MAX_PENDING_HANDSHAKES = DEFAULT_MAX_PENDING_INBOUND
#: ``API.ImageEditMaxBodyBytes``: image/edit bodies carry images (multipart or base64).
DEFAULT_IMAGE_EDIT_MAX_BODY_BYTES = 32 << 20
#: The most ``API.ImageEditMaxBodyBytes`` may be: the body is held in memory while it is checked.
MAX_IMAGE_EDIT_BODY_BYTES = 256 << 20
#: ``API.Envelope``: the response shapes of the HTTP API, the spec's first (the default).
API_ENVELOPES = ("v0.1.2", "v0.2.3")
#: ``App.WireVersion``: the schemas our heartbeats can be sent in, the default (the newer) first.
WIRE_VERSIONS = ("v0.2.3", "v0.1.2")
#: Longest wait for a remote node's answer (``App.RequestTimeout``, a request's ``timeout``).
MAX_REQUEST_TIMEOUT = 900.0

ROUTING_TYPES = ("auto", "none", "dhtclient", "dhtserver")
ROUTING_TO_DHT_MODE = {"auto": "auto", "dhtclient": "client", "dhtserver": "server", "none": "client"}
DHT_MODES = ("client", "server", "auto")
PUBSUB_ROUTERS = ("gossipsub", "floodsub")
CONNMGR_TYPES = ("basic", "none")
LOG_OUTPUTS = ("stderr", "stdout", "file")
# Go (zap) level names, and twisted's, mapped to twisted log level names.
LOG_LEVELS = {
    "debug": "debug",
    "info": "info",
    "warn": "warn",
    "warning": "warn",
    "error": "error",
    "dpanic": "critical",
    "panic": "critical",
    "fatal": "critical",
    "critical": "critical",
}
UINT32_MAX = (1 << 32) - 1


class ConfigError(ValueError):
    """The configuration (file or options) is invalid; the message names the key."""


@attrs.frozen
class ConnMgrConfig:
    """``Swarm.ConnMgr``."""

    type: str = "basic"
    grace_period: float = 20.0
    high_water: int = 400
    low_water: int = 100


@attrs.frozen
class RelayClientConfig:
    """``Swarm.RelayClient`` (``StaticRelays`` is kept but ignored, as in Go)."""

    enabled: bool = False
    static_relays: tuple[str, ...] = ()


@attrs.frozen
class RelayServiceConfig:
    """``Swarm.RelayService``; enabled also means "public node".

    The limits are aicn extensions (go keeps its library's 2 min / 128 KiB,
    too little for a model stream): per circuit ``MaxDuration`` (Go duration)
    and ``MaxData`` (bytes each way; 0 = unlimited), ``ReservationTTL``, and
    the counts ``MaxReservations``, ``MaxReservationsPerIP``, ``MaxCircuits``,
    ``MaxCircuitsPerPeer``.
    """

    enabled: bool = False
    max_duration: float = 3600.0
    max_data: int = 1 << 30
    reservation_ttl: float = 3600.0
    max_reservations: int = 128
    max_reservations_per_ip: int = 16
    max_circuits: int = 256
    max_circuits_per_peer: int = 16


@attrs.frozen
class SwarmConfig:
    """``Swarm``."""

    conn_mgr: ConnMgrConfig = ConnMgrConfig()
    disable_nat_port_map: bool = False
    relay_client: RelayClientConfig = RelayClientConfig()
    relay_service: RelayServiceConfig = RelayServiceConfig()
    enable_hole_punching: bool = False
    enable_autonat_service: bool = False
    #: aicn extension ``Swarm.AutoNATServiceAllowPrivate``: the AutoNAT
    #: service also dials back private (RFC 1918, ULA, link-local) addresses,
    #: for LAN and lab networks whose "public" side is itself private.
    autonat_service_allow_private: bool = False
    #: Seconds, or ``None`` for the library default (Go's ``""``).
    dial_timeout: float | None = None
    #: aicn extensions, the listener's bounds: open inbound connections (pending
    #: ones included), upgrades running at once, and seconds an upgrade may take.
    max_inbound_connections: int = DEFAULT_MAX_INBOUND
    max_pending_handshakes: int = DEFAULT_MAX_PENDING_HANDSHAKES
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT


@attrs.frozen
class PubsubConfig:
    """``Pubsub`` (``Enabled`` is forced on, as in Go).

    ``Router`` defaults to ``floodsub``, what aicn runs and what every Go
    config template since v0.1.5 names; ``gossipsub`` is read with a warning.
    """

    enabled: bool = True
    router: str = "floodsub"
    flood_publish: bool = False


@attrs.frozen
class RoutingConfig:
    """``Routing``."""

    type: str = "auto"
    protocol_prefix: str = "/dbc"


@attrs.frozen
class PeersCollectConfig:
    """``App.PeersCollect``."""

    enabled: bool = False
    heartbeat_interval: float = 60.0
    client_project: str = ""


@attrs.frozen
class AutoUpgradeConfig:
    """``App.AutoUpgrade`` (Go v0.2.0+); recognised but not supported by aicn."""

    enabled: bool = False
    time_interval: float = 3600.0


@attrs.frozen
class AppConfig:
    """``App``."""

    log_level: str = "info"
    log_file: str = ""
    log_output: str = "stderr"
    #: Lower-case hex; ``""`` means no private network.
    pre_shared_key: str = DBC_PSK_HEX
    topic_name: str = "DeepBrainChain"
    datastore: str = ""
    ipfs_storage_api: str = ""
    peers_collect: PeersCollectConfig = PeersCollectConfig()
    auto_upgrade: AutoUpgradeConfig = AutoUpgradeConfig()
    #: aicn: seconds to wait for a remote node's answer; ``None``: per type (120/190/330 s).
    request_timeout: float | None = None
    #: aicn: the schema of our heartbeats (and of requests to peers of unknown version):
    #: ``v0.2.3`` or ``v0.1.2``.  Messages of both are understood whatever it says.
    wire_version: str = WIRE_VERSIONS[0]


@attrs.frozen
class APIConfig:
    """``API``; every key but ``Addr`` is an aicn extension.

    The timeouts (seconds) bound slow clients: a request head must be complete
    ``header_timeout`` after its first byte, a body ``body_timeout`` after the
    head; a keep-alive connection waits ``idle_timeout`` for its next request.
    """

    addr: str = ""
    token: str = ""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: The body cap of ``/api/v0/image/edit`` and ``/image/edit/proxy``.
    image_edit_max_body_bytes: int = DEFAULT_IMAGE_EDIT_MAX_BODY_BYTES
    #: The default response shape: ``v0.1.2`` (the spec's envelope) or ``v0.2.3`` (Go's flattened one).
    envelope: str = API_ENVELOPES[0]


@attrs.frozen
class IdentityConfig:
    """``Identity``: ``PrivKey`` is base64 of the marshalled libp2p private key."""

    peer_id: str = ""
    priv_key: str = ""


@attrs.frozen
class AIModel:
    """One entry of ``AIProjects[].Models``."""

    model: str
    api: str = ""
    type: int = 0
    cid: str = ""


@attrs.frozen
class AIProject:
    """One entry of ``AIProjects``."""

    project: str
    models: tuple[AIModel, ...] = ()


@attrs.frozen
class Config:
    """The whole config file, typed."""

    bootstrap: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    api: APIConfig = APIConfig()
    identity: IdentityConfig = IdentityConfig()
    swarm: SwarmConfig = SwarmConfig()
    pubsub: PubsubConfig = PubsubConfig()
    routing: RoutingConfig = RoutingConfig()
    app: AppConfig = AppConfig()
    ai_projects: tuple[AIProject, ...] = ()
