"""Requests/s of ``GET /api/v0/id``: the aicn API against a bare Klein app.

Both servers run in this process's reactor on loopback; a second process
(a tiny asyncio HTTP/1.1 keep-alive load generator, so the client does not
compete with the servers for this reactor) sends the requests.  Printed:
both rates and aicn's ratio to the bare app.

    python bench/http_id.py [--seconds 5] [--connections 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLIENT = textwrap.dedent(
    """
    import asyncio, sys, time
    port, seconds, conns = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    REQ = b"GET /api/v0/id HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n"
    async def worker(deadline, counts):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        n = 0
        while time.monotonic() < deadline:
            w.write(REQ)
            head = await r.readuntil(b"\\r\\n\\r\\n")
            length = 0
            for line in head.split(b"\\r\\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await r.readexactly(length)
            n += 1
        counts.append(n)
        w.close()
    async def main():
        counts = []
        start = time.monotonic()
        await asyncio.gather(*(worker(start + seconds, counts) for _ in range(conns)))
        print(sum(counts) / (time.monotonic() - start))
    asyncio.run(main())
    """
)


def measure(port: int, seconds: float, connections: int) -> float:
    out = subprocess.run([sys.executable, "-c", CLIENT, str(port), str(seconds), str(connections)],
                         check=True, capture_output=True, text=True)
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from klein import Klein
    from twisted.internet import reactor, threads
    from twisted.internet.defer import Deferred
    from twisted.web.server import Site

    from aicn.config import resolve_settings, Config
    from aicn.service import NodeService

    data_dir = tempfile.mkdtemp(prefix="aicn-bench-")
    settings = resolve_settings(Config(), {"data-dir": data_dir, "port": "0",
                                           "listen": ["/ip4/127.0.0.1/tcp/0"], "psk": "none"})
    node = NodeService(settings, reactor)
    node.startService()

    bare = Klein()
    payload = None

    @bare.route("/api/v0/id", methods=["GET"])
    def ident(request):
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(payload).encode()

    async def run():
        nonlocal payload
        await node.ready
        payload = node.node.identify_info()
        bare_site = Site(bare.resource())
        bare_site.noisy = False
        bare_port = reactor.listenTCP(0, bare_site, interface="127.0.0.1")
        aicn_port = node.api_port.getHost().port
        bare_port_no = bare_port.getHost().port
        # Warm up both, then measure alternately (several rounds, median) so
        # that neither gets a cooler machine or a warmer cache.
        await threads.deferToThread(measure, aicn_port, 0.5, args.connections)
        await threads.deferToThread(measure, bare_port_no, 0.5, args.connections)
        aicn_runs, bare_runs = [], []
        for _ in range(args.rounds):
            aicn_runs.append(await threads.deferToThread(measure, aicn_port, args.seconds, args.connections))
            bare_runs.append(await threads.deferToThread(measure, bare_port_no, args.seconds, args.connections))
        aicn_rps, bare_rps = statistics.median(aicn_runs), statistics.median(bare_runs)
        print(f"GET /api/v0/id over loopback, {args.connections} keep-alive connections, "
              f"median of {args.rounds} rounds of {args.seconds:.0f} s")
        print(f"  aicn node API : {aicn_rps:10.0f} req/s   (rounds: {', '.join(f'{r:.0f}' for r in aicn_runs)})")
        print(f"  bare Klein app: {bare_rps:10.0f} req/s   (rounds: {', '.join(f'{r:.0f}' for r in bare_runs)})")
        print(f"  ratio aicn/bare: {aicn_rps / bare_rps:.2f}")
        await bare_port.stopListening()
        await node.stopService()

    def done(result):
        reactor.stop()
        return result

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(run()).addBoth(done))
    reactor.run()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
