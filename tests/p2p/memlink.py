"""Real :class:`~aicn.p2p.host.Host` objects on a :class:`~twisted.internet.task.Clock`,
connected in memory (``twisted.test.iosim``): noise, yamux, identify and every
protocol handler run as on TCP, but synchronously and with no sockets, so a
test can open and close many connections between the same peers in any order.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.test.iosim import FakeTransport, connect

from aicn.p2p.host import Host
from aicn.p2p.keys import PrivateKey
from aicn.p2p.swarm import Connection
from aicn.p2p.upgrade import ConnectionUpgrader
from aicn.p2p.yamux import PROTOCOL_ID as YAMUX, YamuxConfig, YamuxSession

#: No keepalive pings: time only moves when a test advances the clock.
QUIET_YAMUX = YamuxConfig(keepalive_interval=None)


def memory_host(clock: Clock, key: PrivateKey | None = None) -> Host:
    """A host on ``clock`` that never listens (connect it with :class:`Link`)."""
    return Host(clock, key or PrivateKey.generate("ed25519"), ping_interval=None,
                yamux_config=QUIET_YAMUX, enable_relay_transport=False, enable_perf=False)


class Link:
    """One in-memory connection from ``dialer`` to ``listener``.

    :attr:`dialer_conn` and :attr:`listener_conn` are the two ends as each
    host's swarm sees them; :meth:`pump` moves bytes until both sides are quiet.
    """

    _port = 40000

    def __init__(self, clock: Clock, dialer: Host, listener: Host) -> None:
        self.dialer = dialer
        self.listener = listener
        self.dialer_conn: Connection | None = None
        self.listener_conn: Connection | None = None
        Link._port += 1
        port = Link._port
        d_up = self._upgrader(clock, dialer, initiator=True, expected=listener.peer_id)
        l_up = self._upgrader(clock, listener, initiator=False, expected=None)
        d_up.upgraded.addCallback(self._adopt, dialer, Connection.OUTBOUND, port, "dialer_conn")
        l_up.upgraded.addCallback(self._adopt, listener, Connection.INBOUND, port, "listener_conn")
        server_io = FakeTransport(l_up, isServer=True)
        client_io = FakeTransport(d_up, isServer=False)
        self.io = connect(l_up, server_io, d_up, client_io, greet=True, clock=clock)

    @staticmethod
    def _upgrader(clock, host: Host, *, initiator: bool, expected) -> ConnectionUpgrader:
        return ConnectionUpgrader(
            host.key, initiator=initiator, clock=clock, expected_peer=expected,
            muxers={YAMUX: lambda channel: YamuxSession.for_channel(channel, clock, QUIET_YAMUX)},
        )

    def _adopt(self, channel, host: Host, direction: str, port: int, attr: str) -> None:
        setattr(self, attr, host.swarm.adopt_channel(channel, direction, f"/ip4/127.0.0.1/tcp/{port}"))

    @property
    def open(self) -> bool:
        """Both ends are registered and neither is closed."""
        return (self.dialer_conn is not None and self.listener_conn is not None
                and not self.dialer_conn.closed and not self.listener_conn.closed)

    def end_of(self, host: Host) -> Connection | None:
        """``host``'s end of the link."""
        return self.dialer_conn if host is self.dialer else self.listener_conn

    def pump(self) -> bool:
        """Move bytes until quiet; whether any moved."""
        moved = False
        while self.io.pump():
            moved = True
        return moved


def settle(links, clock: Clock | None = None, seconds: float = 0.0, step: float = 0.5) -> None:
    """Pump every link until all are quiet; with ``seconds``, let that much
    time pass on ``clock`` in ``step``s, pumping after each."""
    def quiet():
        while any([link.pump() for link in links]):
            pass

    quiet()
    elapsed = 0.0
    while elapsed < seconds:
        clock.advance(step)
        elapsed += step
        quiet()
