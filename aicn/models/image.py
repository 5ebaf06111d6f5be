"""Text-to-image model calls and the spec's IPFS hand-off.

The spec-era contract: the node POSTs ``{project, model, prompt, n, size}``
to the model; the model answers ``{code, message, data:[{url}]}`` (or the
legacy ``{code, status, imageUrl}``) where each ``url`` is a *local file
path* on this node.  The node uploads each file to an IPFS node (the
request's ``ipfs_node``, else ``App.IpfsStorageAPI``), writes a history JSON
to ``/models/<requestId>.json`` in that node's MFS and answers
``{ipfs_node, choices:[{cid, image_name}]}``.

Go v0.2.3's contract (:func:`generate_images_v023`): the request carries
``width``, ``height``, ``response_format``, ``step`` and wallet fields, no
IPFS node; the answer is ``{created, choices:[{url, b64_json,
revised_prompt}]}``.  An image the model already gives as ``b64_json`` or an
``http(s)``/``data`` URL passes as it is (as Go does); a local file path is
inlined as ``b64_json`` when the request asks for that, else uploaded to
``App.IpfsStorageAPI`` and answered as ``url: ipfs://<cid>``.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import re
from dataclasses import dataclass, field
from typing import Mapping, Optional

from twisted.internet.defer import Deferred

from aicn import jsontext
from aicn.log import Logger
from aicn.models.errors import ModelError, code_number
from aicn.models.http import MAX_REPLY_SIZE, ReplyTooLarge, Timeout, as_http_client, read_body, with_timeout
from aicn.models.ipfs import IPFSClient
from aicn.wire import protocol_pb2 as pb
from aicn.wire import protocol_v023_pb2 as pb23
from aicn.wire.versions import V012, V023, version_of

log = Logger()

#: Go's limit for image models.
IMAGE_TIMEOUT = 300.0
#: The registration type of image generation models.
IMAGE_MODEL = 1
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")

#: Refuse to upload "images" larger than this.
MAX_IMAGE_SIZE = 64 * 1024 * 1024


IPFS_URL = "ipfs://"
#: The keys of a v0.2.3 image choice.
V023_CHOICE_KEYS = ("url", "b64_json", "revised_prompt")


@dataclass
class ImageResult:
    """``{ipfs_node, choices:[{cid, image_name}]}`` (v0.1.2), or (v0.2.3) ``created`` and choices
    ``{url, b64_json, revised_prompt}``; an ``ipfs://<cid>`` url is also the choice's ``cid``."""

    ipfs_node: str
    choices: list[dict] = field(default_factory=list)
    created: int = 0

    def to_json(self) -> dict:
        body = {"ipfs_node": self.ipfs_node, "choices": self.choices}
        if self.created:
            body["created"] = self.created
        return body

    def _v023_items(self) -> list[dict]:
        """The choices as v0.2.3's ``{url, b64_json, revised_prompt}`` (those that are set; a CID
        as its ``ipfs://`` url)."""
        items = []
        for c in self.choices:
            item = {k: c[k] for k in V023_CHOICE_KEYS if c.get(k)}
            if not item.get("url") and c.get("cid"):
                item["url"] = IPFS_URL + c["cid"]
            items.append(item)
        return items

    def to_protobuf(self, wire=pb):
        """The ``ImageGenerationResponse`` of ``wire``'s schema.  v0.1.2 names images by IPFS CID
        only: an image without one (b64, http url) has no place there and is left out."""
        if version_of(wire) == V023:
            return pb23.ImageGenerationResponse(created=self.created, choices=[
                pb23.ImageGenerationResponse.ImageResponseChoice(**item) for item in self._v023_items()])
        return pb.ImageGenerationResponse(
            ipfs_node=self.ipfs_node,
            choices=[pb.ImageGenerationResponse.ImageResponseChoice(cid=c["cid"],
                                                                    image_name=c.get("image_name", ""))
                     for c in self.choices if c.get("cid")],
        )

    @classmethod
    def from_protobuf(cls, response) -> "ImageResult":
        """From an ``ImageGenerationResponse`` of either schema."""
        if version_of(response) != V023:
            return cls(response.ipfs_node,
                       [{"cid": c.cid, "image_name": c.image_name} for c in response.choices])
        return cls.from_items(response.created, [{k: getattr(c, k) for k in V023_CHOICE_KEYS if getattr(c, k)}
                                                 for c in response.choices])

    def to_model_json(self) -> dict:
        """Go v0.2.3's ``types.ImageGenerationResponse`` (what a Go requester reads from the
        tunnel): ``{code, message, created, data: [{url, b64_json, revised_prompt}]}``."""
        return {"code": 0, "message": "ok", "created": self.created, "data": self._v023_items()}

    @classmethod
    def from_items(cls, created: int, items: list[dict]) -> "ImageResult":
        """From :func:`parse_image_items`' answer (an ``ipfs://<cid>`` url is also the ``cid``)."""
        choices = []
        for item in items:
            url = item.get("url", "")
            choices.append({"cid": url[len(IPFS_URL):] if url.startswith(IPFS_URL) else "", "image_name": "",
                            **item})
        return cls("", choices, created=created)

    @classmethod
    def coerce(cls, value) -> "ImageResult":
        """``value`` itself, or the result a reply body of either schema holds."""
        return value if isinstance(value, cls) else cls.from_protobuf(value)


@dataclass
class ImageRequest:
    """An image generation request as it travels between nodes, whatever the schema:
    v0.1.2's ``ipfs_node``, v0.2.3's ``width``, ``height``, ``response_format``, ``cid``,
    ``step`` and wallet fields."""

    project: str
    model: str
    prompt: str
    n: int = 1
    size: str = ""
    ipfs_node: str = ""
    width: int = 0
    height: int = 0
    response_format: str = ""
    cid: str = ""
    step: int = 0
    wallet: str = ""
    signature: str = ""
    hash: str = ""

    @classmethod
    def from_params(cls, params: Mapping) -> "ImageRequest":
        """From the HTTP API's validated image parameters."""
        return cls(**{name: params[name] for name in cls.__dataclass_fields__
                      if params.get(name) is not None})

    def to_protobuf(self, wire=pb):
        """The ``ImageGenerationRequest`` of ``wire``'s schema (v0.2.3's wallet always set, as Go)."""
        if version_of(wire) != V023:
            return pb.ImageGenerationRequest(project=self.project, model=self.model, prompt=self.prompt,
                                             number=self.n, size=self.size, ipfs_node=self.ipfs_node)
        return pb23.ImageGenerationRequest(
            project=self.project, model=self.model, prompt=self.prompt, number=self.n, size=self.size,
            width=self.width, height=self.height, response_format=self.response_format, cid=self.cid,
            step=self.step,
            wallet=pb23.WalletVerification(wallet=self.wallet, signature=self.signature, hash=self.hash))

    @classmethod
    def from_protobuf(cls, request) -> "ImageRequest":
        """From an ``ImageGenerationRequest`` of either schema."""
        common = {"project": request.project, "model": request.model, "prompt": request.prompt,
                  "n": request.number, "size": request.size}
        if version_of(request) != V023:
            return cls(ipfs_node=request.ipfs_node, **common)
        return cls(width=request.width, height=request.height, response_format=request.response_format,
                   cid=request.cid, step=request.step, wallet=request.wallet.wallet,
                   signature=request.wallet.signature, hash=request.wallet.hash, **common)

    @classmethod
    def coerce(cls, value) -> "ImageRequest":
        """``value`` itself, or the request a protobuf message of either schema holds."""
        return value if isinstance(value, cls) else cls.from_protobuf(value)

    def to_model_json(self) -> dict:
        """Go v0.2.3's ``types.ImageGenModelRequest``, the tunnelled body of a b64 image
        generation: ``{model, prompt, n, size, width, height, [step,] response_format}`` and
        the wallet fields."""
        body = {"model": self.model, "prompt": self.prompt, "n": self.n, "size": self.size,
                "width": self.width, "height": self.height}
        if self.step:
            body["step"] = self.step  # omitempty in Go
        body.update(response_format=self.response_format, wallet=self.wallet, signature=self.signature,
                    hash=self.hash)
        return body

    @classmethod
    def from_model_json(cls, project: str, model: str, cid: str, body) -> "ImageRequest":
        """From a tunnelled ``ImageGenModelRequest`` (the query's ``project``, ``model`` and
        ``cid`` win over the body's); ``ValueError`` naming the field that is wrong."""
        if not isinstance(body, dict):
            raise ValueError("the request body is not a JSON object")
        fields = {}
        for name, key, kind in (("prompt", "prompt", str), ("n", "n", int), ("size", "size", str),
                                ("width", "width", int), ("height", "height", int), ("step", "step", int),
                                ("response_format", "response_format", str), ("wallet", "wallet", str),
                                ("signature", "signature", str), ("hash", "hash", str)):
            value = body.get(key)
            if value is None:
                continue
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"{key} must be a {'string' if kind is str else 'number'}")
            fields[name] = value
        if not fields.get("prompt"):
            raise ValueError("empty prompt")
        return cls(project=project, model=model, cid=cid, **fields)

    def preferred_wire(self) -> str | None:
        """The schema for a node that reads both: v0.1.2's, whose answer names the IPFS node
        the images were stored on, unless the request needs v0.2.3's fields."""
        return V023 if self.model_extra() or self.cid else V012

    def params(self) -> dict:
        """``{project, model, prompt, n, size, ipfs_node}`` (what :func:`generate_images` reads)."""
        return {"project": self.project, "model": self.model, "prompt": self.prompt, "n": self.n,
                "size": self.size, "ipfs_node": self.ipfs_node}

    def model_extra(self) -> dict:
        """v0.2.3's fields for the model, those that are set (Go sends them; ``step`` it drops)."""
        names = ("width", "height", "step", "response_format", "wallet", "signature", "hash")
        return {name: getattr(self, name) for name in names if getattr(self, name)}


def image_request_from_protobuf(request) -> dict:
    """``{project, model, prompt, n, size, ipfs_node}`` from a protobuf request of either schema."""
    return ImageRequest.from_protobuf(request).params()


def image_request_to_protobuf(params: Mapping) -> pb.ImageGenerationRequest:
    """The protobuf IMAGE_GENERATION request for API parameters."""
    return pb.ImageGenerationRequest(project=params["project"], model=params["model"], prompt=params["prompt"],
                                     number=params.get("n", 1), size=params.get("size", ""),
                                     ipfs_node=params.get("ipfs_node", ""))


def _judge_reply(status: int, body: bytes) -> dict:
    """The JSON object of a successful image model reply, or :class:`ModelError`."""
    try:
        reply = jsontext.loads(body)
    except ValueError:
        reply = None
    if status != 200:
        detail = reply.get("message") if isinstance(reply, dict) else None
        raise ModelError(f"Post HTTP request error, {status}" + (f": {detail}" if isinstance(detail, str) and detail
                                                                  else ""))
    if not isinstance(reply, dict):
        raise ModelError("Model HTTP response is not JSON")
    code = reply.get("code", 0)
    if isinstance(code, (int, float)) and not isinstance(code, bool) and code != 0:
        message = reply.get("message") or reply.get("status")
        raise ModelError(message if isinstance(message, str) and message else f"Model returned code {code}",
                         model_code=code_number(code))
    return reply


def parse_image_reply(status: int, body: bytes) -> list[str]:
    """The local file paths in an image model's reply (pure), or :class:`ModelError`."""
    reply = _judge_reply(status, body)
    paths = []
    data = reply.get("data")
    if isinstance(data, list):
        paths = [item["url"] for item in data if isinstance(item, dict) and isinstance(item.get("url"), str)
                 and item["url"]]
    elif isinstance(reply.get("imageUrl"), str) and reply["imageUrl"]:
        paths = [reply["imageUrl"]]  # legacy {code, status, imageUrl}
    if not paths:
        raise ModelError("Model returned no images")
    return paths


def parse_image_items(status: int, body: bytes) -> tuple[int, list[dict]]:
    """``(created, [{url, b64_json, revised_prompt}])`` of an image model's reply (pure): Go
    v0.2.3's ``{created, data}``, or the spec's file paths as ``url``; :class:`ModelError`."""
    reply = _judge_reply(status, body)
    created = reply.get("created")
    if not isinstance(created, int) or isinstance(created, bool) or not 0 < created < 2**63:
        created = 0
    items = []
    data = reply.get("data")
    for item in data if isinstance(data, list) else ():
        if not isinstance(item, dict):
            continue
        entry = {k: item[k] for k in V023_CHOICE_KEYS if isinstance(item.get(k), str) and item[k]}
        if entry.get("url") or entry.get("b64_json"):
            items.append(entry)
    if not items and isinstance(reply.get("imageUrl"), str) and reply["imageUrl"]:
        items = [{"url": reply["imageUrl"]}]  # legacy {code, status, imageUrl}
    if not items:
        raise ModelError("Model returned no images")
    return created, items


async def _post_image_model(agent_or_client, api_url: str, body: dict, *, reactor, timeout: float):
    client = as_http_client(agent_or_client)
    data = json.dumps(body).encode()

    async def call():
        response = await client.post(api_url, data=data, headers={b"Content-Type": [b"application/json"]},
                                     unbuffered=True)
        return response.code, await read_body(response, MAX_REPLY_SIZE)

    try:
        return await with_timeout(Deferred.fromCoroutine(call()), timeout, reactor)
    except Timeout:
        raise ModelError("Post HTTP request error, timeout") from None
    except ReplyTooLarge as exc:
        raise ModelError(f"Post HTTP request error, {exc}") from None
    except Exception as exc:
        log.info("Image model {url} failed: {error}", url=api_url, error=exc)
        raise ModelError(f"Post HTTP request error, {exc}") from None


async def call_image_model(agent_or_client, api_url: str, *, project: str, model: str, prompt: str,
                           n: int = 1, size: str = "", reactor, timeout: float = IMAGE_TIMEOUT) -> list[str]:
    """POST ``{project, model, prompt, n, size}``; return the image file paths."""
    body = {"project": project, "model": model, "prompt": prompt, "n": n, "size": size}
    status, content = await _post_image_model(agent_or_client, api_url, body, reactor=reactor,
                                              timeout=timeout)
    return parse_image_reply(status, content)


def _read_image(path: str) -> bytes:
    # Images are small local files written by the model a moment ago; a
    # blocking read is cheaper than a thread hop.
    try:
        if os.path.getsize(path) > MAX_IMAGE_SIZE:
            raise ModelError(f"Image {os.path.basename(path)} is too large")
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ModelError(f"Cannot read image file {os.path.basename(path)}: {exc.strerror}") from None


async def generate_images(agent_or_client, api_url: str, params: Mapping, *, request_id: str, req_node_id: str,
                          res_node_id: str, default_ipfs: Optional[str], reactor,
                          timeout: float = IMAGE_TIMEOUT) -> ImageResult:
    """The worker side of IMAGE_GENERATION: model call, IPFS upload, history.

    ``params``: ``{project, model, prompt, n, size, ipfs_node}``;
    ``default_ipfs`` is ``App.IpfsStorageAPI``.  Raises :class:`ModelError`
    (1006: model, no/unavailable IPFS node) or
    :class:`~aicn.models.errors.UploadError` (1007).
    """
    if not _SAFE_ID.match(request_id):
        # The id comes from the requesting peer: keep it inside /models/.
        raise ModelError("Bad request id")
    ipfs_node = params.get("ipfs_node") or default_ipfs
    if not ipfs_node:
        raise ModelError("No ipfs storage server")
    ipfs = IPFSClient(agent_or_client, ipfs_node, reactor=reactor)
    # Check the storage before spending GPU time on images nobody can store.
    await ipfs.check()
    paths = await call_image_model(agent_or_client, api_url, project=params["project"], model=params["model"],
                                   prompt=params["prompt"], n=params.get("n", 1), size=params.get("size", ""),
                                   reactor=reactor, timeout=timeout)
    choices = []
    for path in paths:
        name = os.path.basename(path)
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        cid = await ipfs.add(_read_image(path), name, content_type)
        choices.append({"cid": cid, "image_name": name})
    history = {
        "timestamp": int(reactor.seconds()),
        "model": params["model"],
        "prompt": params["prompt"],
        "req_node_id": req_node_id,
        "res_node_id": res_node_id,
        "choices": choices,
    }
    await ipfs.files_write(f"/models/{request_id}.json", json.dumps(history).encode("utf-8"),
                           "application/octet-stream")
    return ImageResult(ipfs_node=ipfs_node, choices=choices)


def _is_inline_url(url: str) -> bool:
    """A url the requester can use as it is (not a file path on this node)."""
    return url.split(":", 1)[0].lower() in ("http", "https", "data", "ipfs") and ":" in url


async def generate_images_v023(agent_or_client, api_url: str, request: ImageRequest, *, request_id: str,
                               default_ipfs: Optional[str], reactor,
                               timeout: float = IMAGE_TIMEOUT) -> ImageResult:
    """The worker side of a Go v0.2.3 IMAGE_GENERATION request (see the module docstring).

    The model gets ``{project, model, prompt, n, size}`` and v0.2.3's fields that are
    set.  Raises :class:`ModelError` (1006: model, no IPFS node for a file) or
    :class:`~aicn.models.errors.UploadError` (1007).
    """
    if not _SAFE_ID.match(request_id):
        raise ModelError("Bad request id")
    body = {"project": request.project, "model": request.model, "prompt": request.prompt, "n": request.n,
            "size": request.size, **request.model_extra()}
    status, content = await _post_image_model(agent_or_client, api_url, body, reactor=reactor,
                                              timeout=timeout)
    created, items = parse_image_items(status, content)
    ipfs = None
    choices = []
    for item in items:
        url = item.get("url", "")
        if item.get("b64_json") or _is_inline_url(url):
            choices.append(item)
            continue
        data = _read_image(url)
        name = os.path.basename(url)
        revised = {"revised_prompt": item["revised_prompt"]} if item.get("revised_prompt") else {}
        if request.response_format == "b64_json":
            choices.append({"b64_json": base64.b64encode(data).decode("ascii"), **revised})
            continue
        if ipfs is None:
            if not default_ipfs:
                raise ModelError("No ipfs storage server")
            ipfs = IPFSClient(agent_or_client, default_ipfs, reactor=reactor)
        cid = await ipfs.add(data, name, mimetypes.guess_type(name)[0] or "application/octet-stream")
        choices.append({"url": IPFS_URL + cid, "cid": cid, "image_name": name, **revised})
    return ImageResult("", choices, created=created or int(reactor.seconds()))
