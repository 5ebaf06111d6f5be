"""The node's HTTP API (Klein): the spec ``aicn-http-api.md`` (Go v0.1.2) and Go v0.2.3's.

Routes stay thin: they check the method, parse and validate the input (JSON
body, query parameters, a multipart form), call the node backend and render
the result.  Every failure is an :class:`~aicn.errors.AICNError`, rendered
once by :meth:`NodeAPI._render_error`.

Each request is answered in one of two shapes (:mod:`aicn.api.shape`): the
spec's ``{code, message[, data]}`` envelope (the default), or Go v0.2.3's
flattened bodies with real HTTP statuses and renumbered codes.  Routes serve
both versions' methods (v0.2.3 made the listings GET) and inputs (v0.2.3
reads ``ai/projects/*`` from the query; a JSON body still works).

HTTP conventions of the spec's shape (from the Go node, v0.1.2):

* wrong method: HTTP 405, text body ``Method is not supported.``;
* otherwise HTTP 200 with the error in the JSON ``code``, except for errors
  about HTTP itself: body too large (413), missing token (401), foreign
  ``Origin`` (403) and unknown path (404);
* JSON keys reach fields as Go's ``encoding/json`` makes them
  (:mod:`aicn.config.gojson`).

In v0.2.3's shape a wrong method and an unknown path get gin's text bodies
(``405 method not allowed``, ``404 page not found``).

Under ``/v1/`` the OpenAI-compatible API (:mod:`aicn.api.openai`) answers
with its own conventions.

Observability (aicn's own, outside the spec): Prometheus metrics at
``/metrics`` (:mod:`aicn.api.metrics`), health at ``/health/liveliness`` and
``/health/readiness``, the web dashboard at ``/`` (:mod:`aicn.api.dashboard`)
over ``/api/v0/debug/state``.  Like every read-only GET they need no token.
"""

from __future__ import annotations

import hmac
import json
import math
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from klein import Klein
from werkzeug.exceptions import MethodNotAllowed, NotFound

from aicn.api import dashboard
from aicn.api.errors import HTTPError, error_body_v023, http_status, http_status_v023
from aicn.api.imageedit import parse_image_edit
from aicn.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, NodeMetrics
from aicn.api.openai import OpenAIAPI
from aicn.api.shape import (
    SHAPES,
    V012,
    V023,
    ShapeResource,
    chat_v012,
    chat_v023,
    image_v023,
    project_peer_v023,
    projects_peers_v023,
    shape_of,
)
from aicn.api.streaming import NODE_HEADER, ClientWatch, send_stream
from aicn.config import MAX_REQUEST_TIMEOUT, gojson
from aicn.config.schema import DEFAULT_IMAGE_EDIT_MAX_BODY_BYTES
from aicn.errors import AICNError, ErrorCode, parameter_error, unsupported
from aicn.log import Logger
from aicn.node.modelstream import Answer, ModelStream
from aicn.node.status import NodeStatus

log = Logger()

#: Default cap on request bodies.
DEFAULT_MAX_BODY = 1024 * 1024
#: Default cap on image/edit bodies (``API.ImageEditMaxBodyBytes``).
DEFAULT_IMAGE_EDIT_MAX_BODY = DEFAULT_IMAGE_EDIT_MAX_BODY_BYTES
#: Entries of the ``ai/projects/*`` listings without a ``number`` (Go: 100; at most 100 here).
LIST_DEFAULT = 100
#: Go v0.2.3's default ``number`` of ``ai/projects/peers``.
PEERS_DEFAULT_V023 = 20

#: Go's ``int`` on 64-bit platforms, the range of integer fields by default.
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
#: ``n`` of an image request travels as a protobuf int32.
INT32_MAX = (1 << 31) - 1

ANY_METHOD = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]


class JSONBody:
    """A decoded JSON object whose fields are read as Go's ``encoding/json`` reads them.

    The key rule is :mod:`aicn.config.gojson`'s, the same as for the config
    file: exact or case-folded match, the last matching key in document order
    wins, ``null`` counts as absent.
    """

    def __init__(self, obj: dict) -> None:
        self._obj = obj

    def get(self, name: str, default=None):
        """The value of field ``name``, or ``default`` when no key gives one."""
        value = gojson.lookup(self._obj, name)[1]
        return default if value is gojson.MISSING else value

    def string(self, name: str, required: bool = True) -> str:
        """A string field; empty or missing is a 1001 ``empty <name>`` when required."""
        value = self.get(name)
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise parameter_error(f"{name} must be a string")
        if required and not value:
            raise parameter_error(f"empty {name}")
        return value

    def integer(self, name: str, default: int = 0, *, lo: int = INT64_MIN, hi: int = INT64_MAX) -> int:
        """An integer field (JSON numbers without a fraction) in ``[lo, hi]`` (default: Go's int64)."""
        value = self.get(name, default)
        # is_integer() is False for inf and NaN, which int() cannot convert.
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or (isinstance(value, float) and not value.is_integer())):
            raise parameter_error(f"{name} must be an integer")
        value = int(value)
        if not lo <= value <= hi:
            raise parameter_error(f"{name} must be an integer from {lo} to {hi}")
        return value

    def boolean(self, name: str, default: bool = False) -> bool:
        """A boolean field."""
        value = self.get(name, default)
        if not isinstance(value, bool):
            raise parameter_error(f"{name} must be true or false")
        return value

    def seconds(self, name: str, maximum: float) -> float | None:
        """An optional number of seconds in ``(0, maximum]``; missing or null gives None."""
        value = self.get(name)
        if value is None:
            return None
        # A huge JSON integer (10**400) is an int that math.isfinite cannot convert: compare first.
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= maximum
                or not math.isfinite(value)):
            raise parameter_error(f"{name} must be a number of seconds above 0 and at most {maximum:g}")
        return float(value)

    def array(self, name: str, required: bool = True) -> list:
        """A list field; empty or missing is a 1001 when required."""
        value = self.get(name)
        if value is None:
            value = []
        if not isinstance(value, list):
            raise parameter_error(f"{name} must be an array")
        if required and not value:
            raise parameter_error(f"empty {name}")
        return value

    @property
    def raw(self) -> dict:
        """The decoded object as it came."""
        return self._obj


class NodeAPI:
    """The Klein application over a node backend.

    ``backend`` is an :class:`aicn.node.backend.NodeBackend`; features that are
    not there yet raise 1010 from the backend, never invented data.
    ``envelope`` is the default response shape (:mod:`aicn.api.shape`);
    ``image_edit_max_body`` the body cap of the image/edit endpoints.
    ``status`` (a :class:`~aicn.node.status.NodeStatus`) feeds the metrics,
    the readiness check and the dashboard; without it they answer 1010,
    and ``/metrics`` has the process metrics only.
    """

    app = Klein()

    def __init__(self, backend, *, token: str | None = None, max_body: int = DEFAULT_MAX_BODY,
                 allowed_origins: frozenset[str] = frozenset(), clock=None, envelope: str = V012,
                 image_edit_max_body: int = DEFAULT_IMAGE_EDIT_MAX_BODY,
                 status: NodeStatus | None = None) -> None:
        if envelope not in SHAPES:
            raise ValueError(f"envelope must be one of {', '.join(SHAPES)}, not {envelope!r}")
        self.backend = backend
        self.token = token or None
        self.max_body = max_body
        self.image_edit_max_body = image_edit_max_body
        self.envelope = envelope
        self.allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        if clock is None:
            clock = getattr(backend, "reactor", None)
        if clock is None:
            from twisted.internet import reactor as clock
        #: The OpenAI-compatible API, served under ``/v1/``.
        self.openai = OpenAIAPI(backend, token=self.token, read_body=self._read_body, clock=clock)
        self._openai_resource = self.openai.resource()
        self.status = status
        #: This node's Prometheus registry (never the process-global one).
        self.metrics = NodeMetrics(status)

    def resource(self):
        """The ``IResource`` to serve."""
        return ShapeResource(self.app.resource(), self.envelope)

    def _v023(self, request) -> bool:
        """Whether ``request`` is answered in Go v0.2.3's shape."""
        return shape_of(request, self.envelope) == V023

    # -- rendering ------------------------------------------------------------------

    @staticmethod
    def _json(request, status: int, payload: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(payload, ensure_ascii=False).encode("utf-8")

    @staticmethod
    def _text(request, status: int, text: bytes) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return text

    @app.handle_errors(AICNError)
    def _render_error(self, request, failure):
        err: AICNError = failure.value
        log.info(
            "API {method} {path}: {code} {message}",
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("ascii", "replace"),
            code=int(err.code),
            message=err.message,
        )
        if self._v023(request):
            status, body = http_status_v023(err), error_body_v023(err)
        else:
            status, body = http_status(err), err.to_json()
        if status == 401:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="aicn"')
        return self._json(request, status, body)

    @app.handle_errors(MethodNotAllowed)
    def _method_not_allowed(self, request, failure):
        allowed = getattr(failure.value, "valid_methods", None) or []
        if allowed:
            request.setHeader(b"Allow", ", ".join(allowed).encode("ascii"))
        if self._v023(request):
            return self._text(request, 405, b"405 method not allowed")  # gin's
        return self._text(request, 405, b"Method is not supported.")

    @app.handle_errors(NotFound)
    def _not_found(self, request, failure):
        if self._v023(request):
            return self._text(request, 404, b"404 page not found")  # gin's
        path = request.path.decode("utf-8", "replace")
        error = AICNError(ErrorCode.UNSUPPORTED, f"no such endpoint: {path}")
        return self._json(request, 404, error.to_json())

    @app.handle_errors(Exception)
    def _internal(self, request, failure):
        log.failure("Unhandled error serving {path}", failure=failure,
                    path=request.path.decode("utf-8", "replace"))
        err = AICNError(ErrorCode.INTERNAL)
        if self._v023(request):
            return self._json(request, 500, error_body_v023(err))
        return self._json(request, 500, err.to_json())

    # -- request helpers ------------------------------------------------------------

    def _read_body(self, request, limit: int | None = None) -> bytes:
        limit = self.max_body if limit is None else limit
        length = request.getHeader(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise AICNError(ErrorCode.PARSING, "invalid Content-Length") from None
            if declared > limit:
                raise self._too_large(limit)
        content = request.content
        content.seek(0)
        data = content.read(limit + 1)
        if len(data) > limit:
            raise self._too_large(limit)
        return data

    @staticmethod
    def _too_large(limit: int) -> HTTPError:
        return HTTPError(ErrorCode.BUFFER, f"request body exceeds {limit} bytes", status=413)

    def json_body(self, request, *, optional: bool = False) -> JSONBody:
        """Decode the request body as a JSON object (1002 when it is not one)."""
        return decode_json_body(self._read_body(request), optional=optional)

    @staticmethod
    def query(request) -> dict[str, str]:
        """The query parameters, first value of each (gin's ``ShouldBindQuery`` reads the first too)."""
        _, _, raw = request.uri.partition(b"?")
        out: dict[str, str] = {}
        for name, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True, encoding="utf-8",
                                     errors="replace"):
            out.setdefault(name, value)
        return out

    def fields(self, request) -> "QueryOrBody":
        """Fields read from the JSON body (if any) and else from the query, for endpoints that v0.2.3
        made GET with query parameters and the spec POST with a body."""
        return QueryOrBody(self.json_body(request, optional=True), self.query(request))

    def check_mutation_allowed(self, request) -> None:
        """Guard endpoints that change the node: same-origin only, token if set."""
        origin = request.getHeader(b"origin")
        if origin is not None:
            origin = origin.decode("latin-1").strip().rstrip("/").lower()
            if origin not in self._own_origins(request):
                raise HTTPError(ErrorCode.PERMISSION, f"Permission error: origin {origin} is not allowed",
                                status=403)
        if self.token is not None:
            header = (request.getHeader(b"authorization") or b"").decode("latin-1")
            scheme, _, supplied = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(supplied.strip().encode(),
                                                                     self.token.encode()):
                raise HTTPError(ErrorCode.PERMISSION, "Permission error: missing or wrong bearer token",
                                status=401)

    def _own_origins(self, request) -> frozenset[str]:
        host = request.getHost()
        port = getattr(host, "port", None)
        names = {"127.0.0.1", "localhost", "[::1]"}
        bound = getattr(host, "host", None)
        if bound and bound not in ("0.0.0.0", "::"):
            names.add(f"[{bound}]" if ":" in bound else bound)
        own = {f"{scheme}://{name}:{port}" for name in names for scheme in ("http", "https")}
        return frozenset(own) | self.allowed_origins

    # -- the OpenAI-compatible API (aicn/api/openai.py) ---------------------------------

    @app.route("/v1/", branch=True, methods=ANY_METHOD)
    def openai_v1(self, request):
        return self._openai_resource

    # -- routes: common queries -----------------------------------------------------

    @app.route("/api/v0/id", methods=["GET"])
    def id(self, request):
        return self._json(request, 200, self.backend.identify_info())

    @app.route("/api/v0/peers", methods=["GET"])
    async def peers(self, request):
        return self._ok(request, await self.backend.collected_peers())

    @app.route("/api/v0/peer", methods=["POST"])
    async def peer(self, request):
        data = await self.backend.peer_info(*parse_node_request(self.json_body(request)))
        return self._ok(request, data, flat=data)

    @app.route("/api/v0/host/info", methods=["POST"])
    async def host_info(self, request):
        data = await self.backend.host_info(*parse_node_request(self.json_body(request)))
        return self._ok(request, data, flat=data)

    @app.route("/api/v0/rendezvous/peers", methods=["GET"])
    async def rendezvous_peers(self, request):
        return self._ok(request, await self.backend.rendezvous_peers())

    # -- routes: models ---------------------------------------------------------------

    @app.route("/api/v0/chat/completion", methods=["POST"])
    async def chat_completion(self, request):
        client = ClientWatch(request)
        params = parse_chat_request(self.json_body(request), need_node=True)
        params["host_header"] = request.getHeader(b"host")
        return self._result(request, await self.backend.chat_completion(params), client, flatten=chat_v023,
                            spec=chat_v012)

    @app.route("/api/v0/chat/completion/proxy", methods=ANY_METHOD)
    async def chat_completion_proxy(self, request):
        client = ClientWatch(request)
        params = parse_chat_request(self.json_body(request), need_node=False)
        params["host_header"] = request.getHeader(b"host")
        return self._result(request, await self.backend.chat_completion_proxy(params), client,
                            flatten=chat_v023, spec=chat_v012)

    @app.route("/api/v0/image/gen", methods=["POST"])
    async def image_gen(self, request):
        params = parse_image_request(self.json_body(request), need_node=True)
        return self._result(request, await self.backend.image_gen(params), flatten=image_v023)

    @app.route("/api/v0/image/gen/proxy", methods=ANY_METHOD)
    async def image_gen_proxy(self, request):
        params = parse_image_request(self.json_body(request), need_node=False)
        return self._result(request, await self.backend.image_gen_proxy(params), flatten=image_v023)

    @app.route("/api/v0/image/edit", methods=["POST"])
    async def image_edit(self, request):
        client = ClientWatch(request)
        params = self._image_edit_params(request, need_node=True)
        return self._result(request, await self.backend.image_edit(params), client, flatten=image_v023)

    @app.route("/api/v0/image/edit/proxy", methods=["POST"])
    async def image_edit_proxy(self, request):
        client = ClientWatch(request)
        params = self._image_edit_params(request, need_node=False)
        return self._result(request, await self.backend.image_edit_proxy(params), client, flatten=image_v023)

    def _image_edit_params(self, request, *, need_node: bool) -> dict:
        raw = self._read_body(request, self.image_edit_max_body)
        return parse_image_edit(request.getHeader(b"content-type"), raw, self.query(request),
                                need_node=need_node)

    # -- routes: AI projects ------------------------------------------------------------

    @app.route("/api/v0/ai/projects/list", methods=ANY_METHOD)
    async def projects_list(self, request):
        # The spec sends no body, v0.2.3 a query: a body that is no JSON object is ignored.
        try:
            body = self.json_body(request, optional=True)
        except AICNError:
            body = JSONBody({})
        limit = parse_number(QueryOrBody(body, self.query(request)), LIST_DEFAULT)
        return self._ok(request, (await self.backend.projects_list())[:limit])

    @app.route("/api/v0/ai/projects/models", methods=ANY_METHOD)
    async def projects_models(self, request):
        fields = self.fields(request)
        project = fields.string("project")
        limit = parse_number(fields, LIST_DEFAULT)
        return self._ok(request, (await self.backend.projects_models(project))[:limit])

    @app.route("/api/v0/ai/projects/peers", methods=ANY_METHOD)
    async def projects_peers(self, request):
        fields = self.fields(request)
        project = fields.string("project")
        model = fields.string("model", required=False)
        if not self._v023(request):
            limit = parse_number(fields, LIST_DEFAULT)
            return self._ok(request, (await self.backend.projects_peers(project, model))[:limit])
        # v0.2.3: 20 by default, 100 at most; each node with its connection state.
        limit = min(parse_number(fields, PEERS_DEFAULT_V023), LIST_DEFAULT)
        peers = await self.backend.projects_peers_detail(project, model)
        return self._ok(request, projects_peers_v023(peers[:limit]))

    @app.route("/api/v0/ai/project/register", methods=["POST"])
    async def project_register(self, request):
        self.check_mutation_allowed(request)
        body = self.json_body(request)
        project, models = parse_registration(body)
        await self.backend.register_project(project, models)
        return self._ok(request)

    @app.route("/api/v0/ai/project/unregister", methods=["POST"])
    async def project_unregister(self, request):
        self.check_mutation_allowed(request)
        project = self.json_body(request).string("project")
        message = await self.backend.unregister_project(project)
        return self._ok(request, message=message or "ok")

    @app.route("/api/v0/ai/project/peer", methods=["POST"])
    async def project_peer(self, request):
        node_id, timeout = parse_node_request(self.json_body(request))
        if self._v023(request):
            projects = await self.backend.project_peer_detail(node_id, timeout)
            return self._ok(request, project_peer_v023(projects))
        return self._ok(request, await self.backend.project_peer(node_id, timeout))

    @app.route("/api/v0/ai/model/register", methods=["POST"])
    async def model_register(self, request):
        self.check_mutation_allowed(request)
        project, model = parse_model_registration(self.json_body(request))
        await self.backend.register_model(project, model)
        return self._ok(request)

    @app.route("/api/v0/ai/model/unregister", methods=["POST"])
    async def model_unregister(self, request):
        self.check_mutation_allowed(request)
        body = self.json_body(request)
        project, model, cid = body.string("project"), body.string("model"), body.string("cid", required=False)
        message = await self.backend.unregister_model(project, model, cid)
        return self._ok(request, message=message or "ok")

    # -- routes: swarm --------------------------------------------------------------------

    @app.route("/api/v0/swarm/peers", methods=["GET", "POST"])
    async def swarm_peers(self, request):
        return self._json(request, 200, await self.backend.swarm_peers())

    @app.route("/api/v0/swarm/addrs", methods=["GET", "POST"])
    async def swarm_addrs(self, request):
        return self._json(request, 200, await self.backend.swarm_addrs())

    @app.route("/api/v0/swarm/connect", methods=["POST"])
    async def swarm_connect(self, request):
        self.check_mutation_allowed(request)
        addr = self.json_body(request).string("node_addr")
        await self.backend.swarm_connect(addr)
        return self._ok(request)

    @app.route("/api/v0/swarm/disconnect", methods=["POST"])
    async def swarm_disconnect(self, request):
        self.check_mutation_allowed(request)
        addr = self.json_body(request).string("node_addr")
        await self.backend.swarm_disconnect(addr)
        return self._ok(request)

    @app.route("/api/v0/pubsub/peers", methods=["GET", "POST"])
    async def pubsub_peers(self, request):
        return self._json(request, 200, await self.backend.pubsub_peers())

    # -- routes: bootstrap peers (Go v0.2.3) -------------------------------------------------

    @app.route("/api/v0/bootstrap/list", methods=["GET"])
    async def bootstrap_list(self, request):
        return self._ok(request, await self.backend.bootstrap_list())

    @app.route("/api/v0/bootstrap/add", methods=["POST"])
    async def bootstrap_add(self, request):
        self.check_mutation_allowed(request)
        await self.backend.bootstrap_add(self.json_body(request).string("node_addr"))
        return self._ok(request)

    @app.route("/api/v0/bootstrap/rm", methods=["POST"])
    async def bootstrap_rm(self, request):
        self.check_mutation_allowed(request)
        await self.backend.bootstrap_remove(self.json_body(request).string("node_addr"))
        return self._ok(request)

    # -- routes: observability (no token: read-only GETs) -------------------------------------

    @app.route("/health/liveliness", methods=["GET"])
    @app.route("/health/liveness", methods=["GET"])
    def liveliness(self, request):
        return self._json(request, 200, {"status": "ok"})

    @app.route("/health/readiness", methods=["GET"])
    def readiness(self, request):
        status = self._need_status()
        ready, checks = status.readiness()
        request.setHeader(b"Cache-Control", b"no-store")
        return self._json(request, 200 if ready else 503, {"status": "ready" if ready else "not ready",
                                                           "checks": [c.to_json() for c in checks]})

    @app.route("/metrics", methods=["GET"])
    @app.route("/api/v0/debug/metrics/prometheus", methods=["GET"])
    def prometheus_metrics(self, request):
        request.setHeader(b"Content-Type", METRICS_CONTENT_TYPE.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        return self.metrics.exposition()

    @app.route("/api/v0/debug/state", methods=["GET"])
    def debug_state(self, request):
        state = self._need_status().state()
        request.setHeader(b"Cache-Control", b"no-store")
        return self._json(request, 200, state)

    @app.route("/", methods=["GET"])
    def dashboard_page(self, request):
        return self._static(request, "index.html")

    @app.route("/dashboard/<string:name>", methods=["GET"])
    def dashboard_file(self, request, name):
        if name not in dashboard.FILES:
            raise NotFound()
        return self._static(request, name)

    @app.route("/favicon.ico", methods=["GET"])
    def favicon(self, request):
        return self._static(request, "favicon.svg")

    def _need_status(self) -> NodeStatus:
        if self.status is None:
            raise unsupported()
        return self.status

    @staticmethod
    def _static(request, name: str) -> bytes:
        request.setHeader(b"Content-Type", dashboard.FILES[name].encode("ascii"))
        request.setHeader(b"Content-Security-Policy", dashboard.CSP.encode("ascii"))
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        request.setHeader(b"Cache-Control", b"no-cache")
        return dashboard.read(name)

    # -- results ----------------------------------------------------------------------------

    def _result(self, request, result, client: ClientWatch | None = None, *, flatten=None, spec=None):
        """A backend's result as the response: ``data`` in the envelope (cut to the spec's fields
        by ``spec`` in its shape, flattened by ``flatten`` in v0.2.3's), an :class:`Answer` also
        naming its node, or a :class:`ModelStream`."""
        if isinstance(result, ModelStream):
            return send_stream(request, result, client or ClientWatch(request))
        if isinstance(result, Answer):
            if result.node_id:
                request.setHeader(NODE_HEADER, result.node_id.encode("ascii"))
            result = result.data
        flat = flatten(result) if flatten is not None and isinstance(result, dict) else None
        if spec is not None and isinstance(result, dict) and not self._v023(request):
            result = spec(result)
        return self._ok(request, result, flat=flat)

    def _ok(self, request, data: Any = None, message: str = "ok", *, flat: dict | None = None) -> bytes:
        """Success.  The spec's shape: ``{code: 0, message[, data]}``.  v0.2.3's, as Go's
        ``omitempty`` fields write it: ``flat`` itself, else ``{"data": data}``, else
        ``{"message": message}``."""
        if self._v023(request):
            if flat is not None:
                body = flat
            elif data is not None:
                body = {"data": data}
            else:
                body = {"message": message}
            return self._json(request, 200, body)
        body = {"code": 0, "message": message}
        if data is not None:
            body["data"] = data
        return self._json(request, 200, body)


class QueryOrBody(JSONBody):
    """Fields of a JSON body, falling back to the query parameters (strings) for those it lacks."""

    def __init__(self, body: JSONBody, query: dict[str, str]) -> None:
        super().__init__(body.raw)
        self._query = query

    def get(self, name: str, default=None):
        value = super().get(name)
        if value is None:
            value = self._query.get(name)
        return default if value is None else value


# -- request parsing shared by direct and proxy endpoints ------------------------------------


def decode_json_body(raw: bytes, *, optional: bool = False) -> JSONBody:
    """A request body as a :class:`JSONBody`; any bytes that are not a JSON object are a 1002.

    ``optional``: an empty (or blank) body is an empty object.
    """
    if optional and not raw.strip():
        return JSONBody({})
    try:
        obj = gojson.loads(raw)
    except ValueError as exc:  # not JSON, not UTF-8, or nested too deeply ("[[[[…")
        raise AICNError(ErrorCode.PARSING, f"Parsing error: {exc}") from None
    if not isinstance(obj, dict):
        raise AICNError(ErrorCode.PARSING, "Parsing error: body must be a JSON object")
    return JSONBody(obj)


def parse_timeout(body: JSONBody) -> float | None:
    """The optional ``timeout`` of a request to another node: seconds in
    ``(0, MAX_REQUEST_TIMEOUT]``, or None for the node's default."""
    return body.seconds("timeout", MAX_REQUEST_TIMEOUT)


def parse_node_request(body: JSONBody) -> tuple[str, float | None]:
    """``(node_id, timeout)`` of ``/peer``, ``/host/info`` and ``/ai/project/peer``."""
    return body.string("node_id"), parse_timeout(body)


def parse_number(fields: JSONBody, default: int) -> int:
    """``number`` of the ``ai/projects/*`` listings (Go v0.2.3): absent or 0 gives ``default``; not an
    integer is 1002 (gin's bind error), below 0 is 1001 ``invalid number``."""
    value = fields.get("number")
    if value is None or value == "":
        return default
    if isinstance(value, str):
        try:
            value = int(value, 10)
        except ValueError:
            raise AICNError(ErrorCode.PARSING, "Parsing error: number must be an integer") from None
    elif (isinstance(value, bool) or not isinstance(value, (int, float))
          or (isinstance(value, float) and not value.is_integer())):  # (False for inf and NaN too)
        raise AICNError(ErrorCode.PARSING, "Parsing error: number must be an integer")
    if value < 0:
        raise parameter_error("invalid number")
    return int(value) or default


#: Optional text fields of Go v0.2.3's model requests (wallet verification, container id).
V023_TEXT_FIELDS = ("cid", "wallet", "signature", "hash")
#: Go v0.2.3's content part types → the object each needs (``text`` needs none).
CONTENT_PART_TYPES = {"text": None, "image_url": "image_url", "input_audio": "input_audio"}


def parse_content(value: Any, where: str) -> str | list:
    """A message's ``content``: a string, or (Go v0.2.3) an array of content parts
    ``{type: text|image_url|input_audio, ...}``, validated as Go does."""
    if value is None or isinstance(value, str):
        return value or ""
    if not isinstance(value, list):
        raise parameter_error(f"{where} must be a string or an array of content parts")
    for i, part in enumerate(value):
        if not isinstance(part, dict):
            raise parameter_error(f"{where}[{i}] must be an object")
        entry = JSONBody(part)
        kind = entry.get("type")
        if kind not in CONTENT_PART_TYPES:
            raise parameter_error(f"{where}[{i}].type must be text, image_url or input_audio")
        needed = CONTENT_PART_TYPES[kind]
        if needed is not None and not isinstance(entry.get(needed), dict):
            raise parameter_error(f"{where}[{i}].{needed} must be an object")
    return value


def _finite(value: int | float) -> bool:
    """Whether a JSON number is a finite float (an int of 400 digits is not: math.isfinite raises)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def parse_chat_request(body: JSONBody, *, need_node: bool) -> dict:
    """Validate a chat completion request into a plain dict.

    Go v0.2.3's additions are read too: ``cid``, ``wallet``, ``signature``,
    ``hash``, ``temperature``, ``top_p`` (under ``options``), content parts.
    """
    params = {
        "node_id": body.string("node_id") if need_node else "",
        "project": body.string("project"),
        "model": body.string("model"),
        "stream": body.boolean("stream"),
        "timeout": parse_timeout(body),
    }
    for name in V023_TEXT_FIELDS:
        params[name] = body.string(name, required=False)
    options = {}
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            raise parameter_error(f"{name} must be a number")
        options[name] = value
    params["options"] = options
    messages = []
    for i, item in enumerate(body.array("messages")):
        if not isinstance(item, dict):
            raise parameter_error(f"messages[{i}] must be an object")
        entry = JSONBody(item)
        messages.append({"role": entry.string("role"),
                         "content": parse_content(entry.get("content"), f"messages[{i}].content")})
    params["messages"] = messages
    return params


def parse_image_request(body: JSONBody, *, need_node: bool) -> dict:
    """Validate an image generation request into a plain dict."""
    params = {
        "node_id": body.string("node_id") if need_node else "",
        "project": body.string("project"),
        "model": body.string("model"),
        "prompt": body.string("prompt"),
        "n": body.integer("n", 1, hi=INT32_MAX),
        "size": body.string("size", required=False),
        "ipfs_node": body.string("ipfs_node", required=False),
        "timeout": parse_timeout(body),
        # Go v0.2.3's additions.
        "width": body.integer("width", 0),
        "height": body.integer("height", 0),
        "step": body.integer("step", 0),
        "response_format": body.string("response_format", required=False),
    }
    for name in V023_TEXT_FIELDS:
        params[name] = body.string(name, required=False)
    if params["n"] < 1:
        raise parameter_error("n must be at least 1")
    for name in ("width", "height", "step"):
        if params[name] < 0:
            raise parameter_error(f"{name} must not be negative")
    if params["response_format"] not in ("", "url", "b64_json"):
        raise parameter_error("response_format must be url or b64_json")
    return params


MODEL_TYPES = (0, 1, 2)


def parse_model(entry: JSONBody, where: str) -> dict:
    """One model of a registration: ``{model, api, type[, cid]}`` (``cid``, Go v0.2.3's container
    id, when one is given)."""
    model = entry.string("model")
    api = entry.string("api")
    try:
        parts = urlsplit(api)
        hostname = parts.hostname  # parses the netloc: may raise too ("http://[x")
    except ValueError:
        hostname = None
    if not hostname or parts.scheme not in ("http", "https"):
        raise parameter_error(f"{where}api must be an http(s) URL")
    kind = entry.integer("type", 0)
    if kind not in MODEL_TYPES:
        raise parameter_error(f"{where}type must be 0, 1 or 2")
    out = {"model": model, "api": api, "type": kind}
    cid = entry.string("cid", required=False)
    if cid:
        out["cid"] = cid
    return out


def parse_registration(body: JSONBody) -> tuple[str, list[dict]]:
    """Validate an AI project registration: ``(project, [{model, api, type[, cid]}])``."""
    project = body.string("project")
    models = []
    for i, item in enumerate(body.array("models")):
        if not isinstance(item, dict):
            raise parameter_error(f"models[{i}] must be an object")
        models.append(parse_model(JSONBody(item), f"models[{i}]."))
    return project, models


def parse_model_registration(body: JSONBody) -> tuple[str, dict]:
    """Validate Go v0.2.3's one-model registration ``{project, model, api, type, cid}``."""
    return body.string("project"), parse_model(body, "")
