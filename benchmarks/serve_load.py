"""Load test of `stablekit serve` on loopback (issue 10; not CI): mixed requests from concurrent
clients, the server SIGKILLed and restarted in the middle, 2 workers (one thread in the server, one
`stablekit worker` process), then a check that every accepted job completed exactly once.

    nice -n 19 .venv/bin/python benchmarks/serve_load.py [--requests 200] [--clients 8] [--steps 4]
        [--kill-after 0.4] [--mix generate,a1111,a1111_img2img,comfy] [--json]

Request kinds: our job API (POST /api/v1/generate), A1111 (POST /sdapi/v1/txt2img/async and
img2img/async) and ComfyUI (POST /prompt with the default workflow on the embedded model); kinds whose
routes are missing (404) are left out and reported. Every request returns a job id at once ("accepted");
a client whose request hit the dead server retries it after the restart with the same Idempotency-Key
(a request that got no answer may have been accepted: the retry then returns that job, not a second
one; ComfyUI requests send the same key as their `prompt_id`). Every request carries its number as
the seed. Afterwards the queue database is read directly: lost = accepted ids not done; duplicated =
request numbers with more than one job in the queue; requests_without_job = request numbers with
none; done_with_wrong_outputs = done jobs whose files are not exactly one run's (one image, on disk;
a generate job clears its folder when it starts, so an attempt cut off by the kill leaves nothing
behind). rerun_after_kill counts jobs the killed server was running, which ran again (their first
attempt cannot complete: the queue refuses a finish from a worker that lost the job). Latency:
submit -> done as seen by the client long-polling GET /api/v1/jobs/{id}/wait. Throughput: done
jobs / wall time from the first submit to the last completion.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ("import sys; from stablekit.cli import ArgumentParser; from stablekit.cli import serve; "
          "p = ArgumentParser(prog='stablekit'); serve.register(p.add_subparsers(dest='command')); "
          "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")


# ComfyUI's default workflow in API format (../shared/fixtures/comfyui-default-api.json) on the embedded model
COMFY_DEFAULT = {
    "3": {"class_type": "KSampler", "inputs": {"cfg": 8, "denoise": 1, "latent_image": ["5", 0], "model": ["4", 0],
                                               "negative": ["7", 0], "positive": ["6", 0], "sampler_name": "euler",
                                               "scheduler": "normal", "seed": 8566257, "steps": 20}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "shapes.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"batch_size": 1, "height": 512, "width": 512}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "a red circle"}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "text, watermark"}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", LAUNCH, *args], env=env, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_up(url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/api/v1/health", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit("server did not come up")


def small_png() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def requests_for(kind: str, i: int, steps: int) -> tuple[str, dict]:
    prompt = random.Random(i).choice(["a red circle", "a blue square on yellow", "a large green star"])
    if kind == "generate":
        return "/api/v1/generate", {"prompt": prompt, "steps": steps, "seed": i}
    if kind == "a1111":
        return "/sdapi/v1/txt2img/async", {"prompt": prompt, "steps": steps, "seed": i, "width": 64, "height": 64}
    if kind == "a1111_img2img":
        return "/sdapi/v1/img2img/async", {"prompt": prompt, "steps": steps, "seed": i, "init_images": [small_png()],
                                           "denoising_strength": 0.6, "width": 64, "height": 64}
    graph = json.loads(json.dumps(COMFY_DEFAULT))
    graph["5"]["inputs"].update(width=64, height=64)
    graph["3"]["inputs"].update(steps=steps, seed=i)
    graph["6"]["inputs"]["text"] = prompt
    graph["9"]["inputs"]["filename_prefix"] = f"load-{i}"
    return "/prompt", {"prompt": graph, "client_id": f"load-{i}"}


def request_number(job) -> int | None:
    """The request number a job came from (every request carries it as its seed)."""
    p = job.payload
    if job.kind == "comfy.prompt":
        return p["prompt"]["3"]["inputs"]["seed"]
    return p.get("seed")


def outputs_ok(job, data: Path) -> bool:
    """A done job's files are all there, as one run writes them (one image per request here)."""
    r = job.result or {}
    if job.kind == "generate":
        return len(list((data / "output" / "jobs" / job.id).glob("*.png"))) == 1
    if job.kind.startswith("a1111."):
        return len(r.get("files", [])) == 1 and all((data / "output" / f).is_file() for f in r["files"])
    images = [i for out in (r.get("outputs") or {}).values() for i in out.get("images", [])]
    return len(images) == 1 and all((data / "output" / i["subfolder"] / i["filename"]).is_file() for i in images)


def job_id_of(body: dict) -> str | None:
    return body.get("id") or body.get("job_id") or body.get("prompt_id")


class Client(threading.Thread):
    """Takes request numbers from a shared list; submits, then polls its job to the end."""

    def __init__(self, url, work, kinds, steps, results, lock):
        super().__init__(daemon=True)
        self.url, self.work, self.kinds, self.steps, self.results, self.lock = url, work, kinds, steps, results, lock

    def run(self):
        while True:
            with self.lock:
                if not self.work:
                    return
                i = self.work.pop()
            kind = self.kinds[i % len(self.kinds)]
            path, body = requests_for(kind, i, self.steps)
            start = time.monotonic()
            job_id, tries = None, 0
            key = uuid.uuid4().hex  # a retry of this request must not queue a second job
            headers = {"Idempotency-Key": key}
            if path == "/prompt":
                body = {**body, "prompt_id": key}  # ComfyUI's own client-chosen id
            while job_id is None:  # the server may be dead for a while: retry until accepted
                tries += 1
                try:
                    r = requests.post(self.url + path, json=body, headers=headers, timeout=30)
                    if r.status_code in (200, 202):
                        job_id = job_id_of(r.json())
                    else:
                        raise SystemExit(f"{kind} request refused: {r.status_code} {r.text[:300]}")
                except requests.RequestException:
                    time.sleep(0.5)
            status = None
            while status not in ("done", "failed", "cancelled"):  # long polls: the server answers when it ends
                try:
                    status = requests.get(f"{self.url}/api/v1/jobs/{job_id}/wait", params={"timeout": 20},
                                          timeout=40).json().get("status")
                except (requests.RequestException, ValueError):
                    time.sleep(0.5)  # the server is down (killed): try again
            with self.lock:
                self.results.append({"kind": kind, "id": job_id, "status": status, "tries": tries,
                                     "latency": time.monotonic() - start})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200, help="number of requests (default 200)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    ap.add_argument("--steps", type=int, default=4, help="sampling steps per job (default 4)")
    ap.add_argument("--kill-after", type=float, default=0.4, help="SIGKILL the server after this fraction of jobs is done")
    ap.add_argument("--mix", default="generate,a1111,a1111_img2img,comfy", help="request kinds, round robin")
    ap.add_argument("--data-dir", default=None, help="server data folder (default: a fresh temporary one)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    a = ap.parse_args()

    data = Path(a.data_dir or tempfile.mkdtemp(prefix="stablekit-load-"))
    log, port = data / "load.log", free_port()
    data.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    serve_args = ["serve", "--port", str(port), "--data-dir", str(data), "--workers", "1", "--log-level", "warning"]
    server = launch(serve_args, log)
    worker = launch(["worker", "--data-dir", str(data)], log)
    wait_up(url)
    kinds = []
    for kind in a.mix.split(","):
        path, body = requests_for(kind, 0, a.steps)
        probe = requests.post(url + path, json=body, timeout=60)  # also warms the model up
        if probe.status_code == 404:
            print(f"note: {kind} ({path}) not served here (404); left out")
            continue
        if probe.status_code not in (200, 202):
            raise SystemExit(f"{kind} probe refused: {probe.status_code} {probe.text[:300]}")
        kinds.append(kind)
    time.sleep(1)
    results, lock = [], threading.Lock()
    work = list(range(1, a.requests + 1))
    t0 = time.monotonic()
    clients = [Client(url, work, kinds, a.steps, results, lock) for _ in range(a.clients)]
    for c in clients:
        c.start()
    while len(results) < a.kill_after * a.requests:
        time.sleep(0.2)
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()
    killed_at = len(results)
    print(f"SIGKILLed the server after {killed_at} of {a.requests} jobs; restarting", flush=True)
    server = launch(serve_args, log)
    for c in clients:
        c.join()
    wall = time.monotonic() - t0
    for proc in (server, worker):
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)

    sys.path.insert(0, str(ROOT / "src"))
    from stablekit.serve.queue import open_queue

    queue = open_queue(f"sqlite:///{data / 'queue.sqlite3'}")
    jobs = {j.id: j for j in queue.list()}
    accepted = {r["id"] for r in results}
    lost = [i for i in accepted if i not in jobs or jobs[i].status != "done"]
    by_request: dict = {}
    for j in jobs.values():
        n = request_number(j)
        if n:  # 0: the warm-up probes
            by_request.setdefault(n, []).append(j.id)
    duplicated = [n for n, ids in by_request.items() if len(ids) > 1]  # one request, two jobs
    missing = [n for n in range(1, a.requests + 1) if n not in by_request]
    bad_outputs = [i for i in accepted if i in jobs and jobs[i].status == "done" and not outputs_ok(jobs[i], data)]
    unfinished = [j.id for j in jobs.values() if j.status in ("queued", "running")]
    lat = sorted(r["latency"] for r in results)
    figures = {
        "requests": a.requests, "clients": a.clients, "kinds": kinds, "steps": a.steps, "workers": 2,
        "accepted": len(accepted), "done": sum(r["status"] == "done" for r in results),
        "lost": len(lost), "duplicated": len(duplicated), "requests_without_job": len(missing),
        "done_with_wrong_outputs": len(bad_outputs), "unfinished_in_queue": len(unfinished),
        "rerun_after_kill": sum(j.attempts > 1 for j in jobs.values()),
        "retried_requests": sum(r["tries"] > 1 for r in results),
        "wall_s": round(wall, 1), "throughput_jobs_per_s": round(len(results) / wall, 3),
        "latency_p50_s": round(statistics.median(lat), 2), "latency_p95_s": round(lat[int(0.95 * (len(lat) - 1))], 2),
        "killed_after_jobs": killed_at, "per_kind": {k: sum(r["kind"] == k for r in results) for k in kinds},
    }
    print("| requests | clients | workers | accepted | done | lost | duplicated | throughput (jobs/s) | p50 (s) | p95 (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    f = figures
    print(f"| {f['requests']} | {f['clients']} | 2 | {f['accepted']} | {f['done']} | {f['lost']} | {f['duplicated']} | "
          f"{f['throughput_jobs_per_s']} | {f['latency_p50_s']} | {f['latency_p95_s']} |")
    if a.json:
        print(json.dumps(figures, indent=2))
    sys.exit(1 if lost or duplicated or missing or bad_outputs or unfinished else 0)


if __name__ == "__main__":
    main()
