"""A minimal Kubo-RPC client for storing generated images (``/api/v0/...``).

Only what the image flows need: ``id`` (is the node there?),
``add?pin=true`` (store a file, get its CIDv0), ``files/write`` (store
the request's history JSON in MFS) and ``cat`` (read an image back, for the
OpenAI API's ``b64_json``).  Works with Kubo and js-ipfs; js-ipfs
rejects multipart parts without a Content-Type, so every part carries one.
"""

from __future__ import annotations

import os
from typing import Optional
from urllib.parse import quote, urlsplit

from twisted.internet.defer import Deferred

from aicn import jsontext
from aicn.log import Logger
from aicn.models.errors import ModelError, UploadError
from aicn.models.http import MAX_REPLY_SIZE, Timeout, as_http_client, read_body, with_timeout

log = Logger()

#: Per-call limit for IPFS RPC calls.
IPFS_TIMEOUT = 60.0


def encode_multipart(parts: list[tuple[str, str, str, bytes]], boundary: Optional[str] = None
                     ) -> tuple[bytes, bytes]:
    """``multipart/form-data`` of ``(field, filename, content_type, data)`` parts.

    Returns ``(content_type_header, body)``.  Every part has a Content-Type.
    """
    boundary = boundary or os.urandom(16).hex()
    out = []
    for field, filename, content_type, data in parts:
        for text in (field, filename, content_type):
            if any(c in text for c in '\r\n"'):
                raise ValueError(f"bad multipart header text {text!r}")
        out.append(
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{quote(filename, safe="._-")}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n".encode("ascii")
        )
        out.append(data)
        out.append(b"\r\n")
    out.append(f"--{boundary}--\r\n".encode("ascii"))
    return f"multipart/form-data; boundary={boundary}".encode("ascii"), b"".join(out)


def ipfs_api_url(node: str) -> str:
    """An RPC endpoint as an ``http(s)://host:port`` URL.

    Accepts that form, or a multiaddr ``/ip4/<ip>/tcp/<port>`` (also ``/ip6``,
    ``/dns*``), which is how Kubo configs name it.
    """
    node = node.strip()
    if node.startswith("/"):
        parts = node.strip("/").split("/")
        if len(parts) >= 4 and parts[0] in ("ip4", "ip6", "dns", "dns4", "dns6") and parts[2] == "tcp" \
                and parts[3].isdigit():
            host = f"[{parts[1]}]" if parts[0] == "ip6" else parts[1]
            scheme = "https" if "https" in parts[4:] else "http"
            return f"{scheme}://{host}:{parts[3]}"
        raise ModelError(f"Unsupported ipfs storage node address {node}")
    split = urlsplit(node)
    if split.scheme not in ("http", "https") or not split.hostname:
        raise ModelError(f"Unsupported ipfs storage node address {node}")
    return node.rstrip("/")


class IPFSClient:
    """Kubo RPC calls against ``api_url`` (``http://127.0.0.1:5001``)."""

    def __init__(self, agent_or_client, api_url: str, *, reactor, timeout: float = IPFS_TIMEOUT) -> None:
        self.client = as_http_client(agent_or_client)
        self.api_url = ipfs_api_url(api_url)
        self.reactor = reactor
        self.timeout = timeout

    async def _post(self, path: str, body: bytes = b"", content_type: Optional[bytes] = None) -> tuple[int, bytes]:
        headers = {b"Content-Type": [content_type]} if content_type else {}

        async def call():
            response = await self.client.post(self.api_url + path, data=body, headers=headers, unbuffered=True)
            return response.code, await read_body(response, MAX_REPLY_SIZE)

        return await with_timeout(Deferred.fromCoroutine(call()), self.timeout, self.reactor)

    async def check(self) -> dict:
        """``POST /api/v0/id``; :class:`ModelError` "Unavailable ipfs storage node" unless 200."""
        try:
            status, body = await self._post("/api/v0/id")
        except Exception as exc:
            log.info("IPFS node {url} unreachable: {error}", url=self.api_url, error=exc)
            raise ModelError("Unavailable ipfs storage node") from None
        if status != 200:
            log.info("IPFS node {url} answered /id with {status}", url=self.api_url, status=status)
            raise ModelError("Unavailable ipfs storage node")
        try:
            info = jsontext.loads(body)
        except ValueError:
            info = None
        return info if isinstance(info, dict) else {}

    async def add(self, data: bytes, filename: str, content_type: str = "application/octet-stream") -> str:
        """``POST /api/v0/add?pin=true``: store one file, return its CID
        (``Hash``, CIDv0 by default).  :class:`UploadError` on failure."""
        ctype, body = encode_multipart([("file", filename, content_type, data)])
        try:
            status, reply = await self._post("/api/v0/add?pin=true", body, ctype)
        except Timeout:
            raise UploadError("IPFS add timed out") from None
        except Exception as exc:
            raise UploadError(f"IPFS add failed: {exc}") from None
        if status != 200:
            raise UploadError(f"IPFS add failed, HTTP {status}: {_rpc_message(reply)}")
        # The reply is newline-delimited JSON (progress lines, then one
        # entry per file); the added file's entry carries "Hash".
        cid = None
        for line in reply.splitlines():
            try:
                entry = jsontext.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("Hash"), str) and entry["Hash"]:
                cid = entry["Hash"]
        if cid is None:
            raise UploadError("IPFS add returned no Hash")
        return cid

    async def files_write(self, path: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """``POST /api/v0/files/write?arg=<path>&create=true&parents=true``
        (multipart field ``file``).  :class:`UploadError` on failure."""
        ctype, body = encode_multipart([("file", os.path.basename(path) or "file", content_type, data)])
        query = f"?arg={quote(path, safe='/')}&create=true&parents=true"
        try:
            status, reply = await self._post("/api/v0/files/write" + query, body, ctype)
        except Timeout:
            raise UploadError("IPFS files/write timed out") from None
        except Exception as exc:
            raise UploadError(f"IPFS files/write failed: {exc}") from None
        if status != 200:
            raise UploadError(f"IPFS files/write failed, HTTP {status}: {_rpc_message(reply)}")


    async def cat(self, cid: str, max_size: int = MAX_REPLY_SIZE) -> bytes:
        """``POST /api/v0/cat?arg=<cid>``: the bytes of a stored file (at most
        ``max_size``).  :class:`UploadError` (1007, the IPFS code) on failure."""
        async def call():
            response = await self.client.post(f"{self.api_url}/api/v0/cat?arg={quote(cid, safe='')}",
                                              data=b"", unbuffered=True)
            return response.code, await read_body(response, max_size)

        try:
            status, reply = await with_timeout(Deferred.fromCoroutine(call()), self.timeout, self.reactor)
        except Timeout:
            raise UploadError(f"IPFS cat {cid} timed out") from None
        except Exception as exc:
            raise UploadError(f"IPFS cat {cid} failed: {exc}") from None
        if status != 200:
            raise UploadError(f"IPFS cat {cid} failed, HTTP {status}: {_rpc_message(reply)}")
        return reply


def _rpc_message(reply: bytes) -> str:
    """Kubo's error JSON ``{"Message", "Code", "Type"}``, or the text."""
    try:
        data = jsontext.loads(reply)
        if isinstance(data, dict) and isinstance(data.get("Message"), str):
            return data["Message"]
    except ValueError:
        pass
    return reply[:200].decode("utf-8", "replace")
