"""The model HTTP client's endpoints (aicn.models.http) and the API's Site."""

from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI
from twisted.web.error import SchemeNotSupported
from twisted.web.resource import Resource

from aicn.api.site import APISite
from aicn.models.http import ModelEndpointFactory, _FastEndpoint
from aicn.tcp import set_tcp_nodelay


class TCPTransport(StringTransport):
    """A StringTransport that records TCP_NODELAY."""

    nodelay = False

    def setTcpNoDelay(self, enabled):
        self.nodelay = enabled


class EndpointFactoryTests(SynchronousTestCase):
    def endpoint(self, url):
        return ModelEndpointFactory(MemoryReactorClock()).endpointForURI(URI.fromBytes(url))

    def test_ip_literals_skip_the_resolver(self):
        endpoint = self.endpoint(b"http://127.0.0.1:8080/v1/chat/completions")
        self.assertIsInstance(endpoint, _FastEndpoint)
        self.assertIsInstance(endpoint._endpoint, TCP4ClientEndpoint)
        self.assertIsInstance(self.endpoint(b"http://[::1]:8080/")._endpoint, TCP6ClientEndpoint)
        self.assertIsInstance(self.endpoint(b"http://localhost:8080/")._endpoint, HostnameEndpoint)

    def test_https_is_tls_and_other_schemes_fail(self):
        endpoint = self.endpoint(b"https://127.0.0.1:8443/")
        self.assertIsInstance(endpoint, _FastEndpoint)
        self.assertNotIsInstance(endpoint._endpoint, (TCP4ClientEndpoint, _FastEndpoint))
        with self.assertRaises(SchemeNotSupported):
            self.endpoint(b"ftp://127.0.0.1/")

    def test_connection_is_quiet_and_without_nagle(self):
        reactor = MemoryReactorClock()
        factory = Factory.forProtocol(Protocol)
        self.assertTrue(factory.noisy)
        d = _FastEndpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", 8080)).connect(factory)
        self.assertFalse(factory.noisy)  # no "Starting factory" per model call
        host, port, wrapper, _timeout, _bind = reactor.tcpClients[0]
        protocol = wrapper.buildProtocol(None)
        transport = TCPTransport()
        protocol.makeConnection(transport)
        self.assertTrue(transport.nodelay)
        self.assertIsInstance(self.successResultOf(d), Protocol)

    def test_set_tcp_nodelay_tolerates_other_transports(self):
        set_tcp_nodelay(None)
        set_tcp_nodelay(StringTransport())

        class Gone(TCPTransport):
            def setTcpNoDelay(self, enabled):
                raise OSError("closed")

        set_tcp_nodelay(Gone())


class APISiteTests(SynchronousTestCase):
    def test_accepted_connections_have_nagle_off(self):
        site = APISite(Resource())
        self.assertFalse(site.noisy)
        channel = site.buildProtocol(None)
        transport = TCPTransport()
        channel.makeConnection(transport)
        self.assertTrue(transport.nodelay)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"404", transport.value())  # still a working HTTP channel
        channel.connectionLost(None)
