"""libp2p throughput and connection setup: aicn against js-libp2p, side by side.

Throughput is libp2p perf (``/perf/1.0.0``) on loopback: a download (client
asks for SIZE bytes, uploads nothing) and an upload (client sends SIZE bytes,
asks for nothing), each on a new stream over an already open connection,
with and without pnet.  Every node runs in its own process:

* ours: the server is ``python bench/perf.py --serve`` (an
  :class:`aicn.p2p.host.Host`), the client is a Host in this process;
* js: two ``tests/interop/js/peer.mjs`` processes, one serving perf and one
  driven with the ``perf`` command (js times itself; the figure excludes the
  JSON command round trip);
* mixed (dropped with ``--no-mixed``): our client against the js server, and
  the js client against our server.

Throughput is counted from opening the stream to the last byte (download:
server's EOF; upload: the server's close after reading everything), in
MB/s = 10**6 bytes per second, as both clients time it.

Setup time is TCP + [pnet] + noise + yamux + one stream negotiated for
``/ipfs/ping/1.0.0`` and one 32-byte ping round trip, on a fresh connection
each time (N times, median and p90).  Ours is timed in this process around
``Host.connect`` + ``new_stream`` + ``ping``; js is timed here around the
``ping {peer, addr}`` command after a ``hangup``, so it includes one JSON
command round trip to the node process, printed alongside (``status``).

    python bench/perf.py [--size 1GiB] [--repeat 2] [--setup-n 20] [--no-mixed]
                         [--pairs ours,js,ours->js,js->ours] [--pnet off,on]
                         [--key-type secp256k1|ed25519] [--profile DIR] [--json FILE]

Needs ``sh tests/interop/js/install.sh`` for the js figures (skipped without).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multiaddr import Multiaddr  # noqa: E402
from twisted.internet.defer import Deferred, ensureDeferred  # noqa: E402
from twisted.internet.protocol import ProcessProtocol  # noqa: E402

from aicn.p2p import perf as perf_proto  # noqa: E402
from aicn.p2p import ping as ping_proto  # noqa: E402
from aicn.p2p.host import Host  # noqa: E402
from aicn.p2p.keys import PrivateKey  # noqa: E402
from aicn.p2p.peerid import PeerID  # noqa: E402

#: The DeepBrainChain network key (pnet PSK v1).
DBC_PSK_HEX = "f504f536a912a8cf7d00adacee8ed20270c5040d961d7f3da4fccbcbec0ec48a"
MB = 10**6


def parse_size(text: str) -> int:
    """``1GiB``, ``256MiB``, ``64MB``, ``64M``, ``1000000`` -> bytes."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmg]?)(i?)b?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r}")
    power = " kmg".index(m.group(2) or " ")
    return int(float(m.group(1)) * (1024 if m.group(3) else 1000) ** power)


# -- server mode ----------------------------------------------------------------------------


def serve(args) -> None:
    """Run a Host serving perf and ping; print its full multiaddr; exit when stdin closes."""
    from twisted.internet import reactor, stdio
    from twisted.internet.protocol import Protocol

    psk = bytes.fromhex(args.psk) if args.psk else None
    host = Host(reactor, PrivateKey.generate(args.key_type), psk=psk, ping_interval=None)
    profiler = None
    if args.profile_out:
        import cProfile

        profiler = cProfile.Profile()

    class StdinWatch(Protocol):
        def connectionLost(self, reason=None):
            async def stop():
                await host.stop()
                if profiler is not None:
                    profiler.disable()
                    profiler.dump_stats(args.profile_out)
                reactor.stop()

            ensureDeferred(stop())

    async def start():
        bound = await host.start(["/ip4/127.0.0.1/tcp/0"])
        print(f"{bound[0]}/p2p/{host.peer_id}", flush=True)
        stdio.StandardIO(StdinWatch())
        if profiler is not None:
            profiler.enable()

    reactor.callWhenRunning(lambda: ensureDeferred(start()))
    reactor.run()


class _ServerProcess(ProcessProtocol):
    def __init__(self) -> None:
        self.ready: Deferred = Deferred()
        self.ended: Deferred = Deferred()
        self._buf = b""

    def outReceived(self, data: bytes) -> None:
        self._buf += data
        if b"\n" in self._buf and not self.ready.called:
            self.ready.callback(self._buf.split(b"\n", 1)[0].decode().strip())

    def errReceived(self, data: bytes) -> None:
        sys.stderr.write(data.decode("utf-8", "replace"))

    def processEnded(self, reason) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"our server exited: {reason.value}"))
        self.ended.callback(None)


async def start_our_server(reactor, key_type: str, psk_hex: str | None, profile_out: str | None):
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve", "--key-type", key_type]
    if psk_hex:
        argv += ["--psk", psk_hex]
    if profile_out:
        argv += ["--profile-out", profile_out]
    proto = _ServerProcess()
    transport = reactor.spawnProcess(proto, sys.executable, argv, env=dict(os.environ))
    addr = await proto.ready

    async def stop():
        transport.closeStdin()
        await proto.ended

    return addr, stop


def split_p2p(addr: str) -> tuple[PeerID, Multiaddr]:
    base, _, peer = addr.rpartition("/p2p/")
    return PeerID.from_string(peer), Multiaddr(base)


# -- measurements -----------------------------------------------------------------------------


async def our_perf(reactor, host: Host, peer: PeerID, upload: int, download: int) -> float:
    """Seconds for one perf exchange from our client (stream open included)."""
    start = reactor.seconds()
    stream = await host.new_stream(peer, [perf_proto.PERF])
    await perf_proto.perf(stream, upload, download, reactor)
    return reactor.seconds() - start


async def js_perf(js, peer: str, upload: int, download: int) -> float:
    reply = await js.call("perf", peer=peer, upload=upload, download=download, timeout=900)
    if reply["downloaded"] != download:
        raise RuntimeError(f"js perf: asked for {download}, got {reply['downloaded']}")
    return reply["seconds"]


async def our_setup(reactor, host: Host, peer: PeerID, addr: Multiaddr, n: int) -> list[float]:
    times = []
    for _ in range(n + 1):  # the first one warms up imports and caches; dropped
        while host.is_connected(peer):
            host.disconnect(peer)
            await _sleep(reactor, 0.01)
        start = reactor.seconds()
        conn = await host.connect(peer, [addr])
        stream = await conn.new_stream([ping_proto.PING])
        await ping_proto.ping(stream, reactor, 1)
        times.append(reactor.seconds() - start)
        host.disconnect(peer)
        await _sleep(reactor, 0.05)  # let both sides finish identify and the close
    return times[1:]


async def js_setup(reactor, js, server_peer: str, server_addr: str, n: int) -> tuple[list[float], list[float]]:
    times, rtts = [], []
    for _ in range(n + 1):
        await js.call("hangup", peer=server_peer)
        await _sleep(reactor, 0.05)
        start = time.perf_counter()
        await js.call("ping", peer=server_peer, addr=server_addr)
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
        await js.call("status")
        rtts.append(time.perf_counter() - start)
    return times[1:], rtts[1:]


def _sleep(reactor, seconds: float) -> Deferred:
    d: Deferred = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def p90(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(0.9 * (len(values) - 1))))]


# -- the run ---------------------------------------------------------------------------------


PAIRS = ("ours", "js", "ours->js", "js->ours")
DIRECTIONS = ("download", "upload")


async def run(reactor, args) -> None:
    from tests.interop.jspeer import js_unavailable_reason, start_js_peer

    size = args.size
    js_reason = js_unavailable_reason()
    if js_reason:
        print(f"# js figures skipped: {js_reason}", flush=True)
    pairs = [p for p in args.pairs if not (js_reason and p != "ours")]
    samples: dict[tuple[str, str, str], list[float]] = {}  # (pair, pnet, direction) -> MB/s
    setup: dict[tuple[str, str], dict] = {}
    cleanups: list = []

    def log(msg):
        print(f"# {msg}", flush=True)

    async def cleanup():
        while cleanups:
            try:
                await cleanups.pop()()
            except Exception as exc:
                print(f"# cleanup: {exc}", file=sys.stderr)

    try:
        for pnet in args.pnet:
            tag = "pnet" if pnet else "plain"
            psk_hex = DBC_PSK_HEX if pnet else None
            js_flags = ["--key-type", args.key_type] + (["--psk", DBC_PSK_HEX] if pnet else [])
            profile = str(Path(args.profile) / f"server-{tag}.prof") if args.profile else None

            # Four nodes, each in its own process except our client (this one).
            server_addr, stop_server = await start_our_server(reactor, args.key_type, psk_hex, profile)
            cleanups.append(stop_server)
            server_peer, server_ma = split_p2p(server_addr)
            client = Host(reactor, PrivateKey.generate(args.key_type),
                          psk=bytes.fromhex(psk_hex) if psk_hex else None, ping_interval=None)
            await client.start([])
            cleanups.append(client.stop)
            await client.connect(server_peer, [server_ma])
            js_server = js_client = None
            if not js_reason:
                js_server = await start_js_peer(reactor, "--perf", "--no-connection-monitor", *js_flags)
                cleanups.append(js_server.stop)
                js_client = await start_js_peer(reactor, "--perf", "--no-connection-monitor", *js_flags)
                cleanups.append(js_client.stop)
                js_peer, js_ma = split_p2p(js_server.addr)
                await js_client.call("dial", addr=js_server.addr)
                if "ours->js" in pairs:
                    await client.connect(js_peer, [js_ma])
                if "js->ours" in pairs:
                    await js_client.call("dial", addr=server_addr)

            async def measure(pair, up, down):
                if pair == "ours":
                    return await our_perf(reactor, client, server_peer, up, down)
                if pair == "ours->js":
                    return await our_perf(reactor, client, js_peer, up, down)
                if pair == "js":
                    return await js_perf(js_client, js_server.peer_id, up, down)
                return await js_perf(js_client, str(server_peer), up, down)

            client_prof = None
            if args.profile:
                import cProfile

                client_prof = cProfile.Profile()
            # Interleaved, so that a busy moment on the machine hits every pair alike.
            for rep in range(args.repeat):
                for pair in pairs:
                    for direction in DIRECTIONS:
                        up, down = (0, size) if direction == "download" else (size, 0)
                        if client_prof is not None and pair.startswith("ours"):
                            client_prof.enable()
                        secs = await measure(pair, up, down)
                        if client_prof is not None:
                            client_prof.disable()
                        rate = size / secs / MB
                        samples.setdefault((pair, tag, direction), []).append(rate)
                        log(f"[{rep + 1}/{args.repeat}] {pair} {tag} {direction}: {rate:.1f} MB/s ({secs:.2f} s)")
            if client_prof is not None:
                client_prof.dump_stats(str(Path(args.profile) / f"client-{tag}.prof"))

            if args.setup_n:
                times = await our_setup(reactor, client, server_peer, server_ma, args.setup_n)
                setup[("ours", tag)] = {"median": statistics.median(times), "p90": p90(times)}
                log(f"ours setup {tag}: median {statistics.median(times) * 1e3:.1f} ms, "
                    f"p90 {p90(times) * 1e3:.1f} ms")
                if js_client is not None:
                    times, rtts = await js_setup(reactor, js_client, js_server.peer_id, js_server.addr,
                                                 args.setup_n)
                    setup[("js", tag)] = {"median": statistics.median(times), "p90": p90(times),
                                          "cmd_rtt": statistics.median(rtts)}
                    log(f"js setup {tag}: median {statistics.median(times) * 1e3:.1f} ms, "
                        f"p90 {p90(times) * 1e3:.1f} ms (JSON round trip {statistics.median(rtts) * 1e3:.2f} ms)")
            await cleanup()
    finally:
        await cleanup()

    results = {key: statistics.median(values) for key, values in samples.items()}
    print_table(size, args.repeat, results, setup)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "size": size,
            "repeat": args.repeat,
            "throughput_MBps": {"/".join(k): v for k, v in samples.items()},
            "setup_s": {"/".join(k): v for k, v in setup.items()},
        }, indent=2))


def print_table(size: int, repeat: int, results, setup) -> None:
    print()
    print(f"Throughput, /perf/1.0.0 over loopback, {size} bytes per transfer, MB/s (10^6 B/s)"
          + (f", median of {repeat}" if repeat > 1 else ""))
    print(f"{'pnet':6} {'direction':9} {'ours':>9} {'js':>9} {'ours/js':>8} {'ours->js':>9} {'js->ours':>9}  target ours>=js")
    for tag in ("plain", "pnet"):
        for direction in ("download", "upload"):
            ours = results.get(("ours", tag, direction))
            js = results.get(("js", tag, direction))
            mixed = [results.get((p, tag, direction)) for p in ("ours->js", "js->ours")]
            ratio = ours / js if ours and js else None
            verdict = "-" if ratio is None else ("met" if ratio >= 1 else "NOT met")
            print(f"{tag:6} {direction:9} {_f(ours):>9} {_f(js):>9} {_r(ratio):>8} "
                  f"{_f(mixed[0]):>9} {_f(mixed[1]):>9}  {verdict}")
    print()
    print("Connection setup: TCP + [pnet] + noise + yamux + ping stream + one 32-byte ping, ms")
    print(f"{'pnet':6} {'ours med':>9} {'ours p90':>9} {'js med':>9} {'js p90':>9} {'ours/js':>8} {'js cmd rtt':>10}  target ours<=js")
    for tag in ("plain", "pnet"):
        ours = setup.get(("ours", tag), {})
        js = setup.get(("js", tag), {})
        ratio = ours["median"] / js["median"] if ours and js else None
        verdict = "-" if ratio is None else ("met" if ratio <= 1 else "NOT met")
        print(f"{tag:6} {_ms(ours.get('median')):>9} {_ms(ours.get('p90')):>9} "
              f"{_ms(js.get('median')):>9} {_ms(js.get('p90')):>9} {_r(ratio):>8} "
              f"{_ms(js.get('cmd_rtt')):>10}  {verdict}")
    print("(js setup includes one JSON command round trip to the js process; "
          "'js cmd rtt' is that round trip alone, measured with 'status')")


def _f(v):
    return "-" if v is None else f"{v:.1f}"


def _r(v):
    return "-" if v is None else f"{v:.2f}"


def _ms(v):
    return "-" if v is None else f"{v * 1e3:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=2**30, help="bytes per direction (default 1GiB)")
    parser.add_argument("--setup-n", type=int, default=20, help="fresh connections for setup time")
    parser.add_argument("--repeat", type=int, default=2, help="transfers per case, interleaved (median printed; default 2)")
    parser.add_argument("--pairs", type=lambda t: t.split(","), default=list(PAIRS),
                        help="client->server pairs, comma-separated (default: ours,js,ours->js,js->ours)")
    parser.add_argument("--no-mixed", dest="pairs", action="store_const", const=["ours", "js"],
                        help="only ours->ours and js->js")
    parser.add_argument("--pnet", type=lambda t: [{"off": False, "on": True}[x] for x in t.split(",")],
                        default=[False, True], help="off,on (default), off or on")
    parser.add_argument("--key-type", choices=["secp256k1", "ed25519"], default="secp256k1",
                        help="identity key type of every node (default secp256k1, as DBC nodes)")
    parser.add_argument("--profile", metavar="DIR", help="cProfile our client and server into DIR")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--psk", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    from twisted.internet import reactor
    from twisted.internet.task import react

    react(lambda r: ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    main()
