"""Model calls between real ``twistd aicn`` processes: a worker killed with
SIGKILL in the middle of a streamed answer, and routing by project name."""

import json
import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from aicn.models.http import body_ended_cleanly
from tests.integration.modelnet import StreamingClient, eventually, sse_chunk, start_fake_chat_model
from tests.integration.nodeproc import NodeProcess
from tests.integration.test_network import call

P = "DecentralGPT"
MESSAGES = [{"role": "user", "content": "Hello"}]


class KilledWorkerTests(TestCase):
    timeout = 120

    def config(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            json.dump({"App": {"PeersCollect": {"HeartbeatInterval": "1s"}}}, f)
        return path

    async def start(self, *args):
        node = NodeProcess(reactor, self.mktemp(), "--listen", "/ip4/127.0.0.1/tcp/0", "--log-level", "warn",
                           "--config", self.config(), *args)
        node.start()
        self.addCleanup(node.stop)
        node.info = await node.wait_ready()
        return node

    async def test_sigkill_mid_stream_ends_the_client_stream(self):
        a = await self.start("--collector", "--dht-mode", "server")
        b = await self.start("--bootstrap", f"{a.info['addresses'][0]}/p2p/{a.info['peer_id']}")
        b_id = b.info["peer_id"]
        model = await start_fake_chat_model(self, hold=True)
        reg = await call(b, "/api/v0/ai/project/register",
                         {"project": P, "models": [{"model": model.model, "api": model.url, "type": 0}]})
        self.assertEqual(reg["code"], 0)

        # Routed by project name once A heard B's heartbeat.
        async def routed():
            body = await call(a, "/api/v0/chat/completion/proxy",
                              {"project": P, "model": model.model, "messages": MESSAGES})
            return body if body["code"] == 0 else None

        answer = await eventually(routed)
        self.assertEqual(answer["data"]["choices"][0]["message"]["content"], "Hello!")

        client = StreamingClient()
        response = await client.post(a.api + "/api/v0/chat/completion",
                                     {"node_id": b_id, "project": P, "model": model.model, "messages": MESSAGES,
                                      "stream": True})
        self.assertEqual(response.code, 200)
        await eventually(lambda: sse_chunk(0) in client.data)
        started = reactor.seconds()
        b.transport.signalProcess("KILL")
        reason = await client.ended
        self.assertLess(reactor.seconds() - started, 5)
        self.assertFalse(body_ended_cleanly(reason))
        self.assertEqual(client.data, sse_chunk(0))
        await eventually(lambda: model.resource.dropped.called, timeout=5)
