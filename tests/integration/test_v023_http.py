"""A Go v0.2.3 HTTP client's calls against real nodes, unchanged; a v0.1.2 client's beside them.

Two in-process nodes on loopback: A, a collector configured with
``API.Envelope: v0.2.3`` (what an operator of v0.2.3 clients sets), and B,
joined through A, with the default (spec) shape.  The calls are made as the
Go client makes them: GET listings, query parameters, Go's capitalised
struct keys, ``multipart/form-data`` image edits; each answer is read as
v0.2.3's types read it.  The same nodes keep answering v0.1.2 clients.
"""

from __future__ import annotations

import json

import treq
from twisted.internet.defer import Deferred

from tests.integration.modelnet import eventually, start_node
from tests.models.servers import NOT_DONE_YET, json_reply, serve
from twisted.trial.unittest import TestCase

PNG = b"\x89PNG\r\n\x1a\n" + b"\x01" * 64


def form(fields, files, boundary="GoBoundary42"):
    """A multipart/form-data body as Go's mime/multipart writes it."""
    out = []
    for name, filename, data in files:
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                   "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    for name, value in fields:
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                   f"{value}\r\n".encode())
    out.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(out)


class V023ClientTests(TestCase):
    timeout = 90

    async def setUp(self):
        self.a = await start_node(self, collector=True, config={"API": {"Envelope": "v0.2.3"}})
        self.b = await start_node(self, bootstrap=self.a.p2p_addr)

        async def joined():
            _, peers = await self.call(self.a, "GET", "/api/v0/pubsub/peers")
            return self.b.peer_id in peers

        await eventually(joined)

    async def call(self, node, method, path, body=None, *, raw=None, content_type="application/json",
                   headers=None):
        """``(status, decoded JSON or raw bytes)``."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"Content-Type": content_type, **(headers or {})}
        resp = await treq.request(method, node.api + path, data=data, headers=hdrs, persistent=False)
        content = await resp.content()
        try:
            return resp.code, json.loads(content)
        except ValueError:
            return resp.code, content

    async def test_a_v023_client(self):
        a, b = self.a, self.b
        status, me = await self.call(a, "GET", "/api/v0/id")
        self.assertEqual((status, me["peer_id"]), (200, a.peer_id))
        status, peers = await self.call(a, "GET", "/api/v0/swarm/peers")
        self.assertIn(b.peer_id, [p["peer"] for p in peers])
        status, addrs = await self.call(a, "GET", "/api/v0/swarm/addrs")
        self.assertIn(b.peer_id, [p["peer"] for p in addrs])

        # B's identity, flattened (types.PeerResponse embeds IdentifyProtocol).
        status, peer = await self.call(a, "POST", "/api/v0/peer", {"node_id": b.peer_id})
        self.assertEqual((status, peer["peer_id"]), (200, b.peer_id))
        self.assertNotIn("data", peer)
        status, error = await self.call(a, "POST", "/api/v0/peer", {})
        self.assertEqual((status, error), (400, {"code": 1001, "message": "empty node_id"}))

        # B registers a model as a Go client marshals types.AIModelRegister (on its own node).
        url, model = await serve(self, lambda request: json_reply(request, b'{"created": 9, "data": []}'))
        register = {"Project": "SuperImage", "Model": "edit", "API": url + "/v1/images/edits", "Type": 2,
                    "CID": "d15c4007271b"}
        status, reply = await self.call(b, "POST", "/api/v0/ai/model/register", register,
                                        headers={"X-AICN-API": "v0.2.3"})
        self.assertEqual((status, reply), (200, {"message": "ok"}))

        # A (collector) lists it from B's heartbeat, with v0.2.3's peer entries.
        async def listed():
            _, projects = await self.call(a, "GET", "/api/v0/ai/projects/list?number=20")
            return "SuperImage" in projects.get("data", ()) and projects

        self.assertEqual(await eventually(listed), {"data": ["SuperImage"]})
        status, models = await self.call(a, "GET", "/api/v0/ai/projects/models?project=SuperImage")
        self.assertEqual((status, models), (200, {"data": ["edit"]}))
        status, nodes = await self.call(a, "GET", "/api/v0/ai/projects/peers?project=SuperImage&model=edit")
        [entry] = nodes["data"]
        self.assertEqual((entry["node_id"], entry["connectivity"], entry["Idle"]), (b.peer_id, 1, 0))
        self.assertGreaterEqual(entry["latency"], 0)
        status, error = await self.call(a, "GET", "/api/v0/ai/projects/list?number=-1")
        self.assertEqual((status, error), (400, {"code": 1001, "message": "invalid number"}))

        # B's registry through A (over the v0.2.3 wire), as v0.2.3's map of ModelIdle; B never
        # sends its model's API URL.
        status, reply = await self.call(a, "POST", "/api/v0/ai/project/peer", {"node_id": b.peer_id})
        self.assertEqual(reply, {"data": {"SuperImage": [{"Model": "edit", "API": "", "Type": 2,
                                                          "CID": "d15c4007271b", "Idle": 0}]}})
        # B about itself knows the whole registration.
        status, reply = await self.call(b, "POST", "/v0.2.3/api/v0/ai/project/peer", {"node_id": b.peer_id})
        self.assertEqual(reply["data"]["SuperImage"][0]["CID"], "d15c4007271b")

        # An image edit on B's own model: the query names it, the form goes to the model.
        ctype, body = form([("prompt", "a red bird"), ("n", "1")], [("image", "bird.png", PNG)])
        query = f"?node_id={b.peer_id}&project=SuperImage&model=edit&cid=d15c4007271b"
        status, reply = await self.call(b, "POST", "/v0.2.3/api/v0/image/edit" + query, raw=body,
                                        content_type=ctype)
        self.assertEqual((status, reply), (200, {"created": 9, "data": []}))
        [(_, uri, headers, sent)] = model.requests
        self.assertEqual(uri, b"/v1/images/edits")
        self.assertIn(PNG, sent)
        self.assertIn(b'name="prompt"\r\n\r\na red bird', sent)
        # A asks for B's model: the form crosses /chat-proxy/0.0.1 to B's worker, which picks the
        # edit model by the path's kind and cid, and the model's answer comes back unchanged.
        status, reply = await self.call(a, "POST", "/api/v0/image/edit" + query, raw=body, content_type=ctype)
        self.assertEqual((status, reply), (200, {"created": 9, "data": []}))
        [_, (_, uri, headers, sent)] = model.requests
        self.assertEqual(uri, b"/v1/images/edits")
        self.assertIn(PNG, sent)
        self.assertIn(b'name="prompt"\r\n\r\na red bird', sent)
        self.assertTrue(headers.getRawHeaders(b"content-type")[0].startswith(b"multipart/form-data"))

        # Unregister the model; once more is "not existed".
        unregister = {"Project": "SuperImage", "Model": "edit", "CID": "d15c4007271b"}
        for expected in ({"message": "ok"}, {"message": "not existed"}):
            status, reply = await self.call(b, "POST", "/v0.2.3/api/v0/ai/model/unregister", unregister)
            self.assertEqual((status, reply), (200, expected))

    async def test_bootstrap_list_add_rm(self):
        a, b = self.a, self.b
        status, reply = await self.call(a, "GET", "/api/v0/bootstrap/list")
        self.assertEqual((status, reply), (200, {"data": []}))
        status, reply = await self.call(a, "POST", "/api/v0/bootstrap/add", {"node_addr": b.p2p_addr})
        self.assertEqual((status, reply), (200, {"message": "ok"}))
        status, reply = await self.call(a, "GET", "/api/v0/bootstrap/list")
        self.assertEqual(reply, {"data": [b.p2p_addr]})
        with open(a.service.settings.config_path) as f:
            saved = json.load(f)
        self.assertEqual(saved["Bootstrap"], [b.p2p_addr])
        self.assertEqual(saved["API"], {"Envelope": "v0.2.3"})  # the rest as it was
        status, reply = await self.call(a, "POST", "/api/v0/bootstrap/add", {"node_addr": "/ip4/1.2.3.4"})
        self.assertEqual((status, reply["code"]), (400, 1001))
        status, reply = await self.call(a, "POST", "/api/v0/bootstrap/rm", {"node_addr": b.p2p_addr})
        self.assertEqual((status, reply), (200, {"message": "ok"}))
        self.assertFalse(a.service.host.is_connected(b.service.host.peer_id))
        status, reply = await self.call(a, "GET", "/api/v0/bootstrap/list")
        self.assertEqual(reply, {"data": []})

    async def test_v012_clients_keep_working(self):
        a, b = self.a, self.b
        # B has the default shape; A is asked for it by header or by prefix.
        for node, prefix, headers in ((b, "", {}), (a, "", {"X-AICN-API": "v0.1.2"}), (a, "/v0.1.2", {})):
            status, reply = await self.call(node, "POST", prefix + "/api/v0/peer", {"node_id": a.peer_id},
                                            headers=headers)
            self.assertEqual((status, reply["code"], reply["data"]["peer_id"]), (200, 0, a.peer_id))
            status, reply = await self.call(node, "POST", prefix + "/api/v0/peer", {}, headers=headers)
            self.assertEqual((status, reply), (200, {"code": 1001, "message": "empty node_id"}))
            status, peers = await self.call(node, "POST", prefix + "/api/v0/swarm/peers", headers=headers)
            self.assertEqual(status, 200)
            self.assertIsInstance(peers, list)
            status, reply = await self.call(node, "POST", prefix + "/api/v0/ai/projects/list",
                                            headers=headers)
            self.assertEqual((reply["code"], reply["message"]), (0, "ok"))
        register = {"project": "P", "models": [{"model": "m", "api": "http://127.0.0.1:1/v1", "type": 0}]}
        status, reply = await self.call(b, "POST", "/api/v0/ai/project/register", register)
        self.assertEqual(reply, {"code": 0, "message": "ok"})

        async def listed():
            _, reply = await self.call(a, "POST", "/v0.1.2/api/v0/ai/projects/peers",
                                       {"project": "P", "model": "m"})
            return reply.get("data")

        self.assertEqual(await eventually(listed), [b.peer_id])
        status, reply = await self.call(a, "POST", "/v0.1.2/api/v0/ai/project/peer", {"node_id": b.peer_id})
        self.assertEqual(reply, {"code": 0, "message": "ok", "data": [{"project": "P", "models": ["m"]}]})
        status, reply = await self.call(b, "POST", "/api/v0/ai/project/unregister", {"project": "P"})
        self.assertEqual(reply, {"code": 0, "message": "ok"})


class LoadHeartbeatTests(TestCase):
    """B's heartbeats come once a minute; a model call starting and ending on B still reaches
    the collector A within a second or so, as the ``Idle`` of B's entry (Go v0.2.1+'s extra
    heartbeats, ours coalesced)."""

    async def setUp(self):
        self.a = await start_node(self, collector=True, config={"API": {"Envelope": "v0.2.3"}})
        self.b = await start_node(self, bootstrap=self.a.p2p_addr,
                                  app_config={"PeersCollect": {"HeartbeatInterval": "60s"}})

        async def joined():
            _, peers = await self.call(self.a, "GET", "/api/v0/pubsub/peers")
            return self.b.peer_id in peers

        await eventually(joined)

    timeout = 90
    call = V023ClientTests.call

    async def test_idle_follows_the_calls_in_flight(self):
        a, b = self.a, self.b
        held = []

        def model(request):
            held.append(request)
            return NOT_DONE_YET

        url, _ = await serve(self, model)
        register = {"Project": "P", "Model": "m", "API": url + "/v1/chat/completions", "Type": 0}
        status, reply = await self.call(b, "POST", "/v0.2.3/api/v0/ai/model/register", register)
        self.assertEqual((status, reply), (200, {"message": "ok"}))

        async def idle(expected):
            _, nodes = await self.call(a, "GET", "/api/v0/ai/projects/peers?project=P&model=m")
            entries = nodes.get("data") or []
            return [e["Idle"] for e in entries] == [expected]

        await eventually(lambda: idle(0))
        chats = [Deferred.fromCoroutine(self.call(a, "POST", "/api/v0/chat/completion", {
            "node_id": b.peer_id, "project": "P", "model": "m",
            "messages": [{"role": "user", "content": "hi"}]})) for _ in range(2)]
        await eventually(lambda: len(held) == 2)
        await eventually(lambda: idle(2))  # long before B's next periodic heartbeat
        reply = json.dumps({"created": 1, "choices": [{"index": 0, "finish_reason": "stop",
                                                       "message": {"role": "assistant", "content": "hello"}}],
                            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
        for request in held:
            request.setHeader(b"content-type", b"application/json")
            request.write(reply)
            request.finish()
        for chat in chats:
            status, answer = await chat
            self.assertEqual(status, 200, answer)
        await eventually(lambda: idle(0))
