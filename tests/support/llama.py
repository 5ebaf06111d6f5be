"""
Run a real OpenAI-compatible chat model server for tests: llama-cpp-python's
``llama_cpp.server`` with the tiny generated model (:mod:`.tinygguf`).

The server lives in its own virtualenv (``tests/support/install_llama.sh``;
``$AICN_MODELS_VENV``, default ``~/.cache/aicn/llama-venv``).  Tests skip with
:func:`llama_skip_reason` when it is not installed.

Reply shapes (llama-cpp-python 0.3.36, checked with this model):

* non-stream: ``200``, ``Content-Type: application/json`` exactly (the Go
  node compares it exactly), ``Content-Length`` set, body ``{"id":
  "chatcmpl-…", "object": "chat.completion", "created": <int>, "model":
  "tiny", "choices": [{"index": 0, "message": {"content": "…", "role":
  "assistant"}, "logprobs": null, "finish_reason": "length"|"stop"}],
  "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}``
  (no ``code``/``message``);
* ``"stream": true``: ``200``, ``Content-Type: text/event-stream;
  charset=utf-8``, ``Transfer-Encoding: chunked``, ``cache-control:
  no-store``; events ``data: {…}\\n\\n`` of ``object:
  "chat.completion.chunk"``: first ``delta: {"role": "assistant"}``, then
  ``delta: {"content": …}``, then ``delta: {}`` with ``finish_reason``;
  no usage; finally ``data: [DONE]\\n\\n``;
* a bad body: ``500`` ``application/json`` ``{"error": {"message", "type":
  "internal_server_error", …}}``;
* ``GET /v1/models``: ``{"object": "list", "data": [{"id": "tiny", "object":
  "model", "owned_by": "me", "permissions": []}]}``.

The tiny model emits printable English word pieces (e.g. ``" distant to
until…"``); with ``temperature: 0`` a prompt always gets the same reply.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from ._proc import REPO_ROOT, ChildProcess, ComponentError, free_port, http_client, spawn, wait_http

#: The name the server answers to (``"model"`` in requests is not checked).
MODEL_ALIAS = "tiny"


def models_venv() -> str:
    """The model-server virtualenv's directory."""
    return os.environ.get("AICN_MODELS_VENV") or os.path.expanduser("~/.cache/aicn/llama-venv")


def venv_python() -> str:
    """The model-server virtualenv's interpreter."""
    return os.path.join(models_venv(), "bin", "python")


_reason_cache: dict[str, str | None] = {}


def llama_skip_reason() -> str | None:
    """None if the llama server can run here, else why not (for ``skip``)."""
    py = venv_python()
    if py in _reason_cache:
        return _reason_cache[py]
    reason: str | None = None
    if not os.access(py, os.X_OK):
        reason = f"llama-cpp-python venv not installed ({py}); run tests/support/install_llama.sh"
    else:
        r = subprocess.run([py, "-c", "import llama_cpp.server, gguf, numpy"],
                           capture_output=True, text=True, timeout=60)
        if r.returncode:
            reason = f"llama-cpp-python venv {models_venv()} is broken: {r.stderr.strip()[-300:]}"
    _reason_cache[py] = reason
    return reason


def llama_available() -> bool:
    """Whether :func:`start_llama_server` can work here."""
    return llama_skip_reason() is None


def ensure_tiny_model(directory: str) -> str:
    """
    Write the tiny GGUF into *directory* (unless already there) and return
    its path.  Runs the generator in the model venv, which has ``gguf``.
    """
    path = os.path.join(directory, "tiny-llama.gguf")
    if not os.path.exists(path):
        os.makedirs(directory, exist_ok=True)
        r = subprocess.run([venv_python(), "-m", "tests.support.tinygguf", path],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        if r.returncode:
            raise ComponentError(f"tinygguf failed:\n{r.stdout}{r.stderr}")
    return path


class ModelServer:
    """A running ``llama_cpp.server`` (see :func:`start_llama_server`)."""

    def __init__(self, reactor: Any, child: ChildProcess, port: int, model_path: str) -> None:
        self._reactor = reactor
        self._child = child
        self.port = port
        self.model_path = model_path
        self.model = MODEL_ALIAS
        #: Base URL, ``http://127.0.0.1:<port>``.
        self.url = f"http://127.0.0.1:{port}"
        #: What a node registers as the chat model API.
        self.chat_url = self.url + "/v1/chat/completions"
        self.models_url = self.url + "/v1/models"

    def output(self) -> str:
        """The tail of the server's log (for failure messages)."""
        return self._child.tail()

    async def stop(self) -> None:
        """Stop the server (TERM, then KILL) and wait until it is reaped."""
        await self._child.stop(self._reactor)


async def _models_ok(reactor: Any, url: str) -> bool:
    resp = await http_client(reactor).get(url, timeout=2)
    await resp.content()
    return resp.code == 200


async def start_llama_server(reactor: Any, model_path: str, port: int | None = None,
                             timeout: float = 60.0, *, n_ctx: int = 512, n_threads: int = 2) -> ModelServer:
    """
    Start ``python -m llama_cpp.server`` on 127.0.0.1 serving *model_path*
    as :data:`MODEL_ALIAS`, and return once ``GET /v1/models`` answers 200.
    The server cannot report a port it picked, so without *port* a free one
    is chosen (and retried if another process grabs it first).

    The tiny model never emits end-of-sequence, so a request without
    ``max_tokens`` (as the node sends them) generates until the context of
    *n_ctx* tokens is full.  *n_threads* 1 is faster than 2 for this model
    on a busy machine (llama.cpp's threads spin at every barrier).
    """
    reason = llama_skip_reason()
    if reason:
        raise ComponentError(reason)
    attempts = 1 if port is not None else 3
    last: Exception | None = None
    for _ in range(attempts):
        p = port if port is not None else free_port()
        child = spawn(
            reactor, "llama_cpp.server",
            [venv_python(), "-m", "llama_cpp.server", "--model", os.path.abspath(model_path),
             "--host", "127.0.0.1", "--port", str(p), "--model_alias", MODEL_ALIAS,
             "--n_ctx", str(n_ctx), "--n_threads", str(n_threads)],
            # Keep the project's PYTHONPATH out of the server's venv.
            env={"PYTHONPATH": "", "PYTHONNOUSERSITE": "1"},
        )
        server = ModelServer(reactor, child, p, model_path)
        try:
            await wait_http(reactor, lambda: _models_ok(reactor, server.models_url), child, timeout,
                            "llama_cpp.server")
            return server
        except BaseException as e:
            await child.stop(reactor)
            if not isinstance(e, ComponentError) or "address already in use" not in child.tail().lower():
                raise
            last = e
    assert last is not None
    raise last


__all__ = [
    "MODEL_ALIAS",
    "ModelServer",
    "ensure_tiny_model",
    "llama_available",
    "llama_skip_reason",
    "models_venv",
    "start_llama_server",
    "venv_python",
]

if __name__ == "__main__":  # pragma: no cover - manual smoke run
    print(llama_skip_reason() or "llama available", file=sys.stderr)
