"""
Drive the js-libp2p reference peer (``tests/interop/js/peer.mjs``) from trial.

The peer is a long-running Node process speaking JSON lines: commands go to
its stdin, replies and pushed events come back on stdout, logs on stderr.
Typical use from a ``twisted.trial.unittest.TestCase``::

    from tests.interop.jspeer import js_available, js_unavailable_reason, start_js_peer

    class T(TestCase):
        if not js_available():
            skip = js_unavailable_reason()

        async def _test(self):
            from twisted.internet import reactor
            js = await start_js_peer(reactor, "--echo", "--psk", PSK_HEX)
            self.addCleanup(js.stop)
            reply = await js.call("dial", addr=our_addr)
            event = await js.next_event("message", timeout=5)

        def test_it(self):
            return Deferred.fromCoroutine(self._test())

See ``tests/interop/js/README.md`` for every command and event.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import deque
from pathlib import Path
from typing import Any, Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferredTimeoutError
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = [
    "JS_DIR",
    "PEER_SCRIPT",
    "JSPeer",
    "JSPeerError",
    "JSPeerExited",
    "js_available",
    "js_unavailable_reason",
    "node_executable",
    "pattern_bytes",
    "start_js_peer",
]

#: The js package directory (``package.json``, ``peer.mjs``, ``node_modules``).
JS_DIR = Path(__file__).resolve().parent / "js"
#: The peer script started by :func:`start_js_peer`.
PEER_SCRIPT = JS_DIR / "peer.mjs"

_STDERR_TAIL_LINES = 200
_log = Logger(namespace="aicn.tests.jspeer")


def node_executable() -> str | None:
    """Path of the ``node`` binary: ``$AICN_NODE`` if set, else ``node`` on PATH."""
    override = os.environ.get("AICN_NODE")
    if override:
        return override if os.access(override, os.X_OK) else None
    return shutil.which("node")


def js_unavailable_reason() -> str | None:
    """Why the js peer cannot run here, or ``None`` if it can (a ready skip message)."""
    if node_executable() is None:
        return "js interop: node not found (install Node 20 or set AICN_NODE)"
    if not (JS_DIR / "node_modules" / "libp2p").is_dir():
        return f"js interop: run {JS_DIR / 'install.sh'} first (node_modules missing)"
    return None


def js_available() -> bool:
    """Whether ``node`` and ``tests/interop/js/node_modules`` are present."""
    return js_unavailable_reason() is None


def pattern_bytes(seed: int | str, size: int) -> bytes:
    """
    The deterministic test bytes ``peer.mjs`` sends for ``echo`` and ``sink``.

    AES-128-CTR keystream with key ``sha256(b"aicn-test-pattern:" + str(seed))[:16]``
    and a zero IV.  ``echo`` stream ``i`` uses seed ``i``; ``sink`` uses seed
    ``"sink"`` unless the command gives one.
    """
    key = hashlib.sha256(f"aicn-test-pattern:{seed}".encode()).digest()[:16]
    enc = Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16)).encryptor()
    return enc.update(b"\0" * size) + enc.finalize()


class JSPeerError(Exception):
    """A command answered ``{"ok": false}``; ``.error`` is the js error text."""

    def __init__(self, command: str, error: str, reply: dict[str, Any]) -> None:
        super().__init__(f"js {command} failed: {error}")
        self.command = command
        self.error = error
        self.reply = reply


class JSPeerExited(Exception):
    """The node process ended (or never became ready); includes its stderr tail."""


class _PeerProcess(ProcessProtocol):
    """Splits stdout into JSON lines and keeps a tail of stderr."""

    def __init__(self, peer: "JSPeer") -> None:
        self._peer = peer
        self._out = b""
        self._err = b""

    def outReceived(self, data: bytes) -> None:
        self._out += data
        *lines, self._out = self._out.split(b"\n")
        for line in lines:
            if line.strip():
                self._peer._lineReceived(line)

    def errReceived(self, data: bytes) -> None:
        self._err += data
        *lines, self._err = self._err.split(b"\n")
        for line in lines:
            text = line.decode("utf-8", "replace")
            self._peer.stderr_tail.append(text)
            _log.debug("js[{pid}] {line}", pid=self._peer.pid, line=text)

    def processEnded(self, reason: Failure) -> None:
        if self._err:
            self._peer.stderr_tail.append(self._err.decode("utf-8", "replace"))
        self._peer._processEnded(reason)


class JSPeer:
    """
    A running ``peer.mjs``.  Create with :func:`start_js_peer`.

    After start-up, ``peer_id``, ``addrs`` (full multiaddrs with ``/p2p``)
    and ``protocols`` hold what the ready line announced.
    """

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor
        self._proto = _PeerProcess(self)
        self._transport: Any = None
        self._next_id = 0
        self._calls: dict[int, tuple[str, Deferred[dict[str, Any]]]] = {}
        self._events: deque[dict[str, Any]] = deque()
        self._waiters: list[tuple[str, Callable[[dict[str, Any]], bool] | None, Deferred[dict[str, Any]]]] = []
        self._end_waiters: list[Deferred[None]] = []
        self._exit_reason: Failure | None = None
        self._stopping = False
        self.stderr_tail: deque[str] = deque(maxlen=_STDERR_TAIL_LINES)
        self.ready: dict[str, Any] = {}
        self.peer_id: str = ""
        self.addrs: list[str] = []
        self.protocols: list[str] = []
        self.pid: int | None = None

    # -- process plumbing ------------------------------------------------

    def _lineReceived(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            _log.warn("js peer wrote a non-JSON line: {line!r}", line=line[:200])
            return
        if "event" in msg:
            self._eventReceived(msg)
            return
        if msg.get("id") == 0:  # reply to stop()'s fire-and-forget "stop"
            return
        entry = self._calls.pop(msg.get("id"), None)
        if entry is None:
            _log.warn("js reply for unknown id: {msg!r}", msg=msg)
            return
        command, d = entry
        if msg.get("ok"):
            d.callback(msg)
        else:
            d.errback(JSPeerError(command, str(msg.get("error")), msg))

    def _eventReceived(self, event: dict[str, Any]) -> None:
        for i, (name, match, d) in enumerate(self._waiters):
            if event["event"] == name and (match is None or match(event)):
                del self._waiters[i]
                d.callback(event)
                return
        self._events.append(event)

    def _processEnded(self, reason: Failure) -> None:
        self._exit_reason = reason
        exc = self._exitedError("js peer exited")
        calls, self._calls = self._calls, {}
        for _, d in calls.values():
            d.errback(exc)
        waiters, self._waiters = self._waiters, []
        for _, _, d in waiters:
            d.errback(exc)
        end_waiters, self._end_waiters = self._end_waiters, []
        for d in end_waiters:
            d.callback(None)

    def _whenEnded(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self._exit_reason is not None:
            d.callback(None)
        else:
            self._end_waiters.append(d)
        return d

    def _exitedError(self, what: str) -> JSPeerExited:
        status = _describe_exit(self._exit_reason) if self._exit_reason is not None else "still running"
        tail = "\n".join(list(self.stderr_tail)[-30:])
        return JSPeerExited(f"{what} ({status}); stderr tail:\n{tail}")

    @property
    def running(self) -> bool:
        """Whether the node process is still alive."""
        return self._exit_reason is None and self._transport is not None

    @property
    def addr(self) -> str:
        """The first announced multiaddr (with ``/p2p/<peer id>``)."""
        return self.addrs[0]

    # -- API -------------------------------------------------------------

    async def call(self, cmd: str, *, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        """
        Send command ``cmd`` with ``args``; return the decoded ``ok: true`` reply.

        Raises :class:`JSPeerError` on ``ok: false``, :class:`JSPeerExited` if
        the process dies, and ``twisted.internet.defer.TimeoutError`` after
        ``timeout`` seconds (js aborts its own work after the same time).
        """
        if not self.running:
            raise self._exitedError(f"js peer not running, cannot {cmd}")
        self._next_id += 1
        call_id = self._next_id
        d: Deferred[dict[str, Any]] = Deferred()
        self._calls[call_id] = (cmd, d)
        msg = {"id": call_id, "cmd": cmd, "timeout_ms": int(timeout * 1000), **args}
        self._transport.write(json.dumps(msg).encode() + b"\n")
        # js answers with an error when its own timeout fires; this is the backstop
        d.addTimeout(
            timeout + 5.0,
            self._reactor,
            onTimeoutCancel=_onTimeout(lambda: self._calls.pop(call_id, None), f"js {cmd} got no reply"),
        )
        return await d

    async def next_event(
        self,
        name: str,
        timeout: float = 10.0,
        match: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """
        The oldest not yet consumed pushed event called ``name`` (optionally
        also satisfying ``match``), waiting up to ``timeout`` seconds for one.
        Events of other kinds stay queued.
        """
        for event in self._events:
            if event["event"] == name and (match is None or match(event)):
                self._events.remove(event)
                return event
        if not self.running:
            raise self._exitedError(f"js peer exited while waiting for {name!r} event")
        d: Deferred[dict[str, Any]] = Deferred()
        waiter = (name, match, d)
        self._waiters.append(waiter)

        def forget() -> None:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

        d.addTimeout(timeout, self._reactor, onTimeoutCancel=_onTimeout(forget, f"no {name!r} event"))
        return await d

    def pending_events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Queued (not yet consumed) events, optionally only those called ``name``."""
        return [e for e in self._events if name is None or e["event"] == name]

    async def stop(self, timeout: float = 5.0) -> None:
        """
        Stop the peer: ask politely (``stop``), then SIGKILL after ``timeout``
        seconds.  Safe to call more than once and after the process died.
        """
        if self._transport is None or self._exit_reason is not None:
            return
        ended = self._whenEnded()
        if self._stopping:
            await ended
            return
        self._stopping = True
        # "stop" first; closing stdin alone also makes peer.mjs shut down
        self._transport.write(json.dumps({"id": 0, "cmd": "stop"}).encode() + b"\n")
        self._transport.closeStdin()
        killer = self._reactor.callLater(timeout, self._kill)
        await ended
        if killer.active():
            killer.cancel()

    def _kill(self) -> None:
        try:
            self._transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass

    async def _waitReady(self, timeout: float) -> None:
        try:
            ready = await self.next_event("ready", timeout=timeout)
        except DeferredTimeoutError:
            ended = self._whenEnded()
            self._kill()
            await ended
            raise self._exitedError(f"js peer not ready after {timeout}s") from None
        self.ready = ready
        self.peer_id = ready["peer_id"]
        self.addrs = list(ready["addrs"])
        self.protocols = list(ready["protocols"])


async def start_js_peer(
    reactor: Any,
    *flags: str,
    timeout: float = 20.0,
    env: dict[str, str] | None = None,
) -> JSPeer:
    """
    Spawn ``node peer.mjs *flags`` and wait (up to ``timeout`` s) for its ready line.

    ``flags`` are the command-line flags of ``peer.mjs`` as separate strings,
    e.g. ``start_js_peer(reactor, "--echo", "--psk", psk_hex)``.  ``env`` is
    added to the inherited environment (e.g. ``{"DEBUG": "libp2p:*"}`` for js
    debug logs on stderr).  Always arrange ``await peer.stop()`` (e.g.
    ``self.addCleanup(peer.stop)``); the peer also exits when its stdin closes.
    """
    reason = js_unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    node = node_executable()
    assert node is not None
    peer = JSPeer(reactor)
    child_env = dict(os.environ)
    if env:
        child_env.update(env)
    argv = [node, str(PEER_SCRIPT), *map(str, flags)]
    # cwd stays the caller's, so relative --key-file paths mean what they say
    peer._transport = reactor.spawnProcess(peer._proto, node, argv, env=child_env)
    peer.pid = peer._transport.pid
    await peer._waitReady(timeout)
    return peer


def _onTimeout(cleanup: Callable[[], object], what: str) -> Callable[[Any, float], Any]:
    """An ``onTimeoutCancel`` for ``Deferred.addTimeout`` that also runs ``cleanup``."""

    def onTimeoutCancel(result: Any, timeout: float) -> Any:
        cleanup()
        if isinstance(result, Failure) and result.check(CancelledError):
            raise DeferredTimeoutError(timeout, f"{what} within {timeout}s")
        return result

    return onTimeoutCancel


def _describe_exit(reason: Failure) -> str:
    return "exit 0" if reason.check(ProcessDone) else str(reason.value)
