"""Run real ``twistd aicn`` processes for integration tests."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import treq
from twisted.internet import defer, protocol
from twisted.internet.task import deferLater

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Collect(protocol.ProcessProtocol):
    def __init__(self):
        self.output = bytearray()
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


class NodeProcess:
    """One ``twistd -n aicn`` child process."""

    def __init__(self, reactor, data_dir, *args: str, port: int | None = None) -> None:
        self.reactor = reactor
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.args = list(args)
        self.proto = _Collect()
        self.transport = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "aicn",
                "--port", str(self.port), "--data-dir", str(self.data_dir)] + self.args
        self.transport = self.reactor.spawnProcess(self.proto, sys.executable, argv, env=env, path=str(REPO))

    async def wait_ready(self, timeout: float = 30.0) -> dict:
        """Poll ``/api/v0/id`` until it answers; fail if the process dies first."""
        deadline = self.reactor.seconds() + timeout
        while self.reactor.seconds() < deadline:
            if self.proto.ended.called:
                raise RuntimeError(f"node exited early:\n{self.proto.output.decode(errors='replace')}")
            try:
                resp = await treq.get(self.api + "/api/v0/id", timeout=2, persistent=False)
                if resp.code == 200:
                    return json.loads(await resp.content())
            except Exception:
                pass
            await deferLater(self.reactor, 0.2, lambda: None)
        raise RuntimeError(f"node not ready in {timeout}s:\n{self.proto.output.decode(errors='replace')}")

    async def wait_exit(self, timeout: float = 30.0) -> int:
        return await self.proto.ended.addTimeout(timeout, self.reactor)

    async def stop(self) -> None:
        if self.transport is not None and not self.proto.ended.called:
            self.transport.signalProcess("TERM")
            try:
                await self.proto.ended.addTimeout(15, self.reactor)
            except defer.TimeoutError:
                self.transport.signalProcess("KILL")
                await self.proto.ended

    @property
    def output(self) -> str:
        return self.proto.output.decode(errors="replace")
