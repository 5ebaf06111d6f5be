"""Model endpoints end to end with real components: a three-node network
(collector A; B and C joined through A) where B serves the llama-cpp-python
OpenAI server with the tiny GGUF as a chat model and our DBC-contract image
server as an image model, storing images in a js-ipfs daemon.

Each test skips with the component's reason when it is not installed
(``tests/support/install_all.sh``).

The node sends the spec's body (``model``, ``messages``, ``stream``; no
``max_tokens``) and the tiny model never emits end-of-sequence, so every
answer fills the server's context: ``finish_reason`` is ``"length"`` and
``usage.total_tokens`` is the context size.  That makes a streamed answer
last long enough (hundreds of SSE events) to see it relayed incrementally.
"""

from __future__ import annotations

import json

from twisted.internet import reactor

from aicn.models.http import body_ended_cleanly
from tests.integration.modelnet import (
    MESSAGES,
    P,
    ModelNetworkCase,
    StreamingClient,
    chat,
    start_llama_model,
    start_real_image_server,
    start_real_ipfs,
    wait_serving,
)
from tests.support._proc import http_client
from tests.support.cid import cid_matches
from tests.support.imageserver import file_name, make_png
from tests.support.ipfsd import ipfs_skip_reason
from tests.support.llama import llama_skip_reason

#: The llama server's context: each answer is this many tokens in all.
N_CTX = 512
DONE = b"data: [DONE]\n\n"


def sse_events(data: bytes) -> list[dict]:
    """The JSON events of an SSE body that ends with ``[DONE]`` (asserted)."""
    assert data.endswith(DONE), data[-200:]
    events = [e for e in data[: -len(DONE)].split(b"\n\n") if e]
    assert all(e.startswith(b"data: ") for e in events), events[:3]
    return [json.loads(e[len(b"data: "):]) for e in events]


class RealChatModelTests(ModelNetworkCase):
    """B serves llama-cpp-python's server; A, C and B itself ask it."""

    skip = llama_skip_reason()

    async def setup_chat(self):
        await self.network()
        # One thread: faster than two for this model on a busy machine.
        self.model = await start_llama_model(self, n_ctx=N_CTX, n_threads=1)
        await self.b.register(P, self.model.model, self.model.url)
        # What the model itself says about this prompt's size.
        resp = await http_client(reactor).post(
            self.model.url, data=json.dumps({"model": "tiny", "messages": MESSAGES, "max_tokens": 1}).encode(),
            headers={"Content-Type": ["application/json"]})
        self.prompt_tokens = json.loads(await resp.content())["usage"]["prompt_tokens"]

    def check_completion(self, body, who):
        """The spec's envelope around the model's own answer."""
        self.assertEqual((body["code"], body["message"]), (0, "ok"), (who, body))
        self.assertEqual(set(body["data"]), {"created", "choices", "usage"}, who)
        data = body["data"]
        self.assertIsInstance(data["created"], int)
        (choice,) = data["choices"]
        self.assertEqual(set(choice), {"index", "message", "finish_reason"})
        self.assertEqual((choice["index"], choice["finish_reason"]), (0, "length"))
        self.assertEqual(choice["message"]["role"], "assistant")
        self.assertTrue(choice["message"]["content"].strip(), who)
        self.assertEqual(data["usage"], {"prompt_tokens": self.prompt_tokens,
                                         "completion_tokens": N_CTX - self.prompt_tokens,
                                         "total_tokens": N_CTX}, who)
        return choice["message"]["content"]

    async def test_non_stream_chat_from_every_node(self):
        await self.setup_chat()
        answers = []
        for requester in (self.a, self.c, self.b):
            _, body = await requester.call("/api/v0/chat/completion", chat(self.b.peer_id, self.model.model))
            answers.append(self.check_completion(body, requester.peer_id))
        # Sampled at temperature 0.8: three real generations, not one cached reply.
        self.assertEqual(len(set(answers)), 3, answers)
        await self.no_leaks()

    async def test_stream_relayed_incrementally_from_every_node(self):
        await self.setup_chat()
        # C is not connected to B: its tunnel is dialled through the DHT.
        self.assertFalse(self.c.service.host.is_connected(self.b.service.host.peer_id))
        for requester in (self.c, self.a, self.b):
            client = StreamingClient()
            response = await client.post(requester.api + "/api/v0/chat/completion",
                                         chat(self.b.peer_id, self.model.model, stream=True))
            self.assertEqual(response.code, 200)
            self.assertEqual(client.header(b"content-type"), "text/event-stream; charset=utf-8")
            self.assertTrue(body_ended_cleanly(await client.ended), requester.peer_id)
            self.check_stream(client, requester.peer_id)
            await self.no_leaks()

    def check_stream(self, client, who):
        """llama's SSE answer, complete and delivered piece by piece."""
        events = sse_events(client.data)
        self.assertEqual({e["object"] for e in events}, {"chat.completion.chunk"})
        self.assertEqual(events[0]["choices"][0]["delta"], {"role": "assistant"})
        self.assertEqual(events[-1]["choices"][0]["finish_reason"], "length")
        pieces = [e["choices"][0]["delta"].get("content") for e in events[1:-1]]
        self.assertTrue(all(pieces), who)
        self.assertGreater(len(pieces), N_CTX // 2)
        # That the relay passes chunks on as they come, before the model has
        # finished, is shown deterministically with a model that holds its
        # stream open (test_models.py); with llama it depends on how the CPU
        # is shared, so here it is only required that the body did not come
        # in one piece.
        self.assertGreater(len(client.chunks), 1, who)

    async def test_proxy_answers_from_the_worker(self):
        await self.setup_chat()
        await wait_serving(self.nodes, P, self.model.model, [self.b.peer_id])
        for requester in (self.a, self.c, self.b):
            resp, body = await requester.call("/api/v0/chat/completion/proxy", chat(None, self.model.model))
            self.check_completion(body, requester.peer_id)
            self.assertEqual(resp.headers.getRawHeaders(b"x-aicn-node"), [self.b.peer_id.encode()])
            client = StreamingClient()
            response = await client.post(requester.api + "/api/v0/chat/completion/proxy",
                                         chat(None, self.model.model, stream=True))
            self.assertEqual(response.code, 200)
            self.assertTrue(body_ended_cleanly(await client.ended), requester.peer_id)
            self.assertEqual(client.header(b"x-aicn-node"), self.b.peer_id)
            self.check_stream(client, requester.peer_id)
        await self.no_leaks()

    async def test_model_down_is_1006_quickly(self):
        await self.setup_chat()
        _, body = await self.c.call("/api/v0/chat/completion", chat(self.b.peer_id, self.model.model))
        self.check_completion(body, "before")
        await self.model.server.stop()
        for requester in (self.c, self.a, self.b):
            started = reactor.seconds()
            _, body = await requester.call("/api/v0/chat/completion", chat(self.b.peer_id, self.model.model))
            self.assertEqual(body["code"], 1006, body)
            self.assertTrue(body["message"].startswith("Post HTTP request error"), body)
            resp, body = await requester.call("/api/v0/chat/completion",
                                              chat(self.b.peer_id, self.model.model, True))
            self.assertEqual(resp.code, 200)
            self.assertEqual(body["code"], 1006, body)
            self.assertTrue(body["message"].startswith("Post HTTP request error"), body)
            self.assertLess(reactor.seconds() - started, 5)
        # Routed: B fails, and nobody else serves it.
        _, body = await self.a.call("/api/v0/chat/completion/proxy", chat(None, self.model.model, True))
        self.assertEqual(body["code"], 1016, body)
        await self.no_leaks()


class RealImageModelTests(ModelNetworkCase):
    """B serves the image server; images go to a js-ipfs daemon."""

    skip = ipfs_skip_reason()

    async def test_images_are_stored_in_ipfs(self):
        ipfs = await start_real_ipfs(self)
        await self.network(ipfs_api=ipfs.api_url)
        images = await start_real_image_server(self)
        await self.b.register("SuperImage", "tiny-image", images.generations_url, kind=1)
        port = ipfs.api_url.rsplit(":", 1)[1]
        cases = [
            (self.c, "/api/v0/image/gen", "", "a bird flying in the sky"),            # App.IpfsStorageAPI
            (self.a, "/api/v0/image/gen", f"/ip4/127.0.0.1/tcp/{port}", "a red fox"),  # ipfs_node, multiaddr
            (self.c, "/api/v0/image/gen/proxy", ipfs.api_url, "a green tree"),         # routed
        ]
        await wait_serving(self.nodes, "SuperImage", "tiny-image", [self.b.peer_id])
        for requester, path, ipfs_node, prompt in cases:
            params = {"project": "SuperImage", "model": "tiny-image", "prompt": prompt, "n": 2,
                      "size": "32x24", "ipfs_node": ipfs_node}
            if not path.endswith("/proxy"):
                params["node_id"] = self.b.peer_id
            resp, body = await requester.call(path, params)
            self.assertEqual((body["code"], body["message"]), (0, "ok"), body)
            if path.endswith("/proxy"):
                self.assertEqual(resp.headers.getRawHeaders(b"x-aicn-node"), [self.b.peer_id.encode()])
            self.assertEqual(body["data"]["ipfs_node"], ipfs_node or ipfs.api_url)
            choices = body["data"]["choices"]
            self.assertEqual([c["image_name"] for c in choices], [file_name(prompt, i, 32, 24) for i in range(2)])
            for i, choice in enumerate(choices):
                # The bytes in IPFS are the PNG the image server wrote.
                stored = await ipfs.cat(choice["cid"])
                with open(f"{images.out_dir}/{choice['image_name']}", "rb") as f:
                    written = f.read()
                self.assertEqual(stored, written)
                self.assertEqual(stored, make_png(prompt, i, 32, 24))
                self.assertTrue(cid_matches(choice["cid"], stored), choice)
        # One history file per request, in the daemon's MFS.
        names = await ipfs.files_ls("/models")
        self.assertEqual(len(names), len(cases), names)
        histories = [json.loads(await ipfs.files_read(f"/models/{name}")) for name in names]
        by_prompt = {h["prompt"]: h for h in histories}
        self.assertEqual(set(by_prompt), {prompt for *_, prompt in cases})
        for requester, path, _, prompt in cases:
            history = by_prompt[prompt]
            self.assertEqual(history["model"], "tiny-image")
            self.assertEqual(history["res_node_id"], self.b.peer_id)
            self.assertEqual(history["req_node_id"], requester.peer_id)
            self.assertEqual([c["image_name"] for c in history["choices"]],
                             [file_name(prompt, i, 32, 24) for i in range(2)])
            self.assertTrue(all(cid_matches(c["cid"], make_png(prompt, i, 32, 24))
                                for i, c in enumerate(history["choices"])))
        # The image server got the spec's request body.
        received = await images.requests()
        self.assertEqual(received[0], {"project": "SuperImage", "model": "tiny-image",
                                       "prompt": cases[0][3], "n": 2, "size": "32x24"})
