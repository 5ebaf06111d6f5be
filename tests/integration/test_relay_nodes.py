"""A worker that only dials out, reached through a relay node (three twistd
processes: relay, private worker with ``--listen none``, client).

Model traffic through the relay: the worker serves chat models (an in-test
SSE server, and the real llama-cpp-python one when installed) and the client
reaches them over a relayed connection, non-streamed (pubsub) and streamed
(``/chat-proxy/0.0.1`` over the circuit).  A streamed answer lasts seconds
and carries far more than the 128 KiB a go/js relay grants per circuit.
"""

import json
import os

import treq
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from aicn.models.http import body_ended_cleanly
from tests.integration.modelnet import P, PacedSSEModel, StreamingClient, chat, start_llama_model
from tests.integration.nodeproc import NodeProcess
from tests.integration.test_network import call, eventually
from tests.models.servers import serve
from tests.support.llama import llama_skip_reason

DONE = b"data: [DONE]\n\n"


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

    async def relayed_worker(self):
        """Relay, private worker and client; the worker holds a reservation and
        announces only its circuit address (``self.circuit_addr``)."""
        self.relay = relay = await self.start("--listen", "/ip4/127.0.0.1/tcp/0", "--relay-service",
                                              "--dht-mode", "server")
        self.relay_addr = f"{relay.info['addresses'][0]}/p2p/{relay.info['peer_id']}"
        self.worker = worker = await self.start("--listen", "none", "--bootstrap", self.relay_addr,
                                                "--config", self.relay_client_config())

        async def circuit():
            info = json.loads(await (await treq.get(worker.api + "/api/v0/id", persistent=False)).content())
            return [a for a in info["addresses"] if a.endswith("/p2p-circuit")]

        (self.circuit_addr,) = await eventually(circuit)
        self.client = await self.start("--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", self.relay_addr)
        return relay, worker, self.client

    async def connect_through_relay(self):
        """The client dials the worker's circuit address; returns the
        client's view of that connection."""
        target = f"{self.circuit_addr}/p2p/{self.worker.info['peer_id']}"
        self.assertEqual((await call(self.client, "/api/v0/swarm/connect", {"node_addr": target}))["code"], 0)
        return await self.via_relay()

    async def via_relay(self):
        peers = await call(self.client, "/api/v0/swarm/peers")
        via = [p for p in peers if p["peer"] == self.worker.info["peer_id"]]
        self.assertEqual(len(via), 1, via)
        self.assertTrue(via[0]["addr"].endswith("/p2p-circuit"), via)
        return via[0]

    async def test_private_worker_gets_a_circuit_address_and_answers_through_the_relay(self):
        relay, worker, client = await self.relayed_worker()
        # No direct address: anything it announces is a relay circuit.
        self.assertTrue(all(a.endswith("/p2p-circuit") for a in worker.info["addresses"]), worker.info)
        self.assertIn("/libp2p/circuit/relay/0.2.0/stop", worker.info["protocols"])
        self.assertTrue(self.circuit_addr.startswith(self.relay_addr))
        # The client dials the worker through the relay...
        await self.connect_through_relay()
        # ...and application requests reach it over pubsub.
        answer = await call(client, "/api/v0/peer", {"node_id": worker.info["peer_id"]})
        self.assertEqual(answer["code"], 0, answer)
        self.assertIn(self.circuit_addr, answer["data"]["addresses"])

    async def chat_through_relay(self, model: str):
        """Non-streamed, then streamed chat from the client to the worker;
        returns (JSON answer, StreamingClient)."""
        worker_id = self.worker.info["peer_id"]
        answer = await call(self.client, "/api/v0/chat/completion", chat(worker_id, model))
        self.assertEqual(answer["code"], 0, answer)
        stream = StreamingClient()
        response = await stream.post(self.client.api + "/api/v0/chat/completion", chat(worker_id, model, True))
        self.assertEqual(response.code, 200)
        self.assertEqual(stream.header(b"content-type"), "text/event-stream; charset=utf-8")
        self.assertTrue(body_ended_cleanly(await stream.ended))
        # It all went through the relay.
        await self.via_relay()
        return answer, stream

    async def test_long_large_stream_through_the_relay(self):
        await self.relayed_worker()
        # 40 events of 8 KiB, 0.1 s apart: 320 KiB over 4 s.
        model = PacedSSEModel(events=40, event_size=8 * 1024, interval=0.1)
        base, _ = await serve(self, model)
        register = {"project": P, "models": [{"model": "paced", "api": base + "/v1/chat/completions", "type": 0}]}
        self.assertEqual(await call(self.worker, "/api/v0/ai/project/register", register),
                         {"code": 0, "message": "ok"})
        await self.connect_through_relay()
        answer, stream = await self.chat_through_relay("paced")
        self.assertEqual(answer["data"]["choices"][0]["message"]["content"], "paced")
        self.assertEqual(answer["data"]["usage"], {"completion_tokens": 1, "prompt_tokens": 2, "total_tokens": 3})
        self.assertGreater(len(model.sent), 300 * 1024)
        self.assertEqual(stream.data, bytes(model.sent))  # every byte, in order
        self.assertTrue(stream.data.endswith(DONE))
        # Relayed as it was produced: pieces spread over most of the model's
        # 4 s (a buffering relay would hand them over within milliseconds;
        # the margin absorbs a slow start on a loaded machine).
        self.assertGreater(len(stream.chunks), 20)
        self.assertGreater(stream.times[-1] - stream.times[0], 2.0)
        self.assertEqual(model.finished, 1)

    async def test_llama_model_through_the_relay(self):
        if llama_skip_reason():
            self.skipTest(llama_skip_reason())
        await self.relayed_worker()
        model = await start_llama_model(self, n_threads=1)
        register = {"project": P, "models": [{"model": model.model, "api": model.url, "type": 0}]}
        self.assertEqual(await call(self.worker, "/api/v0/ai/project/register", register),
                         {"code": 0, "message": "ok"})
        # No explicit dial: the client finds the worker's circuit address itself.
        answer, stream = await self.chat_through_relay(model.model)
        (choice,) = answer["data"]["choices"]
        self.assertEqual((choice["message"]["role"], choice["finish_reason"]), ("assistant", "length"))
        self.assertTrue(choice["message"]["content"].strip())
        self.assertEqual(answer["data"]["usage"]["total_tokens"], 512)
        self.assertTrue(stream.data.endswith(DONE), stream.data[-200:])
        events = [json.loads(e[len(b"data: "):]) for e in stream.data[: -len(DONE)].split(b"\n\n") if e]
        self.assertEqual(events[-1]["choices"][0]["finish_reason"], "length")
        self.assertGreater(len(events), 100)
        self.assertGreater(len(stream.chunks), 10)
