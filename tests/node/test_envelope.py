"""Tests for aicn.node.envelope: envelopes, bodies and the dispatch rules.

Golden bytes are written out by hand from the schema (tag = field << 3 | wire
type), so they catch any change of what goes on the wire.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from aicn.wire import protocol_pb2 as pb
from aicn.node.envelope import (
    BODY_TYPES,
    HEARTBEAT_MESSAGE,
    BodyDecodeError,
    Disposition,
    EnvelopeError,
    UnknownMessageType,
    build_heartbeat,
    build_message,
    classify,
    decode_body,
    decode_message,
    encode_request,
    encode_response,
    type_name,
)


def _h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def _never(_key, _node):
    raise AssertionError("key check must not run")


class GoldenTests(SynchronousTestCase):
    def test_request_envelope(self):
        msg = build_message(
            msg_type=pb.HOST_INFO, client_version="v0.1.2", timestamp=1720000000, node_id="A",
            request_id="id", receiver="B", body=b"\x0a\x00",
        )
        self.assertEqual(
            msg.SerializeToString(),
            _h("0a 18"
               " 0a 06 76302e312e32"   # client_version
               " 10 80bc94b406"        # timestamp 1720000000
               " 1a 02 6964"           # id
               " 22 01 41"             # node_id
               " 2a 01 42"             # receiver
               " 10 01"                # type HOST_INFO
               " 1a 02 0a00"),         # body
        )

    def test_error_reply_envelope(self):
        msg = build_message(
            msg_type=pb.PEER_IDENTITY, client_version="", timestamp=0, node_id="B", request_id="x",
            receiver="A", result_code=1013, result_message="Decrypt error",
        )
        # type 0 and empty body are not written; result_code 1013 = f5 07.
        self.assertEqual(
            msg.SerializeToString(),
            _h("0a 09 1a 01 78 22 01 42 2a 01 41  20 f507  2a 0d") + b"Decrypt error",
        )

    def test_heartbeat(self):
        msg = build_heartbeat(client_version="v", timestamp=1, node_id="N", projects=[("P", ["m"])])
        self.assertEqual(
            msg.SerializeToString(),
            _h("0a 08 0a 01 76 10 01 22 01 4e"     # header: no id, no receiver, no key
               " 10 02"                            # AI_PROJECT
               " 1a 0a 12 08 0a 06 0a 01 50 12 01 6d"  # AIProjectBody{res{projects[{P,[m]}]}}
               " 2a 09") + b"heartbeat",
        )
        self.assertEqual(msg.result_message, HEARTBEAT_MESSAGE)

    def test_empty_requests(self):
        for msg_type, parts in BODY_TYPES.items():
            self.assertEqual(encode_request(msg_type, parts.request()), b"\x0a\x00", type_name(msg_type))
            self.assertEqual(encode_response(msg_type, parts.response()), b"\x12\x00", type_name(msg_type))


class BodyTests(SynchronousTestCase):
    def test_round_trip(self):
        req = pb.ChatCompletionRequest(project="p", model="m",
                                       messages=[pb.ChatCompletionMessage(role="user", content="hi")])
        kind, decoded = decode_body(pb.CHAT_COMPLETION, encode_request(pb.CHAT_COMPLETION, req))
        self.assertEqual((kind, decoded), ("req", req))
        res = pb.PeerIdentityResponse(agent_version="a", protocols=["/x"])
        self.assertEqual(decode_body(pb.PEER_IDENTITY, encode_response(pb.PEER_IDENTITY, res)), ("res", res))

    def test_empty_body_has_neither(self):
        self.assertEqual(decode_body(pb.HOST_INFO, b""), (None, None))

    def test_wrong_class_rejected(self):
        self.assertRaises(TypeError, encode_request, pb.HOST_INFO, pb.PeerIdentityRequest())
        self.assertRaises(TypeError, encode_response, pb.HOST_INFO, pb.HostInfoRequest())

    def test_unknown_type(self):
        exc = self.assertRaises(UnknownMessageType, decode_body, 5, b"")
        self.assertEqual(exc.msg_type, 5)
        self.assertRaises(UnknownMessageType, encode_request, 99, pb.PeerIdentityRequest())
        self.assertEqual(type_name(5), "5")
        self.assertEqual(type_name(pb.IMAGE_GENERATION), "IMAGE_GENERATION")

    def test_garbage_body(self):
        self.assertRaises(BodyDecodeError, decode_body, pb.PEER_IDENTITY, b"\x0a\x05\x01")

    def test_garbage_envelope(self):
        self.assertRaises(EnvelopeError, decode_message, b"\xff\xff\xff")

    def test_unknown_type_kept(self):
        data = build_message(msg_type=7, client_version="", timestamp=0, node_id="A").SerializeToString()
        self.assertEqual(decode_message(data).type, 7)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_fuzz_envelope(self, data):
        try:
            msg = decode_message(data)
        except EnvelopeError:
            return
        self.assertIsInstance(msg, pb.Message)

    @settings(max_examples=300, deadline=None)
    @given(st.integers(min_value=-(2**31), max_value=2**31 - 1), st.binary(max_size=200))
    def test_fuzz_body(self, msg_type, data):
        try:
            kind, value = decode_body(msg_type, data)
        except UnknownMessageType:
            self.assertNotIn(msg_type, BODY_TYPES)
            return
        except BodyDecodeError:
            return
        self.assertIn(kind, (None, "req", "res"))

    @settings(max_examples=100, deadline=None)
    @given(
        st.sampled_from(sorted(BODY_TYPES)), st.text(max_size=20), st.text(max_size=20),
        st.integers(min_value=0, max_value=2**62), st.binary(max_size=50),
        st.integers(min_value=-(2**31), max_value=2**31 - 1),
    )
    def test_envelope_round_trip(self, msg_type, node_id, request_id, timestamp, body, code):
        msg = build_message(msg_type=msg_type, client_version="v", timestamp=timestamp, node_id=node_id,
                            request_id=request_id, receiver="r", body=body, result_code=code)
        self.assertEqual(decode_message(msg.SerializeToString()), msg)


class ClassifyTests(SynchronousTestCase):
    own = "ME"

    def msg(self, node_id="OTHER", request_id="1", receiver="ME", key=b""):
        return build_message(msg_type=0, client_version="", timestamp=0, node_id=node_id,
                             request_id=request_id, receiver=receiver, node_pub_key=key)

    def test_addressed(self):
        self.assertIs(classify(self.msg(), self.own, "OTHER", _never), Disposition.ADDRESSED)

    def test_spoofed(self):
        self.assertIs(classify(self.msg(), self.own, "THIRD", _never), Disposition.SPOOFED)
        self.assertIs(classify(self.msg(), self.own, None, _never), Disposition.SPOOFED)
        # Spoofing is checked before everything, heartbeats included.
        hb = self.msg(request_id="", receiver="")
        self.assertIs(classify(hb, self.own, "THIRD", _never), Disposition.SPOOFED)

    def test_key_checked(self):
        seen = []

        def matches(key, node):
            seen.append((key, node))
            return key == b"good"

        self.assertIs(classify(self.msg(key=b"bad"), self.own, "OTHER", matches), Disposition.BAD_KEY)
        self.assertIs(classify(self.msg(key=b"good"), self.own, "OTHER", matches), Disposition.ADDRESSED)
        self.assertEqual(seen, [(b"bad", "OTHER"), (b"good", "OTHER")])

    def test_heartbeat(self):
        self.assertIs(classify(self.msg(request_id="", receiver=""), self.own, "OTHER", _never),
                      Disposition.HEARTBEAT)
        # Our own heartbeat is a heartbeat too (collectors store it).
        self.assertIs(classify(self.msg(node_id="ME", request_id="", receiver=""), self.own, "ME", _never),
                      Disposition.HEARTBEAT)

    def test_own(self):
        self.assertIs(classify(self.msg(node_id="ME", receiver="X"), self.own, "ME", _never), Disposition.OWN)
        self.assertIs(classify(self.msg(node_id="ME"), self.own, "ME", _never), Disposition.OWN)

    def test_not_for_us(self):
        self.assertIs(classify(self.msg(receiver="X"), self.own, "OTHER", _never), Disposition.NOT_FOR_US)
        # Only one of id/receiver empty is not a heartbeat.
        self.assertIs(classify(self.msg(receiver=""), self.own, "OTHER", _never), Disposition.NOT_FOR_US)
