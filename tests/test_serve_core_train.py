"""Training jobs through the server's queue: checked at submit, run with stablekit.train, per-step
progress events, cancel at the next step (checkpoint kept) and resume."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from fixtures import tiny_components
from train_fixtures import write_folder

from stablekit.serve.app import create_app
from stablekit.serve.settings import ServeSettings


def _app(tmp_path, workers=0, tiny=True):
    models = tmp_path / "models" / "checkpoints"
    models.mkdir(parents=True)
    if tiny:
        from stablekit.formats import save_model

        save_model(tiny_components("sd1"), models / "tiny.safetensors")
    settings = ServeSettings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", workers=workers)
    app = create_app(settings)
    write_folder(settings.input_dir / "shapes", n=4)
    return app


def _events_until(c, job_id, stop):
    """Read the job's server-sent events (name, data) until stop(name, data) or the stream ends."""
    seen, name = [], None
    with c.stream("GET", f"/api/v1/jobs/{job_id}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                seen.append((name, json.loads(line[len("data: "):])))
                if stop(*seen[-1]):
                    break
    return seen


def test_train_payloads_are_checked_at_submit(tmp_path):
    with TestClient(_app(tmp_path)) as c:
        def submit(payload):
            return c.post("/api/v1/jobs", json={"kind": "train", "payload": payload})

        ok = submit({"method": "lora", "data": "shapes", "model": "tiny.safetensors", "steps": 2})
        assert ok.status_code == 202 and ok.json()["payload"]["model"] == "tiny.safetensors"
        for payload, words in [({"data": "shapes"}, "method"),
                               ({"method": "lora", "data": "../../etc"}, "leaves the folder"),
                               ({"method": "lora", "data": "missing"}, "input folder"),
                               ({"method": "lora", "data": "shapes", "out": "/tmp/x"}, "set by the server"),
                               ({"method": "lora", "data": "shapes", "learning_rate": 1}, "unknown setting"),
                               ({"method": "lora", "data": "shapes", "model": "nope"}, "unknown checkpoint"),
                               ({"method": "lora", "data": "shapes", "resume": "../x"}, "earlier train job"),
                               ({"method": "lora", "data": "shapes", "resume": "nojob"}, "no train job"),
                               ({"method": "lora", "data": "shapes", "resume": ok.json()["id"]}, "cancel it first"),
                               ({"method": "paint", "data": "shapes"}, "paint")]:
            r = submit(payload)
            assert 400 <= r.status_code < 500 and words in r.json()["error"], (payload, r.text)


def _fake_train(calls):
    """stablekit.train.run's contract without a model: steps call the hooks; a stop keeps the step
    in the run folder (the loop's checkpoint), and a second run starts after it."""
    def run(method, *, progress=True, hooks=None, **settings):
        out = Path(settings["out"])
        out.mkdir(parents=True, exist_ok=True)
        mark = out / "step.txt"
        step = int(mark.read_text()) if mark.exists() else 0
        calls.append({"method": method, "out": out, "start": step})
        while step < settings["steps"]:
            step += 1
            hooks.on_step(step, {"step": step, "loss": 1.0 / step, "lr": 1e-4}, None)
            mark.write_text(str(step))
            if step < settings["steps"] and hooks.should_stop():
                return {"stopped": True, "step": step, "history": [], "run_dir": str(out), "artefact": None}
            time.sleep(0.05)
        art = out / "lora.safetensors"
        art.write_bytes(b"x")
        return {"stopped": False, "step": step, "history": [{"loss": 1.0 / step}], "run_dir": str(out),
                "artefact": str(art)}
    return run


def test_cancel_stops_a_running_train_job_at_the_next_step_and_resume_goes_on(tmp_path, monkeypatch):
    import stablekit.train

    calls = []
    monkeypatch.setattr(stablekit.train, "run", _fake_train(calls))
    with TestClient(_app(tmp_path, workers=1, tiny=False)) as c:
        job = c.post("/api/v1/jobs", json={"kind": "train", "payload": {
            "method": "lora", "data": "shapes", "steps": 500}}).json()
        seen = _events_until(c, job["id"], lambda name, data: name == "progress" and data["step"] >= 3)
        progress = [d for n, d in seen if n == "progress"]
        steps = [d["step"] for d in progress]  # steps before the stream subscribed may be missed
        assert steps == list(range(steps[0], 4)) and steps[-1] == 3
        assert progress[-1]["total"] == 500 and progress[-1]["loss"] == pytest.approx(1 / 3)
        assert c.post(f"/api/v1/jobs/{job['id']}/cancel").json()["cancelled"] is True
        done = c.get(f"/api/v1/jobs/{job['id']}/wait", params={"timeout": 30}).json()
        assert done["status"] == "cancelled" and "checkpoint saved" in done["error"] and job["id"] in done["error"]
        stopped = int(done["error"].split("stopped at step ")[1].split()[0])
        assert 3 <= stopped < 500 and done["progress"]["step"] == stopped
        # resume: the same run folder, from the step where it stopped, to the end
        again = c.post("/api/v1/jobs", json={"kind": "train", "payload": {
            "method": "lora", "data": "shapes", "steps": stopped + 3, "resume": job["id"]}}).json()
        finished = c.get(f"/api/v1/jobs/{again['id']}/wait", params={"timeout": 30}).json()
    assert finished["status"] == "done", finished["error"]
    assert calls[1]["out"] == calls[0]["out"] and calls[1]["start"] == stopped
    assert finished["result"]["step"] == stopped + 3
    assert finished["result"]["artefact"] == f"train/{job['id']}/lora.safetensors"


@pytest.mark.slow
def test_a_lora_training_job_runs_cancels_and_resumes_through_the_queue(tmp_path):
    settings = {"method": "lora", "data": "shapes", "model": "tiny.safetensors", "batch_size": 2,
                "sample_every": 0, "tensorboard": False, "rank": 2, "checkpoint_every": 1000}
    with TestClient(_app(tmp_path, workers=1)) as c:
        r = c.post("/api/v1/jobs", json={"kind": "train", "payload": {**settings, "steps": 1000}})
        job_id = r.json()["id"]
        seen = _events_until(c, job_id, lambda name, data: name == "progress" and data["step"] >= 2)
        assert seen[-1][1]["total"] == 1000 and seen[-1][1]["loss"] > 0
        c.post(f"/api/v1/jobs/{job_id}/cancel")
        cut = c.get(f"/api/v1/jobs/{job_id}/wait", params={"timeout": 600}).json()
        assert cut["status"] == "cancelled", cut
        stopped = cut["progress"]["step"]
        run = tmp_path / "data" / "output" / "train" / job_id
        assert list(run.rglob(f"*{stopped:06d}*")) or list(run.rglob(f"*{stopped}*")), sorted(run.rglob("*"))
        r = c.post("/api/v1/jobs", json={"kind": "train", "payload": {**settings, "steps": stopped + 2,
                                                                       "resume": job_id}})
        seen = _events_until(c, r.json()["id"], lambda name, data: name == "job_finished")
        job = c.get(f"/api/v1/jobs/{r.json()['id']}").json()
    assert job["status"] == "done", job["error"]
    assert [d["step"] for n, d in seen if n == "progress"] == [stopped + 1, stopped + 2]
    assert job["result"]["step"] == stopped + 2 and job["result"]["artefact"].startswith(f"train/{job_id}/")
    assert (tmp_path / "data" / "output" / job["result"]["artefact"]).is_file()
