"""Model-based test of floodsub's peer table against the swarm (issue 10.1).

Node B runs FloodSub.  Up to three "twins" share one key, hence one peer id
A (a process restarted, or a second process with a copy of ``peer.key``);
each runs its own FloodSub.  Hypothesis opens and closes connections between
twins and B in any order and from either side, resets floodsub streams on
either side, changes the twins' subscriptions and lets time pass.

After every step (bytes delivered, no time passed) the structural invariants
hold: floodsub state only for connected peers, inbound streams only on live
connections, an outbound stream (or a pending reopen) for every floodsub
peer, ``peers()`` only with a live connection and a known subscription.

After time has passed (every reopen done), B agrees with the model: A is in
B's peer table iff some twin is connected; A's topics are the union of what
the connected twins subscribe to; B reads one stream per connected twin and
writes on a live connection; and messages go both ways (B writes to one
twin only, as go does: one outbound stream per peer id).
"""

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from aicn.p2p.keys import PrivateKey
from aicn.p2p.pubsub import FLOODSUB, FloodSub
from aicn.p2p.pubsub.floodsub import MAX_RETRIES, RETRY_DELAY, RETRY_RESET
from aicn.p2p.pubsub.rpc import subscriptions_frame
from tests.p2p.memlink import Link, memory_host, settle

TOPICS = ("t", "u")
MAX_TWINS = 3
MAX_LINKS = 5
#: Long enough for every backoff and for the failure count to start again.
WAIT = RETRY_DELAY * 2 ** MAX_RETRIES + RETRY_RESET


class Twin:
    def __init__(self, clock, key, seed):
        self.host = memory_host(clock, key)
        self.pubsub = FloodSub(self.host, clock, seqno_seed=seed)
        self.inbox = []
        self.topics = set()

    def handler(self, message):
        self.inbox.append(message.data)


class FloodSubPeerTable(RuleBasedStateMachine):
    @initialize()
    def start(self):
        self.clock = Clock()
        self.b = memory_host(self.clock)
        self.fb = FloodSub(self.b, self.clock)
        self.inbox_b = []
        for topic in TOPICS:
            self.fb.subscribe(topic, lambda m: self.inbox_b.append(m.data))
        self.key = PrivateKey.generate("ed25519")
        self.a = self.key.peer_id()
        self.twins: list[Twin] = []
        self.links: list[Link] = []
        self.sent = 0
        self.add_twin(set(TOPICS[:1]))
        self.wait()

    # -- helpers ------------------------------------------------------------------------

    def settle(self, seconds=0.0):
        settle(self.links, self.clock, seconds)

    def live_links(self):
        return [link for link in self.links if link.open]

    def twin_of(self, link):
        return next(t for t in self.twins if t.host in (link.dialer, link.listener))

    def connected_twins(self):
        return [t for t in self.twins if any(self.twin_of(link) is t for link in self.live_links())]

    def b_state(self):
        return self.fb._peers.get(self.a)

    # -- rules ----------------------------------------------------------------------------

    @precondition(lambda self: len(self.twins) < MAX_TWINS)
    @rule(topics=st.sets(st.sampled_from(TOPICS)))
    def add_twin(self, topics):
        twin = Twin(self.clock, self.key, seed=1000 * (len(self.twins) + 1))
        for topic in topics:
            twin.pubsub.subscribe(topic, twin.handler)
        twin.topics = set(topics)
        self.twins.append(twin)

    @precondition(lambda self: len(self.live_links()) < MAX_LINKS)
    @rule(data=st.data(), b_dials=st.booleans())
    def connect(self, data, b_dials):
        twin = data.draw(st.sampled_from(self.twins))
        dialer, listener = (self.b, twin.host) if b_dials else (twin.host, self.b)
        self.links.append(Link(self.clock, dialer, listener))
        self.settle()

    @precondition(lambda self: self.live_links())
    @rule(data=st.data(), from_b=st.booleans())
    def close_connection(self, data, from_b):
        link = data.draw(st.sampled_from(self.live_links()))
        end = link.end_of(self.b) if from_b else link.end_of(self.twin_of(link).host)
        end.close()
        self.settle()

    @precondition(lambda self: self.b_state() is not None and self.b_state().inbound)
    @rule(data=st.data())
    def reset_inbound_at_b(self, data):
        state = self.b_state()
        conn = data.draw(st.sampled_from(sorted(state.inbound, key=lambda c: c.id)))
        state.inbound[conn].stream.reset()
        self.settle()

    @precondition(lambda self: self.b_state() is not None and self.b_state().outbound is not None
                  and self.b_state().outbound.stream is not None)
    @rule()
    def reset_outbound_at_b(self):
        self.b_state().outbound.stream.reset()
        self.settle()

    @rule(data=st.data())
    def reset_outbound_at_twin(self, data):
        twin = data.draw(st.sampled_from(self.twins))
        state = twin.pubsub._peers.get(self.b.peer_id)
        if state is not None and state.outbound is not None and state.outbound.stream is not None:
            state.outbound.stream.reset()
        self.settle()

    @rule(data=st.data(), topic=st.sampled_from(TOPICS))
    def toggle_subscription(self, data, topic):
        twin = data.draw(st.sampled_from(self.twins))
        if topic in twin.topics:
            twin.pubsub.unsubscribe(topic)
            twin.topics.discard(topic)
        else:
            twin.pubsub.subscribe(topic, twin.handler)
            twin.topics.add(topic)
        self.settle()

    @rule()
    def wait(self):
        """Let every reopen happen, then compare B with the model and send messages."""
        self.settle(WAIT)
        twins = self.connected_twins()
        state = self.b_state()
        if not twins:
            assert state is None, "state for a peer with no connection"
            assert self.fb.peers() == []
            return
        assert state is not None, "no floodsub state for a connected peer"
        assert not state.gave_up
        # One inbound stream per connected twin: the one its outbound stream uses.
        expected_in = set()
        for twin in twins:
            tstate = twin.pubsub._peers.get(self.b.peer_id)
            assert tstate is not None and tstate.outbound is not None
            assert tstate.outbound.stream is not None, "twin's stream to B not open"
            link = next(link for link in self.links if link.end_of(twin.host) is tstate.outbound.conn)
            assert link.open
            expected_in.add(link.end_of(self.b))
        assert set(state.inbound) == expected_in
        union = set().union(*(t.topics for t in twins))
        assert state.topics == union, (state.topics, union)
        for topic in TOPICS:
            assert self.fb.peers(topic) == ([self.a] if topic in union else [])
        # B writes on a live connection, to the twin at its other end.
        out = state.outbound
        assert out is not None and out.stream is not None and not out.conn.closed
        receiver = self.twin_of(next(link for link in self.links if link.end_of(self.b) is out.conn))
        assert receiver in twins

        # Messages: B reaches the twin it writes to, and every twin that knows B's
        # subscriptions (at least that one: B's stream told it) reaches B.
        for topic in TOPICS:
            assert receiver.pubsub.peers(topic) == [self.b.peer_id], "B's subscriptions not announced"
            self.sent += 1
            payload = b"b %d" % self.sent
            Deferred.fromCoroutine(self.fb.publish(topic, payload))
            self.settle()
            assert (payload in receiver.inbox) == (topic in receiver.topics), (topic, receiver.topics)
        for twin in twins:
            for topic in sorted(twin.topics):
                if twin.pubsub.peers(topic) != [self.b.peer_id]:
                    continue  # B writes to another twin: this one never heard B's topics
                self.sent += 1
                payload = b"twin %d" % self.sent
                Deferred.fromCoroutine(twin.pubsub.publish(topic, payload))
                self.settle()
                assert payload in self.inbox_b, f"{payload!r} on {topic} did not reach B"

    # -- invariants after every step --------------------------------------------------------

    @invariant()
    def table_agrees_with_swarm(self):
        for host, pubsub in [(self.b, self.fb)] + [(t.host, t.pubsub) for t in self.twins]:
            connected = set(host.connected_peers())
            assert set(pubsub._peers) <= connected, "floodsub state for a disconnected peer"
            for peer, state in pubsub._peers.items():
                live = set(host.connections(peer))
                assert set(state.inbound) <= live, "an inbound stream on a closed connection"
                for conn, rec in state.inbound.items():
                    assert rec.conn is conn
                assert state.sendable or state.gave_up, "no outbound stream and none coming"
                assert not (state.gave_up and not state.inbound), "a peer given up on with nothing left"
                out = state.outbound
                if out is not None and out.stream is not None:
                    assert out.conn in live, "outbound stream on a closed connection"
            for peer in pubsub.peers():
                assert peer in connected and pubsub._peers[peer].topics


class FloodSubPeerTableTests(SynchronousTestCase):
    def test_state_machine(self):
        run_state_machine_as_test(FloodSubPeerTable, settings=settings(
            max_examples=200, stateful_step_count=30, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ))


class DuplicateIdentityInMemoryTests(SynchronousTestCase):
    """The reported sequence, step by step, on the memory links."""

    def test_twin_connects_and_leaves(self):
        clock = Clock()
        b = memory_host(clock)
        fb = FloodSub(b, clock)
        got_b = []
        fb.subscribe("chat", lambda m: got_b.append(m.data))
        key = PrivateKey.generate("ed25519")
        a = Twin(clock, key, seed=1)
        a.pubsub.subscribe("chat", a.handler)
        first = Link(clock, a.host, b)
        settle([first], clock, 1)
        self.assertEqual(fb.peers("chat"), [key.peer_id()])

        twin = Twin(clock, key, seed=2)  # subscribed to nothing
        second = Link(clock, twin.host, b)
        settle([first, second], clock, 1)
        self.assertEqual(len(b.connections(key.peer_id())), 2)
        self.assertEqual(fb.peers("chat"), [key.peer_id()])
        second.end_of(twin.host).close()
        settle([first, second], clock, 1)
        self.assertEqual(b.connections(key.peer_id()), [first.end_of(b)])
        self.assertEqual(fb.peers("chat"), [key.peer_id()])
        self.assertEqual(a.pubsub.peers("chat"), [b.peer_id])
        Deferred.fromCoroutine(a.pubsub.publish("chat", b"A to B"))
        Deferred.fromCoroutine(fb.publish("chat", b"B to A"))
        settle([first, second])
        # Each side has its own message too (publishers get their own).
        self.assertEqual((sorted(got_b), sorted(a.inbox)), ([b"A to B", b"B to A"],) * 2)


class OutboundRetryTests(SynchronousTestCase):
    def test_backoff_then_give_up_then_fresh_start(self):
        clock = Clock()
        b = memory_host(clock)
        fb = FloodSub(b, clock)
        fb.subscribe("t", lambda m: None)
        peer = memory_host(clock)  # says it speaks floodsub but resets every stream we open
        attempts = []

        async def refuse(stream, conn):
            attempts.append(clock.seconds())
            stream.reset()

        peer.set_stream_handler(FLOODSUB, refuse)
        link = Link(clock, peer, b)
        settle([link], clock, 0.5)
        d = Deferred.fromCoroutine(peer.new_stream(b.peer_id, [FLOODSUB]))
        settle([link])
        stream = d.result
        stream.write(subscriptions_frame([("t", True)]))
        settle([link])
        self.assertEqual(fb.peers("t"), [peer.peer_id])
        first = attempts[0]
        settle([link], clock, 40)
        delays = [round(t - first, 1) for t in attempts]
        self.assertEqual(delays, [0, 1, 3, 7, 15, 31])  # 1, 2, 4, 8, 16 s apart
        state = fb._peers[peer.peer_id]
        self.assertTrue(state.gave_up)
        self.assertIsNone(state.outbound)
        self.assertEqual(fb.peers("t"), [])  # nothing can be sent to it
        self.assertEqual(state.topics, {"t"})  # its own stream still works
        # Its stream ends: nothing is left of it.  A new stream starts afresh.
        stream.reset()
        settle([link])
        self.assertNotIn(peer.peer_id, fb._peers)
        Deferred.fromCoroutine(peer.new_stream(b.peer_id, [FLOODSUB])).addCallback(
            lambda s: s.write(subscriptions_frame([("t", True)])))
        settle([link], clock, 0.5)
        self.assertEqual(len(attempts), 7)
        self.assertEqual(fb.peers("t"), [peer.peer_id])
        # The connection closes: no state, no retry left behind.
        link.end_of(b).close()
        settle([link], clock, 40)
        self.assertEqual((fb._peers, len(attempts)), ({}, 7))
        self.assertEqual(clock.getDelayedCalls(), [])
