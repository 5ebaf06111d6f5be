"""Node configuration: the Go node's JSON config file, command-line options,
and the resolved :class:`NodeSettings` that the rest of the node uses.

The file format is the Go reference node's (``host -config file``).  Keys match
case-insensitively at every level, as Go's ``encoding/json`` does, so an
existing Go config loads unchanged.  Unknown keys produce warnings, never
errors; invalid values raise :class:`ConfigError` naming the full key path::

    Swarm.ConnMgr.GracePeriod: invalid duration "2x": unknown unit "x"

Defaults follow Go's ``LoadConfig`` where it has one.  Two keys distinguish a
*missing* key from an *empty* one: a missing ``App.PreSharedKey`` means the
public DBC network key, while an explicit ``""`` turns the private network off
(as in Go); a missing ``Routing.ProtocolPrefix`` means ``/dbc``, while an
explicit ``""`` means the library default ``/ipfs`` (as in Go).

aicn extensions live where Go ignores them: ``API.Token`` (bearer token for
the HTTP API) and ``API.MaxBodyBytes`` (request body limit, default 1 MiB).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
from multiaddr import Multiaddr
from twisted.logger import LogLevel

from aicn.log import Logger
from twisted.python import usage

from aicn.duration import DurationError, format_go_duration, parse_go_duration
from aicn.p2p.keys import InvalidKey, KeyType, PrivateKey, parse_key_type
from aicn.p2p.peerid import InvalidPeerID, PeerID

__all__ = [
    "ConfigError",
    "DBC_PSK_HEX",
    "DEFAULT_LISTEN",
    "DEFAULT_DATA_DIR",
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
    "NodeSettings",
    "Options",
    "parse_config",
    "load_config",
    "config_to_json",
    "write_config",
    "resolve_settings",
    "load_settings",
    "parse_multiaddr",
    "parse_bootstrap_addr",
    "parse_host_port",
    "parse_psk",
]

_log = Logger()

#: The pre-shared key of the public DBC network (digest §2).
DBC_PSK_HEX = "f504f536a912a8cf7d00adacee8ed20270c5040d961d7f3da4fccbcbec0ec48a"
DEFAULT_LISTEN = ("/ip4/0.0.0.0/tcp/6001", "/ip6/::/tcp/6001")
DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 6000
DEFAULT_DATA_DIR = "~/.aicn"
DEFAULT_MAX_BODY_BYTES = 1 << 20
#: Longest wait for a remote node's answer (``App.RequestTimeout``, a request's ``timeout``).
MAX_REQUEST_TIMEOUT = 900.0

_ROUTING_TYPES = ("auto", "none", "dhtclient", "dhtserver")
_ROUTING_TO_DHT_MODE = {"auto": "auto", "dhtclient": "client", "dhtserver": "server", "none": "client"}
_DHT_MODES = ("client", "server", "auto")
_PUBSUB_ROUTERS = ("gossipsub", "floodsub")
_CONNMGR_TYPES = ("basic", "none")
_LOG_OUTPUTS = ("stderr", "stdout", "file")
# Go (zap) level names, and twisted's, mapped to twisted log level names.
_LOG_LEVELS = {
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
_UINT32_MAX = (1 << 32) - 1


class ConfigError(ValueError):
    """The configuration (file or options) is invalid; the message names the key."""


_MISSING = object()


# --- config model ----------------------------------------------------------------


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


@attrs.frozen
class PubsubConfig:
    """``Pubsub`` (``Enabled`` is forced on, as in Go)."""

    enabled: bool = True
    router: str = "gossipsub"
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


@attrs.frozen
class APIConfig:
    """``API``; ``Token`` and ``MaxBodyBytes`` are aicn extensions."""

    addr: str = ""
    token: str = ""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


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


# --- value validators (usable on their own) -----------------------------------


def parse_multiaddr(text: str) -> str:
    """Validate a multiaddr and return its canonical text; raises ``ValueError``."""
    if not isinstance(text, str) or not text:
        raise ValueError("empty multiaddr")
    try:
        return str(Multiaddr(text))
    except Exception as exc:  # the multiaddr package raises several types
        raise ValueError(f"invalid multiaddr {text!r}: {exc}") from None


def parse_bootstrap_addr(text: str) -> str:
    """Validate a bootstrap multiaddr, which must end in ``/p2p/<peer id>``."""
    canonical = parse_multiaddr(text)
    parts = canonical.split("/")
    if len(parts) < 3 or parts[-2] not in ("p2p", "ipfs"):
        raise ValueError(f"multiaddr {text!r} has no /p2p/<peer id> component")
    try:
        PeerID.from_string(parts[-1])
    except InvalidPeerID as exc:
        raise ValueError(f"multiaddr {text!r} has an invalid peer ID: {exc}") from None
    return canonical


def parse_host_port(text: str) -> tuple[str, int]:
    """Parse ``host:port`` or ``[v6]:port`` into ``(host, port)``."""
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(f"invalid address {text!r}: expected host:port")
    host, _, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"invalid address {text!r}: IPv6 hosts need brackets")
    port = _parse_port(port_text, text)
    return host, port


def _parse_port(port_text: Any, whole: Any = None) -> int:
    shown = whole if whole is not None else port_text
    try:
        port = int(str(port_text), 10)
    except ValueError:
        raise ValueError(f"invalid port in {shown!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {shown!r}")
    return port


def parse_psk(text: str) -> bytes | None:
    """Parse a PSK: 64 hex characters → 32 bytes; ``""``/``"none"`` → ``None``."""
    if not isinstance(text, str):
        raise ValueError("pre-shared key must be a string")
    stripped = text.strip()
    if stripped == "" or stripped.lower() == "none":
        return None
    if len(stripped) != 64:
        raise ValueError(f"pre-shared key must be 64 hex characters, got {len(stripped)}")
    try:
        return bytes.fromhex(stripped)
    except ValueError:
        raise ValueError("pre-shared key is not hex") from None


# --- decoding ----------------------------------------------------------------------


class _Obj:
    """A JSON object read with Go's ``encoding/json`` key matching.

    A field name matches a key exactly or case-insensitively; when several
    keys match, the last one wins (Go assigns each in turn).  Keys that match
    no field are reported as warnings by :meth:`finish`.
    """

    def __init__(self, value: Any, path: str, warnings: list[str]) -> None:
        if not isinstance(value, dict):
            raise ConfigError(f"{path or '<top>'}: expected a JSON object, got {_jtype(value)}")
        self.value = value
        self.path = path
        self.warnings = warnings
        self._used: set[str] = set()

    def _sub(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str) -> Any:
        """The value for field ``name``, ``_MISSING`` if absent or JSON null."""
        folded = name.casefold()
        found = _MISSING
        for key, value in self.value.items():
            if key == name or key.casefold() == folded:
                self._used.add(key)
                if value is not None:  # Go leaves the field alone on null
                    found = value
        return found

    def string(self, name: str, default: str) -> str:
        v = self.get(name)
        if v is _MISSING:
            return default
        if not isinstance(v, str):
            raise ConfigError(f"{self._sub(name)}: expected a string, got {_jtype(v)}")
        return v

    def boolean(self, name: str, default: bool) -> bool:
        v = self.get(name)
        if v is _MISSING:
            return default
        if not isinstance(v, bool):
            raise ConfigError(f"{self._sub(name)}: expected true or false, got {_jtype(v)}")
        return v

    def integer(self, name: str, default: int, *, lo: int = 0, hi: int = (1 << 63) - 1) -> int:
        v = self.get(name)
        if v is _MISSING:
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{self._sub(name)}: expected an integer, got {_jtype(v)}")
        if not lo <= v <= hi:
            raise ConfigError(f"{self._sub(name)}: {v} out of range [{lo}, {hi}]")
        return v

    def duration(self, name: str, default: float | None, *, positive: bool = False) -> float | None:
        """A Go duration string; ``""`` (or missing) gives ``default``."""
        text = self.string(name, "")
        if text == "":
            return default
        try:
            seconds = parse_go_duration(text)
        except DurationError as exc:
            raise ConfigError(f"{self._sub(name)}: {exc}") from None
        if seconds < 0 or (positive and seconds == 0):
            need = "positive" if positive else "non-negative"
            raise ConfigError(f"{self._sub(name)}: duration {text!r} must be {need}")
        return seconds

    def choice(self, name: str, default: str, choices: Iterable[str]) -> str:
        """A string from ``choices`` (case-insensitive); ``""`` gives ``default``."""
        text = self.string(name, "")
        if text == "":
            return default
        low = text.strip().lower()
        choices = tuple(choices)
        if low not in choices:
            raise ConfigError(f"{self._sub(name)}: invalid value {text!r}; expected one of {', '.join(choices)}")
        return low

    def obj(self, name: str) -> "_Obj":
        v = self.get(name)
        return _Obj({} if v is _MISSING else v, self._sub(name), self.warnings)

    def array(self, name: str) -> list[tuple[str, Any]]:
        """``(path, element)`` pairs of a JSON array (missing/null → empty)."""
        v = self.get(name)
        if v is _MISSING:
            return []
        if not isinstance(v, list):
            raise ConfigError(f"{self._sub(name)}: expected a JSON array, got {_jtype(v)}")
        return [(f"{self._sub(name)}[{i}]", item) for i, item in enumerate(v)]

    def strings(self, name: str) -> list[tuple[str, str]]:
        out = []
        for path, item in self.array(name):
            if not isinstance(item, str):
                raise ConfigError(f"{path}: expected a string, got {_jtype(item)}")
            out.append((path, item))
        return out

    def finish(self) -> None:
        for key in self.value:
            if key not in self._used:
                self.warnings.append(f"unknown config key {self._sub(key)!s} (ignored)")


def _jtype(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return f"the number {v!r}"
    if isinstance(v, str):
        return f"the string {v!r}"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _decode_conn_mgr(o: _Obj) -> ConnMgrConfig:
    d = ConnMgrConfig()
    cm = ConnMgrConfig(
        type=o.choice("Type", d.type, _CONNMGR_TYPES),
        grace_period=o.duration("GracePeriod", d.grace_period),
        # Go's LoadConfig treats 0 as "use the default".
        high_water=o.integer("HighWater", 0) or d.high_water,
        low_water=o.integer("LowWater", 0) or d.low_water,
    )
    if cm.low_water > cm.high_water:
        raise ConfigError(f"{o.path}: LowWater ({cm.low_water}) is above HighWater ({cm.high_water})")
    o.finish()
    return cm


def _decode_swarm(o: _Obj) -> SwarmConfig:
    rc = o.obj("RelayClient")
    relay_client = RelayClientConfig(
        enabled=rc.boolean("Enabled", False),
        static_relays=tuple(s for _, s in rc.strings("StaticRelays")),
    )
    rc.finish()
    rs = o.obj("RelayService")
    d = RelayServiceConfig()
    relay_service = RelayServiceConfig(
        enabled=rs.boolean("Enabled", False),
        max_duration=rs.duration("MaxDuration", d.max_duration),
        max_data=rs.integer("MaxData", d.max_data),
        reservation_ttl=rs.duration("ReservationTTL", d.reservation_ttl, positive=True),
        max_reservations=rs.integer("MaxReservations", d.max_reservations, lo=1),
        max_reservations_per_ip=rs.integer("MaxReservationsPerIP", d.max_reservations_per_ip, lo=1),
        max_circuits=rs.integer("MaxCircuits", d.max_circuits, lo=1),
        max_circuits_per_peer=rs.integer("MaxCircuitsPerPeer", d.max_circuits_per_peer, lo=1),
    )
    rs.finish()
    s = SwarmConfig(
        conn_mgr=_decode_conn_mgr(o.obj("ConnMgr")),
        disable_nat_port_map=o.boolean("DisableNatPortMap", False),
        relay_client=relay_client,
        relay_service=relay_service,
        enable_hole_punching=o.boolean("EnableHolePunching", False),
        enable_autonat_service=o.boolean("EnableAutoNATService", False),
        autonat_service_allow_private=o.boolean("AutoNATServiceAllowPrivate", False),
        dial_timeout=o.duration("DialTimeout", None, positive=True),
    )
    if s.autonat_service_allow_private and not s.enable_autonat_service:
        o.warnings.append(f"{o.path}.AutoNATServiceAllowPrivate: no AutoNAT service runs "
                          "(EnableAutoNATService is false); ignored")
    o.finish()
    return s


def _decode_app(o: _Obj) -> AppConfig:
    d = AppConfig()
    level = o.string("LogLevel", "")
    if level and level.strip().lower() not in _LOG_LEVELS:
        raise ConfigError(
            f"{o.path}.LogLevel: invalid log level {level!r}; expected one of debug, info, warn, error, panic, fatal"
        )
    output = o.string("LogOutput", "")
    for part in filter(None, output.split("+")):
        if part.strip().lower() not in _LOG_OUTPUTS:
            raise ConfigError(f"{o.path}.LogOutput: unknown output {part!r}; use stderr, stdout, file joined by +")
    psk = o.get("PreSharedKey")
    if psk is _MISSING:
        psk_hex = d.pre_shared_key
    else:
        if not isinstance(psk, str):
            raise ConfigError(f"{o.path}.PreSharedKey: expected a string, got {_jtype(psk)}")
        try:
            raw = parse_psk(psk)  # "" (or "none") turns the private network off
        except ValueError as exc:
            raise ConfigError(f"{o.path}.PreSharedKey: {exc}") from None
        psk_hex = raw.hex() if raw else ""

    pc = o.obj("PeersCollect")
    peers_collect = PeersCollectConfig(
        enabled=pc.boolean("Enabled", False),
        heartbeat_interval=pc.duration("HeartbeatInterval", 60.0, positive=True),
        client_project=pc.string("ClientProject", ""),
    )
    pc.finish()
    au = o.obj("AutoUpgrade")
    auto_upgrade = AutoUpgradeConfig(
        enabled=au.boolean("Enabled", False),
        time_interval=au.duration("TimeInterval", 3600.0, positive=True),
    )
    au.finish()
    if auto_upgrade.enabled:
        o.warnings.append(f"{o.path}.AutoUpgrade.Enabled: automatic upgrades are not supported by aicn (ignored)")

    request_timeout = o.duration("RequestTimeout", None, positive=True)
    if request_timeout is not None and request_timeout > MAX_REQUEST_TIMEOUT:
        raise ConfigError(f"{o.path}.RequestTimeout: at most {format_go_duration(MAX_REQUEST_TIMEOUT)}")
    app = AppConfig(
        log_level=_LOG_LEVELS[level.strip().lower()] if level else d.log_level,
        log_file=o.string("LogFile", ""),
        log_output=output or d.log_output,
        pre_shared_key=psk_hex,
        topic_name=o.string("TopicName", "") or d.topic_name,
        datastore=o.string("Datastore", ""),
        ipfs_storage_api=o.string("IpfsStorageAPI", ""),
        peers_collect=peers_collect,
        auto_upgrade=auto_upgrade,
        request_timeout=request_timeout,
    )
    o.finish()
    return app


def _decode_api(o: _Obj) -> APIConfig:
    addr = o.string("Addr", "")
    if addr:
        try:
            parse_host_port(addr)
        except ValueError as exc:
            raise ConfigError(f"{o.path}.Addr: {exc}") from None
    api = APIConfig(
        addr=addr,
        token=o.string("Token", ""),
        max_body_bytes=o.integer("MaxBodyBytes", 0, lo=0) or DEFAULT_MAX_BODY_BYTES,
    )
    o.finish()
    return api


def _decode_identity(o: _Obj) -> IdentityConfig:
    ident = IdentityConfig(peer_id=o.string("PeerID", "").strip(), priv_key=o.string("PrivKey", "").strip())
    if ident.peer_id:
        try:
            PeerID.from_string(ident.peer_id)
        except InvalidPeerID as exc:
            raise ConfigError(f"{o.path}.PeerID: invalid peer ID {ident.peer_id!r}: {exc}") from None
    if ident.priv_key:
        try:
            PrivateKey.unmarshal(base64.b64decode(ident.priv_key, validate=True))
        except (ValueError, InvalidKey) as exc:
            raise ConfigError(f"{o.path}.PrivKey: not a base64 libp2p private key: {exc}") from None
    o.finish()
    return ident


def _decode_projects(top: _Obj) -> tuple[AIProject, ...]:
    projects = []
    for path, item in top.array("AIProjects"):
        po = _Obj(item, path, top.warnings)
        name = po.string("Project", "")
        if not name:
            raise ConfigError(f"{path}.Project: must be a non-empty string")
        models = []
        for mpath, mitem in po.array("Models"):
            mo = _Obj(mitem, mpath, top.warnings)
            model = mo.string("Model", "")
            if not model:
                raise ConfigError(f"{mpath}.Model: must be a non-empty string")
            models.append(
                AIModel(
                    model=model,
                    api=mo.string("API", ""),
                    type=mo.integer("Type", 0, hi=_UINT32_MAX),
                    cid=mo.string("CID", ""),
                )
            )
            mo.finish()
        po.finish()
        projects.append(AIProject(project=name, models=tuple(models)))
    return tuple(projects)


def parse_config(data: Any) -> tuple[Config, list[str]]:
    """Decode a parsed JSON config into a :class:`Config`.

    Returns ``(config, warnings)``; raises :class:`ConfigError` on invalid values.
    """
    warnings: list[str] = []
    top = _Obj(data, "", warnings)

    bootstrap = []
    for path, text in top.strings("Bootstrap"):
        try:
            bootstrap.append(parse_bootstrap_addr(text))
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    addresses = []
    for path, text in top.strings("Addresses"):
        try:
            addresses.append(parse_multiaddr(text))
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    pubsub_o = top.obj("Pubsub")
    pubsub = PubsubConfig(
        enabled=pubsub_o.boolean("Enabled", True),
        router=pubsub_o.choice("Router", "gossipsub", _PUBSUB_ROUTERS),
        flood_publish=pubsub_o.boolean("FloodPublish", False),
    )
    pubsub_o.finish()
    if not pubsub.enabled:
        warnings.append("Pubsub.Enabled: pubsub is always on (false ignored)")

    routing_o = top.obj("Routing")
    prefix = routing_o.get("ProtocolPrefix")
    if prefix is _MISSING:
        prefix = RoutingConfig().protocol_prefix
    elif not isinstance(prefix, str):
        raise ConfigError(f"Routing.ProtocolPrefix: expected a string, got {_jtype(prefix)}")
    elif prefix == "":
        prefix = "/ipfs"  # go-libp2p-kad-dht's default, as the Go node gets it
    elif not prefix.startswith("/") or prefix.endswith("/"):
        raise ConfigError(f"Routing.ProtocolPrefix: {prefix!r} must start with / and not end with /")
    routing = RoutingConfig(type=routing_o.choice("Type", "auto", _ROUTING_TYPES), protocol_prefix=prefix)
    routing_o.finish()

    config = Config(
        bootstrap=tuple(bootstrap),
        addresses=tuple(addresses),
        api=_decode_api(top.obj("API")),
        identity=_decode_identity(top.obj("Identity")),
        swarm=_decode_swarm(top.obj("Swarm")),
        pubsub=pubsub,
        routing=routing,
        app=_decode_app(top.obj("App")),
        ai_projects=_decode_projects(top),
    )
    top.finish()
    return config, warnings


def load_config(path: str | os.PathLike) -> tuple[Config, list[str]]:
    """Read and decode a JSON config file; returns ``(config, warnings)``."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {os.fspath(path)!r}: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file {os.fspath(path)!r} is not valid JSON: {exc}") from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{os.fspath(path)}: {exc}") from None


# --- encoding ----------------------------------------------------------------------


def _dur(seconds: float | None) -> str:
    return "" if seconds is None else format_go_duration(seconds)


def config_to_json(config: Config) -> dict:
    """The config as a JSON-ready dict with the Go node's key names."""
    s, a = config.swarm, config.app
    cm = s.conn_mgr
    return {
        "Bootstrap": list(config.bootstrap),
        "Addresses": list(config.addresses),
        "API": {"Addr": config.api.addr, "Token": config.api.token, "MaxBodyBytes": config.api.max_body_bytes},
        "Identity": {"PeerID": config.identity.peer_id, "PrivKey": config.identity.priv_key},
        "Swarm": {
            "ConnMgr": {
                "Type": cm.type,
                "GracePeriod": _dur(cm.grace_period),
                "HighWater": cm.high_water,
                "LowWater": cm.low_water,
            },
            "DisableNatPortMap": s.disable_nat_port_map,
            "RelayClient": {"Enabled": s.relay_client.enabled, "StaticRelays": list(s.relay_client.static_relays)},
            "RelayService": {
                "Enabled": s.relay_service.enabled,
                "MaxDuration": format_go_duration(s.relay_service.max_duration),
                "MaxData": s.relay_service.max_data,
                "ReservationTTL": format_go_duration(s.relay_service.reservation_ttl),
                "MaxReservations": s.relay_service.max_reservations,
                "MaxReservationsPerIP": s.relay_service.max_reservations_per_ip,
                "MaxCircuits": s.relay_service.max_circuits,
                "MaxCircuitsPerPeer": s.relay_service.max_circuits_per_peer,
            },
            "EnableHolePunching": s.enable_hole_punching,
            "EnableAutoNATService": s.enable_autonat_service,
            "AutoNATServiceAllowPrivate": s.autonat_service_allow_private,
            "DialTimeout": _dur(s.dial_timeout),
        },
        "Pubsub": {
            "Enabled": config.pubsub.enabled,
            "Router": config.pubsub.router,
            "FloodPublish": config.pubsub.flood_publish,
        },
        "Routing": {"Type": config.routing.type, "ProtocolPrefix": config.routing.protocol_prefix},
        "App": {
            "LogLevel": a.log_level,
            "LogFile": a.log_file,
            "LogOutput": a.log_output,
            "PreSharedKey": a.pre_shared_key,
            "TopicName": a.topic_name,
            "Datastore": a.datastore,
            "IpfsStorageAPI": a.ipfs_storage_api,
            "PeersCollect": {
                "Enabled": a.peers_collect.enabled,
                "HeartbeatInterval": _dur(a.peers_collect.heartbeat_interval),
                "ClientProject": a.peers_collect.client_project,
            },
            "RequestTimeout": _dur(a.request_timeout),
        },
        "AIProjects": [
            {
                "Project": p.project,
                "Models": [
                    {"Model": m.model, "API": m.api, "Type": m.type, **({"CID": m.cid} if m.cid else {})}
                    for m in p.models
                ],
            }
            for p in config.ai_projects
        ],
    }


def write_config(path: str | os.PathLike, config: Config, *, overwrite: bool = False) -> None:
    """Write ``config`` as 2-space-indented JSON, mode 0600, atomically.

    Refuses to replace an existing file unless ``overwrite`` is true.
    """
    from aicn.identity import atomic_write  # local: identity imports this module

    text = json.dumps(config_to_json(config), indent=2, ensure_ascii=False) + "\n"
    atomic_write(Path(path), text.encode("utf-8"), mode=0o600, overwrite=overwrite)


# --- options and resolved settings ----------------------------------------------


class Options(usage.Options):
    """Command-line options of the node (for the twistd plugin).

    Every option defaults to ``None`` ("not given") so that the config file
    value is used unless the flag is given; :func:`resolve_settings` applies
    the built-in defaults.
    """

    optFlags = [
        ["collector", None, "Store peers' heartbeats (App.PeersCollect.Enabled)."],
        ["relay-service", None, "Run a circuit relay v2 service (Swarm.RelayService.Enabled)."],
    ]
    optParameters = [
        ["config", "c", None, "JSON config file (Go node format)."],
        ["port", "p", None, f"HTTP API port [default: {DEFAULT_API_PORT}]."],
        ["api-host", None, None, f"HTTP API listen host [default: {DEFAULT_API_HOST}]."],
        ["data-dir", "d", None, f"Data directory (peer.key, aicn.db) [default: {DEFAULT_DATA_DIR}]."],
        ["psk", None, None, "Private network key: 64 hex characters, or 'none' [default: the DBC key]."],
        ["key-type", None, None, "Key type for a new peer.key: secp256k1 or ed25519 [default: secp256k1]."],
        ["dht-mode", None, None, "DHT mode: client, server or auto [default: auto]."],
        ["api-token", None, None, "Bearer token required by the HTTP API."],
        ["log-level", None, None, "Log level: debug, info, warn, error [default: info]."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["bootstrap"] = []

    def opt_listen(self, addr: str) -> None:
        """libp2p listen multiaddr (repeatable), or 'none' to only dial out [default: /ip4/0.0.0.0/tcp/6001 and /ip6/::/tcp/6001]."""
        self["listen"].append(addr)

    def opt_bootstrap(self, addr: str) -> None:
        """Bootstrap multiaddr with /p2p/ (repeatable); replaces the config's list."""
        self["bootstrap"].append(addr)

    def postOptions(self) -> None:
        # Validate early so that twistd prints a usage error.
        try:
            resolve_settings(Config(), self)
        except ConfigError as exc:
            raise usage.UsageError(str(exc)) from None


@attrs.frozen
class NodeSettings:
    """The resolved settings: config file merged with command-line options."""

    listen: tuple[str, ...]
    api_host: str
    api_port: int
    data_dir: Path
    #: 32 raw bytes, or ``None`` when the private network is off.
    psk: bytes | None
    bootstrap: tuple[str, ...]
    #: ``"client"``, ``"server"`` or ``"auto"``.
    dht_mode: str
    collector: bool
    relay_service: bool
    relay_client: bool
    api_token: str | None
    max_body_bytes: int
    #: A twisted log level name: debug, info, warn, error, critical.
    log_level: str
    topic: str
    kad_protocol_prefix: str
    heartbeat_interval: float
    connmgr: ConnMgrConfig
    ipfs_api: str | None
    ai_projects: tuple[AIProject, ...]
    #: Key type for a newly created ``peer.key``.
    key_type: KeyType = KeyType.Secp256k1
    client_project: str = ""
    dial_timeout: float | None = None
    pubsub_router: str = "gossipsub"
    flood_publish: bool = False
    nat_port_map: bool = True
    hole_punching: bool = False
    autonat_service: bool = False
    #: The AutoNAT service dials back private addresses too (lab and LAN networks).
    autonat_allow_private: bool = False
    #: ``Identity.PrivKey`` decoded (marshalled key bytes), or ``None``.
    identity_priv_key: bytes | None = None
    #: ``Identity.PeerID`` text, or ``None``.
    identity_peer_id: str | None = None
    config_path: Path | None = None
    config: Config = Config()

    @property
    def kad_protocol(self) -> str:
        """The DHT protocol ID, e.g. ``/dbc/kad/1.0.0``."""
        return f"{self.kad_protocol_prefix}/kad/1.0.0"

    @property
    def twisted_log_level(self) -> LogLevel:
        """:attr:`log_level` as a :class:`twisted.logger.LogLevel`."""
        return LogLevel.levelWithName(self.log_level)

    @property
    def api_addr(self) -> str:
        """``host:port`` of the HTTP API (IPv6 hosts in brackets)."""
        host = f"[{self.api_host}]" if ":" in self.api_host else self.api_host
        return f"{host}:{self.api_port}"


def _opt(options: Mapping[str, Any], name: str) -> Any:
    """An option value by its dashed or underscored name; ``None`` if unset."""
    for key in (name, name.replace("-", "_")):
        if key in options and options[key] is not None:
            return options[key]
    return None


def resolve_settings(
    config: Config,
    options: Mapping[str, Any] | None = None,
    *,
    config_path: str | os.PathLike | None = None,
) -> NodeSettings:
    """Merge command-line ``options`` over ``config`` into :class:`NodeSettings`.

    ``options`` uses the option names of :class:`Options` (dashes or
    underscores); a missing or ``None`` value means "not given".  Flags
    (``collector``, ``relay-service``) can only turn features on.  Repeatable
    options (``listen``, ``bootstrap``) replace the config's list when given.
    """
    options = options or {}
    base = Path(config_path).resolve().parent if config_path is not None else None

    listen_opt = list(_opt(options, "listen") or [])
    listen = []
    # "--listen none": dial out only (a worker behind NAT reached through relays).
    no_listen = [t for t in listen_opt if str(t).strip().lower() == "none"]
    if no_listen and len(no_listen) != len(listen_opt):
        raise ConfigError("--listen: 'none' cannot be combined with addresses")
    for text in [] if no_listen else listen_opt:
        try:
            listen.append(parse_multiaddr(text))
        except ValueError as exc:
            raise ConfigError(f"--listen: {exc}") from None
    listen_t = () if no_listen else (tuple(listen) or config.addresses or DEFAULT_LISTEN)

    boot_opt = list(_opt(options, "bootstrap") or [])
    bootstrap = []
    for text in boot_opt:
        try:
            bootstrap.append(parse_bootstrap_addr(text))
        except ValueError as exc:
            raise ConfigError(f"--bootstrap: {exc}") from None
    bootstrap_t = tuple(bootstrap) if bootstrap else config.bootstrap

    if config.api.addr:
        api_host, api_port = parse_host_port(config.api.addr)
    else:
        api_host, api_port = DEFAULT_API_HOST, DEFAULT_API_PORT
    if (host := _opt(options, "api-host")) is not None:
        api_host = str(host).strip().strip("[]")
        if not api_host:
            raise ConfigError("--api-host: must not be empty")
    if (port := _opt(options, "port")) is not None:
        try:
            api_port = _parse_port(port)
        except ValueError as exc:
            raise ConfigError(f"--port: {exc}") from None

    if (data_dir := _opt(options, "data-dir")) is not None:
        data_path = Path(os.path.expanduser(str(data_dir)))
    elif config.app.datastore:
        data_path = Path(os.path.expanduser(config.app.datastore))
        if not data_path.is_absolute() and base is not None:
            data_path = base / data_path  # relative to the config file, not the cwd
    else:
        data_path = Path(os.path.expanduser(DEFAULT_DATA_DIR))
    data_path = data_path.absolute()

    if (psk_opt := _opt(options, "psk")) is not None:
        try:
            psk = parse_psk(str(psk_opt))
        except ValueError as exc:
            raise ConfigError(f"--psk: {exc}") from None
        if psk is None and str(psk_opt).strip().lower() != "none":
            raise ConfigError("--psk: use 'none' to turn the private network off")
    else:
        psk = bytes.fromhex(config.app.pre_shared_key) if config.app.pre_shared_key else None

    key_type = KeyType.Secp256k1
    if (kt := _opt(options, "key-type")) is not None:
        try:
            key_type = parse_key_type(str(kt))
        except (InvalidKey, ValueError) as exc:
            raise ConfigError(f"--key-type: {exc}") from None
        if key_type not in (KeyType.Secp256k1, KeyType.Ed25519):
            raise ConfigError("--key-type: use secp256k1 or ed25519")

    if (mode := _opt(options, "dht-mode")) is not None:
        dht_mode = str(mode).strip().lower()
        if dht_mode not in _DHT_MODES:
            raise ConfigError(f"--dht-mode: invalid value {mode!r}; expected client, server or auto")
    else:
        dht_mode = _ROUTING_TO_DHT_MODE[config.routing.type]

    if (level := _opt(options, "log-level")) is not None:
        name = str(level).strip().lower()
        if name not in _LOG_LEVELS:
            raise ConfigError(f"--log-level: invalid log level {level!r}")
        log_level = _LOG_LEVELS[name]
    else:
        log_level = config.app.log_level

    token = _opt(options, "api-token")
    if token is None:
        token = config.api.token
    ident = config.identity
    return NodeSettings(
        listen=listen_t,
        api_host=api_host,
        api_port=api_port,
        data_dir=data_path,
        psk=psk,
        bootstrap=bootstrap_t,
        dht_mode=dht_mode,
        collector=bool(_opt(options, "collector")) or config.app.peers_collect.enabled,
        relay_service=bool(_opt(options, "relay-service")) or config.swarm.relay_service.enabled,
        relay_client=config.swarm.relay_client.enabled,
        api_token=str(token) or None,
        max_body_bytes=config.api.max_body_bytes,
        log_level=log_level,
        topic=config.app.topic_name,
        kad_protocol_prefix=config.routing.protocol_prefix,
        heartbeat_interval=config.app.peers_collect.heartbeat_interval,
        connmgr=config.swarm.conn_mgr,
        ipfs_api=config.app.ipfs_storage_api or None,
        ai_projects=config.ai_projects,
        key_type=key_type,
        client_project=config.app.peers_collect.client_project,
        dial_timeout=config.swarm.dial_timeout,
        pubsub_router=config.pubsub.router,
        flood_publish=config.pubsub.flood_publish,
        nat_port_map=not config.swarm.disable_nat_port_map,
        hole_punching=config.swarm.enable_hole_punching,
        autonat_service=config.swarm.enable_autonat_service,
        autonat_allow_private=config.swarm.autonat_service_allow_private,
        identity_priv_key=base64.b64decode(ident.priv_key) if ident.priv_key else None,
        identity_peer_id=ident.peer_id or None,
        config_path=Path(config_path).absolute() if config_path is not None else None,
        config=config,
    )


def load_settings(options: Mapping[str, Any] | None = None, *, log: Logger | None = None) -> NodeSettings:
    """Load the config file named by the ``config`` option (if any), log its
    warnings, and merge ``options`` over it."""
    options = options or {}
    log = log or _log
    path = _opt(options, "config")
    if path is None:
        return resolve_settings(Config(), options)
    path = os.path.expanduser(str(path))
    config, warnings = load_config(path)
    for warning in warnings:
        log.warn("config {path}: {warning}", path=path, warning=warning)
    return resolve_settings(config, options, config_path=path)
