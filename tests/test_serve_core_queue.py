"""The job queue's semantics, on SQLite and on a real PostgreSQL server the tests start."""
from __future__ import annotations

import threading
import time

import pytest
from serve_fixtures import Postgres

from stablekit.errors import StablekitError
from stablekit.serve.queue import open_queue
from stablekit.serve.queue.base import MAX_ATTEMPTS


@pytest.fixture(scope="module")
def postgres():
    pg = Postgres()
    yield pg
    pg.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def queue_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'q.sqlite3'}"
    return request.getfixturevalue("postgres").fresh_url()


@pytest.fixture
def queue(queue_url):
    q = open_queue(queue_url)
    yield q
    q.close()


def test_submit_get_list_and_front(queue):
    a = queue.submit("generate", {"prompt": "a"})
    b = queue.submit("generate", {"prompt": "b"}, client_id="c1")
    front = queue.submit("generate", {"prompt": "first"}, front=True)
    assert len(a.id) == 32 and a.number < b.number < front.number and a.status == "queued"
    assert queue.get(b.id).payload == {"prompt": "b"} and queue.get(b.id).client_id == "c1"
    assert queue.get("nope") is None
    assert [j.id for j in queue.list(["queued"])] == [front.id, a.id, b.id]
    assert queue.claim("w").id == front.id
    assert [j.id for j in queue.list(newest_first=True)] == [front.id, b.id, a.id]
    assert queue.counts()["queued"] == 2 and queue.counts()["running"] == 1


def test_claim_is_atomic_across_threads(queue):
    ids = {queue.submit("generate", {"i": i}).id for i in range(60)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        while (job := queue.claim(f"w{n}")) is not None:
            with lock:
                claimed.append(job.id)
            queue.complete(job.id, {"by": n}, worker_id=f"w{n}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(claimed) == sorted(ids)  # every job once, none twice
    assert all(j.status == "done" for j in queue.list())


def test_claim_by_kind(queue):
    queue.submit("train", {})
    g = queue.submit("generate", {})
    assert queue.claim("w", kinds=["generate"]).id == g.id
    assert queue.claim("w", kinds=["generate"]) is None
    assert queue.claim("w", kinds=[]) is None


def test_jobs_survive_reopening(queue_url):
    q = open_queue(queue_url)
    ids = [q.submit("generate", {"i": i}).id for i in range(3)]
    running = q.claim("host:1:0")
    q.close()
    q2 = open_queue(queue_url)
    assert [j.id for j in q2.list(["queued"])] == ids[1:]
    assert q2.get(running.id).status == "running" and q2.get(running.id).worker == "host:1:0"
    q2.close()


def test_stale_jobs_requeue_then_fail_after_max_attempts(queue):
    job = queue.submit("generate", {})
    for attempt in range(1, MAX_ATTEMPTS + 1):
        claimed = queue.claim("w1")
        assert claimed.id == job.id and claimed.attempts == attempt
        assert queue.requeue_stale(60) == 0  # fresh heartbeat: left alone
        time.sleep(0.05)
        assert queue.requeue_stale(0.01) == 1
    final = queue.get(job.id)
    assert final.status == "failed" and "stopped" in final.error and queue.claim("w1") is None


def test_dead_worker_jobs_requeue_at_once_and_the_old_worker_cannot_finish_them(queue):
    job = queue.submit("generate", {})
    queue.claim("dead:1:0")
    assert queue.requeue_stale(3600, workers=["dead:1:0"]) == 1
    assert queue.get(job.id).status == "queued" and queue.get(job.id).worker is None
    assert queue.claim("alive:2:0").id == job.id
    assert not queue.heartbeat(job.id, "dead:1:0")
    assert not queue.complete(job.id, {"x": 1}, worker_id="dead:1:0")  # no double completion
    assert queue.complete(job.id, {"x": 2}, worker_id="alive:2:0")
    assert queue.get(job.id).result == {"x": 2} and queue.get(job.id).status == "done"
    assert not queue.fail(job.id, "late")  # finished jobs stay finished


def test_cancel_queued_and_running(queue):
    a, b = queue.submit("generate", {}), queue.submit("generate", {})
    assert queue.cancel(b.id) and queue.get(b.id).status == "cancelled"
    running = queue.claim("w")
    assert running.id == a.id and queue.heartbeat(a.id, "w")
    assert queue.cancel(a.id) and queue.cancel_requested(a.id)
    assert not queue.heartbeat(a.id, "w")  # the worker learns to stop
    assert queue.finish(a.id, "cancelled", error="interrupted", worker_id="w")
    assert not queue.cancel(a.id)


def test_progress_clear_delete_counts(queue):
    a = queue.submit("generate", {})
    queue.submit("generate", {})
    queue.claim("w")
    queue.update_progress(a.id, {"step": 2, "total": 4})
    assert queue.get(a.id).progress == {"step": 2, "total": 4}
    assert queue.clear_queued() == 1
    assert not queue.delete(a.id)  # running
    queue.complete(a.id, {})
    assert queue.delete(a.id) and queue.get(a.id) is None
    assert queue.counts() == {"queued": 0, "running": 0, "done": 0, "failed": 0, "cancelled": 1}


def test_bad_input_is_one_line(queue, tmp_path):
    with pytest.raises(StablekitError, match="unknown queue URL"):
        open_queue("mysql://x")
    with pytest.raises(StablekitError, match="JSON"):
        queue.submit("generate", {"x": object()})
    with pytest.raises(StablekitError, match="unknown job status"):
        queue.list(["nope"])


def test_server_and_worker_processes_share_a_postgres_queue(postgres, tmp_path):
    """The server queues into PostgreSQL; a worker (its own ServerState and connections, as on another
    machine) drains it with two threads; every job runs once."""
    from fastapi.testclient import TestClient

    from stablekit.serve.app import create_app
    from stablekit.serve.settings import ServeSettings
    from stablekit.serve.worker import run_worker

    url = postgres.fresh_url()
    with TestClient(create_app(ServeSettings(data_dir=tmp_path / "server", queue_url=url, workers=0))) as c:
        ids = [c.post("/api/v1/jobs", json={"kind": "sleep", "payload": {"seconds": 0.1, "tag": i}}).json()["id"]
               for i in range(6)]
        t = threading.Thread(target=run_worker, args=(ServeSettings(data_dir=tmp_path / "worker", queue_url=url,
                                                                     workers=2),), kwargs={"once": True})
        t.start()
        t.join(120)
        jobs = [c.get(f"/api/v1/jobs/{j}").json() for j in ids]
    assert [j["status"] for j in jobs] == ["done"] * 6 and [j["result"]["tag"] for j in jobs] == list(range(6))
    assert all(j["attempts"] == 1 for j in jobs) and len({j["worker"] for j in jobs}) >= 1


def test_event_table_round_trip_and_strict_payloads(queue):
    start = queue.last_event_seq()
    queue.add_event("j1", "progress", {"step": 1, "loss": float("nan")}, b"\x00\xffpng")
    queue.add_event("j1", "job_finished", {"status": "done"})
    rows = queue.events_after(start)
    assert [(r[1], r[2], r[3], r[4]) for r in rows] == [("j1", "progress", {"step": 1, "loss": None}, b"\x00\xffpng"),
                                                        ("j1", "job_finished", {"status": "done"}, None)]
    assert rows[0][0] < rows[1][0] == queue.last_event_seq() and queue.events_after(rows[1][0]) == []
    assert queue.prune_events(-1.0) >= 2 and queue.events_after(0) == []  # (other tests may share the database)
    with pytest.raises(StablekitError, match="finite numbers"):
        queue.submit("sleep", {"seconds": float("inf")})
    job = queue.submit("sleep", {})
    queue.claim("w")
    queue.update_progress(job.id, {"loss": float("nan")})  # a diverged loss is still reported
    assert queue.finish(job.id, "done", result={"loss": float("inf")}, worker_id="w")
    assert queue.get(job.id).progress == {"loss": None} and queue.get(job.id).result == {"loss": None}
