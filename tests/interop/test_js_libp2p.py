"""Our libp2p stack against a real js-libp2p 2.10 peer: both directions, key
types, pnet on and off, identify fields, ping, many streams, a 64 MiB byte-exact
transfer, perf, and the muxer chosen inline or through multistream-select."""

from __future__ import annotations

import hashlib

from multiaddr import Multiaddr
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from aicn import AGENT_VERSION, PROTOCOL_VERSION
from aicn.p2p import perf
from aicn.p2p.host import Host
from aicn.p2p.keys import PrivateKey
from aicn.p2p.peerid import PeerID
from aicn.p2p.multistream import ProtocolRejected
from tests.interop.jspeer import js_available, js_unavailable_reason, pattern_bytes, start_js_peer
from tests.util import DBC_PSK_HEX, echo_handler, read_all, wait_for

ECHO = "/echo/1.0.0"
SINK = "/aicn-test/sink/1.0.0"
MiB = 1024 * 1024


async def sink_handler(stream, conn):
    digest = hashlib.sha256()
    count = 0
    while True:
        data = await stream.read()
        if not data:
            break
        digest.update(data)
        count += len(data)
    await stream.write(f"{count} {digest.hexdigest()}\n".encode())
    stream.close_write()


class JSInteropTests(TestCase):
    timeout = 240
    if not js_available():
        skip = js_unavailable_reason()

    async def our_host(self, key_type="secp256k1", psk=True, **kwargs) -> Host:
        host = Host(reactor, PrivateKey.generate(key_type), psk=bytes.fromhex(DBC_PSK_HEX) if psk else None,
                    ping_interval=None, **kwargs)
        host.set_stream_handler(ECHO, echo_handler)
        host.set_stream_handler(SINK, sink_handler)
        await host.start(["/ip4/127.0.0.1/tcp/0"])
        self.addCleanup(lambda: Deferred.fromCoroutine(host.stop()))
        return host

    async def js_peer(self, *flags, key_type="secp256k1", psk=True):
        args = ["--echo", "--sink", "--perf", "--key-type", key_type, "--no-connection-monitor", *flags]
        if psk:
            args += ["--psk", DBC_PSK_HEX]
        js = await start_js_peer(reactor, *args)
        self.addCleanup(js.stop)
        return js

    @staticmethod
    def our_addr(host: Host) -> str:
        return f"{host.listen_addrs()[0]}/p2p/{host.peer_id}"

    # -- connection in both directions, key types, pnet ---------------------------------------

    async def check_pair(self, our_key, js_key, psk, js_dials):
        host = await self.our_host(our_key, psk)
        js = await self.js_peer(key_type=js_key, psk=psk)
        js_id = PeerID.from_string(js.peer_id)
        if js_dials:
            reply = await js.call("dial", addr=self.our_addr(host))
            self.assertEqual(reply["peer_id"], str(host.peer_id))
            self.assertEqual(reply["muxer"], "/yamux/1.0.0")
            self.assertEqual(reply["encryption"], "/noise")
        else:
            conn = await host.connect(js_id, [Multiaddr(a) for a in js.addrs])
            self.assertEqual(conn.direction, "Outbound")
        # Identify, both sides.
        info = await js.call("identify", peer=str(host.peer_id))
        self.assertEqual(info["agent_version"], AGENT_VERSION)
        self.assertEqual(info["protocol_version"], PROTOCOL_VERSION)
        for proto in ("/ipfs/id/1.0.0", "/ipfs/id/push/1.0.0", "/ipfs/ping/1.0.0", ECHO, SINK):
            self.assertIn(proto, info["protocols"])
        self.assertIn(str(host.listen_addrs()[0]), info["listen_addrs"])
        self.assertEqual(info["public_key_hex"], host.key.public_key.marshal().hex())
        self.assertIsNotNone(info["signed_peer_record"])  # js verified our signed record
        self.assertTrue(info["observed_addr"].startswith("/ip4/127.0.0.1/tcp/"))
        await wait_for(lambda: host.peerstore.agent(js_id) is not None)
        self.assertTrue(host.peerstore.agent(js_id).startswith("js-libp2p/"))
        self.assertIn("/ipfs/ping/1.0.0", host.peerstore.protocols(js_id))
        self.assertIn(ECHO, host.peerstore.protocols(js_id))
        # Ping both ways.
        rtts = await host.ping(js_id, 2)
        self.assertEqual(len(rtts), 2)
        self.assertGreaterEqual((await js.call("ping", peer=str(host.peer_id)))["rtt_ms"], 0)
        # One echo stream each way.
        stream = await host.new_stream(js_id, [ECHO])
        await stream.write(b"interop" * 1000)
        stream.close_write()
        self.assertEqual(await read_all(stream), b"interop" * 1000)
        reply = await js.call("echo", peer=str(host.peer_id), size=100_000, streams=2)
        self.assertEqual(reply["streams"], 2)

    async def test_we_dial_js_secp256k1_pnet(self):
        await self.check_pair("secp256k1", "secp256k1", True, js_dials=False)

    async def test_js_dials_us_secp256k1_pnet(self):
        await self.check_pair("secp256k1", "secp256k1", True, js_dials=True)

    async def test_we_dial_js_ed25519_no_pnet(self):
        await self.check_pair("ed25519", "ed25519", False, js_dials=False)

    async def test_js_dials_us_mixed_keys_no_pnet(self):
        await self.check_pair("ed25519", "secp256k1", False, js_dials=True)

    async def test_js_dials_us_ed25519_pnet(self):
        await self.check_pair("secp256k1", "ed25519", True, js_dials=True)

    # -- muxer negotiation ----------------------------------------------------------------------

    async def test_muxer_through_multistream_after_handshake(self):
        # We send no stream_muxers extension, so both sides fall back to
        # multistream-select for yamux after noise.
        host = await self.our_host(send_muxer_extension=False)
        js = await self.js_peer()
        js_id = PeerID.from_string(js.peer_id)
        await host.connect(js_id, [Multiaddr(a) for a in js.addrs])
        self.assertEqual((await js.call("peers"))["peers"][0]["muxer"], "/yamux/1.0.0")
        stream = await host.new_stream(js_id, [ECHO])
        await stream.write(b"x" * 70_000)
        stream.close_write()
        self.assertEqual(len(await read_all(stream)), 70_000)
        # And js dialing a host that sends no extension.
        js2 = await self.js_peer()
        await js2.call("dial", addr=self.our_addr(host))
        await js2.call("echo", peer=str(host.peer_id), size=70_000, streams=1)

    async def test_lazy_streams_to_js(self):
        """js as listener accepts data pipelined behind our proposal, and its
        refusal of a protocol it does not serve fails only that stream."""
        host = await self.our_host()
        js = await self.js_peer()
        js_id = PeerID.from_string(js.peer_id)
        conn = await host.connect(js_id, [Multiaddr(a) for a in js.addrs])
        await wait_for(lambda: host.peerstore.supports(js_id, ECHO))
        for size in (1, 300 * 1024):
            opening = Deferred.fromCoroutine(host.new_stream(js_id, [ECHO], lazy=True))
            self.assertTrue(opening.called)  # no round trip before we may write
            stream = await opening
            payload = pattern_bytes(size, size)
            await stream.write(payload)
            stream.close_write()
            self.assertEqual(await read_all(stream), payload)
        # Stale knowledge: js says "na" and the stream fails with ProtocolRejected.
        host.peerstore.set_protocols(js_id, [ECHO, "/nope/1.0.0"])
        stream = await host.new_stream(js_id, ["/nope/1.0.0"], lazy=True)
        await stream.write(b"request")
        with self.assertRaises(ProtocolRejected) as cm:
            await read_all(stream)
        self.assertIn("does not support /nope/1.0.0", str(cm.exception))
        stream = await host.new_stream(js_id, [ECHO], lazy=True)
        await stream.write(b"still here")
        stream.close_write()
        self.assertEqual(await read_all(stream), b"still here")
        self.assertEqual(host.connections(js_id), [conn])
        await wait_for(lambda: not conn.session.streams)

    # -- load: many streams, big transfers, perf ------------------------------------------------

    async def test_100_concurrent_streams_of_300_KiB_both_ways(self):
        host = await self.our_host()
        js = await self.js_peer()
        js_id = PeerID.from_string(js.peer_id)
        await js.call("dial", addr=self.our_addr(host))
        # js -> us: 100 streams, each over the 256 KiB initial window.
        reply = await js.call("echo", peer=str(host.peer_id), size=300 * 1024, streams=100, timeout=120)
        self.assertEqual(reply["streams"], 100)

        # us -> js: the same.
        async def one(i):
            payload = pattern_bytes(i, 300 * 1024)
            stream = await host.new_stream(js_id, [ECHO])
            await stream.write(payload)
            stream.close_write()
            self.assertEqual(await read_all(stream), payload)

        await gatherResults([Deferred.fromCoroutine(one(i)) for i in range(100)])
        conn = host.connections(js_id)[0]
        await wait_for(lambda: not conn.session.streams)  # no stream leaks

    async def test_64_MiB_byte_exact_both_ways(self):
        host = await self.our_host()
        js = await self.js_peer()
        js_id = PeerID.from_string(js.peer_id)
        await host.connect(js_id, [Multiaddr(a) for a in js.addrs])
        reply = await js.call("sink", peer=str(host.peer_id), size=64 * MiB, timeout=180)
        self.assertTrue(reply["match"], reply)
        self.assertEqual(reply["count"], 64 * MiB)

        payload = pattern_bytes("ours", 64 * MiB)
        stream = await host.new_stream(js_id, [SINK])
        view = memoryview(payload)
        for offset in range(0, len(payload), 256 * 1024):
            await stream.write(view[offset:offset + 256 * 1024])
        stream.close_write()
        count, digest = (await read_all(stream)).decode().split()
        self.assertEqual(int(count), 64 * MiB)
        self.assertEqual(digest, hashlib.sha256(payload).hexdigest())

    async def test_perf_both_ways(self):
        host = await self.our_host()
        js = await self.js_peer()
        js_id = PeerID.from_string(js.peer_id)
        await js.call("dial", addr=self.our_addr(host))
        reply = await js.call("perf", peer=str(host.peer_id), upload=8 * MiB, download=16 * MiB, timeout=60)
        self.assertEqual(reply["uploaded"], 8 * MiB)
        self.assertEqual(reply["downloaded"], 16 * MiB)
        stream = await host.new_stream(js_id, [perf.PERF])
        result = await perf.perf(stream, 4 * MiB, 12 * MiB, reactor)
        self.assertEqual((result.upload_bytes, result.download_bytes), (4 * MiB, 12 * MiB))

    # -- failures ----------------------------------------------------------------------------------

    async def test_wrong_psk_fails_cleanly_and_node_keeps_serving(self):
        host = await self.our_host(psk=True)
        bad = await start_js_peer(reactor, "--psk", "11" * 32, "--no-connection-monitor")
        self.addCleanup(bad.stop)
        from tests.interop.jspeer import JSPeerError

        with self.assertRaises(JSPeerError):
            await bad.call("dial", addr=self.our_addr(host), timeout=20)
        await wait_for(lambda: not host.connections())
        # A correct peer still gets through.
        good = await self.js_peer()
        await good.call("dial", addr=self.our_addr(host))
        self.assertEqual(len(host.connections()), 1)


class JSAgainstTwistdTests(TestCase):
    """A real ``twistd aicn`` process accepts a js-libp2p peer."""

    timeout = 120
    if not js_available():
        skip = js_unavailable_reason()

    async def check(self, psk: bool):
        import json

        import treq

        from tests.integration.nodeproc import NodeProcess

        args = ["--listen", "/ip4/127.0.0.1/tcp/0"] + ([] if psk else ["--psk", "none"])
        node = NodeProcess(reactor, self.mktemp(), *args)
        node.start()
        self.addCleanup(node.stop)
        info = await node.wait_ready()
        js_args = ["--perf", "--no-connection-monitor"] + (["--psk", DBC_PSK_HEX] if psk else [])
        js = await start_js_peer(reactor, *js_args)
        self.addCleanup(js.stop)
        await js.call("dial", addr=f"{info['addresses'][0]}/p2p/{info['peer_id']}")
        ident = await js.call("identify", peer=info["peer_id"])
        self.assertEqual(ident["protocol_version"], "aicn/0.0.1")
        self.assertEqual(sorted(ident["protocols"]), sorted(info["protocols"]))
        self.assertGreaterEqual((await js.call("ping", peer=info["peer_id"]))["rtt_ms"], 0)
        reply = await js.call("perf", peer=info["peer_id"], upload=MiB, download=2 * MiB)
        self.assertEqual((reply["uploaded"], reply["downloaded"]), (MiB, 2 * MiB))
        resp = await treq.post(node.api + "/api/v0/swarm/peers", persistent=False)
        peers = json.loads(await resp.content())
        self.assertEqual([p["peer"] for p in peers], [js.peer_id])
        self.assertEqual(peers[0]["direction"], "Inbound")
        self.assertTrue(peers[0]["id"].startswith(js.peer_id[:10] + "-"))

    async def test_pnet_on(self):
        await self.check(True)

    async def test_pnet_off(self):
        await self.check(False)
