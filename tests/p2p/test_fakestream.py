"""The in-memory StreamPair behaves like a flow-controlled muxed stream."""

from twisted.trial.unittest import SynchronousTestCase

from aicn.p2p.stream import IncompleteRead, Stream, StreamClosed, StreamReset

from .fakestream import StreamPair


class FakeStreamTests(SynchronousTestCase):
    def test_is_a_stream(self):
        self.assertIsInstance(StreamPair().a, Stream)

    def test_backpressure(self):
        pair = StreamPair(window=10)
        d = pair.a.write(b"x" * 25)
        self.assertNoResult(d)
        self.assertEqual(pair.b.buffered, 10)
        self.assertEqual(self.successResultOf(pair.b.read(4)), b"xxxx")
        self.assertNoResult(d)
        self.successResultOf(pair.b.readexactly(21))  # larger than the window
        self.successResultOf(d)
        self.assertEqual(pair.b.max_buffered, 10)

    def test_eof_and_incomplete(self):
        pair = StreamPair()
        pair.a.write(b"abc")
        pair.a.close_write()
        f = self.failureResultOf(pair.b.readexactly(5), IncompleteRead)
        self.assertEqual(f.value.partial, b"abc")
        self.assertIsInstance(f.value, EOFError)
        self.assertEqual(self.successResultOf(pair.b.read()), b"")
        self.failureResultOf(pair.a.write(b"x"), StreamClosed)

    def test_reset_fails_pending(self):
        pair = StreamPair(window=4)
        blocked = pair.a.write(b"z" * 10)  # 4 bytes in b's buffer, 6 waiting
        self.assertNoResult(blocked)
        pair.a.reset()
        self.failureResultOf(blocked, StreamReset)
        self.failureResultOf(pair.b.read(), StreamReset)  # buffered data is dropped too
        self.failureResultOf(pair.a.write(b"x"), StreamReset)
        self.assertTrue(pair.b.is_reset)
