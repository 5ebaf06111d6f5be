"""A worker behind a real source NAT, reached through a relay: three
``twistd aicn`` processes in Linux network namespaces this test creates.

Topology (all addresses exist only inside the test's own namespaces; none of
them has a route to the host's networks, and the root namespace is untouched)::

    aicn-<pid>-pub                 aicn-<pid>-nat                aicn-<pid>-priv
    relay R  10.213.1.2  eth0 ---- wan 10.213.1.1                 W 10.213.2.2
    client C 10.213.1.3                 lan 10.213.2.1 ---------- eth0
                                   MASQUERADE out of wan;         default via
                                   new connections wan->lan       10.213.2.1
                                   rejected

The public segment has no route to 10.213.2.0/24 (private addresses are not
routed on the internet), so W's own address cannot be dialed from there, and
the NAT router rejects new inbound connections besides.

Each node's HTTP API listens on 127.0.0.1 inside its namespace; the test
talks to it by running a few lines of Python under ``ip netns exec`` (no
extra links between the root namespace and the test namespaces).

Needs root, ``ip netns`` (CAP_SYS_ADMIN) and ``iptables`` or ``nft``
(``tests/support/install_netns.sh`` installs them on Debian); skips otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python import log
from twisted.trial.unittest import SkipTest, TestCase

from tests.integration.nodeproc import REPO, _Collect

PUB_R = "10.213.1.2"
PUB_C = "10.213.1.3"
NAT_WAN = "10.213.1.1"
NAT_LAN = "10.213.2.1"
PRIV_W = "10.213.2.2"
P2P_PORT = 4001

# Runs inside a namespace: one HTTP request to the node's API on 127.0.0.1;
# prints the JSON body, exit status 2 when the API does not answer.
_CLIENT = """
import sys, urllib.request
method, url, body = sys.argv[1:4]
req = urllib.request.Request(url, data=body.encode() if body else None, method=method,
                             headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=20) as resp:
        sys.stdout.write(resp.read().decode())
except OSError as exc:
    sys.stderr.write(str(exc))
    sys.exit(2)
"""


def _run(*argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, input=input, timeout=20)


def _nat_tool() -> str | None:
    """``iptables`` or ``nft``, whichever is installed (iptables first)."""
    for tool in ("iptables", "nft"):
        if shutil.which(tool):
            return tool
    return None


class NetnsUnavailable(Exception):
    """The host cannot build the test network (no CAP_SYS_ADMIN, no veth or NAT support)."""


def _environment_step(what: str, *argv: str, input: str | None = None) -> None:
    """Run a step that fails only when the host lacks a capability or kernel feature."""
    try:
        _run(*argv, input=input)
    except subprocess.CalledProcessError as exc:
        raise NetnsUnavailable(f"{what} failed ({' '.join(argv[:5])} ...): {(exc.stderr or '').strip()}") from None


class Namespaces:
    """The three namespaces and their links; :meth:`destroy` undoes everything."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.names = {role: f"{prefix}-{role}" for role in ("pub", "nat", "priv")}
        self.created: list[str] = []

    def __getitem__(self, role: str) -> str:
        return self.names[role]

    def ip(self, role: str, *args: str) -> None:
        _run("ip", "-n", self.names[role], *args)

    def exec(self, role: str, *argv: str, check: bool = True, input: str | None = None):
        return _run("ip", "netns", "exec", self.names[role], *argv, check=check, input=input)

    def create(self, nat_tool: str) -> None:
        """Build the network; :class:`NetnsUnavailable` when the host cannot."""
        for role, name in self.names.items():
            # A namespace left by a crashed run of a process with our pid.
            _run("ip", "netns", "del", name, check=False)
            _environment_step("creating a network namespace", "ip", "netns", "add", name)
            self.created.append(name)
            _environment_step("configuring a link (needs CAP_NET_ADMIN)", "ip", "-n", name, "link", "set", "lo", "up")
        # veth pairs are created inside the namespaces: no interface ever
        # appears in the root namespace.
        for ns, dev, peer_ns, peer in (("pub", "eth0", "nat", "wan"), ("nat", "lan", "priv", "eth0")):
            _environment_step("creating a veth pair", "ip", "-n", self[ns], "link", "add", dev, "type", "veth",
                              "peer", "name", peer, "netns", self[peer_ns])
        for role, dev, addrs in (("pub", "eth0", (PUB_R, PUB_C)), ("nat", "wan", (NAT_WAN,)),
                                 ("nat", "lan", (NAT_LAN,)), ("priv", "eth0", (PRIV_W,))):
            for addr in addrs:
                self.ip(role, "addr", "add", f"{addr}/24", "dev", dev)
            self.ip(role, "link", "set", dev, "up")
        # The private side's only way out is the router.  The public side
        # gets no route to the private network, and no namespace a default
        # route anywhere but the router.
        self.ip("priv", "route", "add", "default", "via", NAT_LAN)
        # /proc/sys/net shows the namespace of the process that opens it.
        self.exec("nat", "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
        # Source NAT out of the router's public side; new connections from
        # the public side into the private one are rejected (as any NAT does).
        in_nat = ("ip", "netns", "exec", self["nat"])
        if nat_tool == "iptables":
            _environment_step("setting up NAT with iptables", *in_nat, "iptables", "-t", "nat", "-A", "POSTROUTING",
                              "-o", "wan", "-j", "MASQUERADE")
            _environment_step("setting up a firewall with iptables", *in_nat, "iptables", "-A", "FORWARD",
                              "-i", "wan", "-o", "lan", "-m", "conntrack", "--ctstate", "NEW", "-j", "REJECT")
        else:
            _environment_step("setting up NAT with nft", *in_nat, "nft", "-f", "-", input="""
                table ip aicn_nat {
                    chain masq { type nat hook postrouting priority srcnat; oifname "wan" masquerade; }
                    chain inbound { type filter hook forward priority filter;
                                iifname "wan" oifname "lan" ct state new reject; }
                }
            """)

    def destroy(self) -> None:
        """Kill whatever still runs in the namespaces, then delete them."""
        for name in reversed(self.created):
            pids = _run("ip", "netns", "pids", name, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ValueError, ProcessLookupError):
                    pass
            _run("ip", "netns", "del", name, check=False)
        self.created.clear()


class NetnsNode:
    """One ``twistd -n aicn`` process inside a namespace; API on its 127.0.0.1."""

    def __init__(self, ns: str, api_port: int, data_dir: str, *args: str) -> None:
        self.ns = ns
        self.api_port = api_port
        self.data_dir = os.path.abspath(data_dir)
        self.args = list(args)
        self.proto = _Collect()
        self.transport = None
        self.info: dict = {}

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        argv = ["ip", "netns", "exec", self.ns,
                sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
                "aicn", "--port", str(self.api_port), "--api-host", "127.0.0.1", "--data-dir", self.data_dir,
                *self.args]
        # ``ip netns exec`` execs the command, so signals reach twistd itself.
        self.transport = reactor.spawnProcess(self.proto, shutil.which("ip"), argv, env=env, path=str(REPO))

    async def api(self, path: str, body: dict | None = None, method: str = "POST"):
        """Call the node's API from inside its namespace; ``None`` when it does not answer."""
        out, err, code = await getProcessOutputAndValue(
            "ip", ["netns", "exec", self.ns, sys.executable, "-c", _CLIENT, method,
                   f"http://127.0.0.1:{self.api_port}{path}", json.dumps(body) if body is not None else ""],
            env=dict(os.environ))
        if code != 0:
            return None
        return json.loads(out)

    async def wait_ready(self, timeout: float = 30.0) -> dict:
        deadline = reactor.seconds() + timeout
        while reactor.seconds() < deadline:
            if self.proto.ended.called:
                raise RuntimeError(f"node in {self.ns} exited early:\n{self.output}")
            info = await self.api("/api/v0/id", method="GET")
            if info:
                self.info = info
                return info
            await deferLater(reactor, 0.2, lambda: None)
        raise RuntimeError(f"node in {self.ns} not ready in {timeout}s:\n{self.output}")

    async def stop(self) -> None:
        if self.transport is not None and not self.proto.ended.called:
            self.transport.signalProcess("TERM")
            try:
                await self.proto.ended.addTimeout(10, reactor)
            except defer.TimeoutError:
                self.transport.signalProcess("KILL")
                await self.proto.ended

    @property
    def output(self) -> str:
        return self.proto.output.decode(errors="replace")


async def eventually(check, timeout: float = 20.0, interval: float = 0.3):
    """Poll ``async check()`` until it returns a true value; return that value."""
    last = None
    deadline = reactor.seconds() + timeout
    while reactor.seconds() < deadline:
        last = await check()
        if last:
            return last
        await deferLater(reactor, interval, lambda: None)
    raise AssertionError(f"condition not reached in {timeout}s; last value {last!r}")


def _require_netns() -> str:
    """The NAT tool to use; raise SkipTest when namespaces or NAT are unavailable."""
    if not sys.platform.startswith("linux"):
        raise SkipTest("network namespaces need Linux")
    if os.geteuid() != 0:
        raise SkipTest("the NAT test needs root to create network namespaces")
    if not shutil.which("ip"):
        raise SkipTest("'ip' (iproute2) is not installed; see tests/support/install_netns.sh")
    tool = _nat_tool()
    if tool is None:
        raise SkipTest("neither iptables nor nft is installed; see tests/support/install_netns.sh")
    return tool


class NATTraversalTests(TestCase):
    timeout = 90

    def setUp(self):
        tool = _require_netns()
        self.ns = Namespaces(f"aicn-{os.getpid()}")
        self.addCleanup(self.ns.destroy)
        try:
            self.ns.create(tool)
        except NetnsUnavailable as exc:
            # Not a failure of the code under test; any other failed step is.
            raise SkipTest(f"cannot build the namespace network: {exc}")

    async def start(self, role: str, *args: str) -> NetnsNode:
        # Two nodes share the public namespace: each gets its own API port.
        self._api_port = getattr(self, "_api_port", 5000) + 1
        node = NetnsNode(self.ns[role], self._api_port, self.mktemp(), "--log-level", "debug", *args)
        # After the node stops (cleanups run last in, first out), its output
        # goes to _trial_temp/test.log for post-mortems.
        self.addCleanup(lambda: log.msg(f"--- node in {node.ns} (API port {node.api_port}):\n{node.output}"))
        node.start()
        self.addCleanup(node.stop)
        try:
            await node.wait_ready()
        except RuntimeError as exc:
            self.fail(str(exc))
        return node

    def config(self, swarm: dict) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            json.dump({"Swarm": swarm, "App": {"PeersCollect": {"HeartbeatInterval": "1s"}}}, f)
        return path

    async def start_relay(self, **swarm) -> tuple[NetnsNode, str]:
        """R on the public side: relay service, DHT server, AutoNAT service."""
        relay = await self.start("pub", "--listen", f"/ip4/{PUB_R}/tcp/{P2P_PORT}", "--relay-service",
                                 "--dht-mode", "server",
                                 "--config", self.config({"EnableAutoNATService": True, **swarm}))
        self.assertIn(f"/ip4/{PUB_R}/tcp/{P2P_PORT}", relay.info["addresses"])
        return relay, f"/ip4/{PUB_R}/tcp/{P2P_PORT}/p2p/{relay.info['peer_id']}"

    async def observed_by_relay(self, relay: NetnsNode, w_id: str) -> str:
        """W's address as R sees it: the NAT router's public address (source
        NAT happened), on a port the NAT chose."""
        async def worker_seen_by_relay():
            peers = await relay.api("/api/v0/swarm/peers") or []
            return [p["addr"] for p in peers if p["peer"] == w_id]
        (observed,) = await eventually(worker_seen_by_relay)
        self.assertTrue(observed.startswith(f"/ip4/{NAT_WAN}/tcp/"), observed)
        return observed

    async def circuit_addr(self, worker: NetnsNode) -> str:
        """W's one announced ``/p2p-circuit`` address, once it has reserved."""
        async def circuit():
            info = await worker.api("/api/v0/id", method="GET") or {}
            return [a for a in info.get("addresses", []) if a.endswith("/p2p-circuit")]
        (addr,) = await eventually(circuit)
        return addr

    @staticmethod
    def logged(node: NetnsNode, text: str):
        """An :func:`eventually` check: ``text`` is in ``node``'s output."""
        async def check():
            return text in node.output
        return check

    async def reach_through_relay(self, w_id: str, circuit_addr: str, direct: tuple[str, ...]) -> None:
        """A client on the public side fails to dial W directly, and reaches it through R."""
        # The client starts with no bootstrap peers, so that it has no
        # connection to anyone (found through the DHT, say) before it dials.
        client = await self.start("pub", "--listen", f"/ip4/{PUB_C}/tcp/{P2P_PORT}")
        self.assertEqual(await client.api("/api/v0/swarm/peers"), [])

        # Direct dials fail: the private address is not routed from the public
        # side, and the NATed address the relay observed accepts nothing.
        for addr in direct:
            answer = await client.api("/api/v0/swarm/connect", {"node_addr": f"{addr}/p2p/{w_id}"})
            self.assertNotEqual(answer["code"], 0, (addr, answer))
        self.assertEqual(await client.api("/api/v0/swarm/peers"), [])

        # Through the relay it works...
        answer = await client.api("/api/v0/swarm/connect", {"node_addr": f"{circuit_addr}/p2p/{w_id}"})
        self.assertEqual(answer["code"], 0, answer)
        peers = await client.api("/api/v0/swarm/peers")
        via = [p["addr"] for p in peers if p["peer"] == w_id]
        self.assertEqual(len(via), 1, peers)
        self.assertTrue(via[0].endswith("/p2p-circuit"), via)
        # ...and an application request reaches the worker over pubsub.
        answer = await client.api("/api/v0/peer", {"node_id": w_id})
        self.assertEqual(answer["code"], 0, answer)
        self.assertIn(circuit_addr, answer["data"]["addresses"])

    async def test_worker_behind_nat_is_reached_through_the_relay(self):
        # R serves AutoNAT as deployed relays do, but W's reachability comes
        # from its config (Swarm.RelayClient.Enabled): by default R refuses
        # to dial back non-global addresses, and both of W's (its private
        # one, the NATed one R observes) are in 10.0.0.0/8 here.  The next
        # test lets R dial them back.
        relay, relay_addr = await self.start_relay()

        # The worker listens on its private address, which nobody outside can dial.
        worker = await self.start("priv", "--listen", f"/ip4/{PRIV_W}/tcp/{P2P_PORT}", "--bootstrap", relay_addr,
                                  "--config", self.config({"RelayClient": {"Enabled": True}}))
        w_id = worker.info["peer_id"]
        w_private = f"/ip4/{PRIV_W}/tcp/{P2P_PORT}"
        self.assertIn(w_private, worker.info["addresses"])
        observed = await self.observed_by_relay(relay, w_id)

        # The worker reserves a slot on the relay and announces a circuit address.
        circuit_addr = await self.circuit_addr(worker)
        self.assertEqual(circuit_addr, f"{relay_addr}/p2p-circuit")
        await self.reach_through_relay(w_id, circuit_addr, (w_private, observed))
        # R refused the dial-back (no vote), so W never settled its reachability.
        self.assertNotIn("Reachability is now", worker.output)

    async def test_autonat_finds_the_worker_private_and_starts_its_relay_client(self):
        # R dials back private addresses (Swarm.AutoNATServiceAllowPrivate),
        # since this whole lab network is in 10.0.0.0/8; W has no relay
        # settings at all: only AutoNAT can make it reserve.
        relay, relay_addr = await self.start_relay(AutoNATServiceAllowPrivate=True)
        worker = await self.start("priv", "--listen", f"/ip4/{PRIV_W}/tcp/{P2P_PORT}", "--bootstrap", relay_addr,
                                  "--config", self.config({}))
        w_id = worker.info["peer_id"]
        w_private = f"/ip4/{PRIV_W}/tcp/{P2P_PORT}"
        observed = await self.observed_by_relay(relay, w_id)

        # W asks R; R dials back the address it observes (W's own is not on
        # the observed IP), the NAT router refuses it, and W, told
        # E_DIAL_ERROR by its only server, is private: it reserves on R.
        circuit_addr = await self.circuit_addr(worker)
        self.assertEqual(circuit_addr, f"{relay_addr}/p2p-circuit")
        # Both lines are logged before the answers that follow them; the
        # pipes may still hold them for a moment.
        await eventually(self.logged(worker, "Reachability is now private"))
        await eventually(self.logged(relay, f"E_DIAL_ERROR dial-back failed: {observed}:"))
        self.assertNotIn("Reachability is now public", worker.output)
        await self.reach_through_relay(w_id, circuit_addr, (w_private, observed))
