"""Tests for aicn.node.requests.RequestTable."""

from __future__ import annotations

import uuid

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from aicn.errors import AICNError, ErrorCode
from aicn.wire import protocol_pb2 as pb
from aicn.node.requests import DEFAULT_TIMEOUT, RequestTable


class RequestTableTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.table = RequestTable(self.clock, {pb.CHAT_COMPLETION: 180.0})

    def test_ids_are_uuid4(self):
        ids = {self.table.new_id() for _ in range(20)}
        self.assertEqual(len(ids), 20)
        for text in ids:
            self.assertEqual(uuid.UUID(text).version, 4)
            self.assertEqual(str(uuid.UUID(text)), text)

    def test_resolve(self):
        d = self.table.add("a", "node", pb.HOST_INFO)
        self.assertIn("a", self.table)
        self.assertEqual(self.table.get("a").node_id, "node")
        self.assertTrue(self.table.resolve("a", "answer"))
        self.assertEqual(self.successResultOf(d), "answer")
        self.assertEqual(len(self.table), 0)
        self.assertFalse(self.table.resolve("a", "again"))
        # The timeout was cancelled with the entry.
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_fail(self):
        d = self.table.add("a", "node", pb.HOST_INFO)
        self.assertTrue(self.table.fail("a", AICNError(ErrorCode.DECRYPT)))
        self.assertEqual(self.failureResultOf(d, AICNError).value.code, ErrorCode.DECRYPT)
        self.assertFalse(self.table.fail("a", AICNError(ErrorCode.DECRYPT)))

    def test_timeout(self):
        d = self.table.add("a", "node", pb.HOST_INFO)
        self.clock.advance(DEFAULT_TIMEOUT - 1)
        self.assertNoResult(d)
        self.clock.advance(1)
        err = self.failureResultOf(d, AICNError).value
        self.assertEqual((err.code, err.message), (ErrorCode.TIMEOUT, "Processing timeout"))
        self.assertNotIn("a", self.table)
        self.assertEqual(self.table.timed_out, 1)
        self.assertFalse(self.table.resolve("a", "late"))

    def test_per_type_timeout(self):
        self.assertEqual(self.table.timeout_for(pb.CHAT_COMPLETION), 180.0)
        self.assertEqual(self.table.timeout_for(pb.HOST_INFO), 120.0)
        d = self.table.add("c", "node", pb.CHAT_COMPLETION)
        self.clock.advance(179)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.failureResultOf(d, AICNError)

    def test_timeout_of_one_request(self):
        d = self.table.add("c", "node", pb.CHAT_COMPLETION, timeout=2.5)
        self.clock.advance(2.4)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.failureResultOf(d, AICNError).value.code, ErrorCode.TIMEOUT)
        self.assertEqual(self.table.timeout_for(pb.CHAT_COMPLETION), 180.0)  # the type's is unchanged

    def test_cancel_removes(self):
        d = self.table.add("a", "node", pb.HOST_INFO)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertNotIn("a", self.table)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_duplicate_id(self):
        self.table.add("a", "node", pb.HOST_INFO)
        self.assertRaises(ValueError, self.table.add, "a", "node", pb.HOST_INFO)

    def test_fail_all(self):
        ds = [self.table.add(str(i), "n", pb.HOST_INFO) for i in range(3)]
        self.table.fail_all(AICNError(ErrorCode.INTERNAL))
        for d in ds:
            self.failureResultOf(d, AICNError)
        self.assertEqual(len(self.table), 0)
