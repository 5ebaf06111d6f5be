"""The OpenAI-compatible API (``/v1``): its shapes, on pure functions and on
one real in-process node (HTTP over loopback) serving small in-test model
servers.  Routing between nodes is in tests.integration.test_openai."""

from __future__ import annotations

import base64
import json

import treq
from hypothesis import given, settings, strategies as st
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from aicn.api.errors import HTTPError
from aicn.api.openai import (
    OpenAIError,
    SSEParser,
    chunks_from_completion,
    convert_events,
    decode_request_body,
    normalize_chunk,
    normalize_completion,
    openai_error,
)
from aicn.errors import AICNError, ErrorCode
from aicn.models.http import body_ended_cleanly
from aicn.node.openairoute import (
    AmbiguousModel,
    CatalogEntry,
    ModelRejected,
    NoNodeAvailable,
    RouteFailed,
    UnknownModel,
    resolve_model,
)
from tests.integration.modelnet import (
    MESSAGES,
    FakeChatModel,
    StreamingClient,
    dead_model_url,
    eventually,
    start_node,
)
from tests.models.fakeipfs import FakeKubo, fake_cid
from tests.models.servers import NOT_DONE_YET, json_reply, serve

#: The project of these tests.
P = "P"
NODE_A = "16Uiu2HAmS4CErxrmPryJbbEX2HFQbLK8r8xCA5rmzdSU59rHc9AF"
NODE_B = "16Uiu2HAm9Wtr3Tb5axKMqaJeKSn1vmkNwYAeXMHpNMpx1aRnpxyf"


def sse_data(body: bytes) -> list[dict]:
    """The JSON events of an OpenAI SSE body; asserts the exact framing and the final [DONE]."""
    assert body.endswith(b"data: [DONE]\n\n"), body[-200:]
    events = body[: -len(b"data: [DONE]\n\n")].split(b"\n\n")
    assert events[-1] == b"", events[-1:]
    out = []
    for event in events[:-1]:
        assert event.startswith(b"data: {") and b"\n" not in event, event
        out.append(json.loads(event[len(b"data: "):]))
    return out


# -- pure functions ---------------------------------------------------------------------------------


class SSEParserTests(TestCase):
    STREAM = (b'data: {"a":1}\n\n: a comment\n\ndata: {"b":2}\r\n\r\nevent: x\ndata: line1\ndata: line2\n\n'
              b"data:[DONE]\n\n")
    EVENTS = [b'{"a":1}', b'{"b":2}', b"line1\nline2", b"[DONE]"]

    def test_events_of_a_whole_stream(self):
        self.assertEqual(SSEParser().feed(self.STREAM), self.EVENTS)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
    def test_any_split_gives_the_same_events(self, cuts):
        parser = SSEParser()
        out, last = [], 0
        for cut in sorted(cuts) + [len(self.STREAM)]:
            out += parser.feed(self.STREAM[last:cut])
            last = cut
        self.assertEqual(out + parser.close(), self.EVENTS)

    def test_last_event_without_blank_line_comes_at_close(self):
        parser = SSEParser()
        self.assertEqual(parser.feed(b'data: {"a":1}\n\ndata: {"b"'), [b'{"a":1}'])
        self.assertEqual(parser.feed(b":2}"), [])
        self.assertEqual(parser.close(), [b'{"b":2}'])

    def test_oversized_event_is_refused(self):
        parser = SSEParser()
        with self.assertRaises(ValueError):
            parser.feed(b"data: " + b"x" * (1024 * 1024 + 1))
        with self.assertRaises(ValueError):
            for _ in range(3):
                parser.feed(b"data: " + b"x" * 400_000 + b"\n")


class ShapeTests(TestCase):
    def test_completion_filled_in_and_dbc_envelope_dropped(self):
        reply = {"code": 0, "message": "ok", "created": 1718691167,
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"},
                              "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
                 "system_fingerprint": "fp"}
        self.assertEqual(normalize_completion(reply, "P/tiny", "chatcmpl-x", 99), {
            "id": "chatcmpl-x", "object": "chat.completion", "created": 1718691167, "model": "P/tiny",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "logprobs": None,
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
            "system_fingerprint": "fp"})

    def test_completion_keeps_the_models_id_and_extra_fields(self):
        reply = {"id": "chatcmpl-model", "object": "chat.completion", "created": "bad",
                 "choices": [{"message": {"content": None, "tool_calls": [{"id": "t"}]},
                              "finish_reason": "tool_calls"}, "junk"]}
        out = normalize_completion(reply, "P/m", "chatcmpl-x", 99)
        self.assertEqual((out["id"], out["created"]), ("chatcmpl-model", 99))
        message = {"content": None, "tool_calls": [{"id": "t"}], "role": "assistant"}
        self.assertEqual(out["choices"], [{"index": 0, "message": message, "logprobs": None,
                                           "finish_reason": "tool_calls"}])
        self.assertNotIn("usage", out)

    def test_chunk_filled_in(self):
        event = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": "w1"}}]}
        self.assertEqual(normalize_chunk(event, "P/tiny", "chatcmpl-x", 7), {
            "id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 7, "model": "P/tiny",
            "choices": [{"index": 0, "delta": {"content": "w1"}, "logprobs": None, "finish_reason": None}]})
        usage = {"id": "c", "created": 5, "choices": [], "usage": {"total_tokens": 3}}
        self.assertEqual(normalize_chunk(usage, "P/tiny", "x", 7)["usage"], {"total_tokens": 3})
        self.assertIsNone(normalize_chunk([1], "P/tiny", "x", 7))
        self.assertIsNone(normalize_chunk(None, "P/tiny", "x", 7))

    def test_error_event_passes_as_openai_error(self):
        event = {"error": {"message": "boom", "type": "server_error"}}
        self.assertEqual(normalize_chunk(event, "P/m", "x", 1),
                         {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}})
        self.assertEqual(normalize_chunk({"error": "boom"}, "P/m", "x", 1)["error"]["message"], "boom")

    def test_chunks_from_completion(self):
        completion = normalize_completion(
            {"choices": [{"message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
             "usage": {"total_tokens": 2}}, "P/m", "chatcmpl-x", 5)
        chunks = chunks_from_completion(completion, include_usage=True)
        self.assertEqual(chunks, [
            {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 5, "model": "P/m",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "logprobs": None,
                          "finish_reason": "stop"}]},
            {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 5, "model": "P/m",
             "choices": [], "usage": {"total_tokens": 2}}])
        self.assertEqual(len(chunks_from_completion(completion, include_usage=False)), 1)

    def test_bodies_and_events_that_json_loads_cannot_take(self):
        # Found by the fuzz harness: json.loads raised RecursionError for deep nesting (an HTTP 500,
        # or a relay callback failing mid-stream), and a lone surrogate made _dumps fail to encode.
        for raw in (b"[" * 100000, b'{"a":' * 50000):
            with self.assertRaises(OpenAIError) as caught:
                decode_request_body(raw)
            self.assertEqual(caught.exception.status, 400)
        self.assertEqual(decode_request_body(b'{"model": "\\ud800"}'), {"model": "\ufffd"})
        events = [b"[" * 100000, b'{"choices": [{"delta": {"content": "a\\ud800"}}]}', b"[DONE]"]
        out, skipped = convert_events(events, "P/m", "chatcmpl-x", 5)
        self.assertEqual(skipped, 1)
        self.assertEqual(json.loads(out[len(b"data: "):])["choices"][0]["delta"], {"content": "a\ufffd"})

    def test_numbers_int_cannot_take_or_math_cannot_convert(self):
        # Found by the fuzz harness: math.isfinite(10**400) raises OverflowError (a model's "created").
        reply = {"created": 10 ** 400, "choices": [{"index": 10 ** 400}, {"index": float("inf")}]}
        out = normalize_completion(reply, "P/m", "x", 5)
        self.assertEqual((out["created"], [c["index"] for c in out["choices"]]), (10 ** 400, [10 ** 400, 1]))
        event = {"created": float("nan"), "choices": [{"index": -(10 ** 400)}]}
        chunk = normalize_chunk(event, "P/m", "x", 5)
        self.assertEqual((chunk["created"], chunk["choices"][0]["index"]), (5, -(10 ** 400)))

    def test_error_statuses(self):
        cases = [
            (UnknownModel("x"), 404, "invalid_request_error", "model_not_found"),
            (AmbiguousModel("m", ["A/m", "B/m"]), 400, "invalid_request_error", "model_ambiguous"),
            (ModelRejected(400, "bad max_tokens"), 400, "invalid_request_error", None),
            (ModelRejected(422, "bad", {"type": "validation", "code": "c"}), 400, "validation", "c"),
            (ModelRejected(413, "too long"), 413, "invalid_request_error", None),
            (NoNodeAvailable("cooling", 2.5), 503, "server_error", "no_node_available"),
            (RouteFailed(("P", "m"), [{"node_id": NODE_A, "code": 1006, "message": "down"}]), 502,
             "server_error", "upstream_error"),
            (RouteFailed(("P", "m"), [{"node_id": NODE_A, "code": 1004, "message": "slow"}]), 504,
             "server_error", "timeout"),
            (HTTPError(ErrorCode.BUFFER, "big", status=413), 413, "invalid_request_error",
             "request_too_large"),
            (AICNError(ErrorCode.PARAMETER, "bad"), 400, "invalid_request_error", None),
            (AICNError(ErrorCode.TIMEOUT), 504, "server_error", "timeout"),
            (AICNError(ErrorCode.UPLOAD, "ipfs"), 502, "server_error", "upstream_error"),
            (AICNError(ErrorCode.UNSUPPORTED), 501, "server_error", "not_implemented"),
            (AICNError(ErrorCode.INTERNAL), 500, "server_error", None),
        ]
        for err, status, kind, code in cases:
            out = openai_error(err)
            self.assertEqual((out.status, out.type, out.code), (status, kind, code), err)
            self.assertEqual(set(out.to_json()["error"]), {"message", "type", "param", "code"})
        self.assertEqual(openai_error(NoNodeAvailable("cooling", 2.5)).headers, ((b"Retry-After", b"3"),))
        self.assertEqual(openai_error(UnknownModel("x")).param, "model")


class ResolveTests(TestCase):
    ENTRIES = [CatalogEntry("P", "tiny", (NODE_A,), 1), CatalogEntry("Q", "tiny", (NODE_B,), 1),
               CatalogEntry("P", "solo", (NODE_A, NODE_B), 1), CatalogEntry("org", "a/b", (NODE_B,), 1)]

    def test_by_id_and_unique_bare_name(self):
        self.assertEqual(resolve_model("P/tiny", self.ENTRIES), ("P", "tiny"))
        self.assertEqual(resolve_model("Q/tiny", self.ENTRIES), ("Q", "tiny"))
        self.assertEqual(resolve_model("solo", self.ENTRIES), ("P", "solo"))
        self.assertEqual(resolve_model("org/a/b", self.ENTRIES), ("org", "a/b"))
        self.assertEqual(resolve_model("a/b", self.ENTRIES), ("org", "a/b"))

    def test_ambiguous_and_unknown(self):
        with self.assertRaises(AmbiguousModel) as caught:
            resolve_model("tiny", self.ENTRIES)
        self.assertEqual(caught.exception.ids, ["P/tiny", "Q/tiny"])
        for name in ("nope", "P/nope", "tiny/P", ""):
            self.assertRaises(UnknownModel, resolve_model, name, self.ENTRIES)

    def test_a_pinned_node_narrows_and_may_name_models_we_never_heard_of(self):
        self.assertEqual(resolve_model("tiny", self.ENTRIES, NODE_B), ("Q", "tiny"))
        self.assertEqual(resolve_model("solo", self.ENTRIES, NODE_B), ("P", "solo"))
        self.assertEqual(resolve_model("R/new", self.ENTRIES, NODE_A), ("R", "new"))
        self.assertRaises(UnknownModel, resolve_model, "new", self.ENTRIES, NODE_A)


# -- one node, real HTTP -------------------------------------------------------------------------------


def models_reply(request) -> bytes:
    """A model answer with OpenAI's own fields (as llama-cpp-python's)."""
    body = json.loads(request.content.read())
    return json_reply(request, json.dumps({
        "id": "chatcmpl-abc", "object": "chat.completion", "created": 1700000000, "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "logprobs": None,
                     "finish_reason": "length"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": body.get("max_tokens", 9),
                  "total_tokens": 4 + body.get("max_tokens", 9)}}).encode())


class OneNodeCase(TestCase):
    timeout = 60

    async def start(self, **kwargs):
        self.node = await start_node(self, **kwargs)
        return self.node

    async def v1(self, method: str, path: str, body=None, headers=None, raw: bytes | None = None):
        """``(response, decoded JSON body)``."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        resp = await treq.request(method, self.node.api + "/v1" + path, data=data, persistent=False,
                                  headers={"Content-Type": "application/json", **(headers or {})})
        content = await resp.content()
        try:
            return resp, json.loads(content)
        except ValueError:
            self.fail(f"not JSON ({resp.code}): {content[:300]!r}")

    def assertError(self, resp, body, status, kind, code=None, param=None):
        self.assertEqual(resp.code, status, body)
        self.assertEqual(resp.headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(set(body), {"error"}, body)
        self.assertEqual(set(body["error"]), {"message", "type", "param", "code"}, body)
        self.assertEqual((body["error"]["type"], body["error"]["code"]), (kind, code), body)
        self.assertIsInstance(body["error"]["message"], str)
        self.assertTrue(body["error"]["message"])
        if param is not None:
            self.assertEqual(body["error"]["param"], param, body)

    def chat(self, model="P/tiny", **extra):
        return {"model": model, "messages": MESSAGES, **extra}

    async def fake_model(self, handler=None, project=P, name="tiny", **kwargs):
        fake = handler if handler is not None else FakeChatModel(**kwargs)
        base, resource = await serve(self, fake)
        await self.node.register(project, name, base + "/v1/chat/completions")
        return fake, resource


class ModelsTests(OneNodeCase):
    async def test_models_list_shape(self):
        await self.start()
        resp, body = await self.v1("GET", "/models")
        self.assertEqual((resp.code, body), (200, {"object": "list", "data": []}))
        await self.fake_model()
        await self.fake_model(project="Other", name="big")
        started = int(reactor.seconds())
        resp, body = await self.v1("GET", "/models")
        self.assertEqual(resp.code, 200)
        self.assertEqual(body["object"], "list")
        self.assertEqual([m["id"] for m in body["data"]], ["Other/big", "P/tiny"])
        for model in body["data"]:
            self.assertEqual(set(model), {"id", "object", "created", "owned_by"})
            self.assertEqual(model["object"], "model")
            self.assertEqual(model["owned_by"], model["id"].split("/")[0])
            self.assertLessEqual(abs(model["created"] - started), 2)
        # created is when the node first saw the model: stable.
        _, again = await self.v1("GET", "/models")
        self.assertEqual(again, body)
        resp, one = await self.v1("GET", "/models/P/tiny")
        self.assertEqual((resp.code, one), (200, body["data"][1]))
        resp, err = await self.v1("GET", "/models/P/nope")
        self.assertError(resp, err, 404, "invalid_request_error", "model_not_found", "model")

    async def test_unknown_path_and_method(self):
        await self.start()
        resp, body = await self.v1("GET", "/nope")
        self.assertError(resp, body, 404, "invalid_request_error", "unknown_url")
        self.assertIn("/v1/nope", body["error"]["message"])
        resp, body = await self.v1("POST", "/models")
        self.assertError(resp, body, 405, "invalid_request_error")
        resp, body = await self.v1("GET", "/chat/completions")
        self.assertError(resp, body, 405, "invalid_request_error")
        # The spec API keeps its own conventions.
        resp = await treq.get(self.node.api + "/api/v0/nope", persistent=False)
        self.assertEqual(json.loads(await resp.content())["code"], 1010)


class AuthTests(OneNodeCase):
    async def test_token_required_as_bearer(self):
        await self.start(api_token="s3cret")
        await self.fake_model(models_reply)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"},
                        {"Authorization": "Bearer"}):
            for method, path, body in (("GET", "/models", None), ("POST", "/chat/completions", self.chat()),
                                       ("GET", "/models/P/tiny", None)):
                resp, err = await self.v1(method, path, body, headers)
                self.assertError(resp, err, 401, "invalid_request_error", "invalid_api_key")
                self.assertEqual(resp.headers.getRawHeaders(b"www-authenticate"), [b'Bearer realm="aicn"'])
        good = {"Authorization": "Bearer s3cret"}
        resp, body = await self.v1("GET", "/models", headers=good)
        self.assertEqual([m["id"] for m in body["data"]], ["P/tiny"])
        resp, body = await self.v1("POST", "/chat/completions", self.chat(), good)
        self.assertEqual(resp.code, 200)

    async def test_without_token_any_key_passes(self):
        await self.start()
        for headers in ({}, {"Authorization": "Bearer whatever"}):
            resp, _ = await self.v1("GET", "/models", headers=headers)
            self.assertEqual(resp.code, 200)


class ChatTests(OneNodeCase):
    async def test_non_stream_shape_and_body_passed_to_the_model(self):
        node = await self.start()
        _, resource = await self.fake_model(models_reply)
        extra = {"max_tokens": 5, "temperature": 0.2, "top_p": 0.5, "stop": ["\n"], "user": "u1"}
        for name in ("P/tiny", "tiny"):
            resp, body = await self.v1("POST", "/chat/completions", self.chat(name, **extra))
            self.assertEqual(resp.code, 200, body)
            self.assertEqual(resp.headers.getRawHeaders(b"x-aicn-node"), [node.peer_id.encode()])
            self.assertEqual(body, {
                "id": "chatcmpl-abc", "object": "chat.completion", "created": 1700000000, "model": "P/tiny",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "logprobs": None,
                             "finish_reason": "length"}],
                "usage": {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}})
            # The model got the client's body, model renamed to its registered name.
            self.assertEqual(json.loads(resource.requests[-1][3]),
                             {"model": "tiny", "messages": MESSAGES, **extra})

    async def test_dbc_contract_model(self):
        """A model of the DBC contract ({code, message, created, choices, usage}, no id)."""
        await self.start()
        await self.fake_model()
        resp, body = await self.v1("POST", "/chat/completions", self.chat())
        self.assertEqual(resp.code, 200, body)
        self.assertTrue(body.pop("id").startswith("chatcmpl-"))
        self.assertEqual(body, {
            "object": "chat.completion", "created": 1718691167, "model": "P/tiny",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "logprobs": None,
                         "finish_reason": "stop"}],
            "usage": {"completion_tokens": 3, "prompt_tokens": 5, "total_tokens": 8}})

    async def test_stream_chunks_arrive_incrementally_in_openai_format(self):
        node = await self.start()
        fake, _ = await self.fake_model(hold=True, chunks=4)
        client = StreamingClient()
        response = await client.post(node.api + "/v1/chat/completions", self.chat("tiny", stream=True))
        self.assertEqual(response.code, 200)
        self.assertEqual(client.header(b"content-type"), "text/event-stream; charset=utf-8")
        self.assertEqual(client.header(b"x-aicn-node"), node.peer_id)
        await eventually(lambda: b"\n\n" in client.data)
        # The first chunk is through while the model is still generating.
        self.assertEqual(len(fake.waiting), 1)
        first = json.loads(client.data.split(b"\n\n")[0][len(b"data: "):])
        self.assertEqual(first["choices"][0]["delta"], {"content": "w0"})
        fake.release()
        self.assertTrue(body_ended_cleanly(await client.ended))
        events = sse_data(client.data)
        self.assertEqual([e["choices"][0]["delta"]["content"] for e in events], ["w0", "w1", "w2", "w3"])
        ids = {e["id"] for e in events}
        self.assertEqual(len(ids), 1)
        self.assertTrue(ids.pop().startswith("chatcmpl-"))
        for e in events:
            self.assertEqual(list(e), ["id", "object", "created", "model", "choices"])
            self.assertEqual((e["object"], e["model"]), ("chat.completion.chunk", "P/tiny"))
            self.assertEqual(e["choices"], [{"index": 0, "delta": e["choices"][0]["delta"], "logprobs": None,
                                             "finish_reason": None}])
        self.assertEqual(fake.bodies[0], {"model": "tiny", "messages": MESSAGES, "stream": True})

    async def test_stream_answered_with_json_becomes_chunks(self):
        node = await self.start()
        await self.fake_model(models_reply)
        client = StreamingClient()
        response = await client.post(node.api + "/v1/chat/completions",
                                     self.chat(stream=True, stream_options={"include_usage": True},
                                               max_tokens=2))
        self.assertEqual(response.code, 200)
        self.assertTrue(body_ended_cleanly(await client.ended))
        events = sse_data(client.data)
        self.assertEqual([e["choices"] for e in events], [
            [{"index": 0, "delta": {"role": "assistant", "content": "hi"}, "logprobs": None,
              "finish_reason": "length"}], []])
        self.assertEqual(events[1]["usage"], {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6})

    async def test_stream_broken_mid_way_ends_with_an_error_event(self):
        node = await self.start()

        def breaking(request):
            request.setHeader(b"content-type", b"text/event-stream")
            request.write(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n')
            reactor.callLater(0.05, request.transport.abortConnection)
            return NOT_DONE_YET

        await self.fake_model(breaking)
        client = StreamingClient()
        await client.post(node.api + "/v1/chat/completions", self.chat(stream=True))
        self.assertFalse(body_ended_cleanly(await client.ended))
        events = client.data.split(b"\n\n")
        self.assertEqual(json.loads(events[0][6:])["choices"][0]["delta"], {"content": "a"})
        error = json.loads(events[1][6:])["error"]
        self.assertEqual((error["type"], error["code"]), ("server_error", "upstream_error"))
        self.assertNotIn(b"[DONE]", client.data)
        # The node failed the stream: it cools down.
        self.assertEqual(node.service.node.selector.failures(node.peer_id, (P, "tiny")), 1)

    async def test_client_leaving_a_stream_closes_the_model_connection(self):
        node = await self.start()
        fake, resource = await self.fake_model(hold=True)
        client = StreamingClient()
        await client.post(node.api + "/v1/chat/completions", self.chat(stream=True))
        await eventually(lambda: b"\n\n" in client.data)
        self.assertFalse(resource.dropped.called)
        client.pump.abort()
        await resource.dropped  # the model server sees its connection closed
        self.assertEqual(node.service.node.selector.failures(node.peer_id, (P, "tiny")), 0)

    async def test_client_leaving_a_non_stream_request_closes_the_model_connection(self):
        node = await self.start()
        _, resource = await self.fake_model(lambda request: NOT_DONE_YET)
        d = treq.post(node.api + "/v1/chat/completions", json.dumps(self.chat()).encode(), persistent=False)
        await eventually(lambda: resource.requests)
        self.assertFalse(resource.dropped.called)
        d.cancel()
        with self.assertRaises(Exception):
            await d
        await resource.dropped
        self.assertEqual(node.service.node.selector.failures(node.peer_id, (P, "tiny")), 0)

    async def test_bad_requests_are_400_naming_the_param(self):
        await self.start()
        await self.fake_model(models_reply)
        cases = [
            ({"messages": MESSAGES}, "model"),
            ({"model": 5, "messages": MESSAGES}, "model"),
            ({"model": "P/tiny"}, "messages"),
            ({"model": "P/tiny", "messages": []}, "messages"),
            ({"model": "P/tiny", "messages": "hi"}, "messages"),
            ({"model": "P/tiny", "messages": ["hi"]}, "messages[0]"),
            ({"model": "P/tiny", "messages": [{"content": "hi"}]}, "messages[0].role"),
            ({"model": "P/tiny", "messages": MESSAGES, "stream": "yes"}, "stream"),
        ]
        for body, param in cases:
            resp, err = await self.v1("POST", "/chat/completions", body)
            self.assertError(resp, err, 400, "invalid_request_error", param=param)
        for raw in (b"{", b"[1]", b"\xff", b"", b'{"model": "P/tiny", "messages": [], "temperature": NaN}',
                    b"[" * 100000):  # the fuzz harness found a RecursionError (an HTTP 500) for that one
            resp, err = await self.v1("POST", "/chat/completions", raw=raw)
            self.assertError(resp, err, 400, "invalid_request_error")
        resp, err = await self.v1("POST", "/chat/completions", raw=b'{"x": "' + b"a" * (1024 * 1024) + b'"}')
        self.assertError(resp, err, 413, "invalid_request_error", "request_too_large")

    async def test_unknown_and_ambiguous_models(self):
        await self.start()
        await self.fake_model(models_reply)
        await self.fake_model(models_reply, project="Other")
        resp, err = await self.v1("POST", "/chat/completions", self.chat("nope"))
        self.assertError(resp, err, 404, "invalid_request_error", "model_not_found", "model")
        self.assertIn("`nope`", err["error"]["message"])
        resp, err = await self.v1("POST", "/chat/completions", self.chat("tiny"))
        self.assertError(resp, err, 400, "invalid_request_error", "model_ambiguous", "model")
        self.assertIn("Other/tiny, P/tiny", err["error"]["message"])
        resp, body = await self.v1("POST", "/chat/completions", self.chat("Other/tiny"))
        self.assertEqual((resp.code, body["model"]), (200, "Other/tiny"))

    async def test_model_rejecting_the_request_is_passed_on_without_cool_down(self):
        node = await self.start()

        def rejecting(request):
            return json_reply(request, json.dumps({"error": {"message": "max_tokens is too large", "type":
                                                             "invalid_request_error", "param": "max_tokens",
                                                             "code": "bad_max"}}).encode(), status=400)

        await self.fake_model(rejecting)
        for stream in (False, True):
            resp, err = await self.v1("POST", "/chat/completions", self.chat(max_tokens=10**9, stream=stream))
            self.assertError(resp, err, 400, "invalid_request_error", "bad_max", "max_tokens")
            self.assertEqual(err["error"]["message"], "max_tokens is too large")
        self.assertEqual(node.service.node.selector.failures(node.peer_id, (P, "tiny")), 0)

    async def test_model_down_is_502_then_503_while_cooling_down(self):
        node = await self.start()
        await node.register(P, "tiny", dead_model_url())
        for stream in (False, True):
            node.service.node.selector.succeeded(node.peer_id, (P, "tiny"))
            resp, err = await self.v1("POST", "/chat/completions", self.chat(stream=stream))
            self.assertError(resp, err, 502, "server_error", "upstream_error")
            self.assertIn(node.peer_id, err["error"]["message"])
            resp, err = await self.v1("POST", "/chat/completions", self.chat(stream=stream))
            self.assertError(resp, err, 503, "server_error", "no_node_available")
            self.assertEqual(resp.headers.getRawHeaders(b"retry-after"), [b"2"])

    async def test_model_error_statuses_are_502(self):
        node = await self.start()

        def failing(request):
            error = {"error": {"message": "out of memory", "type": "internal_server_error"}}
            return json_reply(request, json.dumps(error).encode(), status=500)

        await self.fake_model(failing)
        resp, err = await self.v1("POST", "/chat/completions", self.chat())
        self.assertError(resp, err, 502, "server_error", "upstream_error")
        self.assertIn("500: out of memory", err["error"]["message"])
        self.assertEqual(node.service.node.selector.failures(node.peer_id, (P, "tiny")), 1)

    async def test_a_large_error_body_is_read_bounded(self):
        await self.start()
        await self.fake_model(lambda request: json_reply(request, b"x" * 300_000, status=503))
        resp, err = await self.v1("POST", "/chat/completions", self.chat())
        self.assertError(resp, err, 502, "server_error", "upstream_error")
        self.assertIn("503: xxx", err["error"]["message"])
        self.assertLess(len(err["error"]["message"]), 1000)

    async def test_an_oversized_sse_event_ends_the_stream_with_an_error(self):
        node = await self.start()

        def huge(request):
            request.setHeader(b"content-type", b"text/event-stream")
            request.write(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n')
            request.write(b"data: " + b"x" * (1024 * 1024 + 10))
            return NOT_DONE_YET

        await self.fake_model(huge)
        client = StreamingClient()
        await client.post(node.api + "/v1/chat/completions", self.chat(stream=True))
        self.assertFalse(body_ended_cleanly(await client.ended))
        events = client.data.split(b"\n\n")
        self.assertEqual(json.loads(events[0][6:])["choices"][0]["delta"], {"content": "a"})
        self.assertIn("bad SSE from the model", json.loads(events[1][6:])["error"]["message"])
        self.assertEqual(node.service.node.selector.failures(node.peer_id, (P, "tiny")), 1)

    async def test_model_too_slow_is_504(self):
        await self.start(app_config={"RequestTimeout": "300ms"})
        _, resource = await self.fake_model(lambda request: NOT_DONE_YET)
        resp, err = await self.v1("POST", "/chat/completions", self.chat())
        self.assertError(resp, err, 504, "server_error", "timeout")
        await resource.dropped  # the node gave up on the model's connection too

    async def test_pinned_node(self):
        node = await self.start()
        await self.fake_model(models_reply)
        resp, body = await self.v1("POST", "/chat/completions", self.chat(), {"X-AICN-Node": node.peer_id})
        self.assertEqual(resp.code, 200)
        self.assertEqual(resp.headers.getRawHeaders(b"x-aicn-node"), [node.peer_id.encode()])
        for model in ("P/tiny", "unknown"):
            resp, err = await self.v1("POST", "/chat/completions", self.chat(model), {"X-AICN-Node": "not-a-node"})
            self.assertError(resp, err, 400, "invalid_request_error")
            self.assertIn("X-AICN-Node", err["error"]["message"])


class ImageTests(OneNodeCase):
    IMAGES = {"bird-1.png": b"\x89PNG first", "bird-2.png": b"\x89PNG second"}

    async def start_images(self):
        kubo = FakeKubo()
        kubo_url, _ = await serve(self, kubo)
        node = await self.start(ipfs_api=kubo_url)
        image_dir = self.mktemp()
        import os
        os.makedirs(image_dir)

        def image_model(request):
            body = json.loads(request.content.read())
            data = []
            for name in list(self.IMAGES)[: body["n"]]:
                path = os.path.abspath(os.path.join(image_dir, name))
                with open(path, "wb") as f:
                    f.write(self.IMAGES[name])
                data.append({"url": path})
            return json_reply(request, json.dumps({"code": 0, "message": "ok", "data": data}).encode())

        base, resource = await serve(self, image_model)
        await node.register("SuperImage", "painter", base + "/v1/images/generations", kind=1)
        return node, resource

    async def test_urls_and_b64_json(self):
        node, resource = await self.start_images()
        request = {"model": "painter", "prompt": "a bird", "n": 2, "size": "32x24"}
        resp, body = await self.v1("POST", "/images/generations", request)
        self.assertEqual(resp.code, 200, body)
        self.assertEqual(resp.headers.getRawHeaders(b"x-aicn-node"), [node.peer_id.encode()])
        self.assertEqual(set(body), {"created", "data"})
        self.assertLessEqual(abs(body["created"] - reactor.seconds()), 2)
        self.assertEqual(body["data"], [{"url": f"ipfs://{fake_cid(data)}"} for data in self.IMAGES.values()])
        self.assertEqual(json.loads(resource.requests[0][3]), {"project": "SuperImage", "model": "painter",
                                                                "prompt": "a bird", "n": 2, "size": "32x24"})
        resp, body = await self.v1("POST", "/images/generations", {**request, "n": 1,
                                                                   "response_format": "b64_json"})
        self.assertEqual(resp.code, 200, body)
        self.assertEqual(body["data"], [{"b64_json": base64.b64encode(self.IMAGES["bird-1.png"]).decode()}])

    async def test_images_a_go_v023_worker_answered_inline(self):
        # A Go v0.2.3 worker answers with its model's b64_json or URL, no IPFS CID.
        node, _ = await self.start_images()

        async def v023_answer(project, model, params, *, pin=None):
            return node.peer_id, {"ipfs_node": "", "created": 5, "choices": [
                {"cid": "", "image_name": "", "b64_json": "QUJD"},
                {"cid": "", "image_name": "", "url": "https://example.com/1.png"}]}

        self.patch(node.service.node, "generate_images", v023_answer)
        for response_format in ("b64_json", "url"):
            resp, body = await self.v1("POST", "/images/generations", {"model": "painter", "prompt": "a bird",
                                                                       "response_format": response_format})
            self.assertEqual(resp.code, 200, body)
            self.assertEqual(body["data"], [{"b64_json": "QUJD"}, {"url": "https://example.com/1.png"}])

    async def test_bad_image_requests(self):
        await self.start_images()
        cases = [({"prompt": "x"}, "model"), ({"model": "painter"}, "prompt"),
                 ({"model": "painter", "prompt": "x", "n": 0}, "n"),
                 ({"model": "painter", "prompt": "x", "n": 11}, "n"),
                 ({"model": "painter", "prompt": "x", "n": True}, "n"),
                 ({"model": "painter", "prompt": "x", "response_format": "png"}, "response_format")]
        for request, param in cases:
            resp, err = await self.v1("POST", "/images/generations", request)
            self.assertError(resp, err, 400, "invalid_request_error", param=param)
        resp, err = await self.v1("POST", "/images/generations", {"model": "nope", "prompt": "x"})
        self.assertError(resp, err, 404, "invalid_request_error", "model_not_found")
