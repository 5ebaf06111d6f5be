"""Reading the Go node's JSON config file into :class:`~aicn.config.schema.Config`.

Keys match as Go's ``encoding/json`` matches them (:mod:`aicn.config.gojson`),
so an existing Go config loads unchanged.  Unknown keys produce warnings,
never errors; invalid values raise :class:`ConfigError` naming the full key
path::

    Swarm.ConnMgr.GracePeriod: invalid duration "2x": unknown unit "x"

Defaults follow Go's ``LoadConfig`` where it has one.  Two keys distinguish a
*missing* key from an *empty* one: a missing ``App.PreSharedKey`` means the
public DBC network key, while an explicit ``""`` turns the private network off
(as in Go); a missing ``Routing.ProtocolPrefix`` means ``/dbc``, while an
explicit ``""`` means the library default ``/ipfs`` (as in Go).

Go keys that ask for something aicn does not do are read (a Go config must
load) and answered with a warning when they ask for it: ``EnableHolePunching``,
``PeersCollect.ClientProject`` (Go v0.2.3's inbound gate), ``Pubsub.Router``
``gossipsub`` (aicn routes with floodsub, which gossipsub peers also speak).
``DisableNatPortMap`` and ``FloodPublish`` have no effect: aicn maps no ports
and floodsub always floods.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable
from typing import Any

from multiaddr import Multiaddr

from aicn.config import gojson
from aicn.config.gojson import MISSING, lookup, matching_keys
from aicn.config.schema import (
    MAX_REQUEST_TIMEOUT,
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_INBOUND,
    DEFAULT_MAX_PENDING_HANDSHAKES,
    DEFAULT_IMAGE_EDIT_MAX_BODY_BYTES,
    MAX_IMAGE_EDIT_BODY_BYTES,
    AIModel,
    AIProject,
    APIConfig,
    AppConfig,
    AutoUpgradeConfig,
    Config,
    ConfigError,
    ConnMgrConfig,
    IdentityConfig,
    PeersCollectConfig,
    PubsubConfig,
    RelayClientConfig,
    RelayServiceConfig,
    RoutingConfig,
    SwarmConfig,
)
from aicn.config.schema import (
    API_ENVELOPES,
    CONNMGR_TYPES,
    LOG_LEVELS,
    LOG_OUTPUTS,
    PUBSUB_ROUTERS,
    ROUTING_TYPES,
    UINT32_MAX,
    WIRE_VERSIONS,
)
from aicn.duration import DurationError, format_go_duration, parse_go_duration
from aicn.p2p.keys import InvalidKey, PrivateKey
from aicn.p2p.peerid import InvalidPeerID, PeerID

__all__ = [
    "parse_config",
    "load_config",
    "parse_multiaddr",
    "parse_bootstrap_addr",
    "parse_host_port",
    "parse_psk",
]


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
    port = parse_port(port_text, text)
    return host, port


def parse_port(port_text: Any, whole: Any = None) -> int:
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


class _Obj:
    """A JSON object read with Go's ``encoding/json`` key matching.

    Keys reach fields by :mod:`aicn.config.gojson`'s rule (exactly or
    case-folded; the last match wins; ``null`` is no value).  Keys that match
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
        """The value for field ``name``, :data:`MISSING` if absent or JSON null."""
        self._used.update(matching_keys(self.value, name))
        return lookup(self.value, name)[1]

    def string(self, name: str, default: str) -> str:
        v = self.get(name)
        if v is MISSING:
            return default
        if not isinstance(v, str):
            raise ConfigError(f"{self._sub(name)}: expected a string, got {_jtype(v)}")
        return v

    def boolean(self, name: str, default: bool) -> bool:
        v = self.get(name)
        if v is MISSING:
            return default
        if not isinstance(v, bool):
            raise ConfigError(f"{self._sub(name)}: expected true or false, got {_jtype(v)}")
        return v

    def integer(self, name: str, default: int, *, lo: int = 0, hi: int = (1 << 63) - 1) -> int:
        v = self.get(name)
        if v is MISSING:
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
        return _Obj({} if v is MISSING else v, self._sub(name), self.warnings)

    def array(self, name: str) -> list[tuple[str, Any]]:
        """``(path, element)`` pairs of a JSON array (missing/null → empty)."""
        v = self.get(name)
        if v is MISSING:
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
        type=o.choice("Type", d.type, CONNMGR_TYPES),
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
        # 0 (or "") means the default, as Go's LoadConfig reads its counts.
        max_inbound_connections=o.integer("MaxInboundConnections", 0) or DEFAULT_MAX_INBOUND,
        max_pending_handshakes=o.integer("MaxPendingHandshakes", 0) or DEFAULT_MAX_PENDING_HANDSHAKES,
        handshake_timeout=o.duration("HandshakeTimeout", DEFAULT_HANDSHAKE_TIMEOUT, positive=True),
    )
    if s.enable_hole_punching:
        o.warnings.append(f"{o.path}.EnableHolePunching: aicn does not punch holes (DCUtR); "
                          "peers behind NAT are reached through relays (ignored)")
    if s.autonat_service_allow_private and not s.enable_autonat_service:
        o.warnings.append(f"{o.path}.AutoNATServiceAllowPrivate: no AutoNAT service runs "
                          "(EnableAutoNATService is false); ignored")
    o.finish()
    return s


def _decode_app(o: _Obj) -> AppConfig:
    d = AppConfig()
    level = o.string("LogLevel", "")
    if level and level.strip().lower() not in LOG_LEVELS:
        raise ConfigError(
            f"{o.path}.LogLevel: invalid log level {level!r}; expected one of debug, info, warn, error, panic, fatal"
        )
    output = o.string("LogOutput", "")
    for part in filter(None, output.split("+")):
        if part.strip().lower() not in LOG_OUTPUTS:
            raise ConfigError(f"{o.path}.LogOutput: unknown output {part!r}; use stderr, stdout, file joined by +")
    psk = o.get("PreSharedKey")
    if psk is MISSING:
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
    if peers_collect.client_project:
        o.warnings.append(f"{o.path}.PeersCollect.ClientProject: aicn does not gate inbound "
                          "connections by project (ignored)")
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
        log_level=LOG_LEVELS[level.strip().lower()] if level else d.log_level,
        log_file=o.string("LogFile", ""),
        log_output=output or d.log_output,
        pre_shared_key=psk_hex,
        topic_name=o.string("TopicName", "") or d.topic_name,
        datastore=o.string("Datastore", ""),
        ipfs_storage_api=o.string("IpfsStorageAPI", ""),
        peers_collect=peers_collect,
        auto_upgrade=auto_upgrade,
        request_timeout=request_timeout,
        wire_version=o.choice("WireVersion", WIRE_VERSIONS[0], WIRE_VERSIONS),
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
        header_timeout=o.duration("HeaderTimeout", DEFAULT_HEADER_TIMEOUT, positive=True),
        body_timeout=o.duration("BodyTimeout", DEFAULT_BODY_TIMEOUT, positive=True),
        idle_timeout=o.duration("IdleTimeout", DEFAULT_IDLE_TIMEOUT, positive=True),
        max_connections=o.integer("MaxConnections", 0) or DEFAULT_MAX_CONNECTIONS,
        image_edit_max_body_bytes=o.integer("ImageEditMaxBodyBytes", 0, lo=0, hi=MAX_IMAGE_EDIT_BODY_BYTES)
        or DEFAULT_IMAGE_EDIT_MAX_BODY_BYTES,
        envelope=o.choice("Envelope", API_ENVELOPES[0], API_ENVELOPES),
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
                    type=mo.integer("Type", 0, hi=UINT32_MAX),
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
        router=pubsub_o.choice("Router", PubsubConfig().router, PUBSUB_ROUTERS),
        flood_publish=pubsub_o.boolean("FloodPublish", False),
    )
    pubsub_o.finish()
    if pubsub.router == "gossipsub":
        warnings.append("Pubsub.Router: aicn routes pubsub with floodsub, which gossipsub peers "
                        "speak too (gossipsub ignored)")
    if not pubsub.enabled:
        warnings.append("Pubsub.Enabled: pubsub is always on (false ignored)")

    routing_o = top.obj("Routing")
    prefix = routing_o.get("ProtocolPrefix")
    if prefix is MISSING:
        prefix = RoutingConfig().protocol_prefix
    elif not isinstance(prefix, str):
        raise ConfigError(f"Routing.ProtocolPrefix: expected a string, got {_jtype(prefix)}")
    elif prefix == "":
        prefix = "/ipfs"  # go-libp2p-kad-dht's default, as the Go node gets it
    elif not prefix.startswith("/") or prefix.endswith("/"):
        raise ConfigError(f"Routing.ProtocolPrefix: {prefix!r} must start with / and not end with /")
    routing = RoutingConfig(type=routing_o.choice("Type", "auto", ROUTING_TYPES), protocol_prefix=prefix)
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
        data = gojson.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file {os.fspath(path)!r} is not valid JSON: {exc}") from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{os.fspath(path)}: {exc}") from None
