"""Writing a :class:`~aicn.config.schema.Config` as the Go node's JSON config file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from aicn.config import gojson
from aicn.config.schema import Config, ConfigError
from aicn.duration import format_go_duration
from aicn.files import atomic_write

__all__ = ["config_to_json", "write_config", "update_bootstrap"]


def _dur(seconds: float | None) -> str:
    return "" if seconds is None else format_go_duration(seconds)


def config_to_json(config: Config) -> dict:
    """The config as a JSON-ready dict with the Go node's key names."""
    s, a = config.swarm, config.app
    cm = s.conn_mgr
    return {
        "Bootstrap": list(config.bootstrap),
        "Addresses": list(config.addresses),
        "API": {
            "Addr": config.api.addr,
            "Token": config.api.token,
            "MaxBodyBytes": config.api.max_body_bytes,
            "HeaderTimeout": format_go_duration(config.api.header_timeout),
            "BodyTimeout": format_go_duration(config.api.body_timeout),
            "IdleTimeout": format_go_duration(config.api.idle_timeout),
            "MaxConnections": config.api.max_connections,
            "ImageEditMaxBodyBytes": config.api.image_edit_max_body_bytes,
            "Envelope": config.api.envelope,
        },
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
            "MaxInboundConnections": s.max_inbound_connections,
            "MaxPendingHandshakes": s.max_pending_handshakes,
            "HandshakeTimeout": format_go_duration(s.handshake_timeout),
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
            "WireVersion": a.wire_version,
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
    text = json.dumps(config_to_json(config), indent=2, ensure_ascii=False) + "\n"
    atomic_write(Path(path), text.encode("utf-8"), mode=0o600, overwrite=overwrite)


def update_bootstrap(path: str | os.PathLike, *, add: str | None = None,
                     remove: str | None = None) -> list[str]:
    """Add ``add`` to (or drop ``remove`` from) the ``Bootstrap`` list of the config file at ``path``,
    as Go v0.2.3's ``/bootstrap/add`` and ``/bootstrap/rm`` save the config.

    Only that list changes: every other key stays as the file has it (unknown ones too), in its
    order; its mode is kept.  Returns the file's new list.  Raises :class:`ConfigError` when the
    file cannot be read as a JSON object with a list there, ``OSError`` when it cannot be written.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o777
        obj = json.loads(path.read_bytes())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config: {exc}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: the config is not a JSON object")
    key, current = gojson.lookup(obj, "Bootstrap")
    if current is gojson.MISSING:
        key, current = "Bootstrap", []
    if not isinstance(current, list):
        raise ConfigError(f"{path}: Bootstrap is not a JSON array")
    entries = [e for e in current if e != remove]
    if add is not None and add not in entries:
        entries.append(add)
    obj[key] = entries
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    atomic_write(path, text.encode("utf-8"), mode=mode, overwrite=True)  # the file's own mode
    return entries
