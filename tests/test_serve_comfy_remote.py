"""A ComfyUI websocket client sees the same messages when a `stablekit worker` process runs its
prompts as when the server runs them itself: execution_start, execution_cached, executing per node,
progress per step, binary previews, executed, execution_success, then executing null. Slow: a
worker subprocess loads the embedded model."""
import json
import os
import signal
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from serve_fixtures import UvicornThread

from stablekit.serve.app import create_app
from stablekit.serve.settings import ServeSettings
from test_serve_comfy import default_prompt
from test_serve_comfy_ws import _of, _run

SRC = str(Path(__file__).resolve().parents[1] / "src")
LAUNCH = ("import sys; from stablekit.cli import ArgumentParser; from stablekit.cli import serve; "
          "p = ArgumentParser(prog='stablekit'); serve.register(p.add_subparsers(dest='command')); "
          "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")


def _sequence(messages):
    """What a ComfyUI client sees, without the ids that differ between runs."""
    out = []
    for m in messages:
        d = m["data"]
        if m["type"] == "status":
            continue
        out.append((m["type"], d.get("node"), d.get("value"), tuple(sorted(d.get("nodes", ())))))
    return out


def _two_runs(addr):
    client_id = str(uuid.uuid4())
    first = _run(addr, client_id, default_prompt(**{"3__seed": 1}))
    second = _run(addr, client_id, default_prompt(**{"3__seed": 2}))
    return first, second


@pytest.mark.slow
def test_worker_process_prompts_send_comfyui_the_same_messages(tmp_path):
    with UvicornThread(create_app(ServeSettings(data_dir=tmp_path / "local", workers=1))) as srv:
        local = _two_runs(f"127.0.0.1:{srv.port}")
    data = tmp_path / "data"
    app = create_app(ServeSettings(data_dir=data, workers=0))  # every job goes to the worker process
    log = tmp_path / "worker.log"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with UvicornThread(app) as srv:
        addr = f"127.0.0.1:{srv.port}"
        worker = subprocess.Popen([sys.executable, "-c", LAUNCH, "worker", "--data-dir", str(data)], env=env,
                                  stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while "stablekit worker:" not in log.read_text():
                assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.2)
            remote = _two_runs(addr)
            prompt_id = remote[0][0]
            history = json.loads(urllib.request.urlopen(f"http://{addr}/history/{prompt_id}").read())[prompt_id]
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(60)
    for (_, here, here_frames), (pid, there, frames) in zip(local, remote):
        assert _sequence(there) == _sequence(here)
        assert len(frames) == len(here_frames) == 2 and all(struct.unpack(">II", f[:8]) == (1, 1) for f in frames)
        assert _of(there, "progress")[0] == {"value": 1, "max": 2, "prompt_id": pid, "node": "3"}
        assert _of(there, "executing")[-1] == {"node": None, "prompt_id": pid}
    # the worker's engine keeps its cache: only the sampler and what follows ran again
    assert sorted(_of(remote[1][1], "execution_cached")[0]["nodes"]) == ["4", "5", "6", "7"]
    assert [d["node"] for d in _of(remote[1][1], "executing")] == ["3", "8", "9", None]
    assert history["status"]["status_str"] == "success"
