"""``aicn ping`` and ``aicn perf`` against a real ``twistd aicn`` node."""

import os
import sys

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from aicn.p2p.keys import PrivateKey
from tests.integration.nodeproc import REPO, NodeProcess, free_port


class CLIToolTests(TestCase):
    timeout = 60

    async def aicn(self, *args):
        env = dict(os.environ, PYTHONPATH=str(REPO))
        out, err, code = await getProcessOutputAndValue(sys.executable, ["-m", "aicn.cli", *args], env=env,
                                                        path=str(REPO), reactor=reactor)
        return out.decode(), err.decode(), code

    async def test_ping_and_perf(self):
        node = NodeProcess(reactor, self.mktemp(), "--listen", "/ip4/127.0.0.1/tcp/0")
        node.start()
        self.addCleanup(node.stop)
        info = await node.wait_ready()
        addr = f"{info['addresses'][0]}/p2p/{info['peer_id']}"
        out, err, code = await self.aicn("ping", addr, "--count", "2")
        self.assertEqual(code, 0, err)
        self.assertEqual(out.count(f"pong from {info['peer_id']}"), 2, out)
        out, err, code = await self.aicn("perf", addr, "--upload", "1MiB", "--download", "3MiB")
        self.assertEqual(code, 0, err)
        self.assertIn("upload   1048576 bytes", out)
        self.assertIn("download 3145728 bytes", out)
        # The wrong network key cannot get in.
        out, err, code = await self.aicn("ping", addr, "--psk", "none")
        self.assertEqual(code, 1)
        self.assertIn("aicn ping:", err)

    async def test_unreachable_peer_is_a_clear_error(self):
        peer = PrivateKey.generate().peer_id()
        out, err, code = await self.aicn("ping", f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{peer}")
        self.assertEqual(code, 1)
        self.assertIn(str(peer), err)
        out, err, code = await self.aicn("perf", "/ip4/127.0.0.1/tcp/1", "--upload", "12XB")
        self.assertEqual(code, 2)
        self.assertIn("not a size", err)
