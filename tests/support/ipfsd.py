"""
Run a real IPFS node for tests: the js-ipfs 0.66.1 daemon (Kubo-compatible
HTTP RPC on ``/api/v0`` plus a read-only gateway), offline and on loopback.

Install with ``tests/support/ipfs/install.sh``; tests skip with
:func:`ipfs_skip_reason` when it is not installed.

Network safety: the repo is initialised with ``--profile test`` and then its
config is rewritten so that nothing can leave 127.0.0.1: no bootstrap peers,
no MDNS / webRTC-star discovery, no delegate routers, no DHT, swarm on
127.0.0.1 only, and the daemon runs ``--offline --enable-preload=false``
(``--offline`` means libp2p is never started).

Facts the node code needs (checked against this daemon):

* ``POST /api/v0/add?pin=true`` with a multipart part named ``file``
  answers ``{"Name","Hash","Size","Mode"}`` (one JSON line per file); the
  Hash is a CIDv0 ``Qm…`` (see :mod:`.cid`).
* ``POST /api/v0/files/write?arg=/models/x.json&create=true&parents=true``
  rejects a multipart part *without* a Content-Type ("No content-type in
  multipart part"); send ``Content-Type: application/octet-stream`` as Go's
  ``CreateFormFile`` does.
* ``POST /api/v0/id`` answers 200 when the node is up.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from typing import Any

from twisted.internet.defer import Deferred, FirstError, gatherResults

from ._proc import ChildProcess, ComponentError, http_client, spawn, wait_http

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ipfs")
CLI = os.path.join(HERE, "node_modules", "ipfs", "src", "cli.js")


def ipfs_skip_reason() -> str | None:
    """None if the js-ipfs daemon can run here, else why not (for ``skip``)."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not os.path.exists(CLI):
        return f"js-ipfs not installed ({CLI}); run tests/support/ipfs/install.sh"
    return None


def ipfs_available() -> bool:
    """Whether :func:`start_ipfs` can work here."""
    return ipfs_skip_reason() is None


def _node_argv(*args: str) -> list[str]:
    # No Promise.withResolvers polyfill needed on Node 20: the mortice 3.0.6
    # override removes the only runtime use (abort-error only mentions it in
    # a comment).
    return ["node", CLI, *args]


def multipart(parts: list[tuple[str, str, bytes, str | None]]) -> tuple[bytes, str]:
    """
    A multipart/form-data body from ``(field, filename, data, content_type)``
    parts (``content_type`` None omits the header); returns (body,
    Content-Type header value).
    """
    boundary = uuid.uuid4().hex
    out = bytearray()
    for field, filename, data, ctype in parts:
        out += f"--{boundary}\r\n".encode()
        out += f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'.encode()
        if ctype is not None:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def _lock_down(config: dict[str, Any]) -> dict[str, Any]:
    """Make a js-ipfs config loopback-only and offline; pick ports at bind."""
    addrs = config.setdefault("Addresses", {})
    addrs["API"] = "/ip4/127.0.0.1/tcp/0"
    addrs["Gateway"] = "/ip4/127.0.0.1/tcp/0"
    addrs.pop("RPC", None)  # the gRPC-over-websocket server: not needed
    addrs["Swarm"] = ["/ip4/127.0.0.1/tcp/0"]
    addrs["Announce"] = []
    addrs["NoAnnounce"] = []
    addrs["Delegates"] = []
    config["Bootstrap"] = []
    disc = config.setdefault("Discovery", {})
    disc["MDNS"] = {"Enabled": False, "Interval": 10}
    disc["webRTCStar"] = {"Enabled": False}
    config.setdefault("Swarm", {})["DisableNatPortMap"] = True
    config.setdefault("Routing", {})["Type"] = "none"
    return config


class IPFSDaemon:
    """A running js-ipfs daemon (see :func:`start_ipfs`)."""

    def __init__(self, reactor: Any, child: ChildProcess, repo: str,
                 api_port: int, gateway_port: int) -> None:
        self._reactor = reactor
        self._child = child
        self.repo = repo
        #: RPC base URL, ``http://127.0.0.1:<port>`` (calls go to ``/api/v0/…``).
        self.api_url = f"http://127.0.0.1:{api_port}"
        #: Gateway base URL; files are at ``/ipfs/<cid>``.
        self.gateway_url = f"http://127.0.0.1:{gateway_port}"

    async def _post(self, path: str, params: dict[str, str] | list[tuple[str, str]],
                    body: bytes | None = None, ctype: str | None = None) -> bytes:
        headers = {"Content-Type": [ctype]} if ctype else None
        resp = await http_client(self._reactor).post(self.api_url + "/api/v0/" + path, params=params,
                               data=body, headers=headers, timeout=30)
        content = await resp.content()
        if resp.code != 200:
            raise ComponentError(f"ipfs {path} -> {resp.code}: {content[:500]!r}")
        return content

    async def id(self) -> dict[str, Any]:
        """``/api/v0/id``."""
        return json.loads(await self._post("id", {}))

    async def add(self, data: bytes, name: str = "file", pin: bool = True) -> str:
        """``/api/v0/add``; returns the CID (CIDv0)."""
        body, ctype = multipart([("file", name, data, "application/octet-stream")])
        out = await self._post("add", {"pin": "true" if pin else "false"}, body, ctype)
        return json.loads(out.splitlines()[-1])["Hash"]

    async def cat(self, cid: str) -> bytes:
        """``/api/v0/cat``: the file's bytes."""
        return await self._post("cat", {"arg": cid})

    async def files_write(self, path: str, data: bytes,
                          content_type: str | None = "application/octet-stream") -> None:
        """MFS write with ``create&parents`` (as the Go node writes history)."""
        body, ctype = multipart([("file", os.path.basename(path), data, content_type)])
        await self._post("files/write", {"arg": path, "create": "true", "parents": "true"},
                         body, ctype)

    async def files_read(self, path: str) -> bytes:
        """MFS read."""
        return await self._post("files/read", {"arg": path})

    async def files_ls(self, path: str) -> list[str]:
        """MFS directory listing: the entries' names."""
        reply = json.loads(await self._post("files/ls", {"arg": path}))
        return [entry["Name"] for entry in reply.get("Entries") or []]

    async def gateway_get(self, cid: str) -> bytes:
        """``GET {gateway}/ipfs/<cid>``."""
        resp = await http_client(self._reactor).get(f"{self.gateway_url}/ipfs/{cid}", timeout=30)
        content = await resp.content()
        if resp.code != 200:
            raise ComponentError(f"gateway /ipfs/{cid} -> {resp.code}")
        return content

    def output(self) -> str:
        """The tail of the daemon's log."""
        return self._child.tail()

    async def stop(self) -> None:
        """Stop the daemon (TERM, then KILL) and wait until it is reaped."""
        await self._child.stop(self._reactor, grace=10.0)


def init_repo(repo_dir: str) -> None:
    """``jsipfs init --profile test`` into *repo_dir*, then lock the config down."""
    env = dict(os.environ, IPFS_PATH=repo_dir)
    r = subprocess.run(_node_argv("init", "--profile", "test", "--algorithm", "ed25519"),
                       env=env, capture_output=True, text=True, timeout=120)
    if r.returncode:
        raise ComponentError(f"jsipfs init failed:\n{r.stdout}{r.stderr}")
    cfg_path = os.path.join(repo_dir, "config")
    with open(cfg_path) as f:
        config = json.load(f)
    with open(cfg_path, "w") as f:
        json.dump(_lock_down(config), f, indent=2)


_template: list[str] = []


def _template_repo() -> str:
    """
    An initialised, locked-down repo, made once per process: ``init`` costs
    seconds (key generation, a node start), copying it costs milliseconds.
    Repos copied from it share a peer ID, which is fine offline.
    """
    if not _template:
        base = tempfile.mkdtemp(prefix="aicn-ipfs-template-")
        atexit.register(shutil.rmtree, base, True)
        repo = os.path.join(base, "repo")
        init_repo(repo)
        _template.append(repo)
    return _template[0]


async def _listening(child: ChildProcess, what: bytes) -> int:
    line = await child.wait_line(what)
    # e.g. "HTTP API listening on /ip4/127.0.0.1/tcp/40123/http"
    parts = line.decode().split("/")
    return int(parts[parts.index("tcp") + 1])


async def start_ipfs(reactor: Any, repo_dir: str, timeout: float = 60.0) -> IPFSDaemon:
    """
    Give *repo_dir* an initialised repo (if it has none) and start an offline
    js-ipfs daemon on free 127.0.0.1 ports; return once ``POST /api/v0/id``
    answers 200.
    """
    reason = ipfs_skip_reason()
    if reason:
        raise ComponentError(reason)
    if not os.path.exists(os.path.join(repo_dir, "config")):
        shutil.copytree(_template_repo(), repo_dir, dirs_exist_ok=True)
    child = spawn(reactor, "jsipfs daemon",
                  _node_argv("daemon", "--offline", "--enable-preload=false"),
                  env={"IPFS_PATH": repo_dir}, cwd=HERE)
    timer = reactor.callLater(timeout, child.signal, "KILL")
    try:
        # Both waiters must exist before the lines can arrive.
        api_port, gw_port = await gatherResults([
            Deferred.fromCoroutine(_listening(child, b"HTTP API listening on")),
            Deferred.fromCoroutine(_listening(child, b"Gateway (read only) listening on")),
        ], consumeErrors=True)
        daemon = IPFSDaemon(reactor, child, repo_dir, api_port, gw_port)

        async def probe() -> bool:
            await daemon.id()
            return True

        await wait_http(reactor, probe, child, timeout, "jsipfs daemon")
    except FirstError as e:
        await child.stop(reactor)
        raise e.subFailure.value from None
    except BaseException:
        await child.stop(reactor)
        raise
    finally:
        if timer.active():
            timer.cancel()
    return daemon


__all__ = [
    "IPFSDaemon",
    "init_repo",
    "ipfs_available",
    "ipfs_skip_reason",
    "multipart",
    "start_ipfs",
]
