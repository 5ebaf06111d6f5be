"""aicn's level filter and the App.LogFile sink."""

import os

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from aicn.log import Logger, log_to_file, parse_log_level, set_log_level


class LogTests(SynchronousTestCase):
    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.addCleanup(set_log_level, "info")

    def test_level_filter(self):
        log = Logger()
        self.assertEqual(log.namespace, __name__)
        log.debug("hidden {n}", n=1)
        log.info("shown {n}", n=2)
        set_log_level("debug")
        log.debug("now shown {n}", n=3)
        set_log_level("error")
        log.warn("hidden again")
        self.assertEqual([e["n"] for e in self.events if "n" in e], [2, 3])

    def test_level_names(self):
        self.assertEqual(parse_log_level("WARN"), parse_log_level("warning"))
        with self.assertRaises(ValueError):
            parse_log_level("loud")

    def test_log_file(self):
        path = os.path.join(self.mktemp(), "node.log")
        observer = log_to_file(path)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        Logger().info("written to the file {marker}", marker="xyzzy")
        with open(path) as f:
            self.assertIn("written to the file xyzzy", f.read())


class LogThrottleTests(SynchronousTestCase):
    def test_one_line_per_interval_and_nothing_lost(self):
        from twisted.internet.task import Clock

        from aicn.log import LogThrottle

        clock, lines = Clock(), []
        throttle = LogThrottle(clock, lines.append, interval=10.0)
        throttle.hit()
        self.assertEqual(lines, [1])  # the first at once
        for _ in range(5):
            clock.advance(1)
            throttle.hit()
        self.assertEqual(lines, [1])
        clock.advance(4.9)
        self.assertEqual(lines, [1])
        clock.advance(0.1)  # the interval ends: the five held back
        self.assertEqual(lines, [1, 5])
        clock.advance(30)
        self.assertEqual(lines, [1, 5])  # nothing new, no line
        throttle.hit()
        self.assertEqual(lines, [1, 5, 1])
        throttle.hit()
        throttle.hit()
        throttle.stop()  # shutdown reports the pending two and leaves no timer
        self.assertEqual(lines, [1, 5, 1, 2])
        self.assertEqual(clock.getDelayedCalls(), [])
