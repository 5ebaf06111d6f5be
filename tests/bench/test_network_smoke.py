"""The network benchmark's core on a few in-process nodes, so it does not rot.

Nothing here asserts speed: only that the network forms, every node gets
every publication and every lookup finds its target.
"""

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from aicn.config import DBC_PSK_HEX
from bench.network import LocalGroup, NodeGroup, percentile, run_network, summarize


class NetworkBenchSmokeTests(TestCase):
    timeout = 60

    async def test_five_nodes_in_two_groups(self):
        psk = bytes.fromhex(DBC_PSK_HEX)
        # Two groups in one reactor take the same paths as two worker processes.
        groups = [LocalGroup(NodeGroup(reactor, psk)), LocalGroup(NodeGroup(reactor, psk))]
        self.addCleanup(lambda: gatherResults([Deferred.fromCoroutine(g.close()) for g in groups]))
        raw = await run_network(reactor, groups, 5, publishes=3, lookups=4, join_batch=2, seed=7)

        self.assertEqual(raw["counts"], [3, 2])
        self.assertEqual(raw["unsettled"], 0)
        self.assertEqual(len(raw["connections"]), 5)
        self.assertTrue(all(d >= 1 for d in raw["degree"]))
        self.assertEqual(sum(raw["connections"]) % 2, 0)  # both ends of every connection
        self.assertEqual(len(raw["spreads"]), 3)
        for spread in raw["spreads"]:
            self.assertEqual((spread["reached"], spread["of"]), (4, 4))
            self.assertIsNotNone(spread["all_seconds"])
        self.assertEqual(len(raw["finds"]), 4)
        for find in raw["finds"]:
            self.assertTrue(find["success"], find)
            self.assertIsNone(find["error"])
            self.assertGreaterEqual(find["hops"], 1)  # it went to the network
            self.assertGreaterEqual(find["queried"], 1)
        self.assertTrue(all(r > 0 for r in raw["rss_built"]))
        summary = summarize(raw)
        self.assertIn("4/4 found", summary["find_peer"])
        self.assertIn("3/3 publications reached all 4", summary["floodsub to all nodes"])

    def test_percentile_nearest_rank(self):
        values = list(range(1, 101))
        self.assertEqual(percentile(values, 50), 50)
        self.assertEqual(percentile(values, 99), 99)
        self.assertEqual(percentile([3.0], 99), 3.0)
        self.assertEqual(percentile([2, 1], 50), 1)
