"""Training jobs through the server's queue: checked at submit, run with stablekit.train."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from fixtures import tiny_components
from train_fixtures import write_folder

from stablekit.serve.app import create_app
from stablekit.serve.settings import ServeSettings


def _app(tmp_path, workers=0):
    from stablekit.formats import save_model

    models = tmp_path / "models" / "checkpoints"
    models.mkdir(parents=True)
    save_model(tiny_components("sd1"), models / "tiny.safetensors")
    settings = ServeSettings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", workers=workers)
    app = create_app(settings)
    write_folder(settings.input_dir / "shapes", n=4)
    return app


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
                               ({"method": "paint", "data": "shapes"}, "paint")]:
            r = submit(payload)
            assert 400 <= r.status_code < 500 and words in r.json()["error"], (payload, r.text)


@pytest.mark.slow
def test_a_lora_training_job_runs_through_the_queue(tmp_path):
    with TestClient(_app(tmp_path, workers=1)) as c:
        r = c.post("/api/v1/jobs", json={"kind": "train", "payload": {
            "method": "lora", "data": "shapes", "model": "tiny.safetensors", "steps": 2, "batch_size": 2,
            "sample_every": 0, "tensorboard": False, "rank": 2}})
        job = c.get(f"/api/v1/jobs/{r.json()['id']}/wait", params={"timeout": 600}).json()
    assert job["status"] == "done", job["error"]
    assert job["result"]["step"] == 2 and job["result"]["artefact"].startswith(f"train/{job['id']}/")
    assert (tmp_path / "data" / "output" / job["result"]["artefact"]).is_file()
