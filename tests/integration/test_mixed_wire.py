"""A mixed network: in-process nodes of both wire versions on loopback.

Collector A (``App.WireVersion`` v0.2.3, the default), B (v0.1.2) and C
(v0.2.3) run everything ``twistd aicn`` runs.  Every publication on the topic
is recorded and opened with the receiver's key, so that the schema of each
message is checked on the wire, not inferred: B's heartbeats are v0.1.2's and
C's v0.2.3's, and the collector lists both; non-streamed chat and image go
B -> C and C -> B, each request in the receiver's schema and each answer in
the request's; a model failure crosses the v0.2.3 wire as 1007 and reaches a
v0.1.2 client as 1006; ``cid`` picks the model instance over pubsub and over
``/chat-proxy/0.0.1``.
"""

from __future__ import annotations

import base64
import json
import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from aicn.node.crypto import open_body
from aicn.node.envelope import decode_body, decode_message
from aicn.node.schemas import judge
from aicn.wire import protocol_pb2 as v12
from aicn.wire import protocol_v023_pb2 as v23
from aicn.wire.versions import V012, V023
from tests.integration.modelnet import (
    MESSAGES,
    P,
    StreamingClient,
    eventually,
    start_fake_chat_model,
    start_node,
)
from tests.models.fakeipfs import FakeKubo, fake_cid
from tests.models.servers import NOT_DONE_YET, json_reply, serve

CHAT, IMAGE, AI = v12.CHAT_COMPLETION, v12.IMAGE_GENERATION, v12.AI_PROJECT
PNG = b"\x89PNG\r\n\x1a\nmixed"


class Recorder:
    """Every message a node publishes: ``(publisher, protocol.Message)``."""

    def __init__(self) -> None:
        self.sent: list[tuple[object, v12.Message]] = []

    def attach(self, node) -> None:
        pubsub = node.service.pubsub
        publish = pubsub.publish

        async def recording(topic, data):
            self.sent.append((node, decode_message(data)))
            return await publish(topic, data)

        pubsub.publish = recording  # the application calls it through this instance

    def _between(self, sender, receiver, msg_type):
        return [m for node, m in self.sent
                if node is sender and m.header.receiver == receiver.peer_id and m.type == msg_type]

    def requests(self, sender, receiver, msg_type):
        """What ``sender`` asked ``receiver`` (ids it used first)."""
        answered = {m.header.id for m in self._between(receiver, sender, msg_type)}
        first = {}
        for node, m in self.sent:
            first.setdefault(m.header.id, node)
        return [m for m in self._between(sender, receiver, msg_type) if first[m.header.id] is sender
                or m.header.id not in answered]

    def answers(self, sender, receiver, msg_type):
        """What ``sender`` answered to ``receiver``'s requests."""
        asked = {m.header.id for m in self.requests(receiver, sender, msg_type)}
        return [m for m in self._between(sender, receiver, msg_type) if m.header.id in asked]

    def heartbeats(self, sender):
        return [m for node, m in self.sent if node is sender and not m.header.id and m.type == AI]


def strictly(wire, msg_type: int, plaintext: bytes):
    """The body decoded in ``wire``'s schema, asserting it fits and is clean there."""
    kind, message = decode_body(msg_type, plaintext, wire)
    problems, unknown = judge(message)
    assert not problems and not unknown, (problems, unknown)
    return kind, message


def opened(receiver, msg) -> bytes:
    return open_body(receiver.service.key, msg.header.node_pub_key, msg.body)


class MixedNetworkTests(TestCase):
    timeout = 120

    async def setUp(self):
        self.kubo = FakeKubo()
        ipfs_url, _ = await serve(self, self.kubo)
        self.ipfs_url = ipfs_url
        self.a = await start_node(self, collector=True, ipfs_api=ipfs_url)
        self.b = await start_node(self, bootstrap=self.a.p2p_addr, ipfs_api=ipfs_url,
                                  app_config={"WireVersion": "v0.1.2"})
        self.c = await start_node(self, bootstrap=self.a.p2p_addr, ipfs_api=ipfs_url,
                                  app_config={"WireVersion": "v0.2.3"})
        self.nodes = [self.a, self.b, self.c]
        self.rec = Recorder()
        for node in self.nodes:
            self.rec.attach(node)

        async def joined():
            _, peers = await self.a.call("/api/v0/pubsub/peers")
            return {self.b.peer_id, self.c.peer_id} <= set(peers)

        await eventually(joined)
        self.chat_model = await start_fake_chat_model(self, answer="Hello from the model")
        self.image_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.image_dir)
        image_url, self.image_resource = await serve(self, self.image_model)
        for node in (self.b, self.c):
            await node.register(P, "Llama3-8B", self.chat_model.url)
            await node.register("SuperImage", "superImage", image_url + "/v1/images/generations", kind=1)

    def image_model(self, request):
        """The spec's image contract: local file paths."""
        body = json.loads(request.content.read())
        path = os.path.join(self.image_dir, f"bird-{len(os.listdir(self.image_dir))}.png")
        with open(path, "wb") as f:
            f.write(PNG + body["prompt"].encode())
        return json_reply(request, json.dumps({"code": 0, "data": [{"url": path}]}).encode())

    async def wait_listed(self):
        async def listed():
            _, peers = await self.a.call("/api/v0/peers", method="GET")
            _, models = await self.a.call("/api/v0/ai/projects/models", {"project": P})
            return {self.b.peer_id, self.c.peer_id} <= set(peers.get("data") or ()) and models

        await eventually(listed)

    async def test_collector_lists_both_versions(self):
        await self.wait_listed()
        # On the wire: B's heartbeats are v0.1.2's, C's v0.2.3's.
        hb_b, hb_c = self.rec.heartbeats(self.b)[-1], self.rec.heartbeats(self.c)[-1]
        self.assertTrue(hb_b.header.client_version.startswith("v0.1.2 (aicn-py/"))
        self.assertTrue(hb_c.header.client_version.startswith("v0.2.3 (aicn-py/"))
        _, res_b = strictly(v12, AI, hb_b.body)
        _, res_c = strictly(v23, AI, hb_c.body)
        self.assertEqual(sorted(m for p in res_b.projects for m in p.models), ["Llama3-8B", "superImage"])
        self.assertEqual(sorted((m.model, m.type, m.api) for p in res_c.projects for m in p.models),
                         [("Llama3-8B", 0, ""), ("superImage", 1, "")])
        self.assertEqual(res_c.node_type, 0x04)
        # The collector stored both, v0.2.3's models with their type.
        records = {r.node_id: r for r in self.a.service.app.fresh_peers()}
        self.assertNotIn("instances", records[self.b.peer_id].projects[0])
        image = [p for p in records[self.c.peer_id].projects if p["project"] == "SuperImage"][0]
        self.assertEqual(image["instances"], [{"model": "superImage", "type": 1, "idle": 0, "cid": ""}])
        _, peers = await self.a.call("/api/v0/ai/projects/peers", {"project": P, "model": "Llama3-8B"})
        self.assertEqual(set(peers["data"]), {self.b.peer_id, self.c.peer_id})
        self.assertEqual(self.a.service.app.wire_for(self.b.peer_id), V012)
        self.assertEqual(self.a.service.app.wire_for(self.c.peer_id), V023)

    async def chat(self, sender, receiver, **extra):
        body = {"node_id": receiver.peer_id, "project": P, "model": "Llama3-8B", "messages": MESSAGES,
                "stream": False, **extra}
        return (await sender.call("/api/v0/chat/completion", body))[1]

    async def test_chat_both_directions(self):
        await self.wait_listed()
        # B -> C: in C's schema (v0.2.3), answered in it.
        reply = await self.chat(self.b, self.c)
        self.assertEqual(reply["code"], 0, reply)
        self.assertEqual(reply["data"]["choices"][0]["message"]["content"], "Hello from the model")
        [request] = self.rec.requests(self.b, self.c, CHAT)
        [answer] = self.rec.answers(self.c, self.b, CHAT)
        self.assertTrue(request.header.client_version.startswith("v0.2.3 "))
        _, req = strictly(v23, CHAT, opened(self.c, request))
        self.assertEqual([json.loads(m.content) for m in req.messages], [m["content"] for m in MESSAGES])
        self.assertTrue(req.HasField("wallet"))
        self.assertTrue(answer.header.client_version.startswith("v0.2.3 "))
        strictly(v23, CHAT, opened(self.b, answer))
        # C -> B: in B's schema (v0.1.2), answered in it.
        reply = await self.chat(self.c, self.b)
        self.assertEqual(reply["data"]["choices"][0]["message"]["content"], "Hello from the model")
        [request] = self.rec.requests(self.c, self.b, CHAT)
        [answer] = self.rec.answers(self.b, self.c, CHAT)
        self.assertTrue(request.header.client_version.startswith("v0.1.2 "))
        _, req = strictly(v12, CHAT, opened(self.b, request))
        self.assertEqual([m.content for m in req.messages], [m["content"] for m in MESSAGES])
        self.assertTrue(answer.header.client_version.startswith("v0.1.2 "))
        strictly(v12, CHAT, opened(self.c, answer))
        # Both models got the spec's model request.
        self.assertEqual([b["messages"] for b in self.chat_model.fake.bodies], [MESSAGES, MESSAGES])

    async def test_model_error_codes_cross_each_wire(self):
        await self.wait_listed()
        for sender, receiver, on_the_wire in ((self.b, self.c, 1007), (self.c, self.b, 1006)):
            reply = await self.chat(sender, receiver, model="missing")
            self.assertEqual(reply["code"], 1006, reply)  # our numbering for a v0.1.2-shaped client
            [answer] = self.rec.answers(receiver, sender, CHAT)
            self.assertEqual(answer.result_code, on_the_wire)
        # A v0.2.3-shaped client sees v0.2.3's number.
        status_body = await self.b.call("/v0.2.3/api/v0/chat/completion", {
            "node_id": self.c.peer_id, "project": P, "model": "missing", "messages": MESSAGES})
        self.assertEqual(status_body[1]["code"], 1007)

    async def image(self, sender, receiver, **extra):
        body = {"node_id": receiver.peer_id, "project": "SuperImage", "model": "superImage",
                "prompt": "a bird", "n": 1, **extra}
        return (await sender.call("/api/v0/image/gen", body))[1]

    async def test_images_both_directions(self):
        await self.wait_listed()
        # B -> C, nothing of v0.2.3's asked: C reads both, so v0.1.2's IPFS hand-off.
        reply = await self.image(self.b, self.c)
        self.assertEqual(reply["code"], 0, reply)
        self.assertEqual(reply["data"], {"ipfs_node": self.ipfs_url, "choices": [
            {"cid": fake_cid(PNG + b"a bird"), "image_name": "bird-0.png"}]})
        [request] = self.rec.requests(self.b, self.c, IMAGE)
        self.assertTrue(request.header.client_version.startswith("v0.1.2 "))
        strictly(v12, IMAGE, opened(self.c, request))
        # C -> B asking for b64_json (a v0.2.3 field): as Go v0.2.3, through /chat-proxy/0.0.1
        # (images inline would pass pubsub's 1 MiB), although B's own heartbeats are v0.1.2's;
        # B inlines its model's file as b64_json, no IPFS involved.
        uploads = len(self.kubo.added)
        reply = await self.image(self.c, self.b, response_format="b64_json", prompt="a fish")
        self.assertEqual(reply["code"], 0, reply)
        [choice] = reply["data"]["choices"]
        self.assertEqual(base64.b64decode(choice["b64_json"]), PNG + b"a fish")
        self.assertGreater(reply["data"]["created"], 0)
        self.assertEqual(self.rec.requests(self.c, self.b, IMAGE), [])  # not over pubsub
        self.assertEqual(len(self.kubo.added), uploads)
        # The model got v0.2.3's field too.
        self.assertEqual(json.loads(self.image_resource.requests[-1][3])["response_format"], "b64_json")
        # No such model on B: B resets the stream (as Go), an error at once.
        reply = await self.image(self.c, self.b, response_format="b64_json", model="missing")
        self.assertEqual(reply["code"], 1017, reply)  # B resets the stream: no such model (as Go)

    async def test_a_b64_image_past_its_timeout_stops_the_worker_model(self):
        slow_url, slow = await serve(self, lambda request: NOT_DONE_YET)
        await self.b.register("SuperImage", "slow", slow_url + "/v1/images/generations", kind=1)
        started = reactor.seconds()
        reply = await self.image(self.c, self.b, model="slow", response_format="b64_json", timeout=1)
        self.assertEqual(reply["code"], 1004, reply)
        self.assertLess(reactor.seconds() - started, 10)
        # C reset the tunnel stream; B cancelled its model call, the model saw its client go.
        await slow.dropped
        self.assertEqual(len(slow.requests), 1)

        async def idle():
            return self.b.service.worker.in_flight("SuperImage", "slow") == 0

        await eventually(idle)

    async def test_cid_selects_the_instance(self):
        second = await start_fake_chat_model(self, answer="second instance")
        for cid, url in (("c1", self.chat_model.url), ("c2", second.url)):
            _, body = await self.c.call("/api/v0/ai/model/register", {
                "project": P, "model": "multi", "api": url, "type": 0, "cid": cid})
            self.assertEqual(body["code"], 0, body)
        await self.wait_listed()
        # Over pubsub (v0.2.3's ChatCompletionRequest.cid).
        for cid, answer in (("c2", "second instance"), ("c1", "Hello from the model")):
            reply = await self.chat(self.b, self.c, model="multi", cid=cid)
            self.assertEqual(reply["data"]["choices"][0]["message"]["content"], answer, reply)
        reply = await self.chat(self.b, self.c, model="multi", cid="c3")
        self.assertEqual(reply["code"], 1006, reply)
        # Over /chat-proxy/0.0.1 (the cid query parameter).
        client = StreamingClient()
        await client.post(self.b.api + "/api/v0/chat/completion", {
            "node_id": self.c.peer_id, "project": P, "model": "multi", "cid": "c2", "messages": MESSAGES,
            "stream": True})
        await client.ended
        self.assertEqual(client.response.code, 200)
        self.assertTrue(second.fake.finished >= 2, second.fake.finished)
        self.assertEqual(len(second.fake.bodies), 2)
        self.assertTrue(second.fake.bodies[-1]["stream"])
        # The collector knows both instances.
        records = {r.node_id: r for r in self.a.service.app.fresh_peers()}
        multi = [p for p in records[self.c.peer_id].projects if p["project"] == P][0]
        self.assertEqual([(i["model"], i["cid"]) for i in multi["instances"] if i["model"] == "multi"],
                         [("multi", "c1"), ("multi", "c2")])
