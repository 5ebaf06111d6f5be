"""
js <-> js tests of the reference peer (``tests/interop/js/peer.mjs``) and its
Twisted driver (``tests/interop/jspeer.py``).

They pin down what js-libp2p does between two of its own nodes, with the
DBC private-network key and without, so that a failing interop test against
our Python stack can be told apart from a broken harness.
"""

from __future__ import annotations

import base64
import os
import signal
import hashlib
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from tests.interop.jspeer import (
    JSPeer,
    JSPeerError,
    JSPeerExited,
    js_available,
    js_unavailable_reason,
    pattern_bytes,
    start_js_peer,
)

#: The DeepBrainChain network's pre-shared key (swarm.key, base16).
DBC_PSK = "f504f536a912a8cf7d00adacee8ed20270c5040d961d7f3da4fccbcbec0ec48a"
DHT_PROTOCOL = "/dbc/kad/1.0.0"
#: CIDv1 raw sha2-256 of b"aicn".
CID = "bafkreibwg2xhzer7yvkombfwtwdk2ez24rjqxbzb43spnmkoord4zxgn64"
KiB = 1024
MiB = 1024 * KiB


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def _sleep(seconds: float) -> None:
    d: Deferred[None] = Deferred()
    _reactor().callLater(seconds, d.callback, None)
    await d


async def _eventually(check, timeout: float = 10.0, interval: float = 0.1):
    """Retry the coroutine function ``check`` until it returns a truthy value."""
    deadline = _reactor().seconds() + timeout
    while True:
        try:
            result = await check()
            if result:
                return result
        except JSPeerError:
            if _reactor().seconds() > deadline:
                raise
        if _reactor().seconds() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await _sleep(interval)


class _HarnessMixin:
    """The checks; subclasses choose pnet on or off through ``FLAGS``."""

    FLAGS: tuple[str, ...] = ()
    timeout = 60

    if not js_available():
        skip = js_unavailable_reason()

    async def peer(self, *flags: str) -> JSPeer:
        peer = await start_js_peer(_reactor(), *self.FLAGS, *flags)
        self.addCleanup(peer.stop)
        return peer

    async def test_dial_identify_ping(self) -> None:
        """A dials B; both see one noise/yamux connection, identify and ping work."""
        a = await self.peer("--key-type", "ed25519")
        b = await self.peer("--echo")
        self.assertTrue(a.peer_id.startswith("12D3KooW"))
        self.assertTrue(b.peer_id.startswith("16Uiu2"))
        self.assertTrue(all(addr.endswith("/p2p/" + b.peer_id) for addr in b.addrs))
        self.assertIn("/echo/1.0.0", b.protocols)
        self.assertEqual(a.ready["pnet"], bool(self.FLAGS))

        dialed = await a.call("dial", addr=b.addr)
        self.assertEqual(dialed["peer_id"], b.peer_id)
        self.assertEqual(dialed["remote_addr"], b.addr)
        self.assertEqual((dialed["muxer"], dialed["encryption"]), ("/yamux/1.0.0", "/noise"))
        self.assertEqual(dialed["direction"], "outbound")

        opened = await b.next_event("connection_open", timeout=5)
        self.assertEqual((opened["peer_id"], opened["direction"]), (a.peer_id, "inbound"))
        peers = (await b.call("peers"))["peers"]
        self.assertEqual([p["peer_id"] for p in peers], [a.peer_id])

        info = await a.call("identify", peer=b.peer_id)
        self.assertEqual(info["protocol_version"], "ipfs/0.1.0")
        self.assertTrue(info["agent_version"].startswith("js-libp2p/2.10.0"), info["agent_version"])
        self.assertIn("/echo/1.0.0", info["protocols"])
        self.assertIn("/ipfs/ping/1.0.0", info["protocols"])
        self.assertEqual([addr + "/p2p/" + b.peer_id for addr in info["listen_addrs"]], b.addrs)
        # js reports the address it saw us at, with our own /p2p suffix
        self.assertTrue(info["observed_addr"].endswith("/p2p/" + a.peer_id), info)
        self.assertEqual(info["signed_peer_record"]["addrs"], info["listen_addrs"])

        fresh = await b.call("identify", peer=a.peer_id, fresh=True)
        self.assertEqual(fresh["peer_id"], a.peer_id)
        self.assertTrue(fresh["public_key_hex"].startswith("08011220"))  # ed25519 key protobuf

        rtt = await a.call("ping", peer=b.peer_id)
        self.assertGreaterEqual(rtt["rtt_ms"], 0)

        await a.call("hangup", peer=b.peer_id)
        closed = await b.next_event("connection_close", timeout=5)
        self.assertEqual(closed["peer_id"], a.peer_id)

    async def test_streams(self) -> None:
        """echo 10 x 300 KiB concurrently, 8 MiB sink byte-exact, and a perf exchange."""
        a = await self.peer()
        b = await self.peer("--echo", "--sink", "--perf")
        await a.call("dial", addr=b.addr)

        echo = await a.call("echo", peer=b.peer_id, size=300 * KiB, streams=10)
        self.assertEqual((echo["streams"], echo["size"]), (10, 300 * KiB))

        sink = await a.call("sink", peer=b.peer_id, size=8 * MiB)
        self.assertTrue(sink["match"], sink)
        self.assertEqual(sink["count"], 8 * MiB)
        # the Python helper reproduces js's pattern
        self.assertEqual(sink["expected_sha256"], hashlib.sha256(pattern_bytes("sink", 8 * MiB)).hexdigest())
        self.assertEqual(sink["reply"], f"{8 * MiB} {sink['expected_sha256']}")

        perf = await a.call("perf", peer=b.peer_id, upload=3 * MiB + 5, download=2 * MiB + 7)
        self.assertEqual((perf["uploaded"], perf["downloaded"]), (3 * MiB + 5, 2 * MiB + 7))
        empty = await a.call("perf", peer=b.peer_id, upload=0, download=0)
        self.assertEqual(empty["downloaded"], 0)

        # a protocol the peer does not run is refused, and the harness says so
        c = await self.peer()
        await a.call("dial", addr=c.addr)
        with self.assertRaises(JSPeerError) as caught:
            await a.call("echo", peer=c.peer_id, size=10, streams=1)
        self.assertIn("protocol", caught.exception.error.lower())

    async def test_floodsub_through_hub(self) -> None:
        """A and B only know hub C; a message published by A reaches B via C."""
        hub = await self.peer("--floodsub", "--topic", "demo")
        a = await self.peer("--floodsub", "--topic", "demo")
        b = await self.peer("--floodsub", "--topic", "demo")
        await a.call("dial", addr=hub.addr)
        await b.call("dial", addr=hub.addr)

        async def hub_sees_both() -> bool:
            subs = (await hub.call("pubsub_peers", topic="demo"))["subscribers"]
            mine = (await a.call("pubsub_peers", topic="demo"))["subscribers"]
            return set(subs) == {a.peer_id, b.peer_id} and mine == [hub.peer_id]

        await _eventually(hub_sees_both)
        self.assertEqual((await b.call("pubsub_peers", topic="demo"))["peers"], [hub.peer_id])

        published = await a.call("publish", topic="demo", data_b64=base64.b64encode(b"hello B").decode())
        self.assertEqual(published["recipients"], [hub.peer_id])
        for receiver in (b, hub):
            msg = await receiver.next_event("message", timeout=5)
            self.assertEqual(msg["topic"], "demo")
            self.assertEqual(msg["from"], a.peer_id)
            self.assertEqual(base64.b64decode(msg["data_b64"]), b"hello B")
            self.assertEqual(len(msg["seqno_hex"]), 16)
        # no echo back to the publisher
        self.assertEqual(a.pending_events("message"), [])

    async def test_dht_find_peer_through_server(self) -> None:
        """Client A finds client B's addresses by asking DHT server S."""
        s = await self.peer("--dht-protocol", DHT_PROTOCOL, "--dht-server")
        a = await self.peer("--dht-protocol", DHT_PROTOCOL)
        b = await self.peer("--dht-protocol", DHT_PROTOCOL)
        self.assertIn(DHT_PROTOCOL, s.protocols)
        self.assertNotIn(DHT_PROTOCOL, a.protocols)  # client mode does not serve kad
        self.assertEqual((s.ready["dht_mode"], a.ready["dht_mode"]), ("server", "client"))
        await a.call("dial", addr=s.addr)
        await b.call("dial", addr=s.addr)

        async def a_knows_s() -> bool:
            return s.peer_id in (await a.call("status"))["dht_routing_table"]

        await _eventually(a_knows_s)
        found = await _eventually(lambda: a.call("find_peer", peer=b.peer_id, timeout=5))
        self.assertEqual(found["peer_id"], b.peer_id)
        self.assertEqual([addr + "/p2p/" + b.peer_id for addr in found["addrs"]], b.addrs)
        self.assertEqual(found["from"], s.peer_id)
        self.assertIn(s.peer_id, found["responders"])

        # provider records go through the server too
        await b.call("provide", cid=CID)

        async def a_finds_b() -> list[str]:
            reply = await a.call("find_providers", cid=CID, max=1, timeout=5)
            return [p["peer_id"] for p in reply["providers"]]

        self.assertEqual(await _eventually(a_finds_b), [b.peer_id])
        closest = await a.call("closest", key_hex=b"aicn".hex())
        self.assertIn(s.peer_id, [p["peer_id"] for p in closest["peers"]])

    async def test_relay_reservation_and_dial(self) -> None:
        """B reserves a slot on relay R; A reaches B through R's /p2p-circuit address."""
        r = await self.peer("--relay-server")
        b = await self.peer("--relay-client", "--echo")
        a = await self.peer("--relay-client")
        reserved = await b.call("reserve", relay_addr=r.addr)
        self.assertEqual(reserved["relay"], r.peer_id)
        circuit = f"{r.addr}/p2p-circuit/p2p/{b.peer_id}"
        self.assertIn(circuit, reserved["circuit_addrs"])
        self.assertIn(circuit, (await b.call("status"))["circuit_addrs"])

        dialed = await a.call("dial", addr=circuit)
        self.assertEqual(dialed["peer_id"], b.peer_id)
        self.assertTrue(dialed["limited"])  # js's default relay limits apply
        self.assertIn("/p2p-circuit", dialed["remote_addr"])
        await a.call("ping", peer=b.peer_id)
        await a.call("echo", peer=b.peer_id, size=1000, streams=2)


class PlainNetworkTests(_HarnessMixin, TestCase):
    """js <-> js without a private-network key."""


class PrivateNetworkTests(_HarnessMixin, TestCase):
    """js <-> js with the DBC pre-shared key (pnet on every connection)."""

    FLAGS = ("--psk", DBC_PSK)

    async def test_plain_peer_cannot_join(self) -> None:
        """A peer without the key cannot dial into the private network."""
        inside = await self.peer()
        outside = await start_js_peer(_reactor())
        self.addCleanup(outside.stop)
        with self.assertRaises(JSPeerError):
            await outside.call("dial", addr=inside.addr, timeout=5)
        self.assertEqual((await inside.call("peers"))["peers"], [])


class HarnessTests(TestCase):
    """The Python driver itself."""

    if not js_available():
        skip = js_unavailable_reason()

    def test_pattern_bytes(self) -> None:
        """The pattern is deterministic, seed dependent and prefix stable."""
        self.assertEqual(pattern_bytes(0, 100), pattern_bytes(0, 100))
        self.assertNotEqual(pattern_bytes(0, 100), pattern_bytes(1, 100))
        self.assertEqual(pattern_bytes("x", 1000)[:10], pattern_bytes("x", 10))

    async def test_errors_and_stop(self) -> None:
        """ok:false raises JSPeerError; stop() ends the process; calls after it fail."""
        peer = await start_js_peer(_reactor(), "--key-type", "ed25519")
        self.addCleanup(peer.stop)
        with self.assertRaises(JSPeerError) as caught:
            await peer.call("no_such_command")
        self.assertIn("unknown command", caught.exception.error)
        with self.assertRaises(JSPeerError):
            await peer.call("publish", topic="t", data_b64="")  # floodsub not enabled
        status = await peer.call("status")
        self.assertEqual(status["peer_id"], peer.peer_id)
        await gatherResults([Deferred.fromCoroutine(peer.stop()), Deferred.fromCoroutine(peer.stop())])
        self.assertFalse(peer.running)
        await peer.stop()  # idempotent
        with self.assertRaises(JSPeerExited):
            await peer.call("status")

    async def test_key_file_reused(self) -> None:
        """--key-file is created on first start and gives the same peer id later."""
        path = self.mktemp()
        first = await start_js_peer(_reactor(), "--key-file", path)
        await first.stop()
        second = await start_js_peer(_reactor(), "--key-file", path)
        self.addCleanup(second.stop)
        self.assertEqual(first.peer_id, second.peer_id)
        with open(path, "rb") as f:
            self.assertEqual(f.read()[:4], bytes.fromhex("08021220"))  # secp256k1 PrivateKey protobuf

    async def test_stop_kills_unresponsive_peer(self) -> None:
        """A peer that ignores "stop" (here: SIGSTOPped) is SIGKILLed after the timeout."""
        peer = await start_js_peer(_reactor())
        self.addCleanup(peer.stop)
        os.kill(peer.pid, signal.SIGSTOP)
        await peer.stop(timeout=0.5)
        self.assertFalse(peer.running)
        with self.assertRaises(ProcessLookupError):
            os.kill(peer.pid, 0)

    def test_unavailable_reason(self) -> None:
        """A missing node binary gives a skip message instead of a crash."""
        self.patch(os, "environ", dict(os.environ, AICN_NODE="/nonexistent/node"))
        self.assertFalse(js_available())
        self.assertIn("node not found", js_unavailable_reason())
