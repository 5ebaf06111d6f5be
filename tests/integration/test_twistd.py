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
        # A clean shutdown: nothing unhandled on the way down.
        self.assertNotIn("Traceback", node.output)
        self.assertNotIn("Unhandled", node.output)
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

    async def test_corrupt_database_is_a_clear_startup_error_and_is_kept(self):
        data = os.path.abspath(self.mktemp())
        os.makedirs(data)
        junk = b"this is not a database" * 100
        with open(os.path.join(data, "aicn.db"), "wb") as f:
            f.write(junk)
        node = await self.run_node(data)
        code = await node.wait_exit()
        self.assertNotEqual(code, 0)
        self.assertIn("aicn.db", node.output)
        with open(os.path.join(data, "aicn.db"), "rb") as f:
            self.assertEqual(f.read(), junk)  # never overwritten

    async def test_swarm_endpoints(self):
        a = await self.run_node(self.mktemp())
        b = await self.run_node(self.mktemp())
        await a.wait_ready()
        b_info = await b.wait_ready()
        b_addr = f"{b_info['addresses'][0]}/p2p/{b_info['peer_id']}"

        async def post(node, path, body=None):
            data = json.dumps(body).encode() if body is not None else None
            resp = await treq.post(node.api + path, data=data, persistent=False)
            return json.loads(await resp.content())

        self.assertEqual(await post(a, "/api/v0/swarm/connect", {"node_addr": b_addr}), {"code": 0, "message": "ok"})
        peers = await post(a, "/api/v0/swarm/peers")
        self.assertEqual(len(peers), 1)
        entry = peers[0]
        self.assertEqual(set(entry), {"id", "peer", "addr", "latency", "direction"})
        self.assertEqual(entry["peer"], b_info["peer_id"])
        self.assertEqual(entry["direction"], "Outbound")
        self.assertEqual(entry["addr"], b_info["addresses"][0])
        self.assertRegex(entry["latency"], r"^(0s|[0-9.]+(ns|µs|ms|s))$")
        self.assertTrue(entry["id"].startswith(b_info["peer_id"][:10] + "-"))
        addrs = await post(a, "/api/v0/swarm/addrs")
        self.assertIn({"peer": b_info["peer_id"], "addrs": [b_info["addresses"][0]]}, addrs)
        b_peers = await post(b, "/api/v0/swarm/peers")
        self.assertEqual([p["direction"] for p in b_peers], ["Inbound"])

        bad = await post(a, "/api/v0/swarm/connect", {"node_addr": "/ip4/1.2.3/tcp/x"})
        self.assertEqual(bad["code"], 1001)
        missing = await post(a, "/api/v0/swarm/connect", {"node_addr": "/ip4/127.0.0.1/tcp/1"})
        self.assertEqual(missing["code"], 1001)  # no /p2p part
        nobody = PrivateKey.generate().peer_id()
        failed = await post(a, "/api/v0/swarm/connect", {"node_addr": f"/ip4/127.0.0.1/tcp/1/p2p/{nobody}"})
        self.assertEqual(failed["code"], 5000)
        self.assertIn(str(nobody), failed["message"])

        self.assertEqual((await post(a, "/api/v0/swarm/disconnect", {"node_addr": b_addr}))["code"], 0)
        self.assertEqual(await post(a, "/api/v0/swarm/peers"), [])
        again = await post(a, "/api/v0/swarm/disconnect", {"node_addr": b_addr})
        self.assertEqual(again["code"], 5000)

    async def test_api_port_in_use_is_a_clear_startup_error(self):
        import socket

        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            port = busy.getsockname()[1]
            node = NodeProcess(reactor, self.mktemp(), "--listen", "/ip4/127.0.0.1/tcp/0", port=port)
            node.start()
            self.addCleanup(node.stop)
            code = await node.wait_exit()
        self.assertIn("aicn cannot start", node.output)
        self.assertIn(str(port), node.output)
        self.assertIn("Address already in use", node.output)
        self.assertNotIn("Unhandled error in Deferred", node.output)
        self.assertEqual(code, 1)  # a supervisor sees the failure (twistd alone would exit 0)

    async def test_p2p_port_in_use_exits_with_status_1(self):
        import socket

        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            port = busy.getsockname()[1]
            node = NodeProcess(reactor, self.mktemp(), "--listen", f"/ip4/127.0.0.1/tcp/{port}")
            node.start()
            self.addCleanup(node.stop)
            code = await node.wait_exit()
        self.assertIn("aicn cannot start", node.output)
        self.assertIn(f"127.0.0.1:{port}", node.output)
        self.assertEqual(code, 1)

    async def test_a_second_node_on_one_data_dir_refuses_to_start(self):
        data = os.path.abspath(self.mktemp())
        first = await self.run_node(data)
        info = await first.wait_ready()
        second = await self.run_node(data)
        code = await second.wait_exit()
        self.assertEqual(code, 1)
        lock = os.path.join(data, "aicn.lock")
        self.assertIn(f"pid {first.transport.pid}", second.output)
        self.assertIn(lock, second.output)
        self.assertNotIn(info["peer_id"], second.output)  # it stopped before loading the key
        # The first one is untouched; once it is gone (even killed) the directory is free.
        resp = await treq.get(first.api + "/api/v0/id", persistent=False)
        self.assertEqual(resp.code, 200)
        first.transport.signalProcess("KILL")
        await first.proto.ended
        third = await self.run_node(data)
        self.assertEqual((await third.wait_ready())["peer_id"], info["peer_id"])
        with open(lock) as f:
            self.assertEqual(f.read().strip(), str(third.transport.pid))
