"""A worker that only dials out, reached through a relay node (three twistd processes)."""

import json
import os

import treq
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests.integration.nodeproc import NodeProcess
from tests.integration.test_network import call, eventually


class RelayedWorkerTests(TestCase):
    timeout = 120

    async def start(self, *args):
        node = NodeProcess(reactor, self.mktemp(), *args)
        node.start()
        self.addCleanup(node.stop)
        node.info = await node.wait_ready()
        return node

    def relay_client_config(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            json.dump({"Swarm": {"RelayClient": {"Enabled": True}},
                       "App": {"PeersCollect": {"HeartbeatInterval": "1s"}}}, f)
        return path

    async def test_private_worker_gets_a_circuit_address_and_answers_through_the_relay(self):
        relay = await self.start("--listen", "/ip4/127.0.0.1/tcp/0", "--relay-service", "--dht-mode", "server")
        relay_addr = f"{relay.info['addresses'][0]}/p2p/{relay.info['peer_id']}"
        worker = await self.start("--listen", "none", "--bootstrap", relay_addr, "--config", self.relay_client_config())
        # No direct address: anything it announces is a relay circuit.
        self.assertTrue(all(a.endswith("/p2p-circuit") for a in worker.info["addresses"]), worker.info)
        self.assertIn("/libp2p/circuit/relay/0.2.0/stop", worker.info["protocols"])

        async def circuit():
            info = json.loads(await (await treq.get(worker.api + "/api/v0/id", persistent=False)).content())
            return [a for a in info["addresses"] if a.endswith("/p2p-circuit")]

        (circuit_addr,) = await eventually(circuit)
        self.assertTrue(circuit_addr.startswith(relay_addr))
        client = await self.start("--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", relay_addr)

        # The client dials the worker through the relay...
        target = f"{circuit_addr}/p2p/{worker.info['peer_id']}"
        self.assertEqual((await call(client, "/api/v0/swarm/connect", {"node_addr": target}))["code"], 0)
        peers = await call(client, "/api/v0/swarm/peers")
        via = [p for p in peers if p["peer"] == worker.info["peer_id"]]
        self.assertEqual(len(via), 1)
        self.assertTrue(via[0]["addr"].endswith("/p2p-circuit"), via)
        # ...and application requests reach it over pubsub.
        answer = await call(client, "/api/v0/peer", {"node_id": worker.info["peer_id"]})
        self.assertEqual(answer["code"], 0, answer)
        self.assertIn(circuit_addr, answer["data"]["addresses"])
