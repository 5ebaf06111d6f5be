"""Chat model client against small in-test model servers."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from aicn.errors import AICNError, ErrorCode
from aicn.models.chat import (
    ChatResult,
    chat_completion,
    chat_request_from_protobuf,
    chat_request_to_protobuf,
    open_chat_stream,
    parse_chat_reply,
)
from aicn.models.errors import ModelError
from aicn.models.http import make_http_client, read_body
from aicn.wire import protocol_pb2 as pb
from aicn.wire import protocol_v023_pb2 as pb23

from .servers import NOT_DONE_YET, json_reply, serve

LLAMA_REPLY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1718691167,
    "model": "tiny",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "logprobs": None,
                 "finish_reason": "length"}],
    "usage": {"prompt_tokens": 22, "completion_tokens": 44, "total_tokens": 66},
}
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Hello"}]
SPEC_SHAPE = {
    "created": 1718691167,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "length"}],
    "usage": {"completion_tokens": 44, "prompt_tokens": 22, "total_tokens": 66},
}
#: The spec's shape and the model's id and object (kept for Go v0.2.3's shape and wire).
MODEL_SHAPE = dict(SPEC_SHAPE, id="chatcmpl-1", object="chat.completion")


class ChatCompletionTests(TestCase):
    async def call(self, handler, **kw):
        url, resource = await serve(self, handler)
        client = make_http_client(reactor)
        try:
            result = await chat_completion(client, url + "/v1/chat/completions", "tiny", MESSAGES,
                                           reactor=reactor, **kw)
        except ModelError as exc:
            return exc, resource
        return result, resource

    async def test_happy_path(self):
        result, resource = await self.call(lambda r: json_reply(r, json.dumps(LLAMA_REPLY).encode()))
        self.assertEqual(result.to_json(), MODEL_SHAPE)
        method, uri, headers, body = resource.requests[0]
        self.assertEqual((method, uri), (b"POST", b"/v1/chat/completions"))
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(json.loads(body), {"model": "tiny", "messages": MESSAGES, "stream": False})

    async def test_non_200_with_model_message(self):
        exc, _ = await self.call(lambda r: json_reply(r, b'{"error": {"message": "model overloaded"}}', 503))
        self.assertIsInstance(exc, AICNError)
        self.assertEqual(exc.code, ErrorCode.MODEL)
        self.assertEqual(exc.message, "Post HTTP request error, 503: model overloaded")

    async def test_non_200_plain(self):
        exc, _ = await self.call(lambda r: json_reply(r, b"oops", 500, b"text/plain"))
        self.assertEqual(exc.message, "Post HTTP request error, 500")

    async def test_not_json(self):
        exc, _ = await self.call(lambda r: json_reply(r, b"<html>", 200, b"text/html"))
        self.assertEqual((exc.code, exc.message), (ErrorCode.MODEL, "Model HTTP response is not JSON"))

    async def test_model_code_honoured(self):
        exc, _ = await self.call(lambda r: json_reply(r, b'{"code": 5001, "message": "no GPU left"}'))
        self.assertEqual((exc.code, exc.message, exc.model_code), (ErrorCode.MODEL, "no GPU left", 5001))
        self.assertEqual(exc.to_json(), {"code": 1006, "message": "no GPU left"})

    async def test_model_code_zero_is_success(self):
        reply = dict(LLAMA_REPLY, code=0, message="ok")
        result, _ = await self.call(lambda r: json_reply(r, json.dumps(reply).encode()))
        self.assertEqual(result.to_json(), MODEL_SHAPE)

    async def test_timeout_aborts_the_request(self):
        exc, resource = await self.call(lambda r: NOT_DONE_YET, timeout=0.3)
        self.assertEqual((exc.code, exc.message), (ErrorCode.MODEL, "Post HTTP request error, timeout"))
        await resource.dropped  # the model server saw the connection go

    async def test_timeout_during_body(self):
        def slow_body(request):
            request.setHeader(b"content-type", b"application/json")
            request.write(b'{"created": ')
            return NOT_DONE_YET

        exc, resource = await self.call(slow_body, timeout=0.3)
        self.assertEqual(exc.message, "Post HTTP request error, timeout")
        await resource.dropped

    async def test_reply_too_large(self):
        exc, _ = await self.call(lambda r: json_reply(r, b" " * 5000), max_reply=1000)
        self.assertIn("larger than 1000", exc.message)

    async def test_connection_refused(self):
        client = make_http_client(reactor)
        with self.assertRaises(ModelError) as ctx:
            await chat_completion(client, "http://127.0.0.1:1/v1", "m", MESSAGES, reactor=reactor)
        self.assertTrue(ctx.exception.message.startswith("Post HTTP request error, "))

    async def test_open_chat_stream_is_unbuffered(self):
        def sse(request):
            request.setHeader(b"content-type", b"text/event-stream")
            request.write(b"data: 1\n\n")
            return NOT_DONE_YET  # never finishes: the head must arrive anyway

        url, resource = await serve(self, sse)
        response = await open_chat_stream(url, b'{"stream":true}', {b"X-Test": b"1"}, reactor=reactor)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/event-stream"])
        body = read_body(response)
        body.cancel()  # consumer gone: the upstream connection is closed
        await resource.dropped
        self.failureResultOf(body)
        _, _, headers, sent = resource.requests[0]
        self.assertEqual((headers.getRawHeaders(b"x-test"), sent), ([b"1"], b'{"stream":true}'))

    async def test_open_chat_stream_refused(self):
        with self.assertRaises(ModelError):
            await open_chat_stream("http://127.0.0.1:1/", b"{}", reactor=reactor)


class PureTests(SynchronousTestCase):
    def test_missing_fields(self):
        result = parse_chat_reply(200, b'{"choices": [{"message": {"content": null}}, 3]}', now=77)
        self.assertEqual(result.to_json(), {
            "created": 77,
            "choices": [{"index": 0, "message": {"role": "", "content": ""}, "finish_reason": ""}],
            "usage": {"completion_tokens": 0, "prompt_tokens": 0, "total_tokens": 0},
        })

    def test_deep_or_surrogate_json_replies(self):
        # Found by the fuzz harness: json.loads raised RecursionError for deeply nested replies,
        # and a lone surrogate ("\\ud800") made the answer impossible to put in its protobuf.
        for status in (200, 500):
            with self.assertRaises(ModelError):
                parse_chat_reply(status, b"[" * 100000, now=1)
        body = b'{"choices": [{"message": {"role": "a\\udfff", "content": "\\ud800"}}]}'
        result = parse_chat_reply(200, body, now=1)
        self.assertEqual(result.choices[0]["message"], {"role": "a\ufffd", "content": "\ufffd"})
        result.to_protobuf().SerializeToString()

    def test_codes_int_cannot_take(self):
        # Found by the fuzz harness: int(code) raised OverflowError / ValueError for JSON Infinity / NaN.
        for raw in (b"Infinity", b"-Infinity", b"NaN"):
            with self.assertRaises(ModelError) as caught:
                parse_chat_reply(200, b'{"code": %s}' % raw, now=1)
            self.assertIsNone(caught.exception.model_code)

    def test_protobuf_round_trip(self):
        result = parse_chat_reply(200, json.dumps(LLAMA_REPLY).encode(), now=0)
        wire = result.to_protobuf().SerializeToString()
        back = ChatResult.from_protobuf(pb.ChatCompletionResponse.FromString(wire))
        # v0.1.2's message has no id and object; v0.2.3's has.
        self.assertEqual(back.to_json(), SPEC_SHAPE)
        wire = result.to_protobuf(pb23).SerializeToString()
        self.assertEqual(ChatResult.from_protobuf(pb23.ChatCompletionResponse.FromString(wire)), result)

    def test_request_protobuf(self):
        req = chat_request_to_protobuf("P", "M", MESSAGES, stream=True)
        self.assertEqual(chat_request_from_protobuf(pb.ChatCompletionRequest.FromString(req.SerializeToString())),
                         {"project": "P", "model": "M", "messages": MESSAGES, "stream": True})

    def test_request_protobuf_with_content_parts(self):
        # Go v0.2.3's content parts have no place in v0.1.2's string field: their JSON text goes.
        parts = [{"type": "text", "text": "hi"}]
        req = chat_request_to_protobuf("P", "M", [{"role": "user", "content": parts}, {"role": "user"}])
        self.assertEqual([json.loads(req.messages[0].content), req.messages[1].content], [parts, ""])

    @settings(max_examples=300, deadline=None)
    @given(st.integers(100, 599), st.recursive(
        st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=5),
        lambda children: st.lists(children, max_size=3) | st.dictionaries(
            st.sampled_from(["code", "message", "created", "choices", "usage", "index", "role", "content",
                             "finish_reason", "total_tokens", "error"]), children, max_size=5),
        max_leaves=20))
    def test_any_reply_maps_or_raises_model_error(self, status, reply):
        try:
            result = parse_chat_reply(status, json.dumps(reply).encode(), now=1)
        except ModelError:
            return
        result.to_protobuf().SerializeToString()  # always representable
        json.dumps(result.to_json())
