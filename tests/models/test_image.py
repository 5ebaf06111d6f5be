"""Image model client and IPFS upload against in-test servers."""

import base64
import json
import os

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from aicn.errors import ErrorCode
from aicn.models.errors import ModelError, UploadError
from aicn.models.http import make_http_client
from aicn.models.image import (
    ImageRequest,
    ImageResult,
    generate_images,
    generate_images_v023,
    image_request_from_protobuf,
    image_request_to_protobuf,
    parse_image_items,
    parse_image_reply,
)
from aicn.models.ipfs import IPFSClient, _rpc_message, encode_multipart, ipfs_api_url
from aicn.wire import protocol_pb2 as pb
from aicn.wire import protocol_v023_pb2 as pb23

from .fakeipfs import FakeKubo, fake_cid, parse_multipart
from .servers import NOT_DONE_YET, json_reply, serve

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


class ImageGenerationTests(TestCase):
    async def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.paths = []
        for name in ("a.png", "b.png"):
            path = os.path.join(self.dir, name)
            with open(path, "wb") as f:
                f.write(PNG + name.encode())
            self.paths.append(path)
        self.kubo = FakeKubo()
        self.ipfs_url, self.ipfs_resource = await serve(self, self.kubo)
        self.client = make_http_client(reactor)

    async def model(self, reply, status=200):
        url, resource = await serve(self, lambda r: json_reply(r, json.dumps(reply).encode(), status))
        return url + "/v1/images/generations", resource

    async def generate(self, model_url, ipfs_node="", default=None, **kw):
        params = {"project": "SuperImage", "model": "superImage", "prompt": "a cat", "n": 2, "size": "64x64",
                  "ipfs_node": ipfs_node}
        return await generate_images(self.client, model_url, params, request_id="6f1c-req", req_node_id="REQ",
                                     res_node_id="RES", default_ipfs=default, reactor=reactor, **kw)

    async def test_happy_path(self):
        url, model = await self.model({"code": 0, "message": "success", "data": [{"url": p} for p in self.paths]})
        result = await self.generate(url, ipfs_node=self.ipfs_url)
        self.assertEqual(result.to_json(), {
            "ipfs_node": self.ipfs_url,
            "choices": [{"cid": fake_cid(PNG + b"a.png"), "image_name": "a.png"},
                        {"cid": fake_cid(PNG + b"b.png"), "image_name": "b.png"}],
        })
        self.assertEqual(json.loads(model.requests[0][3]), {"project": "SuperImage", "model": "superImage",
                                                            "prompt": "a cat", "n": 2, "size": "64x64"})
        # Uploads: pin=true, field "file", a Content-Type on every part.
        self.assertEqual(len(self.kubo.added), 2)
        for query, part in self.kubo.added:
            self.assertEqual(query["pin"], ["true"])
            self.assertEqual((part["name"], part["content_type"]), ("file", "image/png"))
        # History JSON in MFS.
        query, part = self.kubo.files["/models/6f1c-req.json"]
        self.assertEqual((query["create"], query["parents"]), (["true"], ["true"]))
        self.assertEqual((part["name"], part["content_type"]), ("file", "application/octet-stream"))
        history = json.loads(part["data"])
        self.assertEqual(set(history), {"timestamp", "model", "prompt", "req_node_id", "res_node_id", "choices"})
        self.assertEqual((history["model"], history["prompt"], history["req_node_id"], history["res_node_id"]),
                         ("superImage", "a cat", "REQ", "RES"))
        self.assertEqual(history["choices"], result.choices)

    async def test_default_ipfs_and_legacy_reply(self):
        url, _ = await self.model({"code": 0, "status": "ok", "imageUrl": self.paths[0]})
        result = await self.generate(url, default=self.ipfs_url)
        self.assertEqual(result.ipfs_node, self.ipfs_url)
        self.assertEqual([c["image_name"] for c in result.choices], ["a.png"])

    async def test_no_ipfs_server(self):
        url, model = await self.model({"code": 0, "data": []})
        with self.assertRaises(ModelError) as ctx:
            await self.generate(url)
        self.assertEqual((ctx.exception.code, ctx.exception.message), (1006, "No ipfs storage server"))
        self.assertEqual(model.requests, [])

    async def test_unavailable_ipfs(self):
        self.kubo.id_status = 500
        url, model = await self.model({"code": 0, "data": []})
        with self.assertRaises(ModelError) as ctx:
            await self.generate(url, ipfs_node=self.ipfs_url)
        self.assertEqual((ctx.exception.code, ctx.exception.message), (1006, "Unavailable ipfs storage node"))
        with self.assertRaises(ModelError) as ctx:
            await self.generate(url, ipfs_node="http://127.0.0.1:1")
        self.assertEqual(ctx.exception.message, "Unavailable ipfs storage node")

    async def test_model_errors(self):
        url, _ = await self.model({"code": 7, "message": "prompt rejected"})
        with self.assertRaises(ModelError) as ctx:
            await self.generate(url, ipfs_node=self.ipfs_url)
        self.assertEqual((ctx.exception.code, ctx.exception.message), (1006, "prompt rejected"))
        url, _ = await self.model({"message": "boom"}, status=500)
        with self.assertRaises(ModelError) as ctx:
            await self.generate(url, ipfs_node=self.ipfs_url)
        self.assertEqual(ctx.exception.message, "Post HTTP request error, 500: boom")
        url, _ = await self.model({"code": 0, "data": [{"url": os.path.join(self.dir, "missing.png")}]})
        with self.assertRaises(ModelError) as ctx:
            await self.generate(url, ipfs_node=self.ipfs_url)
        self.assertIn("missing.png", ctx.exception.message)

    async def v023(self, model_url, default=None, **fields):
        request = ImageRequest("SuperImage", "superImage", "a cat", n=2, size="64x64", **fields)
        return await generate_images_v023(self.client, model_url, request, request_id="6f1c-req",
                                          default_ipfs=default, reactor=reactor)

    async def test_v023_inline_and_remote_images_pass(self):
        # Go v0.2.3's model contract: {created, data: [{b64_json | url, revised_prompt}]}.
        url, model = await self.model({"created": 1589478378, "data": [
            {"b64_json": "QUJD", "revised_prompt": "a cat, photo"}, {"url": "https://x/1.png"}]})
        result = await self.v023(url, width=64, height=48, response_format="url", wallet="0xab")
        self.assertEqual(result.created, 1589478378)
        self.assertEqual(result.choices, [{"b64_json": "QUJD", "revised_prompt": "a cat, photo"},
                                          {"url": "https://x/1.png"}])
        self.assertEqual(json.loads(model.requests[0][3]), {
            "project": "SuperImage", "model": "superImage", "prompt": "a cat", "n": 2, "size": "64x64",
            "width": 64, "height": 48, "response_format": "url", "wallet": "0xab"})
        self.assertEqual(self.kubo.added, [])

    async def test_v023_file_paths_inline_or_to_ipfs(self):
        url, _ = await self.model({"code": 0, "data": [{"url": p} for p in self.paths]})
        result = await self.v023(url, response_format="b64_json")
        self.assertEqual([base64.b64decode(c["b64_json"]) for c in result.choices],
                         [PNG + b"a.png", PNG + b"b.png"])
        self.assertGreater(result.created, 0)
        result = await self.v023(url, default=self.ipfs_url)
        cids = [fake_cid(PNG + b"a.png"), fake_cid(PNG + b"b.png")]
        self.assertEqual(result.choices, [{"url": f"ipfs://{c}", "cid": c, "image_name": n}
                                          for c, n in zip(cids, ("a.png", "b.png"))])
        self.assertEqual([c.url for c in result.to_protobuf(pb23).choices], [f"ipfs://{c}" for c in cids])
        with self.assertRaises(ModelError) as ctx:
            await self.v023(url)  # a file, no IPFS node, no b64_json asked
        self.assertEqual(ctx.exception.message, "No ipfs storage server")

    async def test_model_timeout(self):
        url, resource = await serve(self, lambda r: NOT_DONE_YET)
        with self.assertRaises(ModelError) as ctx:
            await self.generate(url, ipfs_node=self.ipfs_url, timeout=0.3)
        self.assertEqual(ctx.exception.message, "Post HTTP request error, timeout")
        await resource.dropped

    async def test_upload_error_is_1007(self):
        self.kubo.add_status = 500
        url, _ = await self.model({"code": 0, "data": [{"url": self.paths[0]}]})
        with self.assertRaises(UploadError) as ctx:
            await self.generate(url, ipfs_node=self.ipfs_url)
        self.assertEqual(ctx.exception.code, ErrorCode.UPLOAD)
        self.assertIn("add failed", ctx.exception.message)

    async def test_bad_request_id(self):
        with self.assertRaises(ModelError):
            await generate_images(self.client, "http://127.0.0.1:1/", {"model": "m", "prompt": "p", "project": "x"},
                                  request_id="../../etc", req_node_id="", res_node_id="",
                                  default_ipfs=self.ipfs_url, reactor=reactor)

    async def test_ipfs_client_multiaddr(self):
        port = self.ipfs_url.rsplit(":", 1)[1]
        ipfs = IPFSClient(self.client, f"/ip4/127.0.0.1/tcp/{port}", reactor=reactor)
        self.assertEqual((await ipfs.check())["ID"], "12D3KooWfake")
        self.assertEqual(await ipfs.add(b"hello", "h.txt"), fake_cid(b"hello"))


class PureTests(SynchronousTestCase):
    def test_multipart_every_part_typed(self):
        ctype, body = encode_multipart([("file", "a.png", "image/png", b"\x00\r\n--x"),
                                        ("file", "b", "application/octet-stream", b"")])
        parts = parse_multipart(ctype, body)
        self.assertEqual([(p["filename"], p["content_type"], p["data"]) for p in parts],
                         [("a.png", "image/png", b"\x00\r\n--x"), ("b", "application/octet-stream", b"")])
        with self.assertRaises(ValueError):
            encode_multipart([("file", 'a"b', "x/y", b"")])

    def test_ipfs_api_url(self):
        self.assertEqual(ipfs_api_url("http://122.99.183.54:4002/"), "http://122.99.183.54:4002")
        self.assertEqual(ipfs_api_url("/ip4/127.0.0.1/tcp/5001"), "http://127.0.0.1:5001")
        self.assertEqual(ipfs_api_url("/ip6/::1/tcp/5001"), "http://[::1]:5001")
        for bad in ("ftp://x", "/ip4/1.2.3.4/udp/1", "nonsense"):
            with self.assertRaises(ModelError):
                ipfs_api_url(bad)

    def test_parse_image_reply(self):
        self.assertEqual(parse_image_reply(200, b'{"code":0,"message":"ok","data":[{"url":"/t/x.png"}]}'),
                         ["/t/x.png"])
        for status, body in [(200, b"nope"), (200, b'{"code":0,"data":[]}'), (404, b"")]:
            with self.assertRaises(ModelError):
                parse_image_reply(status, body)

    def test_deep_json_replies_are_model_errors(self):
        # Found by the fuzz harness: json.loads raised RecursionError (the IPFS node is the client's choice).
        for status in (200, 500):
            with self.assertRaises(ModelError):
                parse_image_reply(status, b'{"a":' * 50000)
        self.assertEqual(_rpc_message(b"[" * 100000), "[" * 200)

    def test_codes_int_cannot_take(self):
        # Found by the fuzz harness: int(code) raised OverflowError / ValueError for JSON Infinity / NaN.
        for raw in (b"Infinity", b"NaN"):
            with self.assertRaises(ModelError) as caught:
                parse_image_reply(200, b'{"code": %s, "data": [{"url": "/x.png"}]}' % raw)
            self.assertIsNone(caught.exception.model_code)

    def test_protobuf(self):
        params = {"project": "P", "model": "M", "prompt": "cat", "n": 2, "size": "1x1", "ipfs_node": "http://i"}
        req = pb.ImageGenerationRequest.FromString(image_request_to_protobuf(params).SerializeToString())
        self.assertEqual(image_request_from_protobuf(req), params)
        result = ImageResult("http://i", [{"cid": "Qm1", "image_name": "x.png"}])
        wire = result.to_protobuf().SerializeToString()
        self.assertEqual(ImageResult.from_protobuf(pb.ImageGenerationResponse.FromString(wire)), result)


class TunnelJSONTests(SynchronousTestCase):
    """Go v0.2.3's JSON of a tunnelled image generation (``ImageGenModelRequest``, ``ImageGenerationResponse``)."""

    def test_request_round_trip_as_go_marshals_it(self):
        req = ImageRequest("P", "sd", "a cat", n=2, size="512x512", width=512, height=512,
                           response_format="b64_json", cid="c1", wallet="w", signature="s", hash="h")
        body = req.to_model_json()
        # Go's field names; step is omitempty; project and cid travel in the query, not the body.
        self.assertEqual(body, {"model": "sd", "prompt": "a cat", "n": 2, "size": "512x512", "width": 512,
                                "height": 512, "response_format": "b64_json", "wallet": "w", "signature": "s",
                                "hash": "h"})
        self.assertEqual(ImageRequest.from_model_json("P", "sd", "c1", json.loads(json.dumps(body))), req)
        self.assertEqual(ImageRequest.from_model_json("P", "q", "", {**body, "model": "x", "step": 20}).step, 20)

    def test_bad_requests_name_the_field(self):
        for body, word in (([], "JSON object"), ({"prompt": ""}, "empty prompt"), ({}, "empty prompt"),
                           ({"prompt": "x", "n": "2"}, "n must be a number"),
                           ({"prompt": "x", "n": True}, "n must be a number"),
                           ({"prompt": 5}, "prompt must be a string")):
            with self.assertRaises(ValueError) as caught:
                ImageRequest.from_model_json("P", "m", "", body)
            self.assertIn(word, str(caught.exception))

    def test_result_as_go_reads_it_and_back(self):
        result = ImageResult("", [{"b64_json": "aGk=", "revised_prompt": "a cat, painted"},
                                  {"cid": "bafy1", "image_name": "a.png"}, {"url": "https://x/1.png"}], created=7)
        body = result.to_model_json()
        self.assertEqual(body, {"code": 0, "message": "ok", "created": 7, "data": [
            {"b64_json": "aGk=", "revised_prompt": "a cat, painted"}, {"url": "ipfs://bafy1"},
            {"url": "https://x/1.png"}]})
        created, items = parse_image_items(200, json.dumps(body).encode())
        back = ImageResult.from_items(created, items)
        self.assertEqual(back.created, 7)
        self.assertEqual([(c["cid"], c.get("url"), c.get("b64_json")) for c in back.choices],
                         [("", None, "aGk="), ("bafy1", "ipfs://bafy1", None), ("", "https://x/1.png", None)])
