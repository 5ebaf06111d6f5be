"""Floodsub interop with js-libp2p (@libp2p/floodsub): our node as the hub.

Two js peers connect only to our node; messages go A -> B and B -> A through
it, js verifies our StrictSign messages and we verify js's.  Skipped when
the js peer (node and its node_modules) is not installed.
"""

import base64

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from aicn.p2p.host import Host
from aicn.p2p.keys import PrivateKey
from aicn.p2p.peerid import PeerID
from aicn.p2p.pubsub import FloodSub
from tests.util import wait_for

try:
    from tests.interop.jspeer import js_available, js_unavailable_reason, start_js_peer
except ImportError:  # the js harness is not on this branch
    js_available = None

TOPIC = "DeepBrainChain"


def b64(data):
    return base64.b64encode(data).decode()


class JSFloodSubTests(TestCase):
    if js_available is None:
        skip = "tests.interop.jspeer (the js harness) is not available"
    elif not js_available():
        skip = js_unavailable_reason()

    timeout = 60

    async def hub(self, key_type):
        host = Host(reactor, PrivateKey.generate(key_type), ping_interval=None)
        await host.start(["/ip4/127.0.0.1/tcp/0"])
        self.addCleanup(lambda: Deferred.fromCoroutine(host.stop()))
        pubsub = FloodSub(host, reactor)
        self.addCleanup(pubsub.close)
        return host, pubsub

    async def js(self):
        peer = await start_js_peer(reactor, "--topic", TOPIC)
        self.addCleanup(lambda: Deferred.fromCoroutine(peer.stop()))
        return peer

    async def check_hub(self, key_type):
        host, pubsub = await self.hub(key_type)
        inbox = []
        pubsub.subscribe(TOPIC, inbox.append)
        a, b = await self.js(), await self.js()
        our_addr = f"{host.listen_addrs()[0]}/p2p/{host.peer_id}"
        for js in (a, b):
            await js.call("dial", addr=our_addr)
        ida, idb = PeerID.from_string(a.peer_id), PeerID.from_string(b.peer_id)

        async def meshed():
            if set(pubsub.peers(TOPIC)) != {ida, idb}:
                return False
            for js in (a, b):
                reply = await js.call("pubsub_peers", topic=TOPIC)
                if str(host.peer_id) not in (reply["subscribers"] or []):
                    return False
            return True

        await wait_for(meshed)
        for js in (a, b):  # the js peers know only us
            reply = await js.call("peers")
            self.assertEqual({p["peer_id"] for p in reply["peers"]}, {str(host.peer_id)})

        # A -> B through us; we verify js's signature (js sends `key` and a stripped seqno).
        await a.call("publish", topic=TOPIC, data_b64=b64(b"from A"))
        event = await b.next_event("message", match=lambda e: e["from"] == a.peer_id)
        self.assertEqual(base64.b64decode(event["data_b64"]), b"from A")
        self.assertEqual([(m.from_peer, m.data, m.received_from) for m in inbox], [(ida, b"from A", ida)])
        self.assertEqual(int(event["seqno_hex"], 16), int.from_bytes(inbox[0].seqno, "big"))

        # B -> A.
        await b.call("publish", topic=TOPIC, data_b64=b64(b"from B"))
        event = await a.next_event("message", match=lambda e: e["from"] == b.peer_id)
        self.assertEqual(base64.b64decode(event["data_b64"]), b"from B")

        # Ours: js accepts StrictSign messages with our seqno and no `key` field.
        await pubsub.publish(TOPIC, b"from the hub")
        for js in (a, b):
            event = await js.next_event("message", match=lambda e: e["from"] == str(host.peer_id))
            self.assertEqual(base64.b64decode(event["data_b64"]), b"from the hub")
            self.assertEqual(int(event["seqno_hex"], 16), int.from_bytes(inbox[-1].seqno, "big"))
        self.assertEqual([m.data for m in inbox], [b"from A", b"from B", b"from the hub"])

        stats = pubsub.stats
        self.assertEqual(stats["invalid_signature"], 0)
        self.assertEqual(stats["invalid_message"], 0)
        self.assertEqual(stats["delivered"], 3)
        self.assertEqual(stats["forwarded"], 4)  # A's to B, B's to A, ours to both
        # Neither js peer got its own message back from us.
        self.assertEqual(a.pending_events("message") + b.pending_events("message"), [])

    def test_hub_secp256k1(self):
        return Deferred.fromCoroutine(self.check_hub("secp256k1"))

    def test_hub_ed25519(self):
        return Deferred.fromCoroutine(self.check_hub("ed25519"))
