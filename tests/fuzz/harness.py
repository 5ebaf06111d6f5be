"""Fuzz targets: one per decoder of untrusted bytes, each a function of one input.

A target drives the real decoder, through its stream reader where it has one
(on the in-memory :class:`~tests.p2p.fakestream.StreamPair`, synchronously),
and swallows exactly the error types that decoder documents.  :func:`check`
runs one input and returns the crash, if any:

* any other exception escaping the target (``ValueError``, ``KeyError``,
  ``RecursionError``, ``OverflowError``, ``AssertionError`` of an invariant...);
* a failure logged during the call (``log.failure``: a handler that "never
  raises" swallowed an exception, e.g. yamux's "internal error");
* a stream read that never finished although its input ended (:class:`Hang`).

Targets check cheap invariants too: an incremental decoder gives the same
result fed in one piece or in two, decoded values have their documented
types, a varint decodes to the value that re-encodes to its bytes.

Every target is deterministic: keys and nonces are fixed, and splits of the
input are derived from the input itself, so a crashing input reproduces.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from aicn.p2p.keys import KeyType, PrivateKey
from aicn.p2p.maddr import parse as parse_maddr
from tests.p2p.fakestream import StreamPair

# -- the harness ------------------------------------------------------------------------------


class Hang(AssertionError):
    """A read on a stream whose input had ended never finished."""


class LoggedFailure(AssertionError):
    """A failure was logged while the target ran: an exception was swallowed."""


@dataclass(frozen=True)
class Target:
    """One decoder under fuzz."""

    name: str
    run: Callable[[bytes], object]
    #: What the decoder may raise for bad input (documentation: the target swallows these).
    errors: tuple[str, ...]
    #: Valid (and a few near-valid) inputs to start mutating from.
    make_seeds: Callable[[], list[bytes]]
    doc: str
    #: Longest input worth feeding (the fuzzers cut longer ones).
    max_len: int = 8192
    #: Extra byte strings that make good splices (tokens of the format).
    dictionary: tuple[bytes, ...] = field(default=())


class _FailureWatch:
    """Counts failures logged anywhere (``log.failure``, unhandled Deferred errors)."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self._installed = False

    def install(self) -> None:
        if not self._installed:
            globalLogPublisher.addObserver(self)
            self._installed = True

    def __call__(self, event: dict) -> None:
        if "log_failure" in event:
            self.events.append(event)
            del self.events[:-10]


_watch = _FailureWatch()


def check(target: Target, data: bytes) -> Optional[BaseException]:
    """Run ``target`` on ``data``; the crash it caused, or None."""
    _watch.install()
    before = list(_watch.events)
    try:
        target.run(data)
    except Exception as exc:  # anything escaping a target is a crash
        return exc
    if _watch.events != before:
        event = _watch.events[-1]
        failure = event["log_failure"]
        text = event.get("log_format", "")
        return LoggedFailure(f"{text!r} logged: {failure.getErrorMessage()}\n{failure.getTraceback()}")
    return None


_seed_cache: dict[str, list[bytes]] = {}


def seeds(target: Target) -> list[bytes]:
    """The target's seed inputs (built once)."""
    if target.name not in _seed_cache:
        _seed_cache[target.name] = [bytes(s) for s in target.make_seeds()]
    return _seed_cache[target.name]


FAILED = object()


def attempt(errors, fn, *args, **kwargs):
    """``fn(*args)``, or :data:`FAILED` if it raised one of ``errors``."""
    try:
        return fn(*args, **kwargs)
    except errors:
        return FAILED


def outcome(errors, fn, *args):
    """A comparable outcome: ``("ok", value)`` or ``("error", type)``."""
    try:
        return ("ok", fn(*args))
    except errors as exc:
        return ("error", type(exc))


def same(whole, split, what: str) -> None:
    if whole != split:
        raise AssertionError(f"{what}: fed whole {whole!r:.300} but in two pieces {split!r:.300}")


def cut(data: bytes) -> int:
    """Where to split ``data`` in two: a function of its bytes, so that a crash reproduces."""
    return zlib.crc32(data) % (len(data) + 1)


def halves(data: bytes) -> list[bytes]:
    """``data`` in two pieces (either may be empty)."""
    at = cut(data)
    return [data[:at], data[at:]]


def pieces(data: bytes) -> list[bytes]:
    """``data`` in up to four pieces, cut where its checksum says."""
    first, rest = halves(data)
    if not rest:
        return [first]
    second, third = halves(rest)
    return [p for p in (first, second, third) if p]


def stream_with(data: bytes, protocol: Optional[str] = None):
    """The reading end of a stream that carries ``data`` and then the peer's FIN."""
    pair = StreamPair(protocol=protocol)
    pair.a.write(data).addErrback(lambda f: None)
    pair.a.close_write().addErrback(lambda f: None)
    return pair.b


def drive(coro) -> Any:
    """Run a coroutine over fake streams to its end (they are synchronous)."""
    results: list = []
    Deferred.fromCoroutine(coro).addBoth(results.append)
    if not results:
        raise Hang("the coroutine is still waiting although its input ended")
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


# -- fixed keys -------------------------------------------------------------------------------

LOCAL_KEY = PrivateKey.from_raw(KeyType.Ed25519, bytes(range(32)))
REMOTE_KEY = PrivateKey.from_raw(KeyType.Ed25519, bytes(range(32, 64)))
LOCAL_SECP = PrivateKey.from_raw(KeyType.Secp256k1, hashlib.sha256(b"aicn fuzz local").digest())
REMOTE_SECP = PrivateKey.from_raw(KeyType.Secp256k1, hashlib.sha256(b"aicn fuzz remote").digest())
LOCAL_PEER = LOCAL_KEY.peer_id()
REMOTE_PEER = REMOTE_KEY.peer_id()
ADDR = parse_maddr("/ip4/127.0.0.1/tcp/4001").to_bytes()
ADDR6 = parse_maddr("/ip6/::1/tcp/4001").to_bytes()


def _x25519(label: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(hashlib.sha256(label).digest())


LOCAL_STATIC, LOCAL_EPHEMERAL = _x25519(b"local static"), _x25519(b"local ephemeral")
REMOTE_STATIC, REMOTE_EPHEMERAL = _x25519(b"remote static"), _x25519(b"remote ephemeral")
MUXERS = ["/yamux/1.0.0"]


