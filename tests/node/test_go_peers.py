"""Our application among simulated Go nodes of v0.2.3 and v0.1.2, byte for byte.

A simulated Go node is a key on the in-memory bus that publishes the bytes a
Go node of its release writes (header ``client_version`` its tag, bodies the
golden bytes of tests.node.test_protocol_v023 and tests.node.test_schemas,
encrypted as Go encrypts them) and reads what we publish to it with its
schema.  Heartbeats of both are collected; requests from each are answered
in its schema and numbering; our requests to each go out in its schema, and
its answers (and error codes) come back with their meaning.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from aicn.errors import ErrorCode
from aicn.models.chat import ChatRequest, ChatResult
from aicn.models.errors import ModelError
from aicn.models.image import ImageRequest, ImageResult
from aicn.node.application import AnswerError
from aicn.node.appbackend import ApplicationBackend
from aicn.node.crypto import open_body, public_key_from_peer_id, seal_body
from aicn.node.envelope import build_message, decode_message
from aicn.p2p.keys import PrivateKey
from aicn.wire import protocol_pb2 as v12
from aicn.wire import protocol_v023_pb2 as v23
from aicn.wire.versions import V012, V023
from tests.node.test_application import Net, run
from tests.node.test_protocol import _h
from tests.node import test_protocol_v023 as golden
from tests.node.test_schemas import V012_CHAT_REQ, V012_HEARTBEAT, V012_IMAGE_REQ, req, res

AI, CHAT, IMAGE = v12.AI_PROJECT, v12.CHAT_COMPLETION, v12.IMAGE_GENERATION

#: Go v0.2.3's ChatCompletionResponse for {created, "Hello", stop, usage 44/22/66, id, object}.
CHAT_RES = (
    _h("08 80 ae d3 b4 06")
    + _h("12 1a 12 12 0a 09") + b"assistant" + _h("12 05") + b"Hello" + _h("1a 04") + b"stop"
    + _h("1a 06 08 2c 10 16 18 42")
    + _h("22 0a") + b"chatcmpl-1" + _h("2a 0f") + b"chat.completion"
)
RESULT = ChatResult(created=1721030400,
                    choices=[{"index": 0, "message": {"role": "assistant", "content": "Hello"},
                              "finish_reason": "stop"}],
                    usage={"completion_tokens": 44, "prompt_tokens": 22, "total_tokens": 66},
                    id="chatcmpl-1", object="chat.completion")


class GoNode:
    """A Go node of release ``version`` on the bus (``version`` "" = an unstamped build)."""

    def __init__(self, net: Net, version: str) -> None:
        self.net = net
        self.version = version
        self.key = PrivateKey.generate("secp256k1")
        self.node_id = str(self.key.peer_id())

    def publish(self, msg_type: int, body: bytes, *, receiver: str = "", request_id: str = "", result_code=0,
                result_message: str = "", encrypt: bool = True) -> None:
        node_pub_key = b""
        if receiver and body and encrypt:
            body, node_pub_key = seal_body(self.key, public_key_from_peer_id(receiver), body)
        msg = build_message(msg_type=msg_type, client_version=self.version, timestamp=1721030400,
                            node_id=self.node_id, request_id=request_id, receiver=receiver,
                            node_pub_key=node_pub_key, body=body, result_code=result_code,
                            result_message=result_message)
        self.net.inject(msg, self.key.peer_id())

    def heartbeat(self, body: bytes) -> None:
        self.publish(AI, body, result_message="heartbeat")

    def inbox(self) -> list:
        """Messages published to us, with their plaintext bodies: ``[(message, plaintext)]``."""
        out = []
        for data in self.net.bus.payloads():
            msg = decode_message(data)
            if msg.header.receiver == self.node_id:
                out.append((msg, open_body(self.key, msg.header.node_pub_key, msg.body)))
        return out


class CollectorTests(SynchronousTestCase):
    def setUp(self):
        self.net = Net(self)
        self.collector = self.net.node(collector=True)
        self.backend = ApplicationBackend(self.collector)
        self.go23, self.go12 = GoNode(self.net, "v0.2.3"), GoNode(self.net, "v0.1.2")

    def test_heartbeats_of_both_listed(self):
        self.go12.heartbeat(V012_HEARTBEAT)
        self.net.clock.advance(1)
        self.go23.heartbeat(golden.HeartbeatTests.BODY)
        peers = self.successResultOf(run(self.backend.collected_peers()))
        self.assertEqual(set(peers), {self.go23.node_id, self.go12.node_id})
        models = self.successResultOf(run(self.backend.projects_models("DecentralGPT")))
        self.assertEqual(models, ["m", "Llama3-70B", "hi"])  # newest heartbeat first
        self.assertEqual(self.successResultOf(run(self.backend.projects_peers("DecentralGPT", "m"))),
                         [self.go23.node_id])
        # v0.2.3's entry with its type, idle and cid (never the API URL), and node_type.
        records = {r.node_id: r for r in self.collector.fresh_peers()}
        self.assertEqual(records[self.go23.node_id].projects, [{
            "project": "DecentralGPT", "models": ["m"],
            "instances": [{"model": "m", "type": 0, "idle": 1, "cid": "d15c4007271b"}]}])
        self.assertEqual(records[self.go23.node_id].node_type, 4)
        self.assertEqual(records[self.go12.node_id].projects,
                         [{"project": "DecentralGPT", "models": ["Llama3-70B", "hi"]}])
        self.assertEqual(records[self.go12.node_id].node_type, 0)
        detail = self.successResultOf(run(self.backend.projects_peers_detail("DecentralGPT", "m")))
        self.assertEqual([(d["node_id"], d["idle"], d["cid"]) for d in detail],
                         [(self.go23.node_id, 1, "d15c4007271b")])
        self.assertEqual(self.collector.stats["dropped_malformed"], 0)
        # What each speaks is known now.
        self.assertEqual(self.collector.wire_for(self.go23.node_id), V023)
        self.assertEqual(self.collector.wire_for(self.go12.node_id), V012)

    def test_a_heartbeat_that_contradicts_its_version(self):
        # An unstamped or odd build: the body decides, counted and logged.
        liar = GoNode(self.net, "v0.1.2")
        liar.heartbeat(golden.HeartbeatTests.BODY)
        self.assertEqual(self.collector.stats["schema_fallbacks"], 1)
        self.assertEqual(self.collector.wire_for(liar.node_id), V023)
        [record] = [r for r in self.collector.fresh_peers() if r.node_id == liar.node_id]
        self.assertEqual(record.projects[0]["models"], ["m"])

    def test_garbage_heartbeat_dropped(self):
        self.go23.heartbeat(res(_h("0a 06 0a 02 50 01 12 00")))  # project "P\x01"
        self.assertEqual(self.collector.stats["dropped_malformed"], 1)
        self.assertEqual(self.collector.fresh_peers(), [])


class AnsweringGoTests(SynchronousTestCase):
    """Requests of Go nodes, answered in their schema and numbering."""

    def setUp(self):
        self.net = Net(self)
        self.seen = []

        async def chat(request, context):
            parsed = ChatRequest.coerce(request)
            self.seen.append((parsed, context.wire))
            if parsed.model == "bad":
                raise ModelError("Post HTTP request error, connection refused")
            return 0, "ok", RESULT

        self.worker = self.net.node(model_handlers={CHAT: chat})

    def test_chat_from_v023(self):
        go = GoNode(self.net, "v0.2.3")
        go.publish(CHAT, req(golden.ChatTests.STRING_REQ), receiver=self.worker.node_id, request_id="r1")
        self.assertEqual(self.seen, [(ChatRequest("p", "m", [{"role": "user", "content": "hi"}]), V023)])
        [(answer, plaintext)] = go.inbox()
        self.assertEqual(answer.header.client_version, f"v0.2.3 ({self.worker.client_version})")
        self.assertEqual((answer.header.id, answer.result_code, answer.result_message), ("r1", 0, "ok"))
        self.assertEqual(answer.header.timestamp, 1721030400)  # the model's created, as Go
        self.assertEqual(plaintext.hex(" "), res(CHAT_RES).hex(" "))

    def test_chat_with_parts_cid_and_wallet(self):
        go = GoNode(self.net, "v0.2.3")
        go.publish(CHAT, req(golden.ChatTests.PARTS_REQ), receiver=self.worker.node_id, request_id="r2")
        [(parsed, wire)] = self.seen
        self.assertEqual((parsed.cid, parsed.wallet, parsed.stream, wire), ("c1", "w", True, V023))
        self.assertEqual(parsed.messages[0]["content"][0], {"type": "text", "text": "hi"})

    def test_model_error_in_v023_numbering(self):
        go = GoNode(self.net, "v0.2.3")
        body = req(golden.ChatTests.STRING_REQ.replace(_h("12 01 6d"), _h("12 03") + b"bad"))
        go.publish(CHAT, body, receiver=self.worker.node_id, request_id="r3")
        [(answer, plaintext)] = go.inbox()
        # Our 1006 "model error" is v0.2.3's 1007 (its 1006 is "Rendezvous error").
        self.assertEqual((answer.result_code, answer.result_message),
                         (1007, "Post HTTP request error, connection refused"))
        self.assertEqual(plaintext, b"")

    def test_chat_from_v012(self):
        go = GoNode(self.net, "v0.1.2")
        go.publish(CHAT, V012_CHAT_REQ, receiver=self.worker.node_id, request_id="r4")
        self.assertEqual(self.seen, [(ChatRequest("p", "m", [{"role": "user", "content": "hi"}]), V012)])
        [(answer, plaintext)] = go.inbox()
        self.assertEqual(answer.header.client_version, f"v0.1.2 ({self.worker.client_version})")
        # v0.1.2's response: no id, no object; the rest the same bytes.
        self.assertEqual(plaintext.hex(" "), res(CHAT_RES[: CHAT_RES.index(_h("22 0a"))]).hex(" "))
        v012_bad = req(V012_CHAT_REQ[2:].replace(_h("12 01 6d"), _h("12 03") + b"bad"))
        go.publish(CHAT, v012_bad, receiver=self.worker.node_id, request_id="r5")
        self.assertEqual(go.inbox()[-1][0].result_code, 1006)

    def test_undecodable_request_in_v023_numbering(self):
        go = GoNode(self.net, "v0.2.3")
        go.publish(CHAT, b"\xff\xff", receiver=self.worker.node_id, request_id="r6")
        [(answer, _)] = go.inbox()
        self.assertEqual(answer.result_code, 1004)  # v0.2.3's "Protobuf serialization error"

    def test_projects_answer_in_v023(self):
        self.successResultOf(run(self.worker.register("P", [{"model": "m", "api": "http://127.0.0.1:9/x",
                                                             "type": 1, "cid": "c9"}])))
        go = GoNode(self.net, "v0.2.3")
        go.publish(AI, _h("0a 00"), receiver=self.worker.node_id, request_id="r7")
        [(answer, plaintext)] = go.inbox()
        # {project "P", models [{model "m", type 1, cid "c9"}]} (no API, idle 0 omitted), node_type 4.
        self.assertEqual(plaintext.hex(" "), res(_h("0a 0e 0a 01") + b"P" + _h("12 09 0a 01") + b"m"
                                                 + _h("18 01 2a 02") + b"c9" + _h("10 04")).hex(" "))
        self.assertEqual(v23.AIProjectBody.FromString(plaintext).res.projects[0].models[0].cid, "c9")


class RequestingGoTests(SynchronousTestCase):
    """Our requests to Go nodes: their schema out, their meaning back."""

    def setUp(self):
        self.net = Net(self)
        self.app = self.net.node()
        self.net.node()  # a pubsub peer, so that a heard heartbeat makes a node reachable

    def go_node(self, version: str, heartbeat: bytes) -> GoNode:
        go = GoNode(self.net, version)
        go.heartbeat(heartbeat)
        return go

    def test_chat_to_v023(self):
        go = self.go_node("v0.2.3", golden.HeartbeatTests.BODY)
        hi = ChatRequest("p", "m", [{"role": "user", "content": "hi"}])
        d = run(self.app.request(go.node_id, CHAT, hi))
        [(sent, plaintext)] = go.inbox()
        self.assertEqual(sent.header.client_version, f"v0.2.3 ({self.app.client_version})")
        self.assertEqual(plaintext.hex(" "), req(golden.ChatTests.STRING_REQ).hex(" "))
        go.publish(CHAT, res(CHAT_RES), receiver=self.app.node_id, request_id=sent.header.id)
        self.assertEqual(ChatResult.coerce(self.successResultOf(d)), RESULT)

    def test_v023_error_codes_mean_theirs(self):
        go = self.go_node("v0.2.3", golden.HeartbeatTests.BODY)
        for theirs, ours in ((1007, ErrorCode.MODEL), (1006, ErrorCode.RENDEZVOUS), (1003, ErrorCode.PARSING),
                             (1004, ErrorCode.PROTOBUF), (1005, ErrorCode.TIMEOUT)):
            d = run(self.app.request(go.node_id, CHAT, ChatRequest("p", "m")))
            sent = go.inbox()[-1][0]
            # Go's TransformErrorResponse: no body, no key.
            go.publish(CHAT, b"", receiver=self.app.node_id, request_id=sent.header.id, result_code=theirs,
                       result_message="can not find in registered project and model")
            err = self.failureResultOf(d, AnswerError).value
            self.assertEqual((err.code, err.message), (ours, "can not find in registered project and model"))

    def test_chat_to_v012(self):
        go = self.go_node("v0.1.2", V012_HEARTBEAT)
        d = run(self.app.request(go.node_id, CHAT, ChatRequest("p", "m", [{"role": "user", "content": "hi"}],
                                                                 cid="c1", wallet="w")))
        [(sent, plaintext)] = go.inbox()
        self.assertEqual(sent.header.client_version, f"v0.1.2 ({self.app.client_version})")
        self.assertEqual(plaintext.hex(" "), V012_CHAT_REQ.hex(" "))  # v0.2.3's fields have no place
        go.publish(CHAT, b"", receiver=self.app.node_id, request_id=sent.header.id, result_code=1007,
                   result_message="Upload error")
        self.assertEqual(self.failureResultOf(d, AnswerError).value.code, ErrorCode.UPLOAD)

    def test_image_to_v023_and_v012(self):
        go23 = self.go_node("v0.2.3", golden.HeartbeatTests.BODY)
        request = ImageRequest("SuperImage", "superImage", "a bird", n=2, size="1024x1024", width=1024,
                               height=1024, response_format="b64_json", cid="c", step=20, wallet="0xab")
        d = run(self.app.request(go23.node_id, IMAGE, request))
        [(sent, plaintext)] = go23.inbox()
        self.assertEqual(plaintext.hex(" "), req(golden.ImageTests.REQ).hex(" "))
        answer = res(_h("08 ea 87 f6 f5 05") + _h("12 0e 12 0c") + b"iVBORw0KGgo=")
        go23.publish(IMAGE, answer, receiver=self.app.node_id, request_id=sent.header.id)
        result = ImageResult.coerce(self.successResultOf(d))
        self.assertEqual(result.to_json(), {"ipfs_node": "", "created": 1589478378, "choices": [
            {"cid": "", "image_name": "", "b64_json": "iVBORw0KGgo="}]})

        go12 = self.go_node("v0.1.2", V012_HEARTBEAT)
        d = run(self.app.request(go12.node_id, IMAGE, ImageRequest("p", "m", "a bird",
                                                                     ipfs_node="http://122.99.183.54:4002")))
        [(sent, plaintext)] = go12.inbox()
        self.assertEqual(plaintext.hex(" "), V012_IMAGE_REQ.hex(" "))
        stored = res(_h("0a 08") + b"http://h" + _h("12 0d 0a 04") + b"QmAb" + _h("12 05") + b"a.png")
        go12.publish(IMAGE, stored, receiver=self.app.node_id, request_id=sent.header.id)
        self.assertEqual(ImageResult.coerce(self.successResultOf(d)).to_json(),
                         {"ipfs_node": "http://h", "choices": [{"cid": "QmAb", "image_name": "a.png"}]})

    def test_project_peer_of_v023(self):
        go = self.go_node("v0.2.3", golden.HeartbeatTests.BODY)
        backend = ApplicationBackend(self.app)
        d = run(backend.project_peer_detail(go.node_id))
        sent = go.inbox()[-1][0]
        go.publish(AI, res(golden.HeartbeatTests.RES), receiver=self.app.node_id, request_id=sent.header.id)
        self.assertEqual(self.successResultOf(d), [{"project": "DecentralGPT", "models": [
            {"model": "m", "type": 0, "idle": 1, "cid": "d15c4007271b"}]}])

    def test_identify_agent_names_the_schema(self):
        # An unstamped heartbeat says nothing; identify's agent_version does.
        net = Net(self)
        go = GoNode(net, "")
        app = net.node(peer_agent=lambda node_id: "v0.2.3" if node_id == go.node_id else None, wire="v0.1.2")
        net.node()
        go.heartbeat(_h("12 00"))
        self.assertEqual(app.wire_for(go.node_id), V023)
        d = run(app.request(go.node_id, CHAT, ChatRequest("p", "m", [{"role": "user", "content": "hi"}])))
        self.assertEqual(go.inbox()[-1][1], req(golden.ChatTests.STRING_REQ))
        d.addErrback(lambda _: None)  # never answered
        # Without either, our own App.WireVersion.
        stranger = GoNode(net, "")
        stranger.heartbeat(_h("12 00"))
        self.assertEqual(app.wire_for(stranger.node_id), V012)

    def test_aicn_peers_get_image_requests_in_v012(self):
        other = self.net.apps[1]
        self.successResultOf(run(other.register("P", [{"model": "m", "api": "http://127.0.0.1:9/x"}])))
        self.assertEqual(self.app.wire_for(other.node_id), V023)  # its heartbeat: v0.2.3, aicn
        plain = ImageRequest("P", "m", "a bird", ipfs_node="http://i")
        self.assertEqual(self.app.wire_for(other.node_id, plain), V012)
        self.assertEqual(self.app.wire_for(other.node_id, ImageRequest("P", "m", "x", width=64)), V023)
        # A Go node reads its own schema only.
        go = self.go_node("v0.2.3", golden.HeartbeatTests.BODY)
        self.assertEqual(self.app.wire_for(go.node_id, plain), V023)

    def test_a_request_to_ourselves_never_touches_a_schema(self):
        before = len(self.net.bus.published)
        # No handler: 1010 in our numbering, answered locally, nothing published.
        err = self.failureResultOf(run(self.app.request(self.app.node_id, CHAT, ChatRequest("p", "m"))),
                                   AnswerError).value
        self.assertEqual(err.code, ErrorCode.UNSUPPORTED)
        self.assertEqual(len(self.net.bus.published), before)
