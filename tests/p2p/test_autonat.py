"""AutoNAT v1: codec (hypothesis), rate limiter, and our server + client on loopback."""

import socket

from hypothesis import given, settings
from hypothesis import strategies as st
from multiaddr import Multiaddr
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from aicn.p2p import autonat
from aicn.p2p.autonat import (
    AutoNATClient,
    AutoNATCodecError,
    AutoNATService,
    DialRequest,
    DialResponse,
    RateLimiter,
    ResponseStatus,
    decode_message,
    encode_request,
    encode_response,
)
from aicn.p2p.host import Host
from aicn.p2p.keys import PrivateKey
from aicn.p2p.framing import length_prefixed
from tests.p2p.test_relay import wait_for

PEER = PrivateKey.generate("ed25519").peer_id()
ADDRS = [Multiaddr("/ip4/1.2.3.4/tcp/4001").to_bytes(), Multiaddr("/ip6/::1/tcp/5").to_bytes()]


class CodecTests(SynchronousTestCase):
    def test_request_roundtrip(self):
        self.assertEqual(decode_message(encode_request(PEER, ADDRS)), DialRequest(PEER, tuple(ADDRS)))

    def test_request_fields_match_js(self):
        # js sends type(1) + dial(2) in a request, type(1) + dialResponse(3) in a reply.
        self.assertEqual(encode_request(PEER, [])[0], 0x08)
        self.assertEqual(encode_request(PEER, [])[2], 0x12)
        self.assertEqual(encode_response(ResponseStatus.OK, "OK")[2], 0x1A)

    @given(st.sampled_from(list(ResponseStatus)), st.text(max_size=50),
           st.one_of(st.none(), st.sampled_from(ADDRS)))
    def test_response_roundtrip(self, status, text, addr):
        self.assertEqual(decode_message(encode_response(status, text, addr)), DialResponse(status, text, addr))

    def test_status_text_that_is_not_utf8_is_still_text(self):
        # Found by the fuzz harness: upb hands back a proto2 string that is not UTF-8 as bytes.
        body = bytes([0x08, 0x01, 0x1A, 0x06, 0x08, 0x64, 0x12, 0x02, 0xFF, 0x41])
        self.assertEqual(decode_message(body), DialResponse(ResponseStatus.E_DIAL_ERROR, "\ufffdA"))

    def test_bad_addrs_dropped(self):
        msg = decode_message(encode_request(PEER, [b"\xff\xff", ADDRS[0]]))
        self.assertEqual(msg.addrs, (ADDRS[0],))

    @settings(max_examples=300)
    @given(st.binary(max_size=300))
    def test_garbage(self, data):
        try:
            decode_message(data)
        except AutoNATCodecError:
            pass

    def test_missing_fields(self):
        for body in (b"", b"\x08\x00", b"\x08\x01", b"\x08\x07"):
            self.assertRaises(AutoNATCodecError, decode_message, body)


class RateLimiterTests(SynchronousTestCase):
    def test_per_peer_and_total(self):
        other = PrivateKey.generate("ed25519").peer_id()
        limiter = RateLimiter(per_peer=2, total=3, window=60)
        self.assertEqual([limiter.allow(PEER, 0), limiter.allow(PEER, 1), limiter.allow(PEER, 2)],
                         [True, True, False])
        self.assertTrue(limiter.allow(other, 3))
        self.assertFalse(limiter.allow(other, 4))  # total reached
        self.assertTrue(limiter.allow(PEER, 61))  # the window moved on


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class AutoNATLoopbackTests(TestCase):
    timeout = 30

    async def make_host(self, listen=True):
        host = Host(reactor, PrivateKey.generate("secp256k1"), ping_interval=None)
        await host.start(["/ip4/127.0.0.1/tcp/0"] if listen else [])
        self.addCleanup(lambda: Deferred.fromCoroutine(host.stop()))
        return host

    async def make_server(self, **kwargs):
        host = await self.make_host()
        kwargs.setdefault("allow_loopback", True)
        service = AutoNATService(host, reactor, **kwargs)
        service.start()
        return host, service

    async def make_client(self, listen=True, threshold=2):
        host = await self.make_host(listen)
        client = AutoNATClient(host, reactor, threshold=threshold)
        changes = []
        client.add_listener(changes.append)
        client.start()
        self.addCleanup(client.stop)
        return host, client, changes

    async def test_public(self):
        servers = [await self.make_server() for _ in range(2)]
        host, client, changes = await self.make_client()
        for server, _ in servers:
            await host.connect(server.peer_id, server.listen_addrs())
        await wait_for(lambda: client.reachability == autonat.PUBLIC)
        # The first verdict settles it; the second server's vote follows.
        await wait_for(lambda: len(client.votes) == 2)
        self.assertEqual(changes, ["public"])
        self.assertEqual(list(client.votes.values()), [True, True])

    async def test_servers_identified_before_start_are_asked(self):
        server, _ = await self.make_server()
        # Let the server's identify-push for its new handler go out (to no
        # one yet), so that only start() can make the client ask.
        await wait_for(lambda: not server._push_call.active())
        host = await self.make_host()
        await host.connect(server.peer_id, server.listen_addrs())
        await wait_for(lambda: host.peerstore.supports(server.peer_id, autonat.PROTOCOL))
        client = AutoNATClient(host, reactor, threshold=2)
        client.start()
        self.addCleanup(client.stop)
        await wait_for(lambda: client.reachability == autonat.PUBLIC)
        self.assertEqual(dict(client.votes), {server.peer_id: True})

    async def test_private(self):
        servers = [await self.make_server() for _ in range(2)]
        host, client, changes = await self.make_client(listen=False)
        # We claim an address nobody listens on: the dial-backs fail.
        host.add_announced_addr(Multiaddr(f"/ip4/127.0.0.1/tcp/{closed_port()}"))
        for server, _ in servers:
            await host.connect(server.peer_id, server.listen_addrs())
        await wait_for(lambda: client.reachability == autonat.PRIVATE)
        await wait_for(lambda: len(client.votes) == 2)
        self.assertEqual(changes, ["private"])
        self.assertEqual(list(client.votes.values()), [False, False])

    async def test_no_addresses_is_private(self):
        server, _ = await self.make_server()
        host, client, changes = await self.make_client(listen=False)
        await host.connect(server.peer_id, server.listen_addrs())
        await wait_for(lambda: changes)
        self.assertEqual(changes, ["private"])

    async def test_loopback_refused_by_default(self):
        server, _ = await self.make_server(allow_loopback=False)
        host, client, _ = await self.make_client(threshold=1)
        await host.connect(server.peer_id, server.listen_addrs())
        response = await client.ask(server.peer_id)
        self.assertEqual(response.status, ResponseStatus.E_DIAL_REFUSED)
        self.assertEqual(client.reachability, autonat.UNKNOWN)

    async def test_only_observed_ip_dialed(self):
        server, service = await self.make_server()
        host, client, _ = await self.make_client(threshold=1)
        await host.connect(server.peer_id, server.listen_addrs())
        await wait_for(lambda: server.connections(host.peer_id))
        conn = server.connections(host.peer_id)[0]
        ok = Multiaddr("/ip4/127.0.0.1/tcp/1234")
        self.assertEqual(service.dialable([Multiaddr("/ip4/127.0.0.2/tcp/1").to_bytes(),
                                           Multiaddr("/ip4/8.8.8.8/tcp/1").to_bytes(),
                                           server.listen_addrs()[0].to_bytes(),  # ourselves
                                           ok.to_bytes()], conn.remote_addr), [ok, conn.remote_addr])

    async def raw_request(self, host, server, peer, addrs):
        stream = await host.new_stream(server.peer_id, [autonat.PROTOCOL], server.listen_addrs())
        await stream.write(length_prefixed(encode_request(peer, addrs)))
        return await autonat._read(stream, reactor, 5)

    async def test_peer_id_must_match_connection(self):
        server, _ = await self.make_server()
        host = await self.make_host()
        reply = await self.raw_request(host, server, PEER, [a.to_bytes() for a in host.listen_addrs()])
        self.assertEqual(reply.status, ResponseStatus.E_BAD_REQUEST)

    async def test_rate_limited(self):
        server, _ = await self.make_server(per_peer_limit=1)
        host = await self.make_host()
        addrs = [a.to_bytes() for a in host.listen_addrs()]
        first = await self.raw_request(host, server, host.peer_id, addrs)
        second = await self.raw_request(host, server, host.peer_id, addrs)
        self.assertEqual(first.status, ResponseStatus.OK)
        self.assertEqual(first.addr, addrs[0])
        self.assertEqual(second.status, ResponseStatus.E_DIAL_REFUSED)

    async def test_garbage_request(self):
        server, _ = await self.make_server()
        host = await self.make_host()
        stream = await host.new_stream(server.peer_id, [autonat.PROTOCOL], server.listen_addrs())
        await stream.write(length_prefixed(b"\xff\xff\xff"))
        reply = await autonat._read(stream, reactor, 5)
        self.assertEqual(reply.status, ResponseStatus.E_BAD_REQUEST)


class VotingTests(SynchronousTestCase):
    """The first verdict settles an unknown reachability; a change needs ``threshold`` votes."""

    def test_first_verdict_then_threshold(self):
        from aicn.p2p.autonat import AutoNATClient, DialResponse
        from aicn.p2p.keys import PrivateKey

        client = AutoNATClient(host=None, clock=None, threshold=3)
        seen = []
        client.add_listener(seen.append)
        peers = [PrivateKey.generate().peer_id() for _ in range(8)]
        client._vote(peers[0], DialResponse(ResponseStatus.E_DIAL_REFUSED))
        self.assertEqual(client.reachability, autonat.UNKNOWN)  # refusals are no votes
        client._vote(peers[0], DialResponse(ResponseStatus.E_DIAL_ERROR))
        self.assertEqual(seen, ["private"])  # one server is enough to settle it
        for peer in peers[1:3]:
            client._vote(peer, DialResponse(ResponseStatus.OK))
        self.assertEqual(client.reachability, "private")  # 2 yes vs 1 no: not enough to flip
        client._vote(peers[3], DialResponse(ResponseStatus.OK))
        self.assertEqual(seen, ["private", "public"])  # 3 agreeing votes, a majority
