"""The ``aicn`` console command: node set-up helpers, like the Go ``host`` CLI.

* ``aicn init [--mode worker|input] [--dir D] [--key-type T]``: write
  ``D/<mode>.json`` and ``D/peer.key`` (never overwriting), print the peer ID.
* ``aicn peerkey PATH``: print the peer ID and public key of a key file,
  creating it if missing.
* ``aicn psk``: print a new random pre-shared key (64 hex characters).
* ``aicn version``: print the version.

The node itself runs under twistd (``twistd -n aicn ...``).
"""

from __future__ import annotations

import argparse
import contextlib
import base64
import os
import secrets
import sys
from pathlib import Path
from typing import TextIO

from aicn import AGENT_VERSION, PROTOCOL_VERSION, __version__
from aicn.config import (
    APIConfig,
    AppConfig,
    Config,
    ConfigError,
    ConnMgrConfig,
    IdentityConfig,
    PeersCollectConfig,
    PubsubConfig,
    RelayServiceConfig,
    RoutingConfig,
    SwarmConfig,
    write_config,
)
from aicn.identity import KEY_FILE, IdentityError, ensure_data_dir, load_or_create_key_file
from aicn.p2p.keys import PrivateKey

__all__ = ["main", "init_config"]

# Ports of the two generated profiles (digest §6.2 template; input = the
# public "server" profile).
_MODES = {
    "worker": {"p2p": 7001, "api": 7002},
    "input": {"p2p": 6001, "api": 6000},
}


def init_config(mode: str, key: PrivateKey, data_dir: Path) -> Config:
    """The config ``aicn init`` writes for ``mode`` (``worker`` or ``input``)."""
    ports = _MODES[mode]
    server = mode == "input"
    return Config(
        bootstrap=(),
        addresses=(f"/ip4/0.0.0.0/tcp/{ports['p2p']}", f"/ip6/::/tcp/{ports['p2p']}"),
        api=APIConfig(addr=f"127.0.0.1:{ports['api']}"),
        # The key stays in peer.key; the ID here makes a mixed-up key an error.
        identity=IdentityConfig(peer_id=str(key.peer_id())),
        swarm=SwarmConfig(
            conn_mgr=ConnMgrConfig(type="basic", grace_period=60.0, high_water=400, low_water=100),
            disable_nat_port_map=server,
            relay_service=RelayServiceConfig(enabled=server),
            enable_autonat_service=True,
        ),
        pubsub=PubsubConfig(enabled=True, router="floodsub", flood_publish=True),
        routing=RoutingConfig(type="dhtserver" if server else "dhtclient", protocol_prefix="/dbc"),
        app=AppConfig(
            log_level="info",
            log_output="stderr",
            datastore=str(data_dir),
            peers_collect=PeersCollectConfig(enabled=server, heartbeat_interval=60.0),
        ),
    )


def _print_key(key: PrivateKey, out: TextIO) -> None:
    print(f"Peer ID: {key.peer_id()}", file=out)
    print(f"Public key: {base64.b64encode(key.public_key.marshal()).decode()}", file=out)


def _cmd_init(args: argparse.Namespace, out: TextIO) -> int:
    directory = ensure_data_dir(Path(os.path.expanduser(args.dir)).absolute())
    config_path = directory / f"{args.mode}.json"
    key_path = directory / KEY_FILE
    existing = [str(p) for p in (config_path, key_path) if os.path.lexists(p)]
    if existing:
        raise ConfigError(f"refusing to overwrite existing {' and '.join(existing)}")
    key, _ = load_or_create_key_file(key_path, args.key_type)
    write_config(config_path, init_config(args.mode, key, directory))
    print(f"Wrote {config_path} and {key_path}", file=out)
    _print_key(key, out)
    print(f"Start with: twistd -n aicn --config {config_path}", file=out)
    return 0


def _cmd_peerkey(args: argparse.Namespace, out: TextIO) -> int:
    path = Path(os.path.expanduser(args.path))
    key, created = load_or_create_key_file(path, args.key_type)
    if created:
        print(f"Created {path}", file=out)
    _print_key(key, out)
    return 0


def _cmd_psk(args: argparse.Namespace, out: TextIO) -> int:
    print(secrets.token_bytes(32).hex(), file=out)
    return 0


def _cmd_version(args: argparse.Namespace, out: TextIO) -> int:
    print(f"aicn {__version__} ({AGENT_VERSION}, protocol {PROTOCOL_VERSION})", file=out)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aicn", description="aicn node set-up helpers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("init", help="write a node config and peer.key")
    p.add_argument("--mode", choices=sorted(_MODES), default="worker", help="node profile (default: worker)")
    p.add_argument("--dir", default="~/.aicn", help="directory to write into (default: ~/.aicn)")
    p.add_argument("--key-type", choices=("secp256k1", "ed25519"), default="secp256k1")
    p.set_defaults(func=_cmd_init)
    p = sub.add_parser("peerkey", help="print a key file's peer ID, creating the key if missing")
    p.add_argument("path")
    p.add_argument("--key-type", choices=("secp256k1", "ed25519"), default="secp256k1")
    p.set_defaults(func=_cmd_peerkey)
    sub.add_parser("psk", help="print a new random pre-shared key").set_defaults(func=_cmd_psk)
    sub.add_parser("version", help="print the version").set_defaults(func=_cmd_version)
    return parser


def main(argv: list[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the CLI; returns the exit status (2 for usage errors, 1 for failures)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = _parser()
    try:
        # argparse prints help/usage errors itself and exits; keep them on our streams.
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        return args.func(args, out)
    except (ConfigError, IdentityError) as exc:
        print(f"aicn {args.command}: {exc}", file=err)
        return 1
