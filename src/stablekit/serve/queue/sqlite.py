"""The embedded queue: one SQLite file in WAL mode, shared by the server's threads and by
`stablekit worker` processes on the same machine.

Every statement runs in autocommit mode and is atomic on its own: `claim` is a single
UPDATE ... WHERE number = (SELECT ... LIMIT 1) AND status = 'queued' RETURNING, and SQLite holds
the database's write lock for the whole statement, so two claimers can never get the same job.
Connections are per thread (sqlite3 objects must stay in their thread); busy_timeout makes a
writer wait for another instead of failing. Committed rows survive a SIGKILL of the process.
"""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from stablekit.errors import StablekitError
from stablekit.serve.queue.sql import EVENT_COLUMNS, EVENT_INDEXES, INDEXES, TABLE_COLUMNS, SQLQueue

BUSY_TIMEOUT_MS = 30000


class SQLiteQueue(SQLQueue):
    """JobQueue in a SQLite file (created with its folder if missing)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StablekitError(f"cannot create the queue's folder {self.path.parent}: {exc.strerror}; "
                                 "give another --data-dir or --queue-url") from None
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._run("PRAGMA journal_mode=WAL")
        self._run(f"CREATE TABLE IF NOT EXISTS jobs (number INTEGER PRIMARY KEY AUTOINCREMENT, {TABLE_COLUMNS})")
        self._run(f"CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, {EVENT_COLUMNS}, "
                  "body BLOB)")
        for sql in INDEXES + EVENT_INDEXES:
            self._run(sql)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            except sqlite3.Error as exc:
                raise StablekitError(f"cannot open the queue database {self.path}: {exc}") from None
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _run(self, sql: str, params: tuple = ()) -> tuple[list, int]:
        cur = self._conn().execute(sql, params)
        rows = cur.fetchall()
        return rows, cur.rowcount if cur.rowcount >= 0 else len(rows)

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.ProgrammingError:  # made in another thread: closed when that thread's object goes
                pass
        self._local = threading.local()
