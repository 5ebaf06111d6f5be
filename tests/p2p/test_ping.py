"""ping: echo handler (split blocks, EOF, reset) and client RTTs with an injected clock."""

from itertools import count

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from aicn.p2p.ping import PING, PING_SIZE, PingError, handle_ping, ping
from aicn.p2p.stream import StreamReset

from .fakestream import StreamPair


def run(coro):
    return Deferred.fromCoroutine(coro)


def counter_bytes():
    n = count()
    return lambda size: bytes([next(n) % 256]) * size


class HandlerTests(SynchronousTestCase):
    def setUp(self):
        self.pair = StreamPair(protocol=PING)
        self.done = run(handle_ping(self.pair.b))

    def test_echo_split_blocks(self):
        a = self.pair.a
        data = bytes(range(64))
        a.write(data[:10])
        self.assertEqual(self.pair.b.bytes_written, 0)  # nothing until a whole block
        a.write(data[10:40])
        a.write(data[40:])
        self.assertEqual(self.successResultOf(a.readexactly(64)), data)
        a.close_write()
        self.successResultOf(self.done)
        self.assertTrue(self.pair.b.fin_sent)
        self.assertEqual(self.successResultOf(a.read()), b"")

    def test_partial_block_then_eof(self):
        self.pair.a.write(b"x" * 40)
        self.pair.a.close_write()
        self.successResultOf(self.done)
        self.assertEqual(self.successResultOf(self.pair.a.read()), b"x" * 32)
        self.assertEqual(self.successResultOf(self.pair.a.read()), b"")

    def test_reset_is_quiet(self):
        self.pair.a.write(b"y" * 32)
        self.pair.a.reset()
        self.assertIsNone(self.successResultOf(self.done))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_client_against_handler(self):
        rtts = self.successResultOf(run(ping(self.pair.a, Clock(), count=3)))
        self.assertEqual(rtts, [0.0, 0.0, 0.0])
        self.successResultOf(self.done)
        self.assertEqual(self.pair.b.bytes_written, 3 * PING_SIZE)


class ClientTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.pair = StreamPair(protocol=PING)

    def test_rtt_from_clock(self):
        d = run(ping(self.pair.a, self.clock, count=2, random_bytes=counter_bytes()))
        b = self.pair.b
        for delay in (0.25, 1.5):
            block = self.successResultOf(b.readexactly(PING_SIZE))
            self.clock.advance(delay)
            b.write(block[:5])
            b.write(block[5:])  # the echo may arrive split
        self.assertEqual(self.successResultOf(d), [0.25, 1.5])
        self.assertTrue(self.pair.a.fin_sent)

    def test_payload_is_random_32_bytes(self):
        run(ping(self.pair.a, self.clock))
        first = self.successResultOf(self.pair.b.readexactly(PING_SIZE))
        other = StreamPair()
        run(ping(other.a, self.clock))
        self.assertNotEqual(first, self.successResultOf(other.b.readexactly(PING_SIZE)))

    def test_mismatch(self):
        d = run(ping(self.pair.a, self.clock))
        block = self.successResultOf(self.pair.b.readexactly(PING_SIZE))
        self.pair.b.write(bytes(b ^ 1 for b in block))
        self.failureResultOf(d, PingError)
        self.assertTrue(self.pair.a.is_reset)

    def test_eof_mid_ping(self):
        d = run(ping(self.pair.a, self.clock))
        self.pair.b.write(b"z" * 3)
        self.pair.b.close_write()
        self.failureResultOf(d, PingError)

    def test_reset(self):
        d = run(ping(self.pair.a, self.clock))
        self.pair.b.reset()
        self.failureResultOf(d, StreamReset)
