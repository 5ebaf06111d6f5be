"""``twistd aicn`` as a real process: identity, restarts, Go keys and configs."""

import base64
import os
import json

import treq
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from aicn.p2p.keys import KeyType, PrivateKey
from tests.integration.nodeproc import NodeProcess


class TwistdTests(TestCase):
    timeout = 120

    async def run_node(self, data_dir, *args):
        node = NodeProcess(reactor, data_dir, "--listen", "/ip4/127.0.0.1/tcp/0", *args)
        node.start()
        self.addCleanup(node.stop)
        return node

    async def test_id_and_restart_keeps_identity(self):
        data = self.mktemp()
        node = await self.run_node(data)
        info = await node.wait_ready()
        self.assertTrue(info["peer_id"].startswith("16Uiu2"), info)
        self.assertEqual(info["protocol_version"], "aicn/0.0.1")
        self.assertIn("/ipfs/id/1.0.0", info["protocols"])
        (addr,) = info["addresses"]
        self.assertRegex(addr, r"^/ip4/127\.0\.0\.1/tcp/[1-9][0-9]*$")  # the real port, not 0
        resp = await treq.post(node.api + "/api/v0/id", persistent=False)
        self.assertEqual(resp.code, 405)
        await node.stop()
        again = await self.run_node(data)
        info2 = await again.wait_ready()
        self.assertEqual(info2["peer_id"], info["peer_id"])

    async def test_go_format_peer_key(self):
        data = self.mktemp()

        os.makedirs(data)
        key = PrivateKey.from_raw(KeyType.Secp256k1, bytes(range(1, 33)))
        with open(os.path.join(data, "peer.key"), "wb") as f:
            f.write(b"\x08\x02\x12\x20" + bytes(range(1, 33)))
        node = await self.run_node(data)
        info = await node.wait_ready()
        self.assertEqual(info["peer_id"], str(key.peer_id()))

    async def test_go_config_with_identity(self):
        key = PrivateKey.generate()
        config = {
            "Identity": {"PeerID": str(key.peer_id()), "PrivKey": base64.b64encode(key.marshal()).decode()},
            "App": {"LogLevel": "info", "TopicName": "DeepBrainChain"},
        }
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            json.dump(config, f)
        node = await self.run_node(self.mktemp(), "--config", path)
        info = await node.wait_ready()
        self.assertEqual(info["peer_id"], str(key.peer_id()))

    async def test_mismatched_peer_id_is_a_clear_startup_error(self):
        key = PrivateKey.generate()
        other = PrivateKey.generate().peer_id()
        config = {"Identity": {"PeerID": str(other), "PrivKey": base64.b64encode(key.marshal()).decode()}}
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            json.dump(config, f)
        node = await self.run_node(self.mktemp(), "--config", path)
        code = await node.wait_exit()
        self.assertNotEqual(code, 0)
        self.assertIn(str(other), node.output)
        self.assertIn("aicn:", node.output)
