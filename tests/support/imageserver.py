"""
A small text-to-image "model server" speaking DBC's image model contract.

No off-the-shelf offline server speaks it, so the tests run this one as a
separate process::

    python -m tests.support.imageserver --port 0 --out DIR

It prints ``LISTENING <port>`` once it accepts connections.

Contract (AIComputingNode docs/model_api.md, as the node uses it at v0.1.2):

``POST /v1/images/generations`` with JSON ``{project, model, prompt, n,
size}`` (``width``/``height``, ``response_format`` = ``url``|``b64_json``
from later versions are honoured too).  The server writes *n* real PNG files
into DIR and answers ``200 application/json``::

    {"code": 0, "message": "success", "created": <unix s>,
     "data": [{"url": "/abs/path/x.png"}, ...]}

``url`` is a local file path: the worker node reads the file and uploads it
to IPFS.  With ``response_format: "b64_json"`` each entry is
``{"b64_json": <base64 PNG>, "revised_prompt": <prompt>}`` instead.

Images are deterministic functions of (prompt, index, size), so tests can
predict their bytes (:func:`make_png`).  The size comes from ``"WxH"`` or
``width``/``height``, each clamped to 1..:data:`MAX_SIDE`.

Switches for error-path tests:

* query ``?fail=<status>``: answer HTTP <status> (e.g. 500) with
  ``{"code": <status>, "message": "forced failure"}`` and write nothing;
* prompt starting with ``"!error"``: HTTP 200 with ``{"code": 1,
  "message": "model error: <rest of prompt>"}`` and no ``data``;
* query ``?delay=<seconds>``: wait before answering (timeout tests);
* query ``?text=1``: answer ``200 text/plain`` (a non-JSON reply).

``GET /v1/models`` lists ``{"object": "list", "data": [{"id": <model>,
"object": "model", ...}]}`` and ``GET /requests`` returns the JSON bodies
received so far (to assert what the node sent).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import struct
import sys
import time
import zlib
from typing import Any

#: Largest image side; keeps files, and tests, small.
MAX_SIDE = 64
DEFAULT_SIDE = 16
MAX_N = 8
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def make_png(prompt: str, index: int, width: int, height: int) -> bytes:
    """
    A valid 8-bit RGB PNG, a deterministic function of the arguments:
    a gradient whose colours come from sha256(prompt, index).
    """
    seed = hashlib.sha256(f"{index}:{width}x{height}:{prompt}".encode()).digest()
    r0, g0, b0, dr, dg, db = seed[:6]
    rows = []
    for y in range(height):
        row = bytearray(b"\x00")  # filter type 0 (None) for every scanline
        for x in range(width):
            row += bytes(((r0 + x * dr // 8) & 255, (g0 + y * dg // 8) & 255, (b0 + (x + y) * db // 16) & 255))
        rows.append(bytes(row))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit truecolour
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
        + _chunk(b"IEND", b"")
    )


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR; ValueError if it is not a PNG."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return struct.unpack(">II", data[16:24])


def parse_size(body: dict[str, Any]) -> tuple[int, int]:
    """Width and height from ``width``/``height`` or ``size`` ("WxH")."""
    w = h = DEFAULT_SIDE
    size = body.get("size")
    if isinstance(size, str) and "x" in size:
        a, _, b = size.lower().partition("x")
        try:
            w, h = int(a), int(b)
        except ValueError:
            pass
    if isinstance(body.get("width"), int) and body["width"] > 0:
        w = body["width"]
    if isinstance(body.get("height"), int) and body["height"] > 0:
        h = body["height"]
    return max(1, min(MAX_SIDE, w)), max(1, min(MAX_SIDE, h))


def file_name(prompt: str, index: int, width: int, height: int) -> str:
    """The PNG's file name: stable for the same request, so reruns overwrite."""
    digest = hashlib.sha256(f"{index}:{width}x{height}:{prompt}".encode()).hexdigest()[:16]
    return f"{digest}-{index}.png"


def generate(body: dict[str, Any], out_dir: str) -> tuple[int, dict[str, Any]]:
    """
    Handle one generations request body; return (HTTP status, JSON reply).
    Pure apart from writing the PNG files.
    """
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        return 400, {"code": 400, "message": "prompt is required"}
    if prompt.startswith("!error"):
        return 200, {"code": 1, "message": "model error:" + prompt[len("!error"):]}
    n = body.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return 400, {"code": 400, "message": "n must be a positive integer"}
    n = min(n, MAX_N)
    width, height = parse_size(body)
    data = []
    for i in range(n):
        png = make_png(prompt, i, width, height)
        if body.get("response_format") == "b64_json":
            data.append({"b64_json": base64.b64encode(png).decode(), "revised_prompt": prompt})
            continue
        path = os.path.join(out_dir, file_name(prompt, i, width, height))
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(png)
        os.replace(tmp, path)
        data.append({"url": path})
    return 200, {"code": 0, "message": "success", "created": int(time.time()), "data": data}


def make_app(reactor: Any, out_dir: str, model: str = "tiny-image") -> Any:
    """The Klein app serving the contract above."""
    from klein import Klein
    from twisted.internet.task import deferLater

    app = Klein()
    received: list[Any] = []

    def _json(request: Any, status: int, obj: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(obj).encode()

    @app.route("/v1/models", methods=["GET"])
    def models(request: Any) -> bytes:
        return _json(request, 200, {
            "object": "list",
            "data": [{"id": model, "object": "model", "created": 0, "owned_by": "aicn-tests"}],
        })

    @app.route("/requests", methods=["GET"])
    def requests(request: Any) -> bytes:
        return _json(request, 200, received)

    @app.route("/v1/images/generations", methods=["POST"])
    async def generations(request: Any) -> bytes:
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        raw = request.content.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        received.append(body if body is not None else raw.decode("utf-8", "replace"))
        delay = float(args.get("delay", 0) or 0)
        if delay > 0:
            await deferLater(reactor, delay, lambda: None)
        if "fail" in args:
            status = int(args["fail"] or 500)
            return _json(request, status, {"code": status, "message": "forced failure"})
        if args.get("text"):
            request.setHeader(b"Content-Type", b"text/plain")
            return b"not json"
        if not isinstance(body, dict):
            return _json(request, 400, {"code": 400, "message": "body is not a JSON object"})
        status, reply = generate(body, out_dir)
        return _json(request, status, reply)

    return app


class ImageServer:
    """A running image server process (see :func:`start_image_server`)."""

    def __init__(self, reactor: Any, child: Any, port: int, out_dir: str) -> None:
        self._reactor = reactor
        self._child = child
        self.port = port
        self.out_dir = out_dir
        #: Base URL, ``http://127.0.0.1:<port>``.
        self.url = f"http://127.0.0.1:{port}"
        #: What a node registers as the model API.
        self.generations_url = self.url + "/v1/images/generations"

    async def requests(self) -> list[Any]:
        """The request bodies the server has received so far."""
        from ._proc import http_client

        resp = await http_client(self._reactor).get(self.url + "/requests")
        return json.loads(await resp.content())

    async def stop(self) -> None:
        """Stop the process (TERM, then KILL) and wait until it is reaped."""
        await self._child.stop(self._reactor)


async def start_image_server(reactor: Any, out_dir: str, model: str = "tiny-image",
                             timeout: float = 20.0) -> ImageServer:
    """
    Start ``python -m tests.support.imageserver`` on a free 127.0.0.1 port,
    writing PNGs into *out_dir*; return once it answers ``GET /v1/models``.
    """
    from ._proc import REPO_ROOT, ComponentError, spawn

    os.makedirs(out_dir, exist_ok=True)
    child = spawn(
        reactor, "imageserver",
        [sys.executable, "-m", "tests.support.imageserver", "--port", "0",
         "--out", os.path.abspath(out_dir), "--model", model],
        cwd=REPO_ROOT, env={"PYTHONPATH": REPO_ROOT},
    )
    try:
        timer = reactor.callLater(timeout, child.signal, "KILL")
        try:
            line = await child.wait_line(b"LISTENING ")
        finally:
            if timer.active():
                timer.cancel()
        port = int(line.split()[1])
    except BaseException as e:
        await child.stop(reactor)
        if isinstance(e, ComponentError):
            raise
        raise ComponentError(f"image server did not start: {e}\n{child.tail()}") from e
    return ImageServer(reactor, child, port, os.path.abspath(out_dir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--out", required=True, help="directory for the PNG files")
    parser.add_argument("--model", default="tiny-image")
    opts = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.web.server import Site

    out = os.path.abspath(opts.out)
    os.makedirs(out, exist_ok=True)
    site = Site(make_app(reactor, out, opts.model).resource())
    site.noisy = False
    port = reactor.listenTCP(opts.port, site, interface="127.0.0.1")
    print(f"LISTENING {port.getHost().port}", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
