"""perf: byte counts, split header, EOF before the header, unlimited download, back-pressure."""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from aicn.p2p import perf as perf_mod
from aicn.p2p.perf import BLOCK_SIZE, PERF, PerfError, handle_perf, perf

from .fakestream import StreamPair


def run(coro):
    return Deferred.fromCoroutine(coro)


class PerfTests(SynchronousTestCase):
    def setUp(self):
        # A window far below the transfer sizes, so every write waits for the reader.
        self.pair = StreamPair(window=20000, protocol=PERF)
        self.served = run(handle_perf(self.pair.b))

    def test_round_trip_counts(self):
        res = self.successResultOf(run(perf(self.pair.a, 200_001, 300_003, Clock())))
        self.successResultOf(self.served)
        self.assertEqual((res.upload_bytes, res.download_bytes), (200_001, 300_003))
        self.assertEqual(self.pair.a.bytes_written, 8 + 200_001)
        self.assertEqual(self.pair.b.bytes_written, 300_003)
        self.assertLessEqual(self.pair.a.max_buffered, 20000)
        self.assertLessEqual(self.pair.b.max_buffered, 20000)
        self.assertTrue(self.pair.b.fin_sent)
        # 64 KiB blocks: 5 server writes for 300003 bytes.
        self.assertEqual(self.pair.b.write_calls, 5)

    def test_zero_zero(self):
        res = self.successResultOf(run(perf(self.pair.a, 0, 0, Clock())))
        self.assertEqual((res.upload_bytes, res.download_bytes), (0, 0))
        self.assertEqual(self.pair.a.bytes_written, 8)

    def test_header_in_one_write(self):
        run(perf(self.pair.a, 10, 5, Clock()))
        # The first thing b's reader saw was one 8-byte write (js reads N from the first chunk).
        self.assertEqual(self.pair.a.write_calls, 2)

    def test_split_header(self):
        a = self.pair.a
        for part in (b"\x00\x00\x00", b"\x00\x00", b"\x00\x01\x02"):
            a.write(part)
        a.write(b"u" * 1000)
        self.assertEqual(self.pair.b.bytes_written, 0)  # nothing before the upload ends
        a.close_write()
        got = bytearray()
        while chunk := self.successResultOf(a.read()):
            got += chunk
        self.assertEqual(got, bytes(0x102))
        self.successResultOf(self.served)

    def test_eof_before_header(self):
        self.pair.a.write(b"\x00\x00\x00")
        self.pair.a.close_write()
        self.successResultOf(self.served)
        self.assertTrue(self.pair.a.is_reset)

    def test_unlimited_until_reset(self):
        a = self.pair.a
        a.write((2**64 - 1).to_bytes(8, "big"))
        a.close_write()
        total = 0
        while total < 10 * BLOCK_SIZE:
            total += len(self.successResultOf(a.read()))
        a.reset()
        self.successResultOf(self.served)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertLess(self.pair.b.bytes_written, 10 * BLOCK_SIZE + 20000 + BLOCK_SIZE)

    def test_unlimited_cap(self):
        pair = StreamPair()
        served = run(handle_perf(pair.b, unlimited_cap=100_000))
        pair.a.write((2**53).to_bytes(8, "big"))
        pair.a.close_write()
        self.successResultOf(served)
        self.assertEqual(pair.b.bytes_written, 100_000)

    def test_short_download(self):
        pair = StreamPair()
        d = run(perf(pair.a, 0, 100, Clock()))
        self.successResultOf(pair.b.readexactly(8))
        pair.b.write(b"x" * 99)
        pair.b.close_write()
        self.failureResultOf(d, PerfError)

    def test_timing(self):
        clock = Clock()
        pair = StreamPair()
        d = run(perf(pair.a, 10, 20, clock))
        self.successResultOf(pair.b.readexactly(18))
        clock.advance(2)
        pair.b.write(b"x" * 20)
        pair.b.close_write()
        res = self.successResultOf(d)
        self.assertEqual((res.upload_seconds, res.download_seconds, res.total_seconds), (0, 2, 2))

    def test_bad_arguments(self):
        self.failureResultOf(run(perf(self.pair.a, 0, perf_mod.UNLIMITED, Clock())), ValueError)
        self.failureResultOf(run(perf(self.pair.a, -1, 0, Clock())), ValueError)
        self.assertEqual(self.pair.a.write_calls, 0)
