"""Dial history: recording connections, pruning, and the startup dials on loopback."""

from multiaddr import Multiaddr
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from aicn.node.dialhistory import (
    BOOTSTRAP_TAG,
    DialHistory,
    choose_listen_addr,
    connect_startup_peers,
    parse_bootstrap,
)
from aicn.p2p.connmgr import ConnectionManager
from aicn.p2p.host import Host
from aicn.p2p.identify import IdentifyResult
from aicn.p2p.keys import PrivateKey
from aicn.p2p.peerstore import PERMANENT_ADDR_TTL
from aicn.storage import HISTORY_MAX_AGE, Database
from tests.util import wait_for

DAY = 24 * 3600.0


def new_peer():
    return PrivateKey.generate("ed25519").peer_id()


def ma(text):
    return Multiaddr(text)


class FakeConn:
    def __init__(self, peer, direction, remote_addr):
        self.peer = peer
        self.direction = direction
        self.remote_addr = remote_addr


class FakeHost:
    def __init__(self):
        self.observers = []
        self.conns = []

    def add_observer(self, obs):
        self.observers.append(obs)

    def remove_observer(self, obs):
        self.observers.remove(obs)

    def connections(self, peer=None):
        return [c for c in self.conns if peer is None or c.peer == peer]

    def open(self, conn):
        self.conns.append(conn)
        for obs in self.observers:
            obs.connected(conn)

    def close(self, conn):
        self.conns.remove(conn)
        for obs in self.observers:
            obs.disconnected(conn)

    def identify(self, peer, listen_addrs):
        result = IdentifyResult(peer=peer, public_key=None, protocol_version=None, agent_version=None,
                                listen_addrs=[ma(a).to_bytes() for a in listen_addrs])
        for obs in self.observers:
            obs.identified(peer, result)


class RecordingTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.db = Database(self.mktemp())
        self.addCleanup(self.db.close)
        self.host = FakeHost()
        self.history = DialHistory(self.host, self.db, self.clock)
        self.history.start()
        self.addCleanup(self.history.stop)

    def record(self, peer):
        return {r.peer_id: r for r in self.db.history()}.get(str(peer))

    def test_outbound_records_dialled_address_and_resets_failures(self):
        peer = new_peer()
        self.host.open(FakeConn(peer, "Outbound", ma("/ip4/10.0.0.1/tcp/4001")))
        rec = self.record(peer)
        self.assertEqual((rec.address, rec.consecutive_failures, rec.last_success_time),
                         ("/ip4/10.0.0.1/tcp/4001", 0, self.clock.seconds()))
        self.clock.advance(10)
        self.assertEqual(self.db.record_failure(str(peer), self.clock.seconds()), 1)
        self.assertEqual(self.db.record_failure(str(peer), self.clock.seconds()), 2)
        self.assertEqual(self.record(peer).last_success_time, self.clock.seconds() - 10)
        self.clock.advance(5)
        self.host.open(FakeConn(peer, "Outbound", ma("/ip4/10.0.0.2/tcp/4001")))
        rec = self.record(peer)
        self.assertEqual((rec.address, rec.consecutive_failures, rec.last_success_time, rec.last_connect_time),
                         ("/ip4/10.0.0.2/tcp/4001", 0, self.clock.seconds(), self.clock.seconds()))

    def test_inbound_records_listen_address_from_identify_once(self):
        peer = new_peer()
        self.host.open(FakeConn(peer, "Inbound", ma("/ip4/10.0.0.1/tcp/51234")))
        self.assertIsNone(self.record(peer))  # the ephemeral port is not worth recording
        t0 = self.clock.seconds()
        self.host.identify(peer, ["/ip4/127.0.0.1/tcp/4001", "/ip4/192.168.1.5/tcp/4001",
                                  "/ip4/8.8.8.8/tcp/4001"])
        rec = self.record(peer)
        self.assertEqual((rec.address, rec.last_success_time), ("/ip4/8.8.8.8/tcp/4001", t0))
        self.clock.advance(30)
        self.host.identify(peer, ["/ip4/8.8.4.4/tcp/4001"])  # identify-push: not re-recorded
        self.assertEqual(self.record(peer).address, "/ip4/8.8.8.8/tcp/4001")

    def test_inbound_without_usable_address_not_recorded(self):
        peer = new_peer()
        self.host.open(FakeConn(peer, "Inbound", ma("/ip4/10.0.0.1/tcp/51234")))
        self.host.identify(peer, ["/ip4/127.0.0.1/tcp/4001", "/ip4/0.0.0.0/tcp/4001"])
        self.assertEqual(self.db.history(), [])

    def test_identify_of_outbound_peer_not_rerecorded(self):
        peer = new_peer()
        self.host.open(FakeConn(peer, "Outbound", ma("/ip4/10.0.0.1/tcp/4001")))
        self.host.identify(peer, ["/ip4/8.8.8.8/tcp/4001"])
        self.assertEqual(self.record(peer).address, "/ip4/10.0.0.1/tcp/4001")

    def test_prune_rule(self):
        now = self.clock.seconds()
        cases = {
            "dead": (10, now - HISTORY_MAX_AGE - DAY),
            "recent-success": (10, now - HISTORY_MAX_AGE + DAY),
            "few-failures": (9, now - 365 * DAY),
        }
        for name, (failures, success) in cases.items():
            self.db.record_success(name, "/ip4/10.0.0.1/tcp/1", success)
            for _ in range(failures):
                self.db.record_failure(name, now)
        self.assertEqual(self.db.prune_history(now), 1)
        self.assertEqual(sorted(r.peer_id for r in self.db.history()), ["few-failures", "recent-success"])

    def test_history_order_most_recent_success_first(self):
        for name, when in [("old", 100.0), ("new", 300.0), ("mid", 200.0)]:
            self.db.record_success(name, "/ip4/10.0.0.1/tcp/1", when)
        self.assertEqual([r.peer_id for r in self.db.history()], ["new", "mid", "old"])

    def test_stop(self):
        self.history.stop()
        self.host.open(FakeConn(new_peer(), "Outbound", ma("/ip4/10.0.0.1/tcp/4001")))
        self.assertEqual(self.db.history(), [])


class HelperTests(SynchronousTestCase):
    def test_choose_listen_addr(self):
        remote_lan = ma("/ip4/192.168.1.9/tcp/5555")
        remote_lo = ma("/ip4/127.0.0.1/tcp/5555")
        addrs = ["/ip4/127.0.0.1/tcp/1", "/ip4/10.1.1.1/tcp/2", "/ip6/::1/tcp/3"]
        self.assertEqual(str(choose_listen_addr(addrs, remote_lan)), "/ip4/10.1.1.1/tcp/2")
        self.assertEqual(str(choose_listen_addr(addrs[:1] + addrs[2:], remote_lo)), "/ip4/127.0.0.1/tcp/1")
        self.assertIsNone(choose_listen_addr(["/ip4/127.0.0.1/tcp/1"], remote_lan))
        self.assertIsNone(choose_listen_addr(["/ip4/1.2.3.4/tcp/0", "/ip4/1.2.3.4/udp/1", b"\xff\xff"], None))
        self.assertEqual(str(choose_listen_addr(["/dns4/example.org/tcp/4001"], remote_lan)),
                         "/dns4/example.org/tcp/4001")
        peer = new_peer()
        self.assertEqual(str(choose_listen_addr([f"/ip4/10.1.1.1/tcp/2/p2p/{peer}"], None)),
                         "/ip4/10.1.1.1/tcp/2")

    def test_parse_bootstrap(self):
        me, a = new_peer(), new_peer()
        peers = parse_bootstrap([
            f"/ip4/127.0.0.1/tcp/1/p2p/{a}",
            f"/ip4/127.0.0.2/tcp/1/p2p/{a}",
            f"/ip4/127.0.0.1/tcp/2/p2p/{me}",
            "/ip4/127.0.0.1/tcp/3",
            "garbage",
        ], me)
        self.assertEqual(peers, {a: [ma("/ip4/127.0.0.1/tcp/1"), ma("/ip4/127.0.0.2/tcp/1")]})


async def closed_port_addr():
    """A loopback TCP address nobody listens on (bound, then closed)."""
    from twisted.internet.protocol import Factory

    port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
    number = port.getHost().port
    await port.stopListening()
    return f"/ip4/127.0.0.1/tcp/{number}"


class StartupTests(TestCase):
    async def make(self):
        host = Host(reactor, PrivateKey.generate("ed25519"), ping_interval=None)
        await host.start(["/ip4/127.0.0.1/tcp/0"])
        self.addCleanup(lambda: Deferred.fromCoroutine(host.stop()))
        return host

    def setUp(self):
        self.db = Database(self.mktemp())
        self.addCleanup(self.db.close)

    def record(self, peer):
        return {r.peer_id: r for r in self.db.history()}.get(str(peer))

    async def test_history_and_bootstrap(self):
        me, known, boot = await self.make(), await self.make(), await self.make()
        dead = new_peer()
        dead_addr = await closed_port_addr()
        now = reactor.seconds()
        self.db.record_success(str(known.peer_id), str(known.listen_addrs()[0]), now - 100)
        self.db.record_failure(str(known.peer_id), now - 50)
        self.db.record_success(str(dead), dead_addr, now - 100)
        self.db.record_failure(str(dead), now - 50)
        self.db.record_success(str(me.peer_id), str(me.listen_addrs()[0]), now - 100)  # ourselves
        mgr = ConnectionManager(me, reactor, trim_interval=None)
        boot_addr = f"{boot.listen_addrs()[0]}/p2p/{boot.peer_id}"
        self_addr = f"{me.listen_addrs()[0]}/p2p/{me.peer_id}"
        summary = await connect_startup_peers(me, self.db, [boot_addr, self_addr, "nonsense"], reactor, mgr)

        self.assertEqual(summary.history_connected, [known.peer_id])
        self.assertEqual(summary.history_failed, [dead])
        self.assertEqual(summary.bootstrap_connected, [boot.peer_id])
        self.assertEqual(summary.bootstrap_failed, [])
        self.assertTrue(summary.bootstrap_dialled)
        self.assertTrue(me.is_connected(known.peer_id))
        self.assertTrue(me.is_connected(boot.peer_id))
        self.assertEqual(sorted(map(str, me.connected_peers())), sorted([str(known.peer_id), str(boot.peer_id)]))

        rec = self.record(known.peer_id)
        self.assertEqual(rec.consecutive_failures, 0)
        self.assertGreaterEqual(rec.last_success_time, now)
        self.assertEqual(rec.address, str(known.listen_addrs()[0]))
        self.assertEqual(self.record(dead).consecutive_failures, 2)
        self.assertEqual(self.record(me.peer_id).consecutive_failures, 0)  # not dialled, not failed

        self.assertTrue(mgr.is_protected(boot.peer_id, BOOTSTRAP_TAG))
        self.assertFalse(mgr.is_protected(known.peer_id))
        self.assertIn(boot.listen_addrs()[0].to_bytes(), me.peerstore.addrs(boot.peer_id))
        # Permanent: survives the disconnect that turns connected addresses into temporary ones.
        me.disconnect(boot.peer_id)
        await wait_for(lambda: not me.is_connected(boot.peer_id))
        self.assertIn(boot.listen_addrs()[0].to_bytes(), me.peerstore.addrs(boot.peer_id))
        entry = me.peerstore._get(boot.peer_id).addrs[boot.listen_addrs()[0].to_bytes()]
        self.assertEqual(entry[1], PERMANENT_ADDR_TTL)

    async def test_prunes_and_tolerates_bad_entries(self):
        me = await self.make()
        now = reactor.seconds()
        self.db.record_success("not-a-peer-id", "/ip4/127.0.0.1/tcp/1", now - HISTORY_MAX_AGE - DAY)
        self.db.record_success(str(new_peer()), "garbage", now)
        gone = new_peer()
        self.db.record_success(str(gone), "/ip4/127.0.0.1/tcp/1", now - HISTORY_MAX_AGE - DAY)
        for _ in range(10):
            self.db.record_failure(str(gone), now)
        unreachable_boot = f"{await closed_port_addr()}/p2p/{new_peer()}"
        summary = await connect_startup_peers(me, self.db, [unreachable_boot], reactor)
        self.assertEqual(summary.pruned, 1)
        self.assertEqual(len(summary.bootstrap_failed), 1)
        self.assertEqual(sorted(r.consecutive_failures for r in self.db.history()), [1, 1])

    async def test_threshold_skips_bootstrap(self):
        me, known, boot = await self.make(), await self.make(), await self.make()
        self.db.record_success(str(known.peer_id), str(known.listen_addrs()[0]), reactor.seconds())
        boot_addr = f"{boot.listen_addrs()[0]}/p2p/{boot.peer_id}"
        summary = await connect_startup_peers(me, self.db, [boot_addr], reactor, history_threshold=1)
        self.assertFalse(summary.bootstrap_dialled)
        self.assertEqual(summary.history_connected, [known.peer_id])
        self.assertFalse(me.is_connected(boot.peer_id))
        summary = await connect_startup_peers(me, self.db, [boot_addr], reactor, history_threshold=2)
        self.assertTrue(summary.bootstrap_dialled)
        self.assertEqual(summary.bootstrap_connected, [boot.peer_id])

    async def test_recorder_on_real_hosts(self):
        a, b = await self.make(), await self.make()
        db_b = Database(self.mktemp())
        self.addCleanup(db_b.close)
        rec_a, rec_b = DialHistory(a, self.db, reactor), DialHistory(b, db_b, reactor)
        rec_a.start()
        rec_b.start()
        self.addCleanup(rec_a.stop)
        self.addCleanup(rec_b.stop)
        await a.connect(b.peer_id, b.listen_addrs())
        self.assertEqual(self.record(b.peer_id).address, str(b.listen_addrs()[0]))
        # b saw an inbound connection: it records a's listen address once identify ran.
        await wait_for(lambda: db_b.history())
        self.assertEqual([(r.peer_id, r.address) for r in db_b.history()],
                         [(str(a.peer_id), str(a.listen_addrs()[0]))])
