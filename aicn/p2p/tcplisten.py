"""TCP listening for the swarm: IPv6 ports that take IPv6 only.

On Linux with ``net.ipv6.bindv6only=0`` (the default) a socket bound to
``::`` also takes IPv4 (mapped addresses), so after ``/ip4/0.0.0.0/tcp/6001``
the default ``/ip6/::/tcp/6001`` fails with "address already in use", and in
the other order IPv4 peers would arrive as ``::ffff:a.b.c.d``.  go-libp2p sets
``IPV6_V6ONLY`` on its IPv6 listeners; Twisted's TCP port does not, hence
:class:`V6OnlyPort`.
"""

from __future__ import annotations

import socket

from twisted.internet import tcp
from twisted.internet.interfaces import IReactorFDSet

__all__ = ["V6OnlyPort", "listen_tcp"]


class V6OnlyPort(tcp.Port):
    """A ``twisted.internet.tcp.Port`` whose IPv6 socket takes IPv6 connections only."""

    def createInternetSocket(self):
        skt = super().createInternetSocket()
        if self.addressFamily == socket.AF_INET6:
            # Before bind (startListening binds right after this): it cannot change later.
            skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        return skt


def listen_tcp(reactor, port: int, factory, *, interface: str, backlog: int = 50):
    """Listen like ``reactor.listenTCP``, IPv6 interfaces with ``IPV6_V6ONLY``.

    Raises ``CannotListenError`` as ``listenTCP`` does.  A reactor that is not
    file-descriptor based (a test's memory reactor) gets a plain ``listenTCP``.
    """
    if ":" not in interface or not IReactorFDSet.providedBy(reactor):
        return reactor.listenTCP(port, factory, backlog=backlog, interface=interface)
    listening = V6OnlyPort(port, factory, backlog, interface, reactor)
    listening.startListening()
    return listening
