"""
Self-tests of the real test components: the llama-cpp-python chat server
with the tiny model, our image model server, the js-ipfs daemon, and the CID
helper.  Each skips with a clear reason when its component is not installed
(``tests/support/install_all.sh``).
"""

from __future__ import annotations

import base64
import json
import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from . import cid as cidmod
from ._proc import http_client
from .imageserver import PNG_SIGNATURE, file_name, make_png, png_size, start_image_server
from .ipfsd import ipfs_skip_reason, start_ipfs
from .llama import ensure_tiny_model, llama_skip_reason, start_llama_server


def _d(coro):  # trial runs Deferreds, not coroutines
    return Deferred.fromCoroutine(coro)


class CIDTests(SynchronousTestCase):
    """The CID helper against values Kubo and js-ipfs print."""

    def test_known_v0(self) -> None:
        # `ipfs add` of an empty file and of b"hello world" (no newline).
        self.assertEqual(cidmod.cid_v0(b""), "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH")
        self.assertEqual(cidmod.cid_v0(b"hello world"),
                         "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD")

    def test_known_v1_raw(self) -> None:
        self.assertEqual(cidmod.cid_v1_raw(b"hello world"),
                         "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e")

    def test_matches(self) -> None:
        self.assertTrue(cidmod.cid_matches(cidmod.cid_v0(b"x"), b"x"))
        self.assertFalse(cidmod.cid_matches(cidmod.cid_v0(b"x"), b"y"))
        self.assertTrue(cidmod.cid_matches(cidmod.cid_v1_raw(b"x"), b"x"))
        self.assertFalse(cidmod.cid_matches("zzz", b"x"))

    def test_base58_round_trip(self) -> None:
        for data in (b"", b"\0", b"\0\0\x01", os.urandom(34)):
            self.assertEqual(cidmod.b58decode(cidmod.b58encode(data)), data)
        self.assertRaises(ValueError, cidmod.b58decode, "0OIl")

    def test_too_big(self) -> None:
        self.assertRaises(ValueError, cidmod.cid_v0, b"\0" * (cidmod.CHUNK_SIZE + 1))


class PNGTests(SynchronousTestCase):
    """The image server's PNG writer, without the server."""

    def test_png_valid(self) -> None:
        import struct
        import zlib

        png = make_png("a cat", 0, 5, 3)
        self.assertEqual(png[:8], PNG_SIGNATURE)
        self.assertEqual(png_size(png), (5, 3))
        # Walk the chunks: CRCs hold, and IDAT inflates to 3 rows of 1+5*3.
        pos, idat, kinds = 8, b"", []
        while pos < len(png):
            (n,) = struct.unpack(">I", png[pos:pos + 4])
            kind, body = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + n]
            (crc,) = struct.unpack(">I", png[pos + 8 + n:pos + 12 + n])
            self.assertEqual(crc, zlib.crc32(kind + body))
            kinds.append(kind)
            if kind == b"IDAT":
                idat += body
            pos += 12 + n
        self.assertEqual(kinds, [b"IHDR", b"IDAT", b"IEND"])
        self.assertEqual(len(zlib.decompress(idat)), 3 * (1 + 5 * 3))

    def test_deterministic(self) -> None:
        self.assertEqual(make_png("p", 1, 8, 8), make_png("p", 1, 8, 8))
        self.assertNotEqual(make_png("p", 0, 8, 8), make_png("p", 1, 8, 8))
        self.assertNotEqual(make_png("p", 0, 8, 8), make_png("q", 0, 8, 8))


async def _post_json(url: str, body: dict, **kw):
    resp = await http_client(reactor).post(url, json=body, timeout=60, **kw)
    return resp, await resp.content()


class ImageServerTests(TestCase):
    """The image model server as a process."""

    def setUp(self) -> Deferred:
        self.out = os.path.abspath(self.mktemp())

        async def start() -> None:
            self.server = await start_image_server(reactor, self.out)
            self.addCleanup(lambda: _d(self.server.stop()))

        return _d(start())

    def test_generations(self) -> Deferred:
        async def go() -> None:
            resp, content = await _post_json(self.server.generations_url, {
                "project": "DecentralGPT", "model": "tiny-image", "prompt": "a red fox",
                "n": 2, "size": "32x24"})
            self.assertEqual(resp.code, 200)
            self.assertEqual(resp.headers.getRawHeaders("content-type"), ["application/json"])
            reply = json.loads(content)
            self.assertEqual((reply["code"], reply["message"]), (0, "success"))
            self.assertIsInstance(reply["created"], int)
            self.assertEqual(len(reply["data"]), 2)
            for i, item in enumerate(reply["data"]):
                path = item["url"]
                self.assertTrue(os.path.isabs(path))
                self.assertEqual(os.path.dirname(path), self.out)
                self.assertEqual(os.path.basename(path), file_name("a red fox", i, 32, 24))
                with open(path, "rb") as f:
                    png = f.read()
                self.assertEqual(png[:8], PNG_SIGNATURE)
                self.assertEqual(png_size(png), (32, 24))
                self.assertEqual(png, make_png("a red fox", i, 32, 24))
            received = await self.server.requests()
            self.assertEqual(received[0]["project"], "DecentralGPT")

        return _d(go())

    def test_size_capped_and_b64(self) -> Deferred:
        async def go() -> None:
            resp, content = await _post_json(self.server.generations_url, {
                "model": "m", "prompt": "big", "n": 1, "size": "1024x1024",
                "response_format": "b64_json"})
            item = json.loads(content)["data"][0]
            self.assertEqual(png_size(base64.b64decode(item["b64_json"])), (64, 64))
            self.assertEqual(os.listdir(self.out), [])

        return _d(go())

    def test_errors(self) -> Deferred:
        async def go() -> None:
            resp, content = await _post_json(self.server.generations_url + "?fail=503",
                                             {"prompt": "x", "n": 1})
            self.assertEqual(resp.code, 503)
            self.assertEqual(json.loads(content)["code"], 503)
            resp, content = await _post_json(self.server.generations_url,
                                             {"prompt": "!error out of memory", "n": 1})
            self.assertEqual(resp.code, 200)
            self.assertEqual(json.loads(content),
                             {"code": 1, "message": "model error: out of memory"})
            resp, content = await _post_json(self.server.generations_url + "?text=1",
                                             {"prompt": "x", "n": 1})
            self.assertEqual((resp.code, content), (200, b"not json"))
            self.assertEqual(os.listdir(self.out), [])

        return _d(go())

    def test_models(self) -> Deferred:
        async def go() -> None:
            resp = await http_client(reactor).get(self.server.url + "/v1/models")
            self.assertEqual(json.loads(await resp.content())["data"][0]["id"], "tiny-image")

        return _d(go())


class TinyGGUFTests(SynchronousTestCase):
    """The generated model file (generated in the model venv, which has gguf)."""

    skip = llama_skip_reason()

    def test_deterministic(self) -> None:
        a = ensure_tiny_model(os.path.abspath(self.mktemp()))
        b = ensure_tiny_model(os.path.abspath(self.mktemp()))
        with open(a, "rb") as f, open(b, "rb") as g:
            data = f.read()
            self.assertEqual(data, g.read())
        self.assertEqual(data[:4], b"GGUF")
        self.assertLess(len(data), 1024 * 1024)


class LlamaServerTests(TestCase):
    """llama-cpp-python's OpenAI server with the tiny generated model."""

    skip = llama_skip_reason()
    timeout = 120

    def setUp(self) -> Deferred:
        model = ensure_tiny_model(os.path.abspath(self.mktemp()))

        async def start() -> None:
            self.server = await start_llama_server(reactor, model)
            self.addCleanup(lambda: _d(self.server.stop()))

        return _d(start())

    def test_non_stream(self) -> Deferred:
        async def go() -> None:
            body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}],
                    "stream": False, "max_tokens": 16, "temperature": 0}
            resp, content = await _post_json(self.server.chat_url, body)
            self.assertEqual(resp.code, 200)
            # The Go node compares this header to "application/json" exactly.
            self.assertEqual(resp.headers.getRawHeaders("content-type"), ["application/json"])
            reply = json.loads(content)
            self.assertIsInstance(reply["created"], int)
            self.assertEqual(reply["object"], "chat.completion")
            choice = reply["choices"][0]
            self.assertEqual(choice["message"]["role"], "assistant")
            text = choice["message"]["content"]
            self.assertTrue(text.strip())
            self.assertTrue(text.isprintable(), repr(text))
            self.assertIn(choice["finish_reason"], ("length", "stop"))
            usage = reply["usage"]
            self.assertEqual(usage["total_tokens"],
                             usage["prompt_tokens"] + usage["completion_tokens"])
            # Temperature 0: the same question gets the same answer.
            _, again = await _post_json(self.server.chat_url, body)
            self.assertEqual(json.loads(again)["choices"][0]["message"]["content"], text)

        return _d(go())

    def test_stream(self) -> Deferred:
        async def go() -> None:
            resp, content = await _post_json(self.server.chat_url, {
                "model": "tiny", "messages": [{"role": "user", "content": "hello"}],
                "stream": True, "max_tokens": 8, "temperature": 0})
            self.assertEqual(resp.code, 200)
            self.assertEqual(resp.headers.getRawHeaders("content-type"),
                             ["text/event-stream; charset=utf-8"])
            self.assertTrue(content.endswith(b"data: [DONE]\n\n"), content[-40:])
            events = [e for e in content.split(b"\n\n") if e]
            self.assertEqual(events[-1], b"data: [DONE]")
            chunks = [json.loads(e[len(b"data: "):]) for e in events[:-1]]
            self.assertTrue(chunks)
            for c in chunks:
                self.assertEqual(c["object"], "chat.completion.chunk")
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
            self.assertTrue(text.strip())

        return _d(go())


class IPFSTests(TestCase):
    """The js-ipfs daemon, offline on loopback."""

    skip = ipfs_skip_reason()
    timeout = 120

    def setUp(self) -> Deferred:
        async def start() -> None:
            self.ipfs = await start_ipfs(reactor, os.path.abspath(self.mktemp()))
            self.addCleanup(lambda: _d(self.ipfs.stop()))

        return _d(start())

    def test_add_cat_gateway(self) -> Deferred:
        async def go() -> None:
            data = make_png("ipfs", 0, 16, 16)
            cid = await self.ipfs.add(data, "x.png")
            self.assertTrue(cid.startswith("Qm"))
            self.assertEqual(cid, cidmod.cid_v0(data))
            self.assertEqual(await self.ipfs.cat(cid), data)
            self.assertEqual(await self.ipfs.gateway_get(cid), data)

        return _d(go())

    def test_cid_helper_matches_daemon(self) -> Deferred:
        async def go() -> None:
            for data in (b"", b"hello world", os.urandom(1000), os.urandom(cidmod.CHUNK_SIZE)):
                self.assertEqual(await self.ipfs.add(data), cidmod.cid_v0(data))

        return _d(go())

    def test_files_write(self) -> Deferred:
        async def go() -> None:
            doc = json.dumps({"model": "m", "choices": []}).encode()
            await self.ipfs.files_write("/models/req1.json", doc)
            self.assertEqual(await self.ipfs.files_read("/models/req1.json"), doc)
            self.assertEqual(await self.ipfs.files_ls("/models"), ["req1.json"])

        return _d(go())

    def test_files_write_needs_content_type(self) -> Deferred:
        """Documents the js-ipfs quirk the node must respect."""

        async def go() -> None:
            from .ipfsd import ComponentError

            with self.assertRaises(ComponentError) as ctx:
                await self.ipfs.files_write("/models/bad.json", b"{}", content_type=None)
            self.assertIn("content-type", str(ctx.exception).lower())

        return _d(go())

    def test_config_is_offline(self) -> None:
        with open(os.path.join(self.ipfs.repo, "config")) as f:
            config = json.load(f)
        self.assertEqual(config["Bootstrap"], [])
        self.assertFalse(config["Discovery"]["MDNS"]["Enabled"])
        self.assertFalse(config["Discovery"]["webRTCStar"]["Enabled"])
        self.assertEqual(config["Addresses"]["Delegates"], [])
        self.assertEqual(config["Routing"]["Type"], "none")
        for addr in config["Addresses"]["Swarm"] + [config["Addresses"]["API"],
                                                    config["Addresses"]["Gateway"]]:
            self.assertTrue(addr.startswith("/ip4/127.0.0.1/"), addr)
