"""A loopback network of real aicn nodes: build time, floodsub spread,
FIND_NODE hops, memory.

Each node is the stack :class:`aicn.service.NodeService` wires: a
:class:`~aicn.p2p.host.Host` (DBC private-network key unless ``--no-psk``)
listening on ``127.0.0.1:0``, :class:`~aicn.p2p.pubsub.FloodSub` subscribed
to the DBC topic, and a server-mode :class:`~aicn.p2p.kad.KadDHT` on
``/dbc/kad/1.0.0`` with ``route_dials``.  (No connection manager, HTTP API
or AICN application: they play no part in what is measured.)

Layout: ``--procs K`` worker processes each run about N/K nodes in their
own reactor (``--procs 0``: every node in this process).  The coordinator
(this process, also a reactor) talks to each worker over its stdin/stdout,
one JSON object a line: ``{"id", "cmd", "args"}`` in, ``{"id", "result"}``
or ``{"id", "error"}`` out.  Timestamps are ``time.monotonic_ns()``
(``CLOCK_MONOTONIC``, one clock for every process on the machine), taken
inside the workers: in the publishing node just before ``publish`` and in
each node's topic handler, so the control channel adds no error.

Steps, for each network size:

1. start every host (listening, subscribed); RSS of each worker before and
   after, after ``gc.collect()``;
2. start the DHT of node 0 (the bootstrap node), then of the others in
   batches of ``--join-batch``: each dials node 0 and looks itself up,
   staying connected to the peers it queried; the network is built once
   every node joined and every connected peer is a known floodsub peer
   (its subscription arrived);
3. ``--publishes`` messages, each from a random node, one at a time: the
   time until every other node delivered it (and per-delivery latencies);
4. ``--lookups`` ``find_peer`` calls from a random source to a random node
   it is not connected to.  Its short-lived (TEMP) address of the target
   from the build's lookups is dropped first, as if it had expired, so every
   lookup goes to the network.  Hops come from the kad lookup observer: how
   many answers it took to hear of the target (1 = a seed named it), and how
   many peers were queried.

Run from the repository root::

    python bench/network.py [--nodes 50,100] [--procs 2] [--publishes 20] [--lookups 20]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.protocols.basic import LineOnlyReceiver

from aicn.config import DBC_PSK_HEX
from aicn.p2p.host import Host
from aicn.p2p.kad import DEFAULT_PROTOCOL, KadDHT
from aicn.p2p.keys import PrivateKey
from aicn.p2p.peerid import PeerID
from aicn.p2p.pubsub import FloodSub

TOPIC = "DeepBrainChain"
LISTEN = "/ip4/127.0.0.1/tcp/0"


def rss() -> int:
    """This process's resident set size in bytes, after a full collection."""
    gc.collect()
    return psutil.Process().memory_info().rss


class BenchNode:
    """One node: host, floodsub, server-mode DHT, and when it got each message."""

    def __init__(self, reactor, psk: bytes | None, kad_protocol: str) -> None:
        self.host = Host(reactor, PrivateKey.generate("secp256k1"), psk=psk)
        self.pubsub = FloodSub(self.host, reactor)
        self.kad_protocol = kad_protocol
        self.dht: KadDHT | None = None
        #: message data -> time.monotonic_ns() of delivery
        self.received: dict[bytes, int] = {}

    def on_message(self, message) -> None:
        self.received.setdefault(message.data, time.monotonic_ns())


class NodeGroup:
    """Some nodes in one reactor; every method returns JSON-able values.

    The coordinator drives a group directly (``--procs 0`` and the smoke
    test) or through a worker process (:class:`RemoteGroup`).
    """

    def __init__(self, reactor, psk: bytes | None = None, kad_protocol: str = DEFAULT_PROTOCOL) -> None:
        self.reactor = reactor
        self.psk = psk
        self.kad_protocol = kad_protocol
        self.nodes: list[BenchNode] = []

    async def rss(self) -> int:
        return rss()

    async def start(self, count: int) -> list[dict]:
        """Start ``count`` listening, subscribed hosts; their peer IDs and addresses."""
        out = []
        for _ in range(count):
            node = BenchNode(self.reactor, self.psk, self.kad_protocol)
            await node.host.start([LISTEN])
            node.pubsub.subscribe(TOPIC, node.on_message)
            self.nodes.append(node)
            out.append({"peer": str(node.host.peer_id),
                        "addrs": [str(a) for a in node.host.listen_addrs()]})
        return out

    async def join(self, indices: list[int], bootstrap: dict | None) -> None:
        """Start the DHT of the nodes at ``indices`` at once: dial ``bootstrap``
        (``{"peer", "addrs"}``; none for the bootstrap node itself) and look
        themselves up."""
        peers = []
        if bootstrap is not None:
            peers = [(PeerID.from_string(bootstrap["peer"]), bootstrap["addrs"])]
        starts = []
        for i in indices:
            node = self.nodes[i]
            node.dht = KadDHT(node.host, self.reactor, protocol=self.kad_protocol, mode="server",
                              bootstrap_peers=peers, route_dials=True)
            starts.append(Deferred.fromCoroutine(node.dht.start()))
        await gatherResults(starts, consumeErrors=True)

    async def unsettled(self) -> int:
        """Connected (node, peer) pairs whose floodsub subscription has not arrived yet."""
        missing = 0
        for node in self.nodes:
            subscribed = set(node.pubsub.peers(TOPIC))
            missing += sum(1 for p in node.host.connected_peers() if p not in subscribed)
        return missing

    async def stats(self) -> dict:
        """Per node: connections, distinct peers, routing-table size; and our RSS."""
        return {
            "rss": rss(),
            "connections": [len(n.host.connections()) for n in self.nodes],
            "degree": [len(n.host.connected_peers()) for n in self.nodes],
            "routing": [len(n.dht.routing_table) if n.dht else 0 for n in self.nodes],
        }

    async def publish(self, index: int, data: str) -> int:
        """Publish ``data`` from node ``index``; the send time (monotonic ns)."""
        node = self.nodes[index]
        t0 = time.monotonic_ns()
        await node.pubsub.publish(TOPIC, data.encode())
        return t0

    async def received(self, data: str, timeout: float) -> list[int | None]:
        """Each node's delivery time of ``data`` (monotonic ns; ``None``: not
        within ``timeout`` seconds)."""
        key = data.encode()
        deadline = time.monotonic() + timeout
        while (not all(key in n.received for n in self.nodes)
               and time.monotonic() < deadline):
            await deferLater(self.reactor, 0.01, lambda: None)
        return [n.received.get(key) for n in self.nodes]

    async def find(self, index: int, candidates: list[dict]) -> dict:
        """``find_peer`` from node ``index`` of the first candidate (``{"peer",
        "addrs"}``) it is not connected to; hops, peers queried, time.

        The source first forgets the target: its address (a TEMP one from the
        build's lookups, as if it had expired) and its routing-table entry (a
        peer it was connected to).  If it is connected to every candidate
        (small networks, the bootstrap node), it disconnects from the first.
        """
        node = self.nodes[index]
        own = node.host.peer_id
        pool = [(PeerID.from_string(c["peer"]), set(c["addrs"])) for c in candidates]
        pool = [(p, a) for p, a in pool if p != own]
        unconnected = [(p, a) for p, a in pool if not node.host.is_connected(p)]
        forgot_connected = not unconnected
        target, expected = (unconnected or pool)[0]
        if forgot_connected:
            node.host.disconnect(target)
            while node.host.is_connected(target):
                await deferLater(self.reactor, 0.01, lambda: None)
        in_table = node.dht.routing_table.remove(target)
        had_addrs = bool(node.host.peerstore.addrs(target))
        node.host.peerstore.clear_addrs(target)
        seen = []

        def observe(key, _kind, lookup):
            if key == target.to_bytes():
                seen.append(lookup)

        node.dht.lookup_observer = observe
        t0 = time.monotonic_ns()
        try:
            found = await node.dht.find_peer(target)
            error = None
        except Exception as exc:  # a failed lookup is a result, not a crash
            found, error = [], repr(exc)
        finally:
            node.dht.lookup_observer = None
        seconds = (time.monotonic_ns() - t0) / 1e9
        lookup = seen[0] if seen else None
        return {
            "forgot_connected": forgot_connected,
            "in_routing_table": in_table,
            "success": bool(expected & {str(a) for a in found}),
            "error": error,
            "had_temp_addrs": had_addrs,
            "hops": lookup.hops(target) if lookup else None,
            "queried": lookup.queried if lookup else 0,
            "seconds": seconds,
        }

    async def stop(self) -> None:
        for node in self.nodes:
            if node.dht is not None:
                await node.dht.stop()
            node.pubsub.close()
        await DeferredList([Deferred.fromCoroutine(n.host.stop()) for n in self.nodes],
                           consumeErrors=True)
        self.nodes = []


class LocalGroup:
    """A :class:`NodeGroup` in this process, behind the :class:`RemoteGroup` interface."""

    def __init__(self, group: NodeGroup) -> None:
        self.group = group

    def call(self, cmd: str, **args) -> Deferred:
        return Deferred.fromCoroutine(getattr(self.group, cmd)(**args))

    async def close(self) -> None:
        await self.group.stop()


# -- worker processes ---------------------------------------------------------------------

COMMANDS = ("rss", "start", "join", "unsettled", "stats", "publish", "received", "find", "stop")


class WorkerControl(LineOnlyReceiver):
    """The worker's end of the control channel (stdin/stdout)."""

    delimiter = b"\n"
    MAX_LENGTH = 64 * 1024 * 1024

    def __init__(self, group: NodeGroup, reactor) -> None:
        self.group = group
        self.reactor = reactor

    def lineReceived(self, line: bytes) -> None:
        request = json.loads(line)
        if request["cmd"] not in COMMANDS:
            self._reply({"id": request["id"], "error": f"unknown command {request['cmd']!r}"})
            return
        d = Deferred.fromCoroutine(getattr(self.group, request["cmd"])(**request.get("args", {})))
        d.addCallbacks(lambda result: self._reply({"id": request["id"], "result": result}),
                       lambda f: self._reply({"id": request["id"], "error": f.getTraceback()}))

    def _reply(self, obj) -> None:
        self.sendLine(json.dumps(obj).encode())

    def connectionLost(self, reason=None) -> None:
        # The coordinator went away (or closed our stdin): shut down.
        if self.reactor.running:
            Deferred.fromCoroutine(self.group.stop()).addBoth(lambda _: self.reactor.stop())


def worker_main(psk_hex: str, kad_protocol: str) -> None:
    from twisted.internet import reactor, stdio

    group = NodeGroup(reactor, psk=bytes.fromhex(psk_hex) if psk_hex else None, kad_protocol=kad_protocol)
    stdio.StandardIO(WorkerControl(group, reactor), reactor=reactor)
    reactor.run()


class RemoteGroup(ProcessProtocol):
    """A worker process running a :class:`NodeGroup`; :meth:`call` sends it a command."""

    def __init__(self) -> None:
        self._buffer = b""
        self._next_id = 0
        self._pending: dict[int, Deferred] = {}
        self._ended: Deferred = Deferred()

    @classmethod
    def spawn(cls, reactor, psk: bytes | None, kad_protocol: str) -> "RemoteGroup":
        proto = cls()
        args = [sys.executable, os.path.abspath(__file__), "--worker",
                "--psk-hex", psk.hex() if psk else "", "--kad-protocol", kad_protocol]
        reactor.spawnProcess(proto, sys.executable, args, env=os.environ,
                             childFDs={0: "w", 1: "r", 2: 2})
        return proto

    def call(self, cmd: str, **args) -> Deferred:
        self._next_id += 1
        d: Deferred = Deferred()
        self._pending[self._next_id] = d
        line = json.dumps({"id": self._next_id, "cmd": cmd, "args": args}).encode() + b"\n"
        self.transport.write(line)
        return d

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            reply = json.loads(line)
            d = self._pending.pop(reply["id"])
            if "error" in reply:
                d.errback(RuntimeError(f"worker: {reply['error']}"))
            else:
                d.callback(reply["result"])

    def processEnded(self, reason) -> None:
        for d in self._pending.values():
            d.errback(RuntimeError(f"worker exited: {reason.value}"))
        self._pending.clear()
        self._ended.callback(None)

    async def close(self) -> None:
        await self.call("stop")
        self.transport.closeStdin()
        await self._ended


# -- the coordinator ----------------------------------------------------------------------

def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def _gather(ds) -> list:
    return await gatherResults(list(ds), consumeErrors=True)


async def _sleep(reactor, seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def run_network(reactor, groups, nodes: int, *, publishes: int = 20, lookups: int = 20,
                      join_batch: int = 10, seed: int | None = None, deliver_timeout: float = 10.0,
                      settle_timeout: float = 30.0, progress=lambda msg: None) -> dict:
    """Build a ``nodes``-node network over ``groups`` (objects with ``call(cmd, **args)``),
    measure it, and return the raw figures (see :func:`summarize`).  The groups
    are left running; the caller closes them."""
    rng = random.Random(seed)
    counts = [nodes // len(groups) + (1 if g < nodes % len(groups) else 0) for g in range(len(groups))]
    # Global node number -> (group, index in group); node 0 is the bootstrap node.
    where = [(g, i) for i in range(max(counts)) for g in range(len(groups)) if i < counts[g]]

    rss_base = await _gather(g.call("rss") for g in groups)
    t_start = time.monotonic()
    infos_by_group = await _gather(g.call("start", count=c) for g, c in zip(groups, counts))
    start_seconds = time.monotonic() - t_start
    rss_started = await _gather(g.call("rss") for g in groups)
    infos = [infos_by_group[g][i] for g, i in where]
    progress(f"{nodes} hosts started in {start_seconds:.1f} s")

    t_build = time.monotonic()
    await groups[0].call("join", indices=[0], bootstrap=None)
    rest = list(range(1, nodes))
    for b in range(0, len(rest), join_batch):
        batch = rest[b:b + join_batch]
        per_group: dict[int, list[int]] = {}
        for n in batch:
            g, i = where[n]
            per_group.setdefault(g, []).append(i)
        await _gather(groups[g].call("join", indices=idx, bootstrap=infos[0]) for g, idx in per_group.items())
    join_seconds = time.monotonic() - t_build
    progress(f"all DHTs joined in {join_seconds:.1f} s; waiting for floodsub subscriptions")
    unsettled = None
    deadline = time.monotonic() + settle_timeout
    while time.monotonic() < deadline:
        unsettled = sum(await _gather(g.call("unsettled") for g in groups))
        if unsettled == 0:
            break
        await _sleep(reactor, 0.1)
    build_seconds = time.monotonic() - t_build
    stats = await _gather(g.call("stats") for g in groups)
    progress(f"network built in {build_seconds:.1f} s ({unsettled} subscriptions missing)")

    spreads = []
    for p in range(publishes):
        src = rng.randrange(nodes)
        g, i = where[src]
        data = f"bench-{seed}-{p}-{rng.getrandbits(32)}"
        t0 = await groups[g].call("publish", index=i, data=data)
        by_group = await _gather(grp.call("received", data=data, timeout=deliver_timeout) for grp in groups)
        times = [by_group[gg][ii] for n, (gg, ii) in enumerate(where) if n != src]
        got = [t for t in times if t is not None]
        spreads.append({
            "reached": len(got), "of": len(times),
            "all_seconds": (max(got) - t0) / 1e9 if len(got) == len(times) else None,
            "latencies": [(t - t0) / 1e9 for t in got],
        })
        await _sleep(reactor, 0.05)
    progress(f"{publishes} publications done")

    finds = []
    for _ in range(lookups):
        src = rng.randrange(nodes)
        g, i = where[src]
        candidates = [infos[n] for n in rng.sample(range(nodes), nodes) if n != src]
        finds.append(await groups[g].call("find", index=i, candidates=candidates))
    progress(f"{len(finds)} lookups done")

    return {
        "nodes": nodes, "groups": len(groups), "counts": counts,
        "start_seconds": start_seconds, "join_seconds": join_seconds, "build_seconds": build_seconds,
        "unsettled": unsettled,
        "rss_base": rss_base, "rss_started": rss_started, "rss_built": [s["rss"] for s in stats],
        "connections": [c for s in stats for c in s["connections"]],
        "degree": [d for s in stats for d in s["degree"]],
        "routing": [r for s in stats for r in s["routing"]],
        "spreads": spreads, "finds": finds,
    }


def summarize(raw: dict) -> dict:
    """The headline figures of a :func:`run_network` result."""
    nodes = raw["nodes"]
    ends = sum(raw["connections"])
    conns = ends / 2  # every connection is counted at both of its ends
    mib = 1024 * 1024
    full = [s["all_seconds"] for s in raw["spreads"] if s["all_seconds"] is not None]
    every = [x for s in raw["spreads"] for x in s["latencies"]]
    finds = raw["finds"]
    ok = [f for f in finds if f["success"]]
    hops = [f["hops"] for f in ok if f["hops"] is not None]
    queried = [f["queried"] for f in ok]
    lookup_s = [f["seconds"] for f in ok]
    built, started, base = sum(raw["rss_built"]), sum(raw["rss_started"]), sum(raw["rss_base"])

    def dist(values, fmt="{:.0f}"):
        if not values:
            return "n/a"
        return "/".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))

    def pct(values, scale=1000.0, unit="ms"):
        if not values:
            return "n/a"
        return (f"p50 {percentile(values, 50) * scale:.1f} {unit}, p99 {percentile(values, 99) * scale:.1f} {unit}, "
                f"max {max(values) * scale:.1f} {unit}")

    return {
        "nodes": nodes,
        "processes": raw["groups"],
        "build": f"{raw['build_seconds']:.1f} s (hosts {raw['start_seconds']:.1f} s, "
                 f"DHT joins {raw['join_seconds']:.1f} s; {raw['unsettled']} subscriptions missing)",
        "connections": f"{conns:.0f} ({ends} ends); per node min/median/max {dist(raw['connections'])}",
        "degree (distinct peers)": dist(raw["degree"]),
        "routing table": dist(raw["routing"]),
        "floodsub to all nodes": (f"{pct(full)} ({len(full)}/{len(raw['spreads'])} publications "
                                  f"reached all {nodes - 1})"),
        "floodsub per delivery": pct(every),
        "find_peer": (f"{len(ok)}/{len(finds)} found; hops min/median/max {dist(hops)}, "
                      f"peers queried {dist(queried)}, time {pct(lookup_s)}; "
                      f"{sum(f['had_temp_addrs'] for f in finds)} had a TEMP address dropped first, "
                      f"{sum(f['forgot_connected'] for f in finds)} disconnected and "
                      f"{sum(f['in_routing_table'] for f in finds)} dropped from the routing table first"),
        "rss": (f"{base / mib:.1f} MiB bare, {started / mib:.1f} MiB with hosts, "
                f"{built / mib:.1f} MiB built"),
        "memory per node": (f"{(built - base) / nodes / 1024:.0f} KiB "
                            f"(idle host {(started - base) / nodes / 1024:.0f} KiB)"),
        "memory per connection": f"{(built - started) / conns / 1024:.1f} KiB" if conns else "n/a",
    }


async def run_all(reactor, args) -> list[dict]:
    psk = None if args.no_psk else bytes.fromhex(DBC_PSK_HEX)
    out = []
    for nodes in args.nodes:
        if args.procs:
            groups = [RemoteGroup.spawn(reactor, psk, args.kad_protocol) for _ in range(args.procs)]
        else:
            groups = [LocalGroup(NodeGroup(reactor, psk, args.kad_protocol))]
        try:
            raw = await run_network(reactor, groups, nodes, publishes=args.publishes, lookups=args.lookups,
                                    join_batch=args.join_batch, seed=args.seed,
                                    progress=lambda m: print(f"  [{nodes}] {m}", file=sys.stderr, flush=True))
        finally:
            await _gather(Deferred.fromCoroutine(g.close()) for g in groups)
        summary = summarize(raw)
        out.append({"summary": summary, "raw": raw})
        print(f"\n== {nodes} nodes, {summary['processes'] or 1} process(es), "
              f"PSK {'off' if args.no_psk else 'on'}")
        for key, value in summary.items():
            if key not in ("nodes", "processes"):
                print(f"  {key:24} {value}")
        sys.stdout.flush()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="50,100", help="comma-separated network sizes [50,100]")
    parser.add_argument("--procs", type=int, default=2, help="worker processes; 0: all in this one [2]")
    parser.add_argument("--publishes", type=int, default=20)
    parser.add_argument("--lookups", type=int, default=20)
    parser.add_argument("--join-batch", type=int, default=10, help="nodes joining the DHT at once [10]")
    parser.add_argument("--no-psk", action="store_true", help="no private-network key")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    parser.add_argument("--kad-protocol", default=DEFAULT_PROTOCOL)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--psk-hex", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args.psk_hex, args.kad_protocol)
        return
    args.nodes = [int(n) for n in args.nodes.split(",") if n]

    from twisted.internet import reactor

    results = []

    async def go():
        results.extend(await run_all(reactor, args))

    def done(result):
        if reactor.running:
            reactor.stop()
        return result

    d = Deferred.fromCoroutine(go())
    d.addErrback(lambda f: (f.printTraceback(file=sys.stderr), results.append(None)))
    d.addBoth(done)
    reactor.run()
    if None in results:
        sys.exit(1)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
