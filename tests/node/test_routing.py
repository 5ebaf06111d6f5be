"""NodeSelector: ranking, tries, exponential cool-down on an injected clock."""

from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from aicn.node.routing import Candidate, NodeSelector

S = ("P", "M")


def ids(plan):
    return [c.node_id for c in plan.attempts]


class RankingTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.sel = NodeSelector(self.clock, max_tries=10)

    def test_local_then_latency_then_unmeasured_then_unconnected(self):
        plan = self.sel.plan([
            Candidate("far", connected=False),
            Candidate("slow", connected=True, latency=0.200),
            Candidate("unmeasured", connected=True),
            Candidate("fast", connected=True, latency=0.001),
            Candidate("me", local=True),
        ], S)
        self.assertEqual(ids(plan), ["me", "fast", "slow", "unmeasured", "far"])
        self.assertEqual(plan.cooling, ())

    def test_ties_break_on_node_id_and_duplicates_merge(self):
        plan = self.sel.plan([Candidate("b"), Candidate("a"), Candidate("b", connected=True, latency=0.5),
                              Candidate("b", latency=0.1)], S)
        self.assertEqual(ids(plan), ["b", "a"])
        self.assertEqual(plan.attempts[0], Candidate("b", connected=True, latency=0.1))

    def test_at_most_max_tries(self):
        sel = NodeSelector(self.clock)  # the default: 3
        plan = sel.plan([Candidate(f"n{i}", connected=True, latency=i / 100) for i in range(10)], S)
        self.assertEqual(ids(plan), ["n0", "n1", "n2"])

    def test_empty(self):
        plan = self.sel.plan([], S)
        self.assertEqual((plan.attempts, plan.cooling, plan.retry_after), ((), (), 0.0))

    def test_bad_max_tries(self):
        self.assertRaises(ValueError, NodeSelector, self.clock, max_tries=0)


class CooldownTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.sel = NodeSelector(self.clock, base_cooldown=2.0, max_cooldown=30.0)
        self.nodes = [Candidate("a", connected=True, latency=0.001), Candidate("b", connected=True, latency=0.1)]

    def test_failed_node_is_skipped_until_its_cooldown_ends(self):
        self.assertEqual(self.sel.failed("a", S), 2.0)
        plan = self.sel.plan(self.nodes, S)
        self.assertEqual(ids(plan), ["b"])
        self.assertEqual([c.node_id for c in plan.cooling], ["a"])
        self.assertEqual(plan.retry_after, 2.0)
        self.clock.advance(1.5)
        self.assertEqual(self.sel.cooldown_left("a", S), 0.5)
        self.clock.advance(0.5)
        # Back in rotation, but behind the node with a clean record despite its latency.
        self.assertEqual(ids(self.sel.plan(self.nodes, S)), ["b", "a"])

    def test_backoff_doubles_and_is_capped(self):
        cooldowns = [self.sel.failed("a", S) for _ in range(6)]
        self.assertEqual(cooldowns, [2.0, 4.0, 8.0, 16.0, 30.0, 30.0])
        self.assertEqual(self.sel.failures("a", S), 6)

    def test_success_clears_the_record(self):
        self.sel.failed("a", S)
        self.sel.failed("a", S)
        self.sel.succeeded("a", S)
        self.assertEqual(self.sel.failures("a", S), 0)
        self.assertEqual(ids(self.sel.plan(self.nodes, S)), ["a", "b"])
        self.assertEqual(self.sel.failed("a", S), 2.0)  # the back-off starts again

    def test_records_are_per_service(self):
        self.sel.failed("a", S)
        self.assertEqual(ids(self.sel.plan(self.nodes, ("P", "other"))), ["a", "b"])

    def test_everyone_cooling(self):
        self.sel.failed("a", S)
        self.sel.failed("b", S)
        self.sel.failed("b", S)
        plan = self.sel.plan(self.nodes, S)
        self.assertEqual(plan.attempts, ())
        self.assertEqual([c.node_id for c in plan.cooling], ["a", "b"])  # soonest back first
        self.assertEqual(plan.retry_after, 2.0)

    def test_tracking_is_bounded(self):
        sel = NodeSelector(self.clock, max_tracked=3)
        for name in "abcd":
            sel.failed(name, S)
            self.clock.advance(1)
        self.assertEqual(sel.failures("a", S), 0)  # the oldest record went
        self.assertEqual([sel.failures(n, S) for n in "bcd"], [1, 1, 1])


candidates = st.lists(
    st.builds(Candidate, st.sampled_from("abcdefgh"), st.booleans(), st.booleans(),
              st.one_of(st.none(), st.floats(min_value=0, max_value=10, allow_nan=False))),
    max_size=12,
)


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(candidates, st.lists(st.tuples(st.sampled_from("abcdefgh"), st.booleans()), max_size=20),
           st.floats(min_value=0, max_value=100))
    def test_plans_are_consistent(self, cands, outcomes, elapsed):
        clock = Clock()
        sel = NodeSelector(clock)
        for node, ok in outcomes:
            sel.succeeded(node, S) if ok else sel.failed(node, S)
        clock.advance(elapsed)
        plan = sel.plan(cands, S)
        chosen = ids(plan)
        names = {c.node_id for c in cands}
        self.assertLessEqual(len(chosen), 3)
        self.assertEqual(len(chosen), len(set(chosen)))
        self.assertTrue(set(chosen) <= names)
        for node in chosen:
            self.assertEqual(sel.cooldown_left(node, S), 0.0)
        cooling = {c.node_id for c in plan.cooling}
        self.assertFalse(cooling & set(chosen))
        # Every ready node is either chosen or beyond the try limit.
        ready = names - cooling
        self.assertEqual(len(chosen), min(3, len(ready)))
        # A local candidate with a clean record always comes first.
        local_clean = [c.node_id for c in cands if c.local and c.node_id in ready and not sel.failures(c.node_id, S)]
        if local_clean:
            self.assertIn(chosen[0], local_clean)
