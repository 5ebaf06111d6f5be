"""Text-to-image model calls and the spec's IPFS hand-off.

The spec-era contract: the node POSTs ``{project, model, prompt, n, size}``
to the model; the model answers ``{code, message, data:[{url}]}`` (or the
legacy ``{code, status, imageUrl}``) where each ``url`` is a *local file
path* on this node.  The node uploads each file to an IPFS node (the
request's ``ipfs_node``, else ``App.IpfsStorageAPI``), writes a history JSON
to ``/models/<requestId>.json`` in that node's MFS and answers
``{ipfs_node, choices:[{cid, image_name}]}``.
"""

from __future__ import annotations

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

log = Logger()

#: Go's limit for image models.
IMAGE_TIMEOUT = 300.0
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")

#: Refuse to upload "images" larger than this.
MAX_IMAGE_SIZE = 64 * 1024 * 1024


@dataclass
class ImageResult:
    """``{ipfs_node, choices:[{cid, image_name}]}``."""

    ipfs_node: str
    choices: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"ipfs_node": self.ipfs_node, "choices": self.choices}

    def to_protobuf(self) -> pb.ImageGenerationResponse:
        return pb.ImageGenerationResponse(
            ipfs_node=self.ipfs_node,
            choices=[pb.ImageGenerationResponse.ImageResponseChoice(cid=c["cid"], image_name=c["image_name"])
                     for c in self.choices],
        )

    @classmethod
    def from_protobuf(cls, response: pb.ImageGenerationResponse) -> "ImageResult":
        return cls(response.ipfs_node, [{"cid": c.cid, "image_name": c.image_name} for c in response.choices])


def image_request_from_protobuf(request: pb.ImageGenerationRequest) -> dict:
    """``{project, model, prompt, n, size, ipfs_node}`` from a protobuf request."""
    return {"project": request.project, "model": request.model, "prompt": request.prompt,
            "n": request.number, "size": request.size, "ipfs_node": request.ipfs_node}


def image_request_to_protobuf(params: Mapping) -> pb.ImageGenerationRequest:
    """The protobuf IMAGE_GENERATION request for API parameters."""
    return pb.ImageGenerationRequest(project=params["project"], model=params["model"], prompt=params["prompt"],
                                     number=params.get("n", 1), size=params.get("size", ""),
                                     ipfs_node=params.get("ipfs_node", ""))


def parse_image_reply(status: int, body: bytes) -> list[str]:
    """The local file paths in an image model's reply (pure), or :class:`ModelError`."""
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


async def call_image_model(agent_or_client, api_url: str, *, project: str, model: str, prompt: str, n: int = 1,
                           size: str = "", reactor, timeout: float = IMAGE_TIMEOUT) -> list[str]:
    """POST ``{project, model, prompt, n, size}``; return the image file paths."""
    client = as_http_client(agent_or_client)
    body = json.dumps({"project": project, "model": model, "prompt": prompt, "n": n, "size": size}).encode()

    async def call():
        response = await client.post(api_url, data=body, headers={b"Content-Type": [b"application/json"]},
                                     unbuffered=True)
        return response.code, await read_body(response, MAX_REPLY_SIZE)

    try:
        status, content = await with_timeout(Deferred.fromCoroutine(call()), timeout, reactor)
    except Timeout:
        raise ModelError("Post HTTP request error, timeout") from None
    except ReplyTooLarge as exc:
        raise ModelError(f"Post HTTP request error, {exc}") from None
    except Exception as exc:
        log.info("Image model {url} failed: {error}", url=api_url, error=exc)
        raise ModelError(f"Post HTTP request error, {exc}") from None
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
