"""The two response shapes of ``/api/v0`` and how a request picks one.

* ``v0.1.2``, the spec's (``aicn-http-api.md``): ``{code, message, data}``
  with HTTP 200, the error codes of :class:`aicn.errors.ErrorCode`;
* ``v0.2.3``, the Go node v0.2.3's: the result flattened into the body (no
  wrapper: ``{"data": [...]}`` for lists, the object itself for a peer, host
  or model answer, ``{"message": "ok"}`` for an action, as Go's ``omitempty``
  fields make them), real HTTP statuses and v0.2.3's renumbered codes
  (:mod:`aicn.api.errors`).

The node's default is ``API.Envelope``; a request picks its own with the
``X-AICN-API: v0.1.2|v0.2.3`` header or a path prefix
(``/v0.2.3/api/v0/peers``), the prefix winning.  Every ``/api/v0`` response
names its shape in ``X-AICN-API``.

The converters here turn the node's (spec-shaped) results into v0.2.3's.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from twisted.web.resource import Resource

from aicn.errors import ErrorCode

__all__ = [
    "V012",
    "V023",
    "SHAPES",
    "SHAPE_HEADER",
    "parse_shape",
    "shape_of",
    "ShapeResource",
    "chat_v012",
    "chat_v023",
    "image_v023",
    "project_peer_v023",
    "projects_peers_v023",
]

V012 = "v0.1.2"
V023 = "v0.2.3"
SHAPES = (V012, V023)
#: Request header that picks the shape; the response's names the one used.
SHAPE_HEADER = b"X-AICN-API"
#: Where the chosen shape is kept on a request.
_ATTRIBUTE = "aicn_api_shape"


def parse_shape(text: str) -> str | None:
    """``v0.1.2`` or ``v0.2.3`` from ``text`` (case and a missing ``v`` forgiven), else None."""
    value = text.strip().lower()
    if value and not value.startswith("v"):
        value = "v" + value
    return value if value in SHAPES else None


def shape_of(request, default: str) -> str:
    """The shape ``request`` was given by :class:`ShapeResource` (``default`` if none)."""
    return getattr(request, _ATTRIBUTE, None) or default


class ShapeResource(Resource):
    """The API's root: settles each ``/api/v0`` request's shape, then lets ``app`` answer.

    A ``/v0.1.2`` or ``/v0.2.3`` prefix before ``/api/`` moves into the
    request's ``prepath`` (Klein then routes the rest); an ``X-AICN-API``
    header that names neither shape is answered 400 here, before any route
    runs.
    """

    isLeaf = True

    def __init__(self, app, default: str) -> None:
        super().__init__()
        self._app = app
        self._default = default

    def render(self, request):
        postpath = request.postpath
        shape = None
        if len(postpath) > 1 and postpath[1] == b"api":
            shape = parse_shape(postpath[0].decode("ascii", "replace")) if postpath[0][:1] == b"v" else None
            if shape is not None:
                request.prepath.append(postpath.pop(0))
        if postpath[:2] == [b"api", b"v0"]:
            if shape is None:
                header = request.getHeader(SHAPE_HEADER)
                shape = self._default
                if header is not None:
                    shape = parse_shape(header.decode("latin-1"))
                    if shape is None:
                        return self._bad_header(request, header)
            setattr(request, _ATTRIBUTE, shape)
            request.setHeader(SHAPE_HEADER, shape.encode("ascii"))
        return self._app.render(request)

    def _bad_header(self, request, header: bytes) -> bytes:
        request.setResponseCode(400)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(SHAPE_HEADER, self._default.encode("ascii"))
        shown = header.decode("latin-1")[:64]
        body = {"code": int(ErrorCode.PARAMETER),
                "message": f"X-AICN-API must be v0.1.2 or v0.2.3, not {shown!r}"}
        return json.dumps(body).encode()


# -- results in v0.2.3's shape -----------------------------------------------------------------


def chat_v012(data: dict) -> dict:
    """A chat answer as the spec's ``{created, choices, usage}``: ``id`` and ``object`` (which
    a Go v0.2.3 worker or the model may add) are v0.2.3's fields only."""
    return {name: value for name, value in data.items() if name not in ("id", "object")}


def chat_v023(data: dict) -> dict:
    """A chat answer as Go v0.2.3's ``ChatModelResponseData``: ``{id, object, created, choices, usage}``."""
    return {"id": data.get("id", ""), "object": data.get("object", ""), **data}


def image_v023(data: dict) -> dict:
    """An image answer as Go v0.2.3's ``ImageModelResponse``: ``{created, data: [{url|b64_json}]}``.

    A spec-era answer (``{ipfs_node, choices: [{cid, image_name}]}``) names
    each image by its IPFS CID: ``url`` is ``ipfs://<cid>``, as on ``/v1``.
    An answer already in that shape passes unchanged.
    """
    if "choices" not in data and ("data" in data or "created" in data):
        return data
    images = []
    for choice in data.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if choice.get("cid"):
            images.append({"url": f"ipfs://{choice['cid']}"})
        else:
            images.append({k: v for k, v in choice.items()
                           if k in ("url", "b64_json", "revised_prompt") and v})
    body: dict[str, Any] = {}
    if data.get("created"):
        body["created"] = data["created"]
    if images:
        body["data"] = images
    return body


def project_peer_v023(projects: Iterable[dict]) -> dict:
    """``/ai/project/peer`` as Go v0.2.3 writes it: project → ``[{Model, API, Type, CID, Idle}]``
    (its ``ModelIdle`` struct's capitalised keys)."""
    out: dict[str, list] = {}
    for entry in projects:
        models = out.setdefault(entry["project"], [])
        for m in entry.get("models") or ():
            if isinstance(m, str):
                m = {"model": m}
            models.append({"Model": m.get("model", ""), "API": m.get("api", ""), "Type": m.get("type", 0),
                           "CID": m.get("cid", ""), "Idle": m.get("idle", 0)})
    return out


def projects_peers_v023(peers: Iterable[dict]) -> list:
    """``/ai/projects/peers`` entries as Go v0.2.3's ``AIProjectPeerInfo``:
    ``{node_id, connectivity, latency (µs), Idle, cid}``."""
    return [{"node_id": p["node_id"], "connectivity": p.get("connectivity", 0),
             "latency": p.get("latency", 0), "Idle": p.get("idle", 0), "cid": p.get("cid", "")}
            for p in peers]
