"""Circuit relay v2 with real hosts on loopback: reservation, relayed
connections both ways, bulk and long-lived streams, limits, floods."""

import hashlib
import os

from multiaddr import Multiaddr
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from aicn.p2p.host import Host
from aicn.p2p.keys import PrivateKey
from aicn.p2p.relay import RelayClient, RelayError, RelayLimits, RelayService, Status
from aicn.p2p.relay.codec import HOP_PROTOCOL, HopMessage, HopType, read_hop, write_hop
from aicn.p2p.stream import StreamError
from tests.util import wait_for

ECHO = "/aicn-test/echo/1.0.0"


async def sleep(seconds):
    await deferLater(reactor, seconds, lambda: None)


async def echo_handler(stream, conn):
    while True:
        data = await stream.read(65536)
        if not data:
            break
        await stream.write(data)
    await stream.close_write()


async def read_all(stream):
    chunks = []
    while True:
        data = await stream.read()
        if not data:
            return b"".join(chunks)
        chunks.append(data)


async def echo_roundtrip(stream, payload, chunk=64 * 1024):
    async def send():
        for i in range(0, len(payload), chunk):
            await stream.write(payload[i:i + chunk])
        await stream.close_write()
    sender = Deferred.fromCoroutine(send())
    try:
        received = await read_all(stream)
    except BaseException:
        sender.addErrback(lambda f: None)  # the read's error is the one to report
        raise
    await sender
    return received


class RelayTestCase(TestCase):
    timeout = 60

    async def make_host(self, listen=True, psk=None):
        host = Host(reactor, PrivateKey.generate("secp256k1"), psk=psk, ping_interval=None)
        await host.start(["/ip4/127.0.0.1/tcp/0"] if listen else [])
        self.addCleanup(lambda: Deferred.fromCoroutine(host.stop()))
        return host

    async def make_relay(self, limits=None, psk=None):
        host = await self.make_host(psk=psk)
        service = RelayService(host, reactor, limits)
        service.start()
        self.addCleanup(service.stop)
        return host, service

    async def make_worker(self, relay_host, psk=None):
        """A "private" worker: listens on nothing, reachable only through the relay."""
        worker = await self.make_host(listen=False, psk=psk)
        worker.set_stream_handler(ECHO, echo_handler)
        client = RelayClient(worker, reactor, [(relay_host.peer_id, relay_host.listen_addrs())])
        client.start()
        self.addCleanup(client.stop)
        await wait_for(lambda: client.reservations)
        return worker, client

    async def relayed_pair(self, psk=None):
        relay, service = await self.make_relay(psk=psk)
        worker, client = await self.make_worker(relay, psk=psk)
        dialer = await self.make_host(psk=psk)
        circuit = client.reservations[relay.peer_id].addrs[0]
        target = circuit.encapsulate(Multiaddr(f"/p2p/{worker.peer_id}"))
        conn = await dialer.connect(worker.peer_id, [target])
        return relay, service, worker, dialer, conn


class RelayTests(RelayTestCase):
    async def test_reserve_announces_circuit_addr(self):
        relay, service = await self.make_relay()
        worker, client = await self.make_worker(relay)
        rsvp = client.reservations[relay.peer_id]
        expected = Multiaddr(f"{relay.listen_addrs()[0]}/p2p/{relay.peer_id}/p2p-circuit")
        self.assertEqual(rsvp.addrs, [expected])
        self.assertIn(expected, worker.listen_addrs())
        self.assertIn(expected.to_bytes(), worker.identify_info().listen_addrs)
        self.assertEqual(rsvp.limit.duration, 3600)
        self.assertEqual(rsvp.limit.data, 1024 ** 3)
        self.assertGreater(rsvp.expire, reactor.seconds() + 3000)
        self.assertIsNotNone(rsvp.voucher)
        self.assertIn(worker.peer_id, service.reservations)
        # The relay tags the reserving connection (connection manager protection).
        self.assertTrue(any("relay-reservation" in c.tags for c in relay.connections(worker.peer_id)))

    async def test_dial_circuit_and_echo_several_mib(self):
        relay, service, worker, dialer, conn = await self.relayed_pair()
        self.assertTrue(conn.relayed)
        self.assertTrue(conn.limited)
        self.assertEqual(str(conn.remote_addr), f"{relay.listen_addrs()[0]}/p2p/{relay.peer_id}/p2p-circuit")
        await wait_for(lambda: worker.connections(dialer.peer_id))
        inbound = worker.connections(dialer.peer_id)[0]
        self.assertTrue(inbound.relayed)
        self.assertEqual(inbound.direction, "Inbound")
        payload = os.urandom(5 * 1024 * 1024)  # well over the Go network's 128 KiB relay limit
        streams = [await dialer.new_stream(worker.peer_id, [ECHO]) for _ in range(2)]
        results = await DeferredList([Deferred.fromCoroutine(echo_roundtrip(s, payload)) for s in streams],
                                     fireOnOneErrback=True, consumeErrors=True)
        for _, received in results:
            self.assertEqual(hashlib.sha256(received).digest(), hashlib.sha256(payload).digest())
        self.assertEqual(service.active_circuits, 1)
        # Closing the relayed connection frees the circuit on the relay.
        conn.close()
        await wait_for(lambda: service.active_circuits == 0 and not worker.connections(dialer.peer_id))

    async def test_long_lived_stream(self):
        relay, service, worker, dialer, conn = await self.relayed_pair()
        stream = await dialer.new_stream(worker.peer_id, [ECHO])
        for i in range(5):
            await stream.write(b"tick %d" % i)
            self.assertEqual(await stream.readexactly(6), b"tick %d" % i)
            await sleep(0.4)
        await stream.close_write()
        self.assertEqual(await stream.read(), b"")

    async def test_relayed_with_pnet(self):
        psk = bytes(range(32))
        relay, service, worker, dialer, conn = await self.relayed_pair(psk=psk)
        stream = await dialer.new_stream(worker.peer_id, [ECHO])
        payload = os.urandom(300 * 1024)
        self.assertEqual(await echo_roundtrip(stream, payload), payload)

    async def test_worker_dials_back_over_the_circuit(self):
        relay, service, worker, dialer, conn = await self.relayed_pair()
        await wait_for(lambda: worker.connections(dialer.peer_id))
        dialer.set_stream_handler(ECHO, echo_handler)
        stream = await worker.new_stream(dialer.peer_id, [ECHO])
        self.assertEqual(await echo_roundtrip(stream, b"back"), b"back")

    async def test_connect_without_reservation(self):
        relay, service = await self.make_relay()
        other = await self.make_host()
        dialer = await self.make_host()
        target = Multiaddr(f"{relay.listen_addrs()[0]}/p2p/{relay.peer_id}/p2p-circuit/p2p/{other.peer_id}")
        with self.assertRaises(Exception) as caught:
            await dialer.connect(other.peer_id, [target])
        self.assertIn("NO_RESERVATION", str(caught.exception))

    async def test_reservation_dropped_on_disconnect(self):
        relay, service = await self.make_relay()
        worker, client = await self.make_worker(relay)
        client.stop()
        self.assertEqual(client.circuit_addrs(), [])
        self.assertEqual([a for a in worker.listen_addrs() if "p2p-circuit" in str(a)], [])
        worker.disconnect(relay.peer_id)
        await wait_for(lambda: worker.peer_id not in service.reservations)


class RelayLimitTests(RelayTestCase):
    async def test_data_limit_resets_circuit(self):
        relay, service = await self.make_relay(RelayLimits(data=256 * 1024))
        worker, client = await self.make_worker(relay)
        dialer = await self.make_host()
        target = client.reservations[relay.peer_id].addrs[0].encapsulate(Multiaddr(f"/p2p/{worker.peer_id}"))
        conn = await dialer.connect(worker.peer_id, [target])
        self.assertEqual(conn.limit.data, 256 * 1024)
        stream = await dialer.new_stream(worker.peer_id, [ECHO])
        with self.assertRaises(StreamError):
            await echo_roundtrip(stream, os.urandom(1024 * 1024))
        await wait_for(lambda: conn.closed and service.active_circuits == 0)

    async def test_duration_limit_resets_circuit(self):
        relay, service = await self.make_relay(RelayLimits(duration=1))
        worker, client = await self.make_worker(relay)
        dialer = await self.make_host()
        target = client.reservations[relay.peer_id].addrs[0].encapsulate(Multiaddr(f"/p2p/{worker.peer_id}"))
        conn = await dialer.connect(worker.peer_id, [target])
        self.assertEqual(conn.limit.duration, 1)
        self.assertFalse(conn.closed)
        await wait_for(lambda: conn.closed, timeout=5)
        self.assertEqual(service.active_circuits, 0)

    async def test_circuits_per_peer(self):
        relay, service = await self.make_relay(RelayLimits(max_circuits_per_peer=1))
        worker, client = await self.make_worker(relay)
        target = client.reservations[relay.peer_id].addrs[0].encapsulate(Multiaddr(f"/p2p/{worker.peer_id}"))
        first = await self.make_host()
        await first.connect(worker.peer_id, [target])
        second = await self.make_host()
        with self.assertRaises(Exception) as caught:
            await second.connect(worker.peer_id, [target])
        self.assertIn("RESOURCE_LIMIT_EXCEEDED", str(caught.exception))

    async def raw_reserve(self, host, relay):
        stream = await host.new_stream(relay.peer_id, [HOP_PROTOCOL], relay.listen_addrs())
        await write_hop(stream, HopMessage(HopType.RESERVE))
        reply = await read_hop(stream)
        stream.reset()
        return reply

    async def test_reservation_flood_bounded(self):
        limits = RelayLimits(max_reservations=6, max_reservations_per_ip=4)
        relay, service = await self.make_relay(limits)
        hosts = [await self.make_host(listen=False) for _ in range(10)]
        replies = [await self.raw_reserve(h, relay) for h in hosts]
        ok = [r for r in replies if r.status == Status.OK]
        self.assertEqual(len(ok), 4)  # all from 127.0.0.1: the per-IP share
        self.assertTrue(all(r.status == Status.RESERVATION_REFUSED for r in replies if r.status != Status.OK))
        self.assertEqual(len(service.reservations), 4)
        # Refreshing an existing reservation is always possible.
        self.assertEqual((await self.raw_reserve(hosts[0], relay)).status, Status.OK)
        # Peers that leave free their slot.
        hosts[0].disconnect(relay.peer_id)
        await wait_for(lambda: len(service.reservations) == 3)
        self.assertEqual((await self.raw_reserve(hosts[9], relay)).status, Status.OK)

    async def test_no_reservation_over_relayed_connection(self):
        relay, service, worker, dialer, conn = await self.relayed_pair()
        # The worker is reachable only through the relay; a hop request over
        # that relayed connection must be refused.
        worker.set_stream_handler(HOP_PROTOCOL, service._handle_hop)
        stream = await conn.new_stream([HOP_PROTOCOL])
        await write_hop(stream, HopMessage(HopType.RESERVE))
        reply = await read_hop(stream)
        self.assertEqual(reply.status, Status.PERMISSION_DENIED)

    async def test_refused_reservation_raises(self):
        relay, service = await self.make_relay(RelayLimits(max_reservations=0))
        host = await self.make_host(listen=False)
        client = RelayClient(host, reactor, [(relay.peer_id, relay.listen_addrs())])
        with self.assertRaises(RelayError) as caught:
            await client.reserve(relay.peer_id)
        self.assertEqual(caught.exception.status, Status.RESERVATION_REFUSED)
