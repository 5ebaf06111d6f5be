"""Circuit relay v2 and AutoNAT against js-libp2p 2.10 (the harness peer).

* js as the relay (``--relay-server --relay-unlimited``): our private worker
  reserves on it, our client dials the worker's circuit address, and model-
  sized traffic (> js's default 128 KiB) crosses;
* js as a relay client (``--relay-client``): js reserves on our relay, and
  another of our hosts dials js through us and runs js's echo;
* js dials our worker through our relay;
* both with pnet (the relayed connection runs pnet again inside the circuit,
  as js and go do) and without;
* js's AutoNAT server refuses loopback dial-backs (E_DIAL_REFUSED), which our
  client must not count as a vote.
"""

import hashlib
import os

from multiaddr import Multiaddr
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from aicn.p2p import autonat
from aicn.p2p.host import Host
from aicn.p2p.keys import PrivateKey
from aicn.p2p.peerid import PeerID
from aicn.p2p.relay import RelayClient, RelayService
from tests.interop.jspeer import js_available, js_unavailable_reason, pattern_bytes, start_js_peer
from tests.p2p.test_relay import ECHO, echo_handler, echo_roundtrip, wait_for

PSK_HEX = "f504f536a912a8cf7d00adacee8ed20270c5040d961d7f3da4fccbcbec0ec48a"
JS_ECHO = "/echo/1.0.0"


class JSRelayTests(TestCase):
    timeout = 120
    if not js_available():
        skip = js_unavailable_reason()

    psk_hex = None

    @property
    def psk(self):
        return bytes.fromhex(self.psk_hex) if self.psk_hex else None

    def js_flags(self, *flags):
        return (*flags, "--psk", self.psk_hex) if self.psk_hex else flags

    async def js(self, *flags):
        peer = await start_js_peer(reactor, *self.js_flags(*flags))
        self.addCleanup(peer.stop)
        return peer

    async def make_host(self, listen=True):
        host = Host(reactor, PrivateKey.generate("secp256k1"), psk=self.psk, ping_interval=None)
        await host.start(["/ip4/127.0.0.1/tcp/0"] if listen else [])
        self.addCleanup(lambda: Deferred.fromCoroutine(host.stop()))
        return host

    async def our_relay(self):
        host = await self.make_host()
        service = RelayService(host, reactor)
        service.start()
        self.addCleanup(service.stop)
        return host, service

    async def test_js_relay_carries_our_traffic(self):
        js = await self.js("--relay-server", "--relay-unlimited")
        js_id = PeerID.from_string(js.peer_id)
        worker = await self.make_host(listen=False)
        worker.set_stream_handler(ECHO, echo_handler)
        client = RelayClient(worker, reactor, [(js_id, [Multiaddr(a) for a in js.addrs])])
        rsvp = await client.reserve(js_id)
        self.assertTrue(rsvp.addrs)
        self.assertIsNotNone(rsvp.voucher)  # verified against the relay's key inside reserve()
        dialer = await self.make_host()
        target = rsvp.addrs[0].encapsulate(Multiaddr(f"/p2p/{worker.peer_id}"))
        conn = await dialer.connect(worker.peer_id, [target])
        self.assertTrue(conn.relayed)
        stream = await dialer.new_stream(worker.peer_id, [ECHO])
        payload = os.urandom(1024 * 1024)
        received = await echo_roundtrip(stream, payload)
        self.assertEqual(hashlib.sha256(received).digest(), hashlib.sha256(payload).digest())

    async def test_js_default_limits_read_as_seconds(self):
        # js announces {duration: 120000 (ms!), data: 131072}; we read 120 s.
        js = await self.js("--relay-server")
        js_id = PeerID.from_string(js.peer_id)
        worker = await self.make_host(listen=False)
        client = RelayClient(worker, reactor, [(js_id, [Multiaddr(a) for a in js.addrs])])
        rsvp = await client.reserve(js_id)
        self.assertEqual((rsvp.limit.duration, rsvp.limit.data), (120, 131072))
        self.assertGreater(rsvp.expire, reactor.seconds() + 3600)  # js: about 2 h, in seconds

    async def test_js_reserves_on_our_relay(self):
        relay, service = await self.our_relay()
        js = await self.js("--relay-client", "--echo")
        relay_addr = f"{relay.listen_addrs()[0]}/p2p/{relay.peer_id}"
        reply = await js.call("reserve", relay_addr=relay_addr)
        js_id = PeerID.from_string(js.peer_id)
        self.assertIn(js_id, service.reservations)
        circuit = f"{relay_addr}/p2p-circuit/p2p/{js.peer_id}"
        self.assertIn(circuit, reply["circuit_addrs"])
        dialer = await self.make_host()
        conn = await dialer.connect(js_id, [Multiaddr(circuit)])
        self.assertTrue(conn.relayed)
        stream = await dialer.new_stream(js_id, [JS_ECHO])
        payload = pattern_bytes("relay", 512 * 1024)
        self.assertEqual(await echo_roundtrip(stream, payload), payload)
        self.assertEqual(service.active_circuits, 1)
        peers = (await js.call("peers"))["peers"]
        relayed = [p for p in peers if p["peer_id"] == str(dialer.peer_id)]
        self.assertTrue(relayed and relayed[0]["limited"])

    async def test_js_dials_our_worker_through_our_relay(self):
        relay, service = await self.our_relay()
        worker = await self.make_host(listen=False)
        worker.set_stream_handler(ECHO, echo_handler)
        client = RelayClient(worker, reactor, [(relay.peer_id, relay.listen_addrs())])
        rsvp = await client.reserve(relay.peer_id)
        js = await self.js("--relay-client", "--echo")
        target = str(rsvp.addrs[0].encapsulate(Multiaddr(f"/p2p/{worker.peer_id}")))
        reply = await js.call("dial", addr=target)
        self.assertEqual(reply["peer_id"], str(worker.peer_id))
        self.assertTrue(reply["limited"])
        # js's echo over the relayed connection, in the other direction too.
        await wait_for(lambda: worker.connections(PeerID.from_string(js.peer_id)))
        stream = await worker.new_stream(PeerID.from_string(js.peer_id), [JS_ECHO])
        self.assertEqual(await echo_roundtrip(stream, b"x" * 200_000), b"x" * 200_000)

    async def test_js_autonat_refuses_loopback(self):
        js = await self.js("--autonat")
        host = await self.make_host()
        client = autonat.AutoNATClient(host, reactor, threshold=1)
        await host.connect(PeerID.from_string(js.peer_id), [Multiaddr(js.addrs[0])])
        response = await client.ask(PeerID.from_string(js.peer_id))
        self.assertEqual(response.status, autonat.ResponseStatus.E_DIAL_REFUSED)
        self.assertEqual(client.reachability, autonat.UNKNOWN)


class JSRelayPnetTests(JSRelayTests):
    psk_hex = PSK_HEX
