"""Tests for the Go v0.2.3 schema (proto/protocol_v023.proto) and what it means
next to the v0.1.2 one.

Every byte string below was written out by hand from the Go node's v0.2.3
descriptor (tag = field << 3 | wire type; Go marshals fields in field-number
order and always sets ``wallet``, so an empty one is ``82 01 00``), not
produced by the encoder under test.  Each is decoded with the v0.2.3 classes
(what a v0.2.3 node sees) and with the v0.1.2 classes (what our current
decoder, and a v0.1.2 Go node, sees), which pins down the incompatibilities
that issue 11 has to handle.
"""

from __future__ import annotations

import json

from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError
from twisted.trial.unittest import SynchronousTestCase

from aicn.wire import protocol_pb2 as v12
from aicn.wire import protocol_v023_pb2 as v23
from tests.node.test_protocol import (
    _BOOL, _BYTES, _ENUM, _I32, _I64, _MSG, _ONE, _REP, _STR, _T, _U32, _U64,
    _all_messages, _h, _reserved_ranges,
)

_FLOAT = _T.TYPE_FLOAT

# The v0.2.3 descriptor (pkg/protocol/protocol.pb.go at c6dcee4), field by field.
EXPECTED_FIELDS = {
    "MessageHeader": {
        "client_version": (1, _STR, _ONE), "timestamp": (2, _I64, _ONE), "id": (3, _STR, _ONE),
        "node_id": (4, _STR, _ONE), "receiver": (5, _STR, _ONE),
        "node_pub_key": (6, _BYTES, _ONE), "sign": (7, _BYTES, _ONE),
    },
    "Message": {
        "header": (1, _MSG, _ONE), "type": (2, _ENUM, _ONE), "body": (3, _BYTES, _ONE),
        "result_code": (4, _I32, _ONE), "result_message": (5, _STR, _ONE),
    },
    "PeerIdentityRequest": {},
    "PeerIdentityResponse": {
        "protocol_version": (5, _STR, _ONE), "agent_version": (6, _STR, _ONE),
        "public_key": (1, _BYTES, _ONE), "listen_addrs": (2, _STR, _REP),
        "protocols": (3, _STR, _REP),
    },
    "WalletVerification": {
        "wallet": (1, _STR, _ONE), "signature": (2, _STR, _ONE), "hash": (3, _STR, _ONE),
    },
    "ImageGenerationRequest": {
        "project": (1, _STR, _ONE), "model": (2, _STR, _ONE), "prompt": (3, _STR, _ONE),
        "number": (4, _I32, _ONE), "size": (5, _STR, _ONE), "width": (6, _I32, _ONE),
        "height": (7, _I32, _ONE), "response_format": (8, _STR, _ONE), "cid": (9, _STR, _ONE),
        "step": (10, _I32, _ONE), "wallet": (16, _MSG, _ONE),
    },
    "ImageGenerationResponse": {"created": (1, _I64, _ONE), "choices": (2, _MSG, _REP)},
    "ImageGenerationResponse.ImageResponseChoice": {
        "url": (1, _STR, _ONE), "b64_json": (2, _STR, _ONE), "revised_prompt": (3, _STR, _ONE),
    },
    "ChatContentPart": {
        "type": (1, _ENUM, _ONE), "text": (2, _MSG, _ONE), "image": (3, _MSG, _ONE),
        "audio": (4, _MSG, _ONE),
    },
    "ChatContentPart.Text": {"type": (1, _STR, _ONE), "text": (2, _STR, _ONE)},
    "ChatContentPart.Image": {
        "type": (1, _STR, _ONE), "url": (2, _STR, _ONE), "detail": (3, _STR, _ONE),
    },
    "ChatContentPart.Audio": {
        "type": (1, _STR, _ONE), "data": (2, _STR, _ONE), "format": (3, _STR, _ONE),
    },
    "ChatContentParts": {"parts": (1, _MSG, _REP)},
    "ChatCompletionMessage": {"role": (1, _STR, _ONE), "content": (2, _BYTES, _ONE)},
    "ChatCompletionRequest": {
        "project": (1, _STR, _ONE), "model": (2, _STR, _ONE), "messages": (3, _MSG, _REP),
        "stream": (4, _BOOL, _ONE), "cid": (5, _STR, _ONE), "temperature": (6, _FLOAT, _ONE),
        "top_p": (7, _FLOAT, _ONE), "wallet": (16, _MSG, _ONE),
    },
    "ChatCompletionResponseMessage": {"role": (1, _STR, _ONE), "content": (2, _STR, _ONE)},
    "ChatCompletionResponse": {
        "created": (1, _I64, _ONE), "choices": (2, _MSG, _REP), "usage": (3, _MSG, _ONE),
        "id": (4, _STR, _ONE), "object": (5, _STR, _ONE),
    },
    "ChatCompletionResponse.ChatResponseChoice": {
        "index": (1, _I32, _ONE), "message": (2, _MSG, _ONE), "finish_reason": (3, _STR, _ONE),
    },
    "ChatCompletionResponse.ChatResponseUsage": {
        "completion_tokens": (1, _I32, _ONE), "prompt_tokens": (2, _I32, _ONE),
        "total_tokens": (3, _I32, _ONE),
    },
    "HostInfoRequest": {},
    "HostInfoResponse": {
        "os": (1, _MSG, _ONE), "cpu": (2, _MSG, _REP), "memory": (3, _MSG, _ONE),
        "disk": (4, _MSG, _REP), "gpu": (5, _MSG, _REP),
    },
    "HostInfoResponse.OSInfo": {
        "os": (1, _STR, _ONE), "platform": (2, _STR, _ONE), "platform_family": (3, _STR, _ONE),
        "platform_version": (4, _STR, _ONE), "kernel_version": (5, _STR, _ONE),
        "kernel_arch": (6, _STR, _ONE),
    },
    "HostInfoResponse.CpuInfo": {
        "model_name": (1, _STR, _ONE), "total_cores": (2, _U32, _ONE),
        "total_threads": (3, _U32, _ONE),
    },
    "HostInfoResponse.MemoryInfo": {
        "total_physical_bytes": (1, _I64, _ONE), "total_usable_bytes": (2, _I64, _ONE),
    },
    "HostInfoResponse.DiskInfo": {
        "drive_type": (1, _STR, _ONE), "size_bytes": (2, _U64, _ONE),
        "model": (3, _STR, _ONE), "serial_number": (4, _STR, _ONE),
    },
    "HostInfoResponse.GpuInfo": {"vendor": (1, _STR, _ONE), "product": (2, _STR, _ONE)},
    "AIModelOfProject": {
        "model": (1, _STR, _ONE), "api": (2, _STR, _ONE), "type": (3, _U32, _ONE),
        "idle": (4, _U32, _ONE), "cid": (5, _STR, _ONE),
    },
    "AIProjectOfNode": {"project": (1, _STR, _ONE), "models": (2, _MSG, _REP)},
    "AIProjectRequest": {},
    "AIProjectResponse": {"projects": (1, _MSG, _REP), "node_type": (2, _U32, _ONE)},
}

BODIES = ("PeerIdentityBody", "HostInfoBody", "AIProjectBody", "ChatCompletionBody",
          "ImageGenerationBody")

# Fields whose number exists in both schemas with a different wire meaning:
# (message, number) -> (v0.1.2 type, v0.2.3 type).
WIRE_CONFLICTS = {
    ("AIProjectOfNode", 2): (_STR, _MSG),
    ("ChatCompletionMessage", 2): (_STR, _BYTES),
    ("ImageGenerationRequest", 16): (_STR, _MSG),
    ("ImageGenerationResponse", 1): (_STR, _I64),
}


def _unknown(message) -> list[tuple[int, int, object]]:
    """The unknown fields of ``message`` itself, as (number, wire type, data)."""
    return [(f.field_number, f.wire_type, f.data)
            for f in unknown_fields.UnknownFieldSet(message)]


def _strict(cls, data: bytes):
    """Parse ``data`` as ``cls`` and return it, or None when the bytes do not fit
    that schema: a DecodeError, or an unknown field anywhere in the tree.

    The test-side "schema mismatch" detector: it is what a version dispatcher
    could try first, and the tests below show where it is not enough.
    """
    try:
        message = cls.FromString(data)
    except DecodeError:
        return None

    def clean(m) -> bool:
        if _unknown(m):
            return False
        for field, value in m.ListFields():
            if field.type != _MSG:
                continue
            for sub in (value if field.is_repeated else [value]):
                if not clean(sub):
                    return False
        return True

    return message if clean(message) else None


class SchemaTests(SynchronousTestCase):
    """The descriptor is Go v0.2.3's, in its own package."""

    def test_package_keeps_both_schemas_apart(self):
        self.assertEqual(v23.DESCRIPTOR.package, "protocol_v023")
        self.assertEqual(v23.DESCRIPTOR.name, "protocol_v023.proto")
        self.assertEqual(v23.Message.DESCRIPTOR.full_name, "protocol_v023.Message")
        self.assertEqual(v12.Message.DESCRIPTOR.full_name, "protocol.Message")
        self.assertIsNot(v23.Message, v12.Message)
        self.assertEqual(v23.DESCRIPTOR.dependencies, [])  # no Any, no imports

    def test_fields(self):
        messages = dict(_all_messages(v23.DESCRIPTOR))
        self.assertEqual(set(messages), set(EXPECTED_FIELDS) | set(BODIES))
        for name, fields in EXPECTED_FIELDS.items():
            desc = messages[name]
            got = {
                f.name: (f.number, f.type, _REP if f.is_repeated else _ONE) for f in desc.fields
            }
            self.assertEqual(got, fields, name)
            self.assertEqual(desc.oneofs, [], name)
        # Declaration order is Go's (it does not change the encoding, see below).
        self.assertEqual([f.number for f in v23.PeerIdentityResponse.DESCRIPTOR.fields],
                         [5, 6, 1, 2, 3])

    def test_body_wrappers(self):
        for name in BODIES:
            desc = getattr(v23, name).DESCRIPTOR
            self.assertEqual([o.name for o in desc.oneofs], ["data"], name)
            got = {(f.name, f.number, f.containing_oneof.name) for f in desc.fields}
            self.assertEqual(got, {("req", 1, "data"), ("res", 2, "data")}, name)
            self.assertEqual(desc.fields_by_name["req"].message_type.name,
                             name.replace("Body", "Request"))

    def test_enums_and_reserved(self):
        self.assertEqual({v.name: v.number for v in v23.MessageType.DESCRIPTOR.values}, {
            "PEER_IDENTITY": 0, "HOST_INFO": 1, "AI_PROJECT": 2,
            "CHAT_COMPLETION": 16, "IMAGE_GENERATION": 17,
        })
        self.assertEqual({v.name: v.number for v in v23.ChatContentPart.Type.DESCRIPTOR.values},
                         {"TEXT": 0, "IMAGE": 1, "AUDIO": 2})
        ranges = lambda cls: [(r.start, r.end) for r in _reserved_ranges(cls.DESCRIPTOR)]  # noqa: E731
        self.assertEqual(ranges(v23.ImageGenerationRequest), [(11, 16)])  # 11..15
        self.assertEqual(ranges(v23.ChatCompletionRequest), [(8, 16)])    # 8..15

    def test_wire_conflicts_with_v012(self):
        """Exactly four field numbers changed meaning; all others are additions or
        renames with the same encoding."""
        old = dict(_all_messages(v12.DESCRIPTOR))
        new = dict(_all_messages(v23.DESCRIPTOR))
        conflicts = {}
        for name, desc in old.items():
            for f in desc.fields:
                g = new[name].fields_by_number.get(f.number)
                self.assertIsNotNone(g, f"{name}.{f.name} vanished")
                if (f.type, f.is_repeated) != (g.type, g.is_repeated):
                    conflicts[(name, f.number)] = (f.type, g.type)
                elif f.type == _MSG and f.message_type.name != g.message_type.name:
                    # A re-typed sub-message (ChatResponseChoice.message) must
                    # keep the old one's encoding.
                    sub = {x.number: x.type for x in g.message_type.fields}
                    for x in f.message_type.fields:
                        self.assertEqual(sub.get(x.number), x.type, f"{name}.{f.name}")
        self.assertEqual(conflicts, WIRE_CONFLICTS)


def _header_v023() -> bytes:
    return _h(
        "0a 11"                      # header, 17 bytes
        " 0a 06") + b"v0.2.3" + _h(  # client_version
        " 10 80 ae d3 b4 06"         # timestamp 1721030400
        " 22 01 77"                  # node_id "w"
    )


class HeartbeatTests(SynchronousTestCase):
    """AI_PROJECT heartbeats: models became embedded messages (v0.1.9)."""

    API = b"http://127.0.0.1:1088/v1/chat/completions"  # 41 bytes
    # AIModelOfProject{model "m", api, type 0 (omitted), idle 1, cid "d15c4007271b"}
    ENTRY = (_h("0a 01") + b"m" + _h("12 29") + API + _h("20 01 2a 0c") + b"d15c4007271b")
    RES = (
        _h("0a 4e 0a 0c") + b"DecentralGPT"  # projects[0] (78 bytes){project}
        + _h("12 3e") + ENTRY                # models[0], 62 bytes
        + _h("10 04")                        # node_type = ModelFlag
    )
    BODY = _h("12 52") + RES                 # AIProjectBody{res}, 82 bytes

    def test_encoding(self):
        self.assertEqual(len(self.ENTRY), 0x3E)
        model = v23.AIModelOfProject(model="m", api=self.API.decode(), idle=1, cid="d15c4007271b")
        body = v23.AIProjectBody(res=v23.AIProjectResponse(
            projects=[v23.AIProjectOfNode(project="DecentralGPT", models=[model])], node_type=4))
        self.assertEqual(body.SerializeToString().hex(" "), self.BODY.hex(" "))
        msg = v23.Message(
            header=v23.MessageHeader(client_version="v0.2.3", timestamp=1721030400, node_id="w"),
            type=v23.AI_PROJECT, body=self.BODY, result_message="heartbeat")
        self.assertEqual(
            msg.SerializeToString().hex(" "),
            (_header_v023() + _h("10 02 1a 54") + self.BODY + _h("2a 09") + b"heartbeat").hex(" "))

    def test_v023_decoder(self):
        res = v23.AIProjectBody.FromString(self.BODY).res
        self.assertEqual(res.node_type, 4)
        (project,) = res.projects
        self.assertEqual(project.project, "DecentralGPT")
        (model,) = project.models
        self.assertEqual((model.model, model.api, model.type, model.idle, model.cid),
                         ("m", self.API.decode(), 0, 1, "d15c4007271b"))

    def test_v012_decoder_sees_garbage_strings(self):
        res = v12.AIProjectBody.FromString(self.BODY).res
        self.assertEqual([p.project for p in res.projects], ["DecentralGPT"])
        # The serialised AIModelOfProject, taken as a model *name*.
        self.assertEqual(list(res.projects[0].models), [self.ENTRY.decode()])
        self.assertTrue(res.projects[0].models[0].startswith("\n\x01m\x12)http://"))
        self.assertEqual(_unknown(res), [(2, 0, 4)])  # node_type, skipped

    def test_v012_decoder_rejects_non_utf8_entry(self):
        # idle 200 = varint c8 01: 0xc8 opens a two-byte UTF-8 sequence that 0x01
        # does not continue, so the proto3 string check fails the whole message
        # (Go's v0.1.2 decoder checks UTF-8 the same way): the heartbeat is lost.
        entry = _h("0a 01") + b"m" + _h("20 c8 01")
        data = _h("0a 01") + b"P" + _h("12 06") + entry
        self.assertEqual(v23.AIProjectOfNode.FromString(data).models[0].idle, 200)
        self.assertRaises(DecodeError, v12.AIProjectOfNode.FromString, data)

    def test_v012_heartbeat_on_v023_decoder(self):
        # A v0.1.2 heartbeat: models as names.  "Llama3-70B" starts with 0x4c =
        # field 9, wire type 4 (end group) -> the whole heartbeat fails to parse.
        data = _h("0a 01") + b"P" + _h("12 0a") + b"Llama3-70B"
        self.assertEqual(list(v12.AIProjectOfNode.FromString(data).models), ["Llama3-70B"])
        self.assertRaises(DecodeError, v23.AIProjectOfNode.FromString, data)
        # ... but "hi" is 0x68 0x69 = field 13 varint 105: it parses, as a model
        # with every known field empty and one unknown field.
        data = _h("0a 01") + b"P" + _h("12 02") + b"hi"
        (model,) = v23.AIProjectOfNode.FromString(data).models
        self.assertEqual((model.model, model.api, model.cid), ("", "", ""))
        self.assertEqual(_unknown(model), [(13, 0, 105)])

    def test_schema_mismatch_detection(self):
        """What the strict parse tells apart, and where it is ambiguous."""
        # A real v0.2.3 entry fits only the v0.2.3 message.
        self.assertIsNotNone(_strict(v23.AIModelOfProject, self.ENTRY))
        # Typical v0.1.2 names do not fit it (parse error or unknown fields).
        for name in (b"Llama3-70B", b"Qwen2.5-72B", b"superImage", b"hi", b"m1"):
            self.assertIsNone(_strict(v23.AIModelOfProject, name), name)
        # Ambiguous: names starting with LF (0x0a, tag of field 1), ' ' (0x20,
        # field 4 varint) or '*' (0x2a, field 5) whose rest happens to fit, and
        # the empty entry (v0.1.2 name "" = v0.2.3 AIModelOfProject{}).
        self.assertEqual(_strict(v23.AIModelOfProject, b" A").idle, 65)
        self.assertEqual(_strict(v23.AIModelOfProject, b"\n\x01m").model, "m")
        self.assertEqual(_strict(v23.AIModelOfProject, b""), v23.AIModelOfProject())
        # In the other direction the v0.1.2 decoder almost always "succeeds":
        # strictness only catches node_type (which v0.1.3-v0.1.8 also send).
        self.assertIsNone(_strict(v12.AIProjectBody, self.BODY))
        no_type = _h("0a 01") + b"P" + _h("12 3e") + self.ENTRY
        self.assertIsNotNone(_strict(v12.AIProjectOfNode, no_type))

    def test_empty_heartbeat_is_the_same_in_both(self):
        # A node with no models and no flags: `12 00`; with the collector flag
        # only: node_type 2.  No models means nothing to misread.
        for data in (_h("12 00"), _h("12 02 10 02")):
            self.assertEqual(list(v23.AIProjectBody.FromString(data).res.projects), [])
            self.assertEqual(list(v12.AIProjectBody.FromString(data).res.projects), [])


class IdentityAndHostInfoTests(SynchronousTestCase):
    """Unchanged messages decode the same under both schemas."""

    IDENTITY = (
        _h("12 17") + b"/ip4/127.0.0.1/tcp/7001"
        + _h("1a 11") + b"/chat-proxy/0.0.1"
        + _h("2a 0a") + b"aicn/0.0.1"
        + _h("32 06") + b"v0.2.3"
    )

    def test_peer_identity_response(self):
        res = v23.PeerIdentityResponse(
            protocol_version="aicn/0.0.1", agent_version="v0.2.3",
            listen_addrs=["/ip4/127.0.0.1/tcp/7001"], protocols=["/chat-proxy/0.0.1"])
        # Field-number order, as Go writes it, whatever the declaration order.
        self.assertEqual(res.SerializeToString().hex(" "), self.IDENTITY.hex(" "))
        for mod in (v12, v23):
            got = mod.PeerIdentityResponse.FromString(self.IDENTITY)
            self.assertEqual((got.protocol_version, got.agent_version, list(got.listen_addrs),
                              list(got.protocols), got.public_key),
                             ("aicn/0.0.1", "v0.2.3", ["/ip4/127.0.0.1/tcp/7001"],
                              ["/chat-proxy/0.0.1"], b""), mod.__name__)
        # An unstamped Go build sends no agent_version at all.
        unstamped = self.IDENTITY[:-8]
        self.assertEqual(v23.PeerIdentityResponse.FromString(unstamped).agent_version, "")
        # Requests are the empty message in the oneof, `0a 00`, in both.
        self.assertEqual(v23.PeerIdentityBody(req=v23.PeerIdentityRequest()).SerializeToString(),
                         _h("0a 00"))

    def test_host_info_response(self):
        data = (
            _h("0a 07 0a 05") + b"linux"
            + _h("12 07 0a 01 63 10 06 18 0c")                 # cpu{model_name "c", 6, 12}
            + _h("1a 08 08 80 80 80 80 40 10 05")              # memory{2**34, 5}
            + _h("2a 0e 0a 06") + b"NVIDIA" + _h("12 04") + b"H100"
        )
        for mod in (v12, v23):
            res = mod.HostInfoResponse.FromString(data)
            self.assertEqual(res.os.os, "linux")
            self.assertEqual((res.cpu[0].total_cores, res.cpu[0].total_threads), (6, 12))
            self.assertEqual(res.memory.total_physical_bytes, 1 << 34)
            self.assertEqual((res.gpu[0].vendor, res.gpu[0].product), ("NVIDIA", "H100"))
            self.assertEqual(_unknown(res), [])
        self.assertEqual(v23.HostInfoResponse.FromString(data).SerializeToString(), data)


class ChatTests(SynchronousTestCase):
    """CHAT_COMPLETION: content became bytes of raw JSON (v0.2.0)."""

    # As Go's handleChatCompletionRequest builds it for {"content": "hi"}:
    # Stream false and Cid/Temperature/TopP zero are omitted, Wallet is always set.
    STRING_REQ = (
        _h("0a 01 70 12 01 6d")                        # project "p", model "m"
        + _h("1a 0c 0a 04") + b"user" + _h("12 04") + b'"hi"'
        + _h("82 01 00")                               # wallet {} (field 16)
    )
    PARTS = b'[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"data:,x"}}]'
    PARTS_REQ = (
        _h("0a 01 70 12 01 6d")
        + _h("1a 58 0a 04") + b"user" + _h("12 50") + PARTS   # 80-byte content
        + _h("20 01")                                  # stream
        + _h("2a 02") + b"c1"                          # cid
        + _h("35 00 00 00 3f")                         # temperature 0.5 (fixed32, LE)
        + _h("3d 00 00 80 3f")                         # top_p 1.0
        + _h("82 01 09 0a 01 77 12 01 73 1a 01 68")    # wallet {"w", "s", "h"}
    )

    def test_string_content(self):
        req = v23.ChatCompletionRequest.FromString(self.STRING_REQ)
        self.assertEqual(req.messages[0].content, b'"hi"')
        self.assertEqual(json.loads(req.messages[0].content), "hi")
        self.assertTrue(req.HasField("wallet"))
        self.assertEqual(req.wallet, v23.WalletVerification())
        built = v23.ChatCompletionRequest(
            project="p", model="m", wallet=v23.WalletVerification(),
            messages=[v23.ChatCompletionMessage(role="user", content=b'"hi"')])
        self.assertEqual(built.SerializeToString().hex(" "), self.STRING_REQ.hex(" "))
        # v0.1.2: the JSON text, quotes included, becomes the message text; the
        # wallet is an unknown field.
        old = v12.ChatCompletionRequest.FromString(self.STRING_REQ)
        self.assertEqual(old.messages[0].content, '"hi"')
        self.assertEqual(_unknown(old), [(16, 2, b"")])

    def test_parts_content(self):
        self.assertEqual(len(self.PARTS), 0x50)
        req = v23.ChatCompletionRequest.FromString(self.PARTS_REQ)
        parts = json.loads(req.messages[0].content)
        self.assertEqual([p["type"] for p in parts], ["text", "image_url"])
        self.assertEqual((req.stream, req.cid, req.temperature, req.top_p), (True, "c1", 0.5, 1.0))
        self.assertEqual((req.wallet.wallet, req.wallet.signature, req.wallet.hash),
                         ("w", "s", "h"))
        self.assertEqual(req.SerializeToString(), self.PARTS_REQ)
        old = v12.ChatCompletionRequest.FromString(self.PARTS_REQ)
        self.assertEqual(old.messages[0].content, self.PARTS.decode())  # array as text
        self.assertTrue(old.stream)
        self.assertEqual([n for n, _, _ in _unknown(old)], [5, 6, 7, 16])

    def test_v012_request_on_v023_decoder(self):
        # A v0.1.2 node sends plain text.  The v0.2.3 decoder takes it as bytes
        # (no error), but it is not JSON: Go's json.Marshal of the model request
        # then fails and the worker answers 1007 "Marshal model request error".
        data = _h("0a 01 70 12 01 6d 1a 0a 0a 04") + b"user" + _h("12 02") + b"hi"
        req = v23.ChatCompletionRequest.FromString(data)
        self.assertEqual(req.messages[0].content, b"hi")
        self.assertRaises(ValueError, json.loads, req.messages[0].content)
        self.assertIsNotNone(_strict(v23.ChatCompletionRequest, data))  # no wire-level hint

    def test_content_heuristic_and_its_limits(self):
        def looks_json(content: bytes) -> bool:
            try:
                return isinstance(json.loads(content), (str, list))
            except ValueError:
                return False

        self.assertTrue(looks_json(b'"hi"'))
        self.assertTrue(looks_json(self.PARTS))
        self.assertFalse(looks_json(b"hi"))
        self.assertFalse(looks_json("Ein Satz.".encode()))
        # Ambiguous: v0.1.2 text that is itself a JSON string or array literal.
        self.assertTrue(looks_json(b'"quoted by the user"'))
        self.assertTrue(looks_json(b"[1, 2]"))

    def test_response(self):
        data = (
            _h("08 80 ae d3 b4 06")                               # created 1721030400
            + _h("12 1a 12 12 0a 09") + b"assistant" + _h("12 05") + b"Hello"
            + _h("1a 04") + b"stop"                               # choices[0], index 0 omitted
            + _h("1a 06 08 2c 10 16 18 42")                       # usage 44/22/66
            + _h("22 0a") + b"chatcmpl-1" + _h("2a 0f") + b"chat.completion"
        )
        res = v23.ChatCompletionResponse.FromString(data)
        self.assertEqual((res.created, res.id, res.object),
                         (1721030400, "chatcmpl-1", "chat.completion"))
        (choice,) = res.choices
        self.assertEqual((choice.index, choice.message.role, choice.message.content,
                          choice.finish_reason), (0, "assistant", "Hello", "stop"))
        self.assertEqual((res.usage.completion_tokens, res.usage.prompt_tokens,
                          res.usage.total_tokens), (44, 22, 66))
        self.assertEqual(res.SerializeToString(), data)
        # v0.1.2: same choices and usage (the response message kept a string
        # content); id and object are unknown.
        old = v12.ChatCompletionResponse.FromString(data)
        self.assertEqual((old.created, old.choices[0].message.content, old.usage.total_tokens),
                         (1721030400, "Hello", 66))
        self.assertEqual(_unknown(old), [(4, 2, b"chatcmpl-1"), (5, 2, b"chat.completion")])


class ImageTests(SynchronousTestCase):
    """IMAGE_GENERATION: field 16 and the response were redefined (v0.1.6)."""

    REQ = (
        _h("0a 0a") + b"SuperImage" + _h("12 0a") + b"superImage"
        + _h("1a 06") + b"a bird"
        + _h("20 02")                                  # number 2
        + _h("2a 09") + b"1024x1024"
        + _h("30 80 08 38 80 08")                      # width, height 1024
        + _h("42 08") + b"b64_json"                    # response_format
        + _h("4a 01 63")                               # cid "c"
        + _h("50 14")                                  # step 20
        + _h("82 01 06 0a 04") + b"0xab"               # wallet {wallet "0xab"}
    )

    def test_request(self):
        req = v23.ImageGenerationRequest.FromString(self.REQ)
        self.assertEqual(
            (req.project, req.model, req.prompt, req.number, req.size, req.width, req.height,
             req.response_format, req.cid, req.step, req.wallet.wallet),
            ("SuperImage", "superImage", "a bird", 2, "1024x1024", 1024, 1024, "b64_json",
             "c", 20, "0xab"))
        self.assertEqual(req.SerializeToString(), self.REQ)
        # v0.1.2: 6..10 were reserved (unknown now); field 16 is its string
        # ipfs_node, so the wallet bytes become an "IPFS node" address.
        old = v12.ImageGenerationRequest.FromString(self.REQ)
        self.assertEqual((old.prompt, old.number, old.size), ("a bird", 2, "1024x1024"))
        self.assertEqual(old.ipfs_node, "\n\x040xab")
        self.assertEqual([n for n, _, _ in _unknown(old)], [6, 7, 8, 9, 10])
        # Go always sets the wallet: empty it is `82 01 00`, an empty ipfs_node.
        empty = v12.ImageGenerationRequest.FromString(_h("1a 01 70 82 01 00"))
        self.assertEqual((empty.prompt, empty.ipfs_node), ("p", ""))

    def test_v012_request_on_v023_decoder(self):
        # "http://..." as a WalletVerification: 'h' = field 13 varint, 't' = 116,
        # 't' = field 14 end-group -> parse error ("Message type and body do
        # not match", 1004, from a v0.2.3 worker).
        data = _h("1a 01 70 82 01 19") + b"http://122.99.183.54:4002"
        self.assertEqual(v12.ImageGenerationRequest.FromString(data).ipfs_node,
                         "http://122.99.183.54:4002")
        self.assertRaises(DecodeError, v23.ImageGenerationRequest.FromString, data)

    def test_response(self):
        data = (
            _h("08 ea 87 f6 f5 05")                              # created 1589478378
            + _h("12 1b 0a 11") + b"https://x/1.png?a" + _h("1a 06") + b"a bird"
            + _h("12 0e 12 0c") + b"iVBORw0KGgo="                # {b64_json}
        )
        res = v23.ImageGenerationResponse.FromString(data)
        self.assertEqual(res.created, 1589478378)
        self.assertEqual([(c.url, c.b64_json, c.revised_prompt) for c in res.choices],
                         [("https://x/1.png?a", "", "a bird"), ("", "iVBORw0KGgo=", "")])
        self.assertEqual(res.SerializeToString(), data)
        # v0.1.2: created arrives with wire type 0 on a string field -> kept as an
        # unknown field, no error; url lands in cid, b64_json in image_name.
        old = v12.ImageGenerationResponse.FromString(data)
        self.assertEqual(old.ipfs_node, "")
        self.assertEqual(_unknown(old), [(1, 0, 1589478378)])
        self.assertEqual([(c.cid, c.image_name) for c in old.choices],
                         [("https://x/1.png?a", ""), ("", "iVBORw0KGgo=")])
        self.assertEqual(_unknown(old.choices[0]), [(3, 2, b"a bird")])

    def test_v012_response_on_v023_decoder(self):
        data = (_h("0a 08") + b"http://h" + _h("12 0d 0a 04") + b"QmAb"
                + _h("12 05") + b"a.png")
        res = v23.ImageGenerationResponse.FromString(data)
        self.assertEqual(res.created, 0)
        self.assertEqual(_unknown(res), [(1, 2, b"http://h")])
        self.assertEqual([(c.url, c.b64_json) for c in res.choices], [("QmAb", "a.png")])


class ErrorReplyTests(SynchronousTestCase):
    def test_error_reply(self):
        # TransformErrorResponse: no body, no node_pub_key, code 1004 (v0.1.9+
        # "Protobuf serialization error"; 1004 is "Processing timeout" in v0.1.2).
        data = (
            _h("0a 03 1a 01 69")                              # header{id "i"}
            + _h("10 11")                                     # IMAGE_GENERATION
            + _h("20 ec 07")                                  # result_code 1004
            + _h("2a 22") + b"Message type and body do not match"
        )
        for mod in (v12, v23):
            msg = mod.Message.FromString(data)
            self.assertEqual((msg.header.id, msg.type, msg.body, msg.result_code),
                             ("i", 17, b"", 1004))
            self.assertEqual(msg.result_message, "Message type and body do not match")
