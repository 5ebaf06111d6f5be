"""Tests for the application schema (proto/protocol.proto) and its generated code.

The golden byte strings below were written out by hand from the schema (tag =
field << 3 | wire type, base-128 varints), not produced by the code under
test, so any edit that changes what goes on the wire makes them fail.
"""

from __future__ import annotations

import filecmp
import importlib.util
import tempfile
from pathlib import Path

from google.protobuf import descriptor
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from aicn.wire import protocol_pb2 as pb

REPO_ROOT = Path(__file__).resolve().parents[2]


def _h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", "").replace("\n", ""))


def _load_generator():
    spec = importlib.util.spec_from_file_location(
        "_aicn_proto_generate", REPO_ROOT / "proto" / "generate.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class GeneratedCodeTests(SynchronousTestCase):
    """The committed *_pb2 files are exactly what protoc makes of the schemas."""

    def test_committed_files_up_to_date(self):
        try:
            import grpc_tools.protoc  # noqa: F401
        except ImportError:
            raise self.skipTest(
                "grpcio-tools is not installed; install the 'test' extra to check "
                "that aicn/wire/protocol_pb2.py matches proto/protocol.proto"
            )
        gen = _load_generator()
        with tempfile.TemporaryDirectory() as tmp:
            pairs = gen.generate(tmp)
            committed_paths = {c.relative_to(REPO_ROOT).as_posix() for _, c in pairs}
            self.assertLessEqual(
                {"aicn/wire/protocol_pb2.py", "aicn/wire/protocol_pb2.pyi",
                 "aicn/wire/protocol_v023_pb2.py", "aicn/wire/protocol_v023_pb2.pyi"},
                committed_paths,
            )
            self.assertGreaterEqual(len(pairs), 14)
            for path, committed in pairs:
                self.assertTrue(
                    filecmp.cmp(path, committed, shallow=False),
                    f"{committed} is stale: run `python proto/generate.py` and commit",
                )


# (message full name, field name) -> (number, type, label)
_T = descriptor.FieldDescriptor
_STR, _BYTES, _MSG, _ENUM = _T.TYPE_STRING, _T.TYPE_BYTES, _T.TYPE_MESSAGE, _T.TYPE_ENUM
_I32, _I64, _U32, _U64, _BOOL = _T.TYPE_INT32, _T.TYPE_INT64, _T.TYPE_UINT32, _T.TYPE_UINT64, _T.TYPE_BOOL
_ONE, _REP = "one", "rep"

# The v0.1.2 schema (digest §4.1), field by field.
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
        "public_key": (1, _BYTES, _ONE), "listen_addrs": (2, _STR, _REP),
        "protocols": (3, _STR, _REP), "protocol_version": (5, _STR, _ONE),
        "agent_version": (6, _STR, _ONE),
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
    "AIProjectRequest": {},
    "AIProjectResponse": {"projects": (1, _MSG, _REP)},
    "AIProjectOfNode": {"project": (1, _STR, _ONE), "models": (2, _STR, _REP)},
    "ChatCompletionMessage": {"role": (1, _STR, _ONE), "content": (2, _STR, _ONE)},
    "ChatCompletionRequest": {
        "project": (1, _STR, _ONE), "model": (2, _STR, _ONE),
        "messages": (3, _MSG, _REP), "stream": (4, _BOOL, _ONE),
    },
    "ChatCompletionResponse": {
        "created": (1, _I64, _ONE), "choices": (2, _MSG, _REP), "usage": (3, _MSG, _ONE),
    },
    "ChatCompletionResponse.ChatResponseChoice": {
        "index": (1, _I32, _ONE), "message": (2, _MSG, _ONE), "finish_reason": (3, _STR, _ONE),
    },
    "ChatCompletionResponse.ChatResponseUsage": {
        "completion_tokens": (1, _I32, _ONE), "prompt_tokens": (2, _I32, _ONE),
        "total_tokens": (3, _I32, _ONE),
    },
    "ImageGenerationRequest": {
        "project": (1, _STR, _ONE), "model": (2, _STR, _ONE), "prompt": (3, _STR, _ONE),
        "number": (4, _I32, _ONE), "size": (5, _STR, _ONE), "ipfs_node": (16, _STR, _ONE),
    },
    "ImageGenerationResponse": {"ipfs_node": (1, _STR, _ONE), "choices": (2, _MSG, _REP)},
    "ImageGenerationResponse.ImageResponseChoice": {
        "cid": (1, _STR, _ONE), "image_name": (2, _STR, _ONE),
    },
}

BODIES = {
    "PeerIdentityBody": ("PeerIdentityRequest", "PeerIdentityResponse"),
    "HostInfoBody": ("HostInfoRequest", "HostInfoResponse"),
    "AIProjectBody": ("AIProjectRequest", "AIProjectResponse"),
    "ChatCompletionBody": ("ChatCompletionRequest", "ChatCompletionResponse"),
    "ImageGenerationBody": ("ImageGenerationRequest", "ImageGenerationResponse"),
}


def _all_messages(file_desc):
    def walk(desc, prefix):
        name = prefix + desc.name
        yield name, desc
        for nested in desc.nested_types:
            yield from walk(nested, name + ".")

    for desc in file_desc.message_types_by_name.values():
        yield from walk(desc, "")


class SchemaTests(SynchronousTestCase):
    """The descriptor is the v0.1.2 schema, no more and no less."""

    def test_package(self):
        self.assertEqual(pb.DESCRIPTOR.package, "protocol")
        self.assertEqual(pb.DESCRIPTOR.name, "protocol.proto")
        self.assertEqual(pb.Message.DESCRIPTOR.full_name, "protocol.Message")
        self.assertEqual(pb.HostInfoResponse.OSInfo.DESCRIPTOR.full_name,
                         "protocol.HostInfoResponse.OSInfo")

    def test_message_type_enum(self):
        values = {v.name: v.number for v in pb.MessageType.DESCRIPTOR.values}
        self.assertEqual(values, {
            "PEER_IDENTITY": 0, "HOST_INFO": 1, "AI_PROJECT": 2,
            "CHAT_COMPLETION": 16, "IMAGE_GENERATION": 17,
        })
        from google.protobuf import descriptor_pb2

        proto = descriptor_pb2.EnumDescriptorProto()
        pb.MessageType.DESCRIPTOR.CopyToProto(proto)
        # Enum reserved ranges are inclusive.
        self.assertEqual([(r.start, r.end) for r in proto.reserved_range], [(3, 15)])

    def test_fields(self):
        messages = dict(_all_messages(pb.DESCRIPTOR))
        expected_names = set(EXPECTED_FIELDS) | set(BODIES)
        self.assertEqual(set(messages), expected_names)
        for name, fields in EXPECTED_FIELDS.items():
            desc = messages[name]
            got = {
                f.name: (f.number, f.type, _REP if f.is_repeated else _ONE) for f in desc.fields
            }
            self.assertEqual(got, fields, name)
            self.assertEqual(desc.oneofs, [], name)

    def test_body_wrappers(self):
        for name, (req, res) in BODIES.items():
            desc = getattr(pb, name).DESCRIPTOR
            self.assertEqual([o.name for o in desc.oneofs], ["data"], name)
            got = {(f.name, f.number, f.message_type.name, f.containing_oneof.name)
                   for f in desc.fields}
            self.assertEqual(got, {("req", 1, req, "data"), ("res", 2, res, "data")}, name)

    def test_image_request_reserved(self):
        ranges = [
            (r.start, r.end) for r in _reserved_ranges(pb.ImageGenerationRequest.DESCRIPTOR)
        ]
        self.assertEqual(ranges, [(6, 16)])  # 6..15 inclusive


def _reserved_ranges(desc):
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.DescriptorProto()
    desc.CopyToProto(proto)
    return proto.reserved_range


class GoldenBytesTests(SynchronousTestCase):
    """Encodings written out by hand from the schema."""

    def assertWire(self, message, expected: bytes):
        self.assertEqual(message.SerializeToString(deterministic=True).hex(" "), expected.hex(" "))
        decoded = type(message).FromString(expected)
        self.assertEqual(decoded, message)

    def test_empty_requests(self):
        # field 1 (req), wire type 2, length 0.
        self.assertWire(pb.HostInfoBody(req=pb.HostInfoRequest()), _h("0a 00"))
        self.assertWire(pb.PeerIdentityBody(req=pb.PeerIdentityRequest()), _h("0a 00"))
        self.assertWire(pb.AIProjectBody(req=pb.AIProjectRequest()), _h("0a 00"))
        # An empty response is field 2.
        self.assertWire(pb.AIProjectBody(res=pb.AIProjectResponse()), _h("12 00"))
        # Nothing set at all is the empty string, not "0a 00": the oneof matters.
        self.assertEqual(pb.HostInfoBody().SerializeToString(), b"")

    def test_heartbeat(self):
        body = pb.AIProjectBody(res=pb.AIProjectResponse(
            projects=[pb.AIProjectOfNode(project="P", models=["m1", "m2"])]
        ))
        body_bytes = _h(
            "12 0d"             # res, 13 bytes
            " 0a 0b"            # projects[0], 11 bytes
            " 0a 01 50"         # project "P"
            " 12 02 6d 31"      # models "m1"
            " 12 02 6d 32"      # models "m2"
        )
        self.assertWire(body, body_bytes)
        msg = pb.Message(
            header=pb.MessageHeader(client_version="v0.1.2", timestamp=1721030400, node_id="n"),
            type=pb.AI_PROJECT,
            body=body_bytes,
        )
        self.assertWire(msg, _h(
            "0a 11"                      # header, 17 bytes
            " 0a 06 76 30 2e 31 2e 32"   # client_version "v0.1.2"
            " 10 80 ae d3 b4 06"         # timestamp 1721030400
            " 22 01 6e"                  # node_id "n"
            " 10 02"                     # type AI_PROJECT
            " 1a 0f" + body_bytes.hex()  # body
        ))

    def test_v013_heartbeat_node_type_is_tolerated(self):
        # A v0.1.3+ heartbeat adds AIProjectResponse field 2 (uint32 node_type).
        data = _h("0a 05 0a 03 61 62 63  10 01")
        res = pb.AIProjectResponse.FromString(data)
        self.assertEqual([p.project for p in res.projects], ["abc"])
        # Unknown fields survive a round trip, so re-publishing does not lose them.
        self.assertEqual(res.SerializeToString(), data)

    def test_error_reply(self):
        msg = pb.Message(
            header=pb.MessageHeader(id="i"),
            type=pb.CHAT_COMPLETION,
            result_code=1013,
            result_message="Decrypt error",
        )
        self.assertWire(msg, _h(
            "0a 03 1a 01 69"   # header{id "i"}
            " 10 10"           # type 16
            " 20 f5 07"        # result_code 1013
            " 2a 0d 44 65 63 72 79 70 74 20 65 72 72 6f 72"
        ))

    def test_peer_identity_request_is_plain_zero_type(self):
        # PEER_IDENTITY is 0, so the type field is omitted entirely.
        msg = pb.Message(type=pb.PEER_IDENTITY, body=_h("0a 00"))
        self.assertWire(msg, _h("1a 02 0a 00"))

    def test_chat_completion_request(self):
        req = pb.ChatCompletionRequest(
            project="p", model="m",
            messages=[pb.ChatCompletionMessage(role="user", content="hi")],
            stream=True,
        )
        self.assertWire(req, _h(
            "0a 01 70"                              # project
            " 12 01 6d"                             # model
            " 1a 0a 0a 04 75 73 65 72 12 02 68 69"  # messages[0]{role, content}
            " 20 01"                                # stream
        ))
        self.assertWire(pb.ChatCompletionBody(req=req), _h("0a 14") + req.SerializeToString())

    def test_chat_completion_response(self):
        res = pb.ChatCompletionResponse(
            created=1,
            choices=[pb.ChatCompletionResponse.ChatResponseChoice(
                index=0, message=pb.ChatCompletionMessage(role="a", content="b"),
                finish_reason="stop")],
            usage=pb.ChatCompletionResponse.ChatResponseUsage(
                completion_tokens=1, prompt_tokens=2, total_tokens=3),
        )
        self.assertWire(res, _h(
            "08 01"
            " 12 0e 12 06 0a 01 61 12 01 62 1a 04 73 74 6f 70"  # index 0 omitted
            " 1a 06 08 01 10 02 18 03"
        ))

    def test_image_generation_request_field_16(self):
        req = pb.ImageGenerationRequest(prompt="x", number=-1, ipfs_node="h")
        self.assertWire(req, _h(
            "1a 01 78"
            " 20 ff ff ff ff ff ff ff ff ff 01"  # int32 -1 sign-extended to 10 bytes
            " 82 01 01 68"                        # field 16: two-byte tag
        ))

    def test_host_info_response(self):
        res = pb.HostInfoResponse(
            os=pb.HostInfoResponse.OSInfo(os="linux"),
            cpu=[pb.HostInfoResponse.CpuInfo(model_name="c", total_cores=6, total_threads=12)],
            memory=pb.HostInfoResponse.MemoryInfo(total_physical_bytes=1 << 34,
                                                   total_usable_bytes=5),
            disk=[pb.HostInfoResponse.DiskInfo(drive_type="SSD", size_bytes=300)],
            gpu=[pb.HostInfoResponse.GpuInfo(vendor="v", product="p")],
        )
        self.assertWire(res, _h(
            "0a 07 0a 05 6c 69 6e 75 78"
            " 12 07 0a 01 63 10 06 18 0c"
            " 1a 08 08 80 80 80 80 40 10 05"     # 2**34 = 0x4_0000_0000
            " 22 08 0a 03 53 53 44 10 ac 02"     # 300 = 0b10_0101100
            " 2a 06 0a 01 76 12 01 70"
        ))


class DecoderRobustnessTests(SynchronousTestCase):
    """Garbage on the topic raises DecodeError, nothing else."""

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_garbage(self, data):
        for cls in (pb.Message, pb.AIProjectBody, pb.ChatCompletionBody, pb.HostInfoBody):
            try:
                cls.FromString(data)
            except DecodeError:
                pass

    @settings(max_examples=100, deadline=None)
    @given(
        st.text(max_size=20), st.integers(-(2**63), 2**63 - 1),
        st.sampled_from([0, 1, 2, 16, 17]), st.binary(max_size=50),
        st.integers(-(2**31), 2**31 - 1),
    )
    def test_message_round_trip(self, text, ts, mtype, body, code):
        msg = pb.Message(
            header=pb.MessageHeader(client_version=text, timestamp=ts, id=text, node_id=text,
                                    receiver=text, node_pub_key=body),
            type=mtype, body=body, result_code=code, result_message=text,
        )
        self.assertEqual(pb.Message.FromString(msg.SerializeToString()), msg)
