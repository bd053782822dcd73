"""The server for real: uvicorn on a free loopback port driven with requests and websocket-client,
jobs surviving a crash (in-process and, slow, a SIGKILLed server subprocess), worker processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import websocket
from serve_fixtures import UvicornThread, free_port, use_tiny_model

from stablekit.serve.app import create_app
from stablekit.serve.queue import open_queue
from stablekit.serve.runner import HOST
from stablekit.serve.settings import ServeSettings
from stablekit.serve.worker import run_worker

KEY = {"Authorization": "Bearer k3y"}
SRC = str(Path(__file__).resolve().parents[1] / "src")
# `stablekit serve|worker ...` through cli/serve.py's register(), as the CLI will call it
LAUNCH = ("import sys; from stablekit.cli import ArgumentParser; from stablekit.cli import serve; "
          "p = ArgumentParser(prog='stablekit'); serve.register(p.add_subparsers(dest='command')); "
          "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")


def _wait_status(get, job_ids, statuses=("done", "failed", "cancelled"), timeout=120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        jobs = {j: get(j) for j in job_ids}
        if all(job and job["status"] in statuses for job in jobs.values()):
            return jobs
        assert time.monotonic() < deadline, jobs
        time.sleep(0.1)


def test_real_server_requests_and_websocket_client(tmp_path):
    app = create_app(ServeSettings(data_dir=tmp_path, api_key="k3y", workers=1))
    use_tiny_model(app.state.stablekit)
    with UvicornThread(app) as server:
        assert requests.get(server.url + "/api/v1/health", timeout=10).status_code == 401
        health = requests.get(server.url + "/api/v1/health", headers=KEY, timeout=10).json()
        assert health["ok"] and "generate" in health["kinds"]
        ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/api/v1/ws?client_id=me&token=k3y", timeout=30)
        with pytest.raises(websocket.WebSocketBadStatusException):
            websocket.create_connection(f"ws://127.0.0.1:{server.port}/api/v1/ws", timeout=10)
        r = requests.post(server.url + "/api/v1/jobs", headers=KEY, timeout=10,
                          json={"kind": "generate", "client_id": "me", "payload": {"prompt": "a star", "steps": 3,
                                                                                   "seed": 2, "width": 64, "height": 64}})
        assert r.status_code == 202
        job_id = r.json()["id"]
        seen = []
        while not seen or seen[-1]["event"] != "job_finished":
            frame = ws.recv()
            if isinstance(frame, str):
                seen.append(json.loads(frame))
        ws.close()
        names = [m["event"] for m in seen if m["job_id"] == job_id]
        assert names[:2] == ["job_queued", "job_started"] and names.count("progress") == 3
        assert seen[-1]["data"]["status"] == "done"
        job = requests.get(f"{server.url}/api/v1/jobs/{job_id}", headers=KEY, timeout=10).json()
        png = requests.get(server.url + job["result"]["images"][0]["url"], headers=KEY, timeout=10)
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
        # server-sent events of a finished job: the job, then job_finished at once
        r = requests.get(f"{server.url}/api/v1/jobs/{job_id}/events?token=k3y", stream=True, timeout=10)
        lines = [line for line in r.iter_lines(decode_unicode=True) if line.startswith("event:")]
        assert lines == ["event: job", "event: job_finished"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_restart_requeues_the_job_a_dead_process_was_running_and_loses_none(tmp_path):
    settings = ServeSettings(data_dir=tmp_path, workers=0)
    from fastapi.testclient import TestClient

    with TestClient(create_app(settings)) as c:
        ids = [c.post("/api/v1/jobs", json={"kind": "sleep", "payload": {"seconds": 0.2, "tag": i}}).json()["id"]
               for i in range(4)]
    queue = open_queue(settings.resolved_queue_url)
    crashed = queue.claim(f"{HOST}:{_dead_pid()}:0")  # as if the server died while running it
    assert crashed.id == ids[0]
    queue.close()
    with TestClient(create_app(ServeSettings(data_dir=tmp_path, workers=1))) as c:
        jobs = _wait_status(lambda j: c.get(f"/api/v1/jobs/{j}").json(), ids, timeout=60)
    assert [jobs[j]["status"] for j in ids] == ["done"] * 4
    assert [jobs[j]["attempts"] for j in ids] == [2, 1, 1, 1]
    assert [jobs[j]["result"]["tag"] for j in ids] == [0, 1, 2, 3]


def test_worker_drains_the_servers_queue(tmp_path):
    settings = ServeSettings(data_dir=tmp_path, workers=0)
    from fastapi.testclient import TestClient

    with TestClient(create_app(settings)) as c:
        ids = [c.post("/api/v1/jobs", json={"kind": "sleep", "payload": {"seconds": 0.1}}).json()["id"]
               for _ in range(5)]
        stop = threading.Event()
        t = threading.Thread(target=run_worker, args=(ServeSettings(data_dir=tmp_path, workers=2),),
                             kwargs={"once": True, "stop": stop})
        t.start()
        t.join(60)
        stop.set()
        jobs = [c.get(f"/api/v1/jobs/{j}").json() for j in ids]
    assert [j["status"] for j in jobs] == ["done"] * 5 and all(j["attempts"] == 1 for j in jobs)


def _launch(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", LAUNCH, *args], env=env, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            if requests.get(url + "/api/v1/health", timeout=2).ok:
                return
        except requests.ConnectionError:
            time.sleep(0.2)
    raise AssertionError("server did not come up: " + log.read_text()[-2000:])


@pytest.mark.slow
def test_sigkill_server_subprocess_mid_queue_loses_no_job_and_a_worker_process_helps(tmp_path):
    port, log = free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    args = ["serve", "--port", str(port), "--data-dir", str(tmp_path / "data"), "--workers", "1", "--log-level", "warning"]
    server = _launch(args, log)
    try:
        _up(url, server, log)
        ids = [requests.post(url + "/api/v1/jobs", json={"kind": "sleep", "payload": {"seconds": 1.0, "tag": i}},
                             timeout=10).json()["id"] for i in range(6)]
        _wait_status(lambda j: requests.get(f"{url}/api/v1/jobs/{j}", timeout=10).json(), ids[:1], ("running",))
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(30)
        queue = open_queue(f"sqlite:///{tmp_path / 'data' / 'queue.sqlite3'}")
        assert {j.id for j in queue.list()} == set(ids)  # every accepted job is still there
        was_running = [j.id for j in queue.list(["running"])]
        queue.close()
        server = _launch(args, log)
        worker = _launch(["worker", "--data-dir", str(tmp_path / "data"), "--once"], log)
        _up(url, server, log)
        jobs = _wait_status(lambda j: requests.get(f"{url}/api/v1/jobs/{j}", timeout=10).json(), ids, timeout=180)
        assert all(jobs[j]["status"] == "done" for j in ids), jobs
        assert [jobs[j]["result"]["tag"] for j in ids] == list(range(6))
        for j in ids:  # the interrupted one ran again, once; the others once
            assert jobs[j]["attempts"] == (2 if j in was_running else 1)
        worker.wait(60)
    finally:
        for proc in (server,) + ((worker,) if "worker" in locals() else ()):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
