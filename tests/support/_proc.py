"""
Shared plumbing for the test-support launchers: child processes that are
always reaped, free loopback ports, and polling an HTTP endpoint until the
server behind it is ready.
"""

from __future__ import annotations

import os
import signal
import socket
from typing import Awaitable, Callable, Mapping, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

#: The worktree root, so children can ``python -m tests.support.…``.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ComponentError(Exception):
    """A test component failed to start or misbehaved."""


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago.

    Only for servers that cannot listen on port 0 and report the port back;
    callers retry on the (rare) race with another process.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


class ChildProcess(ProcessProtocol):
    """
    A child process whose output is kept (bounded) for error messages, with
    a Deferred that fires when it has exited and a way to wait for a line.
    """

    MAX_OUTPUT = 64 * 1024

    def __init__(self, name: str) -> None:
        self.name = name
        self.output = bytearray()
        self.exit_status: int | None = None
        self._ended: list[Deferred[None]] = []
        self._line_waiters: list[tuple[bytes, Deferred[bytes]]] = []
        self._partial = b""
        self.exited = False

    def outReceived(self, data: bytes) -> None:
        self._keep(data)
        self._partial += data
        *lines, self._partial = self._partial.split(b"\n")
        self._partial = self._partial[-self.MAX_OUTPUT:]
        for line in lines:
            for prefix, d in list(self._line_waiters):
                if line.startswith(prefix):
                    self._line_waiters.remove((prefix, d))
                    d.callback(line)

    def errReceived(self, data: bytes) -> None:
        self._keep(data)

    def _keep(self, data: bytes) -> None:
        self.output += data
        if len(self.output) > self.MAX_OUTPUT:
            del self.output[: len(self.output) - self.MAX_OUTPUT]

    def processEnded(self, reason: Failure) -> None:
        self.exited = True
        self.exit_status = getattr(reason.value, "exitCode", None)
        waiters, self._line_waiters = self._line_waiters, []
        for _, d in waiters:
            d.errback(ComponentError(f"{self.name} exited ({reason.value}):\n{self.tail()}"))
        ended, self._ended = self._ended, []
        for d in ended:
            d.callback(None)

    def tail(self, n: int = 4000) -> str:
        """The last *n* bytes the child wrote, for error messages."""
        return bytes(self.output[-n:]).decode("utf-8", "replace")

    def wait_line(self, prefix: bytes) -> Deferred[bytes]:
        """Fire with the first later stdout line starting with *prefix*."""
        d: Deferred[bytes] = Deferred()
        if self.exited:
            d.errback(ComponentError(f"{self.name} has exited:\n{self.tail()}"))
        else:
            self._line_waiters.append((prefix, d))
        return d

    def ended(self) -> Deferred[None]:
        """Fire when the child has exited (at once if it has)."""
        d: Deferred[None] = Deferred()
        if self.exited:
            d.callback(None)
        else:
            self._ended.append(d)
        return d

    def signal(self, sig: str) -> None:
        """Send *sig* ("TERM", "KILL") to the child's process group."""
        if self.exited or self.transport is None:
            return
        pid = self.transport.pid
        try:
            # spawn() makes each child a session (and group) leader, so the
            # group signal also reaches any grandchildren it started.
            os.killpg(pid, getattr(signal, "SIG" + sig))
        except (ProcessLookupError, PermissionError, TypeError):
            try:
                self.transport.signalProcess(sig)
            except ProcessExitedAlready:
                pass

    async def stop(self, reactor: IReactorTime, grace: float = 5.0) -> None:
        """TERM, then KILL after *grace* seconds; returns once reaped."""
        if self.exited:
            return
        self.signal("TERM")
        done = self.ended()
        timer = reactor.callLater(grace, self.signal, "KILL")
        try:
            await done
        finally:
            if timer.active():
                timer.cancel()


def spawn(
    reactor: IReactorProcess,
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> ChildProcess:
    """
    Start *argv* in its own session (so :meth:`ChildProcess.signal` reaches
    its whole process group) with *env* added to a copy of ours.
    """
    proto = ChildProcess(name)
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    # setsid(1) puts the child in a new session/process group.
    reactor.spawnProcess(proto, "/usr/bin/setsid", ["setsid", *argv], env=full_env, path=cwd)
    return proto


async def wait_http(
    reactor: IReactorTime,
    probe: Callable[[], Awaitable[bool]],
    child: ChildProcess,
    timeout: float,
    what: str,
    interval: float = 0.1,
) -> None:
    """
    Call *probe* until it returns true; fail if *child* exits first or
    *timeout* seconds pass.  *probe* may raise (e.g. connection refused),
    which counts as "not yet".
    """
    deadline = reactor.seconds() + timeout
    while True:
        if child.exited:
            raise ComponentError(f"{what} exited during start-up:\n{child.tail()}")
        try:
            if await probe():
                return
        except Exception:
            pass
        if reactor.seconds() >= deadline:
            raise ComponentError(f"{what} not ready after {timeout} s:\n{child.tail()}")
        await deferLater(reactor, interval, lambda: None)


__all__ = [
    "REPO_ROOT",
    "ComponentError",
    "ChildProcess",
    "free_port",
    "spawn",
    "wait_http",
]


def http_client(reactor: object):
    """
    A treq client without persistent connections, so that no idle
    connection (or its timeout) outlives a test and dirties trial's reactor.
    """
    import treq.client
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    return treq.client.HTTPClient(Agent(reactor, pool=pool))
