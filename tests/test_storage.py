"""The sqlite node database."""

import os
import sqlite3
import stat
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from aicn.config import AIModel, AIProject
from aicn.storage import APPLICATION_ID, SCHEMA_VERSION, Database, StorageError

DAY = 24 * 3600.0
M1 = AIModel(model="m1", api="http://127.0.0.1:1/v1", type=0)
M2 = AIModel(model="m2", api="http://127.0.0.1:2/v1", type=1, cid="c2")


class OpenTests(SynchronousTestCase):
    def setUp(self):
        self.path = Path(self.mktemp())
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def open(self):
        db = Database(self.path)
        self.addCleanup(db.close)
        return db

    def test_migrates_from_empty(self):
        db = self.open()
        self.assertEqual(db.schema_version, SCHEMA_VERSION)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        db.close()
        conn = sqlite3.connect(self.path)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            self.assertLessEqual({"registrations", "dial_history", "peers_collect", "model_history"}, tables)
            self.assertEqual(conn.execute("PRAGMA application_id").fetchone()[0], APPLICATION_ID)
            self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        finally:
            conn.close()

    def test_reopen_keeps_data(self):
        db = self.open()
        db.replace_project("p", [M1])
        db.record_success("peer", "/ip4/127.0.0.1/tcp/1", 100.0)
        db.store_heartbeat("node", [{"Project": "p"}], 4, 100.0)
        db.close()
        db = self.open()
        self.assertEqual(db.list_projects(), [AIProject("p", (M1,))])
        self.assertEqual(db.history()[0].peer_id, "peer")
        self.assertEqual(db.fresh_peers(100.0, 10)[0].projects, [{"Project": "p"}])

    def test_corrupt_file(self):
        garbage = b"this is not an sqlite database" * 200
        self.path.write_bytes(garbage)
        with self.assertRaises(StorageError) as ctx:
            Database(self.path)
        self.assertIn("unreadable or corrupt", str(ctx.exception))
        self.assertIn("left untouched", str(ctx.exception))
        self.assertEqual(self.path.read_bytes(), garbage)
        self.assertEqual(sorted(p.name for p in self.path.parent.iterdir()), [self.path.name])

    def test_damaged_header(self):
        db = self.open()
        db.replace_project("p", [M1])
        db.close()
        data = bytearray(self.path.read_bytes())
        data[:16] = b"XXXXXXXXXXXXXXXX"
        self.path.write_bytes(bytes(data))
        with self.assertRaises(StorageError):
            Database(self.path)
        self.assertEqual(self.path.read_bytes(), bytes(data))

    def test_newer_schema(self):
        self.open().close()
        conn = sqlite3.connect(self.path)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.commit()
        conn.close()
        before = self.path.read_bytes()
        with self.assertRaises(StorageError) as ctx:
            Database(self.path)
        self.assertIn(f"schema version {SCHEMA_VERSION + 1}, newer", str(ctx.exception))
        self.assertEqual(self.path.read_bytes(), before)

    def test_foreign_database(self):
        conn = sqlite3.connect(self.path)
        conn.execute("CREATE TABLE something (x)")
        conn.commit()
        conn.close()
        with self.assertRaises(StorageError) as ctx:
            Database(self.path)
        self.assertIn("not an aicn database", str(ctx.exception))

    def test_not_a_file(self):
        self.path.mkdir()
        with self.assertRaises(StorageError):
            Database(self.path)

    def test_missing_directory(self):
        with self.assertRaises(StorageError):
            Database(self.path / "nope" / "aicn.db")

    def test_closed(self):
        db = self.open()
        db.close()
        db.close()
        with self.assertRaises(StorageError):
            db.list_projects()


class APITests(SynchronousTestCase):
    def setUp(self):
        path = Path(self.mktemp())
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = Database(path)
        self.addCleanup(self.db.close)

    def test_registrations(self):
        db = self.db
        self.assertEqual(db.list_projects(), [])
        db.replace_project("a", [M1, M2])
        db.replace_project("b", [M2])
        db.replace_project("a", [M2])  # keeps its position
        self.assertEqual(db.list_projects(), [AIProject("a", (M2,)), AIProject("b", (M2,))])
        self.assertTrue(db.remove_project("a"))
        self.assertFalse(db.remove_project("a"))
        db.replace_project("c", [M1])
        db.replace_project("b", [])
        self.assertEqual(db.list_projects(), [AIProject("c", (M1,))])

    def test_failed_write_is_rolled_back(self):
        self.db.replace_project("a", [M1])
        with self.assertRaises(StorageError):
            self.db.replace_project("a", [M1, AIModel(model=None)])  # NOT NULL violation
        self.assertEqual(self.db.list_projects(), [AIProject("a", (M1,))])

    def test_dial_history(self):
        db = self.db
        self.assertIsNone(db.record_failure("unknown", 1.0))
        self.assertEqual(db.history(), [])
        db.record_success("p1", "/ip4/127.0.0.1/tcp/1", 100.0)
        db.record_success("p2", "/ip4/127.0.0.1/tcp/2", 200.0)
        self.assertEqual(db.record_failure("p1", 150.0), 1)
        self.assertEqual(db.record_failure("p1", 160.0), 2)
        rows = db.history()
        self.assertEqual([r.peer_id for r in rows], ["p2", "p1"])
        p1 = rows[1]
        self.assertEqual(
            (p1.address, p1.last_connect_time, p1.consecutive_failures, p1.last_success_time),
            ("/ip4/127.0.0.1/tcp/1", 160.0, 2, 100.0),
        )
        db.record_success("p1", "/ip4/127.0.0.1/tcp/3", 170.0)
        p1 = [r for r in db.history() if r.peer_id == "p1"][0]
        self.assertEqual((p1.address, p1.consecutive_failures, p1.last_success_time), ("/ip4/127.0.0.1/tcp/3", 0, 170.0))

    def test_prune_history(self):
        db = self.db
        db.record_success("old", "/ip4/127.0.0.1/tcp/1", 0.0)
        db.record_success("recent", "/ip4/127.0.0.1/tcp/2", 20 * DAY)
        db.record_success("few", "/ip4/127.0.0.1/tcp/3", 0.0)
        for _ in range(10):
            db.record_failure("old", 40 * DAY)
            db.record_failure("recent", 40 * DAY)
        for _ in range(9):
            db.record_failure("few", 40 * DAY)
        self.assertEqual(db.prune_history(40 * DAY), 1)
        self.assertEqual(sorted(r.peer_id for r in db.history()), ["few", "recent"])
        self.assertEqual(db.prune_history(40 * DAY), 0)
        self.assertEqual(db.prune_history(51 * DAY), 1)  # "recent" is now > 30 days old

    def test_peers_collect(self):
        db = self.db
        db.store_heartbeat("n1", [{"Project": "p", "Models": [{"Model": "m"}]}], 4, 100.0)
        db.store_heartbeat("n2", [], 1, 50.0)
        db.store_heartbeat("n1", [{"Project": "q"}], 5, 120.0)  # replaces
        fresh = db.fresh_peers(130.0, 60.0)
        self.assertEqual([(p.node_id, p.projects, p.node_type, p.received_at) for p in fresh],
                         [("n1", [{"Project": "q"}], 5, 120.0)])
        self.assertEqual([p.node_id for p in db.fresh_peers(130.0, 100.0)], ["n1", "n2"])
        self.assertEqual(db.prune_peers(130.0, 60.0), 1)
        self.assertEqual([p.node_id for p in db.fresh_peers(130.0, 1000.0)], ["n1"])
        with self.assertRaises(StorageError):
            db.store_heartbeat("n3", object(), 0, 1.0)

    def test_model_history(self):
        db = self.db
        first = db.add_model_history(timestamp=10.0, req_id="r1", project="p", model="m", payload={"a": [1]})
        second = db.add_model_history(timestamp=10.0, req_id="r2", code=1003, message="failed")
        self.assertNotEqual(first, second)  # same second does not overwrite (unlike Go's models.db)
        rows = db.model_history()
        self.assertEqual([r.req_id for r in rows], ["r2", "r1"])
        self.assertEqual(rows[1].payload, {"a": [1]})
        self.assertEqual((rows[0].code, rows[0].message, rows[0].payload), (1003, "failed", None))
        self.assertEqual(len(db.model_history(limit=1)), 1)
        self.assertEqual(db.prune_model_history(11.0), 2)
        self.assertEqual(db.model_history(), [])
