"""The shared queue: PostgreSQL, so workers on several machines drain one queue.

`claim` selects the first queued row `FOR UPDATE SKIP LOCKED` inside its UPDATE, the standard
pattern for a queue table: concurrent claimers skip rows another transaction has locked instead of
waiting for it, and no two get the same job. Needs the `psycopg` package (pip install
"psycopg[binary]"); connections are per thread, in autocommit mode.
"""
from __future__ import annotations

import threading

from stablekit.errors import StablekitError
from stablekit.serve.queue.sql import EVENT_COLUMNS, EVENT_INDEXES, INDEXES, TABLE_COLUMNS, SQLQueue


def _psycopg():
    try:
        import psycopg
    except ImportError:
        raise StablekitError("a postgresql:// queue needs the psycopg package: pip install \"psycopg[binary]\"") from None
    return psycopg


class PostgresQueue(SQLQueue):
    """JobQueue in a PostgreSQL database (the jobs table is created if missing)."""

    CLAIM_LOCK = "FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str):
        self.url = url
        self._psycopg = _psycopg()
        self._local = threading.local()
        self._all: list = []
        self._lock = threading.Lock()
        # one creator at a time: CREATE TABLE IF NOT EXISTS can race between processes
        self._run("SELECT pg_advisory_lock(727274)")
        try:
            self._run(f"CREATE TABLE IF NOT EXISTS jobs (number BIGSERIAL PRIMARY KEY, {TABLE_COLUMNS})")
            self._run(f"CREATE TABLE IF NOT EXISTS events (seq BIGSERIAL PRIMARY KEY, {EVENT_COLUMNS}, body BYTEA)")
            for sql in INDEXES + EVENT_INDEXES:
                self._run(sql)
        finally:
            self._run("SELECT pg_advisory_unlock(727274)")

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            try:
                conn = self._psycopg.connect(self.url, autocommit=True)
            except self._psycopg.Error as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise StablekitError(f"cannot connect to the queue database {self.url}: {first}") from None
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _run(self, sql: str, params: tuple = ()) -> tuple[list, int]:
        with self._conn().cursor() as cur:
            cur.execute(sql.replace("?", "%s"), params)
            rows = cur.fetchall() if cur.description is not None else []
            return rows, cur.rowcount if cur.rowcount >= 0 else len(rows)

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()
