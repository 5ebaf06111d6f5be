"""The OpenAI-route benchmark's measurements on two in-process nodes, so that it does not rot.

Nothing here asserts speed: only that every path answers, every stream
ends with ``[DONE]`` after exactly its events, and the report names each figure.
"""

import os

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.server import Site

from bench.openai import (
    FAST,
    MESSAGES,
    P,
    measure_concurrency,
    measure_latency,
    measure_ttft,
    percentile,
    sse_model,
    stream,
    summarize,
)
from tests.integration.modelnet import ModelNetworkCase, start_network, wait_serving


class OpenAIBenchSmokeTests(ModelNetworkCase):
    async def setup(self):
        self.nodes = await start_network(self, 2)
        self.a, self.b = self.nodes
        site = Site(sse_model(reactor))
        site.noisy = False
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        self.model_url = f"http://127.0.0.1:{port.getHost().port}/v1/chat/completions"
        await self.b.register(P, FAST, self.model_url)
        await wait_serving(self.nodes, P, FAST, [self.b.peer_id])
        self.route_url = self.a.api + "/v1/chat/completions"

    async def test_every_measurement(self):
        await self.setup()
        latency = await measure_latency(self.route_url, self.model_url, f"{P}/{FAST}", FAST, 3, warmup=1)
        ttft = await measure_ttft(reactor, self.route_url, self.model_url, f"{P}/{FAST}", FAST, 2, warmup=1)
        for table in (latency, ttft):
            self.assertEqual({k: len(v) for k, v in table.items()}, {"route": len(table["route"]),
                                                                     "direct": len(table["route"])})
            self.assertTrue(all(v > 0 for values in table.values() for v in values))
        self.assertEqual(len(latency["route"]), 3)
        conc = await measure_concurrency(reactor, self.route_url, f"{P}/{FAST}", 6, 12, 0.005,
                                         {"A": os.getpid()})
        self.assertEqual(conc["errors"], 0, conc["error_samples"])
        self.assertEqual(conc["events"], 6 * (12 + 3))
        self.assertGreaterEqual(conc["cpu_seconds"]["A"], 0)
        lines = summarize({"model": "smoke", "latency": latency, "ttft": ttft, "concurrency": conc})
        self.assertEqual(set(lines), {"model", "non-stream latency p50", "non-stream latency p99",
                                      "time to first token p50", "time to first token p99",
                                      "concurrent streams", "CPU per relayed event", "errors"})
        self.assertEqual(lines["errors"], "0 (goal 0)")
        self.assertIn("90 events", lines["concurrent streams"])
        await self.no_leaks()

    async def test_unpaced_stream_events_counted_across_chunk_boundaries(self):
        await self.setup()
        for url, model in ((self.model_url, FAST), (self.route_url, f"{P}/{FAST}")):
            result = await stream(reactor, url, {"model": model, "messages": MESSAGES, "stream": True,
                                                 "max_tokens": 500, "bench_interval": 0})
            self.assertEqual((result["status"], result["clean"], result["done"]), (200, True, True), url)
            self.assertEqual(result["events"], 503, url)

    def test_percentile_nearest_rank(self):
        values = list(range(1, 101))
        self.assertEqual((percentile(values, 50), percentile(values, 99)), (50, 99))
        self.assertEqual(percentile([3.0], 99), 3.0)
