"""Go time.Duration parsing and formatting."""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from aicn.duration import (
    DurationError,
    format_go_duration,
    format_go_duration_ns,
    parse_go_duration,
    parse_go_duration_ns,
)

INT64 = st.integers(min_value=-(1 << 63) + 1, max_value=(1 << 63) - 1)


class FormatTests(SynchronousTestCase):
    def test_go_examples(self):
        # Expected strings are what Go's time.Duration.String() prints.
        cases = {
            0: "0s",
            0.208878448: "208.878448ms",
            90: "1m30s",
            0.0000015: "1.5µs",
            1e-9: "1ns",
            0.000999: "999µs",
            0.001: "1ms",
            1.5: "1.5s",
            20: "20s",
            60: "1m0s",
            3600: "1h0m0s",
            5400.5: "1h30m0.5s",
            -2.5: "-2.5s",
            -0.0000001: "-100ns",
        }
        for seconds, text in cases.items():
            self.assertEqual(format_go_duration(seconds), text, seconds)

    def test_rounds_to_nanoseconds(self):
        self.assertEqual(format_go_duration(0.1 + 0.2), "300ms")

    def test_int64_extremes(self):
        self.assertEqual(format_go_duration_ns((1 << 63) - 1), "2562047h47m16.854775807s")
        self.assertEqual(format_go_duration_ns(-(1 << 63)), "-2562047h47m16.854775808s")


class ParseTests(SynchronousTestCase):
    def test_examples(self):
        cases = {
            "20s": 20.0,
            "1m30s": 90.0,
            "1.5h": 5400.0,
            "300ms": 0.3,
            "0s": 0.0,
            "0": 0.0,
            "-0": 0.0,
            "+5s": 5.0,
            "-1.5s": -1.5,
            "1us": 1e-6,
            "1µs": 1e-6,
            "1μs": 1e-6,
            ".5s": 0.5,
            "1.s": 1.0,
            "1h2m3s4ms5us6ns": 3723.004005006,
        }
        for text, seconds in cases.items():
            self.assertAlmostEqual(parse_go_duration(text), seconds, places=9, msg=text)

    def test_exact_nanoseconds(self):
        self.assertEqual(parse_go_duration_ns("208.878448ms"), 208878448)
        self.assertEqual(parse_go_duration_ns("2562047h47m16.854775807s"), (1 << 63) - 1)

    def test_invalid(self):
        for text in ["", "2x", "1", "s", ".s", ".", "1h30", "-", "+", "1.2.3s", " 1s", "1s ", "1S", "1e3s"]:
            with self.assertRaises(DurationError, msg=text):
                parse_go_duration(text)

    def test_error_message(self):
        with self.assertRaises(DurationError) as ctx:
            parse_go_duration("2x")
        self.assertIn('invalid duration "2x"', str(ctx.exception))
        self.assertIn('unknown unit "x"', str(ctx.exception))

    def test_overflow(self):
        with self.assertRaises(DurationError):
            parse_go_duration("2562048h")

    def test_not_a_string(self):
        with self.assertRaises(DurationError):
            parse_go_duration(5)

    @given(INT64)
    def test_round_trip(self, ns):
        self.assertEqual(parse_go_duration_ns(format_go_duration_ns(ns)), ns)

    @given(st.text(max_size=20))
    def test_garbage_only_raises_duration_error(self, text):
        try:
            parse_go_duration_ns(text)
        except DurationError:
            pass
