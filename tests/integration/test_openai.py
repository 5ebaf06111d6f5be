"""The OpenAI-compatible API (``/v1``) across a three-node network of real nodes
in this process (collector A; B and C joined through A).

* :class:`OpenAIRoutingTests`: in-test model servers, for what only they can
  show: a stream held open (chunks relayed before the model finishes), the
  model server seeing its connection closed when the client leaves, a dead
  model to fail over from.
* :class:`OpenAISDKTests`: the real ``openai`` package (run in a thread: it
  blocks) against llama-cpp-python's server on B; skipped when
  llama-cpp-python is not installed (``tests/support/install_llama.sh``).
"""

from __future__ import annotations

import base64
import json
import os
import time

import treq
from twisted.internet import reactor
from twisted.internet.threads import blockingCallFromThread, deferToThread

from aicn.models.http import body_ended_cleanly
from tests.integration.modelnet import (
    MESSAGES,
    P,
    ModelNetworkCase,
    StreamingClient,
    dead_model_url,
    eventually,
    open_chat_streams,
    start_fake_chat_model,
    start_llama_model,
    wait_serving,
)
from tests.models.fakeipfs import FakeKubo, fake_cid
from tests.models.servers import NOT_DONE_YET, json_reply, serve
from tests.support.llama import llama_skip_reason

MODEL_ID = f"{P}/tiny"


def sse_events(data: bytes) -> list[dict]:
    """The chunks of an OpenAI SSE body (exact framing and the final [DONE] asserted)."""
    assert data.endswith(b"data: [DONE]\n\n"), data[-200:]
    events = data[: -len(b"data: [DONE]\n\n")].split(b"\n\n")
    assert events.pop() == b""
    assert all(e.startswith(b"data: {") for e in events), events[:3]
    return [json.loads(e[len(b"data: "):]) for e in events]


async def v1(node, path: str, body=None, headers=None, method: str = "POST"):
    """``(response, decoded JSON)`` of a ``/v1`` call."""
    data = json.dumps(body).encode() if body is not None else None
    resp = await treq.request(method, node.api + "/v1" + path, data=data, persistent=False,
                              headers={"Content-Type": "application/json", **(headers or {})})
    return resp, json.loads(await resp.content())


def chat(model: str = MODEL_ID, **extra) -> dict:
    return {"model": model, "messages": MESSAGES, **extra}


class OpenAIRoutingTests(ModelNetworkCase):
    async def test_routed_from_every_node(self):
        await self.network()
        model = await start_fake_chat_model(self, hold=True)
        await self.b.register(P, model.model, model.url)
        await wait_serving(self.nodes, P, model.model, [self.b.peer_id])
        for requester in (self.a, self.c, self.b):
            resp, body = await v1(requester, "/models", method="GET")
            self.assertIn({"id": MODEL_ID, "object": "model", "created": body["data"][0]["created"],
                           "owned_by": P}, body["data"], requester.peer_id)
            # Not streamed: the tunnel carries the client's whole body (max_tokens too).
            resp, body = await v1(requester, "/chat/completions", chat("tiny", max_tokens=7))
            self.assertEqual(resp.code, 200, body)
            self.assertEqual(resp.headers.getRawHeaders(b"x-aicn-node"), [self.b.peer_id.encode()])
            self.assertEqual((body["object"], body["model"]), ("chat.completion", MODEL_ID))
            self.assertEqual(body["choices"][0]["message"], {"role": "assistant", "content": "Hello!"})
            self.assertEqual(body["usage"], {"completion_tokens": 3, "prompt_tokens": 5, "total_tokens": 8})
            self.assertEqual(model.fake.bodies[-1], {"model": "tiny", "messages": MESSAGES, "max_tokens": 7})
            # Streamed, relayed as it comes.
            client = StreamingClient()
            response = await client.post(requester.api + "/v1/chat/completions", chat(stream=True))
            self.assertEqual(response.code, 200)
            self.assertEqual(client.header(b"x-aicn-node"), self.b.peer_id)
            await eventually(lambda: b"\n\n" in client.data)
            self.assertEqual(len(model.fake.waiting), 1)  # the model has not finished
            model.fake.release()
            self.assertTrue(body_ended_cleanly(await client.ended))
            events = sse_events(client.data)
            self.assertEqual([e["choices"][0]["delta"]["content"] for e in events], ["w0", "w1", "w2"])
            self.assertEqual({(e["object"], e["model"]) for e in events},
                             {("chat.completion.chunk", MODEL_ID)})
            await self.no_leaks()

    async def test_fails_over_before_the_first_byte_and_cools_down(self):
        await self.network()
        model = await start_fake_chat_model(self)
        # B's own model is down: B tries itself first (no network hop), then C.
        await self.b.register(P, "tiny", dead_model_url())
        await self.c.register(P, "tiny", model.url)
        await wait_serving(self.nodes, P, "tiny", [self.b.peer_id, self.c.peer_id])
        selector, service = self.b.service.node.selector, (P, "tiny")
        c_header = [self.c.peer_id.encode()]

        resp, body = await v1(self.b, "/chat/completions", chat())
        self.assertEqual((resp.code, resp.headers.getRawHeaders(b"x-aicn-node")), (200, c_header), body)
        self.assertEqual(selector.failures(self.b.peer_id, service), 1)
        self.assertGreater(selector.cooldown_left(self.b.peer_id, service), 0)
        self.assertEqual(selector.failures(self.c.peer_id, service), 0)
        # Cooling down, B is not tried: its count stays.
        resp, body = await v1(self.b, "/chat/completions", chat())
        self.assertEqual(resp.headers.getRawHeaders(b"x-aicn-node"), c_header)
        self.assertEqual(selector.failures(self.b.peer_id, service), 1)

        selector.succeeded(self.b.peer_id, service)  # B's record cleared: it comes first again
        client = StreamingClient()
        resp = await client.post(self.b.api + "/v1/chat/completions", chat(stream=True))
        self.assertTrue(body_ended_cleanly(await client.ended))
        self.assertEqual(resp.headers.getRawHeaders(b"x-aicn-node"), c_header)
        self.assertEqual([e["choices"][0]["delta"]["content"] for e in sse_events(client.data)],
                         ["w0", "w1", "w2"])
        self.assertEqual(selector.failures(self.b.peer_id, service), 1)
        await self.no_leaks()

    async def test_pinned_node(self):
        await self.network()
        model = await start_fake_chat_model(self)
        await self.b.register(P, "tiny", dead_model_url())
        await self.c.register(P, "tiny", model.url)
        await wait_serving(self.nodes, P, "tiny", [self.b.peer_id, self.c.peer_id])
        for _ in range(2):
            resp, body = await v1(self.a, "/chat/completions", chat(), {"X-AICN-Node": self.c.peer_id})
            self.assertEqual(resp.headers.getRawHeaders(b"x-aicn-node"), [self.c.peer_id.encode()])
        # Pinned to B, whose model is down: no fail-over to C.
        resp, body = await v1(self.a, "/chat/completions", chat(), {"X-AICN-Node": self.b.peer_id})
        self.assertEqual(resp.code, 502, body)
        self.assertEqual(body["error"]["code"], "upstream_error")
        self.assertIn(self.b.peer_id, body["error"]["message"])
        self.assertIn("Post HTTP request error", body["error"]["message"])

    async def test_worker_errors_over_the_tunnel(self):
        await self.network()
        base, _ = await serve(self, lambda request: json_reply(request, b"x" * 300_000, status=500))
        await self.b.register(P, "tiny", base + "/v1/chat/completions")
        await self.b.register("Down", "tiny", dead_model_url())  # the worker answers 502 {code: 1006}
        await wait_serving(self.nodes, P, "tiny", [self.b.peer_id])
        await wait_serving(self.nodes, "Down", "tiny", [self.b.peer_id])
        for project, detail in ((P, "500: xxx"), ("Down", "Post HTTP request error")):
            for stream in (False, True):
                resp, body = await v1(self.a, "/chat/completions", chat(f"{project}/tiny", stream=stream))
                self.assertEqual(resp.code, 502, body)
                self.assertEqual(body["error"]["code"], "upstream_error")
                self.assertIn(detail, body["error"]["message"])
                self.assertLess(len(body["error"]["message"]), 1000)
                self.a.service.node.selector.succeeded(self.b.peer_id, (project, "tiny"))
        await self.no_leaks()

    async def test_client_leaving_a_stream_closes_the_workers_model_connection(self):
        await self.network()
        model = await start_fake_chat_model(self, hold=True)
        await self.b.register(P, model.model, model.url)
        await wait_serving(self.nodes, P, model.model, [self.b.peer_id])
        client = StreamingClient()
        await client.post(self.a.api + "/v1/chat/completions", chat(stream=True))
        await eventually(lambda: b"\n\n" in client.data)
        self.assertFalse(model.resource.dropped.called)
        client.pump.abort()
        # B's model server sees its connection closed: B dropped the model call.
        await model.resource.dropped
        await self.no_leaks()
        self.assertEqual(self.a.service.node.selector.failures(self.b.peer_id, (P, "tiny")), 0)

    async def test_client_leaving_a_non_stream_request_closes_the_workers_model_connection(self):
        await self.network()
        base, resource = await serve(self, lambda request: NOT_DONE_YET)  # thinks forever
        await self.b.register(P, "tiny", base + "/v1/chat/completions")
        await wait_serving(self.nodes, P, "tiny", [self.b.peer_id])
        d = treq.post(self.c.api + "/v1/chat/completions", json.dumps(chat()).encode(), persistent=False)
        await eventually(lambda: resource.requests)
        self.assertFalse(resource.dropped.called)
        d.cancel()
        try:
            await d
        except Exception:
            pass
        await resource.dropped
        await self.no_leaks()
        self.assertEqual(self.c.service.node.selector.failures(self.b.peer_id, (P, "tiny")), 0)

    async def test_images_routed(self):
        kubo = FakeKubo()
        kubo_url, _ = await serve(self, kubo)
        await self.network(ipfs_api=kubo_url)
        image = b"\x89PNG routed"
        image_path = os.path.abspath(self.mktemp())
        with open(image_path, "wb") as f:
            f.write(image)

        def image_model(request):
            reply = {"code": 0, "message": "ok", "data": [{"url": image_path}]}
            return json_reply(request, json.dumps(reply).encode())

        base, _ = await serve(self, image_model)
        await self.b.register("SuperImage", "painter", base + "/v1/images/generations", kind=1)
        await wait_serving(self.nodes, "SuperImage", "painter", [self.b.peer_id])
        # url: B stores the image on IPFS and names it; b64_json travels (v0.2.3's field) and
        # B answers with the image itself, nothing stored on IPFS for C to fetch back.
        for fmt, item, added in (("url", {"url": "ipfs://" + fake_cid(image)}, 1),
                                 ("b64_json", {"b64_json": base64.b64encode(image).decode()}, 1)):
            request = {"model": "SuperImage/painter", "prompt": "x", "response_format": fmt}
            resp, body = await v1(self.c, "/images/generations", request)
            self.assertEqual(resp.code, 200, body)
            self.assertEqual(resp.headers.getRawHeaders(b"x-aicn-node"), [self.b.peer_id.encode()])
            self.assertEqual(body["data"], [item])
            self.assertEqual(len(kubo.added), added)


# -- the real openai package against llama-cpp-python ------------------------------------------------


TOKEN = "sk-aicn-test"
N_CTX = 512


class OpenAISDKTests(ModelNetworkCase):
    """B serves llama-cpp-python; the openai SDK talks to A's ``/v1``."""

    skip = llama_skip_reason()

    async def setup(self):
        await self.network(api_token=TOKEN)
        self.model = await start_llama_model(self, n_ctx=N_CTX, n_threads=1)
        await self.b.register(P, self.model.model, self.model.url)
        await wait_serving(self.nodes, P, self.model.model, [self.b.peer_id])

    def client(self, node=None, api_key: str = TOKEN):
        import openai

        # A connection per request, closed by the node: none outlives the test.
        return openai.OpenAI(base_url=(node or self.a).api + "/v1", api_key=api_key, max_retries=0,
                             timeout=60, default_headers={"Connection": "close"})

    async def test_models_list(self):
        await self.setup()
        page = await deferToThread(lambda: self.client().models.list())
        models = {m.id: m for m in page.data}
        self.assertEqual(set(models), {MODEL_ID})
        self.assertEqual((models[MODEL_ID].object, models[MODEL_ID].owned_by), ("model", P))
        self.assertLessEqual(abs(models[MODEL_ID].created - time.time()), 120)

    async def test_chat_not_streamed(self):
        await self.setup()
        def call():
            raw = self.client().chat.completions.with_raw_response.create(model="tiny", messages=MESSAGES,
                                                                          max_tokens=8)
            return raw.headers.get("x-aicn-node"), raw.parse()

        node, completion = await deferToThread(call)
        self.assertEqual(node, self.b.peer_id)
        self.assertEqual((completion.object, completion.model), ("chat.completion", MODEL_ID))
        self.assertTrue(completion.id.startswith("chatcmpl-"))
        (choice,) = completion.choices
        self.assertEqual((choice.message.role, choice.finish_reason), ("assistant", "length"))
        self.assertTrue(choice.message.content.strip())
        # max_tokens reached llama: the usage it reports says so.
        self.assertEqual(completion.usage.completion_tokens, 8)
        self.assertEqual(completion.usage.total_tokens, completion.usage.prompt_tokens + 8)

    async def test_chat_streamed_incrementally(self):
        await self.setup()
        def call():
            arrivals, relaying = [], None
            stream = self.client(self.c).chat.completions.create(model=MODEL_ID, messages=MESSAGES,
                                                                 stream=True)
            for chunk in stream:
                arrivals.append((time.monotonic(), chunk))
                if relaying is None:
                    # Is B still relaying llama's answer (its tunnel stream open)?
                    relaying = blockingCallFromThread(reactor, lambda: bool(open_chat_streams([self.b])))
            return arrivals, relaying

        arrivals, relaying = await deferToThread(call)
        chunks = [c for _, c in arrivals]
        self.assertGreater(len(chunks), N_CTX // 2)
        self.assertEqual({(c.object, c.model) for c in chunks}, {("chat.completion.chunk", MODEL_ID)})
        self.assertEqual(len({c.id for c in chunks}), 1)
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        self.assertEqual(chunks[-1].choices[0].finish_reason, "length")
        self.assertTrue(all(c.choices[0].delta.content for c in chunks[1:-1]))
        # The first chunk reached the client while the worker was still relaying
        # llama's answer, i.e. before llama had produced its last token (a
        # held-open stream shows the same deterministically: OpenAIRoutingTests).
        self.assertTrue(relaying)
        self.assertLess(arrivals[0][0], arrivals[-1][0])
        await self.no_leaks()

    async def test_unknown_model_and_wrong_key(self):
        await self.setup()
        import openai

        def unknown():
            self.client().chat.completions.create(model="nope/none", messages=MESSAGES)

        with self.assertRaises(openai.NotFoundError) as caught:
            await deferToThread(unknown)
        self.assertEqual(caught.exception.status_code, 404)
        self.assertEqual(caught.exception.code, "model_not_found")

        def wrong_key():
            self.client(api_key="sk-wrong").models.list()

        with self.assertRaises(openai.AuthenticationError) as caught:
            await deferToThread(wrong_key)
        self.assertEqual(caught.exception.code, "invalid_api_key")
