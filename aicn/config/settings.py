"""The resolved :class:`NodeSettings`: config file merged with command-line options."""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from aicn.config.reader import (
    load_config,
    parse_bootstrap_addr,
    parse_host_port,
    parse_multiaddr,
    parse_port,
    parse_psk,
)
from aicn.config.schema import (
    DEFAULT_API_HOST,
    DEFAULT_API_PORT,
    DEFAULT_DATA_DIR,
    DEFAULT_IMAGE_EDIT_MAX_BODY_BYTES,
    DEFAULT_LISTEN,
    DHT_MODES,
    LOG_LEVELS,
    ROUTING_TO_DHT_MODE,
    AIProject,
    Config,
    ConfigError,
    ConnMgrConfig,
)
from aicn.log import Logger
from aicn.p2p.keys import InvalidKey, KeyType, parse_key_type

__all__ = ["NodeSettings", "resolve_settings", "load_settings"]

_log = Logger()


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
    dial_timeout: float | None = None
    autonat_service: bool = False
    #: The AutoNAT service dials back private addresses too (lab and LAN networks).
    autonat_allow_private: bool = False
    #: ``Identity.PrivKey`` decoded (marshalled key bytes), or ``None``.
    identity_priv_key: bytes | None = None
    #: ``Identity.PeerID`` text, or ``None``.
    identity_peer_id: str | None = None
    config: Config = Config()
    #: The body cap of the image/edit endpoints (``API.ImageEditMaxBodyBytes``).
    image_edit_max_body_bytes: int = DEFAULT_IMAGE_EDIT_MAX_BODY_BYTES
    #: The HTTP API's default response shape, ``v0.1.2`` or ``v0.2.3`` (``API.Envelope``).
    api_envelope: str = "v0.1.2"
    #: The schema of our heartbeats, ``v0.2.3`` or ``v0.1.2`` (``App.WireVersion``).
    wire_version: str = "v0.2.3"
    #: The config file the node was started with, or ``None`` (``/bootstrap/add`` writes it back).
    config_path: Path | None = None

    @property
    def kad_protocol(self) -> str:
        """The DHT protocol ID, e.g. ``/dbc/kad/1.0.0``."""
        return f"{self.kad_protocol_prefix}/kad/1.0.0"


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
            api_port = parse_port(port)
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
        if dht_mode not in DHT_MODES:
            raise ConfigError(f"--dht-mode: invalid value {mode!r}; expected client, server or auto")
    else:
        dht_mode = ROUTING_TO_DHT_MODE[config.routing.type]

    if (level := _opt(options, "log-level")) is not None:
        name = str(level).strip().lower()
        if name not in LOG_LEVELS:
            raise ConfigError(f"--log-level: invalid log level {level!r}")
        log_level = LOG_LEVELS[name]
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
        image_edit_max_body_bytes=config.api.image_edit_max_body_bytes,
        api_envelope=config.api.envelope,
        wire_version=config.app.wire_version,
        config_path=Path(config_path).absolute() if config_path is not None else None,
        log_level=log_level,
        topic=config.app.topic_name,
        kad_protocol_prefix=config.routing.protocol_prefix,
        heartbeat_interval=config.app.peers_collect.heartbeat_interval,
        connmgr=config.swarm.conn_mgr,
        ipfs_api=config.app.ipfs_storage_api or None,
        ai_projects=config.ai_projects,
        key_type=key_type,
        dial_timeout=config.swarm.dial_timeout,
        autonat_service=config.swarm.enable_autonat_service,
        autonat_allow_private=config.swarm.autonat_service_allow_private,
        identity_priv_key=base64.b64decode(ident.priv_key) if ident.priv_key else None,
        identity_peer_id=ident.peer_id or None,
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
