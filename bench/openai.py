"""What the OpenAI-compatible route (``/v1``) costs, on loopback.

Parties, each its own process: nodes A (collector) and B (worker) run as
``twistd aicn``; B serves two models: **llama** (llama-cpp-python's server
with the tests' tiny GGUF, when installed; else this script's instant model,
and the report says so) and **fast**, this script's paced SSE model
(``--serve-model``).  The client is this process (treq, a new TCP connection
per request on every path).

Figures:

* **latency**: non-streamed chat (``max_tokens: 1``), client → A's
  ``/v1/chat/completions`` → B (``/chat-proxy/0.0.1``) → llama, against the
  client calling llama's own ``/v1/chat/completions``; p50/p99 of ``--n``
  requests per path, interleaved;
* **time to first token**: the same, streamed (``max_tokens: 4``): time to
  the first SSE event, p50/p99 of ``--stream-n``;
* **concurrency**: ``--streams`` (200) concurrent streams through A to
  ``fast``, each ``--events`` events, one every ``--interval`` seconds (an
  LLM's pace; 0: as fast as TCP takes them): SSE events relayed per second,
  CPU microseconds per relayed event on A (which parses and re-frames every
  event) and on B (which tunnels bytes), and errors: streams that did not
  end with ``[DONE]`` after every event (goal 0).

    python bench/openai.py [--quick] [--n 200] [--stream-n 100] [--streams 200] [--events 250]
                           [--interval 0.02] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# Run as a script, this file would shadow the openai package for everything in the process.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(REPO))

from bench.procs import Processes, call_json  # noqa: E402 (after the path)
from bench.procs import sleep as bench_sleep  # noqa: E402

P = "Bench"
MESSAGES = [{"role": "user", "content": "Hello"}]
FAST = "fast"
QUICK = {"n": 20, "stream_n": 10, "streams": 20, "events": 40, "interval": 0.01}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values, p):
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


# -- the paced SSE model -------------------------------------------------------------------------------


def sse_model(reactor):
    """An OpenAI-like chat model resource.  ``stream: false``: a small JSON
    completion at once.  ``stream: true``: a role chunk, ``max_tokens``
    content chunks (default 16) one every ``bench_interval`` seconds (a field
    of the request; 0 = as fast as the connection drains), a ``length``
    chunk, then ``[DONE]``: llama-cpp-python's shapes."""
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET

    def chunk(delta, finish=None) -> bytes:
        return b"data: " + json.dumps({
            "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": FAST,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]},
            separators=(",", ":")).encode() + b"\n\n"

    token = chunk({"content": " word"})

    class Stream:
        def __init__(self, request, count: int, interval: float) -> None:
            self.request, self.left, self.interval = request, count, interval
            self.paused = self.stopped = False
            request.registerProducer(self, True)
            request.notifyFinish().addErrback(lambda _: self.stopProducing())
            request.write(chunk({"role": "assistant"}))
            reactor.callLater(interval, self.run)

        def run(self) -> None:
            if self.stopped or self.paused:
                return
            if self.interval > 0:
                if self.left > 0:
                    self.request.write(token)
                    self.left -= 1
                    reactor.callLater(self.interval, self.run)
                    return
            else:
                while self.left > 0 and not self.paused:
                    n = min(64, self.left)
                    self.request.write(token * n)
                    self.left -= n
                if self.left > 0:
                    return
            self.stopped = True
            self.request.unregisterProducer()
            self.request.write(chunk({}, "length") + b"data: [DONE]\n\n")
            self.request.finish()

        def pauseProducing(self) -> None:
            self.paused = True

        def resumeProducing(self) -> None:
            if self.paused:
                self.paused = False
                reactor.callLater(0, self.run)

        def stopProducing(self) -> None:
            self.stopped = True

    class Model(Resource):
        isLeaf = True

        def render_POST(self, request):
            body = json.loads(request.content.read())
            count = int(body.get("max_tokens") or 16)
            if not body.get("stream"):
                request.setHeader(b"content-type", b"application/json")
                return json.dumps({
                    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": FAST,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": " word" * count},
                                 "logprobs": None, "finish_reason": "length"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": count,
                              "total_tokens": 3 + count}}).encode()
            request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
            Stream(request, count, float(body.get("bench_interval") or 0))
            return NOT_DONE_YET

    return Model()


def serve_model(port: int) -> None:
    from twisted.internet import reactor

    from aicn.api.site import APISite  # no Nagle: one event, one segment, as a model server sends them

    reactor.listenTCP(port, APISite(sse_model(reactor)), interface="127.0.0.1")
    print("ready", flush=True)
    reactor.run()


# -- measurements ---------------------------------------------------------------------------------------


async def post_json(url: str, body: dict, headers=None) -> tuple[float, int, bytes]:
    """``(seconds, status, body)`` of one POST."""
    import treq

    start = time.perf_counter()
    resp = await treq.post(url, data=json.dumps(body).encode(), persistent=False,
                           headers={"Content-Type": "application/json", **(headers or {})})
    content = await resp.content()
    return time.perf_counter() - start, resp.code, content


async def stream(reactor, url: str, body: dict) -> dict:
    """One streamed POST: ``{status, first, total, events, done, clean}``
    (seconds to the first SSE event and to the end; events counted)."""
    from twisted.internet.defer import Deferred

    from aicn.models.http import BodyPump, body_ended_cleanly, make_http_client

    client = make_http_client(reactor)
    start = time.perf_counter()
    state = {"first": None, "events": 0, "tail": b""}
    ended: Deferred = Deferred()

    def on_data(data: bytes) -> None:
        if state["first"] is None:
            state["first"] = time.perf_counter() - start
        # Events end with a blank line, which a chunk boundary may split.
        state["events"] += data.count(b"\n\n") + (state["tail"][-1:] == b"\n" and data[:1] == b"\n")
        state["tail"] = (state["tail"] + data)[-32:]

    resp = await client.post(url, data=json.dumps(body).encode(),
                             headers={b"Content-Type": [b"application/json"]}, unbuffered=True)
    resp.deliverBody(BodyPump(on_data, lambda reason: ended.callback(reason.value)))
    reason = await ended
    return {"status": resp.code, "first": state["first"], "total": time.perf_counter() - start,
            "events": state["events"], "done": state["tail"].endswith(b"data: [DONE]\n\n"),
            "clean": body_ended_cleanly(reason)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure_latency(route_url: str, direct_url: str, route_model: str, direct_model: str, n: int,
                          warmup: int = 5) -> dict:
    """Non-streamed latency (seconds) of each path, interleaved; failures raise."""
    bodies = {"route": (route_url, {"model": route_model, "messages": MESSAGES, "max_tokens": 1}),
              "direct": (direct_url, {"model": direct_model, "messages": MESSAGES, "max_tokens": 1})}
    out: dict = {"route": [], "direct": []}
    for i in range(warmup + n):
        for name, (url, body) in bodies.items():
            seconds, status, content = await post_json(url, body)
            if status != 200:
                raise RuntimeError(f"{name} answered {status}: {content[:300]!r}")
            if i >= warmup:
                out[name].append(seconds)
    return out


async def measure_ttft(reactor, route_url: str, direct_url: str, route_model: str, direct_model: str, n: int,
                       warmup: int = 3) -> dict:
    """Time to the first SSE event (seconds) of each path, interleaved."""
    bodies = {"route": (route_url, {"model": route_model, "messages": MESSAGES, "max_tokens": 4,
                                    "stream": True}),
              "direct": (direct_url, {"model": direct_model, "messages": MESSAGES, "max_tokens": 4,
                                      "stream": True})}
    out: dict = {"route": [], "direct": []}
    for i in range(warmup + n):
        for name, (url, body) in bodies.items():
            result = await stream(reactor, url, body)
            if result["status"] != 200 or not result["done"]:
                raise RuntimeError(f"{name} stream failed: {result}")
            if i >= warmup:
                out[name].append(result["first"])
    return out


async def measure_concurrency(reactor, url: str, model: str, streams: int, events: int, interval: float,
                              pids: dict[str, int]) -> dict:
    """``streams`` concurrent streams of ``events`` tokens each through ``url``.

    Returns the events relayed, the wall time, CPU seconds per node (``pids``),
    and the errors: streams whose status, end or event count was wrong.
    """
    from twisted.internet.defer import Deferred, gatherResults

    body = {"model": model, "messages": MESSAGES, "stream": True, "max_tokens": events,
            "bench_interval": interval}
    expected = events + 3  # role chunk, tokens, finish chunk, [DONE]
    cpu_start = {name: cpu_seconds(pid) for name, pid in pids.items()}
    start = time.perf_counter()

    async def one():
        try:
            return await stream(reactor, url, body)
        except Exception as exc:  # a refused or reset connection counts as an error
            return {"error": repr(exc)}

    results = await gatherResults([Deferred.fromCoroutine(one()) for _ in range(streams)])
    seconds = time.perf_counter() - start
    cpu = {name: cpu_seconds(pid) - cpu_start[name] for name, pid in pids.items()}
    errors = [r for r in results if "error" in r or r["status"] != 200 or not r["clean"] or not r["done"]
              or r["events"] != expected]
    relayed = sum(r.get("events", 0) for r in results)
    return {"streams": streams, "events_per_stream": expected, "events": relayed, "seconds": seconds,
            "cpu_seconds": cpu, "errors": len(errors), "error_samples": errors[:3]}


def summarize(result: dict) -> dict:
    """Lines of the report, by figure."""
    out = {"model": result["model"]}
    for key, label in (("latency", "non-stream latency"), ("ttft", "time to first token")):
        table = result.get(key)
        if not table:
            continue
        for q in (50, 99):
            d, r = percentile(table["direct"], q) * 1e3, percentile(table["route"], q) * 1e3
            out[f"{label} p{q}"] = f"direct {d:.2f} ms, /v1 route {r:.2f} ms, added {r - d:+.2f} ms"
    conc = result.get("concurrency")
    if conc:
        events, seconds = conc["events"], conc["seconds"]
        out["concurrent streams"] = (f"{conc['streams']} streams x {conc['events_per_stream']} events:"
                                     f" {events} events in {seconds:.2f} s = {events / seconds:,.0f}"
                                     f" events/s relayed")
        out["CPU per relayed event"] = ", ".join(f"node {name} {cpu / max(1, events) * 1e6:.1f} us"
                                                 for name, cpu in conc["cpu_seconds"].items())
        out["errors"] = f"{conc['errors']} (goal 0)"
    return out


# -- the run ------------------------------------------------------------------------------------------------


async def run(reactor, args) -> dict:

    children = Processes(reactor)
    spawn = children.spawn
    call = call_json

    def sleep(s):
        return bench_sleep(reactor, s)

    tmp = tempfile.mkdtemp(prefix="aicn-bench-openai-")
    config = os.path.join(tmp, "config.json")
    with open(config, "w") as f:
        json.dump({"App": {"PeersCollect": {"HeartbeatInterval": "1s"}}}, f)
    llama = None
    try:
        fast_port = free_port()
        fast_proc = spawn([str(HERE / "openai.py"), "--serve-model", str(fast_port)])
        fast_url = f"http://127.0.0.1:{fast_port}/v1/chat/completions"
        for _ in range(200):
            if b"ready" in fast_proc.out:
                break
            await sleep(0.05)
        from tests.support.llama import ensure_tiny_model, llama_skip_reason, start_llama_server

        reason = None if args.no_llama else llama_skip_reason()
        if args.no_llama:
            reason = "--no-llama"
        if reason is None:
            llama = await start_llama_server(reactor, ensure_tiny_model(os.path.join(tmp, "model")),
                                             n_ctx=512, n_threads=1)
            model_name, model_url, model_label = llama.model, llama.chat_url, "llama-cpp-python, tiny GGUF"
        else:
            model_name, model_url = FAST, fast_url
            model_label = f"this script's instant model (llama-cpp-python unavailable: {reason})"

        nodes = []
        for name in ("a", "b"):
            port = free_port()
            argv = ["-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "aicn",
                    "--port", str(port), "--data-dir", os.path.join(tmp, name),
                    "--listen", "/ip4/127.0.0.1/tcp/0", "--log-level", "error", "--config", config]
            if nodes:
                first = nodes[0]["info"]
                argv += ["--bootstrap", f"{first['addresses'][0]}/p2p/{first['peer_id']}"]
            else:
                argv += ["--collector"]
            proc = spawn(argv)
            api = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    info = await call(api + "/api/v0/id", method="GET")
                    break
                except Exception:
                    if proc.ended.called:
                        raise RuntimeError(proc.out.decode(errors="replace"))
                    await sleep(0.1)
            nodes.append({"api": api, "info": info, "proc": proc})
        a, b = nodes
        reg = await call(b["api"] + "/api/v0/ai/project/register", {"project": P, "models": [
            {"model": "llama", "api": model_url, "type": 0}, {"model": FAST, "api": fast_url, "type": 0}]})
        assert reg["code"] == 0, reg
        for _ in range(300):
            listed = await call(a["api"] + "/v1/models", method="GET")
            if {m["id"] for m in listed["data"]} >= {f"{P}/llama", f"{P}/{FAST}"}:
                break
            await sleep(0.1)
        else:
            raise RuntimeError(f"A never listed B's models: {listed}")
        route_url = a["api"] + "/v1/chat/completions"
        result = {"model": model_label}
        result["latency"] = await measure_latency(route_url, model_url, f"{P}/llama", model_name, args.n)
        result["ttft"] = await measure_ttft(reactor, route_url, model_url, f"{P}/llama", model_name,
                                            args.stream_n)
        pids = {"A": a["proc"].transport.pid, "B": b["proc"].transport.pid}
        result["concurrency"] = await measure_concurrency(reactor, route_url, f"{P}/{FAST}", args.streams,
                                                          args.events, args.interval, pids)
        return result
    finally:
        if llama is not None:
            await llama.stop()
        await children.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve-model", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="small sizes: " + ", ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items()))
    parser.add_argument("--n", type=int, default=200, help="non-streamed requests per path")
    parser.add_argument("--stream-n", type=int, default=100, help="streamed requests per path (TTFT)")
    parser.add_argument("--streams", type=int, default=200, help="concurrent streams through node A")
    parser.add_argument("--events", type=int, default=250, help="token events per concurrent stream")
    parser.add_argument("--interval", type=float, default=0.02,
                        help="seconds between a stream's events (0: no pause)")
    parser.add_argument("--no-llama", action="store_true", help="use the instant model for latency and TTFT")
    parser.add_argument("--json", help="also write the raw figures here")
    args = parser.parse_args()
    if args.serve_model:
        serve_model(args.serve_model)
        return
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)

    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred

    out = {}

    def done(result):
        out["result"] = result
        reactor.stop()

    def failed(failure):
        out["failure"] = failure
        reactor.stop()

    reactor.callWhenRunning(lambda: ensureDeferred(run(reactor, args)).addCallbacks(done, failed))
    reactor.run()
    if "failure" in out:
        out["failure"].printTraceback()
        sys.exit(1)
    for key, line in summarize(out["result"]).items():
        print(f"{key}: {line}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out["result"], f, indent=2, default=str)
    if out["result"]["concurrency"]["errors"]:
        sys.exit(2)


if __name__ == "__main__":
    main()
