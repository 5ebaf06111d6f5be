"""Both wire schemas per peer (aicn.wire.versions, aicn.node.schemas) at the byte level.

The bodies are the hand-written golden bytes of tests.node.test_protocol_v023
(Go v0.2.3's encoding) and v0.1.2 bytes written the same way, wrapped in
their ``*Body`` oneof by hand.  Each is decoded claiming either schema, as a
peer of either version might send it: the tolerant decoder must end up with
the sender's meaning, and what we write must be the Go node's bytes.
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from aicn.errors import ErrorCode
from aicn.models.chat import ChatRequest, ChatResult
from aicn.models.image import ImageRequest, ImageResult
from aicn.node.application import heartbeat_projects
from aicn.node.envelope import BodyDecodeError
from aicn.node.schemas import code_from_wire, code_to_wire, convert, decode_body_tolerant, judge
from aicn.wire import protocol_pb2 as v12
from aicn.wire import protocol_v023_pb2 as v23
from aicn.wire.versions import V012, V023, header_version, is_aicn, schema_of_version, version_of
from tests.node.test_protocol import _h
from tests.node import test_protocol_v023 as golden

AI, CHAT, IMAGE, IDENTITY = v12.AI_PROJECT, v12.CHAT_COMPLETION, v12.IMAGE_GENERATION, v12.PEER_IDENTITY


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited field, framed by hand: tag, varint length, bytes."""
    return _varint((number << 3) | 2) + _varint(len(data)) + data


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def req(data: bytes) -> bytes:
    return _field(1, data)


def res(data: bytes) -> bytes:
    return _field(2, data)


# v0.1.2 bodies, as a v0.1.2 Go node writes them.
V012_HEARTBEAT = res(_field(1, _field(1, b"DecentralGPT") + _field(2, b"Llama3-70B") + _field(2, b"hi")))
V012_CHAT_REQ = req(_h("0a 01 70 12 01 6d") + _field(3, _field(1, b"user") + _field(2, b"hi")))
V012_IMAGE_REQ = req(_h("0a 01 70 12 01 6d") + _field(3, b"a bird") + _h("20 01")
                     + _field(16, b"http://122.99.183.54:4002"))
V012_IMAGE_RES = res(_field(1, b"http://h") + _field(2, _field(1, b"QmAb") + _field(2, b"a.png")))


class VersionTests(SynchronousTestCase):
    def test_schema_of_version(self):
        cases = {
            "v0.2.3": V023, "v0.2.3-4-gdeadbee": V023, "v0.1.9": V023, "v0.2.0": V023, "v1.0.0": V023,
            "v0.1.8": V012, "v0.1.2": V012, "v0.0.1": V012, " v0.2.3 ": V023,
            "v0.2.3 (aicn-py/0.1.0)": V023, "v0.1.2 (aicn-py/0.1.0)": V012,
            "": None, None: None, "aicn-py/0.1.0": None, "go-libp2p/79da72fb7": None, "0.2.3": None,
            "v0.2": None, "v0.2.3.4": None, "xv0.2.3": None,
        }
        for text, schema in cases.items():
            self.assertEqual(schema_of_version(text), schema, text)

    def test_header_version_and_aicn(self):
        self.assertEqual(header_version(V023, "aicn-py/0.1.0"), "v0.2.3 (aicn-py/0.1.0)")
        self.assertEqual(header_version(V012, ""), "v0.1.2")
        self.assertTrue(is_aicn("v0.2.3 (aicn-py/0.1.0)"))
        self.assertTrue(is_aicn("aicn-py/0.1.0"))
        self.assertFalse(is_aicn("v0.2.3"))
        self.assertFalse(is_aicn(None))

    def test_version_of(self):
        self.assertEqual((version_of(v12), version_of(v23)), (V012, V023))
        self.assertEqual(version_of(v23.ChatCompletionRequest()), V023)
        self.assertEqual(version_of(v12.ChatCompletionRequest()), V012)

    @given(st.text(max_size=40))
    def test_schema_of_any_text(self, text):
        self.assertIn(schema_of_version(text), (None, V012, V023))


class HeartbeatDecodeTests(SynchronousTestCase):
    """AI-project bodies: a v0.2.3 entry read as a v0.1.2 name has control characters."""

    def test_v023_heartbeat_either_claim(self):
        for claim in (V023, V012):
            wire, kind, message = decode_body_tolerant(AI, golden.HeartbeatTests.BODY, claim)
            self.assertEqual((wire, kind), (V023, "res"), claim)
            projects, node_type = heartbeat_projects(message)
            self.assertEqual(node_type, 4)
            self.assertEqual(projects, [{"project": "DecentralGPT", "models": ["m"],
                                         "instances": [{"model": "m", "type": 0, "idle": 1,
                                                        "cid": "d15c4007271b"}]}])
        # Why: v0.1.2's decoder "succeeds" with a model name full of control characters.
        problems, unknown = judge(v12.AIProjectBody.FromString(golden.HeartbeatTests.BODY).res)
        self.assertEqual(problems, ["control characters in protocol.AIProjectOfNode.models"])
        self.assertEqual(unknown, [])  # node_type alone is tolerated in v0.1.2

    def test_v012_heartbeat_either_claim(self):
        for claim in (V012, V023):
            wire, kind, message = decode_body_tolerant(AI, V012_HEARTBEAT, claim)
            self.assertEqual(wire, V012, claim)
            self.assertEqual(heartbeat_projects(message),
                             ([{"project": "DecentralGPT", "models": ["Llama3-70B", "hi"]}], 0))

    def test_names_that_parse_as_v023_entries(self):
        # "hi" alone parses as AIModelOfProject{unknown field 13}: no name, so not v0.2.3.
        body = res(_field(1, _field(1, b"P") + _field(2, b"hi")))
        wire, _, message = decode_body_tolerant(AI, body, V023)
        self.assertEqual((wire, list(message.projects[0].models)), (V012, ["hi"]))
        # "\n\x01m" is a perfect v0.2.3 entry {model "m"}, and a name with LF in v0.1.2: v0.2.3.
        body = res(_field(1, _field(1, b"P") + _field(2, b"\n\x01m")))
        for claim in (V012, V023):
            wire, _, message = decode_body_tolerant(AI, body, claim)
            self.assertEqual((wire, message.projects[0].models[0].model), (V023, "m"))

    def test_v013_heartbeat_names_and_node_type(self):
        # v0.1.3 to v0.1.8: names, and node_type (unknown to v0.1.2's schema, tolerated).
        body = res(_field(1, _field(1, b"P") + _field(2, b"Qwen2.5-72B")) + _h("10 06"))
        wire, _, message = decode_body_tolerant(AI, body, V012)
        self.assertEqual((wire, list(message.projects[0].models)), (V012, ["Qwen2.5-72B"]))

    def test_neither_fits(self):
        # A project name with a control character is garbage in both schemas.
        body = res(_field(1, _field(1, b"P\x01") + _field(2, b"m")))
        for claim in (V012, V023):
            with self.assertRaises(BodyDecodeError) as ctx:
                decode_body_tolerant(AI, body, claim)
            self.assertIn("fits neither schema", str(ctx.exception))
        with self.assertRaises(BodyDecodeError):
            decode_body_tolerant(AI, b"\xff\xff", V023)

    def test_empty_bodies(self):
        self.assertEqual(decode_body_tolerant(AI, b"", V023), (V023, None, None))
        wire, kind, message = decode_body_tolerant(IDENTITY, _h("0a 00"), V012)
        self.assertEqual((wire, kind, message), (V012, "req", v12.PeerIdentityRequest()))


class ChatDecodeTests(SynchronousTestCase):
    def test_go_v023_request_either_claim(self):
        for claim in (V023, V012):
            wire, kind, message = decode_body_tolerant(CHAT, req(golden.ChatTests.STRING_REQ), claim)
            self.assertEqual((wire, kind), (V023, "req"), claim)
            self.assertEqual(ChatRequest.from_protobuf(message).messages, [{"role": "user", "content": "hi"}])
        wire, _, message = decode_body_tolerant(CHAT, req(golden.ChatTests.PARTS_REQ), V012)
        parsed = ChatRequest.from_protobuf(message)
        self.assertEqual(wire, V023)
        self.assertEqual([p["type"] for p in parsed.messages[0]["content"]], ["text", "image_url"])
        self.assertEqual((parsed.cid, parsed.temperature, parsed.top_p, parsed.wallet, parsed.signature,
                          parsed.hash, parsed.stream), ("c1", 0.5, 1.0, "w", "s", "h", True))

    def test_v012_request_either_claim(self):
        # Plain text is no JSON: not v0.2.3 content, whatever the header says (a v0.1.9 node).
        for claim in (V012, V023):
            wire, _, message = decode_body_tolerant(CHAT, V012_CHAT_REQ, claim)
            self.assertEqual(wire, V012, claim)
            self.assertEqual(ChatRequest.from_protobuf(message).messages, [{"role": "user", "content": "hi"}])

    def test_json_looking_text_follows_the_claim(self):
        # '"hi"' is valid in both; the sender's version decides (documented ambiguity).
        data = req(_h("0a 01 70 12 01 6d") + _field(3, _field(1, b"user") + _field(2, b'"hi"')))
        def content(claim):
            message = decode_body_tolerant(CHAT, data, claim)[2]
            return ChatRequest.from_protobuf(message).messages[0]["content"]

        self.assertEqual((content(V012), content(V023)), ('"hi"', "hi"))

    def test_responses(self):
        data = res(
            _h("08 80 ae d3 b4 06") + _h("12 1a 12 12 0a 09") + b"assistant" + _h("12 05") + b"Hello"
            + _h("1a 04") + b"stop" + _h("1a 06 08 2c 10 16 18 42")
            + _h("22 0a") + b"chatcmpl-1" + _h("2a 0f") + b"chat.completion")
        for claim in (V012, V023):
            wire, kind, message = decode_body_tolerant(CHAT, data, claim)
            self.assertEqual((wire, kind), (V023, "res"))  # id/object are unknown to v0.1.2
            result = ChatResult.from_protobuf(message)
            self.assertEqual((result.id, result.object, result.created), ("chatcmpl-1", "chat.completion",
                                                                          1721030400))
            self.assertEqual(result.choices[0]["message"], {"role": "assistant", "content": "Hello"})
        # Without id and object the bytes are the same in both: the claim stands.
        plain = res(_h("08 01"))
        self.assertEqual(decode_body_tolerant(CHAT, plain, V012)[0], V012)
        self.assertEqual(decode_body_tolerant(CHAT, plain, V023)[0], V023)


class ImageDecodeTests(SynchronousTestCase):
    def test_go_v023_request_either_claim(self):
        for claim in (V023, V012):
            wire, _, message = decode_body_tolerant(IMAGE, req(golden.ImageTests.REQ), claim)
            self.assertEqual(wire, V023, claim)
            parsed = ImageRequest.from_protobuf(message)
            self.assertEqual((parsed.prompt, parsed.n, parsed.width, parsed.height, parsed.response_format,
                              parsed.cid, parsed.step, parsed.wallet, parsed.ipfs_node),
                             ("a bird", 2, 1024, 1024, "b64_json", "c", 20, "0xab", ""))

    def test_v012_request_either_claim(self):
        for claim in (V012, V023):
            wire, _, message = decode_body_tolerant(IMAGE, V012_IMAGE_REQ, claim)
            self.assertEqual((wire, message.ipfs_node), (V012, "http://122.99.183.54:4002"), claim)

    def test_responses_either_claim(self):
        v023_res = res(_h("08 ea 87 f6 f5 05") + _field(2, _field(1, b"ipfs://QmAb") + _field(3, b"a bird")))
        for claim in (V012, V023):
            wire, _, message = decode_body_tolerant(IMAGE, v023_res, claim)
            self.assertEqual(wire, V023, claim)
            result = ImageResult.from_protobuf(message)
            self.assertEqual((result.created, result.choices), (1589478378, [
                {"cid": "QmAb", "image_name": "", "url": "ipfs://QmAb", "revised_prompt": "a bird"}]))
            wire, _, message = decode_body_tolerant(IMAGE, V012_IMAGE_RES, claim)
            self.assertEqual(wire, V012, claim)
            self.assertEqual(ImageResult.from_protobuf(message).to_json(),
                             {"ipfs_node": "http://h", "choices": [{"cid": "QmAb", "image_name": "a.png"}]})


class WriteTests(SynchronousTestCase):
    """What we write in each schema is the Go node's bytes."""

    def test_chat_request_v023_bytes(self):
        plain = ChatRequest("p", "m", [{"role": "user", "content": "hi"}])
        self.assertEqual(plain.to_protobuf(v23).SerializeToString().hex(" "),
                         golden.ChatTests.STRING_REQ.hex(" "))
        parts = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:,x"}}]
        rich = ChatRequest("p", "m", [{"role": "user", "content": parts}], stream=True, cid="c1",
                           temperature=0.5, top_p=1.0, wallet="w", signature="s", hash="h")
        self.assertEqual(rich.to_protobuf(v23).SerializeToString().hex(" "),
                         golden.ChatTests.PARTS_REQ.hex(" "))
        # v0.1.2: text as is, parts as their JSON text, nothing of v0.2.3's.
        self.assertEqual(plain.to_protobuf(v12).SerializeToString(), V012_CHAT_REQ[2:])
        old = rich.to_protobuf(v12)
        text = json.dumps(parts).encode()  # the spec-era node's readable JSON text
        self.assertEqual(old.SerializeToString(), _h("0a 01 70 12 01 6d") + _field(
            3, _field(1, b"user") + _field(2, text)) + _h("20 01"))

    def test_chat_model_extra(self):
        rich = ChatRequest("p", "m", temperature=0.699999988079071, wallet="w")
        self.assertEqual(rich.model_extra(), {"wallet": "w", "temperature": 0.7})
        self.assertEqual(ChatRequest("p", "m").model_extra(), {})

    def test_chat_result_both_ways(self):
        result = ChatResult(created=5, choices=[{"index": 0, "message": {"role": "assistant", "content": "x"},
                                                 "finish_reason": "stop"}], id="i", object="chat.completion")
        new = result.to_protobuf(v23).SerializeToString()
        self.assertEqual(ChatResult.from_protobuf(v23.ChatCompletionResponse.FromString(new)), result)
        old = result.to_protobuf(v12).SerializeToString()
        self.assertEqual(new, old + _field(4, b"i") + _field(5, b"chat.completion"))  # the rest is equal
        self.assertEqual(convert(v23.ChatCompletionResponse.FromString(new), V012).SerializeToString(), old)

    def test_image_request_both_ways(self):
        request = ImageRequest("SuperImage", "superImage", "a bird", n=2, size="1024x1024", width=1024,
                               height=1024, response_format="b64_json", cid="c", step=20, wallet="0xab")
        self.assertEqual(request.to_protobuf(v23).SerializeToString().hex(" "),
                         golden.ImageTests.REQ.hex(" "))
        decoded = v23.ImageGenerationRequest.FromString(golden.ImageTests.REQ)
        self.assertEqual(ImageRequest.from_protobuf(decoded), request)
        old = ImageRequest("p", "m", "a bird", ipfs_node="http://122.99.183.54:4002").to_protobuf(v12)
        self.assertEqual(old.SerializeToString(), V012_IMAGE_REQ[2:])
        # Go always sets the wallet: an empty one is `82 01 00`.
        empty_wallet = ImageRequest("p", "m", "x").to_protobuf(v23).SerializeToString()
        self.assertTrue(empty_wallet.endswith(_h("82 01 00")))
        # For a node that reads both: v0.1.2's IPFS answer unless v0.2.3's fields are needed.
        self.assertEqual(ImageRequest("p", "m", "x", ipfs_node="http://i").preferred_wire(), V012)
        self.assertEqual(request.preferred_wire(), V023)

    def test_image_result_both_ways(self):
        stored = ImageResult("http://h", [{"cid": "QmAb", "image_name": "a.png"}])
        self.assertEqual(stored.to_protobuf(v12).SerializeToString(), V012_IMAGE_RES[2:])
        new = stored.to_protobuf(v23)
        self.assertEqual([(c.url, c.b64_json) for c in new.choices], [("ipfs://QmAb", "")])
        inline = ImageResult("", [{"b64_json": "iVBORw0KGgo="}, {"cid": "Qm1", "url": "ipfs://Qm1"}],
                             created=7)
        self.assertEqual(inline.to_protobuf(v23).SerializeToString(),
                         _h("08 07") + _field(2, _field(2, b"iVBORw0KGgo="))
                         + _field(2, _field(1, b"ipfs://Qm1")))
        # v0.1.2 names images by CID only: the inline one has no place there.
        self.assertEqual([c.cid for c in inline.to_protobuf(v12).choices], ["Qm1"])

    def test_projects_response_conversion(self):
        new = v23.AIProjectResponse.FromString(golden.HeartbeatTests.RES)
        self.assertEqual(convert(new, V012).SerializeToString(), _field(1, _field(1, b"DecentralGPT")
                                                                        + _field(2, b"m")))
        old = v12.AIProjectResponse.FromString(V012_HEARTBEAT[2:])
        self.assertEqual([[m.model for m in p.models] for p in convert(old, V023).projects],
                         [["Llama3-70B", "hi"]])

    def test_shared_messages_convert_by_bytes(self):
        identity = v23.PeerIdentityResponse.FromString(_h("2a 0a") + b"aicn/0.0.1" + _h("32 06") + b"v0.2.3")
        old = convert(identity, V012)
        self.assertEqual((type(old), old.agent_version), (v12.PeerIdentityResponse, "v0.2.3"))
        self.assertIs(convert(old, V012), old)


class ErrorCodeTests(SynchronousTestCase):
    def test_out_and_in(self):
        self.assertEqual(code_to_wire(ErrorCode.MODEL, V023), 1007)
        self.assertEqual(code_to_wire(ErrorCode.MODEL, V012), 1006)
        self.assertEqual(code_to_wire(ErrorCode.PROTOBUF, V023), 1004)
        self.assertEqual(code_to_wire(0, V023), 0)
        self.assertEqual(code_to_wire(5001, V023), 5001)  # a model's own code
        # A v0.2.3 peer's 1007 is a model error, not IPFS; its 1003 "Json error" our parsing error.
        self.assertEqual(code_from_wire(1007, V023), ErrorCode.MODEL)
        self.assertEqual(code_from_wire(1007, V012), ErrorCode.UPLOAD)
        self.assertEqual(code_from_wire(1003, V023), ErrorCode.PARSING)
        self.assertEqual(code_from_wire(1019, V023), ErrorCode.DEPRECATED)
        self.assertEqual(code_from_wire(5000, V023), ErrorCode.INTERNAL)
        self.assertEqual(code_from_wire(4242, V023), 4242)
        for code in ErrorCode:
            self.assertEqual(code_from_wire(code_to_wire(code, V023), V023), code)


class PropertyTests(SynchronousTestCase):
    """Bad input never escapes as anything but a decode error; our own messages always come back
    in the schema they were written in, whatever the other side would make of them."""

    @given(st.sampled_from([AI, CHAT, IMAGE, IDENTITY, v12.HOST_INFO]), st.binary(max_size=200),
           st.sampled_from([V012, V023]))
    def test_any_bytes(self, msg_type, data, claim):
        try:
            wire, kind, message = decode_body_tolerant(msg_type, data, claim)
        except BodyDecodeError:
            return
        self.assertIn(wire, (V012, V023))
        self.assertIn(kind, (None, "req", "res"))
        if message is not None:
            self.assertEqual(judge(message)[0], [])  # whatever is accepted fits

    # No lone surrogates: no str from a JSON body or a protobuf has one (aicn.jsontext
    # decodes them to U+FFFD), and no UTF-8 encoder takes them.
    _name = st.text(st.characters(min_codepoint=0x20, blacklist_characters="\x7f",
                                  blacklist_categories=("Cs",)), min_size=1, max_size=12)
    _content = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)

    @given(_name, _name, st.lists(st.tuples(st.sampled_from(["user", "system"]), _content),
                                  max_size=3),
           st.sampled_from([V012, V023]))
    def test_our_chat_requests_round_trip(self, project, model, messages, wire):
        request = ChatRequest(project, model, [{"role": r, "content": c} for r, c in messages])
        module = v23 if wire == V023 else v12
        data = req(request.to_protobuf(module).SerializeToString())
        decoded_wire, kind, message = decode_body_tolerant(CHAT, data, wire)
        self.assertEqual((decoded_wire, kind), (wire, "req"))
        self.assertEqual(ChatRequest.from_protobuf(message), request)
