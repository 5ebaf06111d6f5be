"""FloodSub on real hosts over loopback."""

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from aicn.p2p.host import Host
from aicn.p2p.keys import PrivateKey
from aicn.p2p.pb import rpc_pb2
from aicn.p2p.peerid import PeerID
from aicn.p2p.pubsub import FLOODSUB, FloodSub, MessageTooLarge
from aicn.p2p.pubsub.rpc import RPCReader, encode_rpc, publish_frame, subscriptions_frame
from aicn.p2p.pubsub.sign import signing_bytes
from tests.util import wait_for


async def settle(seconds=0.2):
    await deferLater(reactor, seconds, lambda: None)


def js_style(key, topic, data, seqno):
    """A message as js-libp2p builds it: stripped seqno, `key` always present."""
    from_ = PeerID.from_public_key(key.public_key).to_bytes()
    msg = rpc_pb2.Message(data=data, seqno=seqno, topicIDs=[topic], key=key.public_key.marshal())
    setattr(msg, "from", from_)
    msg.signature = key.sign(signing_bytes(from_, data, seqno, [topic]))
    return msg


class Inbox:
    def __init__(self):
        self.messages = []

    def __call__(self, message):
        self.messages.append(message)


class FloodSubCase(TestCase):
    """Real hosts on loopback, each with a FloodSub."""

    async def host(self, key_type="secp256k1"):
        host = Host(reactor, PrivateKey.generate(key_type), ping_interval=None)
        await host.start(["/ip4/127.0.0.1/tcp/0"])
        self.addCleanup(lambda: Deferred.fromCoroutine(host.stop()))
        return host

    async def node(self, key_type="secp256k1", **kwargs):
        host = await self.host(key_type)
        pubsub = FloodSub(host, reactor, **kwargs)
        self.addCleanup(pubsub.close)
        return host, pubsub

    async def raw_stream(self, raw_host, target):
        """A floodsub stream from a host without FloodSub, to inject RPCs."""
        await raw_host.connect(target.peer_id, target.listen_addrs())
        return await raw_host.new_stream(target.peer_id, [FLOODSUB])


class FloodSubTests(FloodSubCase):
    async def test_line_relay_delivers_once(self):
        (ha, a), (hb, b), (hc, c) = await self.node(), await self.node("ed25519"), await self.node()
        inboxes = {name: Inbox() for name in "abc"}
        for name, ps in zip("abc", (a, b, c)):
            ps.subscribe("demo", inboxes[name])
        await ha.connect(hb.peer_id, hb.listen_addrs())
        await hc.connect(hb.peer_id, hb.listen_addrs())
        await wait_for(lambda: set(b.peers("demo")) == {ha.peer_id, hc.peer_id}
                       and a.peers("demo") == [hb.peer_id] and c.peers("demo") == [hb.peer_id])
        self.assertFalse(hc.is_connected(ha.peer_id))

        await a.publish("demo", b"hello from A")
        await wait_for(lambda: inboxes["c"].messages)
        await settle()
        (got,) = inboxes["c"].messages
        self.assertEqual((got.from_peer, got.data, got.topic, got.received_from),
                         (ha.peer_id, b"hello from A", "demo", hb.peer_id))
        self.assertEqual(len(got.seqno), 8)
        self.assertNotEqual(got.seqno[0], 0)
        self.assertEqual([m.received_from for m in inboxes["b"].messages], [ha.peer_id])
        # The publisher gets its own message, locally, once.
        (own,) = inboxes["a"].messages
        self.assertIsNone(own.received_from)
        self.assertEqual(own.seqno, got.seqno)
        self.assertEqual(a.stats["published"], 1)
        self.assertEqual(b.stats["forwarded"], 1)  # to C only: not back to A
        self.assertEqual(a.stats["received"], 0)

        # And back: C -> B -> A.
        await c.publish("demo", b"reply")
        await wait_for(lambda: len(inboxes["a"].messages) == 2)
        self.assertEqual(inboxes["a"].messages[1].from_peer, hc.peer_id)

    async def test_triangle_duplicates_delivered_once(self):
        nodes = [await self.node() for _ in range(3)]
        inboxes = [Inbox() for _ in nodes]
        for (_, ps), inbox in zip(nodes, inboxes):
            ps.subscribe("t", inbox)
        hosts = [h for h, _ in nodes]
        for i, j in ((0, 1), (1, 2), (2, 0)):
            await hosts[i].connect(hosts[j].peer_id, hosts[j].listen_addrs())
        await wait_for(lambda: all(len(ps.peers("t")) == 2 for _, ps in nodes))
        await nodes[0][1].publish("t", b"x")
        await wait_for(lambda: sum(ps.stats["duplicates"] for _, ps in nodes) >= 1)
        await settle()
        self.assertEqual([len(i.messages) for i in inboxes], [1, 1, 1])

    async def test_own_messages_without_peers_and_size_limit(self):
        _, ps = await self.node(max_message_size=1000)
        inbox = Inbox()
        ps.subscribe("t", inbox)
        await ps.publish("t", b"x" * 1000)
        self.assertEqual(len(inbox.messages), 1)
        with self.assertRaises(MessageTooLarge):
            await ps.publish("t", b"x" * 1001)
        self.assertEqual(len(inbox.messages), 1)
        # A second handler, and handler failures do not stop the others.
        ps.subscribe("t", lambda m: 1 / 0)
        await ps.publish("t", b"y")
        self.assertEqual(len(inbox.messages), 2)
        self.assertEqual(ps.stats["handler_errors"], 1)
        self.flushLoggedErrors(ZeroDivisionError)
        ps.unsubscribe("t")
        await ps.publish("t", b"z")
        self.assertEqual(len(inbox.messages), 2)
        self.assertEqual(ps.topics(), [])

    async def test_subscriptions_announced_and_cleanup_on_disconnect(self):
        (ha, a), (hb, b) = await self.node(), await self.node()
        a.subscribe("early", Inbox())  # sent in the first RPC
        await ha.connect(hb.peer_id, hb.listen_addrs())
        await wait_for(lambda: b.peers("early") == [ha.peer_id])
        handler = Inbox()
        a.subscribe("late", handler)
        await wait_for(lambda: b.peers("late") == [ha.peer_id])
        self.assertEqual(b.peers(), [ha.peer_id])
        a.unsubscribe("late", handler)
        await wait_for(lambda: b.peers("late") == [])
        self.assertEqual(b.peers("early"), [ha.peer_id])
        hb.disconnect(ha.peer_id)
        await wait_for(lambda: not b._peers and not a._peers)
        self.assertEqual((a.peers(), b.peers()), ([], []))

    async def test_js_style_message_bad_signature_and_garbage(self):
        hb, b = await self.node()
        inbox = Inbox()
        b.subscribe("t", inbox)
        raw = await self.host()
        stream = await self.raw_stream(raw, hb)
        await stream.write(subscriptions_frame([("t", True)]))
        good = js_style(raw.key, "t", b"signed", b"\x2a")
        bad = js_style(raw.key, "t", b"signed", b"\x2b")
        bad.data = b"tampered"
        await stream.write(publish_frame(bad) + publish_frame(good) + publish_frame(good))
        await wait_for(lambda: b.stats["received"] == 3)
        self.assertEqual([(m.data, m.seqno, m.from_peer) for m in inbox.messages],
                         [(b"signed", b"\x2a", raw.peer_id)])
        self.assertEqual(b.stats["invalid_signature"], 1)
        self.assertEqual(b.stats["duplicates"], 1)
        self.assertEqual(b.peers("t"), [raw.peer_id])

        # A message claiming to be from B itself, and a garbage frame.
        own = js_style(hb.key, "t", b"spoof", b"\x01")
        await stream.write(publish_frame(own) + b"\x03\xff\xff\xff")
        await wait_for(lambda: b.stats["malformed_rpc"] == 1)
        self.assertEqual(b.stats["self_origin"], 1)
        self.assertEqual(len(inbox.messages), 1)
        # The stream was reset, but B is fine: a fresh stream works.
        stream = await raw.new_stream(hb.peer_id, [FLOODSUB])
        await stream.write(subscriptions_frame([]) + publish_frame(js_style(raw.key, "t", b"again", b"\x2c")))
        await wait_for(lambda: len(inbox.messages) == 2)

    async def test_oversize_frame_resets_stream(self):
        hb, b = await self.node(max_message_size=1000)
        raw = await self.host()
        stream = await self.raw_stream(raw, hb)
        await stream.write(b"\x80\x80\x10")  # a 256 KiB frame, over 1000 + overhead
        await wait_for(lambda: b.stats["too_large"] == 1)
        big = js_style(raw.key, "t", b"x" * 1001, b"\x01")
        stream = await raw.new_stream(hb.peer_id, [FLOODSUB])
        await stream.write(encode_rpc(rpc_pb2.RPC(publish=[big])))
        await wait_for(lambda: b.stats["too_large"] == 2)

    async def test_slow_peer_queue_is_bounded(self):
        hb, b = await self.node(outbound_queue=8, outbound_queue_bytes=0, max_message_size=64 * 1024)
        slow = await self.host()
        held = []

        async def never_read(stream, conn):
            held.append(stream)  # accept B's stream and never read it

        slow.set_stream_handler(FLOODSUB, never_read)
        stream = await self.raw_stream(slow, hb)
        await stream.write(subscriptions_frame([("t", True)]))
        await wait_for(lambda: b.peers("t") == [slow.peer_id] and held)
        for _ in range(40):
            await b.publish("t", b"x" * 64 * 1024)
        await settle(0.3)
        out = b._peers[slow.peer_id].outbound
        self.assertLessEqual(out.queued_bytes, b.outbound_queue_bytes)
        self.assertLessEqual(len(out.queue), 8)
        self.assertGreater(b.stats["dropped_queue_full"], 0)
        self.assertEqual(b.stats["forwarded"] + b.stats["dropped_queue_full"], 40)
        # Everything that was not dropped arrives once the peer reads.
        total = 0
        reader = RPCReader()
        while True:
            d = held[0].read(65536)
            chunk = await d.addTimeout(1.0, reactor)
            total += sum(len(rpc.publish) for rpc in reader.feed(chunk))
            if total >= b.stats["forwarded"]:
                break
        self.assertEqual(total, b.stats["forwarded"])


class DuplicateConnectionTests(FloodSubCase):
    """Issue 10.1: a second connection from the same peer id must not break the first."""

    async def twin(self, key):
        """A second host (a second process, say) with ``key``, hence the same peer id."""
        host = Host(reactor, key, ping_interval=None)
        await host.start(["/ip4/127.0.0.1/tcp/0"])
        self.addCleanup(lambda: Deferred.fromCoroutine(host.stop()))
        pubsub = FloodSub(host, reactor, seqno_seed=1)
        self.addCleanup(pubsub.close)
        return host, pubsub

    async def test_twin_with_same_key_connects_and_leaves(self):
        (ha, a), (hb, b) = await self.node(), await self.node()
        inbox_a, inbox_b = Inbox(), Inbox()
        a.subscribe("demo", inbox_a)
        b.subscribe("demo", inbox_b)
        await ha.connect(hb.peer_id, hb.listen_addrs())
        await wait_for(lambda: b.peers("demo") == [ha.peer_id] and a.peers("demo") == [hb.peer_id])

        # A' has A's key and other subscriptions; it connects to B, speaks floodsub, and leaves.
        ht, twin = await self.twin(ha.key)
        self.assertEqual(ht.peer_id, ha.peer_id)
        twin.subscribe("other", Inbox())
        await ht.connect(hb.peer_id, hb.listen_addrs())
        await wait_for(lambda: len(hb.connections(ha.peer_id)) == 2 and ha.peer_id in b.peers("other"))
        # While both are connected, B still counts A as subscribed to what A announced.
        self.assertEqual(b.peers("demo"), [ha.peer_id])
        twin.close()
        await ht.stop()
        await wait_for(lambda: len(hb.connections(ha.peer_id)) == 1)
        await wait_for(lambda: b.peers("other") == [], timeout=5)
        self.assertEqual(b.peers("demo"), [ha.peer_id])
        self.assertEqual(b.peers(), [ha.peer_id])
        self.assertEqual(a.peers("demo"), [hb.peer_id])

        # Messages flow both ways over the connection that stayed.
        await a.publish("demo", b"A to B")
        await wait_for(lambda: [m.data for m in inbox_b.messages] == [b"A to B"], timeout=5)
        await b.publish("demo", b"B to A")
        await wait_for(lambda: [m.data for m in inbox_a.messages] == [b"A to B", b"B to A"], timeout=5)
