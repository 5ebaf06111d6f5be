"""The ``aicn`` console command: node set-up helpers, like the Go ``host`` CLI.

* ``aicn init [--mode worker|input] [--dir D] [--key-type T]``: write
  ``D/<mode>.json`` and ``D/peer.key`` (never overwriting), print the peer ID;
  it takes the data directory's lock, so it refuses while a node runs there.
* ``aicn peerkey PATH``: print the peer ID and public key of a key file,
  creating it if missing.
* ``aicn psk``: print a new random pre-shared key (64 hex characters).
* ``aicn version``: print the version.
* ``aicn ping MULTIADDR`` and ``aicn perf MULTIADDR``: dial a peer with a
  throw-away identity and run ``/ipfs/ping/1.0.0`` or ``/perf/1.0.0``
  against it (connectivity checks and throughput measurements).

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
from aicn.datadir import DataDirLock, DataDirLockError
from aicn.identity import KEY_FILE, IdentityError, ensure_data_dir, load_or_create_key_file
from aicn.config import DBC_PSK_HEX as _DBC_PSK
from aicn.p2p.keys import PrivateKey
from aicn.p2p.swarm import DialError

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
    # Not while a node runs on the directory (or another init writes to it).
    with DataDirLock(directory):
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


_UNITS = {"": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6, "mib": 1024**2,
          "g": 10**9, "gb": 10**9, "gib": 1024**3}


def parse_size(text: str) -> int:
    """``"64MiB"`` → 67108864; plain numbers are bytes."""
    import re

    m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 1048576, 64MiB, 1GiB)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def _run_on_reactor(work) -> int:
    """Run ``async work(reactor)`` on the global reactor (this is a CLI edge)."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    outcome = {}

    def start() -> None:
        d = Deferred.fromCoroutine(work(reactor))
        d.addBoth(lambda result: outcome.setdefault("result", result))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    result = outcome.get("result")
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


async def _connect_for_tool(reactor, args):
    from aicn.config import parse_psk
    from aicn.p2p import maddr
    from aicn.p2p.host import Host

    _, peer = maddr.split_peer(args.addr)
    if peer is None:
        raise ConfigError(f"{args.addr} must end with /p2p/<peer id>")
    host = Host(reactor, PrivateKey.generate(), psk=parse_psk(args.psk), ping_interval=None)
    await host.start([])
    conn = await host.connect(peer, [args.addr])
    return host, peer, conn


def _cmd_ping(args: argparse.Namespace, out: TextIO) -> int:
    async def work(reactor):
        host, peer, conn = await _connect_for_tool(reactor, args)
        try:
            print(f"Connected to {peer} via {conn.remote_addr}", file=out)
            for rtt in await host.ping(peer, args.count):
                print(f"pong from {peer}: time={rtt * 1000:.2f} ms", file=out)
        finally:
            await host.stop()
        return 0

    return _run_on_reactor(work)


def _cmd_perf(args: argparse.Namespace, out: TextIO) -> int:
    from aicn.p2p import perf

    async def work(reactor):
        host, peer, conn = await _connect_for_tool(reactor, args)
        try:
            stream = await conn.new_stream([perf.PERF])
            result = await perf.perf(stream, args.upload, args.download, reactor)
        finally:
            await host.stop()
        up = result.upload_bytes / max(result.upload_seconds, 1e-9) / 1e6
        down = result.download_bytes / max(result.download_seconds, 1e-9) / 1e6
        print(f"upload   {result.upload_bytes} bytes in {result.upload_seconds:.3f} s: {up:.1f} MB/s", file=out)
        print(f"download {result.download_bytes} bytes in {result.download_seconds:.3f} s: {down:.1f} MB/s", file=out)
        return 0

    return _run_on_reactor(work)


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
    psk_help = "private network key: 64 hex characters or 'none' (default: the DBC key)"
    p = sub.add_parser("ping", help="dial a peer and ping it (/ipfs/ping/1.0.0)")
    p.add_argument("addr", help="the peer's multiaddr, ending with /p2p/<peer id>")
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--psk", default=_DBC_PSK, help=psk_help)
    p.set_defaults(func=_cmd_ping)
    p = sub.add_parser("perf", help="measure throughput to a peer (/perf/1.0.0)")
    p.add_argument("addr", help="the peer's multiaddr, ending with /p2p/<peer id>")
    p.add_argument("--upload", type=parse_size, default=parse_size("16MiB"))
    p.add_argument("--download", type=parse_size, default=parse_size("16MiB"))
    p.add_argument("--psk", default=_DBC_PSK, help=psk_help)
    p.set_defaults(func=_cmd_perf)
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
    except (ConfigError, IdentityError, DataDirLockError, DialError, ValueError) as exc:
        print(f"aicn {args.command}: {exc}", file=err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
