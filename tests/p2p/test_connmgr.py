"""The connection manager: the pure trimming decision, the manager, real hosts."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from aicn.config import ConnMgrConfig
from aicn.p2p.connmgr import ConnectionManager, ConnInfo, select_victims, victim_order
from aicn.p2p.host import Host
from aicn.p2p.keys import PrivateKey
from tests.util import wait_for

conn_infos = st.lists(
    st.builds(
        ConnInfo,
        id=st.text(min_size=1, max_size=4),
        peer=st.sampled_from(["a", "b", "c", "d", "e"]),
        direction=st.sampled_from(["Inbound", "Outbound"]),
        opened_at=st.floats(min_value=0, max_value=100),
        protected=st.booleans(),
        value=st.integers(min_value=-5, max_value=5),
        streams=st.integers(min_value=0, max_value=3),
    ),
    max_size=40,
    unique_by=lambda c: c.id,
)


class SelectVictimsTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(conn_infos, st.integers(0, 20), st.integers(0, 20), st.floats(0, 50))
    def test_properties(self, conns, low, extra, grace):
        high = low + extra
        now = 100.0
        victims = select_victims(conns, now, low_water=low, high_water=high, grace_period=grace)
        ids = [v.id for v in victims]
        self.assertEqual(len(ids), len(set(ids)))
        self.assertTrue(set(ids) <= {c.id for c in conns})
        for v in victims:
            self.assertFalse(v.protected)
            self.assertGreaterEqual(now - v.opened_at, grace)
        if len(conns) <= high:
            self.assertEqual(victims, [])
            return
        eligible = [c for c in conns if not c.protected and now - c.opened_at >= grace]
        # Down to LowWater when enough may be closed, else every eligible one.
        self.assertEqual(len(victims), min(len(conns) - low, len(eligible)))
        # The ones kept are never less useful than the ones closed.
        kept = [c for c in eligible if c not in victims]
        if victims and kept:
            self.assertLessEqual(max(map(victim_order, victims)), min(map(victim_order, kept)))

    def test_order(self):
        def info(id, **kw):
            base = dict(peer="p", direction="Outbound", opened_at=0.0, value=0, streams=1)
            base.update(kw)
            return ConnInfo(id=id, **base)

        conns = [
            info("valuable", value=10),
            info("busy-outbound-old"),
            info("busy-outbound-young", opened_at=5.0),
            info("busy-inbound", direction="Inbound"),
            info("idle", streams=0),
            info("protected", protected=True, value=-100),
            info("young", opened_at=99.0, value=-100),
        ]
        victims = select_victims(conns, 100.0, low_water=0, high_water=0, grace_period=10.0)
        self.assertEqual([v.id for v in victims],
                         ["idle", "busy-inbound", "busy-outbound-young", "busy-outbound-old", "valuable"])


class FakeConn:
    def __init__(self, conn_id, peer, opened_at, direction="Inbound"):
        self.id = conn_id
        self.peer = peer
        self.opened_at = opened_at
        self.direction = direction
        self.tags = set()
        self.closed = False

    def close(self):
        self.closed = True


class FakeHost:
    def __init__(self):
        self.observers = []
        self.conns = []

    def add_observer(self, obs):
        self.observers.append(obs)

    def remove_observer(self, obs):
        self.observers.remove(obs)

    def connections(self):
        return [c for c in self.conns if not c.closed]

    def open(self, conn):
        self.conns.append(conn)
        for obs in list(self.observers):
            obs.connected(conn)


class ManagerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.host = FakeHost()
        self.counter = 0

    def manager(self, **kw):
        kw.setdefault("low_water", 2)
        kw.setdefault("high_water", 4)
        kw.setdefault("grace_period", 20.0)
        mgr = ConnectionManager(self.host, self.clock, **kw)
        mgr.start()
        self.addCleanup(mgr.stop)
        return mgr

    def open(self, peer=None):
        self.counter += 1
        conn = FakeConn(f"c{self.counter}", peer or f"peer{self.counter}", self.clock.seconds())
        self.host.open(conn)
        return conn

    def test_trims_to_low_water_sparing_protected_and_tagged(self):
        mgr = self.manager()
        protected = self.open("boot")
        mgr.protect("boot", "bootstrap")
        tagged = self.open()
        tagged.tags.add("user-connect")
        others = [self.open() for _ in range(2)]
        self.clock.advance(30)
        young = self.open()  # the 5th: above HighWater, trim now
        self.assertTrue(all(c.closed for c in others))
        self.assertFalse(protected.closed or tagged.closed or young.closed)
        self.assertEqual(mgr.connection_count(), 3)  # LowWater 2 not reachable: 3 may not be closed

    def test_unprotect(self):
        mgr = self.manager(low_water=0, high_water=0, silence_period=0)
        mgr.protect("p", "a")
        mgr.protect("p", "b")
        self.assertTrue(mgr.unprotect("p", "a"))
        self.assertTrue(mgr.is_protected("p"))
        self.assertTrue(mgr.is_protected("p", "b"))
        self.assertFalse(mgr.is_protected("p", "a"))
        self.assertFalse(mgr.unprotect("p", "b"))
        self.assertFalse(mgr.is_protected("p"))
        self.assertFalse(mgr.unprotect("nobody", "x"))
        conn = self.open("p")
        self.clock.advance(30)
        self.assertEqual(mgr.trim(), 1)
        self.assertTrue(conn.closed)

    def test_nothing_below_high_water(self):
        mgr = self.manager()
        conns = [self.open() for _ in range(4)]
        self.clock.advance(100)
        self.assertEqual(mgr.trim(), 0)
        self.assertFalse(any(c.closed for c in conns))

    def test_grace_then_periodic_trim(self):
        self.manager(trim_interval=60.0)
        conns = [self.open() for _ in range(6)]
        self.assertFalse(any(c.closed for c in conns))  # all young
        self.clock.advance(60)  # the periodic trim
        self.assertEqual(sum(c.closed for c in conns), 4)

    def test_rate_limited(self):
        mgr = self.manager(grace_period=0.0, silence_period=10.0, trim_interval=None)
        first = [self.open() for _ in range(5)]
        self.assertEqual(sum(c.closed for c in first), 3)
        self.clock.advance(1)
        more = [self.open() for _ in range(3)]  # 5 open: above HighWater but silenced
        self.assertEqual(mgr.connection_count(), 5)
        self.clock.advance(9)  # the deferred trim runs when the silence ends
        self.assertEqual(mgr.connection_count(), 2)
        self.assertEqual(len(self.clock.getDelayedCalls()), 0)
        self.assertTrue(all(c.closed for c in first + more if c not in self.host.connections()))

    def test_disabled(self):
        mgr = ConnectionManager.from_config(self.host, self.clock, ConnMgrConfig(
            type="none", grace_period=0.0, high_water=1, low_water=0))
        mgr.start()
        self.addCleanup(mgr.stop)
        conns = [self.open() for _ in range(5)]
        self.clock.advance(120)
        self.assertEqual(mgr.trim(), 0)
        self.assertFalse(any(c.closed for c in conns))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_from_config_defaults(self):
        mgr = ConnectionManager.from_config(self.host, self.clock, ConnMgrConfig())
        self.assertEqual((mgr.low_water, mgr.high_water, mgr.grace_period, mgr.enabled),
                         (100, 400, 20.0, True))

    def test_bad_watermarks(self):
        self.assertRaises(ValueError, ConnectionManager, self.host, self.clock, 10, 5)
        self.assertRaises(ValueError, ConnectionManager, self.host, self.clock, -1, 5)

    def test_value_orders_victims(self):
        mgr = self.manager(low_water=1, high_water=1, grace_period=0.0)
        valued = self.open("friend")
        mgr.tag_peer("friend", "kad", 5)
        self.assertEqual(mgr.peer_value("friend"), 5)
        self.clock.advance(1)
        other = self.open()  # 2 > HighWater 1: keep one, the valued
        self.assertTrue(other.closed)
        self.assertFalse(valued.closed)
        mgr.untag_peer("friend", "kad")
        self.assertEqual(mgr.peer_value("friend"), 0)

    def test_stop_keeps_connections(self):
        mgr = self.manager()
        conn = self.open()
        mgr.stop()
        self.assertEqual(self.host.observers, [])
        self.assertFalse(conn.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RealHostTests(TestCase):
    async def make(self):
        host = Host(reactor, PrivateKey.generate("ed25519"), ping_interval=None)
        await host.start(["/ip4/127.0.0.1/tcp/0"])
        self.addCleanup(lambda: Deferred.fromCoroutine(host.stop()))
        return host

    async def test_trim_real_connections(self):
        hub = await self.make()
        mgr = ConnectionManager(hub, reactor, low_water=1, high_water=2, grace_period=0.0,
                                silence_period=0.0, trim_interval=None)
        mgr.start()
        self.addCleanup(mgr.stop)
        boot, a, b = await self.make(), await self.make(), await self.make()
        mgr.protect(boot.peer_id, "bootstrap")
        await boot.connect(hub.peer_id, hub.listen_addrs())
        await a.connect(hub.peer_id, hub.listen_addrs())
        await wait_for(lambda: len(hub.connections()) == 2)
        await b.connect(hub.peer_id, hub.listen_addrs())
        # Three open, HighWater 2: down to LowWater 1, the protected one.
        await wait_for(lambda: hub.connected_peers() == [boot.peer_id])
        await wait_for(lambda: not a.is_connected(hub.peer_id) and not b.is_connected(hub.peer_id))
        self.assertTrue(boot.is_connected(hub.peer_id))

    async def test_user_connect_tag_and_grace(self):
        hub = await self.make()
        mgr = ConnectionManager(hub, reactor, low_water=0, high_water=1, grace_period=0.0,
                                silence_period=0.0, trim_interval=None)
        mgr.start()
        self.addCleanup(mgr.stop)
        a, b = await self.make(), await self.make()
        conn = await hub.connect(a.peer_id, a.listen_addrs())
        conn.tags.add("user-connect")
        mgr.grace_period = 3600.0  # b's connection is young: nothing may go
        await b.connect(hub.peer_id, hub.listen_addrs())
        await wait_for(lambda: len(hub.connections()) == 2)
        self.assertEqual(mgr.trim(), 0)
        mgr.grace_period = 0.0
        self.assertEqual(mgr.trim(), 1)
        await wait_for(lambda: hub.connected_peers() == [a.peer_id])
