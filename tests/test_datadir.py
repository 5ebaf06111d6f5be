"""The data directory's lock, alone and as NodeService holds it."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from aicn.config import Config, resolve_settings
from aicn.datadir import LOCK_FILE, DataDirLock, DataDirLockError
from aicn.service import NodeService, StartupError


class DataDirLockTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.dir = Path(self.mktemp())
        self.dir.mkdir()

    def test_exclusive_with_the_holders_pid_in_the_message(self):
        first = DataDirLock(self.dir).acquire()
        self.addCleanup(first.release)
        self.assertTrue(first.held)
        self.assertEqual((self.dir / LOCK_FILE).read_text(), f"{os.getpid()}\n")
        # flock locks belong to the open file: a second one fails in this process too.
        with self.assertRaises(DataDirLockError) as cm:
            DataDirLock(self.dir).acquire()
        message = str(cm.exception)
        self.assertIn(f"pid {os.getpid()}", message)
        self.assertIn(str(self.dir / LOCK_FILE), message)
        self.assertIn("in use by another aicn process", message)

    def test_release_lets_the_next_one_in(self):
        with DataDirLock(self.dir) as lock:
            self.assertTrue(lock.held)
        self.assertFalse(lock.held)
        self.assertEqual((self.dir / LOCK_FILE).read_text(), "")  # no stale pid
        again = DataDirLock(self.dir).acquire()
        self.assertTrue(again.held)
        again.release()
        again.release()  # idempotent

    def test_missing_directory_is_a_clear_error(self):
        with self.assertRaises(DataDirLockError) as cm:
            DataDirLock(self.dir / "missing").acquire()
        self.assertIn("cannot open lock file", str(cm.exception))


class NodeServiceLockTests(unittest.SynchronousTestCase):
    def settings(self, data_dir):
        return resolve_settings(Config(), {"data_dir": data_dir, "listen": ["/ip4/127.0.0.1/tcp/4001"],
                                           "port": 6000, "psk": "none", "log_level": "warn"})

    def test_a_second_node_on_one_directory_cannot_start_until_the_first_stops(self):
        data_dir = self.mktemp()
        reactor = MemoryReactorClock()
        first = NodeService(self.settings(data_dir), reactor)
        with self.assertRaises(StartupError) as cm:
            NodeService(self.settings(data_dir), reactor)
        self.assertIn(f"pid {os.getpid()}", str(cm.exception))
        self.assertIn(LOCK_FILE, str(cm.exception))
        first.startService()
        stopped = first.stopService()
        reactor.advance(60)
        self.successResultOf(stopped)
        self.assertFalse(first.lock.held)
        second = NodeService(self.settings(data_dir), reactor)
        self.assertTrue(second.lock.held)
        self.assertEqual(second.key.peer_id(), first.key.peer_id())
        second.lock.release()
        second.db.close()
