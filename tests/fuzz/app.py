"""Fuzz targets of the application decoders: the pubsub envelope and its bodies (both
schemas), the chat-proxy tunnel's HTTP (worker and requester side), HTTP API bodies
and the JSON of model and worker replies (see :mod:`tests.fuzz.harness`)."""

from __future__ import annotations

import base64
import json

from google.protobuf.message import DecodeError
from twisted.internet.task import Clock

from aicn.api.app import (
    JSONBody,
    QueryOrBody,
    decode_json_body,
    parse_chat_request,
    parse_image_request,
    parse_model_registration,
    parse_node_request,
    parse_number,
    parse_registration,
)
from aicn.api.imageedit import parse_image_edit
from aicn.api.openai import (
    OpenAIError,
    SSEParser,
    chunks_from_completion,
    convert_events,
    decode_request_body,
    normalize_completion,
    parse_chat,
    parse_images,
)
from aicn import jsontext
from aicn.errors import AICNError
from aicn.wire import protocol_v023_pb2 as pb23
from aicn.models.chat import chat_request_body, chat_request_to_protobuf, parse_chat_reply, result_to_protobuf
from aicn.models.errors import ModelError
from aicn.models.image import ImageRequest, ImageResult, parse_image_items, parse_image_reply
from aicn.models.imageedit import encode_multipart
from aicn.node.chatproxy.requester import proxy_chat_stream
from aicn.node.chatproxy.wire import (
    IMAGE_EDIT_PATH,
    MAX_REQUEST_BODY,
    MAX_REQUEST_HEAD,
    encode_request,
    error_from_reply,
)
from aicn.node.chatproxy.worker import serve_chat_proxy
from aicn.node.crypto import BodyDecryptError, key_matches_peer, open_body, seal_body
from aicn.node.envelope import (
    BODY_TYPES,
    Disposition,
    EnvelopeError,
    build_heartbeat,
    build_message,
    classify,
    decode_body,
    decode_message,
    encode_request as envelope_request,
    encode_response as envelope_response,
    type_name,
)
from aicn.node.httpwire import (
    END,
    HTTPWireError,
    MessageParser,
    RequestHead,
    ResponseHead,
    end_to_end_headers,
)
from aicn.node.openairoute import parse_completion
from aicn.wire import protocol_pb2 as pb
from aicn.wire import protocol_v023_pb2 as pb023
from tests.fuzz.harness import (
    FAILED,
    LOCAL_SECP,
    REMOTE_PEER,
    REMOTE_SECP,
    Target,
    attempt,
    drive,
    halves,
    outcome,
    pieces,
    same,
    stream_with,
)
from tests.p2p.fakestream import StreamPair

# -- the pubsub envelope ----------------------------------------------------------------------

OWN_ID = str(LOCAL_SECP.peer_id())
SENDER_ID = str(REMOTE_SECP.peer_id())


def _message_classes(module) -> list:
    return [getattr(module, name) for name in module.DESCRIPTOR.message_types_by_name]


_ALL_CLASSES = _message_classes(pb) + _message_classes(pb023)


def t_envelope(data: bytes) -> None:
    """What the application does with a pubsub message's data: decode, classify, open, decode the body."""
    msg = attempt(EnvelopeError, decode_message, data)
    if msg is not FAILED:
        type_name(msg.type)
        for author in (SENDER_ID, msg.header.node_id or None):
            if not isinstance(classify(msg, OWN_ID, author, key_matches_peer), Disposition):
                raise AssertionError("classify gave no Disposition")
        plaintext = attempt(BodyDecryptError, open_body, LOCAL_SECP, msg.header.node_pub_key, msg.body)
        for msg_type in {msg.type, *BODY_TYPES}:
            body = msg.body if plaintext is FAILED else plaintext
            kind = attempt(EnvelopeError, decode_body, msg_type, body)
            if kind is not FAILED and kind[0] not in (None, "req", "res"):
                raise AssertionError(f"decode_body gave {kind[0]!r}")
    for msg_type in BODY_TYPES:
        attempt(EnvelopeError, decode_body, msg_type, data)
    for cls in _ALL_CLASSES:  # both schemas, every message
        attempt(DecodeError, cls.FromString, data)


def _envelope_seeds() -> list[bytes]:
    chat = pb.ChatCompletionRequest(project="p", model="m", messages=[pb.ChatCompletionMessage(role="user",
                                                                                              content="hi")])
    sealed, key = seal_body(REMOTE_SECP, LOCAL_SECP.public_key,
                            envelope_request(pb.CHAT_COMPLETION, chat))
    image = pb.ImageGenerationResponse(ipfs_node="http://127.0.0.1:5001")
    return [
        build_heartbeat(client_version="v0.1.2", timestamp=1, node_id=SENDER_ID,
                        projects=[("p", ["m1", "m2"])]).SerializeToString(),
        build_message(msg_type=pb.CHAT_COMPLETION, client_version="v0.1.2", timestamp=2, node_id=SENDER_ID,
                      request_id="r1", receiver=OWN_ID, node_pub_key=key, body=sealed).SerializeToString(),
        build_message(msg_type=pb.PEER_IDENTITY, client_version="v0.2.3", timestamp=3, node_id=SENDER_ID,
                      request_id="r2", receiver=OWN_ID,
                      body=envelope_request(pb.PEER_IDENTITY, pb.PeerIdentityRequest())).SerializeToString(),
        build_message(msg_type=pb.IMAGE_GENERATION, client_version="v0.1.2", timestamp=4, node_id=SENDER_ID,
                      request_id="r3", receiver=OWN_ID, result_code=1006, result_message="model",
                      body=envelope_response(pb.IMAGE_GENERATION, image)).SerializeToString(),
    ]


# -- the chat-proxy tunnel ------------------------------------------------------------------------


def _events(kind: str, chunks: list[bytes], method: bytes = b"POST"):
    """A parser's events for ``chunks`` then EOF, normalised: head, body, END, unused."""
    max_body = MAX_REQUEST_BODY if kind == "request" else None
    parser = MessageParser(kind, max_head=MAX_REQUEST_HEAD, max_body=max_body, request_method=method)
    events = []
    for chunk in chunks:
        events += parser.feed(chunk)
    if not parser.done:
        events += parser.feed_eof()
    heads = [e for e in events if isinstance(e, (RequestHead, ResponseHead))]
    body = b"".join(e for e in events if isinstance(e, bytes))
    if len(heads) != 1 or events[0] is not heads[0] or events.count(END) != 1 or events[-1] is not END:
        raise AssertionError(f"events out of order: {events!r:.300}")
    return heads[0], body, parser.unused


def _lookup_none(project, model, cid, kind):
    if not all(isinstance(part, str) for part in (project, model, cid)):
        raise AssertionError("the worker looked up a model by something else than str")
    if kind not in (0, 1, 2):
        raise AssertionError(f"the worker asked for a model of type {kind!r}")
    return None


def t_chatproxy_request(data: bytes) -> None:
    """The worker's side: a tunnel request (head, query, body) read off the stream."""
    same(outcome(HTTPWireError, _events, "request", [data]),
         outcome(HTTPWireError, _events, "request", halves(data)), "MessageParser(request)")
    parsed = attempt(HTTPWireError, _events, "request", [data])
    if parsed is not FAILED:
        head = parsed[0]
        for name in ("project", "model"):
            attempt(HTTPWireError, head.query_value, name)
        attempt(HTTPWireError, lambda: head.path)
        end_to_end_headers(head.headers)
    stream = stream_with(data)
    drive(serve_chat_proxy(stream, None, _lookup_none, reactor=Clock()))  # never raises
    if not stream.is_reset:
        raise AssertionError("the worker found a model where there is none")


def _chatproxy_request_seeds() -> list[bytes]:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                       "stream": True}).encode()
    return [encode_request("p", "m", body), encode_request("p%20q", "m&x", b"{}", "example.com:80"),
            encode_request("p", "m", b"--b\r\n\r\nx\r\n--b--\r\n", cid="c", path=IMAGE_EDIT_PATH,
                           content_type=b"multipart/form-data; boundary=b"),
            b"\r\nPOST /v1/chat/completions?model=m&project=p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
            b"POST /?a=%ff&b HTTP/1.0\nContent-Length: 3\nContent-Length: 3\n\nabc"]


class _TunnelHost:
    """A host whose every stream answers with the fuzz input and FIN."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.reactor = Clock()

    async def new_stream(self, peer, protocols, addrs=None, lazy=False):
        pair = StreamPair(protocol=protocols[0])
        pair.b.write(self.answer).addErrback(lambda f: None)
        pair.b.close_write().addErrback(lambda f: None)
        return pair.a


async def _tunnel(answer: bytes):
    host = _TunnelHost(answer)
    tunnel = await proxy_chat_stream(host, REMOTE_PEER, "p", "m", b"{}", reactor=host.reactor)
    if tunnel.status != 200:
        error = await tunnel.error()
        if not isinstance(error, AICNError):
            raise AssertionError(f"TunnelStream.error() gave {error!r}")
        return tunnel.status, b""
    return tunnel.status, b"".join([chunk async for chunk in tunnel.iter_body()])


def t_chatproxy_response(data: bytes) -> None:
    """The requester's side: a worker's response, whole and in pieces, then what its body means."""
    for method in (b"POST", b"HEAD"):
        same(outcome(HTTPWireError, _events, "response", [data], method),
             outcome(HTTPWireError, _events, "response", halves(data), method), "MessageParser(response)")
    answer = attempt(AICNError, drive, _tunnel(data))
    if answer is not FAILED:
        status, body = answer
        _replies(status, body)


def _chatproxy_response_seeds() -> list[bytes]:
    sse = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'
    return [b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(sse), sse),
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 42\r\n\r\n"
            b'{"code": 1006, "message": "model is down"}',
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"
            b'{"choices": [{"message": {"content": "x"}}]}',
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found", b"HTTP/1.1 100 Continue\r\n\r\n"]


# -- JSON of model and worker replies -----------------------------------------------------------


def _replies(status: int, body: bytes) -> None:
    """Everything that reads a model's (or a worker's) JSON answer."""
    error = error_from_reply(status, body)
    if not isinstance(error, AICNError):
        raise AssertionError(f"error_from_reply gave {error!r}")
    reply = attempt(ModelError, parse_completion, body)
    if reply is not FAILED:
        completion = normalize_completion(reply, "p/m", "chatcmpl-x", 1)
        json.dumps(completion, ensure_ascii=False).encode("utf-8")
        chunks_from_completion(completion, True)
    result = attempt(ModelError, parse_chat_reply, status, body, 1)
    if result is not FAILED:
        result_to_protobuf(result).SerializeToString()
    attempt(ModelError, parse_image_reply, status, body)
    items = attempt(ModelError, parse_image_items, status, body)
    if items is not FAILED:  # a tunnelled b64 image answer, as the requester reads it, and back
        result = ImageResult.from_items(*items)
        json.dumps(result.to_model_json())
        result.to_protobuf(pb23).SerializeToString()
    request = attempt(ValueError, lambda: ImageRequest.from_model_json("p", "m", "", jsontext.loads(body)))
    if request is not FAILED:  # a tunnelled image request, as the worker reads it
        json.dumps(request.to_model_json())
        request.to_protobuf(pb23).SerializeToString()
    parser = SSEParser()

    def sse_events():
        return [e for piece in pieces(body) for e in parser.feed(piece)] + parser.close()

    events = attempt(ValueError, sse_events)
    if events is not FAILED:
        out, skipped = convert_events(events, "p/m", "chatcmpl-x", 1)
        if not isinstance(out, bytes) or skipped > len(events):
            raise AssertionError("convert_events gave something odd")


def t_model_replies(data: bytes) -> None:
    for status in (200, 400, 502):
        _replies(status, data)


JSON_TRICKS = [b"[" * 3000 + b"]" * 3000, b'{"a":' * 3000 + b"1" + b"}" * 3000, b"1e400", b"-1e400", b"NaN",
               b"Infinity", b"-Infinity", b"1" * 500, b"1" + b"0" * 400, b'"\\ud800"', b'"\\udfff\\ud800"',
               b'"\\u0000"', b"-0", b"1.5", b"true", b"null", b'"\xff"']


def _model_seeds() -> list[bytes]:
    return [
        b'{"id":"x","created":1,"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},'
        b'"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}',
        b'{"code":0,"message":"ok","data":[{"url":"/tmp/a.png"}],"imageUrl":"/tmp/b.png"}',
        b'{"code":1006,"message":"model is down"}',
        b'{"error":{"message":"bad","type":"invalid_request_error"}}',
        b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\ndata: {"error":"x"}\n\ndata: [DONE]\n\n',
        b'{"choices":[{"index":1e400,"message":{"content":[{"type":"text","text":"x"}]}}],"created":1e400}',
        b'{"code":Infinity,"choices":[]}', b'{"code":NaN,"data":[{"url":"/a.png"}]}',
        b'{"code":0,"message":"ok","created":5,"data":[{"b64_json":"aGk=","revised_prompt":"x"},'
        b'{"url":"ipfs://bafy"}]}',
        b'{"model":"sd","prompt":"a cat","n":2,"size":"","width":512,"height":0,"step":20,'
        b'"response_format":"b64_json","wallet":"","signature":"","hash":""}',
        b'{"created":1%s,"choices":[{"index":-1%s,"delta":{}}]}' % (b"0" * 400, b"0" * 400),
    ] + JSON_TRICKS


# -- HTTP API bodies --------------------------------------------------------------------------


def _check_api(params) -> None:
    json.dumps(params, ensure_ascii=False).encode("utf-8")


def t_api_json(data: bytes) -> None:
    """``/api/v0`` and ``/v1`` request bodies: the JSON, then every request parser of it."""
    for optional in (False, True):
        body = attempt(AICNError, decode_json_body, data, optional=optional)
    if body is not FAILED:
        if not isinstance(body, JSONBody) or not isinstance(body.raw, dict):
            raise AssertionError("decode_json_body gave no object")
        for parse in (parse_node_request, parse_registration, parse_model_registration,
                      lambda b: parse_chat_request(b, need_node=True),
                      lambda b: parse_chat_request(b, need_node=False),
                      lambda b: parse_image_request(b, need_node=True), lambda b: parse_number(b, 20),
                      lambda b: parse_number(QueryOrBody(b, {"number": "7"}), 20)):
            params = attempt(AICNError, parse, body)
            if params is not FAILED:
                _check_api(params)
        chat = attempt(AICNError, parse_chat_request, body, need_node=False)
        if chat is not FAILED:
            chat_request_body(chat["model"], chat["messages"], stream=chat["stream"])
            chat_request_to_protobuf(chat["project"], chat["model"], chat["messages"]).SerializeToString()
    openai = attempt(OpenAIError, decode_request_body, data)
    if openai is not FAILED:
        if attempt(OpenAIError, parse_chat, openai) is not FAILED:
            json.dumps({**openai, "model": "m"}, ensure_ascii=False).encode("utf-8")
        attempt(OpenAIError, parse_images, openai)
    for need_node in (False, True):
        attempt(AICNError, parse_image_edit, b"application/json", data, {}, need_node=need_node)


def _api_seeds() -> list[bytes]:
    return [
        b'{"node_id":"%s","project":"p","model":"m","messages":[{"role":"user","content":"hi"}],'
        b'"stream":true,'
        b'"timeout":5,"temperature":0.5,"top_p":1}' % SENDER_ID.encode(),
        b'{"project":"p","models":[{"model":"m","api":"http://127.0.0.1:8080/v1","type":0,"cid":"c"}]}',
        b'{"project":"p","model":"m","prompt":"cat","n":2,"size":"512x512","width":1,"height":2,"step":3,'
        b'"response_format":"b64_json","number":3}',
        b'{"model":"p/m","messages":[{"role":"user","content":[{"type":"text","text":"x"}]}],"stream":false}',
        b'{"MODEL":"m","\\u212aey":1,"model":null,"Project":"p","project":"q","image":"aGk=","prompt":"x"}',
        b'{"node_id":"x","project":"p","model":"m","image":["data:image/png;base64,iVBORw0KGgo="],'
        b'"mask":"aGk=",'
        b'"prompt":"p","n":"2","timeout":"3"}',
        b'{"number":1e400,"temperature":1%s,"top_p":NaN,"n":Infinity,"width":-1%s,"project":"p","model":"m",'
        b'"messages":[{"role":"u","content":"x"}],"prompt":"x","image":"aGk="}' % (b"0" * 400, b"0" * 400),
        b"", b"  ", b"[]",
    ] + JSON_TRICKS


# -- image edit (multipart or JSON, with the Content-Type header) --------------------------------


def t_image_edit(data: bytes) -> None:
    """``/api/v0/image/edit``: the input's first line is the Content-Type, the rest the body."""
    content_type, _, body = data.partition(b"\n")
    query = {"project": "p", "model": "m", "node_id": SENDER_ID}
    for q in ({}, query):
        params = attempt(AICNError, parse_image_edit, content_type, body, q, need_node=True)
        if params is not FAILED:
            for name, filename, ctype, blob in params["files"]:
                if (not all(isinstance(x, str) for x in (name, filename, ctype))
                        or not isinstance(blob, bytes)):
                    raise AssertionError(f"an image edit file of the wrong types: {name!r}, {filename!r}")
            if not all(isinstance(name, str) and isinstance(value, str) for name, value in params["fields"]):
                raise AssertionError("an image edit field of the wrong types")
            attempt(ValueError, encode_multipart, params["fields"], params["files"])  # as the node sends it


def _image_edit_seeds() -> list[bytes]:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8
    form = (b"--XyZ\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\na cat\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + png + b"\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"n\"\r\n\r\n2\r\n--XyZ--\r\n")
    as_json = json.dumps({"prompt": "a cat", "image": [base64.b64encode(png).decode()], "n": 2}).encode()
    return [b"multipart/form-data; boundary=XyZ\n" + form, b"application/json\n" + as_json,
            b"application/json; charset=utf-8\n" + b'{"prompt":"x","image":"data:image/png;base64,AAAA"}',
            b"text/plain\nhi"]


APP_TARGETS = [
    Target("envelope", t_envelope, ("EnvelopeError", "BodyDecryptError", "DecodeError"), _envelope_seeds,
           "pubsub protocol.Message: decode, classify, open_body, decode_body; every class of both schemas"),
    Target("chatproxy_request", t_chatproxy_request, ("HTTPWireError",), _chatproxy_request_seeds,
           "chat-proxy worker: MessageParser(request) (whole = split), query, serve_chat_proxy"
           " over a stream"),
    Target("chatproxy_response", t_chatproxy_response, ("HTTPWireError", "AICNError"),
           _chatproxy_response_seeds,
           "chat-proxy requester: MessageParser(response) (whole = split), proxy_chat_stream and its body"),
    Target("model_replies", t_model_replies, ("ModelError", "ValueError (SSEParser)"), _model_seeds,
           "model and worker JSON: parse_completion, parse_chat_reply, error_from_reply, SSE conversion",
           dictionary=(b'"choices"', b'"message"', b'"content"', b'"code"', b'"delta"', b'"error"',
                       b"data: ")),
    Target("api_json", t_api_json, ("AICNError", "OpenAIError"), _api_seeds,
           "HTTP API bodies: decode_json_body, every /api/v0 request parser, /v1 bodies, image edit JSON",
           dictionary=(b'"node_id"', b'"project"', b'"model"', b'"messages"', b'"timeout"', b'"n"',
                       b'"api"')),
    Target("image_edit", t_image_edit, ("AICNError",), _image_edit_seeds,
           "image edit request: Content-Type, then multipart/form-data or JSON"),
]
