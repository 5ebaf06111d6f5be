"""Tests for the application protocol (aicn.node.application) and its backend.

Several Applications share an in-memory pubsub bus (tests/node/fakepubsub.py)
and a Twisted Clock; everything below runs synchronously.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from aicn.api.app import NodeAPI
from aicn.errors import AICNError, ErrorCode
from aicn.config import AIModel, AIProject
from aicn.hostinfo import HostInfoReport, empty_info
from aicn.models.chat import ChatRequest
from aicn.wire import protocol_pb2 as pb
from aicn.wire import protocol_v023_pb2 as pb23
from aicn.node.application import (
    PEER_FRESH_AGE,
    PEER_RETENTION,
    AnswerError,
    Application,
    ApplicationSettings,
)
from aicn.node.appbackend import NOT_REGISTERED_MESSAGE, ApplicationBackend
from aicn.node.crypto import seal_body
from aicn.node.envelope import build_heartbeat, build_message, decode_body, decode_message, encode_request
from aicn.node.modelwork import ModelWorker
from aicn.node.reach import LOOKUP_TIMEOUT
from aicn.node.schemas import convert
from aicn.p2p.keys import PrivateKey
from aicn.storage import Database
from tests.node.fakepubsub import FakeBus

KEYS = [PrivateKey.generate("secp256k1") for _ in range(4)]
ED_KEY = PrivateKey.generate("ed25519")
TOPIC = "DeepBrainChain"

HOST_INFO = {
    "os": {"os": "linux", "platform": "debian", "platform_family": "debian", "platform_version": "12",
           "kernel_version": "6.1.0", "kernel_arch": "x86_64"},
    "cpu": [{"model_name": "Test CPU", "total_cores": 4, "total_threads": 8}],
    "memory": {"total_physical_bytes": 17179869184, "total_usable_bytes": 17105440768},
    "disk": [{"drive_type": "SSD", "size_bytes": 240054796800, "model": "TOSHIBA-TR200",
              "serial_number": "29KB71U8K46S"}],
    "gpu": [{"vendor": "NVIDIA", "product": "NVIDIA H100"}],
}


def identity(key):
    return {
        "peer_id": str(key.peer_id()),
        "protocol_version": "aicn/0.0.1",
        "agent_version": "aicn-py/test",
        "addresses": ["/ip4/127.0.0.1/tcp/7001", "/ip6/::1/tcp/7001"],
        "protocols": ["/ipfs/id/1.0.0", "/floodsub/1.0.0"],
    }


def run(coro) -> Deferred:
    return Deferred.fromCoroutine(coro)


class Net:
    """Nodes on one bus and one clock."""

    def __init__(self, test: SynchronousTestCase) -> None:
        self.test = test
        self.bus = FakeBus()
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.apps: list[Application] = []

    def node(self, key=None, *, collector=False, projects=(), db_path=None, interval=60.0,
             host_report=None, hostinfo_provider=None, model_handlers=None, start=True,
             wire="v0.2.3", peer_agent=None, model_load=None) -> Application:
        key = key or KEYS[len(self.apps)]
        db = Database(db_path or self.test.mktemp())
        self.test.addCleanup(db.close)
        report = host_report or HostInfoReport(HOST_INFO)

        async def hostinfo():
            return report

        app = Application(
            self.clock, key, self.bus.pubsub(key.peer_id()), db,
            ApplicationSettings(topic=TOPIC, heartbeat_interval=interval, collector=collector,
                                ai_projects=tuple(projects), wire_version=wire),
            identify_provider=lambda: identity(key),
            hostinfo_provider=hostinfo_provider or hostinfo,
            model_handlers=model_handlers,
            peer_agent=peer_agent,
            model_load=model_load,
        )
        if start:
            app.start()
            self.test.addCleanup(app.stop)
        self.apps.append(app)
        return app

    def published(self, app: Application | None = None) -> list[pb.Message]:
        return [decode_message(p.data) for p in self.bus.published
                if app is None or str(p.from_peer) == app.node_id]

    def inject(self, msg: pb.Message, from_peer) -> None:
        self.bus.inject(TOPIC, msg.SerializeToString(), from_peer)


def request_msg(sender_key, receiver: str, msg_type=pb.PEER_IDENTITY, body=None, request_id="req-1",
                node_pub_key=b"", result_code=0, node_id=None) -> pb.Message:
    if body is None:
        body = encode_request(pb.PEER_IDENTITY, pb.PeerIdentityRequest())
    return build_message(
        msg_type=msg_type, client_version="v0.1.2", timestamp=1, node_id=node_id or str(sender_key.peer_id()),
        request_id=request_id, receiver=receiver, node_pub_key=node_pub_key, body=body,
        result_code=result_code,
    )


class RemoteRequestTests(SynchronousTestCase):
    def setUp(self):
        self.net = Net(self)
        self.a = self.net.node()
        self.b = self.net.node()
        self.backend = ApplicationBackend(self.a)

    def test_peer_info(self):
        data = self.successResultOf(run(self.backend.peer_info(self.b.node_id)))
        expected = identity(KEYS[1])
        self.assertEqual(data, expected)
        self.assertEqual(list(data), ["peer_id", "protocol_version", "agent_version", "addresses", "protocols"])
        self.assertEqual(len(self.a.requests), 0)
        self.assertEqual(self.b.stats["requests_answered"], 1)

    def test_request_and_answer_envelopes(self):
        self.successResultOf(run(self.backend.peer_info(self.b.node_id)))
        request, answer = self.net.published()
        self.assertEqual(request.header.node_id, self.a.node_id)
        self.assertEqual(request.header.receiver, self.b.node_id)
        # The schema first (b's version is not known: our default), then our agent.
        self.assertEqual(request.header.client_version, f"v0.2.3 ({self.a.client_version})")
        self.assertEqual(answer.header.client_version, f"v0.2.3 ({self.b.client_version})")
        self.assertEqual(request.header.timestamp, 1_700_000_000)
        self.assertEqual(request.header.node_pub_key, KEYS[0].public_key.marshal())
        self.assertEqual(answer.header.id, request.header.id)
        self.assertEqual((answer.header.node_id, answer.header.receiver), (self.b.node_id, self.a.node_id))
        self.assertEqual(answer.header.node_pub_key, KEYS[1].public_key.marshal())
        self.assertEqual((answer.result_code, answer.result_message), (0, "ok"))
        # Both echoes came back to their publishers and were ignored.
        self.assertEqual(self.a.stats["ignored_own"], 1)
        self.assertEqual(self.b.stats["ignored_own"], 1)

    def test_host_info(self):
        data = self.successResultOf(run(self.backend.host_info(self.b.node_id)))
        self.assertEqual(data, HOST_INFO)

    def test_host_info_failure_carries_partial_data(self):
        net = Net(self)
        a = net.node()
        partial = empty_info()
        partial["cpu"] = HOST_INFO["cpu"]
        b = net.node(host_report=HostInfoReport(partial, ("disk: permission denied",)))
        err = self.failureResultOf(run(ApplicationBackend(a).host_info(b.node_id)), AICNError).value
        self.assertEqual((err.code, err.message), (ErrorCode.HOST_INFO, "disk: permission denied"))
        self.assertEqual(err.data["cpu"], HOST_INFO["cpu"])

    def test_concurrent_host_info_requests_share_one_collection(self):
        net = Net(self)
        pending = []

        def slow():
            pending.append(Deferred())
            return pending[-1]

        a, c = net.node(), net.node()
        b = net.node(hostinfo_provider=slow)
        d1 = run(ApplicationBackend(a).host_info(b.node_id))
        d2 = run(ApplicationBackend(c).host_info(b.node_id))
        self.assertEqual(len(pending), 1)
        pending[0].callback(HostInfoReport(HOST_INFO))
        self.assertEqual(self.successResultOf(d1), HOST_INFO)
        self.assertEqual(self.successResultOf(d2), HOST_INFO)
        # The next request collects afresh.
        d3 = run(ApplicationBackend(a).host_info(b.node_id))
        self.assertEqual(len(pending), 2)
        pending[1].errback(OSError("sysfs gone"))
        err = self.failureResultOf(d3, AICNError).value
        self.assertEqual(err.code, ErrorCode.HOST_INFO)
        self.assertIn("sysfs gone", err.message)
        self.flushLoggedErrors(OSError)

    def test_project_peer(self):
        self.successResultOf(run(self.b.register("DecentralGPT", [
            {"model": "Llama3-70B", "api": "http://127.0.0.1:1042/v1/chat/completions", "type": 0},
            {"model": "Qwen2-72B", "api": "http://127.0.0.1:1043/v1/chat/completions", "type": 0},
        ])))
        self.successResultOf(run(self.b.register("SuperImage", [{"model": "superImage", "api": "http://x/", "type": 1}])))
        data = self.successResultOf(run(self.backend.project_peer(self.b.node_id)))
        self.assertEqual(data, [
            {"project": "DecentralGPT", "models": ["Llama3-70B", "Qwen2-72B"]},
            {"project": "SuperImage", "models": ["superImage"]},
        ])

    def test_own_node_answers_locally(self):
        self.successResultOf(run(self.a.register("P", [{"model": "m", "api": "http://x/"}])))
        before = len(self.net.bus.published)
        self.assertEqual(self.successResultOf(run(self.backend.peer_info(self.a.node_id))), identity(KEYS[0]))
        self.assertEqual(self.successResultOf(run(self.backend.host_info(self.a.node_id))), HOST_INFO)
        self.assertEqual(self.successResultOf(run(self.backend.project_peer(self.a.node_id))),
                         [{"project": "P", "models": ["m"]}])
        self.assertEqual(len(self.net.bus.published), before)

    def test_invalid_node_id(self):
        err = self.failureResultOf(run(self.backend.peer_info("not-a-peer")), AICNError).value
        self.assertEqual(err.code, ErrorCode.PARAMETER)
        self.assertEqual(self.net.bus.published, [])

    def test_publish_failure(self):
        self.a.pubsub.publish_error = RuntimeError("no peers")
        err = self.failureResultOf(run(self.backend.peer_info(self.b.node_id)), AICNError).value
        self.assertEqual(err.code, ErrorCode.INTERNAL)
        self.assertEqual(len(self.a.requests), 0)

    def test_model_type_without_handler(self):
        d = run(self.a.request(self.b.node_id, pb.IMAGE_GENERATION, pb.ImageGenerationRequest(prompt="p")))
        err = self.failureResultOf(d, AnswerError).value
        self.assertEqual((err.code, err.message), (ErrorCode.UNSUPPORTED, "Unsupported function"))
        self.assertIsNone(err.response)
        # The error reply was not answered back.
        self.assertEqual(len(self.net.published()), 2)

    def test_model_handler(self):
        seen = []

        async def chat(request, context):
            seen.append((request, context))
            if request.model == "bad":
                raise AICNError(ErrorCode.MODEL, "Model error: boom")
            return 0, "ok", pb.ChatCompletionResponse(
                created=1718691167,
                choices=[pb.ChatCompletionResponse.ChatResponseChoice(
                    message=pb.ChatCompletionMessage(role="assistant", content="Hello!"), finish_reason="stop")],
            )

        net = Net(self)
        a = net.node()
        b = net.node(model_handlers={pb.CHAT_COMPLETION: chat})
        req = pb.ChatCompletionRequest(project="p", model="m",
                                       messages=[pb.ChatCompletionMessage(role="user", content="Hi")])
        res = self.successResultOf(run(a.request(b.node_id, pb.CHAT_COMPLETION, req)))
        self.assertEqual(res.choices[0].message.content, "Hello!")
        # It went out in v0.2.3's schema (JSON content, the wallet set).
        self.assertEqual(seen[0][0], convert(req, "v0.2.3"))
        self.assertEqual(seen[0][0].messages[0].content, b'"Hi"')
        self.assertEqual(seen[0][1].requester, a.node_id)
        self.assertEqual(seen[0][1].wire, "v0.2.3")
        self.assertFalse(seen[0][1].local)
        # The answer's timestamp is the model's "created", as in the Go node.
        self.assertEqual(net.published(b)[-1].header.timestamp, 1718691167)
        req.model = "bad"
        err = self.failureResultOf(run(a.request(b.node_id, pb.CHAT_COMPLETION, req)), AnswerError).value
        self.assertEqual((err.code, err.message), (ErrorCode.MODEL, "Model error: boom"))


class UnreachableTests(SynchronousTestCase):
    """A request that cannot be delivered fails at once with 1005, never waiting out its timeout."""

    QUERIES = [(pb.PEER_IDENTITY, pb.PeerIdentityRequest()), (pb.HOST_INFO, pb.HostInfoRequest()),
               (pb.AI_PROJECT, pb.AIProjectRequest()),
               (pb.CHAT_COMPLETION, pb.ChatCompletionRequest(project="p", model="m")),
               (pb.IMAGE_GENERATION, pb.ImageGenerationRequest(prompt="p"))]

    def setUp(self):
        self.net = Net(self)
        self.stranger = str(KEYS[3].peer_id())

    def assert_unreachable(self, app, node_id, why):
        sent = len([m for m in self.net.published(app) if m.header.id])
        for msg_type, request in self.QUERIES:
            err = self.failureResultOf(run(app.request(node_id, msg_type, request)), AICNError).value
            self.assertEqual((err.code, err.message),
                             (ErrorCode.RENDEZVOUS, f"node {node_id} is not reachable: {why}"))
        self.assertEqual(len(app.requests), 0)
        self.assertEqual(len([m for m in self.net.published(app) if m.header.id]), sent)

    def test_no_peers_on_the_topic(self):
        a = self.net.node()
        self.assert_unreachable(a, self.stranger, f"this node has no peers on topic {TOPIC}, "
                                                  "so no request can be delivered")

    def test_node_nobody_has_heard_of(self):
        a = self.net.node()
        self.net.node()
        self.assert_unreachable(a, self.stranger, "not connected, no heartbeat in the last 10 min, "
                                                  f"not among our 1 peer on topic {TOPIC}, no DHT to look it up")

    def test_a_fresh_heartbeat_is_evidence(self):
        a = self.net.node()
        self.net.node()
        beat = build_heartbeat(client_version="v0.1.2", timestamp=1, node_id=self.stranger, projects=[])
        self.net.inject(beat, KEYS[3].peer_id())
        self.assertEqual(a.heard_at(self.stranger), self.net.clock.seconds())
        d = run(a.request(self.stranger, pb.PEER_IDENTITY, pb.PeerIdentityRequest()))
        self.assertNoResult(d)  # sent: it waits for the answer
        self.net.clock.advance(120)
        self.assertEqual(self.failureResultOf(d, AICNError).value.code, ErrorCode.TIMEOUT)
        # Ten minutes later the heartbeat no longer counts.
        self.net.clock.advance(PEER_FRESH_AGE - 120 + 1)
        self.assert_unreachable(a, self.stranger, "not connected, no heartbeat in the last 10 min, "
                                                  f"not among our 1 peer on topic {TOPIC}, no DHT to look it up")

    def test_answers_within_ten_seconds_with_a_dht_that_finds_nothing(self):
        class SilentDHT:
            async def lookup_peer(self, peer):
                return await Deferred()

        a = self.net.node(start=False)
        a.reachability.dht = SilentDHT()
        a.start()
        self.addCleanup(a.stop)
        self.net.node()
        d = run(a.request(self.stranger, pb.CHAT_COMPLETION, pb.ChatCompletionRequest(project="p", model="m")))
        self.net.clock.advance(LOOKUP_TIMEOUT - 0.1)
        self.assertNoResult(d)
        self.net.clock.advance(0.1)
        self.assertLessEqual(LOOKUP_TIMEOUT, 10)
        err = self.failureResultOf(d, AICNError).value
        self.assertEqual(err.code, ErrorCode.RENDEZVOUS)
        self.assertTrue(err.message.endswith("not found in the DHT"), err.message)
        self.assertEqual(len(a.requests), 0)

    def test_per_request_timeout(self):
        a, b = self.net.node(), self.net.node()
        self.net.bus.paused = True
        d = run(a.request(b.node_id, pb.CHAT_COMPLETION, pb.ChatCompletionRequest(project="p", model="m"),
                          timeout=2.5))
        self.net.clock.advance(2.4)
        self.assertNoResult(d)
        self.net.clock.advance(0.1)
        err = self.failureResultOf(d, AICNError).value
        self.assertEqual((err.code, err.message), (ErrorCode.TIMEOUT, "Processing timeout"))

    def test_per_request_timeout_bounds_a_local_answer(self):
        async def stuck(request, context):
            return await Deferred()

        a = self.net.node(model_handlers={pb.CHAT_COMPLETION: stuck})
        req = pb.ChatCompletionRequest(project="p", model="m")
        d = run(a.request(a.node_id, pb.CHAT_COMPLETION, req, timeout=3))
        self.net.clock.advance(2.9)
        self.assertNoResult(d)
        self.net.clock.advance(0.1)
        self.assertEqual(self.failureResultOf(d, AICNError).value.code, ErrorCode.TIMEOUT)
        # Without a timeout of its own, a local answer takes what the model takes.
        d = run(a.request(a.node_id, pb.CHAT_COMPLETION, req))
        self.net.clock.advance(3600)
        self.assertNoResult(d)
        d.cancel()
        self.failureResultOf(d, CancelledError)


class EncryptionTests(SynchronousTestCase):
    def test_plaintext_never_on_the_wire(self):
        async def chat(request, context):
            return 0, "ok", pb.ChatCompletionResponse(choices=[pb.ChatCompletionResponse.ChatResponseChoice(
                message=pb.ChatCompletionMessage(
                    role="assistant",
                    content="ANSWER-" + ChatRequest.coerce(request).messages[0]["content"]))])

        net = Net(self)
        a = net.node()
        b = net.node(model_handlers={pb.CHAT_COMPLETION: chat})
        req = pb.ChatCompletionRequest(project="proj-zz", model="model-zz",
                                       messages=[pb.ChatCompletionMessage(role="user", content="SECRET-PROMPT")])
        res = self.successResultOf(run(a.request(b.node_id, pb.CHAT_COMPLETION, req)))
        self.assertEqual(res.choices[0].message.content, "ANSWER-SECRET-PROMPT")
        wire = b"".join(net.bus.payloads())
        for secret in (b"SECRET-PROMPT", b"ANSWER-", b"proj-zz", b"model-zz"):
            self.assertNotIn(secret, wire)
        for msg in net.published():
            self.assertTrue(msg.header.node_pub_key)

    def test_strict_types_abort_without_encryption(self):
        net = Net(self)
        a = net.node()
        ed = net.node(ED_KEY)
        d = run(a.request(ed.node_id, pb.CHAT_COMPLETION, pb.ChatCompletionRequest(model="m")))
        self.assertEqual(self.failureResultOf(d, AICNError).value.code, ErrorCode.ENCRYPT)
        self.assertEqual(net.bus.published, [])

    def test_plaintext_fallback(self):
        net = Net(self)
        a = net.node()
        ed = net.node(ED_KEY)
        data = self.successResultOf(run(ApplicationBackend(a).peer_info(ed.node_id)))
        self.assertEqual(data["agent_version"], "aicn-py/test")
        request, answer = net.published()
        self.assertEqual((request.header.node_pub_key, answer.header.node_pub_key), (b"", b""))
        self.assertEqual(decode_body(pb.PEER_IDENTITY, request.body)[0], "req")
        # An ed25519 node cannot encrypt either; the answer is plaintext too.
        self.assertEqual(decode_body(pb.PEER_IDENTITY, answer.body)[0], "res")
        self.assertEqual(a.stats["sent_plaintext"], 1)
        self.assertEqual(ed.stats["sent_plaintext"], 1)

    def test_ed25519_node_cannot_answer_model_requests_in_plaintext(self):
        async def chat(request, context):
            return 0, "ok", pb.ChatCompletionResponse()

        net = Net(self)
        ed = net.node(ED_KEY, model_handlers={pb.CHAT_COMPLETION: chat})
        # A secp256k1 requester sends the request in plaintext only by hand.
        net.inject(request_msg(KEYS[0], ed.node_id, pb.CHAT_COMPLETION,
                               body=encode_request(pb.CHAT_COMPLETION, pb.ChatCompletionRequest())), KEYS[0].peer_id())
        reply = net.published(ed)[-1]
        self.assertEqual((reply.result_code, reply.body), (ErrorCode.ENCRYPT, b""))

    def test_undecryptable_request_gets_1013(self):
        net = Net(self)
        net.node()
        b = net.node()
        garbage = b"\x00" * 40
        net.inject(request_msg(KEYS[0], b.node_id, body=garbage, node_pub_key=KEYS[0].public_key.marshal()),
                   KEYS[0].peer_id())
        [reply] = net.published(b)
        self.assertEqual((reply.result_code, reply.result_message), (1013, "Decrypt error"))
        self.assertEqual((reply.body, reply.header.node_pub_key), (b"", b""))
        self.assertEqual((reply.header.id, reply.header.receiver), ("req-1", str(KEYS[0].peer_id())))

    def test_body_encrypted_for_someone_else_gets_1013(self):
        net = Net(self)
        net.node()
        b = net.node()
        body, key = seal_body(KEYS[0], KEYS[2].public_key, encode_request(pb.PEER_IDENTITY, pb.PeerIdentityRequest()))
        net.inject(request_msg(KEYS[0], b.node_id, body=body, node_pub_key=key), KEYS[0].peer_id())
        self.assertEqual(net.published(b)[-1].result_code, 1013)

    def test_undecryptable_answer_fails_request(self):
        net = Net(self)
        a = net.node()
        b = net.node()
        net.bus.paused = True
        d = run(a.request(b.node_id, pb.PEER_IDENTITY, pb.PeerIdentityRequest()))
        request_id = net.published(a)[0].header.id
        net.bus.paused = False
        net.inject(request_msg(KEYS[1], a.node_id, request_id=request_id, body=b"\x01" * 40,
                               node_pub_key=KEYS[1].public_key.marshal()), KEYS[1].peer_id())
        self.assertEqual(self.failureResultOf(d, AICNError).value.code, ErrorCode.DECRYPT)
        self.assertEqual(len(a.requests), 0)
        # Never answered back.
        self.assertEqual(net.published(a)[1:], [])


class DispatchTests(SynchronousTestCase):
    def setUp(self):
        self.net = Net(self)
        self.a = self.net.node()
        self.b = self.net.node()
        self.c_id = KEYS[2].peer_id()

    def test_unknown_type_gets_1010(self):
        self.net.inject(request_msg(KEYS[0], self.b.node_id, msg_type=5, body=b"\x0a\x00"), KEYS[0].peer_id())
        [reply] = self.net.published(self.b)
        self.assertEqual((reply.type, reply.result_code, reply.result_message), (5, 1010, "Unsupported function"))
        self.assertEqual(reply.body, b"")

    def test_unparsable_body_gets_1003(self):
        self.net.inject(request_msg(KEYS[0], self.b.node_id, body=b"\x0a\x05\x00"), KEYS[0].peer_id())
        self.assertEqual(self.net.published(self.b)[-1].result_code, 1003)

    def test_error_messages_never_answered(self):
        for code in (1013, 1010, 1, -5):
            self.net.inject(request_msg(KEYS[0], self.b.node_id, result_code=code, request_id=f"e{code}"),
                            KEYS[0].peer_id())
        self.assertEqual(self.net.published(self.b), [])
        self.assertEqual(self.b.stats["dropped_unknown_reply"], 4)

    def test_error_reply_completes_pending(self):
        self.net.bus.paused = True
        d = run(self.a.request(self.b.node_id, pb.HOST_INFO, pb.HostInfoRequest()))
        request_id = self.net.published(self.a)[0].header.id
        self.net.bus.paused = False
        reply = request_msg(KEYS[1], self.a.node_id, msg_type=pb.HOST_INFO, body=b"", request_id=request_id,
                            result_code=1013)
        reply.result_message = "Decrypt error"
        self.net.inject(reply, KEYS[1].peer_id())
        err = self.failureResultOf(d, AnswerError).value
        self.assertEqual((err.code, err.message, err.response), (1013, "Decrypt error", None))
        self.assertEqual(len(self.net.published(self.a)), 1)

    def test_spoofed_node_id_dropped(self):
        # C publishes a request claiming to be A.
        self.net.inject(request_msg(KEYS[0], self.b.node_id), self.c_id)
        self.assertEqual(self.net.published(self.b), [])
        self.assertEqual(self.b.stats["dropped_spoofed"], 1)
        self.assertEqual(self.a.stats["dropped_spoofed"], 1)

    def test_spoofed_answer_does_not_complete_request(self):
        self.net.bus.paused = True
        d = run(self.a.request(self.b.node_id, pb.PEER_IDENTITY, pb.PeerIdentityRequest()))
        request_id = self.net.published(self.a)[0].header.id
        self.net.bus.paused = False
        fake = request_msg(KEYS[1], self.a.node_id, request_id=request_id, result_code=1010)
        self.net.inject(fake, self.c_id)
        self.assertNoResult(d)
        self.assertEqual(self.a.stats["dropped_spoofed"], 1)
        # A genuine answer from a node we did not ask is not taken either.
        fake = request_msg(KEYS[2], self.a.node_id, request_id=request_id, result_code=1010)
        self.net.inject(fake, self.c_id)
        self.assertNoResult(d)
        self.assertEqual(self.a.stats["dropped_unknown_reply"], 1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(len(self.a.requests), 0)

    def test_foreign_key_dropped(self):
        body, _ = seal_body(KEYS[2], KEYS[1].public_key, encode_request(pb.PEER_IDENTITY, pb.PeerIdentityRequest()))
        msg = request_msg(KEYS[0], self.b.node_id, body=body, node_pub_key=KEYS[2].public_key.marshal())
        self.net.inject(msg, KEYS[0].peer_id())
        self.assertEqual(self.net.published(self.b), [])
        self.assertEqual(self.b.stats["dropped_bad_key"], 1)

    def test_not_for_us_ignored(self):
        self.net.inject(request_msg(KEYS[0], str(self.c_id)), KEYS[0].peer_id())
        self.assertEqual(self.net.bus.published, [])
        self.assertEqual(self.b.stats["ignored_not_for_us"], 1)
        self.assertEqual(self.a.stats["ignored_own"], 1)

    def test_addressed_without_id_dropped(self):
        self.net.inject(request_msg(KEYS[0], self.b.node_id, request_id=""), KEYS[0].peer_id())
        self.assertEqual(self.net.published(self.b), [])
        self.assertEqual(self.b.stats["dropped_malformed"], 1)

    def test_garbage_dropped(self):
        self.net.bus.inject(TOPIC, b"\xff\xff\xff\xff", KEYS[0].peer_id())
        self.assertEqual(self.b.stats["dropped_malformed"], 1)
        self.assertEqual(self.net.bus.published, [])

    def test_timeout_and_late_answer(self):
        self.net.bus.paused = True
        d = run(self.a.request(self.b.node_id, pb.PEER_IDENTITY, pb.PeerIdentityRequest()))
        [request] = self.net.bus.payloads()
        self.net.clock.advance(119)
        self.assertNoResult(d)
        self.net.clock.advance(1)
        err = self.failureResultOf(d, AICNError).value
        self.assertEqual((err.code, err.message), (ErrorCode.TIMEOUT, "Processing timeout"))
        self.assertEqual(len(self.a.requests), 0)
        # The request finally gets through; its answer is late and dropped.
        self.net.bus.paused = False
        self.net.bus.inject(TOPIC, request, KEYS[0].peer_id())
        self.assertEqual(self.b.stats["requests_answered"], 1)
        self.assertEqual(self.a.stats["dropped_unknown_reply"], 1)
        self.assertEqual(len([m for m in self.net.published(self.a) if m.header.id]), 1)

    def test_stop_fails_pending(self):
        self.net.bus.paused = True
        d = run(self.a.request(self.b.node_id, pb.PEER_IDENTITY, pb.PeerIdentityRequest()))
        self.a.stop()
        self.failureResultOf(d, AICNError)
        self.assertEqual(len(self.a.requests), 0)
        self.assertEqual(self.a.pubsub.handlers[TOPIC], [])
        # No timeout or heartbeat of A is left on the clock.
        self.net.clock.advance(600)
        self.assertEqual(self.net.published(self.a)[1:], [])


class FuzzTests(SynchronousTestCase):
    """Garbage from a peer never crashes a node: it is dropped or gets an error reply."""

    def setUp(self):
        self.net = Net(self)
        self.a = self.net.node()
        self.b = self.net.node(collector=True)

    def check_replies(self, start):
        for msg in [decode_message(p.data) for p in self.net.bus.published[start:]]:
            self.assertNotEqual(msg.result_code, 0)
            self.assertEqual((msg.body, msg.header.node_pub_key), (b"", b""))
        self.assertEqual(self.b.stats["errors"], 0)

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.binary(max_size=300))
    def test_random_bytes(self, data):
        start = len(self.net.bus.published)
        self.net.bus.inject(TOPIC, data, KEYS[0].peer_id())
        self.check_replies(start)

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        st.integers(min_value=0, max_value=20), st.sampled_from(["", "id-1"]), st.sampled_from(["", "B"]),
        st.binary(max_size=120), st.sampled_from([b"", "A", b"\x08\x02\x12\x21" + b"\x02" * 33]),
        st.integers(min_value=-3, max_value=2000),
    )
    def test_random_messages(self, msg_type, request_id, receiver, body, key, code):
        if key == "A":
            key = KEYS[0].public_key.marshal()
        receiver = self.b.node_id if receiver == "B" else receiver
        msg = request_msg(KEYS[0], receiver, msg_type=msg_type, body=body, request_id=request_id,
                          node_pub_key=key, result_code=code)
        start = len(self.net.bus.published)
        self.net.inject(msg, KEYS[0].peer_id())
        replies = self.net.bus.published[start:]
        if code != 0:
            self.assertEqual(replies, [])
        # A random body is practically never a valid encrypted request.
        if key:
            self.check_replies(start)
        self.assertEqual(self.b.stats["errors"], 0)


class HeartbeatTests(SynchronousTestCase):
    def setUp(self):
        self.net = Net(self)

    def heartbeats(self, app):
        return [m for m in self.net.published(app) if not m.header.id and not m.header.receiver]

    def test_interval(self):
        a = self.net.node(interval=60)
        self.assertEqual(self.heartbeats(a), [])
        self.net.clock.advance(59)
        self.assertEqual(self.heartbeats(a), [])
        self.net.clock.advance(1)
        self.assertEqual(len(self.heartbeats(a)), 1)
        self.net.clock.advance(60)
        self.assertEqual(len(self.heartbeats(a)), 2)

    def test_heartbeat_contents(self):
        a = self.net.node(projects=[AIProject("Cfg", (AIModel("c1", "http://x/"),))])
        self.net.clock.advance(60)
        [hb] = self.heartbeats(a)
        self.assertEqual(hb.type, pb.AI_PROJECT)
        self.assertEqual((hb.result_code, hb.result_message), (0, "heartbeat"))
        self.assertEqual(hb.header.node_pub_key, b"")
        self.assertEqual(hb.header.timestamp, 1_700_000_060)
        kind, res = decode_body(pb.AI_PROJECT, hb.body, pb23)  # plaintext, App.WireVersion's schema
        self.assertEqual(kind, "res")
        self.assertEqual([(p.project, [(m.model, m.api, m.type, m.idle, m.cid) for m in p.models])
                          for p in res.projects], [("Cfg", [("c1", "", 0, 0, "")])])  # never the API URL
        self.assertEqual(res.node_type, 0x04)  # serves a model
        self.assertEqual(hb.header.client_version, f"v0.2.3 ({a.client_version})")

    def test_heartbeat_contents_v012(self):
        a = self.net.node(projects=[AIProject("Cfg", (AIModel("c1", "http://x/"),))], wire="v0.1.2")
        self.net.clock.advance(60)
        [hb] = self.heartbeats(a)
        kind, res = decode_body(pb.AI_PROJECT, hb.body)
        self.assertEqual([(p.project, list(p.models)) for p in res.projects], [("Cfg", ["c1"])])
        self.assertEqual(hb.header.client_version, f"v0.1.2 ({a.client_version})")
        self.assertEqual(hb.body, pb.AIProjectBody(res=res).SerializeToString())

    def test_after_register_and_unregister(self):
        a = self.net.node()
        backend = ApplicationBackend(a)
        self.successResultOf(run(backend.register_project("P", [{"model": "m1", "api": "http://x/", "type": 0}])))
        [hb] = self.heartbeats(a)
        models = decode_body(pb.AI_PROJECT, hb.body, pb23)[1].projects[0].models
        self.assertEqual([m.model for m in models], ["m1"])
        self.assertIsNone(self.successResultOf(run(backend.unregister_project("P"))))
        self.assertEqual(len(decode_body(pb.AI_PROJECT, self.heartbeats(a)[-1].body, pb23)[1].projects), 0)
        self.assertEqual(self.successResultOf(run(backend.unregister_project("P"))), NOT_REGISTERED_MESSAGE)
        self.assertEqual(len(self.heartbeats(a)), 3)

    def test_publish_failure_does_not_stop_loop(self):
        a = self.net.node()
        a.pubsub.publish_error = RuntimeError("boom")
        self.net.clock.advance(60)
        a.pubsub.publish_error = None
        self.net.clock.advance(60)
        self.assertEqual(len(self.heartbeats(a)), 1)
        # Registration succeeds even when the heartbeat cannot go out.
        a.pubsub.publish_error = RuntimeError("boom")
        self.successResultOf(run(a.register("P", [{"model": "m", "api": "http://x/"}])))
        self.assertEqual([p.project for p in a.projects()], ["P"])


class LoadHeartbeatTests(SynchronousTestCase):
    """A model call starting or ending sends a heartbeat with the new ``idle``, coalesced."""

    PROJECTS = [AIProject("P", (AIModel("m", "http://127.0.0.1:1/v1/chat/completions", cid="c1"),))]

    def setUp(self):
        self.net = Net(self)

    def node(self, wire="v0.2.3"):
        holder = {}
        app = self.net.node(projects=self.PROJECTS, wire=wire,
                            model_load=lambda p, m, c: holder["worker"].in_flight(p, m, c))
        worker = holder["worker"] = ModelWorker(self.net.clock, app.projects, node_id=app.node_id,
                                                client=StubTreq(None))
        worker.on_load_change = app.load_changed
        return app, worker

    def idles(self, app):
        out = []
        for m in self.net.published(app):
            if not m.header.id and not m.header.receiver:
                [project] = decode_body(pb.AI_PROJECT, m.body, pb23)[1].projects
                out.append(project.models[0].idle)
        return out

    def test_start_and_end_of_calls(self):
        app, worker = self.node()
        clock = self.net.clock
        first = worker.lease("P", "m")
        clock.advance(0)
        self.assertEqual(self.idles(app), [1])  # the first change goes out at once
        clock.advance(0.1)
        second = worker.lease("P", "m")
        clock.advance(0.5)
        first.release()
        self.assertEqual(self.idles(app), [1])  # at most one per second
        clock.advance(0.4)
        self.assertEqual(self.idles(app), [1, 1])  # both changes in one, with the counts of now
        clock.advance(0.2)
        second.release()
        second.release()  # idempotent: one change
        clock.advance(0.7)
        self.assertEqual(self.idles(app), [1, 1])
        clock.advance(0.1)
        self.assertEqual(self.idles(app), [1, 1, 0])
        self.assertEqual(app.stats["load_heartbeats"], 3)
        clock.advance(10)
        self.assertEqual(self.idles(app), [1, 1, 0])  # no change, no heartbeat

    def test_periodic_heartbeat_counts(self):
        app, worker = self.node()
        self.net.clock.advance(59.5)
        lease = worker.lease("P", "m")
        self.net.clock.advance(0)
        self.net.clock.advance(0.5)
        self.assertEqual(self.idles(app), [1, 1])  # the change at once, then the periodic one at 60 s
        lease.release()  # a second after the periodic one, not after the change's
        self.net.clock.advance(0.9)
        self.assertEqual(self.idles(app), [1, 1])
        self.net.clock.advance(0.1)
        self.assertEqual(self.idles(app), [1, 1, 0])

    def test_v012_heartbeats_carry_no_load(self):
        app, worker = self.node(wire="v0.1.2")
        worker.lease("P", "m").release()
        self.net.clock.advance(5)
        self.assertEqual(self.net.published(app), [])

    def test_stop_cancels_the_pending_heartbeat(self):
        app, worker = self.node()
        worker.lease("P", "m")
        self.net.clock.advance(0)
        worker.lease("P", "m")
        app.stop()
        self.assertEqual(self.net.clock.getDelayedCalls(), [])
        worker.lease("P", "m")  # a call after stop sends nothing
        self.net.clock.advance(5)
        self.assertEqual(self.idles(app), [1])

    def test_a_failing_hook_does_not_break_the_call(self):
        app, worker = self.node()
        worker.on_load_change = lambda: 1 / 0
        lease = worker.lease("P", "m")
        self.assertEqual(worker.in_flight("P", "m", "c1"), 1)
        lease.release()
        self.assertEqual(worker.in_flight("P", "m", "c1"), 0)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)


class CollectorTests(SynchronousTestCase):
    def setUp(self):
        self.net = Net(self)
        self.collector = self.net.node(collector=True, interval=60)
        self.backend = ApplicationBackend(self.collector)
        self.worker = self.net.node(interval=60)

    def call(self, coro):
        return self.successResultOf(run(coro))

    def test_store_and_query(self):
        self.call(self.worker.register("DecentralGPT", [{"model": "Llama3-70B", "api": "http://x/"},
                                                        {"model": "Qwen2-72B", "api": "http://y/"}]))
        self.call(self.worker.register("SuperImage", [{"model": "superImage", "api": "http://z/", "type": 1}]))
        [record] = self.collector.fresh_peers()
        self.assertEqual(record.node_id, self.worker.node_id)
        self.assertEqual(record.received_at, 1_700_000_000)
        self.assertEqual(self.call(self.backend.collected_peers()), [self.worker.node_id])
        self.assertEqual(self.call(self.backend.projects_list()), ["DecentralGPT", "SuperImage"])
        self.assertEqual(self.call(self.backend.projects_models("DecentralGPT")), ["Llama3-70B", "Qwen2-72B"])
        self.assertEqual(self.call(self.backend.projects_models("Nope")), [])
        self.assertEqual(self.call(self.backend.projects_peers("DecentralGPT", "Qwen2-72B")), [self.worker.node_id])
        self.assertEqual(self.call(self.backend.projects_peers("DecentralGPT", "")), [self.worker.node_id])
        self.assertEqual(self.call(self.backend.projects_peers("DecentralGPT", "superImage")), [])

    def test_freshness_and_prune(self):
        self.call(self.worker.register("P", [{"model": "m", "api": "http://x/"}]))
        self.worker.stop()
        self.net.clock.advance(PEER_FRESH_AGE - 1)
        self.assertEqual(self.call(self.backend.projects_peers("P", "m")), [self.worker.node_id])
        self.net.clock.advance(2)
        self.assertEqual(self.call(self.backend.projects_peers("P", "m")), [])
        # No age limit on the list endpoints (until pruned).
        self.assertEqual(self.call(self.backend.projects_list()), ["P"])
        self.assertIn(self.worker.node_id, self.call(self.backend.collected_peers()))
        self.net.clock.advance(PEER_RETENTION - PEER_FRESH_AGE)
        self.assertEqual(self.call(self.backend.projects_list()), [])
        # Our own heartbeats keep us in the store.
        self.assertEqual(self.call(self.backend.collected_peers()), [self.collector.node_id])

    def test_non_collector(self):
        backend = ApplicationBackend(self.worker)
        err = self.failureResultOf(run(backend.collected_peers()), AICNError).value
        self.assertEqual(err.code, ErrorCode.UNSUPPORTED)
        self.call(self.collector.register("P", [{"model": "m", "api": "http://x/"}]))
        self.assertEqual(self.worker.fresh_peers(), [])
        self.assertEqual(self.worker.stats["heartbeats_received"], 1)

    def test_spoofed_heartbeat_not_stored(self):
        msg = build_message(msg_type=pb.AI_PROJECT, client_version="", timestamp=0, node_id=self.worker.node_id,
                            body=b"\x12\x00", result_message="heartbeat")
        self.net.inject(msg, KEYS[3].peer_id())
        self.assertEqual(self.collector.fresh_peers(), [])
        self.net.inject(msg, KEYS[1].peer_id())
        self.assertEqual([r.node_id for r in self.collector.fresh_peers()], [self.worker.node_id])

    def test_malformed_heartbeats_dropped(self):
        for msg_type, body in ((pb.HOST_INFO, b"\x12\x00"), (pb.AI_PROJECT, b"\x0a\x00"), (pb.AI_PROJECT, b"\xff")):
            msg = build_message(msg_type=msg_type, client_version="", timestamp=0, node_id=self.worker.node_id,
                                body=body)
            self.net.inject(msg, KEYS[1].peer_id())
        self.assertEqual(self.collector.fresh_peers(), [])
        self.assertEqual(self.collector.stats["dropped_malformed"], 3)

    def test_limit(self):
        for i in range(105):
            self.collector.db.store_heartbeat(f"node-{i:03}", [{"project": f"p{i}", "models": ["m"]}], 0,
                                              self.net.clock.seconds())
        self.assertEqual(len(self.call(self.backend.collected_peers())), 100)
        self.assertEqual(len(self.call(self.backend.projects_list())), 100)


class RegistryTests(SynchronousTestCase):
    def test_persisted_across_restart(self):
        net = Net(self)
        path = self.mktemp()
        a = net.node(db_path=path)
        self.successResultOf(run(a.register("P", [{"model": "m1", "api": "http://x/", "type": 1}])))
        self.successResultOf(run(a.register("Q", [{"model": "q", "api": "http://q/"}])))
        self.successResultOf(run(a.register("P", [{"model": "m2", "api": "http://y/"}])))
        self.assertEqual([p.project for p in a.projects()], ["P", "Q"])
        a.stop()
        a.db.close()
        again = net.node(KEYS[0], db_path=path)
        self.assertEqual(again.projects(), [
            AIProject("P", (AIModel("m2", "http://y/", 0),)),
            AIProject("Q", (AIModel("q", "http://q/", 0),)),
        ])

    def test_config_merged_database_wins(self):
        net = Net(self)
        path = self.mktemp()
        a = net.node(db_path=path)
        self.successResultOf(run(a.register("P", [{"model": "from-db", "api": "http://db/"}])))
        a.stop()
        a.db.close()
        config = [AIProject("P", (AIModel("from-config", "http://cfg/"),)),
                  AIProject("C", (AIModel("c", "http://c/"),))]
        again = net.node(KEYS[0], db_path=path, projects=config)
        self.assertEqual([(p.project, p.models[0].model) for p in again.projects()],
                         [("P", "from-db"), ("C", "c")])


class HTTPTests(TestCase):
    """The backend behind the Klein app."""

    def setUp(self):
        self.net = Net(self)
        self.a = self.net.node(collector=True)
        self.b = self.net.node()
        self.treq = StubTreq(NodeAPI(ApplicationBackend(self.a)).resource())

    async def post(self, path, body):
        resp = await self.treq.post("http://127.0.0.1:6000" + path, data=json.dumps(body).encode())
        return resp.code, json.loads(await resp.content())

    async def test_peer(self):
        code, body = await self.post("/api/v0/peer", {"node_id": self.b.node_id})
        self.assertEqual(code, 200)
        self.assertEqual(body, {"code": 0, "message": "ok", "data": identity(KEYS[1])})

    async def test_host_info(self):
        code, body = await self.post("/api/v0/host/info", {"node_id": self.b.node_id})
        self.assertEqual(body, {"code": 0, "message": "ok", "data": HOST_INFO})

    async def test_register_then_query_remotely(self):
        _, body = await self.post("/api/v0/ai/project/register", {
            "project": "DecentralGPT",
            "models": [{"model": "Llama3-70B", "api": "http://127.0.0.1:1042/v1/chat/completions", "type": 0}],
        })
        self.assertEqual(body, {"code": 0, "message": "ok"})
        # Ask from B's side for A's projects.
        treq_b = StubTreq(NodeAPI(ApplicationBackend(self.b)).resource())
        resp = await treq_b.post("http://127.0.0.1:6000/api/v0/ai/project/peer",
                                 data=json.dumps({"node_id": self.a.node_id}).encode())
        self.assertEqual(json.loads(await resp.content()),
                         {"code": 0, "message": "ok",
                          "data": [{"project": "DecentralGPT", "models": ["Llama3-70B"]}]})
        _, body = await self.post("/api/v0/ai/projects/peers", {"project": "DecentralGPT", "model": "Llama3-70B"})
        self.assertEqual(body, {"code": 0, "message": "ok", "data": [self.a.node_id]})
        _, body = await self.post("/api/v0/ai/project/unregister", {"project": "Nope"})
        self.assertEqual(body, {"code": 0, "message": NOT_REGISTERED_MESSAGE})

    async def test_unknown_node_is_1005_at_once(self):
        stranger = str(KEYS[3].peer_id())
        for path in ("/api/v0/peer", "/api/v0/host/info", "/api/v0/ai/project/peer"):
            code, body = await self.post(path, {"node_id": stranger})
            self.assertEqual((code, body), (200, {
                "code": 1005, "message": f"node {stranger} is not reachable: not connected, no heartbeat in the "
                                         f"last 10 min, not among our 1 peer on topic {TOPIC}, no DHT to look it up"}))

    async def test_timeout_field(self):
        self.net.bus.paused = True
        d = self.treq.post("http://127.0.0.1:6000/api/v0/host/info",
                           data=json.dumps({"node_id": self.b.node_id, "timeout": 7}).encode())
        self.net.clock.advance(6.9)
        self.treq.flush()
        self.assertNoResult(d)
        self.net.clock.advance(0.1)
        self.treq.flush()
        resp = await d
        self.assertEqual(json.loads(await resp.content()), {"code": 1004, "message": "Processing timeout"})

    async def test_timeout(self):
        self.net.bus.paused = True
        d = self.treq.post("http://127.0.0.1:6000/api/v0/peer", data=json.dumps({"node_id": self.b.node_id}).encode())
        self.assertNoResult(d)
        self.net.clock.advance(120)
        self.treq.flush()
        resp = await d
        self.assertEqual((resp.code, json.loads(await resp.content())),
                         (200, {"code": 1004, "message": "Processing timeout"}))
