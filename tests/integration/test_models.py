"""Model endpoints end to end on a three-node network of real nodes in this
process (collector A; B and C joined through A), with in-test model servers.

To run a test against a real model server, change its fixture line
(``start_fake_chat_model``) to the real server's fixture; tests that hold a
stream open need the fake one.
"""

import json
import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred

from aicn.models.http import body_ended_cleanly
from tests.integration.modelnet import (
    DONE,
    MESSAGES,
    P,
    ModelNetworkCase,
    StreamingClient,
    chat,
    dead_model_url,
    eventually,
    sleep,
    sse_chunk,
    start_fake_chat_model,
    wait_serving,
)
from tests.models.fakeipfs import FakeKubo, fake_cid
from tests.models.servers import NOT_DONE_YET, json_reply, serve


class ModelNetworkTests(ModelNetworkCase):
    # -- direct: /api/v0/chat/completion ------------------------------------------------------

    async def test_non_stream_chat_from_every_node(self):
        await self.network()
        model = await start_fake_chat_model(self)
        await self.b.register(P, model.model, model.url)
        for requester in (self.a, self.c, self.b):
            resp, body = await requester.call("/api/v0/chat/completion", chat(self.b.peer_id, model.model))
            self.assertEqual(body, {"code": 0, "message": "ok", "data": {
                "created": 1718691167,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"},
                             "finish_reason": "stop"}],
                "usage": {"completion_tokens": 3, "prompt_tokens": 5, "total_tokens": 8},
            }}, requester.peer_id)
        # The model saw the spec's request body, three times.
        self.assertEqual(model.fake.bodies, [{"model": "tiny", "messages": MESSAGES, "stream": False}] * 3)

    async def test_stream_chunks_arrive_incrementally_from_every_node(self):
        await self.network()
        model = await start_fake_chat_model(self, hold=True)
        await self.b.register(P, model.model, model.url)
        # C is not connected to B: the tunnel is dialled through the DHT.
        self.assertFalse(self.c.service.host.is_connected(self.b.service.host.peer_id))
        for requester in (self.c, self.a, self.b):
            client = StreamingClient()
            response = await client.post(requester.api + "/api/v0/chat/completion",
                                         chat(self.b.peer_id, model.model, stream=True))
            self.assertEqual(response.code, 200)
            self.assertEqual(client.header(b"content-type"), "text/event-stream; charset=utf-8")
            await eventually(lambda: sse_chunk(0) in client.data)
            # The first chunk is through while the model is still generating.
            self.assertEqual(len(model.fake.waiting), 1)
            finished = model.fake.finished
            model.fake.release()
            self.assertTrue(body_ended_cleanly(await client.ended))
            self.assertEqual(model.fake.finished, finished + 1)
            self.assertEqual(client.data, sse_chunk(0) + sse_chunk(1) + sse_chunk(2) + DONE)
            self.assertTrue(client.data.endswith(b"data: [DONE]\n\n"))
            await self.no_leaks()
        self.assertEqual(model.fake.bodies[0], {"model": "tiny", "messages": MESSAGES, "stream": True})

    async def test_model_down_is_1006_quickly(self):
        await self.network()
        await self.b.register(P, "down", dead_model_url())
        for requester in (self.c, self.b):
            started = reactor.seconds()
            _, body = await requester.call("/api/v0/chat/completion", chat(self.b.peer_id, "down"))
            self.assertEqual(body["code"], 1006, body)
            self.assertTrue(body["message"].startswith("Post HTTP request error"), body)
            # Streamed: a JSON envelope, not a relayed 502.
            resp, body = await requester.call("/api/v0/chat/completion", chat(self.b.peer_id, "down", True))
            self.assertEqual(resp.code, 200)
            self.assertEqual(body["code"], 1006, body)
            self.assertLess(reactor.seconds() - started, 5)
        await self.no_leaks()

    async def test_unknown_model_and_model_errors(self):
        await self.network()

        def failing(request):
            return json_reply(request, b'{"error": {"message": "CUDA out of memory"}}', status=500)

        base, _ = await serve(self, failing)
        await self.b.register(P, "oom", base + "/v1/chat/completions")
        _, body = await self.c.call("/api/v0/chat/completion", chat(self.b.peer_id, "oom"))
        self.assertEqual(body, {"code": 1006, "message": "Post HTTP request error, 500: CUDA out of memory"})
        _, body = await self.c.call("/api/v0/chat/completion", chat(self.b.peer_id, "oom", True))
        self.assertEqual(body, {"code": 1006, "message": "Post HTTP request error, 500: CUDA out of memory"})
        _, body = await self.b.call("/api/v0/chat/completion", chat(self.b.peer_id, "oom", True))
        self.assertEqual(body, {"code": 1006, "message": "Post HTTP request error, 500: CUDA out of memory"})
        # Not registered there: non-stream names it; the stream is reset by the worker (1017).
        _, body = await self.c.call("/api/v0/chat/completion", chat(self.b.peer_id, "nope"))
        self.assertEqual(body["code"], 1006)
        self.assertIn("not registered", body["message"])
        _, body = await self.c.call("/api/v0/chat/completion", chat(self.b.peer_id, "nope", True))
        self.assertEqual(body, {"code": 1017, "message": "Read chat stream failed"})
        await self.no_leaks()

    async def test_worker_stopping_mid_stream_ends_the_client_stream(self):
        await self.network()
        model = await start_fake_chat_model(self, hold=True)
        await self.b.register(P, model.model, model.url)
        client = StreamingClient()
        await client.post(self.c.api + "/api/v0/chat/completion", chat(self.b.peer_id, model.model, True))
        await eventually(lambda: sse_chunk(0) in client.data)
        started = reactor.seconds()
        await self.b.stop()
        reason = await client.ended
        self.assertLess(reactor.seconds() - started, 5)
        self.assertFalse(body_ended_cleanly(reason))  # the client knows the answer is incomplete
        await eventually(lambda: model.resource.dropped.called, timeout=5)  # the model request went too
        await self.no_leaks()

    # -- direct: /api/v0/image/gen ---------------------------------------------------------------

    async def test_image_generation_uploads_to_ipfs(self):
        kubo = FakeKubo()
        ipfs_url, _ = await serve(self, kubo)
        await self.network(ipfs_api=ipfs_url)
        image_dir = os.path.abspath(self.mktemp())
        os.makedirs(image_dir)
        images = {"bird-1.png": b"\x89PNG first", "bird-2.png": b"\x89PNG second"}

        def image_model(request):
            body = json.loads(request.content.read())
            paths = []
            for name in list(images)[: body["n"]]:
                path = os.path.join(image_dir, name)
                with open(path, "wb") as f:
                    f.write(images[name])
                paths.append(path)
            return json_reply(request, json.dumps({"code": 0, "message": "ok",
                                                   "data": [{"url": p} for p in paths]}).encode())

        model_url, _ = await serve(self, image_model)
        await self.b.register("SuperImage", "superImage", model_url + "/v1/images/generations", kind=1)
        params = {"node_id": self.b.peer_id, "project": "SuperImage", "model": "superImage",
                  "prompt": "a bird flying in the sky", "n": 2, "size": "64x64", "ipfs_node": ""}
        _, body = await self.c.call("/api/v0/image/gen", params)
        self.assertEqual(body, {"code": 0, "message": "ok", "data": {"ipfs_node": ipfs_url, "choices": [
            {"cid": fake_cid(images["bird-1.png"]), "image_name": "bird-1.png"},
            {"cid": fake_cid(images["bird-2.png"]), "image_name": "bird-2.png"},
        ]}})
        self.assertEqual([part["data"] for _, part in kubo.added], list(images.values()))
        # The history file names both nodes.
        (path, (_, part)), = kubo.files.items()
        history = json.loads(part["data"])
        self.assertEqual((history["req_node_id"], history["res_node_id"]), (self.c.peer_id, self.b.peer_id))
        # Never to the node itself.
        _, body = await self.b.call("/api/v0/image/gen", params)
        self.assertEqual(body, {"code": 1001, "message": "Cannot be sent to the node itself"})
        # IPFS refusing the upload: 1007.
        kubo.add_status = 500
        _, body = await self.c.call("/api/v0/image/gen", params)
        self.assertEqual(body["code"], 1007, body)

    # -- /proxy ----------------------------------------------------------------------------------

    async def test_proxy_fails_over_to_a_working_node(self):
        await self.network()
        model = await start_fake_chat_model(self)
        await self.b.register(P, "shared", dead_model_url())
        await self.c.register(P, "shared", model.url)
        await wait_serving(self.nodes, P, "shared", [self.b.peer_id, self.c.peer_id])
        # Make B the first choice: it looks closest.
        host = self.a.service.host
        host.peerstore.record_latency(self.b.service.host.peer_id, 0.0001)
        host.peerstore.record_latency(self.c.service.host.peer_id, 0.5)
        resp, body = await self.a.call("/api/v0/chat/completion/proxy", chat(None, "shared"))
        self.assertEqual(body["code"], 0, body)
        self.assertEqual(body["data"]["choices"][0]["message"]["content"], "Hello!")
        self.assertEqual(resp.headers.getRawHeaders(b"x-aicn-node"), [self.c.peer_id.encode()])
        selector = self.a.service.node.selector
        self.assertEqual(selector.failures(self.b.peer_id, (P, "shared")), 1)
        # B cools down: the next request goes straight to C.
        client = StreamingClient()
        await client.post(self.a.api + "/api/v0/chat/completion/proxy", chat(None, "shared", stream=True))
        self.assertTrue(body_ended_cleanly(await client.ended))
        self.assertEqual(client.header(b"x-aicn-node"), self.c.peer_id)
        self.assertTrue(client.data.endswith(DONE))
        self.assertEqual(selector.failures(self.b.peer_id, (P, "shared")), 1)  # not tried again

    async def test_proxy_stream_fails_over_before_the_first_byte(self):
        await self.network()
        model = await start_fake_chat_model(self)
        await self.b.register(P, "shared", dead_model_url())
        await self.c.register(P, "shared", model.url)
        await wait_serving(self.nodes, P, "shared", [self.b.peer_id, self.c.peer_id])
        host = self.a.service.host
        host.peerstore.record_latency(self.b.service.host.peer_id, 0.0001)
        host.peerstore.record_latency(self.c.service.host.peer_id, 0.5)
        client = StreamingClient()
        response = await client.post(self.a.api + "/api/v0/chat/completion/proxy", chat(None, "shared", True))
        self.assertTrue(body_ended_cleanly(await client.ended))
        self.assertEqual(response.code, 200)
        self.assertEqual(client.header(b"x-aicn-node"), self.c.peer_id)
        self.assertEqual(client.data, sse_chunk(0) + sse_chunk(1) + sse_chunk(2) + DONE)
        await self.no_leaks()

    async def test_proxy_prefers_own_node_and_reports_1016(self):
        await self.network()
        model = await start_fake_chat_model(self)
        await self.a.register(P, "mine", model.url)
        resp, body = await self.a.call("/api/v0/chat/completion/proxy", chat(None, "mine"))
        self.assertEqual(body["code"], 0, body)
        self.assertEqual(resp.headers.getRawHeaders(b"x-aicn-node"), [self.a.peer_id.encode()])
        client = StreamingClient()
        await client.post(self.a.api + "/api/v0/chat/completion/proxy", chat(None, "mine", True))
        self.assertTrue(body_ended_cleanly(await client.ended))
        self.assertEqual(client.header(b"x-aicn-node"), self.a.peer_id)
        self.assertEqual(client.data, sse_chunk(0) + sse_chunk(1) + sse_chunk(2) + DONE)
        # Nobody serves it.
        _, body = await self.a.call("/api/v0/chat/completion/proxy", chat(None, "nobody"))
        self.assertEqual(body, {"code": 1016, "message": "Cannot find a node that supports the project model"})
        _, body = await self.a.call("/api/v0/image/gen/proxy", {"project": P, "model": "nobody", "prompt": "x"})
        self.assertEqual(body["code"], 1016)
        # Everyone fails: 1016 with each attempt, then the cool-down says so.
        await self.b.register(P, "broken", dead_model_url())
        await self.c.register(P, "broken", dead_model_url())
        await wait_serving(self.nodes, P, "broken", [self.b.peer_id, self.c.peer_id])
        _, body = await self.a.call("/api/v0/chat/completion/proxy", chat(None, "broken", True))
        self.assertEqual(body["code"], 1016, body)
        self.assertEqual(body["message"], "All nodes failed in 2 requests")
        self.assertEqual({a["node_id"] for a in body["data"]}, {self.b.peer_id, self.c.peer_id})
        self.assertEqual({a["code"] for a in body["data"]}, {1006})
        _, body = await self.a.call("/api/v0/chat/completion/proxy", chat(None, "broken"))
        self.assertEqual(body["code"], 1016)
        self.assertIn("failed recently", body["message"])
        await self.no_leaks()

    async def test_proxy_fails_fast_past_a_node_that_went_away(self):
        await self.network()
        model = await start_fake_chat_model(self)
        await self.b.register(P, "shared", model.url)
        await self.c.register(P, "shared", dead_model_url())
        await wait_serving(self.nodes, P, "shared", [self.b.peer_id, self.c.peer_id])
        await self.b.stop()
        await eventually(lambda: not self.a.service.host.is_connected(self.b.service.host.peer_id))
        # B's heartbeat is still fresh, but B left after it: no 190 s wait for B.
        started = reactor.seconds()
        _, body = await self.a.call("/api/v0/chat/completion/proxy", chat(None, "shared"))
        self.assertLess(reactor.seconds() - started, 15)
        self.assertEqual(body["code"], 1016, body)
        by_node = {a["node_id"]: a for a in body["data"]}
        self.assertEqual(by_node[self.c.peer_id]["code"], 1006)
        self.assertEqual(by_node[self.b.peer_id]["code"], 1005)
        self.assertRegex(by_node[self.b.peer_id]["message"],
                         rf"^node {self.b.peer_id} is not reachable: disconnected \d+ s ago, after its last "
                         r"heartbeat \(\d+ s ago\), not among our 1 peer on topic DeepBrainChain, "
                         r"not found in the DHT$")
        # Asked directly, B is unreachable too.
        _, body = await self.a.call("/api/v0/chat/completion", chat(self.b.peer_id, "shared"))
        self.assertEqual(body["code"], 1005, body)
        self.assertLess(reactor.seconds() - started, 15)

    async def test_timeout_field_bounds_the_wait_for_the_first_byte(self):
        await self.network()
        base, _ = await serve(self, lambda request: NOT_DONE_YET)  # a model that never answers
        await self.b.register(P, "silent", base + "/v1/chat/completions")
        await wait_serving(self.nodes, P, "silent", [self.b.peer_id])
        started = reactor.seconds()
        _, body = await self.c.call("/api/v0/chat/completion", {**chat(self.b.peer_id, "silent"), "timeout": 1})
        self.assertEqual(body, {"code": 1004, "message": "Processing timeout"})
        _, body = await self.c.call("/api/v0/chat/completion",
                                    {**chat(self.b.peer_id, "silent", stream=True), "timeout": 1.5})
        self.assertEqual(body, {"code": 1004, "message": f"Processing timeout: no answer from node "
                                                         f"{self.b.peer_id} within 1.5 s"})
        _, body = await self.a.call("/api/v0/chat/completion/proxy", {**chat(None, "silent"), "timeout": 1})
        self.assertEqual(body["code"], 1016, body)
        self.assertEqual(body["message"], "All nodes failed in 1 requests within the timeout of 1 s")
        self.assertEqual([(a["node_id"], a["code"]) for a in body["data"]], [(self.b.peer_id, 1004)])
        self.assertLess(reactor.seconds() - started, 15)  # not 3 × 190 s
        await self.no_leaks()

        # The limit is on the wait for the first byte: a stream that flows is never cut.
        model = await start_fake_chat_model(self, hold=True)
        await self.b.register(P, model.model, model.url)
        await wait_serving(self.nodes, P, model.model, [self.b.peer_id])
        for requester, path, node_id in ((self.c, "/api/v0/chat/completion", self.b.peer_id),
                                         (self.a, "/api/v0/chat/completion/proxy", None)):
            client = StreamingClient()
            await client.post(requester.api + path, {**chat(node_id, model.model, True), "timeout": 0.5})
            await eventually(lambda: sse_chunk(0) in client.data)
            await sleep(1)  # twice the timeout, the stream held open
            model.fake.release()
            self.assertTrue(body_ended_cleanly(await client.ended))
            self.assertEqual(client.data, sse_chunk(0) + sse_chunk(1) + sse_chunk(2) + DONE)
        await self.no_leaks()

    async def test_client_leaving_mid_stream_cancels_the_model_request(self):
        await self.network()
        model = await start_fake_chat_model(self, hold=True)
        await self.b.register(P, model.model, model.url)
        await wait_serving(self.nodes, P, model.model, [self.b.peer_id])
        cases = [(self.c, "/api/v0/chat/completion", self.b.peer_id),  # through the tunnel
                 (self.b, "/api/v0/chat/completion", self.b.peer_id),  # own node
                 (self.a, "/api/v0/chat/completion/proxy", None)]      # routed
        for requester, path, node_id in cases:
            model.resource.dropped = Deferred()
            client = StreamingClient()
            await client.post(requester.api + path, chat(node_id, model.model, True))
            await eventually(lambda: sse_chunk(0) in client.data)
            client.pump.abort()
            await model.resource.dropped  # the model server saw its client go
            self.assertEqual(model.fake.finished, 0)
            await self.no_leaks()
        model.fake.waiting.clear()
