"""The node as a tree of services, started and stopped on a memory reactor."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from aicn.api.site import APISite
from aicn.config import Config, parse_config, resolve_settings
from aicn.service import NodeService
from aicn.storage import StorageError


def settings(test, **options):
    opts = {"data_dir": test.mktemp(), "listen": ["/ip4/127.0.0.1/tcp/4001"], "port": 6000, "psk": "none",
            "log_level": "warn"}
    opts.update(options)
    return resolve_settings(Config(), opts)


class ServiceTreeTests(unittest.TestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.node = NodeService(settings(self), self.reactor)

    def test_children_are_the_nodes_parts_in_start_order(self):
        names = [child.name for child in self.node]
        self.assertEqual(names[0], "database")  # stopped last
        self.assertEqual(names[-2:], ["api", "join-network"])
        self.assertLess(names.index("host"), names.index("app"))
        self.assertEqual(self.node.getServiceNamed("api").factory.__class__, APISite)

    def test_start_listens_and_is_ready_then_stop_releases_everything(self):
        self.node.startService()
        ready = []
        self.node.ready.addCallback(ready.append)
        self.assertEqual(ready, [None])
        listening = {(port, interface): factory for port, factory, _, interface in self.reactor.tcpServers}
        self.assertIn((4001, "127.0.0.1"), listening)  # libp2p
        self.assertIsInstance(listening[(6000, "127.0.0.1")], APISite)  # HTTP API
        self.assertTrue(all(child.running for child in self.node))

        stopped = []
        self.node.stopService().addCallback(stopped.append)
        self.reactor.advance(60)
        self.assertEqual(stopped, [None])
        self.assertFalse(any(child.running for child in self.node))
        self.assertFalse(self.node.running)
        # Every timer is gone, and the database is closed.
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        with self.assertRaises(StorageError):
            self.node.db.list_projects()

    def test_swarm_dial_timeout_reaches_the_host(self):
        from aicn.p2p.swarm import DIAL_TIMEOUT

        self.assertEqual(self.node.host.swarm.dial_timeout, DIAL_TIMEOUT)  # unset: the library default
        config, warnings = parse_config({"Swarm": {"DialTimeout": "2.5s"}})
        self.assertEqual(warnings, [])
        opts = {"data_dir": self.mktemp(), "listen": ["/ip4/127.0.0.1/tcp/4001"], "port": 6000, "psk": "none"}
        node = NodeService(resolve_settings(config, opts), self.reactor)
        self.addCleanup(node.lock.release)
        self.assertEqual(node.host.swarm.dial_timeout, 2.5)

    def test_a_port_that_cannot_listen_fails_ready_and_stops_the_reactor(self):
        from twisted.internet.error import CannotListenError

        class Refusing(MemoryReactorClock):
            def listenTCP(self, port, factory, backlog=50, interface=""):
                if port == 6000:
                    raise CannotListenError(interface, port, OSError(98, "Address already in use"))
                return super().listenTCP(port, factory, backlog, interface)

        reactor = Refusing()
        reactor.running = True
        stops = []
        reactor.stop = lambda: stops.append(True)
        node = NodeService(settings(self), reactor)
        failures = []
        node.ready.addErrback(failures.append)
        node.startService()
        self.assertEqual(len(failures), 1)
        self.assertTrue(failures[0].check(CannotListenError))
        self.assertEqual(stops, [True])
        self.flushLoggedErrors(CannotListenError)
        d = node.stopService()
        reactor.advance(60)
        self.successResultOf(d)
