"""The node's embedded database: ``aicn.db`` (sqlite3) in the data directory.

It replaces the Go node's LevelDB stores (``conns.db``, ``models.db``,
``peers_collect.db``) and its habit of rewriting the config file on every
model registration.  The schema is versioned from day one with
``PRAGMA user_version`` and an ordered list of migrations, each applied in its
own transaction; the file is marked with our ``PRAGMA application_id``.

Startup is strict: a file that cannot be read, is not an sqlite database, is
someone else's database, or comes from a newer aicn raises
:class:`StorageError` and is left exactly as it was.

All calls are short and synchronous (they run on the reactor thread; sqlite
on a local disk is fast enough for the few writes a node makes).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

from aicn.config import AIModel, AIProject

__all__ = [
    "DB_FILE",
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "StorageError",
    "DialRecord",
    "PeerRecord",
    "ModelHistoryEntry",
    "Database",
]

DB_FILE = "aicn.db"
#: ``PRAGMA application_id`` of our files: ASCII "aicn".
APPLICATION_ID = 0x6169636E
#: History entries this many failures in a row, whose last success is older
#: than :data:`HISTORY_MAX_AGE`, are pruned (as the Go node does).
HISTORY_MAX_FAILURES = 10
HISTORY_MAX_AGE = 30 * 24 * 3600.0


class StorageError(Exception):
    """The database cannot be opened or used; the message says why."""


# Each migration is a list of statements run in one transaction; migration i
# (0-based) takes the schema from version i to i + 1.  Never edit a released
# migration: append a new one.
_MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE registrations (
            project TEXT NOT NULL,
            project_order INTEGER NOT NULL,
            model_index INTEGER NOT NULL,
            model TEXT NOT NULL,
            api TEXT NOT NULL,
            type INTEGER NOT NULL DEFAULT 0,
            cid TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (project, model_index)
        )""",
        """CREATE TABLE dial_history (
            peer_id TEXT PRIMARY KEY,
            address TEXT NOT NULL,
            last_connect_time REAL NOT NULL,
            consecutive_failures INTEGER NOT NULL DEFAULT 0,
            last_success_time REAL
        )""",
        """CREATE TABLE peers_collect (
            node_id TEXT PRIMARY KEY,
            projects TEXT NOT NULL,
            node_type INTEGER NOT NULL DEFAULT 0,
            received_at REAL NOT NULL
        )""",
        "CREATE INDEX peers_collect_received_at ON peers_collect (received_at)",
        """CREATE TABLE model_history (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            timestamp REAL NOT NULL,
            req_id TEXT NOT NULL DEFAULT '',
            req_node_id TEXT NOT NULL DEFAULT '',
            res_node_id TEXT NOT NULL DEFAULT '',
            code INTEGER NOT NULL DEFAULT 0,
            message TEXT NOT NULL DEFAULT '',
            project TEXT NOT NULL DEFAULT '',
            model TEXT NOT NULL DEFAULT '',
            payload TEXT NOT NULL DEFAULT 'null'
        )""",
        "CREATE INDEX model_history_timestamp ON model_history (timestamp)",
    ],
]
#: The schema version this code writes.
SCHEMA_VERSION = len(_MIGRATIONS)


@attrs.frozen
class DialRecord:
    """One ``dial_history`` row: a peer we have been connected to."""

    peer_id: str
    address: str
    #: Last dial attempt or connection (unix seconds).
    last_connect_time: float
    consecutive_failures: int
    #: Last successful connection, or ``None``.
    last_success_time: float | None


@attrs.frozen
class PeerRecord:
    """One ``peers_collect`` row: a peer's latest heartbeat."""

    node_id: str
    #: The decoded JSON the heartbeat stored.
    projects: Any
    node_type: int
    received_at: float


@attrs.frozen
class ModelHistoryEntry:
    """One ``model_history`` row."""

    id: int
    timestamp: float
    req_id: str
    req_node_id: str
    res_node_id: str
    code: int
    message: str
    project: str
    model: str
    payload: Any


class Database:
    """The node database.  ``Database(path)`` opens (creating and migrating) it."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._conn = self._open(self.path)

    # -- opening ------------------------------------------------------------------

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        where = str(path)
        if path.exists() and not path.is_file():
            raise StorageError(f"database {where!r} is not a regular file")
        existed = path.exists()
        if existed and not os.access(path, os.R_OK | os.W_OK):
            raise StorageError(f"database {where!r} is not readable and writable by this user")
        if not existed:
            # Create it 0600 ourselves (sqlite would use 0644); an empty file
            # is a valid empty database.  The WAL files inherit this mode.
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
            except OSError as exc:
                raise StorageError(f"cannot create database {where!r}: {exc.strerror or exc}") from None
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves.
            conn = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open database {where!r}: {exc}") from None
        try:
            Database._check_and_migrate(conn, where, existed)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _check_and_migrate(conn: sqlite3.Connection, where: str, existed: bool) -> None:
        # Only reads until we know the file is ours and not from the future,
        # so that a foreign or corrupt file is never modified.
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        except sqlite3.DatabaseError as exc:
            raise StorageError(
                f"database {where!r} is unreadable or corrupt ({exc}); it was left untouched, "
                "move it away (or restore a backup) to start with an empty database"
            ) from None
        if app_id not in (0, APPLICATION_ID) or (app_id == 0 and (version != 0 or tables)):
            raise StorageError(f"{where!r} is not an aicn database (application_id {app_id}); it was left untouched")
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"database {where!r} has schema version {version}, newer than this aicn supports "
                f"({SCHEMA_VERSION}); upgrade aicn or use another data directory"
            )
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 2000")
            for index in range(version, SCHEMA_VERSION):
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _MIGRATIONS[index]:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    conn.execute(f"PRAGMA user_version = {index + 1}")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StorageError(f"cannot prepare database {where!r}: {exc}") from None

    def close(self) -> None:
        """Close the database (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        """The schema version of the open file."""
        return self._db().execute("PRAGMA user_version").fetchone()[0]

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError("database is closed")
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._db()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StorageError(f"database {str(self.path)!r}: {exc}") from None
        try:
            yield conn
        except BaseException as exc:
            conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StorageError(f"database {str(self.path)!r}: {exc}") from None
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise StorageError(f"database {str(self.path)!r}: {exc}") from None

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        try:
            return self._db().execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"database {str(self.path)!r}: {exc}") from None

    # -- registrations ------------------------------------------------------------

    def replace_project(self, project: str, models: Iterable[AIModel]) -> None:
        """Set the models registered for ``project`` (keeps the project's
        position in the list); an empty ``models`` removes the project."""
        models = list(models)
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT project_order FROM registrations WHERE project = ? LIMIT 1", (project,)
            ).fetchone()
            if row is not None:
                order = row[0]
            else:
                order = conn.execute("SELECT COALESCE(MAX(project_order), -1) + 1 FROM registrations").fetchone()[0]
            conn.execute("DELETE FROM registrations WHERE project = ?", (project,))
            conn.executemany(
                "INSERT INTO registrations (project, project_order, model_index, model, api, type, cid)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(project, order, i, m.model, m.api, int(m.type), m.cid) for i, m in enumerate(models)],
            )

    def remove_project(self, project: str) -> bool:
        """Forget ``project``; returns whether it was registered."""
        with self._transaction() as conn:
            return conn.execute("DELETE FROM registrations WHERE project = ?", (project,)).rowcount > 0

    def list_projects(self) -> list[AIProject]:
        """All registered projects, in registration order, models in their order."""
        projects: dict[str, list[AIModel]] = {}
        for project, model, api, type_, cid in self._query(
            "SELECT project, model, api, type, cid FROM registrations ORDER BY project_order, model_index"
        ):
            projects.setdefault(project, []).append(AIModel(model=model, api=api, type=type_, cid=cid))
        return [AIProject(project=name, models=tuple(models)) for name, models in projects.items()]

    # -- dial history ------------------------------------------------------------

    def record_success(self, peer_id: str, address: str, now: float) -> None:
        """A connection to ``peer_id`` at ``address`` succeeded at ``now``."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO dial_history (peer_id, address, last_connect_time, consecutive_failures,"
                " last_success_time) VALUES (?, ?, ?, 0, ?)"
                " ON CONFLICT (peer_id) DO UPDATE SET address = excluded.address,"
                " last_connect_time = excluded.last_connect_time, consecutive_failures = 0,"
                " last_success_time = excluded.last_success_time",
                (str(peer_id), str(address), float(now), float(now)),
            )

    def record_failure(self, peer_id: str, now: float) -> int | None:
        """A dial to a history peer failed; returns its new failure count, or
        ``None`` if the peer is not in the history (nothing is recorded)."""
        with self._transaction() as conn:
            row = conn.execute(
                "UPDATE dial_history SET consecutive_failures = consecutive_failures + 1,"
                " last_connect_time = ? WHERE peer_id = ? RETURNING consecutive_failures",
                (float(now), str(peer_id)),
            ).fetchone()
        return None if row is None else row[0]

    def prune_history(self, now: float) -> int:
        """Delete peers with ≥ 10 failures in a row whose last success is more
        than 30 days before ``now`` (or never); returns how many."""
        with self._transaction() as conn:
            return conn.execute(
                "DELETE FROM dial_history WHERE consecutive_failures >= ?"
                " AND (last_success_time IS NULL OR last_success_time < ?)",
                (HISTORY_MAX_FAILURES, float(now) - HISTORY_MAX_AGE),
            ).rowcount

    def history(self) -> list[DialRecord]:
        """All history peers, most recently successful first."""
        return [
            DialRecord(*row)
            for row in self._query(
                "SELECT peer_id, address, last_connect_time, consecutive_failures, last_success_time"
                " FROM dial_history ORDER BY last_success_time IS NULL, last_success_time DESC, peer_id"
            )
        ]

    # -- peers_collect -----------------------------------------------------------

    def store_heartbeat(self, node_id: str, projects: Any, node_type: int, received_at: float) -> None:
        """Store (replace) ``node_id``'s latest heartbeat; ``projects`` must be
        JSON-serialisable (e.g. a list of ``{"Project", "Models"}`` dicts)."""
        try:
            encoded = json.dumps(projects, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise StorageError(f"heartbeat projects are not JSON-serialisable: {exc}") from None
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO peers_collect (node_id, projects, node_type, received_at)"
                " VALUES (?, ?, ?, ?)",
                (str(node_id), encoded, int(node_type), float(received_at)),
            )

    def fresh_peers(self, now: float, max_age: float) -> list[PeerRecord]:
        """Heartbeats received at most ``max_age`` seconds before ``now``, newest first."""
        return [
            PeerRecord(node_id, json.loads(projects), node_type, received_at)
            for node_id, projects, node_type, received_at in self._query(
                "SELECT node_id, projects, node_type, received_at FROM peers_collect"
                " WHERE received_at >= ? ORDER BY received_at DESC, node_id",
                (float(now) - float(max_age),),
            )
        ]

    def prune_peers(self, now: float, max_age: float) -> int:
        """Delete heartbeats older than ``max_age`` seconds; returns how many."""
        with self._transaction() as conn:
            return conn.execute(
                "DELETE FROM peers_collect WHERE received_at < ?", (float(now) - float(max_age),)
            ).rowcount

    # -- model history -----------------------------------------------------------

    def add_model_history(
        self,
        *,
        timestamp: float,
        req_id: str = "",
        req_node_id: str = "",
        res_node_id: str = "",
        code: int = 0,
        message: str = "",
        project: str = "",
        model: str = "",
        payload: Any = None,
    ) -> int:
        """Record one model request/response; returns the new row id."""
        try:
            encoded = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise StorageError(f"model history payload is not JSON-serialisable: {exc}") from None
        with self._transaction() as conn:
            return conn.execute(
                "INSERT INTO model_history (timestamp, req_id, req_node_id, res_node_id, code, message,"
                " project, model, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (float(timestamp), req_id, req_node_id, res_node_id, int(code), message, project, model, encoded),
            ).lastrowid

    def model_history(self, limit: int = 100) -> list[ModelHistoryEntry]:
        """The newest ``limit`` model history entries, newest first."""
        return [
            ModelHistoryEntry(*row[:-1], json.loads(row[-1]))
            for row in self._query(
                "SELECT id, timestamp, req_id, req_node_id, res_node_id, code, message, project, model, payload"
                " FROM model_history ORDER BY timestamp DESC, id DESC LIMIT ?",
                (int(limit),),
            )
        ]

    def prune_model_history(self, before: float) -> int:
        """Delete model history entries older than ``before``; returns how many."""
        with self._transaction() as conn:
            return conn.execute("DELETE FROM model_history WHERE timestamp < ?", (float(before),)).rowcount
