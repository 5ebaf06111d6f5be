"""The components' own counters and histograms (aicn/stats.py)."""

from __future__ import annotations

import math

from twisted.trial import unittest

from aicn.stats import OTHER, Histogram, LabelledCounter, LabelledHistogram


class HistogramTests(unittest.TestCase):
    def test_values_land_in_the_first_bucket_at_or_above_them(self):
        h = Histogram((0.1, 1.0))
        for value in (0.05, 0.1, 0.5, 5.0):
            h.observe(value)
        self.assertEqual(h.cumulative(), [(0.1, 2), (1.0, 3), (math.inf, 4)])
        self.assertEqual(h.count, 4)
        self.assertAlmostEqual(h.sum, 5.65)

    def test_nonsense_values_are_ignored(self):
        h = Histogram((1.0,))
        for value in (-1.0, math.nan, math.inf):
            h.observe(value)
        self.assertEqual((h.count, h.sum, h.cumulative()), (0, 0.0, [(1.0, 0), (math.inf, 0)]))


class LabelledTests(unittest.TestCase):
    def test_counter_series_are_bounded(self):
        c = LabelledCounter(("node", "code"), max_series=2)
        c.inc("a", 0)
        c.inc("b", 0)
        c.inc("c", 0)
        c.inc("a", 0, amount=2)
        self.assertEqual(dict(c.items()), {("a", "0"): 3, ("b", "0"): 1, (OTHER, OTHER): 1})
        self.assertEqual(c.total(), 5)
        self.assertEqual(c.get("a", "0"), 3)
        with self.assertRaises(ValueError):
            c.inc("a")

    def test_histogram_series_are_bounded(self):
        h = LabelledHistogram(("kind",), (1.0,), max_series=1)
        h.observe("chat", value=0.5)
        h.observe("image", value=2.0)
        self.assertEqual(h.get("chat").count, 1)
        self.assertEqual(h.get(OTHER).cumulative(), [(1.0, 0), (math.inf, 1)])
        self.assertIsNone(h.get("image"))
