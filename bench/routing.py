"""Latency and throughput added by routing a model call through two nodes.

Compares, on loopback:

* **route**: client → node A's HTTP API → node B → model, with
  ``node_id = B``: non-streamed requests travel as encrypted CHAT_COMPLETION
  messages over floodsub, streamed ones through a ``/chat-proxy/0.0.1``
  tunnel (A and B are directly connected);
* **direct**: client → model.

Every party is its own process: nodes A and B are ``twistd aicn`` (as in
production), the model is this script with ``--serve-model`` (a twisted.web
server that answers at once, so the figures are the cost of the route and
not of a model; ``--model-url`` points both paths at another server, e.g. a
llama.cpp server, instead), the client is this process (treq, a new TCP
connection per request on both paths).

Figures:

* non-streamed request latency, p50/p99 (``--n`` requests, interleaved
  route/direct);
* streamed time to first token (first body byte), p50/p99 (``--stream-n``);
* SSE throughput: one streamed answer of ``--sse-mb`` MB in ``--chunk``-byte
  SSE events written as fast as TCP takes them, MB/s (best of ``--repeat``).

Targets on loopback: at most 3 ms added at p50; throughput through the route
at least 0.9x direct.  The script prints whether they are met, and the CPU
time the two nodes spent per request and per MB relayed (steadier than
latency on a shared machine).  ``--parser h11`` runs both nodes with
bench/h11wire.py's h11-based parser in place of httpwire's (issue 13.6).
``--profile PREFIX`` runs both nodes under
cProfile, timed on CPU, and writes ``PREFIX-a.prof`` / ``PREFIX-b.prof``.

    python bench/routing.py [--n 200] [--stream-n 100] [--sse-mb 32] [--chunk 200] [--parser httpwire|h11]
                             [--json FILE] [--profile PREFIX]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.procs import Processes, call_json  # noqa: E402 (after the path)
from bench.procs import sleep as bench_sleep  # noqa: E402

MB = 10**6
P, M = "Bench", "fast"
MESSAGES = [{"role": "user", "content": "Hello"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the model server (child process) -----------------------------------------------------


def serve_model(port: int, events_per_write: int = 0) -> None:
    """An OpenAI-like model that answers at once.

    ``stream: false`` → a small JSON completion.  ``stream: true`` → SSE:
    3 events of about 70 bytes, or, for a last message ``bench:<n>:<size>``,
    ``n`` events of ``size`` bytes, then ``[DONE]``, written as fast as the
    connection drains, ``events_per_write`` per write (0: as many as fit
    64 KiB), so per HTTP chunk.
    """
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Site

    reply = json.dumps({"code": 0, "message": "ok", "created": 1718691167, "model": M,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"},
                                     "finish_reason": "stop"}],
                        "usage": {"completion_tokens": 2, "prompt_tokens": 3, "total_tokens": 5}}).encode()

    class SSEProducer:
        """Writes events while the transport accepts them (a pull-less push producer)."""

        def __init__(self, request, count, size):
            self.request, self.left = request, count
            pad = max(0, size - 70)
            self.event = (b'data: {"object":"chat.completion.chunk","choices":[{"delta":{"content":"'
                          + b"x" * pad + b'"}}]}\n\n')
            self.paused = False
            request.registerProducer(self, True)
            reactor.callLater(0, self.run)

        def run(self):
            batch = events_per_write or max(1, 65536 // len(self.event))
            while not self.paused and self.left > 0:
                n = min(batch, self.left)
                self.request.write(self.event * n)
                self.left -= n
            if self.left <= 0:
                self.request.unregisterProducer()
                self.request.write(b"data: [DONE]\n\n")
                self.request.finish()

        def pauseProducing(self):
            self.paused = True

        def resumeProducing(self):
            if self.paused:
                self.paused = False
                reactor.callLater(0, self.run)

        def stopProducing(self):
            self.left = 0
            self.paused = True

    class Model(Resource):
        isLeaf = True

        def render_POST(self, request):
            body = json.loads(request.content.read())
            if not body.get("stream"):
                request.setHeader(b"content-type", b"application/json")
                return reply
            request.setHeader(b"content-type", b"text/event-stream")
            prompt = str((body.get("messages") or [{}])[-1].get("content", ""))
            count, size = 3, 70
            if prompt.startswith("bench:"):
                _, count, size = prompt.split(":")
            SSEProducer(request, int(count), int(size))
            return NOT_DONE_YET

    site = Site(Model())
    site.noisy = False
    reactor.listenTCP(port, site, interface="127.0.0.1")
    print("ready", flush=True)
    reactor.run()


# -- the benchmark ------------------------------------------------------------------------


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(p / 100 * (len(ordered) - 1)))))]


async def run(reactor, args) -> dict:
    import treq
    from twisted.internet.defer import Deferred

    from aicn.models.http import BodyPump, body_ended_cleanly, make_http_client

    children = Processes(reactor)
    spawn = children.spawn
    get_json = call_json

    def sleep(s):
        return bench_sleep(reactor, s)

    tmp = tempfile.mkdtemp(prefix="aicn-bench-routing-")
    config = os.path.join(tmp, "config.json")
    with open(config, "w") as f:
        json.dump({"App": {"PeersCollect": {"HeartbeatInterval": "1s"}}}, f)
    try:
        if args.model_url:
            model_url = args.model_url
        else:
            model_port = free_port()
            model_proc = spawn([__file__, "--serve-model", str(model_port),
                                "--events-per-write", str(args.events_per_write)])
            model_url = f"http://127.0.0.1:{model_port}/v1/chat/completions"
            for _ in range(100):
                if b"ready" in model_proc.out:
                    break
                await sleep(0.05)
        nodes = []
        for name in ("a", "b"):
            port = free_port()
            run_twistd = "from twisted.scripts.twistd import run; run()"
            if args.parser == "h11":
                # bench/h11wire.py's parser in place of httpwire's, before twistd loads the node.
                run_twistd = "import bench.h11wire; bench.h11wire.install(); " + run_twistd
            profile = []
            if args.profile:
                # twistd's cProfile runner, timed on CPU time: waiting for the others is not our cost.
                run_twistd = ("import cProfile, functools, time; cProfile.Profile = functools.partial("
                              "cProfile.Profile, time.process_time); " + run_twistd)
                profile = ["--profiler=cprofile", "--savestats", f"--profile={args.profile}-{name}.prof"]
            argv = ["-c", run_twistd, "-n", "--pidfile=", *profile, "aicn",
                    "--port", str(port), "--data-dir", os.path.join(tmp, name), "--listen", "/ip4/127.0.0.1/tcp/0",
                    "--log-level", "error", "--config", config]
            if nodes:
                argv += ["--bootstrap", f"{nodes[0]['info']['addresses'][0]}/p2p/{nodes[0]['info']['peer_id']}"]
            else:
                argv += ["--collector"]
            proc = spawn(argv)
            api = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    info = await get_json(api + "/api/v0/id", method="GET")
                    break
                except Exception:
                    if proc.ended.called:
                        raise RuntimeError(proc.out.decode(errors="replace"))
                    await sleep(0.1)
            for _ in range(20 if args.parser == "h11" else 0):  # its stderr may come after its answer
                if b"h11wire: MessageParser is h11" in proc.out:
                    break
                await sleep(0.1)
            else:
                if args.parser == "h11":
                    raise RuntimeError("--parser h11: the node did not say it runs h11: " + proc.out.decode(errors="replace"))
            nodes.append({"api": api, "info": info, "proc": proc})
        a, b = nodes
        b_id = b["info"]["peer_id"]
        reg = await get_json(b["api"] + "/api/v0/ai/project/register",
                             {"project": P, "models": [{"model": M, "api": model_url, "type": 0}]})
        assert reg["code"] == 0, reg
        for _ in range(200):
            peers = await get_json(a["api"] + "/api/v0/pubsub/peers")
            if b_id in peers:
                break
            await sleep(0.1)

        route_url = a["api"] + "/api/v0/chat/completion"

        def node_cpu() -> dict:
            # CPU time (user + system) used so far by each node process: a figure
            # that the noise of a shared machine disturbs much less than latency.
            out = {}
            for name, node in zip("ab", nodes):
                with open(f"/proc/{node['proc'].transport.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                out[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            return out

        def cpu_per(start: dict, count: int) -> dict:
            """Milliseconds of CPU per request (both paths ran; only the route uses the nodes)."""
            now = node_cpu()
            return {k: (now[k] - start[k]) * 1e3 / max(1, count) for k in now}

        def bodies(stream):
            route = {"node_id": b_id, "project": P, "model": M, "messages": MESSAGES, "stream": stream}
            direct = {"model": M, "messages": MESSAGES, "stream": stream}
            return route, direct

        async def timed_post(url, body):
            start = time.perf_counter()
            resp = await treq.post(url, data=json.dumps(body).encode(), persistent=False,
                                   headers={"Content-Type": "application/json"})
            content = await resp.content()
            return time.perf_counter() - start, content

        # Non-streamed latency, interleaved.
        route_body, direct_body = bodies(False)
        for _ in range(10):  # warm up both paths (connections, first-time code paths)
            await timed_post(route_url, route_body)
            await timed_post(model_url, direct_body)
        lat = {"route": [], "direct": []}
        cpu = {}
        cpu_start = node_cpu()
        for _ in range(args.n):
            t, content = await timed_post(route_url, route_body)
            assert json.loads(content)["code"] == 0, content
            lat["route"].append(t)
            t, _ = await timed_post(model_url, direct_body)
            lat["direct"].append(t)

        # Streamed: time to first byte, and throughput of one long answer.
        async def stream(url, body):
            client = make_http_client(reactor)
            start = time.perf_counter()
            first = []
            size = [0]
            ended = Deferred()

            def on_data(data):
                if not first:
                    first.append(time.perf_counter())
                size[0] += len(data)

            resp = await client.post(url, data=json.dumps(body).encode(),
                                     headers={b"Content-Type": [b"application/json"]}, unbuffered=True)
            resp.deliverBody(BodyPump(on_data, lambda reason: ended.callback(reason.value)))
            reason = await ended
            assert body_ended_cleanly(reason), reason
            return first[0] - start, time.perf_counter() - start, size[0]

        cpu["non-stream"] = cpu_per(cpu_start, args.n)
        ttft = {"route": [], "direct": []}
        route_body, direct_body = bodies(True)
        for _ in range(5):
            await stream(route_url, route_body)
            await stream(model_url, direct_body)
        cpu_start = node_cpu()
        for _ in range(args.stream_n):
            ttft["route"].append((await stream(route_url, route_body))[0])
            ttft["direct"].append((await stream(model_url, direct_body))[0])

        count = max(1, int(args.sse_mb * MB / args.chunk))
        # The node forwards only model, messages and stream: the size of the
        # answer travels in the prompt ("bench:<events>:<bytes per event>").
        long_messages = [{"role": "user", "content": f"bench:{count}:{args.chunk}"}]
        route_body = {"node_id": b_id, "project": P, "model": M, "messages": long_messages, "stream": True}
        direct_body = {"model": M, "messages": long_messages, "stream": True}
        cpu["stream"] = cpu_per(cpu_start, args.stream_n)
        tput = {"route": [], "direct": []}
        route_cpu = {"a": 0.0, "b": 0.0}
        for _ in range(args.repeat):
            _, t, size = await stream(model_url, direct_body)
            tput["direct"].append(size / t / MB)
            cpu_start = node_cpu()
            _, t, size = await stream(route_url, route_body)
            tput["route"].append(size / t / MB)
            for k, v in cpu_per(cpu_start, 1).items():
                route_cpu[k] += v
        # CPU seconds per MB relayed, per node (ms/MB).
        cpu["sse_ms_per_mb"] = {k: v / args.repeat / (count * args.chunk / MB) for k, v in route_cpu.items()}
        return {
            "parser": args.parser,
            "model": "external " + model_url if args.model_url else "in-process instant model (bench/routing.py --serve-model)",
            "latency_ms": {k: {"p50": percentile(v, 50) * 1e3, "p99": percentile(v, 99) * 1e3,
                               "mean": statistics.fmean(v) * 1e3} for k, v in lat.items()},
            "ttft_ms": {k: {"p50": percentile(v, 50) * 1e3, "p99": percentile(v, 99) * 1e3} for k, v in ttft.items()},
            "sse_mb_s": {k: max(v) for k, v in tput.items()},
            "sse_bytes": count * args.chunk,
            "sse_events": count,
            "events_per_write": args.events_per_write,
            "node_cpu_ms": cpu,
        }
    finally:
        await children.stop()


def report(result: dict) -> None:
    lat, ttft, tput = result["latency_ms"], result["ttft_ms"], result["sse_mb_s"]
    print(f"model: {result['model']}; tunnel parser: {result.get('parser', 'httpwire')}")
    print(f"{'':28}{'direct':>10}{'route':>10}{'added':>10}{'ratio':>8}")
    for label, table in (("non-stream latency", lat), ("stream time to first byte", ttft)):
        for q in ("p50", "p99"):
            d, r = table["direct"][q], table["route"][q]
            print(f"{label + ' ' + q + ' (ms)':28}{d:10.2f}{r:10.2f}{r - d:10.2f}{r / d:8.2f}")
    d, r = tput["direct"], tput["route"]
    per_write = result.get("events_per_write") or "64 KiB of"
    print(f"{'SSE throughput (MB/s)':28}{d:10.1f}{r:10.1f}{'':10}{r / d:8.2f}"
          f"   ({result['sse_bytes'] / MB:.0f} MB, {per_write} events per write)")
    added = lat["route"]["p50"] - lat["direct"]["p50"]
    added_ttft = ttft["route"]["p50"] - ttft["direct"]["p50"]
    print(f"target: added p50 <= 3 ms: non-stream {added:.2f} ms {'MET' if added <= 3 else 'NOT MET'};"
          f" stream TTFT {added_ttft:.2f} ms {'MET' if added_ttft <= 3 else 'NOT MET'}")
    print(f"target: SSE throughput >= 0.9x direct: {r / d:.2f}x {'MET' if r / d >= 0.9 else 'NOT MET'}")
    cpu = result.get("node_cpu_ms")
    event_mb = result["sse_bytes"] / result.get("sse_events", result["sse_bytes"] / 200) / MB
    if cpu:
        print("node CPU: non-stream {:.2f} + {:.2f} ms/request (A + B); stream {:.2f} + {:.2f} ms/request;"
              " SSE {:.1f} + {:.1f} ms/MB ({:.2f} + {:.2f} µs/event)".format(cpu["non-stream"]["a"], cpu["non-stream"]["b"],
                                                  cpu["stream"]["a"], cpu["stream"]["b"],
                                                  cpu["sse_ms_per_mb"]["a"], cpu["sse_ms_per_mb"]["b"],
                                                  *(cpu["sse_ms_per_mb"][k] * event_mb * 1e3 for k in "ab")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve-model", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=200, help="non-streamed requests per path")
    parser.add_argument("--stream-n", type=int, default=100, help="streamed requests per path (TTFT)")
    parser.add_argument("--sse-mb", type=float, default=32.0, help="size of the long streamed answer, MB")
    parser.add_argument("--chunk", type=int, default=200, help="bytes per SSE event")
    parser.add_argument("--events-per-write", type=int, default=0, metavar="N",
                        help="the built-in model writes N SSE events per write, so per HTTP chunk, as a"
                             " model that flushes every token does with N=1 (default: as many as fit 64 KiB)")
    parser.add_argument("--repeat", type=int, default=3, help="long answers per path (best counts)")
    parser.add_argument("--model-url", help="use this model server instead of the built-in one")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--parser", choices=("httpwire", "h11"), default="httpwire",
                        help="the nodes' chat-proxy HTTP parser: aicn.node.httpwire (production) or"
                             " bench/h11wire.py's h11-based one (needs h11 installed)")
    parser.add_argument("--profile", metavar="PREFIX",
                        help="run both nodes under cProfile (CPU time); stats go to PREFIX-a.prof and PREFIX-b.prof")
    args = parser.parse_args()
    if args.serve_model:
        serve_model(args.serve_model, args.events_per_write)
        return

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
    report(out["result"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out["result"], f, indent=2)


if __name__ == "__main__":
    main()
