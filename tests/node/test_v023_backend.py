"""The node's side of Go v0.2.3's HTTP routes: per-model registration, the detailed
project listings, the bootstrap list at runtime, image edits by our own model."""

from __future__ import annotations

import json
import os

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from aicn.config import AIModel, update_bootstrap
from aicn.config.schema import ConfigError
from aicn.errors import AICNError, ErrorCode
from aicn.models.imageedit import encode_multipart
from aicn.node.appbackend import MODEL_NOT_REGISTERED_MESSAGE, ApplicationBackend
from aicn.node.bootstrap import BootstrapPeers
from aicn.node.dialhistory import BOOTSTRAP_TAG
from aicn.node.imageedit import ImageEditBackend
from aicn.node.modelstats import ModelRequestStats
from aicn.node.routing import Candidate, NodeSelector
from aicn.node.modelapi import ModelBackend
from aicn.node.modelwork import ModelWorker
from aicn.p2p.connmgr import ConnectionManager
from aicn.p2p.host import Host
from aicn.p2p.keys import PrivateKey
from aicn.wire import protocol_pb2 as pb
from aicn.wire import protocol_v023_pb2 as pb23
from aicn.node.envelope import decode_body
from tests.models.servers import json_reply, serve
from tests.node.test_application import Net, run

API = "http://127.0.0.1:1042/v1/images/edits"


class ModelRegistrationTests(SynchronousTestCase):
    def setUp(self):
        self.net = Net(self)
        self.app = self.net.node()
        self.backend = ApplicationBackend(self.app)

    def call(self, coro):
        return self.successResultOf(run(coro))

    def models(self, project="P"):
        return [m for p in self.app.projects() if p.project == project for m in p.models]

    def test_register_adds_replaces_by_name_and_cid(self):
        self.call(self.backend.register_model("P", {"model": "m", "api": API, "type": 2, "cid": "c1"}))
        self.call(self.backend.register_model("P", {"model": "m", "api": API, "type": 2, "cid": "c2"}))
        self.call(self.backend.register_model("P", {"model": "n", "api": "http://127.0.0.1:1/v1"}))
        self.call(self.backend.register_model("P", {"model": "m", "api": "http://127.0.0.1:9/x", "type": 2,
                                                    "cid": "c1"}))
        self.assertEqual(self.models(), [AIModel("m", "http://127.0.0.1:9/x", 2, "c1"),
                                         AIModel("m", API, 2, "c2"),
                                         AIModel("n", "http://127.0.0.1:1/v1", 0, "")])
        # Persisted, and announced at once.
        self.assertEqual(self.app.db.list_projects()[0].models, tuple(self.models()))
        heartbeats = [m for m in self.net.published(self.app) if m.type == pb.AI_PROJECT]
        self.assertEqual(len(heartbeats), 4)
        (project,) = decode_body(pb.AI_PROJECT, heartbeats[-1].body, pb23)[1].projects
        self.assertEqual([(m.model, m.type, m.cid) for m in project.models], [("m", 2, "c1"), ("m", 2, "c2"),
                                                                             ("n", 0, "")])

    def test_unregister_by_name_and_cid(self):
        self.call(self.backend.register_model("P", {"model": "m", "api": API, "cid": "c1"}))
        self.call(self.backend.register_model("P", {"model": "m", "api": API, "cid": "c2"}))
        for project, cid in (("P", "c3"), ("P", ""), ("Q", "c1")):
            got = self.call(self.backend.unregister_model(project, "m", cid))
            self.assertEqual(got, MODEL_NOT_REGISTERED_MESSAGE)
        self.assertIsNone(self.call(self.backend.unregister_model("P", "m", "c1")))
        self.assertEqual(self.models(), [AIModel("m", API, 0, "c2")])
        self.assertIsNone(self.call(self.backend.unregister_model("P", "m", "c2")))
        # The project went with its last model.
        self.assertEqual(self.app.projects(), [])
        self.assertEqual(self.app.db.list_projects(), [])

    def test_project_peer_detail(self):
        self.call(self.backend.register_model("P", {"model": "m", "api": API, "type": 2, "cid": "c1"}))
        own = self.call(self.backend.project_peer_detail(self.app.node_id))
        self.assertEqual(own, [{"project": "P", "models": [{"model": "m", "api": API, "type": 2, "cid": "c1",
                                                            "idle": 0}]}])
        other = self.net.node()
        remote = self.call(ApplicationBackend(other).project_peer_detail(self.app.node_id))
        # Over the v0.2.3 wire: type, idle and cid, never the model's API URL.
        self.assertEqual(remote, [{"project": "P",
                                   "models": [{"model": "m", "type": 2, "idle": 0, "cid": "c1"}]}])
        # Over v0.1.2's: names only.
        old = self.net.node(wire="v0.1.2")
        remote = self.call(ApplicationBackend(old).project_peer_detail(self.app.node_id))
        self.assertEqual(remote, [{"project": "P", "models": [{"model": "m"}]}])


class PeersDetailTests(SynchronousTestCase):
    def setUp(self):
        self.net = Net(self)
        self.collector = self.net.node(collector=True)
        self.worker = self.net.node()
        self.successResultOf(run(self.worker.register("P", [{"model": "m", "api": API}])))

    def test_listing_with_connection_facts(self):
        backend = ApplicationBackend(self.collector)
        entry = {"node_id": self.worker.node_id, "connectivity": 0, "latency": 0, "idle": 0, "cid": ""}
        self.assertEqual(self.successResultOf(run(backend.projects_peers_detail("P", "m"))), [entry])
        self.assertEqual(self.successResultOf(run(backend.projects_peers_detail("P", ""))), [entry])
        self.assertEqual(self.successResultOf(run(backend.projects_peers_detail("P", "x"))), [])
        backend.connection_facts = lambda node_id: (1, 1234)
        [got] = self.successResultOf(run(backend.projects_peers_detail("P", "m")))
        self.assertEqual((got["connectivity"], got["latency"]), (1, 1234))


class UpdateBootstrapTests(TestCase):
    def write(self, obj, mode=0o640):
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump(obj, f)
        os.chmod(path, mode)
        return path

    def test_only_the_list_changes(self):
        path = self.write({"API": {"Addr": "127.0.0.1:6000"}, "bootstrap": ["/a"], "Unknown": {"x": 1}})
        self.assertEqual(update_bootstrap(path, add="/b"), ["/a", "/b"])
        self.assertEqual(update_bootstrap(path, add="/b"), ["/a", "/b"])
        with open(path) as f:
            self.assertEqual(json.load(f), {"API": {"Addr": "127.0.0.1:6000"}, "bootstrap": ["/a", "/b"],
                                            "Unknown": {"x": 1}})
        self.assertEqual(update_bootstrap(path, remove="/a"), ["/b"])
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o640)
        path = self.write({})
        self.assertEqual(update_bootstrap(path, add="/a"), ["/a"])

    def test_unreadable_configs(self):
        for content in ("[]", "{", '{"Bootstrap": "x"}'):
            path = self.mktemp()
            with open(path, "w") as f:
                f.write(content)
            with self.assertRaises(ConfigError):
                update_bootstrap(path, add="/a")
        with self.assertRaises(ConfigError):
            update_bootstrap(self.mktemp(), add="/a")


class BootstrapPeersTests(TestCase):
    """Two real hosts on loopback."""

    timeout = 30

    async def host(self):
        host = Host(reactor, PrivateKey.generate("secp256k1"))
        await host.start(["/ip4/127.0.0.1/tcp/0"])
        self.addCleanup(host.stop)
        return host

    async def setup(self, config=None):
        self.a, self.b = await self.host(), await self.host()
        self.connmgr = ConnectionManager(self.a, reactor)
        self.addr = f"{self.b.listen_addrs()[0]}/p2p/{self.b.peer_id}"
        self.config = config
        self.peers = BootstrapPeers(self.a, reactor, ["/ip4/10.0.0.1/tcp/1/p2p/" + str(self.b.peer_id)],
                                    connmgr=self.connmgr, config_path=config, dial_timeout=5)

    async def test_add_dials_keeps_and_persists(self):
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump({"Bootstrap": []}, f)
        await self.setup(path)
        await self.peers.add(self.addr)
        self.assertTrue(self.a.is_connected(self.b.peer_id))
        self.assertTrue(self.connmgr.is_protected(self.b.peer_id, BOOTSTRAP_TAG))
        self.assertEqual(self.peers.list()[-1], self.addr)
        with open(path) as f:
            self.assertEqual(json.load(f)["Bootstrap"], [self.addr])
        await self.peers.add(self.addr)  # again: no duplicate
        self.assertEqual(self.peers.list().count(self.addr), 1)

        await self.peers.remove(self.addr)
        self.assertFalse(self.a.is_connected(self.b.peer_id))
        self.assertFalse(self.connmgr.is_protected(self.b.peer_id))
        self.assertEqual(self.a.peerstore.addrs(self.b.peer_id), [])
        self.assertNotIn(self.addr, self.peers.list())
        with open(path) as f:
            self.assertEqual(json.load(f)["Bootstrap"], [])

    async def test_bad_addresses_and_failed_dials(self):
        await self.setup()
        ours = f"/ip4/127.0.0.1/tcp/1/p2p/{self.a.peer_id}"
        for addr, message in (("nonsense", "invalid node_addr"),
                              ("/ip4/127.0.0.1/tcp/1", "invalid node_addr"),
                              (ours, "Cannot connect to the node itself")):
            with self.assertRaises(AICNError) as ctx:
                await self.peers.add(addr)
            self.assertEqual(ctx.exception.code, ErrorCode.PARAMETER)
            self.assertIn(message, ctx.exception.message)
        await self.b.stop()
        before = self.peers.list()
        with self.assertRaises(AICNError) as ctx:
            await self.peers.add(self.addr)
        self.assertEqual(ctx.exception.code, ErrorCode.INTERNAL)
        self.assertEqual(self.peers.list(), before)

    async def test_a_config_that_cannot_be_written_keeps_the_list(self):
        await self.setup(os.path.join(self.mktemp(), "missing", "config.json"))
        with self.assertRaises(AICNError) as ctx:
            await self.peers.add(self.addr)
        self.assertEqual(ctx.exception.code, ErrorCode.INTERNAL)
        self.assertIn("config save err", ctx.exception.message)
        self.assertNotIn(self.addr, self.peers.list())


class EditNode(ImageEditBackend, ModelBackend):
    """The image edit operations over a real Application and ModelWorker."""

    def __init__(self, app, worker):
        self.reactor = reactor
        self.app = app
        self.worker = worker
        self.host = Host(reactor, PrivateKey.generate(), ping_interval=None)
        self.selector = NodeSelector(reactor)
        self.model_stats = ModelRequestStats(reactor)
        #: What proxy_candidates says of other nodes.
        self.others = []

    def proxy_candidates(self, project, model):
        own = [Candidate(self.app.node_id, local=True)] if self.worker.serves(project, model) else []
        return own + self.others


class ImageEditTests(TestCase):
    timeout = 30

    def setUp(self):
        self.net = Net(self)
        self.app = self.net.node()
        self.worker = ModelWorker(reactor, self.app.projects, node_id=self.app.node_id)
        self.node = EditNode(self.app, self.worker)

    def params(self, **extra):
        params = {"node_id": self.app.node_id, "project": "SuperImage", "model": "edit", "cid": "",
                  "timeout": None,
                  "fields": [("model", "edit"), ("prompt", "a red bird")],
                  "files": [("image", "bird.png", "image/png", b"\x89PNG-bytes")]}
        params.update(extra)
        return params

    async def test_our_model_gets_the_form_and_its_answer_is_relayed(self):
        def handler(request):
            return json_reply(request, b'{"created": 7, "data": [{"b64_json": "aGk="}]}', status=201)

        url, model = await serve(self, handler)
        await self.app.register("SuperImage", [{"model": "edit", "api": url + "/v1/images/edits", "type": 2}])
        stream = await self.node.image_edit(self.params())
        self.assertEqual(stream.status, 201)
        chunks = []

        class Consumer:
            def write(self, data):
                chunks.append(data)

            def registerProducer(self, producer, streaming):
                pass

            def unregisterProducer(self):
                pass

        await stream.deliver(Consumer())
        self.assertEqual(json.loads(b"".join(chunks)), {"created": 7, "data": [{"b64_json": "aGk="}]})
        [(method, uri, headers, body)] = model.requests
        self.assertEqual((method, uri), (b"POST", b"/v1/images/edits"))
        ctype = headers.getRawHeaders(b"content-type")[0]
        self.assertTrue(ctype.startswith(b"multipart/form-data; boundary="))
        boundary = ctype.partition(b"boundary=")[2].decode()
        expected = encode_multipart(self.params()["fields"], self.params()["files"], boundary=boundary)[1]
        self.assertEqual(body, expected)

    async def test_cid_picks_the_model(self):
        def handler(request):
            return json_reply(request, b"{}")

        url1, model1 = await serve(self, handler)
        url2, model2 = await serve(self, handler)
        await self.app.register("SuperImage", [{"model": "edit", "api": url1, "type": 2, "cid": "a"},
                                               {"model": "edit", "api": url2, "type": 2, "cid": "b"}])
        stream = await self.node.image_edit(self.params(cid="b"))
        stream.abort()
        self.assertEqual((len(model1.requests), len(model2.requests)), (0, 1))
        with self.assertRaises(AICNError) as ctx:
            await self.node.image_edit(self.params(cid="c"))
        self.assertEqual(ctx.exception.code, ErrorCode.MODEL)

    async def test_other_nodes_and_missing_models(self):
        other = str(PrivateKey.generate("secp256k1").peer_id())
        with self.assertRaises(AICNError) as ctx:
            await self.node.image_edit(self.params(node_id=other))  # not reachable: no address known
        self.assertEqual((ctx.exception.code, ctx.exception.message),
                         (ErrorCode.STREAM, "Open stream with peer node failed"))
        with self.assertRaises(AICNError) as ctx:
            await self.node.image_edit(self.params(node_id="nope"))
        self.assertEqual(ctx.exception.code, ErrorCode.PARAMETER)
        with self.assertRaises(AICNError) as ctx:
            await self.node.image_edit(self.params())
        self.assertEqual(ctx.exception.code, ErrorCode.MODEL)
        with self.assertRaises(AICNError) as ctx:
            await self.node.image_edit_proxy(self.params(node_id=""))
        self.assertEqual(ctx.exception.code, ErrorCode.PROXY)
        self.node.others = [Candidate(other)]
        with self.assertRaises(AICNError) as ctx:
            await self.node.image_edit_proxy(self.params(node_id=""))
        self.assertEqual(ctx.exception.code, ErrorCode.PROXY)  # tried, failed over, none left
        self.assertEqual(ctx.exception.data, [{"node_id": other, "code": 1017,
                                               "message": "Open stream with peer node failed"}])

    async def test_proxy_uses_our_model_and_names_us(self):
        url, model = await serve(self, lambda request: json_reply(request, b"{}"))
        await self.app.register("SuperImage", [{"model": "edit", "api": url, "type": 2}])
        stream = await self.node.image_edit_proxy(self.params(node_id=""))
        self.assertEqual(stream.node_id, self.app.node_id)
        stream.abort()
        self.assertEqual(len(model.requests), 1)

    async def test_unreachable_model_is_1006(self):
        await self.app.register("SuperImage", [{"model": "edit", "api": "http://127.0.0.1:1/x", "type": 2}])
        with self.assertRaises(AICNError) as ctx:
            await self.node.image_edit(self.params())
        self.assertEqual(ctx.exception.code, ErrorCode.MODEL)
