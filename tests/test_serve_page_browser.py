"""Our page (/app) in headless Chromium against a real server: it loads, a txt2img job submitted
through its form shows its image in the gallery, and a training run's page (/app/train/<id>) draws
the loss curve and shows the loop's loss.png, the validation grids and the resolved configuration.

Slow (a browser and a short LoRA run on the embedded model): run with `-m slow`.
STABLEKIT_SCREENSHOT_DIR=docs saves docs/stablekit-page.png and docs/stablekit-train-page.png."""
import base64
import os
import time
from pathlib import Path

import pytest
import requests
from serve_fixtures import UvicornThread
from train_fixtures import write_folder

from stablekit.serve.app import create_app
from stablekit.serve.settings import ServeSettings
from test_serve_comfy_frontend import CHROMIUM, browser  # noqa: F401  (the DevTools-driven browser fixture)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")]


def _shot(browser, name):  # noqa: F811
    folder = os.environ.get("STABLEKIT_SCREENSHOT_DIR")
    if folder:
        png = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
        (Path(folder) / name).write_bytes(png)


def test_page_generates_through_its_form_and_shows_a_training_run(tmp_path, browser):  # noqa: F811
    data = tmp_path / "data"
    write_folder(data / "input" / "shapes", n=4)
    with UvicornThread(create_app(ServeSettings(data_dir=data, workers=1))) as srv:
        for domain in ("Page", "Runtime", "Network"):
            browser.call(f"{domain}.enable")
        browser.call("Page.navigate", url=f"{srv.url}/app")
        browser.wait("document.getElementById('model') && document.querySelectorAll('#model option').length", 120,
                     "the model list")
        assert browser.js("document.getElementById('model').value") == "shapes.safetensors"
        browser.js("""(() => { const set = (id, v) => document.getElementById(id).value = v;
            set('prompt', 'a large red circle on a blue background'); set('steps', 20); set('seed', 3);
            document.getElementById('go').click(); })()""")
        browser.wait("document.getElementById('status').textContent === 'done'", 600, "the job to finish")
        assert browser.js("document.getElementById('error').textContent") == ""
        browser.wait("""Array.from(document.querySelectorAll('#gallery img')).some(i => i.complete &&
            i.naturalWidth > 0)""", 120, "the image in the gallery")
        caption = browser.js("document.querySelector('#gallery figcaption').textContent")
        assert "a large red circle on a blue background" in caption and "Seed: 3" in caption
        assert browser.js("document.getElementById('preview').src.startsWith('blob:')")  # a live preview came
        assert len(list((data / "output" / "jobs").rglob("*.png"))) == 1
        _shot(browser, "stablekit-page.png")

        r = requests.post(f"{srv.url}/api/v1/jobs", json={"kind": "train", "payload": {
            "method": "lora", "data": "shapes", "steps": 30, "batch_size": 2, "rank": 4, "lr": 1e-3,
            "sample_every": 15, "checkpoint_every": 15, "tensorboard": False, "sample_steps": 8,
            "sample_prompts": ["a red circle", "a blue square"]}}, timeout=30)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        browser.call("Page.navigate", url=f"{srv.url}/app/train/{job_id}")
        browser.wait("document.getElementById('title') && document.getElementById('status').textContent.startsWith('done')",
                     900, "the training run")
        points = browser.wait("""(() => { const l = document.getElementById('loss-ema');
            return l && l.points.numberOfItems; })()""", 30, "the loss curve")
        assert points == 30
        browser.wait("""Array.from(document.querySelectorAll('#samples img')).length === 2 &&
            Array.from(document.querySelectorAll('#samples img')).every(i => i.complete && i.naturalWidth > 0)""",
                     60, "the sample grids")
        browser.wait("document.getElementById('losspng').complete && document.getElementById('losspng').naturalWidth",
                     60, "loss.png")
        assert '"rank": 4' in browser.js("document.getElementById('config').textContent")
        time.sleep(1)
        _shot(browser, "stablekit-train-page.png")
        browser.call("Page.navigate", url=f"{srv.url}/app/train")
        browser.wait(f"document.getElementById('runs') && document.querySelector('#runs a') && document.querySelector('#runs a').href.endsWith('{job_id}')",
                     60, "the run in the list")
    assert not [f for f in browser.failed if "/api/v1/" in f or "/app" in f], browser.failed
