"""Events of jobs run by `stablekit worker` processes reach the server's listeners through the
queue's event table (serve/relay.py): in order, once each, with a made-up job_finished only when a
worker's never arrives."""
from __future__ import annotations

import json
import threading

from fastapi.testclient import TestClient

from stablekit.serve import relay as relay_module
from stablekit.serve.app import create_app
from stablekit.serve.queue import open_queue
from stablekit.serve.relay import EventForwarder, Relay
from stablekit.serve.settings import ServeSettings
from stablekit.serve.state import ServerState
from stablekit.serve.worker import run_worker


def _state(tmp_path):
    queue = open_queue(f"sqlite:///{tmp_path / 'queue.sqlite3'}")
    return ServerState(settings=ServeSettings(data_dir=tmp_path), queue=queue)


def _insert(queue, seq, job_id, name):
    queue._run("INSERT INTO events (seq, job_id, event, data, body, created) VALUES (?, ?, ?, ?, NULL, 0)",
               (seq, job_id, name, json.dumps({"n": seq})))


def test_relay_keeps_order_waits_for_gaps_and_never_repeats(tmp_path, monkeypatch):
    state = _state(tmp_path)
    state.queue.add_event("old", "progress", {"step": 1})
    relay = Relay(state)  # starts after what is already there
    EventForwarder(state.queue)(type("E", (), {"job_id": "a", "event": "progress", "data": {"step": 1},
                                               "binary": b"\x01\x02"})())
    _insert(state.queue, 4, "a", "progress")  # 3 is not committed yet (PostgreSQL may do that)
    got = relay.fetch()
    assert [(e.event, e.data, e.binary) for e in got] == [("progress", {"step": 1}, b"\x01\x02"),
                                                           ("progress", {"n": 4}, None)]
    assert relay.cursor == 2 and relay.fetch() == []  # waits below the gap, repeats nothing
    _insert(state.queue, 3, "a", "progress")
    assert [e.data for e in relay.fetch()] == [{"n": 3}] and relay.cursor == 4
    _insert(state.queue, 6, "a", "progress")  # 5 never comes: passed after GAP_WAIT
    monkeypatch.setattr(relay_module, "GAP_WAIT", -1.0)
    assert [e.data for e in relay.fetch()] == [{"n": 6}] and relay.cursor == 6


def test_relay_makes_up_a_missing_job_finished_once(tmp_path, monkeypatch):
    state = _state(tmp_path)
    job = state.queue.submit("sleep", {})
    state.queue.claim("otherhost:1:0")
    relay = Relay(state)
    assert relay.fetch() == [] and relay.remote == {job.id}
    state.queue.finish(job.id, "done", result={"ok": 1})
    assert relay.fetch() == []  # within the grace period the worker's own event may still come
    monkeypatch.setattr(relay_module, "FINISH_GRACE", -1.0)
    made = relay.fetch()
    assert [(e.event, e.data["status"], e.data["result"]) for e in made] == [("job_finished", "done", {"ok": 1})]
    state.queue.add_event(job.id, "job_finished", {"status": "done"})  # the late original
    assert relay.fetch() == []


def test_a_worker_process_jobs_events_reach_the_servers_websocket(tmp_path):
    settings = ServeSettings(data_dir=tmp_path, workers=0)
    with TestClient(create_app(settings)) as c:
        job_id = c.post("/api/v1/jobs", json={"kind": "sleep", "payload": {"seconds": 0.5}}).json()["id"]
        with c.websocket_connect(f"/api/v1/ws?job_id={job_id}") as ws:
            stop = threading.Event()
            worker = threading.Thread(target=run_worker, args=(ServeSettings(data_dir=tmp_path, workers=1),),
                                      kwargs={"once": True, "stop": stop})
            worker.start()  # its own ServerState and EventBus: events reach the server only via the queue
            events = []
            while not events or events[-1]["event"] != "job_finished":
                events.append(json.loads(ws.receive_text()))
        worker.join(30)
    names = [e["event"] for e in events]
    assert names == ["job_started"] + ["progress"] * 5 + ["job_finished"], names
    assert [e["data"]["step"] for e in events[1:-1]] == [1, 2, 3, 4, 5]
    assert events[-1]["data"]["status"] == "done" and events[-1]["data"]["result"]["worker"].endswith(":0")
