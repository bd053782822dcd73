"""The queue in SQL, shared by the SQLite and PostgreSQL backends (they differ in connections,
the id column and how `claim` locks). Statements are written with "?" placeholders; a backend
whose driver wants another style converts them in `_run`.

Order: `priority` then `number`. Normal jobs have priority 0; a `front` job gets one below the
lowest queued priority, so the latest front job runs first (ComfyUI's "front": true).
"""
from __future__ import annotations

import json
import math
import time
from typing import Iterable

from stablekit.errors import StablekitError
from stablekit.serve.jobs import FINISHED, STATUSES, Job, new_job_id
from stablekit.serve.queue.base import MAX_ATTEMPTS, JobQueue

COLUMNS = ("id", "number", "kind", "payload", "status", "created", "started", "finished", "result", "error",
           "worker", "client_id", "progress", "attempts")
SELECT = ", ".join(COLUMNS)
TABLE_COLUMNS = """
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    started DOUBLE PRECISION,
    finished DOUBLE PRECISION,
    result TEXT,
    error TEXT,
    worker TEXT,
    client_id TEXT,
    progress TEXT NOT NULL DEFAULT '{}',
    attempts INTEGER NOT NULL DEFAULT 0,
    heartbeat DOUBLE PRECISION,
    cancel INTEGER NOT NULL DEFAULT 0,
    priority BIGINT NOT NULL DEFAULT 0"""
INDEXES = ["CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, priority, number)"]
# Events that worker processes relay to servers (seq is the backend's autoincrement column).
EVENT_COLUMNS = """
    job_id TEXT,
    event TEXT NOT NULL,
    data TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL"""
EVENT_INDEXES = ["CREATE INDEX IF NOT EXISTS events_created ON events (created)"]


def _row_to_job(row) -> Job:
    d = dict(zip(COLUMNS, row))
    for key in ("payload", "result", "progress"):
        d[key] = json.loads(d[key]) if d[key] is not None else ({} if key == "progress" else None)
    return Job(**d)


def _json(value) -> str:
    # strict JSON: a NaN stored here would break every later listing that renders the job
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StablekitError(f"job data must be JSON (finite numbers, text, lists, objects): {exc}") from None


def _finite(value):
    """value with NaN and infinities as None (a diverged loss must not stop a job from reporting)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_lenient(value) -> str:
    """What a running job reports (progress, result, events): always stored, as strict JSON."""
    return json.dumps(_finite(value), default=str)


class SQLQueue(JobQueue):
    """JobQueue over a DB-API connection. Subclasses: `_run(sql, params) -> (rows, rowcount)` in
    autocommit mode, and CLAIM_LOCK (the clause that makes the claim's select skip locked rows)."""

    CLAIM_LOCK = ""

    def _run(self, sql: str, params: tuple = ()) -> tuple[list, int]:
        raise NotImplementedError

    def submit(self, kind, payload, client_id=None, front=False, job_id=None) -> Job:
        if not isinstance(kind, str) or not kind:
            raise StablekitError(f"job kind must be a name such as 'generate' (got {kind!r})")
        now = time.time()
        job_id = job_id or new_job_id()
        priority = "(SELECT COALESCE(MIN(priority), 0) - 1 FROM jobs WHERE status = 'queued')" if front else "0"
        rows, _ = self._run(
            f"INSERT INTO jobs (id, kind, payload, status, created, client_id, priority) "
            f"VALUES (?, ?, ?, 'queued', ?, ?, {priority}) RETURNING {SELECT}",
            (job_id, kind, _json(payload), now, client_id))
        return _row_to_job(rows[0])

    def get(self, job_id):
        rows, _ = self._run(f"SELECT {SELECT} FROM jobs WHERE id = ?", (str(job_id),))
        return _row_to_job(rows[0]) if rows else None

    def list(self, statuses=None, limit=None, newest_first=False):
        where, params = "", ()
        if statuses is not None:
            statuses = [statuses] if isinstance(statuses, str) else list(statuses)
            bad = [s for s in statuses if s not in STATUSES]
            if bad:
                raise StablekitError(f"unknown job status {bad[0]!r}; use one of {', '.join(STATUSES)}")
            if not statuses:
                return []
            where, params = f"WHERE status IN ({', '.join('?' * len(statuses))})", tuple(statuses)
        order = "number DESC" if newest_first else "priority, number"
        sql = f"SELECT {SELECT} FROM jobs {where} ORDER BY {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows, _ = self._run(sql, params)
        return [_row_to_job(r) for r in rows]

    def cancel(self, job_id):
        _, n = self._run("UPDATE jobs SET status = 'cancelled', finished = ? WHERE id = ? AND status = 'queued'",
                         (time.time(), job_id))
        if n:
            return True
        _, n = self._run("UPDATE jobs SET cancel = 1 WHERE id = ? AND status = 'running'", (job_id,))
        return bool(n)

    def cancel_requested(self, job_id):
        rows, _ = self._run("SELECT cancel FROM jobs WHERE id = ?", (job_id,))
        return bool(rows and rows[0][0])

    def clear_queued(self):
        _, n = self._run("UPDATE jobs SET status = 'cancelled', finished = ? WHERE status = 'queued'", (time.time(),))
        return n

    def claim(self, worker_id, kinds=None):
        where, params = "", ()
        if kinds is not None:
            kinds = list(kinds)
            if not kinds:
                return None
            where, params = f"AND kind IN ({', '.join('?' * len(kinds))})", tuple(kinds)
        now = time.time()
        rows, _ = self._run(
            f"UPDATE jobs SET status = 'running', worker = ?, started = ?, heartbeat = ?, attempts = attempts + 1, "
            f"progress = '{{}}' WHERE number = (SELECT number FROM jobs WHERE status = 'queued' {where} "
            f"ORDER BY priority, number LIMIT 1 {self.CLAIM_LOCK}) AND status = 'queued' RETURNING {SELECT}",
            (worker_id, now, now) + params)
        return _row_to_job(rows[0]) if rows else None

    def heartbeat(self, job_id, worker_id):
        rows, _ = self._run("UPDATE jobs SET heartbeat = ? WHERE id = ? AND status = 'running' AND worker = ? "
                            "RETURNING cancel", (time.time(), job_id, worker_id))
        return bool(rows) and not rows[0][0]

    def update_progress(self, job_id, progress):
        self._run("UPDATE jobs SET progress = ? WHERE id = ? AND status = 'running'", (_json_lenient(progress), job_id))

    def finish(self, job_id, status, result=None, error=None, worker_id=None):
        if status not in FINISHED:
            raise StablekitError(f"a job finishes as one of {', '.join(FINISHED)} (got {status!r})")
        owner, params = ("AND worker = ?", (worker_id,)) if worker_id is not None else ("", ())
        _, n = self._run(f"UPDATE jobs SET status = ?, result = ?, error = ?, finished = ? "
                         f"WHERE id = ? AND status = 'running' {owner}",
                         (status, _json_lenient(result) if result is not None else None, error, time.time(), job_id) + params)
        return bool(n)

    def requeue_stale(self, timeout_s, workers: Iterable[str] = ()):
        workers = list(workers)
        who = f"OR worker IN ({', '.join('?' * len(workers))})" if workers else ""
        stale = f"status = 'running' AND (heartbeat < ? {who})"
        params = (time.time() - timeout_s,) + tuple(workers)
        now = time.time()
        _, cancelled = self._run(f"UPDATE jobs SET status = 'cancelled', finished = ? WHERE {stale} AND cancel = 1",
                                 (now,) + params)
        _, failed = self._run(
            f"UPDATE jobs SET status = 'failed', finished = ?, error = ? WHERE {stale} AND attempts >= ?",
            (now, f"its worker stopped while running it, {MAX_ATTEMPTS} times; not retried again") + params
            + (MAX_ATTEMPTS,))
        _, requeued = self._run(f"UPDATE jobs SET status = 'queued', worker = NULL, started = NULL, heartbeat = NULL, "
                                f"progress = '{{}}' WHERE {stale}", params)
        return cancelled + failed + requeued

    def delete(self, job_id):
        _, n = self._run("DELETE FROM jobs WHERE id = ? AND status <> 'running'", (job_id,))
        return bool(n)

    def counts(self):
        rows, _ = self._run("SELECT status, COUNT(*) FROM jobs GROUP BY status")
        found = {s: 0 for s in STATUSES}
        found.update({s: int(n) for s, n in rows})
        return found

    # ------------------------------------------------------------------ relayed events
    def add_event(self, job_id, event, data, binary=None):
        self._run("INSERT INTO events (job_id, event, data, body, created) VALUES (?, ?, ?, ?, ?)",
                  (job_id, event, _json_lenient(data), binary, time.time()))

    def events_after(self, seq, limit=500):
        rows, _ = self._run("SELECT seq, job_id, event, data, body FROM events WHERE seq > ? ORDER BY seq "
                            f"LIMIT {int(limit)}", (int(seq),))
        return [(int(r[0]), r[1], r[2], json.loads(r[3]), bytes(r[4]) if r[4] is not None else None) for r in rows]

    def last_event_seq(self):
        rows, _ = self._run("SELECT COALESCE(MAX(seq), 0) FROM events")
        return int(rows[0][0])

    def prune_events(self, older_than_s):
        _, n = self._run("DELETE FROM events WHERE created < ?", (time.time() - older_than_s,))
        return n
