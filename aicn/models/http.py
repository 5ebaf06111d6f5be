"""HTTP plumbing shared by the model and IPFS clients (treq, unbuffered).

Every request is made with ``unbuffered=True`` so that bodies are either
streamed (:class:`BodyPump`) or collected under a size limit
(:func:`read_body`); a cancelled read closes the upstream connection, which
is how a model server learns that nobody wants its answer any more.
"""

from __future__ import annotations

from typing import Callable, Optional

from treq.client import HTTPClient
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, ResponseDone
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from aicn.tcp import set_tcp_nodelay

#: Default limit on a buffered (non-streamed) model or IPFS reply.
MAX_REPLY_SIZE = 16 * 1024 * 1024


class ReplyTooLarge(Exception):
    """A buffered reply passed its size limit."""


class _FastEndpoint:
    """Connects with ``endpoint``, then turns Nagle off on the TCP connection
    and keeps the per-connection HTTP factory quiet.

    A request goes out in a few small writes (head, body) and model servers
    answer in small ones (SSE events): with Nagle and delayed ACKs a small
    write can wait for the ACK of the previous one.  The Agent makes a new
    factory per connection, which would log "Starting factory" and
    "Stopping factory" for every model call.
    """

    def __init__(self, endpoint) -> None:
        self._endpoint = endpoint

    def connect(self, factory) -> Deferred:
        factory.noisy = False

        def connected(protocol):
            set_tcp_nodelay(getattr(protocol, "transport", None))
            return protocol

        return self._endpoint.connect(factory).addCallback(connected)


@implementer(IAgentEndpointFactory)
class ModelEndpointFactory:
    """The Agent's endpoints: TCP for ``http``, TCP+TLS for ``https`` (as
    Twisted's default), but an IP-literal host (the usual model URL,
    ``http://127.0.0.1:8080/...``) is connected to directly instead of
    through the name resolver, which runs ``getaddrinfo`` in a thread even
    for an address; and see :class:`_FastEndpoint`."""

    def __init__(self, reactor, tls_policy=None) -> None:
        self._reactor = reactor
        self._tls_policy = tls_policy if tls_policy is not None else BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri):
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"the host of {uri.toBytes()!r} is not ASCII") from None
        if isIPAddress(host):
            endpoint = TCP4ClientEndpoint(self._reactor, host, uri.port)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(self._reactor, host, uri.port)
        else:
            endpoint = HostnameEndpoint(self._reactor, host, uri.port)
        endpoint = _FastEndpoint(endpoint)
        if uri.scheme == b"http":
            return endpoint
        if uri.scheme == b"https":
            # The outer wrapper quiets the HTTP factory inside the TLS one.
            return _FastEndpoint(wrapClientTLS(self._tls_policy.creatorForNetloc(uri.host, uri.port), endpoint))
        raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")


def make_http_client(reactor, *, persistent: bool = False) -> HTTPClient:
    """A treq client on its own Agent (endpoints: :class:`ModelEndpointFactory`).

    Not persistent by default: a cancelled streaming reply must close its
    TCP connection (the model server's only cancel signal), and a pool would
    keep idle connections to model servers open for no gain.
    """
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    return HTTPClient(Agent.usingEndpointFactory(reactor, ModelEndpointFactory(reactor), pool=pool))


def as_http_client(agent_or_client) -> HTTPClient:
    """Accept a treq :class:`HTTPClient` or an ``IAgent``."""
    if isinstance(agent_or_client, HTTPClient):
        return agent_or_client
    return HTTPClient(agent_or_client)


def body_ended_cleanly(reason) -> bool:
    """True if a body's ``connectionLost`` reason (a Failure or an
    exception) means "complete"."""
    value = reason.value if isinstance(reason, Failure) else reason
    return isinstance(value, (ResponseDone, PotentialDataLoss))


class BodyPump(Protocol):
    """Delivers a response body chunk by chunk to ``on_data`` and the end
    (a Failure; see :func:`body_ended_cleanly`) to ``on_end``.

    ``pause``/``resume`` push back on the upstream TCP connection, ``abort``
    closes it.  It is an ``IPushProducer`` for a consumer (e.g. a
    twisted.web request) that wants to throttle the upstream directly.
    """

    def __init__(self, on_data: Callable[[bytes], object], on_end: Callable[[Failure], object]) -> None:
        self._on_data = on_data
        self._on_end = on_end
        self.ended = False
        self._paused = False
        self._aborted = False

    def connectionMade(self) -> None:
        if self._aborted:
            self.transport.stopProducing()
        elif self._paused:
            self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        if not self._aborted:
            self._on_data(data)

    def connectionLost(self, reason: Failure = None) -> None:
        self.ended = True
        self._on_end(reason)

    # IPushProducer
    def pauseProducing(self) -> None:
        self._paused = True
        if self.transport is not None and not self.ended:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self.transport is not None and not self.ended:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """Abort the upstream request (closes its connection)."""
        self._aborted = True
        if self.transport is not None and not self.ended:
            self.transport.stopProducing()

    abort = stopProducing


def read_body(response, max_size: Optional[int] = MAX_REPLY_SIZE) -> Deferred:
    """Collect a response body (fails with :class:`ReplyTooLarge` past
    ``max_size``).  Cancelling the Deferred aborts the upstream connection."""
    parts: list[bytes] = []
    size = [0]
    pump: BodyPump

    def cancel(_d: Deferred) -> None:
        pump.abort()

    done: Deferred = Deferred(cancel)

    def on_data(data: bytes) -> None:
        size[0] += len(data)
        if max_size is not None and size[0] > max_size:
            pump.abort()
            if not done.called:
                done.errback(ReplyTooLarge(f"reply larger than {max_size} bytes"))
            return
        parts.append(data)

    def on_end(reason: Failure) -> None:
        if done.called:
            return
        if body_ended_cleanly(reason):
            done.callback(b"".join(parts))
        else:
            done.errback(reason)

    pump = BodyPump(on_data, on_end)
    response.deliverBody(pump)
    return done


class Timeout(Exception):
    """A call did not finish within its time limit."""


def with_timeout(d: Deferred, seconds: float, clock) -> Deferred:
    """Cancel ``d`` after ``seconds``; then fail with :class:`Timeout`
    whatever error the cancellation produced (Agent wraps a cancel in
    ``ResponseNeverReceived``, which ``Deferred.addTimeout`` would pass on)."""
    fired = []

    def expire() -> None:
        fired.append(True)
        d.cancel()

    call = clock.callLater(seconds, expire)

    def done(result):
        if call.active():
            call.cancel()
        if fired and isinstance(result, Failure):
            return Failure(Timeout(f"timed out after {seconds}s"))
        return result

    return d.addBoth(done)
