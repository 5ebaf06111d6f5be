"""bench/fuzz.py end to end on a few targets and few cases, so that the long fuzz run does not rot.

Nothing here asserts speed: only that each target ran its cases in its own process with
0 crashes and the figures came out (what counts as a crash: tests.fuzz.test_harness).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

REPO = Path(__file__).resolve().parents[2]


class FuzzBenchSmokeTests(SynchronousTestCase):
    def run_bench(self, *args):
        out_json = os.path.abspath(self.mktemp())
        crashes = os.path.abspath(self.mktemp())
        proc = subprocess.run([sys.executable, str(REPO / "bench" / "fuzz.py"), "--engine", "mutate",
                               "--json", out_json, "--crashes", crashes, *args],
                              cwd=REPO, capture_output=True, text=True, timeout=240)
        with open(out_json) as f:
            return proc, json.load(f), Path(crashes)

    def test_mutator_run_prints_the_figures_with_no_crashes(self):
        proc, result, crashes = self.run_bench("--cases", "300", "--targets", "varint,yamux_session,api_json")
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertEqual([t["target"] for t in result["targets"]], ["varint", "yamux_session", "api_json"])
        for t in result["targets"]:
            self.assertEqual((t["cases"], t["crashes"], t["engine"]), (300, 0, "mutate"), t)
            self.assertGreater(t["peak_rss_kib"], 0)
            self.assertGreater(t["max_case_alloc"], 0)  # two cases of 300 ran under tracemalloc
        self.assertIn("total: 3 targets, 900 cases, 0 crashes", proc.stdout)
        self.assertEqual(list(crashes.iterdir()), [])

    def test_list(self):
        proc = subprocess.run([sys.executable, str(REPO / "bench" / "fuzz.py"), "--list"], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        for name in ("multistream", "noise_payload", "yamux_frames", "identify", "kad", "pubsub", "relay",
                     "autonat", "envelope", "chatproxy_request", "api_json"):
            self.assertIn(name, proc.stdout)
