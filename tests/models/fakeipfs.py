"""A tiny fake Kubo RPC server for tests: /api/v0/id, add, files/write, cat.

It parses multipart bodies strictly like js-ipfs does on the points that
matter (a part without Content-Type is an error) and records everything.
CIDs are CIDv0-shaped (``Qm`` + base58 sha2-256 multihash of the bytes);
they are not the dag-pb CIDs a real node computes.
"""

import hashlib
import json
from email.parser import BytesParser
from email.policy import HTTP
from urllib.parse import parse_qs, urlsplit

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def fake_cid(data: bytes) -> str:
    return b58(b"\x12\x20" + hashlib.sha256(data).digest())


def parse_multipart(content_type: bytes, body: bytes):
    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type + b"\r\n\r\n" + body)
    if not msg.is_multipart():
        raise ValueError("not multipart")
    parts = []
    for part in msg.iter_parts():
        if part.get("Content-Type") is None:
            raise ValueError("No content-type in multipart part")
        parts.append({"name": part.get_param("name", header="content-disposition"),
                      "filename": part.get_filename(), "content_type": part.get_content_type(),
                      "data": part.get_payload(decode=True)})
    return parts


class FakeKubo:
    """Handler for :func:`tests.models.servers.serve`."""

    def __init__(self):
        self.added = []  # (query, part)
        self.files = {}  # MFS path -> (query, part)
        self.id_status = 200
        self.add_status = 200

    def __call__(self, request):
        url = urlsplit(request.uri.decode())
        query = parse_qs(url.query)
        request.setHeader(b"content-type", b"application/json")
        if request.method != b"POST":
            request.setResponseCode(405)
            return b'{"Message":"method not allowed","Code":0,"Type":"error"}'
        if url.path == "/api/v0/id":
            request.setResponseCode(self.id_status)
            return json.dumps({"ID": "12D3KooWfake", "AgentVersion": "fake"}).encode()
        if url.path == "/api/v0/cat":
            for _, part in self.added:
                if fake_cid(part["data"]) == query.get("arg", [""])[0]:
                    request.setHeader(b"content-type", b"text/plain")
                    return part["data"]
            request.setResponseCode(500)
            return b'{"Message":"block was not found locally (offline)","Code":0,"Type":"error"}'
        try:
            parts = parse_multipart(request.getHeader(b"content-type") or b"", request.content.read())
        except ValueError as exc:
            request.setResponseCode(400)
            return json.dumps({"Message": str(exc), "Code": 0, "Type": "error"}).encode()
        if url.path == "/api/v0/add":
            if self.add_status != 200:
                request.setResponseCode(self.add_status)
                return b'{"Message":"add failed","Code":0,"Type":"error"}'
            out = []
            for part in parts:
                self.added.append((query, part))
                out.append(json.dumps({"Name": part["filename"], "Hash": fake_cid(part["data"]),
                                       "Size": str(len(part["data"]))}))
            return ("\n".join(out) + "\n").encode()
        if url.path == "/api/v0/files/write":
            self.files[query["arg"][0]] = (query, parts[0])
            return b""
        request.setResponseCode(404)
        return b'{"Message":"404 page not found"}'
