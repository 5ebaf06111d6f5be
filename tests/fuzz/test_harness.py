"""The fuzz harness itself: what it calls a crash, and that the mutator is deterministic."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from aicn.log import Logger
from tests.fuzz.harness import FAILED, Hang, LoggedFailure, Target, attempt, check, drive, halves, stream_with
from tests.fuzz.mutate import Mutator
from tests.fuzz.targets import TARGETS, seeds

log = Logger()


def target(run) -> Target:
    return Target("test", run, (), lambda: [b""], "a test target")


class CheckTests(SynchronousTestCase):
    def test_documented_errors_are_swallowed_by_the_target_anything_else_is_a_crash(self):
        def run(data):
            attempt(KeyError, {}.__getitem__, data)
            if data == b"bad":
                int("x")

        self.assertIsNone(check(target(run), b"fine"))
        self.assertIsInstance(check(target(run), b"bad"), ValueError)

    def test_a_logged_failure_is_a_crash(self):
        def run(data):
            try:
                1 / 0
            except ZeroDivisionError:
                log.failure("swallowed")

        crash = check(target(run), b"")
        self.assertIsInstance(crash, LoggedFailure)
        self.assertIn("ZeroDivisionError", str(crash))
        self.flushLoggedErrors(ZeroDivisionError)

    def test_a_read_that_never_ends_is_a_hang(self):
        async def exact(data):
            await stream_with(data).readexactly(len(data))  # the input and FIN: this ends
            await stream_with(data).read(1)  # so does this (b"" at the FIN)

        async def forever(data):
            await exact(data)
            await Deferred()

        self.assertIsNone(check(target(lambda data: drive(exact(data))), b"x"))
        self.assertIsInstance(check(target(lambda data: drive(forever(data))), b"x"), Hang)

    def test_helpers(self):
        self.assertIs(attempt(ValueError, int, "x"), FAILED)
        for data in (b"", b"a", b"abcdef" * 10):
            first, second = halves(data)
            self.assertEqual(first + second, data)
            self.assertEqual(halves(data), [first, second])  # a function of the data


class MutatorTests(SynchronousTestCase):
    def test_deterministic_bounded_and_varied(self):
        corpus = seeds(TARGETS["kad"])
        def run(seed):
            mutator = Mutator(corpus, max_len=300, seed=seed)
            return [mutator.next() for _ in range(200)]

        first = run(7)
        self.assertEqual(first, run(7))
        self.assertNotEqual(first, run(8))
        self.assertTrue(all(len(m) <= 300 for m in first))
        self.assertGreater(len(set(first)), 150)
        self.assertFalse(set(first) & set(corpus))

    def test_every_target_has_seeds_that_do_not_crash(self):
        for name, t in TARGETS.items():
            self.assertTrue(seeds(t), name)
            for seed in seeds(t):
                self.assertIsNone(check(t, seed), (name, seed[:100]))
