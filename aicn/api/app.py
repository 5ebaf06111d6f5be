"""The node's HTTP API (Klein), per the spec ``aicn-http-api.md``.

Routes stay thin: they check the method, parse and validate the JSON body,
call the node backend and render the result.  Every failure is an
:class:`~aicn.errors.AICNError`, rendered once by :meth:`NodeAPI._render_error`
into the spec's ``{code, message[, data]}`` envelope.

HTTP conventions (from the Go node, v0.1.2):

* wrong method: HTTP 405, text body ``Method is not supported.``;
* otherwise HTTP 200 with the error in the JSON ``code``, except for errors
  about HTTP itself: body too large (413), missing token (401), foreign
  ``Origin`` (403) and unknown path (404);
* JSON keys reach fields as Go's ``encoding/json`` makes them
  (:mod:`aicn.config.gojson`).

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
from urllib.parse import urlsplit

from klein import Klein
from werkzeug.exceptions import MethodNotAllowed, NotFound

from aicn.api import dashboard
from aicn.api.errors import HTTPError, http_status
from aicn.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, NodeMetrics
from aicn.api.streaming import NODE_HEADER, ClientWatch, send_stream
from aicn.config import MAX_REQUEST_TIMEOUT, gojson
from aicn.errors import AICNError, ErrorCode, parameter_error, unsupported
from aicn.log import Logger
from aicn.node.modelstream import Answer, ModelStream
from aicn.node.status import NodeStatus

log = Logger()

#: Default cap on request bodies.
DEFAULT_MAX_BODY = 1024 * 1024

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

    def integer(self, name: str, default: int = 0) -> int:
        """An integer field (JSON numbers without a fraction)."""
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise parameter_error(f"{name} must be an integer")
        return int(value)

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
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or not 0 < value <= maximum):
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
    ``status`` (a :class:`~aicn.node.status.NodeStatus`) feeds the metrics,
    the readiness check and the dashboard; without it they answer 1010,
    and ``/metrics`` has the process metrics only.
    """

    app = Klein()

    def __init__(self, backend, *, token: str | None = None, max_body: int = DEFAULT_MAX_BODY,
                 allowed_origins: frozenset[str] = frozenset(), status: NodeStatus | None = None) -> None:
        self.backend = backend
        self.token = token or None
        self.max_body = max_body
        self.allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        self.status = status
        #: This node's Prometheus registry (never the process-global one).
        self.metrics = NodeMetrics(status)

    def resource(self):
        """The ``IResource`` to serve."""
        return self.app.resource()

    # -- rendering ------------------------------------------------------------------

    @staticmethod
    def _json(request, status: int, payload: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(payload, ensure_ascii=False).encode("utf-8")

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
        status = http_status(err)
        if status == 401:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="aicn"')
        return self._json(request, status, err.to_json())

    @app.handle_errors(MethodNotAllowed)
    def _method_not_allowed(self, request, failure):
        request.setResponseCode(405)
        allowed = getattr(failure.value, "valid_methods", None) or []
        if allowed:
            request.setHeader(b"Allow", ", ".join(allowed).encode("ascii"))
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"Method is not supported."

    @app.handle_errors(NotFound)
    def _not_found(self, request, failure):
        path = request.path.decode("utf-8", "replace")
        return self._json(request, 404, AICNError(ErrorCode.UNSUPPORTED, f"no such endpoint: {path}").to_json())

    @app.handle_errors(Exception)
    def _internal(self, request, failure):
        log.failure("Unhandled error serving {path}", failure=failure,
                    path=request.path.decode("utf-8", "replace"))
        return self._json(request, 500, AICNError(ErrorCode.INTERNAL).to_json())

    # -- request helpers ------------------------------------------------------------

    def _read_body(self, request) -> bytes:
        length = request.getHeader(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise AICNError(ErrorCode.PARSING, "invalid Content-Length") from None
            if declared > self.max_body:
                raise self._too_large()
        content = request.content
        content.seek(0)
        data = content.read(self.max_body + 1)
        if len(data) > self.max_body:
            raise self._too_large()
        return data

    def _too_large(self) -> HTTPError:
        return HTTPError(ErrorCode.BUFFER, f"request body exceeds {self.max_body} bytes", status=413)

    def json_body(self, request, *, optional: bool = False) -> JSONBody:
        """Decode the request body as a JSON object (1002 when it is not one)."""
        raw = self._read_body(request)
        if optional and not raw.strip():
            return JSONBody({})
        try:
            obj = gojson.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise AICNError(ErrorCode.PARSING, f"Parsing error: {exc}") from None
        if not isinstance(obj, dict):
            raise AICNError(ErrorCode.PARSING, "Parsing error: body must be a JSON object")
        return JSONBody(obj)

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

    # -- routes: common queries -----------------------------------------------------

    @app.route("/api/v0/id", methods=["GET"])
    def id(self, request):
        return self._json(request, 200, self.backend.identify_info())

    @app.route("/api/v0/peers", methods=["GET"])
    async def peers(self, request):
        return self._ok(request, await self.backend.collected_peers())

    @app.route("/api/v0/peer", methods=["POST"])
    async def peer(self, request):
        return self._ok(request, await self.backend.peer_info(*parse_node_request(self.json_body(request))))

    @app.route("/api/v0/host/info", methods=["POST"])
    async def host_info(self, request):
        return self._ok(request, await self.backend.host_info(*parse_node_request(self.json_body(request))))

    @app.route("/api/v0/rendezvous/peers", methods=["GET"])
    async def rendezvous_peers(self, request):
        return self._ok(request, await self.backend.rendezvous_peers())

    # -- routes: models ---------------------------------------------------------------

    @app.route("/api/v0/chat/completion", methods=["POST"])
    async def chat_completion(self, request):
        client = ClientWatch(request)
        params = parse_chat_request(self.json_body(request), need_node=True)
        params["host_header"] = request.getHeader(b"host")
        return self._result(request, await self.backend.chat_completion(params), client)

    @app.route("/api/v0/chat/completion/proxy", methods=ANY_METHOD)
    async def chat_completion_proxy(self, request):
        client = ClientWatch(request)
        params = parse_chat_request(self.json_body(request), need_node=False)
        params["host_header"] = request.getHeader(b"host")
        return self._result(request, await self.backend.chat_completion_proxy(params), client)

    @app.route("/api/v0/image/gen", methods=["POST"])
    async def image_gen(self, request):
        params = parse_image_request(self.json_body(request), need_node=True)
        return self._ok(request, await self.backend.image_gen(params))

    @app.route("/api/v0/image/gen/proxy", methods=ANY_METHOD)
    async def image_gen_proxy(self, request):
        params = parse_image_request(self.json_body(request), need_node=False)
        return self._result(request, await self.backend.image_gen_proxy(params))

    # -- routes: AI projects ------------------------------------------------------------

    @app.route("/api/v0/ai/projects/list", methods=ANY_METHOD)
    async def projects_list(self, request):
        return self._ok(request, await self.backend.projects_list())

    @app.route("/api/v0/ai/projects/models", methods=ANY_METHOD)
    async def projects_models(self, request):
        project = self.json_body(request).string("project")
        return self._ok(request, await self.backend.projects_models(project))

    @app.route("/api/v0/ai/projects/peers", methods=ANY_METHOD)
    async def projects_peers(self, request):
        body = self.json_body(request)
        project = body.string("project")
        model = body.string("model", required=False)
        return self._ok(request, await self.backend.projects_peers(project, model))

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
        return self._ok(request, await self.backend.project_peer(*parse_node_request(self.json_body(request))))

    # -- routes: swarm --------------------------------------------------------------------

    @app.route("/api/v0/swarm/peers", methods=["POST"])
    async def swarm_peers(self, request):
        return self._json(request, 200, await self.backend.swarm_peers())

    @app.route("/api/v0/swarm/addrs", methods=["POST"])
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

    @app.route("/api/v0/pubsub/peers", methods=["POST"])
    async def pubsub_peers(self, request):
        return self._json(request, 200, await self.backend.pubsub_peers())

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

    def _result(self, request, result, client: ClientWatch | None = None):
        """A backend's result as the response: ``data`` in the envelope, an
        :class:`Answer` also naming its node, or a :class:`ModelStream`."""
        if isinstance(result, ModelStream):
            return send_stream(request, result, client or ClientWatch(request))
        if isinstance(result, Answer):
            if result.node_id:
                request.setHeader(NODE_HEADER, result.node_id.encode("ascii"))
            result = result.data
        return self._ok(request, result)

    def _ok(self, request, data: Any = None, message: str = "ok") -> bytes:
        body = {"code": 0, "message": message}
        if data is not None:
            body["data"] = data
        return self._json(request, 200, body)


# -- request parsing shared by direct and proxy endpoints ------------------------------------


def parse_timeout(body: JSONBody) -> float | None:
    """The optional ``timeout`` of a request to another node: seconds in
    ``(0, MAX_REQUEST_TIMEOUT]``, or None for the node's default."""
    return body.seconds("timeout", MAX_REQUEST_TIMEOUT)


def parse_node_request(body: JSONBody) -> tuple[str, float | None]:
    """``(node_id, timeout)`` of ``/peer``, ``/host/info`` and ``/ai/project/peer``."""
    return body.string("node_id"), parse_timeout(body)


def parse_chat_request(body: JSONBody, *, need_node: bool) -> dict:
    """Validate a chat completion request into a plain dict."""
    params = {
        "node_id": body.string("node_id") if need_node else "",
        "project": body.string("project"),
        "model": body.string("model"),
        "stream": body.boolean("stream"),
        "timeout": parse_timeout(body),
    }
    messages = []
    for i, item in enumerate(body.array("messages")):
        if not isinstance(item, dict):
            raise parameter_error(f"messages[{i}] must be an object")
        entry = JSONBody(item)
        messages.append({"role": entry.string("role"), "content": entry.string("content", required=False)})
    params["messages"] = messages
    return params


def parse_image_request(body: JSONBody, *, need_node: bool) -> dict:
    """Validate an image generation request into a plain dict."""
    params = {
        "node_id": body.string("node_id") if need_node else "",
        "project": body.string("project"),
        "model": body.string("model"),
        "prompt": body.string("prompt"),
        "n": body.integer("n", 1),
        "size": body.string("size", required=False),
        "ipfs_node": body.string("ipfs_node", required=False),
        "timeout": parse_timeout(body),
    }
    if params["n"] < 1:
        raise parameter_error("n must be at least 1")
    return params


MODEL_TYPES = (0, 1, 2)


def parse_registration(body: JSONBody) -> tuple[str, list[dict]]:
    """Validate an AI project registration: ``(project, [{model, api, type}])``."""
    project = body.string("project")
    models = []
    for i, item in enumerate(body.array("models")):
        if not isinstance(item, dict):
            raise parameter_error(f"models[{i}] must be an object")
        entry = JSONBody(item)
        model = entry.string("model")
        api = entry.string("api")
        parts = urlsplit(api)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise parameter_error(f"models[{i}].api must be an http(s) URL")
        kind = entry.integer("type", 0)
        if kind not in MODEL_TYPES:
            raise parameter_error(f"models[{i}].type must be 0, 1 or 2")
        models.append({"model": model, "api": api, "type": kind})
    return project, models
