"""The KadDHT lookup driver and RPC client on a fake host with a fake clock:
per-request timeouts, a reset after a complete response, the swarm hook."""


from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from aicn.p2p.kad import DEFAULT_PROTOCOL, KadDHT, KadMessage, KadPeer, MessageType
from aicn.p2p.kad.dht import REQUEST_TIMEOUT
from aicn.p2p.kad.keyspace import distance, kad_id
from aicn.p2p.kad.rpc import read_message, write_message
from aicn.p2p.keys import PrivateKey
from aicn.p2p.maddr import parse
from aicn.p2p.peerid import PeerID
from aicn.p2p.peerstore import Peerstore
from aicn.p2p.swarm import DialError, Swarm

from .fakestream import StreamPair

ADDR = parse("/ip4/127.0.0.1/tcp/4001").to_bytes()


def fake_peer(n: int) -> PeerID:
    return PeerID(b"\x00\x08" + n.to_bytes(8, "big"))


class FakeHost:
    """Just enough of :class:`~aicn.p2p.host.Host` for KadDHT's client side.

    ``behaviour[peer](request, stream)`` plays the remote end of each stream.
    """

    def __init__(self, clock) -> None:
        self.reactor = clock
        self.peer_id = fake_peer(0)
        self.peerstore = Peerstore(clock)
        self.router = None
        self.behaviour = {}
        self.streams = []

    def is_connected(self, peer):
        return peer in self.behaviour

    def set_peer_router(self, router):
        self.router = router

    def remove_peer_router(self, router):
        if self.router is router:
            self.router = None

    def connected_peers(self):
        return list(self.behaviour)

    def connections(self, peer=None):
        return []

    def listen_addrs(self):
        return [parse("/ip4/127.0.0.1/tcp/1")]

    async def new_stream(self, peer, protocols, addrs=None):
        if peer not in self.behaviour:
            raise DialError(f"cannot reach {peer}")
        pair = StreamPair(protocol=protocols[0])
        self.streams.append((peer, pair.a))
        Deferred.fromCoroutine(self._serve(peer, pair.b))
        return pair.a

    async def _serve(self, peer, stream):
        request = await read_message(stream)
        await self.behaviour[peer](request, stream)


class DriverTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.host = FakeHost(self.clock)
        self.dht = KadDHT(self.host, self.clock, refresh_interval=None)

    def serve(self, behaviour, seeds=None):
        """Install remote behaviours; ``seeds`` (default: all) are connected kad servers."""
        self.host.behaviour = behaviour
        for peer in behaviour if seeds is None else seeds:
            self.host.peerstore.set_protocols(peer, [DEFAULT_PROTOCOL])

    def answer_with(self, peers, then_reset=False):
        async def behaviour(request, stream):
            closer = [KadPeer(p, (ADDR,)) for p in peers]
            await write_message(stream, KadMessage(MessageType.FIND_NODE, closer_peers=closer))
            if then_reset:
                # js resets instead of closing, once its response went out.
                self.clock.callLater(0, stream.reset)
            else:
                await stream.close_write()
        return behaviour

    @staticmethod
    async def never_answer(request, stream):
        pass

    def drive(self, coro):
        out = []
        Deferred.fromCoroutine(coro).addBoth(out.append)
        return out

    def test_slow_peer_times_out_and_lookup_completes(self):
        a, b, slow = fake_peer(1), fake_peer(2), fake_peer(3)
        hidden = fake_peer(4)  # only the slow peer would have told us
        self.serve({
            a: self.answer_with([b]),
            b: self.answer_with([a], then_reset=True),
            slow: self.never_answer,
        })
        out = self.drive(self.dht.get_closest_peers(b"key"))
        self.assertEqual(out, [])  # waiting for the slow peer
        self.clock.advance(REQUEST_TIMEOUT - 0.1)
        self.assertEqual(out, [])
        self.clock.advance(0.2)
        target = kad_id(b"key")
        self.assertEqual(out, [sorted([a, b], key=lambda p: distance(kad_id(p), target))])
        self.assertNotIn(hidden, out[0])
        slow_stream = [s for p, s in self.host.streams if p == slow][0]
        self.assertTrue(slow_stream.is_reset)  # the timed-out request was aborted

    def test_find_peer_stops_once_found(self):
        a, target = fake_peer(1), fake_peer(99)
        far = {fake_peer(n) for n in range(10, 20)}
        asked = []

        def tracking(peer, inner):
            async def behaviour(request, stream):
                asked.append(peer)
                self.assertEqual(request.type, MessageType.FIND_NODE)
                self.assertEqual(request.key, target.to_bytes())
                await inner(request, stream)
            return behaviour

        behaviour = {a: tracking(a, self.answer_with([target] + sorted(far)))}
        for p in far:
            behaviour[p] = tracking(p, self.never_answer)
        self.serve(behaviour, seeds=[a])
        out = self.drive(self.dht.find_peer(target))
        self.assertEqual(out, [[parse(ADDR)]])
        self.assertEqual(asked, [a])  # nobody else was asked once a named the target

    def test_lookup_peer_asks_the_network_not_the_peerstore(self):
        a, target, stranger = fake_peer(1), fake_peer(99), fake_peer(98)
        self.serve({a: self.answer_with([target])}, seeds=[a])
        stale = parse("/ip4/127.0.0.1/tcp/9").to_bytes()
        self.host.peerstore.add_addrs(stranger, [stale], 60)
        # The peerstore's (stale) address is no evidence: nobody in the DHT knows it.
        self.assertEqual(self.drive(self.dht.lookup_peer(stranger)), [[]])
        self.assertEqual(self.drive(self.dht.find_peer(stranger)), [[parse(stale)]])
        # a reports the target: found, with the addresses a gave.
        self.assertEqual(self.drive(self.dht.lookup_peer(target)), [[parse(ADDR)]])

    def test_lookup_peer_found_when_the_target_answers(self):
        target = fake_peer(99)
        self.serve({target: self.answer_with([])})
        self.host.peerstore.add_addrs(target, [ADDR], 60)
        self.assertEqual(self.drive(self.dht.lookup_peer(target)), [[parse(ADDR)]])

    def test_lookup_peer_without_seeds_ends_at_once(self):
        self.assertEqual(self.drive(self.dht.lookup_peer(fake_peer(99))), [[]])

    def test_learnt_addresses_are_temporary(self):
        a, c = fake_peer(1), fake_peer(5)
        self.serve({a: self.answer_with([c])})
        self.drive(self.dht.get_closest_peers(b"key"))
        self.assertEqual(self.host.peerstore.addrs(c), [ADDR])
        self.clock.advance(121)
        self.assertEqual(self.host.peerstore.addrs(c), [])


class SwarmHookTests(TestCase):
    async def test_router_consulted_only_without_addresses(self):
        clock = Clock()
        swarm = Swarm(clock, PrivateKey.generate("ed25519"), peerstore=Peerstore(clock))
        asked = []

        class Router:
            async def find_peer(self, peer):
                asked.append(peer)
                return []

        class FailingRouter:
            async def find_peer(self, peer):
                raise RuntimeError("lookup exploded")

        peer = fake_peer(7)
        with self.assertRaises(DialError):
            await swarm.dial(peer)  # no router: plain "no addresses"
        swarm.set_peer_router(Router())
        with self.assertRaises(DialError):
            await swarm.dial(peer)
        self.assertEqual(asked, [peer])
        with self.assertRaises(DialError):
            await swarm.dial(peer, [])  # explicit (empty) addresses: no routing
        self.assertEqual(asked, [peer])
        swarm.set_peer_router(FailingRouter())
        with self.assertRaisesRegex(DialError, "lookup exploded"):
            await swarm.dial(peer)
