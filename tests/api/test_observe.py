"""Observability on real in-process nodes (loopback): Prometheus metrics,
health endpoints, the dashboard's state and files, and the dashboard in a
real headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from aicn.api import dashboard
from aicn.config import load_settings
from aicn.node.envelope import build_heartbeat
from aicn.service import NodeService
from tests.integration.modelnet import InProcessNode, chat, eventually, start_fake_chat_model
from tests.integration.nodeproc import free_port

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"
P = "DecentralGPT"


async def start_node(test, swarm=None, **options) -> InProcessNode:
    """A NodeService in this process on loopback, with a 1 s heartbeat; ``options`` as twistd's,
    ``swarm`` the config file's ``Swarm`` section."""
    data_dir = os.path.abspath(test.mktemp())
    os.makedirs(data_dir)
    config = os.path.join(data_dir, "config.json")
    with open(config, "w") as f:
        json.dump({"App": {"PeersCollect": {"HeartbeatInterval": "1s"}}, **({"Swarm": swarm} if swarm else {})}, f)
    opts = {"config": config, "listen": ["/ip4/127.0.0.1/tcp/0"], "port": 0, "data_dir": data_dir,
            "log_level": "warn"}
    opts.update(options)
    service = NodeService(load_settings(opts), reactor)
    node = InProcessNode(service)
    service.startService()
    test.addCleanup(node.stop)
    await service.ready
    return node


async def get(node: InProcessNode, path: str, headers=None):
    """``(response, body bytes)`` of a GET."""
    resp = await treq.get(node.api + path, persistent=False, headers=headers)
    return resp, await resp.content()


async def scrape(node: InProcessNode, path: str = "/metrics") -> dict:
    """The node's metrics: family name -> family (parsed by prometheus_client's own parser)."""
    resp, body = await get(node, path)
    assert resp.code == 200, (resp.code, body)
    return {f.name: f for f in text_string_to_metric_families(body.decode("utf-8"))}


def value(families: dict, family: str, sample: str | None = None, **labels) -> float:
    """The sum of the samples of ``family`` named ``sample`` (default: the family's,
    ``…_total`` for a counter) whose labels include ``labels``."""
    if sample is None:
        sample = family + "_total" if families[family].type == "counter" else family
    return sum(s.value for s in families[family].samples
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


def readme_metrics() -> set[str]:
    """The metric families the README's metrics table names (``{a,b}`` expanded; a counter
    as its family, without ``_total``), ``process_*`` left out."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("| metric | type | labels |", 1)[1].split("\n\n", 1)[0]
    names = set()
    for row in table.splitlines()[2:]:
        for cell in re.findall(r"`(aicn_[^`]+)`", row.split("|")[1]):
            match = re.fullmatch(r"(.*)\{([^}]*)\}(.*)", cell)
            for name in ([match[1] + part + match[3] for part in match[2].split(",")] if match else [cell]):
                names.add(name[: -len("_total")] if name.endswith("_total") else name)
    return names


class MetricsTests(TestCase):
    timeout = 60

    async def test_metrics_parse_and_move_as_peers_connect_and_requests_flow(self):
        a = await start_node(self, collector=True, dht_mode="server", api_token=TOKEN)
        resp, body = await get(a, "/metrics")
        self.assertEqual(resp.headers.getRawHeaders(b"content-type"),
                         [b"text/plain; version=0.0.4; charset=utf-8"])
        before = {f.name: f for f in text_string_to_metric_families(body.decode())}
        # Read-only like the other GETs: no token needed (a mutation without it is refused).
        register = await treq.post(a.api + "/api/v0/ai/project/register", json.dumps({}).encode(),
                                   persistent=False)
        self.assertEqual(register.code, 401)
        await register.content()

        info = before["aicn_info"].samples[0]
        self.assertEqual(info.labels["peer_id"], a.peer_id)
        self.assertEqual(value(before, "aicn_connections_opened"), 0)
        self.assertEqual(value(before, "aicn_connections"), 0)
        self.assertGreater(value(before, "process_resident_memory_bytes"), 1e6)
        self.assertIn("process_cpu_seconds", before)
        self.assertEqual(value(before, "aicn_autonat_reachability", state="unknown"), 1)
        self.assertEqual(before["aicn_model_request_duration_seconds"].type, "histogram")

        # A peer connects: the connection, stream and pubsub counters move.
        b = await start_node(self, bootstrap=[a.p2p_addr])
        model = await start_fake_chat_model(self)
        await b.register(P, model.model, model.url)

        async def b_heard():
            families = await scrape(a)
            # Our own heartbeat counts too: A and B.
            return families if value(families, "aicn_heartbeats_fresh") >= 2 else None

        after = await eventually(b_heard)
        self.assertEqual(value(after, "aicn_connections", direction="inbound", transport="direct"), 1)
        self.assertGreaterEqual(value(after, "aicn_connections_opened",
                                      direction="inbound", transport="direct"), 1)
        self.assertGreater(value(after, "aicn_streams_opened"), 0)
        self.assertGreater(value(after, "aicn_streams", protocol="/floodsub/1.0.0"), 0)
        self.assertGreater(value(after, "aicn_pubsub_messages_received"), 0)
        self.assertGreater(value(after, "aicn_pubsub_messages_published"), 0)
        self.assertEqual(value(after, "aicn_pubsub_messages_dropped", reason="spoof"), 0)
        self.assertGreaterEqual(value(after, "aicn_peers_known"), 1)
        self.assertEqual(value(after, "aicn_pubsub_topic_peers"), 1)

        # B publishes a heartbeat in another node's name: A drops it as a spoof.
        absent = "16Uiu2HAmS4CErxrmPryJbbEX2HFQbLK8r8xCA5rmzdSU59rHc9AF"
        forged = build_heartbeat(client_version="x", timestamp=0, node_id=absent, projects=[(P, ["fake"])])
        await b.service.pubsub.publish("DeepBrainChain", forged.SerializeToString())

        async def dropped():
            families = await scrape(a)
            return value(families, "aicn_pubsub_messages_dropped", layer="application", reason="spoof")

        self.assertEqual(await eventually(dropped), 1)

        # Model requests from A: one answered by B, one to a node that is not there.
        _, answer = await a.call("/api/v0/chat/completion", chat(b.peer_id, model.model))
        self.assertEqual(answer["code"], 0, answer)
        _, failed = await a.call("/api/v0/chat/completion", chat(absent, model.model))
        self.assertEqual(failed["code"], 1005, failed)
        _, proxied = await a.call("/api/v0/chat/completion/proxy", chat(None, model.model))
        self.assertEqual(proxied["code"], 0, proxied)

        final = await scrape(a, "/api/v0/debug/metrics/prometheus")
        requests = "aicn_model_requests"
        self.assertEqual(value(final, requests, kind="chat", route="direct", code="0", node=b.peer_id), 1)
        self.assertEqual(value(final, requests, kind="chat", route="direct", code="1005", node=absent), 1)
        self.assertEqual(value(final, requests, kind="chat", route="proxy", code="0", node=b.peer_id), 1)
        duration = "aicn_model_request_duration_seconds"
        self.assertEqual(value(final, duration, duration + "_count", kind="chat", route="direct"), 2)
        self.assertEqual(value(final, duration, duration + "_bucket", kind="chat", route="direct",
                               le="+Inf"), 2)
        ttfb = "aicn_model_request_ttfb_seconds"
        self.assertEqual(value(final, ttfb, ttfb + "_count", kind="chat", route="direct"), 1)
        self.assertGreater(value(final, ttfb, ttfb + "_sum", kind="chat", route="direct"), 0)
        self.assertEqual(value(final, "aicn_model_requests_in_flight"), 0)
        b_metrics = await scrape(b)
        # B answered the direct and the proxied request over pubsub.
        self.assertEqual(value(b_metrics, "aicn_app_requests_answered"), 2)
        self.assertEqual(value(b_metrics, "aicn_connections", direction="outbound", transport="direct"), 1)
        self.assertEqual(value(b_metrics, "aicn_app_registered_models"), 1)

        # Each call started and ended on B's model: B announced the change of `idle` (coalesced).
        async def announced():
            families = await scrape(b)
            return value(families, "aicn_app_load_heartbeats") >= 1
        await eventually(announced)

    async def test_the_readme_table_names_every_metric_a_node_exposes(self):
        documented = readme_metrics()
        self.assertGreater(len(documented), 30)
        # With the relay and AutoNAT services on, whose metrics exist only then.
        node = await start_node(self, swarm={"RelayService": {"Enabled": True}, "EnableAutoNATService": True})
        exposed = {name for name in await scrape(node)
                   if not name.startswith(("process_", "python_"))}
        self.assertEqual(sorted(exposed - documented), [], "exposed, not in the README's table")
        self.assertEqual(sorted(documented - exposed), [], "in the README's table, not exposed")

    async def test_each_node_has_its_own_registry(self):
        a = await start_node(self)
        b = await start_node(self)
        ids = set()
        for node in (a, b):
            families = await scrape(node)
            ids.add(families["aicn_info"].samples[0].labels["peer_id"])
            self.assertEqual(len(families["aicn_info"].samples), 1)
        self.assertEqual(ids, {a.peer_id, b.peer_id})


class HealthTests(TestCase):
    timeout = 60

    async def test_liveliness_and_readiness_without_bootstrap(self):
        node = await start_node(self)
        resp, body = await get(node, "/health/liveliness")
        self.assertEqual((resp.code, json.loads(body)), (200, {"status": "ok"}))
        resp, body = await get(node, "/health/readiness")
        self.assertEqual(resp.code, 200, body)
        report = json.loads(body)
        self.assertEqual(report["status"], "ready")
        self.assertEqual([c["name"] for c in report["checks"]], ["listening", "database", "peers"])
        self.assertTrue(all(c["state"] == "ok" for c in report["checks"]), report)

    async def test_readiness_is_503_with_a_bootstrap_and_no_peer_then_200_once_one_connects(self):
        other = await start_node(self)
        dead = f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/16Uiu2HAmS4CErxrmPryJbbEX2HFQbLK8r8xCA5rmzdSU59rHc9AF"
        node = await start_node(self, bootstrap=[dead])
        resp, body = await get(node, "/health/readiness")
        self.assertEqual(resp.code, 503, body)
        report = json.loads(body)
        self.assertEqual(report["status"], "not ready")
        states = {c["name"]: c["state"] for c in report["checks"]}
        self.assertEqual(states, {"listening": "ok", "database": "ok", "peers": "failing"})
        self.assertIn("0 connected peers", [c for c in report["checks"] if c["name"] == "peers"][0]["detail"])
        # Liveliness does not care.
        resp, _ = await get(node, "/health/liveliness")
        self.assertEqual(resp.code, 200)

        _, connected = await node.call("/api/v0/swarm/connect", {"node_addr": other.p2p_addr})
        self.assertEqual(connected["code"], 0, connected)
        resp, body = await get(node, "/health/readiness")
        self.assertEqual(resp.code, 200, body)
        self.assertEqual(json.loads(body)["status"], "ready")

    async def test_readiness_fails_when_the_database_is_closed(self):
        node = await start_node(self)
        node.service.db.close()
        resp, body = await get(node, "/health/readiness")
        self.assertEqual(resp.code, 503)
        database = [c for c in json.loads(body)["checks"] if c["name"] == "database"][0]
        self.assertEqual(database["state"], "failing")
        self.assertIn("closed", database["detail"])


class DashboardTests(TestCase):
    timeout = 60

    async def test_state_names_the_node_its_peers_and_the_models(self):
        a = await start_node(self, collector=True)
        b = await start_node(self, bootstrap=[a.p2p_addr])
        model = await start_fake_chat_model(self)
        await b.register(P, model.model, model.url)

        async def serving():
            resp, body = await get(a, "/api/v0/debug/state")
            state = json.loads(body)
            return state if any(s["node_id"] == b.peer_id for s in state["serving"]) else None

        state = await eventually(serving)
        self.assertEqual(state["node"]["peer_id"], a.peer_id)
        self.assertTrue(state["node"]["addresses"])
        self.assertEqual(state["node"]["reachability"], "unknown")
        [peer] = state["peers"]
        self.assertEqual((peer["peer"], peer["direction"], peer["relayed"]), (b.peer_id, "inbound", False))
        [entry] = [s for s in state["serving"] if s["node_id"] == b.peer_id]
        self.assertEqual((entry["project"], entry["model"], entry["local"]), (P, model.model, False))
        self.assertLess(entry["heartbeat_age"], 60)
        # The model's API URL is B's business: it never appears in A's state.
        self.assertNotIn(model.url, json.dumps(state))
        _, own = await get(b, "/api/v0/debug/state")
        self.assertEqual(json.loads(own)["node"]["projects"], [{"project": P, "models": [model.model]}])

    async def test_dashboard_files_are_served_with_a_strict_csp(self):
        node = await start_node(self)
        resp, body = await get(node, "/")
        self.assertEqual(resp.code, 200)
        self.assertEqual(resp.headers.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"])
        csp = resp.headers.getRawHeaders(b"content-security-policy")[0].decode()
        self.assertTrue(csp.startswith("default-src 'self'"), csp)
        self.assertNotIn("unsafe", csp)
        self.assertIn(b'src="/dashboard/dashboard.js"', body)
        self.assertNotIn(b"<style", body)
        self.assertNotIn(b"style=", body)
        self.assertNotIn(b"http://", body.replace(b"http://www.w3.org", b""))
        for name, content_type in dashboard.FILES.items():
            resp, content = await get(node, "/dashboard/" + name)
            self.assertEqual(resp.code, 200, name)
            self.assertEqual(resp.headers.getRawHeaders(b"content-type"), [content_type.encode()])
            self.assertEqual(content, dashboard.read(name))
        resp, body = await get(node, "/dashboard/..%2Fapp.py")
        self.assertEqual(resp.code, 404)
        self.assertEqual(json.loads(body)["code"], 1010)

    def test_static_files_are_package_data(self):
        for name in dashboard.FILES:
            self.assertTrue(resources.files("aicn.api").joinpath("static", name).is_file(), name)
        # And setup.py ships them: build the package from a copy of the tree and look.
        src = Path(self.mktemp()).resolve()
        shutil.copytree(ROOT / "aicn", src / "aicn", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(ROOT / "twisted", src / "twisted",
                        ignore=shutil.ignore_patterns("__pycache__", "*.cache"))
        for name in ("setup.py", "README.md"):
            shutil.copy(ROOT / name, src / name)
        out = src / "build-lib"
        subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(out)], cwd=src,
                       check=True, capture_output=True)
        for name in dashboard.FILES:
            self.assertTrue((out / "aicn" / "api" / "static" / name).is_file(), name)


# -- the dashboard in a real browser --------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def browser_skip_reason() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return (f"{path} is missing: run tests/support/install_chromium.sh "
                    "(Debian packages chromium, chromium-driver)")
    return None


def browse(url: str, profile: str, expect_id: str, expect_model: str) -> dict:
    """Open ``url`` in headless Chromium until the page shows ``expect_id`` and
    ``expect_model``; return what it showed and the browser's console log.
    Blocking: run it in a thread, the node under test serves from the reactor."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(20)
        driver.get(url)
        wait = WebDriverWait(driver, 20)
        wait.until(lambda d: d.find_element(By.ID, "peer-id").text == expect_id)
        wait.until(lambda d: expect_model in d.find_element(By.ID, "serving-rows").text)
        return {
            "title": driver.title,
            "peer_id": driver.find_element(By.ID, "peer-id").text,
            "serving": driver.find_element(By.ID, "serving-rows").text,
            "status": driver.find_element(By.ID, "status-line").text,
            "addresses": driver.find_element(By.ID, "addresses").text,
            "log": driver.get_log("browser"),
        }
    finally:
        driver.quit()


class BrowserTests(TestCase):
    timeout = 120

    async def test_dashboard_shows_the_node_and_its_model_without_console_errors(self):
        reason = browser_skip_reason()
        if reason:
            raise SkipTest(reason)
        node = await start_node(self)
        await node.register(P, "tiny-dashboard-model", "http://127.0.0.1:9/v1/chat/completions")
        profile = os.path.abspath(self.mktemp())
        os.makedirs(profile)
        page = await deferToThread(browse, node.api + "/", profile, node.peer_id, "tiny-dashboard-model")
        self.assertEqual(page["title"], "aicn node")
        self.assertEqual(page["peer_id"], node.peer_id)
        self.assertIn(P, page["serving"])
        self.assertIn("this node", page["serving"])
        self.assertIn("/ip4/127.0.0.1/tcp/", page["addresses"])
        self.assertTrue(page["status"].startswith("updated"), page["status"])
        errors = [entry for entry in page["log"] if entry.get("level") in ("SEVERE", "WARNING")]
        self.assertEqual(errors, [])
