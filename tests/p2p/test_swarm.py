"""Two swarms on loopback TCP: dial, streams, negotiation, events, failures."""

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from aicn.p2p.keys import PrivateKey
from aicn.p2p.peerstore import Peerstore
from aicn.p2p.stream import StreamError
from aicn.p2p.multistream import ProtocolNotSupported, ProtocolRejected
from aicn.p2p.swarm import DialError, DialTimeout, Swarm
from tests.util import DBC_PSK, sleep, wait_for
from tests.util import echo_handler as echo


class Recorder:
    def __init__(self):
        self.events = []

    def connected(self, conn):
        self.events.append(("connected", conn.peer, conn.direction))

    def disconnected(self, conn):
        self.events.append(("disconnected", conn.peer, conn.direction))


class SwarmCase(TestCase):
    async def make(self, key_type="secp256k1", psk=DBC_PSK, **kwargs):
        """A swarm on 127.0.0.1 serving /echo/1.0.0, closed after the test."""
        swarm = Swarm(reactor, PrivateKey.generate(key_type), psk=psk, **kwargs)
        swarm.set_stream_handler("/echo/1.0.0", echo)
        await swarm.listen(["/ip4/127.0.0.1/tcp/0"])
        self.addCleanup(lambda: Deferred.fromCoroutine(swarm.close()))
        return swarm

    async def roundtrip(self, a, b, payload=b"hello" * 1000):
        stream = await a.new_stream(b.peer_id, ["/echo/1.0.0"], b.listen_addrs())
        self.assertEqual(stream.protocol, "/echo/1.0.0")
        await stream.write(payload)
        stream.close_write()
        got = bytearray()
        while True:
            chunk = await stream.read()
            if not chunk:
                break
            got += chunk
        self.assertEqual(bytes(got), payload)


class SwarmTests(SwarmCase):
    async def test_echo_with_and_without_pnet_and_key_types(self):
        for psk in (DBC_PSK, None):
            for kt in ("secp256k1", "ed25519"):
                a = await self.make(kt, psk)
                b = await self.make("secp256k1", psk)
                await self.roundtrip(a, b)
                await self.roundtrip(b, a)  # reuses the inbound connection
                self.assertEqual(len(a.connections()), 1)
                self.assertEqual(a.connections()[0].direction, "Outbound")
                self.assertEqual(b.connections()[0].direction, "Inbound")

    async def test_inline_and_multistream_muxer(self):
        a = await self.make(send_muxer_extension=False)
        b = await self.make()
        await self.roundtrip(a, b)

    async def test_events_and_disconnect(self):
        a, b = await self.make(), await self.make()
        ra, rb = Recorder(), Recorder()
        a.add_observer(ra)
        b.add_observer(rb)
        conn = await a.dial(b.peer_id, b.listen_addrs())
        self.assertEqual(ra.events, [("connected", b.peer_id, "Outbound")])
        self.assertTrue(a.disconnect(b.peer_id))
        await conn.session.when_closed()
        self.assertEqual(ra.events[-1], ("disconnected", b.peer_id, "Outbound"))
        self.assertFalse(a.is_connected(b.peer_id))
        self.assertFalse(a.disconnect(b.peer_id))
        # The remote side learns of it too.
        for _ in range(50):
            if rb.events and rb.events[-1][0] == "disconnected":
                break
            await sleep(0.02)
        self.assertEqual([e[0] for e in rb.events], ["connected", "disconnected"])

    async def test_concurrent_dials_share_one_connection(self):
        a, b = await self.make(), await self.make()
        conns = await gatherResults([Deferred.fromCoroutine(a.dial(b.peer_id, b.listen_addrs()))
                                     for _ in range(5)])
        self.assertEqual(len({id(c) for c in conns}), 1)
        self.assertEqual(len(a.connections(b.peer_id)), 1)

    async def test_refuses_self_dial(self):
        a = await self.make()
        with self.assertRaises(DialError):
            await a.dial(a.peer_id, a.listen_addrs())

    async def test_wrong_peer_id_fails_dial(self):
        a, b = await self.make(), await self.make()
        other = PrivateKey.generate().peer_id()
        with self.assertRaises(DialError) as cm:
            await a.dial(other, b.listen_addrs())
        self.assertIn(str(other), str(cm.exception))
        self.assertEqual(a.connections(), [])

    async def test_wrong_psk_fails_dial(self):
        a = await self.make(psk=b"\x01" * 32, handshake_timeout=2.0)
        b = await self.make(handshake_timeout=2.0)
        with self.assertRaises(DialError):
            await a.dial(b.peer_id, b.listen_addrs())
        self.assertEqual(b.connections(), [])

    async def test_unsupported_protocol(self):
        a, b = await self.make(), await self.make()
        with self.assertRaises(ProtocolNotSupported):
            await a.new_stream(b.peer_id, ["/nope/1.0.0", "/nope/2.0.0"], b.listen_addrs())
        # The connection survives a failed negotiation.
        await self.roundtrip(a, b)

    async def test_handler_error_resets_only_its_stream(self):
        a, b = await self.make(), await self.make()

        async def broken(stream, conn):
            raise RuntimeError("boom")

        b.set_stream_handler("/broken/1.0.0", broken)
        stream = await a.new_stream(b.peer_id, ["/broken/1.0.0"], b.listen_addrs())
        from aicn.p2p.yamux import StreamReset

        with self.assertRaises(StreamReset):
            await stream.read()
        self.flushLoggedErrors(RuntimeError)
        await self.roundtrip(a, b)

    async def test_no_addresses(self):
        a = await self.make()
        with self.assertRaises(DialError):
            await a.dial(PrivateKey.generate().peer_id(), [])


class LazyStreamTests(SwarmCase):
    """Connection.new_stream(lazy=True): optimistic multistream-select."""

    async def pair(self, *protocols):
        """A (with a peerstore claiming B supports ``protocols``), B, and A's connection to B."""
        a = await self.make(peerstore=Peerstore(reactor))
        b = await self.make()
        a.peerstore.set_protocols(b.peer_id, protocols)
        conn = await a.dial(b.peer_id, b.listen_addrs())
        return a, b, conn

    async def echo(self, stream, payload):
        await stream.write(payload)
        stream.close_write()
        got = bytearray()
        while chunk := await stream.read():
            got += chunk
        self.assertEqual(bytes(got), payload)

    async def test_lazy_stream_is_ready_at_once(self):
        a, b, conn = await self.pair("/echo/1.0.0")
        opening = Deferred.fromCoroutine(conn.new_stream(["/echo/1.0.0"], lazy=True))
        # No round trip: the stream is handed out before the peer could answer.
        self.assertTrue(opening.called)
        stream = await opening
        self.assertEqual(stream.protocol, "/echo/1.0.0")
        await self.echo(stream, b"lazy" * 50000)
        # The same through Swarm.new_stream; B's answer never reaches the reader.
        stream = await a.new_stream(b.peer_id, ["/echo/1.0.0"], lazy=True)
        await self.echo(stream, b"x")

    async def test_full_negotiation_unless_known(self):
        """Unknown protocol, several protocols, or no lazy flag: the usual round trip."""
        a, b, conn = await self.pair("/other/1.0.0")
        for protocols, lazy in ((["/echo/1.0.0"], True), (["/nope/1.0.0", "/echo/1.0.0"], True),
                                (["/echo/1.0.0"], False)):
            opening = Deferred.fromCoroutine(conn.new_stream(protocols, lazy=lazy))
            self.assertFalse(opening.called)
            stream = await opening
            self.assertEqual(stream.protocol, "/echo/1.0.0")
            await self.echo(stream, b"full")
        # Unknown and unsupported: the error comes from new_stream itself.
        with self.assertRaises(ProtocolNotSupported) as cm:
            await conn.new_stream(["/nope/1.0.0"], lazy=True)
        self.assertNotIsInstance(cm.exception, ProtocolRejected)

    async def test_rejected_lazy_stream(self):
        """The peerstore is wrong: the peer answers na.  Reads and writes fail
        with ProtocolRejected (a stream error); the connection carries on."""
        a, b, conn = await self.pair("/gone/1.0.0")
        stream = await conn.new_stream(["/gone/1.0.0"], lazy=True)
        await stream.write(b"request")
        with self.assertRaises(ProtocolRejected) as cm:
            await stream.read()
        self.assertIsInstance(cm.exception, ProtocolNotSupported)
        self.assertIsInstance(cm.exception, StreamError)
        self.assertIn("does not support /gone/1.0.0", str(cm.exception))
        with self.assertRaises(ProtocolRejected):
            await stream.write(b"more")
        self.assertTrue(stream.is_reset)
        await self.roundtrip(a, b)
        self.assertEqual(a.connections(), [conn])
        self.assertFalse(conn.closed)

    async def test_handler_reset_after_lazy_confirmation(self):
        """A handler that resets its stream: a plain StreamReset, not a rejection."""
        a, b, conn = await self.pair("/broken/1.0.0")

        async def broken(stream, conn):
            await stream.read()
            stream.reset()

        b.set_stream_handler("/broken/1.0.0", broken)
        stream = await conn.new_stream(["/broken/1.0.0"], lazy=True)
        await stream.write(b"hi")
        from aicn.p2p.yamux import StreamReset

        with self.assertRaises(StreamReset) as cm:
            await stream.read()
        self.assertNotIsInstance(cm.exception, ProtocolRejected)


class BadPeerTests(SwarmCase):
    """Raw TCP peers that misbehave are cut off; other connections go on."""

    async def raw_client(self, swarm, payload: bytes):
        """Connect with a plain socket protocol, send ``payload``; fire when closed."""
        from twisted.internet.protocol import ClientCreator, Protocol

        closed = Deferred()

        class Raw(Protocol):
            def connectionMade(self):
                if payload:
                    self.transport.write(payload)

            def connectionLost(self, reason):
                closed.callback(None)

        port = swarm.listen_addrs()[0].value_for_protocol("tcp")
        proto = await ClientCreator(reactor, Raw).connectTCP("127.0.0.1", int(port))
        return proto, closed

    async def test_garbage_oversized_and_stalls_are_disconnected(self):
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        a = await self.make(handshake_timeout=1.0)
        b = await self.make()
        # A healthy connection first.
        conn = await b.dial(a.peer_id, a.listen_addrs())
        # Garbage after a valid-looking nonce; a clear header after it (not decrypting to
        # one: also a key mismatch); silence.
        _, garbage = await self.raw_client(a, b"\x00" * 24 + b"\xff" * 4096)
        _, oversized = await self.raw_client(a, b"\x00" * 24 + b"\x13/multistream/1.0.0\n" + b"\xff\xff" * 10)
        _, stalled = await self.raw_client(a, b"")
        for closed in (garbage, oversized, stalled):
            await closed.addTimeout(5, reactor)
        upgrade_failures = [e for e in events if "Upgrade of" in (e.get("log_format") or "") and e.get("direction") == "inbound"]
        self.assertGreaterEqual(len(upgrade_failures), 1)  # the stall
        self.assertEqual(a.stats["psk_mismatch"], 2)  # the other two, warned about once (one host)
        warnings = [e for e in events if (e.get("log_format") or "").startswith("private network key mismatch")]
        self.assertEqual(len(warnings), 1)
        # Nothing escaped to the reactor, and the healthy connection still works.
        self.assertEqual(self.flushLoggedErrors(), [])
        stream = await conn.new_stream(["/echo/1.0.0"])
        await stream.write(b"still here")
        stream.close_write()
        self.assertEqual(await stream.read(), b"still here")
        self.assertEqual(len(a.connections()), 1)

    async def test_listen_skips_an_address_that_cannot_be_bound(self):
        taken = await self.make()
        port = taken.listen_addrs()[0].value_for_protocol("tcp")
        swarm = Swarm(reactor, PrivateKey.generate())
        self.addCleanup(lambda: Deferred.fromCoroutine(swarm.close()))
        bound = await swarm.listen([f"/ip4/127.0.0.1/tcp/{port}", "/ip4/127.0.0.1/tcp/0"])
        self.assertEqual(len(bound), 1)
        self.assertNotEqual(bound[0].value_for_protocol("tcp"), port)
        # Nothing bindable at all is an error.
        from twisted.internet.error import CannotListenError

        lonely = Swarm(reactor, PrivateKey.generate())
        with self.assertRaises(CannotListenError):
            await lonely.listen([f"/ip4/127.0.0.1/tcp/{port}"])


class StaggeredDialTests(SwarmCase):
    async def test_a_stalled_address_does_not_hold_up_a_good_one(self):
        from twisted.internet.protocol import Factory, Protocol

        silent = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        refused = socket_port_refused()
        a = await self.make(handshake_timeout=5.0)
        b = await self.make()
        stalled = f"/ip4/127.0.0.1/tcp/{silent.getHost().port}"
        started = reactor.seconds()
        conn = await a.dial(b.peer_id, [f"/ip4/127.0.0.1/tcp/{refused}", stalled] + [str(x) for x in b.listen_addrs()])
        self.assertLess(reactor.seconds() - started, 5.0)  # did not wait for the stalled handshake
        self.assertEqual(conn.remote_addr, b.listen_addrs()[0])
        self.assertEqual(len(a.connections(b.peer_id)), 1)

    async def test_all_failing_reports_every_address(self):
        a = await self.make()
        peer = PrivateKey.generate().peer_id()
        ports = [socket_port_refused(), socket_port_refused()]
        with self.assertRaises(DialError) as cm:
            await a.dial(peer, [f"/ip4/127.0.0.1/tcp/{p}" for p in ports])
        for p in ports:
            self.assertIn(f"/tcp/{p}", str(cm.exception))


class DialTimeoutTests(SwarmCase):
    """``dial_timeout`` (``Swarm.DialTimeout``) bounds TCP connect, security and muxer."""

    async def test_a_peer_that_accepts_but_never_speaks(self):
        from twisted.internet.protocol import Factory, Protocol

        accepted, lost = [], Deferred()

        class Silent(Protocol):
            def connectionMade(self):
                accepted.append(self)

            def connectionLost(self, reason):
                lost.callback(None)

        silent = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        # A long handshake timeout: the dial timeout alone must end it.
        a = await self.make(dial_timeout=0.5, handshake_timeout=30.0)
        started = reactor.seconds()
        with self.assertRaises(DialTimeout) as cm:
            await a.dial(PrivateKey.generate().peer_id(), [f"/ip4/127.0.0.1/tcp/{silent.getHost().port}"])
        elapsed = reactor.seconds() - started
        self.assertGreaterEqual(elapsed, 0.45)
        self.assertLess(elapsed, 2.0)
        self.assertIn("dial timed out after 0.5 s", str(cm.exception))
        self.assertIsInstance(cm.exception, DialError)  # what callers catch
        self.assertEqual(len(accepted), 1)  # it got as far as the upgrade
        await lost.addTimeout(5, reactor)  # and the socket was closed
        self.assertEqual(a.connections(), [])
        self.assertEqual(a._pending_dials, {})

    def test_a_connect_that_never_completes_is_cancelled(self):
        from twisted.internet.testing import MemoryReactorClock

        clock = MemoryReactorClock()
        swarm = Swarm(clock, PrivateKey.generate(), dial_timeout=3.0)
        d = Deferred.fromCoroutine(swarm.dial(PrivateKey.generate().peer_id(), ["/ip4/127.0.0.1/tcp/4001"]))
        (connector,) = clock.connectors
        clock.advance(2.9)
        self.assertNoResult(d)
        clock.advance(0.2)
        self.failureResultOf(d, DialTimeout)
        self.assertTrue(connector.stoppedConnecting)
        self.assertEqual(clock.getDelayedCalls(), [])

    async def test_a_timeout_among_other_failures_is_a_plain_dial_error(self):
        from twisted.internet.protocol import Factory, Protocol

        silent = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        a = await self.make(dial_timeout=0.5)
        addrs = [f"/ip4/127.0.0.1/tcp/{socket_port_refused()}", f"/ip4/127.0.0.1/tcp/{silent.getHost().port}"]
        with self.assertRaises(DialError) as cm:
            await a.dial(PrivateKey.generate().peer_id(), addrs)
        self.assertNotIsInstance(cm.exception, DialTimeout)
        self.assertIn("dial timed out", str(cm.exception))
        self.assertIn("refused", str(cm.exception))


def ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class IPv6ListenTests(SwarmCase):
    """The default listen pair, 0.0.0.0 and :: on one port, binds (IPV6_V6ONLY)."""

    skip = None if ipv6_loopback() else "no IPv6 loopback"

    async def wildcard_pair(self, first: str):
        swarm = Swarm(reactor, PrivateKey.generate(), psk=DBC_PSK)
        swarm.set_stream_handler("/echo/1.0.0", echo)
        self.addCleanup(lambda: Deferred.fromCoroutine(swarm.close()))
        other = "ip6" if first == "ip4" else "ip4"
        wildcard = {"ip4": "0.0.0.0", "ip6": "::"}
        (bound,) = await swarm.listen([f"/{first}/{wildcard[first]}/tcp/0"])
        port = bound.value_for_protocol("tcp")
        (second,) = await swarm.listen([f"/{other}/{wildcard[other]}/tcp/{port}"])
        self.assertEqual(second.value_for_protocol("tcp"), port)
        return swarm, port

    async def test_ipv4_then_ipv6_on_one_port_and_both_carry_connections(self):
        import socket

        listener, port = await self.wildcard_pair("ip4")
        ip6_port = [p for p in listener._listening_ports if p.addressFamily == socket.AF_INET6][0]
        self.assertEqual(ip6_port.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY), 1)
        for addr in (f"/ip6/::1/tcp/{port}", f"/ip4/127.0.0.1/tcp/{port}"):
            dialer = await self.make()
            stream = await dialer.new_stream(listener.peer_id, ["/echo/1.0.0"], [addr])
            await stream.write(b"over " + addr.encode())
            stream.close_write()
            self.assertEqual(await stream.read(), b"over " + addr.encode())
            self.assertEqual(str(dialer.connections()[0].remote_addr), addr)
        # Each family arrives on its own listener: IPv4 peers are not ::ffff: mapped.
        remotes = sorted(str(c.remote_addr).split("/")[1:3] for c in listener.connections())
        self.assertEqual(remotes, [["ip4", "127.0.0.1"], ["ip6", "::1"]])

    async def test_ipv6_then_ipv4_on_one_port(self):
        listener, port = await self.wildcard_pair("ip6")
        dialer = await self.make()
        conn = await dialer.dial(listener.peer_id, [f"/ip4/127.0.0.1/tcp/{port}"])
        self.assertEqual(str(conn.remote_addr), f"/ip4/127.0.0.1/tcp/{port}")


def socket_port_refused() -> int:
    """A loopback port with nothing listening (connections are refused)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class InboundLimitTests(SwarmCase):
    """The listener's bounds: pending handshakes and inbound connections."""

    raw_client = BadPeerTests.raw_client

    async def echo_works(self, conn, payload=b"still here"):
        stream = await conn.new_stream(["/echo/1.0.0"])
        await stream.write(payload)
        stream.close_write()
        self.assertEqual(await stream.read(), payload)

    async def test_over_the_pending_handshake_limit_is_closed_at_once(self):
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        a = await self.make(handshake_timeout=60.0, max_pending_inbound=2)
        b = await self.make()
        conn = await b.dial(a.peer_id, a.listen_addrs())  # upgraded before the flood
        silent = [await self.raw_client(a, b"") for _ in range(2)]
        await wait_for(lambda: a.pending_inbound == 2)
        over = [await self.raw_client(a, b"") for _ in range(3)]
        for _, closed in over:
            await closed.addTimeout(5, reactor)  # long before the 60 s handshake timeout
        for _, closed in silent:
            self.assertFalse(closed.called)
        self.assertEqual(a.stats["inbound_refused_pending"], 3)
        self.assertEqual((a.stats["inbound_accepted"], a.stats["inbound_upgraded"]), (3, 1))
        refused = [e for e in events if "Refused" in (e.get("log_format") or "")]
        self.assertEqual(len(refused), 1)  # rate-limited: one line for the burst
        self.assertEqual(refused[0]["count"], 1)
        # The upgraded connection carries on meanwhile.
        await self.echo_works(conn)
        # Once the silent ones go, new connections are upgraded again.
        for proto, closed in silent:
            proto.transport.loseConnection()
            await closed
        await wait_for(lambda: a.pending_inbound == 0)
        self.assertEqual(a.stats["inbound_upgrade_failed"], 2)
        c = await self.make()
        await self.echo_works(await c.dial(a.peer_id, a.listen_addrs()))
        self.assertEqual(a.inbound_count, 2)
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_over_the_inbound_connection_limit_is_closed_at_once(self):
        a = await self.make(max_inbound=2)
        b, c = await self.make(), await self.make()
        conn_b = await b.dial(a.peer_id, a.listen_addrs())
        pending, _ = await self.raw_client(a, b"")  # a pending handshake counts too
        await wait_for(lambda: a.inbound_count == 2)
        _, closed = await self.raw_client(a, b"")
        await closed.addTimeout(5, reactor)
        with self.assertRaises(DialError):
            await c.dial(a.peer_id, a.listen_addrs())
        self.assertEqual(a.stats["inbound_refused_limit"], 2)
        await self.echo_works(conn_b)
        # Outbound dials are not limited.
        out = await a.dial(c.peer_id, c.listen_addrs())
        await self.echo_works(out)
        # Room again once a connection closes.
        pending.transport.loseConnection()
        await wait_for(lambda: a.inbound_count == 1)
        d = await self.make()
        await self.echo_works(await d.dial(a.peer_id, a.listen_addrs()))
        self.assertEqual(a.inbound_count, 2)
        conn_b.close()
        await wait_for(lambda: a.inbound_count == 1)

    async def test_no_limits(self):
        a = await self.make(max_inbound=None, max_pending_inbound=None)
        raws = [await self.raw_client(a, b"") for _ in range(5)]
        await wait_for(lambda: a.pending_inbound == 5)
        b = await self.make()
        await self.echo_works(await b.dial(a.peer_id, a.listen_addrs()))
        for proto, closed in raws:
            proto.transport.loseConnection()
            await closed
        self.assertEqual(a.stats["inbound_refused_pending"] + a.stats["inbound_refused_limit"], 0)
