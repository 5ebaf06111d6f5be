"""bench/load.py --quick end to end (real twistd nodes and a model server), so
that the load bench does not rot.

Nothing here asserts speed: only that every phase ran, printed its figures,
and that the limits did what they are for.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

REPO = Path(__file__).resolve().parents[2]


class LoadBenchSmokeTests(SynchronousTestCase):
    def test_quick_run_prints_the_figures_with_no_errors(self):
        out_json = os.path.abspath(self.mktemp())
        proc = subprocess.run([sys.executable, str(REPO / "bench" / "load.py"), "--quick", "--json", out_json],
                              cwd=REPO, capture_output=True, text=True, timeout=240)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        lines = proc.stdout.splitlines()
        for prefix in ("(a) ", "(b) ", "    while held: ", "(c) "):
            self.assertTrue(any(line.startswith(prefix) for line in lines), proc.stdout)
        self.assertIn("errors: 0", lines)
        self.assertIn("wall", proc.stdout)
        self.assertIn("peak RSS A", proc.stdout)
        with open(out_json) as f:
            result = json.load(f)
        streams, flood, slow = result["streams"], result["flood"], result["slowloris"]
        self.assertEqual((streams["errors"], streams["chats"]), (0, 20))
        self.assertTrue(all(v > 0 for v in streams["rss_peak"].values()))
        # 150 connections against 64 pending handshakes: the rest refused at once, the
        # 64 closed by the (2 s) handshake timeout, and the established one still worked.
        self.assertEqual(flood["handshakes"], 64)
        self.assertEqual(flood["refused_at_once"], 150 - 64)
        self.assertEqual(flood["closed_by_handshake_timeout"], 64)
        self.assertEqual(flood["chat_during"], "ok")
        self.assertTrue(flood["b_connected_during"])
        self.assertEqual(flood["http_errors"], 0)
        self.assertGreater(flood["http_n"], 0)
        # Slow clients got 408 at the (1 s) header timeout; the API kept answering.
        self.assertGreater(slow["timeouts_408"], 0)
        self.assertEqual(slow["http_errors"], 0)
        self.assertGreater(slow["http_n"], 0)
