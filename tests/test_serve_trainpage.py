"""The training-run pages' data: a train job's metrics, sample grids, loss plot and configuration,
read only inside DATA_DIR/output/train/<run>/ (symlinks leaving it are skipped), served by URL."""
from __future__ import annotations

import json
import os

from fastapi.testclient import TestClient
from PIL import Image

from stablekit.serve.app import create_app
from stablekit.serve.settings import ServeSettings
from stablekit.serve.trainpage import read_metrics


def _run_folder(out, job_id, steps=5):
    run = out / "train" / job_id / "lora-training"
    (run / "samples").mkdir(parents=True)
    lines = [json.dumps({"step": s, "loss": 1.0 / s, "lr": 1e-4}) for s in range(1, steps + 1)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n{\"step\": 6, \"lo")  # a line being written
    (run / "config.json").write_text(json.dumps({"method": "lora", "rank": 4, "steps": steps}))
    Image.new("RGB", (32, 16), "red").save(run / "samples" / "step-000004.png")
    Image.new("RGB", (32, 16), "blue").save(run / "loss.png")
    return run


def test_run_page_data_and_files(tmp_path):
    app = create_app(ServeSettings(data_dir=tmp_path / "data"), start_workers=False)
    state = app.state.stablekit
    job = state.queue.submit("train", {"method": "lora", "data": "x", "steps": 5})
    other = state.queue.submit("sleep", {})
    run = _run_folder(state.settings.output_dir, job.id)
    secret = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(secret)
    os.symlink(secret, run / "samples" / "step-000002.png")  # points out of the output folder
    later = state.queue.submit("train", {"method": "lora", "data": "x", "steps": 9, "resume": job.id})
    with TestClient(app) as c:
        info = c.get(f"/api/v1/train/{job.id}").json()
        assert [m["step"] for m in info["metrics"]] == [1, 2, 3, 4, 5] and info["metrics"][1]["loss"] == 0.5
        assert info["config"] == {"method": "lora", "rank": 4, "steps": 5}
        assert [s["step"] for s in info["samples"]] == [4]  # the symlink leaving the folder is not listed
        for url in (info["samples"][0]["url"], info["loss_plot"]):
            assert url.startswith(f"/api/v1/files/train/{job.id}/") and c.get(url).status_code == 200
        assert c.get(f"/api/v1/files/train/{job.id}/lora-training/samples/step-000002.png").status_code == 403
        assert c.get(f"/api/v1/train/{later.id}").json()["metrics"] == info["metrics"]  # a resumed run's folder
        assert c.get(f"/api/v1/train/{other.id}").status_code == 404
        assert c.get("/api/v1/train/nope").status_code == 404
        runs = c.get("/api/v1/train").json()["runs"]
        assert [r["id"] for r in runs] == [later.id, job.id] and runs[0]["resume"] == job.id
        for path in ("/app/train", f"/app/train/{job.id}"):
            r = c.get(path)
            assert r.status_code == 200 and "lossplot" in r.text and "/api/v1/train/" in r.text
        assert 'href="/app/train"' in c.get("/app").text


def test_metrics_are_thinned_keeping_the_last_row(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": s, "name": "x"}) + "\n" for s in range(1, 1002)))
    rows = read_metrics(path, limit=100)
    assert len(rows) <= 101 and rows[0]["step"] == 1 and rows[-1]["step"] == 1001 and "name" not in rows[0]
