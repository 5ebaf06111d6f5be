"""The HTTP API skeleton: envelopes, methods, validation, limits and guards."""

import json

from hypothesis import given, settings, strategies as st
from treq.testing import StubTreq
from twisted.trial.unittest import TestCase

from aicn.api.app import NodeAPI, decode_json_body, parse_chat_request, parse_number
from aicn.api.imageedit import parse_image_edit
from aicn.errors import AICNError, ErrorCode
from aicn.models.chat import chat_request_to_protobuf
from aicn.node.backend import NodeBackend

IDENTITY = {
    "peer_id": "16Uiu2HAmS4CErxrmPryJbbEX2HFQbLK8r8xCA5rmzdSU59rHc9AF",
    "protocol_version": "aicn/0.0.1",
    "agent_version": "aicn-py/test",
    "addresses": ["/ip4/127.0.0.1/tcp/6001"],
    "protocols": ["/ipfs/id/1.0.0"],
}


class RecordingBackend(NodeBackend):
    def __init__(self):
        self.registered = []
        #: (operation, timeout) of each request to another node.
        self.timeouts = []

    def identify_info(self):
        return IDENTITY

    async def register_project(self, project, models):
        self.registered.append((project, models))

    async def peer_info(self, node_id, timeout=None):
        self.timeouts.append(("peer", timeout))
        raise AICNError(ErrorCode.TIMEOUT)

    async def host_info(self, node_id, timeout=None):
        self.timeouts.append(("host", timeout))
        return {}

    async def project_peer(self, node_id, timeout=None):
        self.timeouts.append(("project", timeout))
        return []

    async def chat_completion(self, params):
        self.timeouts.append(("chat", params["timeout"]))
        self.chat_params = params
        return {}

    async def chat_completion_proxy(self, params):
        self.timeouts.append(("chat-proxy", params["timeout"]))
        return {}

    async def image_gen(self, params):
        self.timeouts.append(("image", params["timeout"]))
        return {}

    async def image_gen_proxy(self, params):
        self.timeouts.append(("image-proxy", params["timeout"]))
        return {}


NODE = "16Uiu2HAmS4CErxrmPryJbbEX2HFQbLK8r8xCA5rmzdSU59rHc9AF"
MESSAGES = [{"role": "user", "content": "hi"}]
#: The endpoints that wait for another node, with a valid body and their operation name.
REMOTE_ENDPOINTS = [
    ("/api/v0/peer", {"node_id": NODE}, "peer"),
    ("/api/v0/host/info", {"node_id": NODE}, "host"),
    ("/api/v0/ai/project/peer", {"node_id": NODE}, "project"),
    ("/api/v0/chat/completion", {"node_id": NODE, "project": "P", "model": "m", "messages": MESSAGES}, "chat"),
    ("/api/v0/chat/completion/proxy", {"project": "P", "model": "m", "messages": MESSAGES}, "chat-proxy"),
    ("/api/v0/image/gen", {"node_id": NODE, "project": "P", "model": "m", "prompt": "x"}, "image"),
    ("/api/v0/image/gen/proxy", {"project": "P", "model": "m", "prompt": "x"}, "image-proxy"),
]


class APITests(TestCase):
    def setUp(self):
        self.backend = RecordingBackend()
        self.make()

    def make(self, **kwargs):
        self.api = NodeAPI(self.backend, **kwargs)
        self.treq = StubTreq(self.api.resource())

    async def call(self, method, path, body=None, headers=None, raw=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        resp = await self.treq.request(method, "http://127.0.0.1:6000" + path, data=data, headers=headers)
        content = await resp.content()
        return resp, content

    async def test_id_is_bare_object(self):
        resp, content = await self.call("GET", "/api/v0/id")
        self.assertEqual(resp.code, 200)
        self.assertEqual(resp.headers.getRawHeaders("content-type"), ["application/json"])
        self.assertEqual(json.loads(content), IDENTITY)

    async def test_wrong_method_is_405_text(self):
        resp, content = await self.call("POST", "/api/v0/id")
        self.assertEqual(resp.code, 405)
        self.assertEqual(content, b"Method is not supported.")
        resp, content = await self.call("GET", "/api/v0/peer")
        self.assertEqual(resp.code, 405)

    async def test_unknown_path_is_json_404(self):
        resp, content = await self.call("GET", "/api/v0/nope")
        self.assertEqual(resp.code, 404)
        body = json.loads(content)
        self.assertEqual(body["code"], 1010)
        self.assertIn("/api/v0/nope", body["message"])

    async def test_malformed_json_is_1002(self):
        for raw in (b"{", b"[1,2]", b"\xff\xfe", b'"str"'):
            resp, content = await self.call("POST", "/api/v0/peer", raw=raw)
            self.assertEqual(resp.code, 200)
            self.assertEqual(json.loads(content)["code"], 1002, raw)

    async def test_missing_or_empty_field_is_1001_naming_it(self):
        for body in ({}, {"node_id": ""}, {"other": "x"}):
            resp, content = await self.call("POST", "/api/v0/peer", body)
            self.assertEqual(json.loads(content), {"code": 1001, "message": "empty node_id"})
        resp, content = await self.call("POST", "/api/v0/peer", {"node_id": 5})
        self.assertEqual(json.loads(content)["code"], 1001)

    async def test_timeout_field_reaches_the_backend(self):
        for path, body, operation in REMOTE_ENDPOINTS:
            for given, expected in ((None, None), (2.5, 2.5), (900, 900.0)):
                self.backend.timeouts.clear()
                with_timeout = body if given is None else {**body, "timeout": given}
                await self.call("POST", path, with_timeout)
                self.assertEqual(self.backend.timeouts, [(operation, expected)], path)

    async def test_bad_timeout_is_1001_naming_the_field(self):
        message = "timeout must be a number of seconds above 0 and at most 900"
        raws = ["0", "-1", "900.5", "1e9", "NaN", "Infinity", '"5"', "true", "[5]", "{}"]
        for path, body, _ in REMOTE_ENDPOINTS:
            for raw in raws:
                data = json.dumps(body)[:-1] + ', "timeout": ' + raw + "}"
                resp, content = await self.call("POST", path, raw=data.encode())
                self.assertEqual(json.loads(content), {"code": 1001, "message": message}, (path, raw))
        self.assertEqual(self.backend.timeouts, [])

    async def test_keys_match_case_insensitively(self):
        resp, content = await self.call("POST", "/api/v0/peer", {"Node_ID": "x"})
        # The field was found: the backend's own error comes back, not 1001.
        self.assertEqual(json.loads(content), {"code": 1004, "message": "Processing timeout"})

    async def test_unbuilt_endpoint_is_1010(self):
        resp, content = await self.call("GET", "/api/v0/peers")
        self.assertEqual(json.loads(content), {"code": 1010, "message": "Unsupported function"})
        resp, content = await self.call("POST", "/api/v0/swarm/peers")
        self.assertEqual(json.loads(content)["code"], 1010)

    async def test_model_endpoints_of_a_bare_backend_are_1010(self):
        # The defaults take what the routes pass: a mismatch would be a TypeError, an HTTP 500.
        self.backend = NodeBackend()
        self.make()
        chat = {"node_id": NODE, "project": "p", "model": "m", "messages": MESSAGES}
        image = {"node_id": NODE, "project": "p", "model": "m", "prompt": "a cat"}
        for path, body in (("/api/v0/chat/completion", chat), ("/api/v0/chat/completion/proxy", chat),
                           ("/api/v0/image/gen", image), ("/api/v0/image/gen/proxy", image)):
            resp, content = await self.call("POST", path, body)
            self.assertEqual((resp.code, json.loads(content)["code"]), (200, 1010), path)

    async def test_body_over_limit(self):
        self.make(max_body=64)
        resp, content = await self.call("POST", "/api/v0/peer", {"node_id": "x" * 100})
        self.assertEqual(resp.code, 413)
        self.assertEqual(json.loads(content)["code"], 1008)

    async def test_register_validation_and_success(self):
        good = {"project": "P", "models": [{"model": "m", "api": "http://127.0.0.1:1/v1", "type": 0}]}
        resp, content = await self.call("POST", "/api/v0/ai/project/register", good)
        self.assertEqual(json.loads(content), {"code": 0, "message": "ok"})
        self.assertEqual(self.backend.registered, [("P", good["models"])])
        bad_cases = [
            {"project": "", "models": good["models"]},
            {"project": "P", "models": []},
            {"project": "P", "models": [{"model": "", "api": "http://a/"}]},
            {"project": "P", "models": [{"model": "m", "api": "ftp://a/"}]},
            {"project": "P", "models": [{"model": "m", "api": "http://a/", "type": 3}]},
            {"project": "P", "models": ["m"]},
        ]
        for bad in bad_cases:
            resp, content = await self.call("POST", "/api/v0/ai/project/register", bad)
            self.assertEqual(json.loads(content)["code"], 1001, bad)
        self.assertEqual(len(self.backend.registered), 1)

    async def test_non_finite_or_huge_numbers_are_1001(self):
        # Found by the fuzz harness: int(Infinity) raised OverflowError, int(NaN) ValueError,
        # math.isfinite(10**400) OverflowError, and n = 2**31 broke the int32 protobuf field:
        # each an HTTP 500.
        image = '{"node_id": "%s", "project": "P", "model": "m", "prompt": "x", ' % NODE
        for raw in [image + '"n": Infinity}', image + '"n": -Infinity}', image + '"n": NaN}',
                    image + '"n": 1e400}', image + '"n": 2147483648}', image + '"n": %d}' % 10 ** 30,
                    image + '"timeout": 1%s}' % ("0" * 400)]:
            resp, content = await self.call("POST", "/api/v0/image/gen", raw=raw.encode())
            self.assertEqual((resp.code, json.loads(content)["code"]), (200, 1001), raw[-40:])
        for kind in (-1e300, 1e300):
            raw = '{"project": "P", "models": [{"model": "m", "api": "http://a/", "type": %r}]}' % kind
            resp, content = await self.call("POST", "/api/v0/ai/project/register", raw=raw.encode())
            self.assertEqual(json.loads(content)["code"], 1001)
        self.assertEqual(self.backend.timeouts, [])

    async def test_deeply_nested_json_is_1002(self):
        # Found by the fuzz harness: json.loads raised RecursionError (an HTTP 500).
        for raw in (b"[" * 200000, b'{"a":' * 100000):
            resp, content = await self.call("POST", "/api/v0/peer", raw=raw)
            self.assertEqual((resp.code, json.loads(content)["code"]), (200, 1002))

    async def test_lone_surrogates_arrive_as_replacement_characters(self):
        # Found by the fuzz harness: "\ud800" became a str that no UTF-8 encoder takes, so the
        # request failed later (protobuf, JSON to the model, an error message quoting it).
        raw = (b'{"node_id": "%s", "project": "P\\ud800", "model": "m", "messages": '
               b'[{"role": "user", "content": "a\\udfffb"}]}' % NODE.encode())
        resp, content = await self.call("POST", "/api/v0/chat/completion", raw=raw)
        self.assertEqual((resp.code, json.loads(content)["code"]), (200, 0))
        params = self.backend.chat_params
        self.assertEqual((params["project"], params["messages"][0]["content"]), ("P\ufffd", "a\ufffdb"))
        chat_request_to_protobuf(params["project"], params["model"], params["messages"]).SerializeToString()
        resp, content = await self.call("POST", "/api/v0/peer", raw=b'{"node_id": 1, "\\ud800": 2}')
        self.assertEqual(json.loads(content)["code"], 1001)

    async def test_unparsable_model_url_is_1001(self):
        # Found by the fuzz harness: urlsplit raised ValueError (an HTTP 500) for "http://[x".
        for api in ("http://[x/v1", "http://[::1/", "http:///v1"):
            body = {"project": "P", "models": [{"model": "m", "api": api}]}
            resp, content = await self.call("POST", "/api/v0/ai/project/register", body)
            self.assertEqual((resp.code, json.loads(content)["code"]), (200, 1001), api)
        self.assertEqual(self.backend.registered, [])

    async def test_foreign_origin_is_403(self):
        good = {"project": "P", "models": [{"model": "m", "api": "http://127.0.0.1:1/v1"}]}
        resp, content = await self.call("POST", "/api/v0/ai/project/register", good,
                                         headers={"Origin": "http://evil.example"})
        self.assertEqual(resp.code, 403)
        self.assertEqual(json.loads(content)["code"], 1009)
        self.assertEqual(self.backend.registered, [])

    async def test_token_required_when_set(self):
        self.make(token="s3cret")
        good = {"project": "P", "models": [{"model": "m", "api": "http://127.0.0.1:1/v1"}]}
        resp, content = await self.call("POST", "/api/v0/ai/project/register", good)
        self.assertEqual(resp.code, 401)
        self.assertEqual(json.loads(content)["code"], 1009)
        resp, content = await self.call("POST", "/api/v0/ai/project/register", good,
                                        headers={"Authorization": "Bearer wrong"})
        self.assertEqual(resp.code, 401)
        resp, content = await self.call("POST", "/api/v0/ai/project/register", good,
                                        headers={"Authorization": "Bearer s3cret"})
        self.assertEqual(json.loads(content)["code"], 0)
        # Reads need no token.
        resp, content = await self.call("GET", "/api/v0/id")
        self.assertEqual(resp.code, 200)

    @settings(max_examples=40, deadline=None)
    @given(st.binary(max_size=200))
    def test_garbage_bodies_get_an_envelope(self, raw):
        d = self.call("POST", "/api/v0/host/info", raw=raw)
        from twisted.internet.defer import Deferred

        results = []
        Deferred.fromCoroutine(d).addCallback(results.append)
        resp, content = results[0]
        self.assertEqual(resp.code, 200)
        self.assertIn(json.loads(content)["code"], (1001, 1002, 1010))


class HugeNumberTests(TestCase):
    """Found by the fuzz harness: JSON numbers that int() or float() cannot convert raised
    OverflowError / ValueError (an HTTP 500) instead of the request's parsing error."""

    def code(self, fn, *args, **kwargs) -> int:
        with self.assertRaises(AICNError) as caught:
            fn(*args, **kwargs)
        return caught.exception.code

    def test_number(self):
        for raw in (b"1e400", b"-1e400", b"NaN", b"Infinity", b"1.5"):
            body = decode_json_body(b'{"number": %s}' % raw)
            self.assertEqual(self.code(parse_number, body, 20), ErrorCode.PARSING, raw)
        self.assertEqual(parse_number(decode_json_body(b'{"number": 3.0}'), 20), 3)

    def test_temperature(self):
        for raw in (b"1" + b"0" * 400, b"Infinity", b"NaN"):
            body = decode_json_body(b'{"project": "P", "model": "m", "temperature": %s, '
                                    b'"messages": [{"role": "user", "content": "x"}]}' % raw)
            self.assertEqual(self.code(parse_chat_request, body, need_node=False), ErrorCode.PARAMETER, raw)

    def test_image_edit_fields(self):
        huge = "1" + "0" * 400
        body = b'{"prompt": "x", "image": "aGk=", "width": %s, "step": 2.5}' % huge.encode()
        params = parse_image_edit(b"application/json", body, {"project": "P", "model": "m"}, need_node=False)
        self.assertEqual(dict(params["fields"])["width"], huge)
        self.assertEqual(dict(params["fields"])["step"], "2.5")
