"""A node under load: many streams, a connection flood, slow HTTP clients.

Every party is its own process, as in production: nodes A and B are
``twistd aicn`` on loopback (B bootstraps to A, so they are directly
connected), the model is this script with ``--serve-model`` (an
OpenAI-like server that streams ``--chunks`` SSE events per request, one
write per reactor turn), and the clients are this process.

Phases, one after the other:

a. **streams**: ``--chats`` concurrent ``POST /api/v0/chat/completion``
   with ``stream: true`` and ``node_id = B`` to A's API (each tunnelled over
   ``/chat-proxy/0.0.1`` to B, which calls the model): errors (a status
   other than 200, a stream that ends early or without every event; goal 0),
   wall time, peak RSS of A and B (psutil);
b. **connection flood**: ``--held`` TCP connections to A's libp2p port,
   opened at once and held without a byte sent: how many A refused at once
   (closed before its pnet nonce arrived) and how many it took into a
   handshake (closed by the handshake timeout), while ``GET /api/v0/id``
   runs in a loop (p50/p99) and one streamed chat A → B goes through the
   established connection; peak RSS of A;
c. **slowloris**: ``--slow`` connections to A's API that send a request head
   one byte a second, reconnecting when closed, for ``--slow-seconds``,
   while ``GET /api/v0/id`` runs in a loop: p50/p99 (target p99 < 100 ms),
   and how many slow connections got ``408`` at the header timeout.

``--quick`` runs small numbers (the smoke test) with ``API.HeaderTimeout``
1 s and ``Swarm.HandshakeTimeout`` 2 s so that the timeouts show in a short
run; the full run keeps the defaults (10 s, 10 s).

    python bench/load.py [--quick] [--chats 500] [--chunks 200] [--held 2000] [--slow 200] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.procs import Processes, call_json  # noqa: E402 (after the path)
from bench.procs import sleep as bench_sleep  # noqa: E402

P, M = "Bench", "fast"
MB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values, p):
    """Nearest-rank percentile (as bench/network.py)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(p / 100 * (len(ordered) - 1)))))]


def raise_fd_limit() -> int:
    """Soft open-file limit up to the hard one: this process holds thousands of sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- the model server (child process) -----------------------------------------------------


def serve_model(port: int, chunks: int) -> None:
    """OpenAI-like chat model: ``stream: true`` → ``chunks`` SSE events, one
    write per reactor turn, then ``[DONE]``; else a small JSON answer."""
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Site

    reply = json.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": M,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"},
                                     "finish_reason": "stop"}]}).encode()

    def event(i: int) -> bytes:
        return (b'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"t%d "}}]}'
                b"\n\n" % i)

    class Model(Resource):
        isLeaf = True

        def render_POST(self, request):
            body = json.loads(request.content.read())
            if not body.get("stream"):
                request.setHeader(b"content-type", b"application/json")
                return reply
            request.setHeader(b"content-type", b"text/event-stream")
            state = {"i": 0, "gone": False}
            request.notifyFinish().addErrback(lambda _: state.update(gone=True))

            def step():
                if state["gone"]:
                    return
                if state["i"] < chunks:
                    request.write(event(state["i"]))
                    state["i"] += 1
                    reactor.callLater(0, step)
                else:
                    request.write(b"data: [DONE]\n\n")
                    request.finish()

            step()
            return NOT_DONE_YET

    site = Site(Model())
    site.noisy = False
    reactor.listenTCP(port, site, interface="127.0.0.1", backlog=1024)
    print("ready", flush=True)
    reactor.run()


# -- the benchmark ------------------------------------------------------------------------


async def run(reactor, args) -> dict:
    import psutil
    import treq
    from twisted.internet.defer import Deferred, gatherResults
    from twisted.internet.protocol import ClientCreator, Protocol
    from twisted.internet.task import LoopingCall

    from aicn.models.http import BodyPump, body_ended_cleanly, make_http_client

    children = Processes(reactor, keep=65536)
    spawn = children.spawn
    get_json = call_json

    def sleep(s):
        return bench_sleep(reactor, s)

    class RSS:
        """Peak resident set size of the node processes, sampled every 50 ms."""

        def __init__(self, nodes):
            self.procs = {name: psutil.Process(node["proc"].transport.pid) for name, node in nodes.items()}
            self.peak = dict.fromkeys(self.procs, 0)
            self.loop = LoopingCall(self.sample)
            self.loop.clock = reactor

        def sample(self):
            for name, proc in self.procs.items():
                self.peak[name] = max(self.peak[name], proc.memory_info().rss)

        def reset(self):
            self.sample()
            self.peak = {name: proc.memory_info().rss for name, proc in self.procs.items()}

        def now(self):
            return {name: proc.memory_info().rss for name, proc in self.procs.items()}

    tmp = tempfile.mkdtemp(prefix="aicn-bench-load-")
    config = os.path.join(tmp, "config.json")
    node_config = {"App": {"PeersCollect": {"HeartbeatInterval": "1s"}}}
    if args.header_timeout:
        node_config["API"] = {"HeaderTimeout": args.header_timeout}
    if args.handshake_timeout:
        node_config["Swarm"] = {"HandshakeTimeout": args.handshake_timeout}
    with open(config, "w") as f:
        json.dump(node_config, f)
    sampler = None
    try:
        model_port = free_port()
        model_proc = spawn([__file__, "--serve-model", str(model_port), "--chunks", str(args.chunks)])
        model_url = f"http://127.0.0.1:{model_port}/v1/chat/completions"
        for _ in range(200):
            if b"ready" in model_proc.out:
                break
            await sleep(0.05)
        nodes = {}
        for name in ("a", "b"):
            port = free_port()
            argv = ["-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "aicn",
                    "--port", str(port), "--data-dir", os.path.join(tmp, name),
                    "--listen", "/ip4/127.0.0.1/tcp/0", "--log-level", "warn", "--config", config]
            if nodes:
                a_info = nodes["a"]["info"]
                argv += ["--bootstrap", f"{a_info['addresses'][0]}/p2p/{a_info['peer_id']}"]
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
            else:
                raise RuntimeError(f"node {name} did not start: " + proc.out.decode(errors="replace"))
            nodes[name] = {"api": api, "port": port, "info": info, "proc": proc}
        a, b = nodes["a"], nodes["b"]
        b_id = b["info"]["peer_id"]
        reg = await get_json(b["api"] + "/api/v0/ai/project/register",
                             {"project": P, "models": [{"model": M, "api": model_url, "type": 0}]})
        assert reg["code"] == 0, reg
        for _ in range(200):
            if b_id in await get_json(a["api"] + "/api/v0/pubsub/peers"):
                break
            await sleep(0.1)
        sampler = RSS(nodes)
        sampler.loop.start(0.05)
        client = make_http_client(reactor)
        chat_url = a["api"] + "/api/v0/chat/completion"
        chat_body = json.dumps({"node_id": b_id, "project": P, "model": M, "stream": True,
                                "messages": [{"role": "user", "content": "Hello"}]}).encode()

        async def chat() -> str | None:
            """One streamed chat through A; None if every event arrived, else what went wrong."""
            try:
                resp = await client.post(chat_url, data=chat_body, unbuffered=True,
                                         headers={b"Content-Type": [b"application/json"]})
                body = bytearray()
                ended = Deferred()
                resp.deliverBody(BodyPump(body.extend, lambda reason: ended.callback(reason.value)))
                reason = await ended
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"
            if resp.code != 200:
                return f"HTTP {resp.code}: {bytes(body[:200])!r}"
            if not body_ended_cleanly(reason):
                return f"stream ended uncleanly: {reason!r}"
            events = body.count(b"data: ")
            if events != args.chunks + 1 or not body.rstrip().endswith(b"data: [DONE]"):
                return f"{events} events of {args.chunks + 1}: {bytes(body[-200:])!r}"
            return None

        for _ in range(3):  # warm up the route
            why = await chat()
            assert why is None, why

        # (a) concurrent streams
        sampler.reset()
        rss_before = sampler.now()
        start = time.perf_counter()
        outcomes = await gatherResults([Deferred.fromCoroutine(chat()) for _ in range(args.chats)])
        wall = time.perf_counter() - start
        sampler.sample()
        errors = [o for o in outcomes if o is not None]
        streams = {"chats": args.chats, "chunks": args.chunks, "errors": len(errors),
                   "error_samples": sorted(set(errors))[:5], "wall_s": wall,
                   "rss_before": rss_before, "rss_peak": dict(sampler.peak)}

        async def probe_loop(stop: Deferred, path: str = "/api/v0/id"):
            """GET ``path`` on A, one request after the other, until ``stop`` fires."""
            lat, errs = [], 0
            while not stop.called:
                t = time.perf_counter()
                try:
                    resp = await treq.get(a["api"] + path, persistent=False)
                    await resp.content()
                    if resp.code != 200:
                        errs += 1
                except Exception:
                    errs += 1
                lat.append(time.perf_counter() - t)
                await sleep(0.01)
            return lat, errs

        def stopper(seconds):
            d = Deferred()
            reactor.callLater(seconds, d.callback, None)
            return d

        # (b) a flood of held TCP connections to the libp2p port
        p2p_port = int(a["info"]["addresses"][0].rsplit("/", 1)[1])

        class Held(Protocol):
            def __init__(self):
                self.got = 0
                self.opened = time.perf_counter()
                self.closed_after = None

            def dataReceived(self, data):
                self.got += len(data)  # the pnet nonce of an accepted connection

            def connectionLost(self, reason):
                self.closed_after = time.perf_counter() - self.opened

        sampler.reset()
        rss_before = sampler.now()
        stop = stopper(args.hold_seconds)
        probes = Deferred.fromCoroutine(probe_loop(stop))
        creator = ClientCreator(reactor, Held)
        attempts = [creator.connectTCP("127.0.0.1", p2p_port, timeout=30) for _ in range(args.held)]
        connected = await gatherResults([d.addErrback(lambda f: None) for d in attempts])
        held = [c for c in connected if c is not None]
        await sleep(1.0)
        chat_during = await chat()  # the established A–B connection still carries streams
        peers_during = b_id in [p.get("peer") or p.get("id") for p in
                                await get_json(a["api"] + "/api/v0/swarm/peers")]
        lat, errs = await probes
        sampler.sample()
        refused = [h for h in held if h.closed_after is not None and h.got == 0]
        accepted = [h for h in held if h.got > 0]
        timed_out = [h for h in accepted if h.closed_after is not None]
        refused_p99 = percentile([h.closed_after for h in refused], 99) * 1e3 if refused else None
        flood = {"attempted": args.held, "connected": len(held), "refused_at_once": len(refused),
                 "refused_close_p99_ms": refused_p99,
                 "handshakes": len(accepted), "closed_by_handshake_timeout": len(timed_out),
                 "hold_s": args.hold_seconds, "http_n": len(lat), "http_errors": errs,
                 "http_p50_ms": percentile(lat, 50) * 1e3, "http_p99_ms": percentile(lat, 99) * 1e3,
                 "chat_during": chat_during or "ok", "b_connected_during": peers_during,
                 "rss_before": rss_before, "rss_peak": dict(sampler.peak)}
        for h in held:
            if h.closed_after is None:
                h.transport.abortConnection()
        await sleep(0.5)

        # (c) slowloris on the HTTP API
        slow_stats = {"connections": 0, "timeouts_408": 0, "closed_other": 0}
        slow_stop = stopper(args.slow_seconds)
        slow_conns = set()

        class Slow(Protocol):
            def connectionMade(self):
                slow_stats["connections"] += 1
                slow_conns.add(self)
                self.answer = bytearray()
                self.transport.write(b"GET /api/v0/id HTTP/1.1\r\nHost: 127.0.0.1\r\n")

            def drip(self):
                self.transport.write(b"X")

            def dataReceived(self, data):
                self.answer += data

            def connectionLost(self, reason):
                slow_conns.discard(self)
                if self.answer.startswith(b"HTTP/1.1 408"):
                    slow_stats["timeouts_408"] += 1
                else:
                    slow_stats["closed_other"] += 1
                if not slow_stop.called:
                    open_slow()  # a slowloris comes back

        slow_creator = ClientCreator(reactor, Slow)

        def open_slow():
            slow_creator.connectTCP("127.0.0.1", a["port"]).addErrback(lambda f: None)

        def drip_all():
            for conn in list(slow_conns):
                conn.drip()

        sampler.reset()
        for _ in range(args.slow):
            open_slow()
        dripper = LoopingCall(drip_all)
        dripper.clock = reactor
        dripper.start(1.0, now=False)
        await sleep(0.5)
        lat, errs = await probe_loop(slow_stop)
        dripper.stop()
        open_at_end = len(slow_conns)
        for conn in list(slow_conns):
            conn.transport.abortConnection()
        sampler.sample()
        slowloris = {"slow": args.slow, "seconds": args.slow_seconds, "open_at_end": open_at_end,
                     "header_timeout": args.header_timeout or "10s (default)", **slow_stats,
                     "http_n": len(lat), "http_errors": errs,
                     "http_p50_ms": percentile(lat, 50) * 1e3, "http_p99_ms": percentile(lat, 99) * 1e3,
                     "rss_peak": dict(sampler.peak)}
        return {"streams": streams, "flood": flood, "slowloris": slowloris}
    finally:
        if sampler is not None and sampler.loop.running:
            sampler.loop.stop()
        await children.stop()


def report(r: dict) -> None:
    def mb(n):
        return f"{n / MB:.0f} MB"

    s = r["streams"]
    print(f"(a) {s['chats']} concurrent streamed chats x {s['chunks']} chunks, client -> A -> B -> model: "
          f"errors {s['errors']}, wall {s['wall_s']:.1f} s, peak RSS A {mb(s['rss_peak']['a'])}"
          f" (before {mb(s['rss_before']['a'])}), B {mb(s['rss_peak']['b'])}"
          f" (before {mb(s['rss_before']['b'])})")
    for sample in s["error_samples"]:
        print(f"    error: {sample}")
    f = r["flood"]
    refused_p99 = f"{f['refused_close_p99_ms']:.0f} ms" if f["refused_close_p99_ms"] is not None else "-"
    print(f"(b) {f['attempted']} held TCP connections to A's libp2p port: {f['connected']} connected, "
          f"{f['refused_at_once']} refused at once (closed within p99 {refused_p99}), "
          f"{f['handshakes']} taken into a handshake ({f['closed_by_handshake_timeout']} closed by the "
          f"handshake timeout in {f['hold_s']:.0f} s)")
    print(f"    while held: GET /api/v0/id p50 {f['http_p50_ms']:.1f} ms, p99 {f['http_p99_ms']:.1f} ms "
          f"({f['http_n']} requests, errors {f['http_errors']}); streamed chat A -> B: {f['chat_during']}; "
          f"B still connected: {f['b_connected_during']}; peak RSS A {mb(f['rss_peak']['a'])} "
          f"(before {mb(f['rss_before']['a'])})")
    c = r["slowloris"]
    met = "MET" if c["http_p99_ms"] < 100 else "NOT MET"
    print(f"(c) {c['slow']} slowloris HTTP connections for {c['seconds']:.0f} s (header timeout "
          f"{c['header_timeout']}): {c['connections']} opened, {c['timeouts_408']} closed with 408, "
          f"{c['closed_other']} closed otherwise; GET /api/v0/id p50 {c['http_p50_ms']:.1f} ms, "
          f"p99 {c['http_p99_ms']:.1f} ms ({c['http_n']} requests, errors {c['http_errors']}); "
          f"target p99 < 100 ms: {met}")
    errors = s["errors"] + f["http_errors"] + c["http_errors"] + (f["chat_during"] != "ok")
    print(f"errors: {errors}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve-model", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="small numbers and short timeouts (smoke test)")
    parser.add_argument("--chats", type=int, help="concurrent streamed chats (500; quick 20)")
    parser.add_argument("--chunks", type=int, help="SSE events per chat (200; quick 50)")
    parser.add_argument("--held", type=int, help="held TCP connections to the libp2p port (2000; quick 150)")
    parser.add_argument("--hold-seconds", type=float, help="how long they are held (12; quick 3)")
    parser.add_argument("--slow", type=int, help="slowloris HTTP connections (200; quick 20)")
    parser.add_argument("--slow-seconds", type=float, help="how long the slowloris phase lasts (15; quick 3)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    quick = args.quick
    for name, full, small in (("chats", 500, 20), ("chunks", 200, 50), ("held", 2000, 150),
                              ("hold_seconds", 12.0, 3.0), ("slow", 200, 20), ("slow_seconds", 15.0, 3.0)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    # Short timeouts in a quick run, so that they show; the defaults otherwise.
    args.header_timeout = "1s" if quick else None
    args.handshake_timeout = "2s" if quick else None
    if args.serve_model:
        serve_model(args.serve_model, args.chunks)
        return
    limit = raise_fd_limit()
    if limit < args.held + args.chats + args.slow + 256:
        sys.exit(f"open-file limit {limit} is too low for this run")

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
    print(f"bench/load.py{' --quick' if quick else ''}, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs")
    report(out["result"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out["result"], f, indent=2)


if __name__ == "__main__":
    main()
