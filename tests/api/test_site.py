"""The API site's slow-client bounds: head and body deadlines, the idle
timeout, the connection limit (Clock-driven channels, and real TCP)."""

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import ClientCreator, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource

from aicn.api.site import ABORT_AFTER, APISite
from tests.util import sleep


class Hello(Resource):
    isLeaf = True

    def render(self, request):
        body = request.content.read()
        return b"hello " + body


def channel(site):
    proto = site.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


class DeadlineTests(SynchronousTestCase):
    """Channels over a StringTransport, time from a Clock."""

    def setUp(self):
        self.clock = Clock()
        self.site = APISite(Hello(), reactor=self.clock, header_timeout=2, body_timeout=5, idle_timeout=60)

    def test_slow_head_is_closed_at_the_deadline_though_bytes_keep_coming(self):
        proto, transport = channel(self.site)
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\n":
            proto.dataReceived(bytes([byte]))
            self.clock.advance(0.05)  # a byte every 50 ms: the idle timeout never fires
        self.assertFalse(transport.disconnecting)
        self.clock.advance(2 - 0.05 * 25 - 0.01)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.02)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n"))
        self.assertEqual(self.site.stats["header_timeouts"], 1)
        # A client that does not go away is aborted later.
        self.clock.advance(ABORT_AFTER)
        self.assertTrue(transport.disconnected)
        proto.connectionLost(None)
        self.assertEqual(self.site.open_connections, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_silent_connection_is_closed_at_the_head_deadline(self):
        proto, transport = channel(self.site)
        self.clock.advance(2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.site.stats["header_timeouts"], 1)

    def test_slow_body_is_closed_at_the_body_deadline(self):
        proto, transport = channel(self.site)
        proto.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        self.clock.advance(4.9)  # the head deadline no longer counts
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(b"d")
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertIn(b"408", transport.value())
        self.assertEqual((self.site.stats["header_timeouts"], self.site.stats["body_timeouts"]), (0, 1))

    def test_in_time_requests_are_answered_and_keep_alive_waits_for_the_idle_timeout(self):
        proto, transport = channel(self.site)
        proto.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
        self.clock.advance(4)
        proto.dataReceived(b"hi")
        self.assertIn(b"hello hi", transport.value())
        transport.clear()
        # Idle between requests: only the (longer) idle timeout applies.
        self.clock.advance(30)
        self.assertFalse(transport.disconnecting)
        # The next request's first byte starts a new head deadline.
        proto.dataReceived(b"GET / HT")
        self.clock.advance(2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.site.stats["header_timeouts"], 1)

    def test_idle_keep_alive_connection_times_out(self):
        proto, transport = channel(self.site)
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"hello", transport.value())
        self.clock.advance(59)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.site.stats["header_timeouts"], 0)

    def test_pipelined_requests_are_answered(self):
        proto, transport = channel(self.site)
        proto.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(transport.value().count(b"hello"), 2)
        self.clock.advance(10)
        self.assertFalse(transport.disconnecting)

    def test_deadlines_can_be_off(self):
        site = APISite(Hello(), reactor=self.clock, header_timeout=None, body_timeout=None, idle_timeout=None)
        proto, transport = channel(site)
        proto.dataReceived(b"GET / HT")
        self.clock.advance(3600)
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(b"TP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"hello", transport.value())

    def test_timeouts_are_logged_rate_limited(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for _ in range(5):
            channel(self.site)
        self.clock.advance(2)
        self.assertEqual(self.site.stats["header_timeouts"], 5)
        lines = [e for e in events if "too slowly" in (e.get("log_format") or "")]
        self.assertEqual([e["count"] for e in lines], [1])
        self.clock.advance(10)
        lines = [e for e in events if "too slowly" in (e.get("log_format") or "")]
        self.assertEqual([e["count"] for e in lines], [1, 4])

    def test_connections_over_the_limit_get_503(self):
        site = APISite(Hello(), reactor=self.clock, max_connections=2)
        first, _ = channel(site)
        channel(site)
        extra = site.buildProtocol(None)
        transport = StringTransport()
        extra.makeConnection(transport)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 Service Unavailable\r\n"))
        self.assertIn(b'"code": 5000', transport.value())
        self.assertTrue(transport.disconnecting)
        self.assertEqual(site.stats["refused"], 1)
        first.connectionLost(None)
        again, transport = channel(site)
        again.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"hello", transport.value())


class TCPCase(TestCase):
    """Real sockets on 127.0.0.1."""

    async def serve(self, **kwargs):
        site = APISite(Hello(), **kwargs)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        return site, port.getHost().port

    async def raw(self, port):
        """A raw client; ``closed`` fires when the server hangs up."""
        closed = Deferred()
        received = bytearray()

        class Raw(Protocol):
            def dataReceived(self, data):
                received.extend(data)

            def connectionLost(self, reason):
                closed.callback(bytes(received))

        proto = await ClientCreator(reactor, Raw).connectTCP("127.0.0.1", port)
        self.addCleanup(lambda: proto.transport.abortConnection() if not closed.called else None)
        return proto, closed

    async def get(self, port):
        proto, closed = await self.raw(port)
        proto.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return await closed.addTimeout(5, reactor)


class RealTCPTests(TCPCase):
    """The same bounds with real sockets and short real timeouts."""

    async def test_slowloris_is_closed_while_others_are_answered(self):
        site, port = await self.serve(header_timeout=0.5)
        slow = [await self.raw(port) for _ in range(5)]
        for proto, _ in slow:
            proto.transport.write(b"GET / HTTP/1.1\r\nHo")
        answered = 0
        for _ in range(10):  # bytes keep dripping in; requests on other connections go on
            for proto, closed in slow:
                if not closed.called:
                    proto.transport.write(b"s")
            self.assertIn(b"hello", await self.get(port))
            answered += 1
            await sleep(0.1)
        for _, closed in slow:
            self.assertTrue((await closed.addTimeout(5, reactor)).startswith(b"HTTP/1.1 408"))
        self.assertEqual(answered, 10)
        self.assertEqual(site.stats["header_timeouts"], 5)
        self.assertEqual(site.open_connections, 0)

    async def test_connection_limit(self):
        site, port = await self.serve(max_connections=2)
        held = [await self.raw(port) for _ in range(2)]
        for _ in range(50):
            if site.open_connections == 2:
                break
            await sleep(0.02)
        self.assertIn(b"503", await self.get(port))
        held[0][0].transport.loseConnection()
        await held[0][1]
        for _ in range(50):
            if site.open_connections == 1:
                break
            await sleep(0.02)
        self.assertIn(b"hello", await self.get(port))
        self.assertEqual(site.stats["refused"], 1)


class NodeServiceTests(TCPCase):
    """A whole node serves its API through the bounded site, as configured."""

    async def test_configured_bounds_reach_the_api(self):
        from aicn.config import parse_config, resolve_settings
        from aicn.service import NodeService

        config, _ = parse_config({"API": {"HeaderTimeout": "500ms", "BodyTimeout": "2s", "IdleTimeout": "9s",
                                          "MaxConnections": 50}})
        data_dir = self.mktemp()
        service = NodeService(resolve_settings(config, {"data_dir": data_dir, "port": 0, "psk": "none",
                                                        "listen": ["/ip4/127.0.0.1/tcp/0"]}), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        await service.ready
        site = service.site
        self.assertEqual((site.header_timeout, site.body_timeout, site.timeOut, site.max_connections),
                         (0.5, 2.0, 9.0, 50))
        port = service.api_port.getHost().port
        slow, closed = await self.raw(port)
        slow.transport.write(b"GET /api/v0/id HTTP/1.1\r\n")
        proto, answer = await self.raw(port)
        proto.transport.write(b"GET /api/v0/id HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertIn(str(service.host.peer_id).encode(), await answer.addTimeout(5, reactor))
        self.assertIn(b"408", await closed.addTimeout(5, reactor))
        self.assertEqual(site.stats["header_timeouts"], 1)


class BodyCapTests(SynchronousTestCase):
    """A body over the site's max_body is refused; a Content-Length that announces one, at once.

    Found with the fuzz harness's 4 GiB rule: twisted.web spooled any announced body to a
    temporary file until the body deadline (50 MiB in this test took it in, of 4 GiB announced).
    """

    def setUp(self):
        self.clock = Clock()
        self.site = APISite(Hello(), reactor=self.clock, max_body=1 << 20)

    def assertRefused(self, proto, transport):
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 Content Too Large\r\n"),
                        transport.value())
        self.assertTrue(transport.disconnecting)
        self.assertTrue(proto.refused)

    def test_announced_4_gib_is_refused_before_a_byte_of_it_is_read(self):
        proto, transport = channel(self.site)
        proto.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4294967296\r\n\r\n")
        self.assertRefused(proto, transport)
        request = proto.requests[-1]
        for _ in range(8):
            proto.dataReceived(b"x" * (1 << 20))  # dropped: nothing is stored
        self.assertEqual(request.content.seek(0, 2), 0)
        self.assertEqual(self.site.stats["too_large"], 1)
        self.clock.advance(ABORT_AFTER)
        self.assertTrue(transport.disconnected)

    def test_chunked_body_is_refused_once_over_the_limit(self):
        proto, transport = channel(self.site)
        proto.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"80000\r\n" + b"x" * 0x80000 + b"\r\n"  # 512 KiB
        proto.dataReceived(chunk * 2)
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(chunk)
        self.assertRefused(proto, transport)
        self.assertLessEqual(proto.requests[-1].content.seek(0, 2), 1 << 20)

    def test_bodies_up_to_the_limit_are_answered(self):
        for head in (b"Content-Length: %d\r\n" % (1 << 20), b"Transfer-Encoding: chunked\r\n"):
            proto, transport = channel(self.site)
            body = b"x" * (1 << 20)
            if b"chunked" in head:
                body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            proto.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n" + body)
            self.assertIn(b"200 OK", transport.value()[:20])
            self.assertFalse(proto.refused)
        self.assertEqual(self.site.stats["too_large"], 0)
