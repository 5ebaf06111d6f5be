"""Child processes of the process benches (routing, openai, load): nodes and
model servers started with this interpreter from the repository root, their
output kept, and all of them stopped at the end."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

REPO = Path(__file__).resolve().parents[1]


class Proc(protocol.ProcessProtocol):
    """One child: ``out`` (stdout and stderr, the last ``keep`` bytes when
    given), ``ended`` (fires when it exits)."""

    def __init__(self, keep: int | None = None) -> None:
        self.out = bytearray()
        self.ended: Deferred = Deferred()
        self._keep = keep

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if self._keep is not None:
            del self.out[:-self._keep]

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.ended.callback(None)


class Processes:
    """The children of one run; :meth:`stop` ends them all (TERM, KILL after 15 s)."""

    def __init__(self, reactor, *, keep: int | None = None) -> None:
        self.reactor = reactor
        self.keep = keep
        self.procs: list[Proc] = []
        self.env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def spawn(self, argv: list[str]) -> Proc:
        """Run ``python argv...`` in the repository root."""
        p = Proc(self.keep)
        p.transport = self.reactor.spawnProcess(p, sys.executable, [sys.executable] + argv, env=self.env,
                                                path=str(REPO))
        self.procs.append(p)
        return p

    async def stop(self) -> None:
        for p in self.procs:
            if not p.ended.called:
                p.transport.signalProcess("TERM")
        for p in self.procs:
            try:
                await p.ended.addTimeout(15, self.reactor)
            except Exception:
                p.transport.signalProcess("KILL")


async def sleep(reactor, seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def call_json(url: str, body=None, method: str = "POST"):
    """One HTTP request with a JSON body (if any); the decoded JSON answer."""
    import treq

    data = json.dumps(body).encode() if body is not None else None
    resp = await treq.request(method, url, data=data, persistent=False)
    return json.loads(await resp.content())
