"""The HTTP API in both shapes: the spec's (v0.1.2) and Go v0.2.3's, every v0.2.3 route.

A backend with canned answers stands behind the real Klein app; each route is
called in each shape (the default, the ``X-AICN-API`` header, a path prefix,
``API.Envelope``), by GET and POST where either version uses them, with
query parameters and JSON bodies, and its failures are checked for their
HTTP status and renumbered code.
"""

from __future__ import annotations

import base64
import json

from treq.testing import StubTreq
from twisted.trial.unittest import TestCase

from aicn.api.app import NodeAPI
from aicn.errors import AICNError, ErrorCode
from aicn.models.imageedit import encode_multipart
from aicn.node.backend import NodeBackend
from aicn.node.modelstream import Answer

NODE = "16Uiu2HAmS4CErxrmPryJbbEX2HFQbLK8r8xCA5rmzdSU59rHc9AF"
OTHER = "16Uiu2HAm49H3Hcae8rxKBdw8PfFcFAnBXQS8ierXA1VoZwhdDadV"
BOOT = "/ip4/127.0.0.1/tcp/7001/p2p/" + OTHER
IDENTITY = {"peer_id": NODE, "protocol_version": "aicn/0.0.1", "agent_version": "aicn-py/test",
            "addresses": ["/ip4/127.0.0.1/tcp/6001"], "protocols": ["/ipfs/id/1.0.0"]}
HOST = {"os": {"os": "linux"}, "cpu": [], "memory": {"total_physical_bytes": 1, "total_usable_bytes": 1},
        "disk": [], "gpu": []}
CHAT = {"created": 1718691167, "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"},
                                             "finish_reason": "stop"}],
        "usage": {"completion_tokens": 1, "prompt_tokens": 2, "total_tokens": 3}}
IMAGE = {"ipfs_node": "http://127.0.0.1:5001", "choices": [{"cid": "QmCid1", "image_name": "a.png"}]}
EDITED = {"created": 7, "data": [{"b64_json": "aGk="}]}
SWARM = [{"id": "x-1", "peer": OTHER, "addr": "/ip4/127.0.0.1/tcp/7001", "latency": "1ms",
          "direction": "Outbound"}]
ADDRS = [{"peer": OTHER, "addrs": ["/ip4/127.0.0.1/tcp/7001"]}]
MESSAGES = [{"role": "user", "content": "Hello"}]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24


class CannedBackend(NodeBackend):
    """Answers every operation; records what reached it in ``calls``."""

    def __init__(self):
        self.calls = []
        self.projects = ["DecentralGPT", "SuperImage"] + [f"P{i}" for i in range(150)]
        self.peer_ids = [f"{OTHER}{i}" for i in range(60)]

    def _record(self, name, *args):
        self.calls.append((name, *args))

    def identify_info(self):
        return IDENTITY

    async def collected_peers(self):
        return [NODE, OTHER]

    async def peer_info(self, node_id, timeout=None):
        self._record("peer", node_id, timeout)
        if node_id == "slow":
            raise AICNError(ErrorCode.TIMEOUT)
        return IDENTITY

    async def host_info(self, node_id, timeout=None):
        if node_id == "partial":
            raise AICNError(ErrorCode.HOST_INFO, "no GPU facts", data=HOST)
        return HOST

    async def rendezvous_peers(self):
        return [OTHER]

    async def chat_completion(self, params):
        self._record("chat", params)
        return CHAT

    async def chat_completion_proxy(self, params):
        self._record("chat-proxy", params)
        return Answer(CHAT, OTHER)

    async def image_gen(self, params):
        self._record("image", params)
        return IMAGE

    async def image_gen_proxy(self, params):
        self._record("image-proxy", params)
        return Answer(IMAGE, OTHER)

    async def image_edit(self, params):
        self._record("edit", params)
        return EDITED

    async def image_edit_proxy(self, params):
        self._record("edit-proxy", params)
        return Answer(EDITED, OTHER)

    async def projects_list(self):
        return self.projects[:100]

    async def projects_models(self, project):
        self._record("models", project)
        return ["Qwen2-72B", "Llama3-70B"]

    async def projects_peers(self, project, model):
        self._record("peers", project, model)
        return self.peer_ids

    async def projects_peers_detail(self, project, model):
        self._record("peers-detail", project, model)
        return [{"node_id": n, "connectivity": 1, "latency": 89121, "idle": 0, "cid": "c"}
                for n in self.peer_ids]

    async def register_project(self, project, models):
        self._record("register", project, models)

    async def unregister_project(self, project):
        return None if project == "DecentralGPT" else "Project not existed"

    async def project_peer(self, node_id, timeout=None):
        return [{"project": "DecentralGPT", "models": ["Llama3-70B"]}]

    async def register_model(self, project, model):
        self._record("register-model", project, model)

    async def unregister_model(self, project, model, cid):
        self._record("unregister-model", project, model, cid)
        return None if model == "Llama3-70B" else "not existed"

    async def swarm_peers(self):
        return SWARM

    async def swarm_addrs(self):
        return ADDRS

    async def swarm_connect(self, addr):
        self._record("connect", addr)

    async def swarm_disconnect(self, addr):
        self._record("disconnect", addr)

    async def pubsub_peers(self):
        return [OTHER]

    async def bootstrap_list(self):
        return [BOOT]

    async def bootstrap_add(self, addr):
        self._record("bootstrap-add", addr)
        if addr.endswith("/tcp/1"):
            raise AICNError(ErrorCode.INTERNAL, "Internal server error: dial failed")

    async def bootstrap_remove(self, addr):
        self._record("bootstrap-rm", addr)


def multipart(fields, files, boundary="XyZzY"):
    """A multipart/form-data body written by hand (independently of aicn's encoder)."""
    out = []
    for name, filename, ctype, data in files:
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                   f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n")
    for name, value in fields:
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                   f"{value}\r\n".encode())
    out.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(out)


class Base(TestCase):
    envelope = "v0.1.2"

    def setUp(self):
        self.backend = CannedBackend()
        self.make()

    def make(self, **kwargs):
        kwargs.setdefault("envelope", self.envelope)
        self.api = NodeAPI(self.backend, **kwargs)
        self.treq = StubTreq(self.api.resource())
        # As APISite (tested below): bodies are left to the API, forms are not pre-parsed.
        self.treq._agent._serverFactory._parsePOSTFormSubmission = False

    async def call(self, method, path, body=None, *, shape=None, headers=None, raw=None, prefix=""):
        headers = dict(headers or {})
        if shape is not None:
            headers["X-AICN-API"] = shape
        if raw is None and body is not None:
            raw = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        resp = await self.treq.request(method, "http://127.0.0.1:6000" + prefix + path, data=raw,
                                       headers=headers)
        content = await resp.content()
        return resp, content

    async def json(self, method, path, body=None, **kwargs):
        resp, content = await self.call(method, path, body, **kwargs)
        return resp.code, json.loads(content)


def ok(data=None):
    """The spec's success envelope."""
    return {"code": 0, "message": "ok"} if data is None else {"code": 0, "message": "ok", "data": data}


#: v0.2.3's answer to an action.
DONE = {"message": "ok"}
B64 = base64.b64encode(PNG).decode()
CHAT_BODY = {"project": "P", "model": "m", "messages": MESSAGES}
LLAMA = {"Model": "Llama3-70B", "API": "", "Type": 0, "CID": "", "Idle": 0}
PEER_INFO = {"node_id": OTHER + "0", "connectivity": 1, "latency": 89121, "Idle": 0, "cid": "c"}
REGISTER = {"project": "P",
            "models": [{"model": "m", "api": "http://127.0.0.1:1/v1", "type": 0, "cid": "d15c"}]}
REGISTER_MODEL = {"project": "P", "model": "m", "api": "http://127.0.0.1:1/v1", "type": 2, "cid": "d15c"}

#: Every route with a valid request: (method, path, body) → (spec body, v0.2.3 body).
ROUTES = [
    ("GET", "/api/v0/id", None, IDENTITY, IDENTITY),
    ("GET", "/api/v0/peers", None, ok([NODE, OTHER]), {"data": [NODE, OTHER]}),
    ("POST", "/api/v0/peer", {"node_id": OTHER}, ok(IDENTITY), IDENTITY),
    ("POST", "/api/v0/host/info", {"node_id": OTHER}, ok(HOST), HOST),
    ("GET", "/api/v0/rendezvous/peers", None, ok([OTHER]), {"data": [OTHER]}),
    ("POST", "/api/v0/chat/completion", {"node_id": OTHER, **CHAT_BODY}, ok(CHAT),
     {"id": "", "object": "", **CHAT}),
    ("POST", "/api/v0/chat/completion/proxy", CHAT_BODY, ok(CHAT), {"id": "", "object": "", **CHAT}),
    ("POST", "/api/v0/image/gen", {"node_id": OTHER, "project": "P", "model": "m", "prompt": "a bird"},
     ok(IMAGE), {"data": [{"url": "ipfs://QmCid1"}]}),
    ("POST", "/api/v0/image/gen/proxy", {"project": "P", "model": "m", "prompt": "a bird"},
     ok(IMAGE), {"data": [{"url": "ipfs://QmCid1"}]}),
    ("POST", f"/api/v0/image/edit?node_id={OTHER}&project=P&model=m", {"prompt": "p", "image": B64},
     ok(EDITED), EDITED),
    ("POST", "/api/v0/image/edit/proxy?project=P&model=m", {"prompt": "p", "image": B64}, ok(EDITED), EDITED),
    ("GET", "/api/v0/ai/projects/list?number=2", None, ok(["DecentralGPT", "SuperImage"]),
     {"data": ["DecentralGPT", "SuperImage"]}),
    ("GET", "/api/v0/ai/projects/models?project=DecentralGPT", None, ok(["Qwen2-72B", "Llama3-70B"]),
     {"data": ["Qwen2-72B", "Llama3-70B"]}),
    ("GET", "/api/v0/ai/projects/peers?project=P&model=m&number=1", None, ok([OTHER + "0"]),
     {"data": [PEER_INFO]}),
    ("POST", "/api/v0/ai/project/register", REGISTER, ok(), DONE),
    ("POST", "/api/v0/ai/project/unregister", {"project": "DecentralGPT"}, ok(), DONE),
    ("POST", "/api/v0/ai/project/peer", {"node_id": OTHER},
     ok([{"project": "DecentralGPT", "models": ["Llama3-70B"]}]), {"data": {"DecentralGPT": [LLAMA]}}),
    ("POST", "/api/v0/ai/model/register", REGISTER_MODEL, ok(), DONE),
    ("POST", "/api/v0/ai/model/unregister", {"project": "P", "model": "Llama3-70B", "cid": "d15c"}, ok(),
     DONE),
    ("GET", "/api/v0/swarm/peers", None, SWARM, SWARM),
    ("POST", "/api/v0/swarm/peers", None, SWARM, SWARM),
    ("GET", "/api/v0/swarm/addrs", None, ADDRS, ADDRS),
    ("POST", "/api/v0/swarm/addrs", None, ADDRS, ADDRS),
    ("POST", "/api/v0/swarm/connect", {"node_addr": BOOT}, ok(), DONE),
    ("POST", "/api/v0/swarm/disconnect", {"node_addr": BOOT}, ok(), DONE),
    ("GET", "/api/v0/pubsub/peers", None, [OTHER], [OTHER]),
    ("POST", "/api/v0/pubsub/peers", None, [OTHER], [OTHER]),
    ("GET", "/api/v0/bootstrap/list", None, ok([BOOT]), {"data": [BOOT]}),
    ("POST", "/api/v0/bootstrap/add", {"node_addr": BOOT}, ok(), DONE),
    ("POST", "/api/v0/bootstrap/rm", {"node_addr": BOOT}, ok(), DONE),
]


class EveryRouteTests(Base):
    async def check_all(self, shape_of_call, expect_v023: bool, **kwargs):
        for method, path, body, spec, v023 in ROUTES:
            resp, content = await self.call(method, path, body, **shape_of_call, **kwargs)
            self.assertEqual(resp.code, 200, (path, content))
            self.assertEqual(json.loads(content), v023 if expect_v023 else spec, (method, path))
            if path.startswith("/api/v0/"):
                shape = "v0.2.3" if expect_v023 else "v0.1.2"
                self.assertEqual(resp.headers.getRawHeaders("X-AICN-API"), [shape])

    async def test_spec_shape_by_default(self):
        await self.check_all({}, False)

    async def test_v023_shape_by_header(self):
        await self.check_all({"shape": "v0.2.3"}, True)

    async def test_v023_shape_by_path_prefix(self):
        await self.check_all({"prefix": "/v0.2.3"}, True)

    async def test_v023_shape_by_config_and_spec_by_header_or_prefix(self):
        self.make(envelope="v0.2.3")
        await self.check_all({}, True)
        await self.check_all({"shape": "v0.1.2"}, False)
        await self.check_all({"prefix": "/v0.1.2", "shape": "v0.2.3"}, False)  # the prefix wins

    async def test_header_values(self):
        for value in ("V0.2.3", " 0.2.3 ", "v0.2.3"):
            code, body = await self.json("GET", "/api/v0/peers", shape=value)
            self.assertEqual(body, {"data": [NODE, OTHER]}, value)
        resp, content = await self.call("GET", "/api/v0/peers", shape="v0.3")
        self.assertEqual(resp.code, 400)
        message = "X-AICN-API must be v0.1.2 or v0.2.3, not 'v0.3'"
        self.assertEqual(json.loads(content), {"code": 1001, "message": message})
        # Outside /api/v0 the header means nothing.
        resp, _ = await self.call("GET", "/v1/models", shape="v0.3")
        self.assertNotEqual(resp.code, 400)
        self.assertIsNone(resp.headers.getRawHeaders("X-AICN-API"))

    async def test_bad_envelope_setting(self):
        with self.assertRaises(ValueError):
            NodeAPI(self.backend, envelope="v0.2")

    async def test_proxy_answers_name_their_node(self):
        for path, body in (("/api/v0/chat/completion/proxy", CHAT_BODY),
                           ("/api/v0/image/gen/proxy", {"project": "P", "model": "m", "prompt": "x"})):
            for shape in ("v0.1.2", "v0.2.3"):
                resp, _ = await self.call("POST", path, body, shape=shape)
                self.assertEqual(resp.headers.getRawHeaders("X-AICN-Node"), [OTHER])


class SiteTests(TestCase):
    def test_api_site_leaves_forms_to_the_api(self):
        from aicn.api.site import APISite

        self.assertFalse(APISite(NodeAPI(CannedBackend()).resource())._parsePOSTFormSubmission)


class ErrorTests(Base):
    async def both(self, method, path, body=None, **kwargs):
        spec = await self.json(method, path, body, shape="v0.1.2", **kwargs)
        v023 = await self.json(method, path, body, shape="v0.2.3", **kwargs)
        return spec, v023

    async def test_parameter_and_parsing_errors_are_400(self):
        spec, v023 = await self.both("POST", "/api/v0/peer", {})
        self.assertEqual(spec, (200, {"code": 1001, "message": "empty node_id"}))
        self.assertEqual(v023, (400, {"code": 1001, "message": "empty node_id"}))
        spec, v023 = await self.both("POST", "/api/v0/peer", raw=b"{")
        self.assertEqual((spec[0], spec[1]["code"]), (200, 1002))
        self.assertEqual((v023[0], v023[1]["code"]), (400, 1002))

    async def test_timeout_is_504_and_renumbered(self):
        spec, v023 = await self.both("POST", "/api/v0/peer", {"node_id": "slow"})
        self.assertEqual(spec, (200, {"code": 1004, "message": "Processing timeout"}))
        self.assertEqual(v023, (504, {"code": 1005, "message": "Processing timeout"}))

    async def test_unsupported_is_500_and_renumbered(self):
        self.backend = NodeBackend()
        self.make()
        spec, v023 = await self.both("GET", "/api/v0/peers")
        self.assertEqual(spec, (200, {"code": 1010, "message": "Unsupported function"}))
        self.assertEqual(v023, (500, {"code": 1011, "message": "Unsupported function"}))

    async def test_partial_host_info_is_flattened(self):
        spec, v023 = await self.both("POST", "/api/v0/host/info", {"node_id": "partial"})
        self.assertEqual(spec, (200, {"code": 1011, "message": "no GPU facts", "data": HOST}))
        self.assertEqual(v023, (500, {**HOST, "code": 1012, "message": "no GPU facts"}))

    async def test_internal_error_in_the_action(self):
        spec, v023 = await self.both("POST", "/api/v0/bootstrap/add", {"node_addr": "/ip4/1.2.3.4/tcp/1"})
        self.assertEqual(spec, (200, {"code": 5000, "message": "Internal server error: dial failed"}))
        self.assertEqual(v023, (500, {"code": 5000, "message": "Internal server error: dial failed"}))

    async def test_http_errors_keep_their_status(self):
        self.make(max_body=64)
        spec, v023 = await self.both("POST", "/api/v0/peer", {"node_id": "x" * 100})
        self.assertEqual((spec[0], spec[1]["code"]), (413, 1008))
        self.assertEqual((v023[0], v023[1]["code"]), (413, 1009))
        self.make(token="s3cret")
        body = {"project": "P", "model": "m", "api": "http://127.0.0.1:1/v1"}
        spec, v023 = await self.both("POST", "/api/v0/ai/model/register", body)
        self.assertEqual((spec[0], spec[1]["code"]), (401, 1009))
        self.assertEqual((v023[0], v023[1]["code"]), (401, 1010))
        self.make()
        for path, body in (("/api/v0/ai/model/register", body), ("/api/v0/ai/model/unregister", body),
                           ("/api/v0/bootstrap/add", {"node_addr": BOOT}),
                           ("/api/v0/bootstrap/rm", {"node_addr": BOOT})):
            spec, v023 = await self.both("POST", path, body, headers={"Origin": "http://evil.example"})
            self.assertEqual((spec[0], spec[1]["code"]), (403, 1009), path)
            self.assertEqual((v023[0], v023[1]["code"]), (403, 1010), path)
        self.assertEqual([c for c in self.backend.calls if c[0] != "peer"], [])

    async def test_method_and_path_errors(self):
        for shape, text in (("v0.1.2", b"Method is not supported."), ("v0.2.3", b"405 method not allowed")):
            for method, path in (("GET", "/api/v0/bootstrap/add"), ("POST", "/api/v0/bootstrap/list"),
                                 ("GET", "/api/v0/image/edit"), ("GET", "/api/v0/ai/model/register"),
                                 ("PUT", "/api/v0/swarm/peers")):
                resp, content = await self.call(method, path, shape=shape)
                self.assertEqual((resp.code, content), (405, text), (shape, method, path))
        resp, content = await self.call("GET", "/api/v0/nope", shape="v0.2.3")
        self.assertEqual((resp.code, content), (404, b"404 page not found"))
        resp, content = await self.call("GET", "/api/v0/nope")
        self.assertEqual((resp.code, json.loads(content)["code"]), (404, 1010))

    async def test_proxy_failure_data_stays_a_list(self):
        attempts = [{"node_id": OTHER, "code": 1004, "message": "Processing timeout"}]

        async def failing(params):
            raise AICNError(ErrorCode.PROXY, "All nodes failed in 1 requests", data=attempts)

        self.backend.chat_completion_proxy = failing
        spec, v023 = await self.both("POST", "/api/v0/chat/completion/proxy", CHAT_BODY)
        message = "All nodes failed in 1 requests"
        self.assertEqual(spec[1], {"code": 1016, "message": message, "data": attempts})
        self.assertEqual(v023, (500, {"code": 1017, "message": message, "data": attempts}))


class ProjectListingTests(Base):
    async def test_query_and_body_forms(self):
        # v0.2.3: GET with the query; the spec: POST with a JSON body; a body field wins over the query.
        for method, path, body in (("GET", "/api/v0/ai/projects/models?project=DecentralGPT", None),
                                   ("POST", "/api/v0/ai/projects/models", {"project": "DecentralGPT"}),
                                   ("POST", "/api/v0/ai/projects/models?project=X",
                                    {"project": "DecentralGPT"})):
            self.backend.calls.clear()
            code, reply = await self.json(method, path, body)
            self.assertEqual(reply["data"], ["Qwen2-72B", "Llama3-70B"])
            self.assertEqual(self.backend.calls, [("models", "DecentralGPT")], (method, path))
        code, reply = await self.json("GET", "/api/v0/ai/projects/peers?project=P&model=m")
        self.assertEqual(self.backend.calls[-1], ("peers", "P", "m"))
        code, reply = await self.json("POST", "/api/v0/ai/projects/peers", {"project": "P"})
        self.assertEqual(self.backend.calls[-1], ("peers", "P", ""))

    async def test_number(self):
        cases = [("", 100), ("?number=0", 100), ("?number=5", 5), ("?number=500", 152)]
        for query, expected in cases:
            code, reply = await self.json("GET", "/api/v0/ai/projects/list" + query)
            # The backend gives 100 at most; number only shortens it.
            self.assertEqual(len(reply["data"]), min(expected, 100), query)
        for query, count in (("", 20), ("&number=3", 3), ("&number=1000", 60)):
            code, reply = await self.json("GET", "/api/v0/ai/projects/peers?project=P&model=m" + query,
                                          shape="v0.2.3")
            self.assertEqual(len(reply["data"]), count, query)
        code, reply = await self.json("GET", "/api/v0/ai/projects/peers?project=P&model=m")
        self.assertEqual(len(reply["data"]), 60)  # the spec's default: all (100 at most)
        code, reply = await self.json("POST", "/api/v0/ai/projects/models", {"project": "P", "number": 1})
        self.assertEqual(reply["data"], ["Qwen2-72B"])

    async def test_bad_number(self):
        for query, status, code, message in (
                ("?number=x", 400, 1002, "Parsing error: number must be an integer"),
                ("?number=1.5", 400, 1002, "Parsing error: number must be an integer"),
                ("?number=-1", 400, 1001, "invalid number")):
            got = await self.json("GET", "/api/v0/ai/projects/list" + query, shape="v0.2.3")
            self.assertEqual(got, (status, {"code": code, "message": message}), query)
            got = await self.json("GET", "/api/v0/ai/projects/list" + query)
            self.assertEqual(got, (200, {"code": code, "message": message}), query)
        got = await self.json("POST", "/api/v0/ai/projects/models", {"project": "P", "number": "2"})
        self.assertEqual(got[1]["data"], ["Qwen2-72B", "Llama3-70B"])
        got = await self.json("POST", "/api/v0/ai/projects/models", {"project": "P", "number": True})
        self.assertEqual(got[1]["code"], 1002)

    async def test_missing_project(self):
        for path in ("/api/v0/ai/projects/models", "/api/v0/ai/projects/peers?model=m"):
            got = await self.json("GET", path, shape="v0.2.3")
            self.assertEqual(got, (400, {"code": 1001, "message": "empty project"}), path)

    async def test_list_ignores_a_body_that_is_no_object(self):
        code, reply = await self.call("POST", "/api/v0/ai/projects/list", raw=b"not json")
        self.assertEqual(len(json.loads(reply)["data"]), 100)
        code, reply = await self.json("POST", "/api/v0/ai/projects/list", {"number": 1})
        self.assertEqual(reply["data"], ["DecentralGPT"])


class RegistrationTests(Base):
    async def test_project_register_keeps_cid(self):
        body = {"project": "P", "models": [
            {"model": "a", "api": "http://127.0.0.1:1/v1"},
            {"Model": "b", "API": "http://127.0.0.1:2/v1", "Type": 1, "CID": "d15c"}]}
        await self.json("POST", "/api/v0/ai/project/register", body)
        self.assertEqual(self.backend.calls, [("register", "P", [
            {"model": "a", "api": "http://127.0.0.1:1/v1", "type": 0},
            {"model": "b", "api": "http://127.0.0.1:2/v1", "type": 1, "cid": "d15c"}])])

    async def test_model_register_as_go_marshals_it(self):
        # A Go client marshals types.AIModelRegister: capitalised keys.
        body = {"Project": "P", "Model": "m", "API": "http://127.0.0.1:1042/v1/images/edits", "Type": 2,
                "CID": "d15c4007271b"}
        code, reply = await self.json("POST", "/api/v0/ai/model/register", body, shape="v0.2.3")
        self.assertEqual((code, reply), (200, {"message": "ok"}))
        self.assertEqual(self.backend.calls, [("register-model", "P", {
            "model": "m", "api": "http://127.0.0.1:1042/v1/images/edits", "type": 2, "cid": "d15c4007271b"})])

    async def test_model_register_validation(self):
        good = {"project": "P", "model": "m", "api": "http://127.0.0.1:1/v1"}
        for bad, message in (({**good, "project": ""}, "empty project"),
                             ({**good, "model": ""}, "empty model"),
                             ({**good, "api": "ftp://x/"}, "api must be an http(s) URL"),
                             ({**good, "type": 3}, "type must be 0, 1 or 2"),
                             ({**good, "cid": 5}, "cid must be a string")):
            got = await self.json("POST", "/api/v0/ai/model/register", bad, shape="v0.2.3")
            self.assertEqual(got, (400, {"code": 1001, "message": message}), bad)
        self.assertEqual(self.backend.calls, [])

    async def test_model_unregister(self):
        got = await self.json("POST", "/api/v0/ai/model/unregister", {"project": "P", "model": "other"})
        self.assertEqual(got, (200, {"code": 0, "message": "not existed"}))
        self.assertEqual(self.backend.calls, [("unregister-model", "P", "other", "")])
        got = await self.json("POST", "/api/v0/ai/model/unregister", {"project": "P", "model": "x"},
                              shape="v0.2.3")
        self.assertEqual(got, (200, {"message": "not existed"}))
        got = await self.json("POST", "/api/v0/ai/model/unregister", {"project": "P"}, shape="v0.2.3")
        self.assertEqual(got, (400, {"code": 1001, "message": "empty model"}))

    async def test_project_unregister_unknown(self):
        got = await self.json("POST", "/api/v0/ai/project/unregister", {"project": "X"}, shape="v0.2.3")
        self.assertEqual(got, (200, {"message": "Project not existed"}))


class ModelRequestTests(Base):
    async def test_chat_takes_v023_fields(self):
        parts = [{"type": "text", "text": "What is this?"},
                 {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
        body = {"node_id": OTHER, "project": "P", "model": "m", "cid": "d15c", "wallet": "w",
                "signature": "s", "hash": "h", "temperature": 0.5, "top_p": 1,
                "messages": [{"role": "user", "content": parts}]}
        await self.json("POST", "/api/v0/chat/completion", body, shape="v0.2.3")
        params = self.backend.calls[-1][1]
        self.assertEqual(params["messages"], [{"role": "user", "content": parts}])
        self.assertEqual((params["cid"], params["wallet"], params["signature"], params["hash"]),
                         ("d15c", "w", "s", "h"))
        self.assertEqual(params["options"], {"temperature": 0.5, "top_p": 1})

    async def test_chat_content_parts_are_validated(self):
        base = {"node_id": OTHER, "project": "P", "model": "m"}
        for content, message in (
                ([{"type": "video"}], "messages[0].content[0].type must be text, image_url or input_audio"),
                ([{"type": "image_url"}], "messages[0].content[0].image_url must be an object"),
                (["x"], "messages[0].content[0] must be an object"),
                (5, "messages[0].content must be a string or an array of content parts")):
            body = {**base, "messages": [{"role": "user", "content": content}]}
            got = await self.json("POST", "/api/v0/chat/completion", body, shape="v0.2.3")
            self.assertEqual(got, (400, {"code": 1001, "message": message}))
        got = await self.json("POST", "/api/v0/chat/completion",
                              {**base, "temperature": "hot", "messages": MESSAGES})
        self.assertEqual(got[1], {"code": 1001, "message": "temperature must be a number"})

    async def test_image_gen_takes_v023_fields(self):
        body = {"node_id": OTHER, "project": "P", "model": "m", "prompt": "a bird", "n": 2,
                "size": "1024x1024", "width": 1024, "height": 1024, "response_format": "b64_json", "cid": "c",
                "step": 20}
        await self.json("POST", "/api/v0/image/gen", body)
        params = self.backend.calls[-1][1]
        self.assertEqual((params["width"], params["height"], params["response_format"], params["cid"],
                          params["step"], params["n"]), (1024, 1024, "b64_json", "c", 20, 2))
        for bad, message in (({"response_format": "png"}, "response_format must be url or b64_json"),
                             ({"width": -1}, "width must not be negative")):
            got = await self.json("POST", "/api/v0/image/gen", {**body, **bad}, shape="v0.2.3")
            self.assertEqual(got, (400, {"code": 1001, "message": message}))

    async def test_image_gen_answer_already_in_v023_shape_passes(self):
        async def v023_image(params):
            return {"created": 5, "data": [{"b64_json": "aGk="}]}

        self.backend.image_gen = v023_image
        got = await self.json("POST", "/api/v0/image/gen", {"node_id": OTHER, "project": "P", "model": "m",
                                                            "prompt": "x"}, shape="v0.2.3")
        self.assertEqual(got, (200, {"created": 5, "data": [{"b64_json": "aGk="}]}))


TIMEOUT_MESSAGE = "timeout must be a number of seconds above 0 and at most 900"


class ImageEditTests(Base):
    QUERY = "/api/v0/image/edit?node_id=" + OTHER + "&project=SuperImage&model=superImage&cid=d15c"

    async def test_multipart_as_go_documents_it(self):
        fields = [("prompt", "a red bird"), ("model", "superImage"), ("n", "2"), ("size", "512x512"),
                  ("response_format", "b64_json")]
        files = [("image", "bird.png", "image/png", PNG), ("mask", "mask.png", "image/png", PNG[:20])]
        ctype, raw = multipart(fields, files)
        for shape in ("v0.1.2", "v0.2.3"):
            resp, content = await self.call("POST", self.QUERY + "&wallet=w", raw=raw, shape=shape,
                                            headers={"Content-Type": ctype})
            self.assertEqual(resp.code, 200, content)
        params = self.backend.calls[-1][1]
        routing = [params[name] for name in ("node_id", "project", "model", "cid", "wallet")]
        self.assertEqual(routing, [OTHER, "SuperImage", "superImage", "d15c", "w"])
        self.assertEqual((params["fields"], params["files"]), (fields, files))
        self.assertIsNone(params["timeout"])

    async def test_parts_without_a_name_are_skipped(self):
        # Found by the fuzz harness: werkzeug names such parts None, and writing the form for the model
        # then raised AttributeError (an HTTP 500).  Go's ReadForm skips them.
        nameless = (b'--XyZzY\r\nContent-Disposition: form-data; filename="x.png"\r\nContent-Type: image/png'
                    b"\r\n\r\n" + PNG + b"\r\n--XyZzY\r\nContent-Disposition: form-data\r\n\r\nvalue\r\n")
        ctype, raw = multipart([("prompt", "p")], [("image", "a.png", "image/png", PNG)])
        resp, content = await self.call("POST", self.QUERY, raw=nameless + raw,
                                        headers={"Content-Type": ctype})
        self.assertEqual(resp.code, 200, content)
        params = self.backend.calls[-1][1]
        self.assertEqual((params["fields"], params["files"]),
                         ([("model", "superImage"), ("prompt", "p")], [("image", "a.png", "image/png", PNG)]))
        encode_multipart(params["fields"], params["files"])

    async def test_json_with_base64_images(self):
        b64 = base64.b64encode(PNG).decode()
        body = {"node_id": OTHER, "project": "SuperImage", "model": "superImage", "prompt": "a red bird",
                "image": ["data:image/png;base64," + b64, b64], "mask": b64, "n": 1, "timeout": 30}
        got = await self.json("POST", "/api/v0/image/edit", body, shape="v0.2.3")
        self.assertEqual(got, (200, EDITED))
        params = self.backend.calls[-1][1]
        self.assertEqual(params["timeout"], 30.0)
        self.assertEqual(params["fields"], [("model", "superImage"), ("prompt", "a red bird"), ("n", "1")])
        self.assertEqual(params["files"], [("image", "image.png", "image/png", PNG),
                                           ("image", "image1.png", "image/png", PNG),
                                           ("mask", "mask.png", "image/png", PNG)])

    async def test_proxy_needs_no_node(self):
        body = {"prompt": "p", "image": base64.b64encode(PNG).decode()}
        got = await self.json("POST", "/api/v0/image/edit/proxy?project=P&model=m", body, shape="v0.2.3")
        self.assertEqual(got, (200, EDITED))
        self.assertEqual(self.backend.calls[-1][0], "edit-proxy")
        self.assertEqual(self.backend.calls[-1][1]["node_id"], "")

    async def test_validation(self):
        b64 = base64.b64encode(PNG).decode()
        good = {"prompt": "p", "image": b64}
        cases = [
            ("/api/v0/image/edit?project=P&model=m", good, "empty node_id"),
            ("/api/v0/image/edit?node_id=x&model=m", good, "empty project"),
            ("/api/v0/image/edit?node_id=x&project=P", good, "empty model"),
            (self.QUERY, {"image": b64}, "empty prompt"),
            (self.QUERY, {"prompt": "p"}, "empty image"),
            (self.QUERY, {**good, "image": "not base64!"}, "image is not valid base64"),
            (self.QUERY, {**good, "image": ""}, "image must be a base64 string"),
            (self.QUERY, {**good, "image": "data:image/png,abc"}, "image must be a base64 data URL"),
            (self.QUERY, {**good, "n": 0}, "n must be an integer of at least 1"),
            (self.QUERY, {**good, "response_format": "gif"}, "response_format must be url or b64_json"),
            (self.QUERY, {**good, "timeout": 0}, TIMEOUT_MESSAGE),
            (self.QUERY + "&timeout=x", good, TIMEOUT_MESSAGE),
            (self.QUERY, {**good, "size": [1]}, "size must be a string or a number"),
        ]
        for path, body, message in cases:
            for shape, status in (("v0.1.2", 200), ("v0.2.3", 400)):
                got = await self.json("POST", path, body, shape=shape)
                self.assertEqual(got, (status, {"code": 1001, "message": message}), (path, body))
        ctype, raw = multipart([("prompt", "p")], [("image", "a.png", "image/png", b"")])
        got = await self.json("POST", self.QUERY, raw=raw, headers={"Content-Type": ctype}, shape="v0.2.3")
        self.assertEqual(got, (400, {"code": 1001, "message": "empty image"}))
        self.assertEqual(self.backend.calls, [])

    async def test_unreadable_bodies(self):
        for shape, status in (("v0.1.2", 200), ("v0.2.3", 422)):
            got = await self.json("POST", self.QUERY, raw=b"--nope\r\nbroken", shape=shape,
                                  headers={"Content-Type": "multipart/form-data; boundary=XyZzY"})
            self.assertEqual((got[0], got[1]["code"]), (status, 1001), shape)
            got = await self.json("POST", self.QUERY, raw=b"x", shape=shape,
                                  headers={"Content-Type": "multipart/form-data"})
            message = "multipart/form-data without a boundary"
            self.assertEqual(got, (status, {"code": 1001, "message": message}))
        for shape in ("v0.1.2", "v0.2.3"):
            got = await self.json("POST", self.QUERY, raw=PNG, shape=shape,
                                  headers={"Content-Type": "image/png"})
            self.assertEqual(got, (415, {"code": 1001, "message": "image/edit takes multipart/form-data or "
                                                                   "application/json, not image/png"}))
        got = await self.json("POST", self.QUERY, raw=b"{", shape="v0.2.3",
                              headers={"Content-Type": "application/json"})
        self.assertEqual((got[0], got[1]["code"]), (400, 1002))
        # Found by the fuzz harness: nested JSON raised RecursionError (an HTTP 500).
        got = await self.json("POST", self.QUERY, raw=b"[" * 100000, shape="v0.2.3",
                              headers={"Content-Type": "application/json"})
        self.assertEqual(got, (400, {"code": 1002, "message": "Parsing error: JSON nested too deeply"}))

    async def test_body_cap_is_its_own(self):
        self.make(max_body=1024, image_edit_max_body=64 * 1024)
        big = PNG + b"\x00" * 30000
        ctype, raw = multipart([("prompt", "p")], [("image", "a.png", "image/png", big)])
        self.assertGreater(len(raw), 1024)
        resp, content = await self.call("POST", self.QUERY, raw=raw, headers={"Content-Type": ctype})
        self.assertEqual(json.loads(content)["code"], 0)
        self.assertEqual(self.backend.calls[-1][1]["files"][0][3], big)
        ctype, raw = multipart([("prompt", "p")], [("image", "a.png", "image/png", big * 3)])
        for shape, code in (("v0.1.2", 1008), ("v0.2.3", 1009)):
            got = await self.json("POST", self.QUERY, raw=raw, headers={"Content-Type": ctype}, shape=shape)
            self.assertEqual(got, (413, {"code": code, "message": "request body exceeds 65536 bytes"}))
        # Other endpoints keep the general cap.
        got = await self.json("POST", "/api/v0/peer", {"node_id": "x" * 2000})
        self.assertEqual(got[0], 413)
