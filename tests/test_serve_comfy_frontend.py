"""The ComfyUI web frontend (comfyui-frontend-package) against a real stablekit server, in headless
Chromium driven over the DevTools protocol: the page loads, the node list comes from /object_info,
and queueing ComfyUI's default workflow (on the embedded model, 64 px, 4 steps) shows an image.

Slow (a browser on a 2-core machine): run with `-m slow`. STABLEKIT_SCREENSHOT=path saves a
screenshot of the finished page (docs/comfyui-frontend.png was made so)."""
import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

import pytest
import websocket

from stablekit.serve.comfy.frontend import web_root
from test_serve_comfy import default_prompt
from test_serve_comfy_ws import _free_port, server  # noqa: F401  (the module's server fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(web_root() is None, reason="comfyui-frontend-package is not installed"),
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")]


class Page:
    """A minimal DevTools-protocol client: evaluate JavaScript, take screenshots, collect failed requests."""

    def __init__(self, ws_url: str):
        self.ws = websocket.create_connection(ws_url, timeout=600, suppress_origin=True)
        self.ids = itertools.count(1)
        self.failed: list[str] = []
        self.console: list[str] = []

    def call(self, method: str, **params):
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == call_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)

    def _event(self, msg: dict) -> None:
        if msg.get("method") == "Network.responseReceived":
            resp = msg["params"]["response"]
            if resp["status"] >= 400:
                self.failed.append(f"{resp['status']} {resp['url']}")
        elif msg.get("method") == "Runtime.consoleAPICalled" and msg["params"]["type"] == "error":
            self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in msg["params"]["args"]))

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(1.0)
        raise AssertionError(f"timed out waiting for {what}; failed requests: {self.failed[-10:]}; "
                             f"console errors: {self.console[-5:]}")


@pytest.fixture()
def browser():
    port = _free_port()
    profile = tempfile.mkdtemp(prefix="stablekit-chromium-")
    proc = subprocess.Popen(["nice", "-n", "19", CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", f"--remote-debugging-port={port}", f"--user-data-dir={profile}",
                             "--window-size=1600,900", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json").read())
                page = next(t for t in targets if t["type"] == "page")
                break
            except (OSError, StopIteration):
                assert time.monotonic() < deadline, "chromium did not start"
                time.sleep(0.5)
        yield Page(page["webSocketDebuggerUrl"])
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(profile, ignore_errors=True)


def test_frontend_loads_lists_nodes_and_queues_default_workflow(server, browser):  # noqa: F811
    addr, data = server
    # a returning user: the frontend opens its default graph instead of the templates dialog
    req = urllib.request.Request(f"http://{addr}/api/settings", method="POST",
                                 data=json.dumps({"Comfy.TutorialCompleted": True}).encode())
    urllib.request.urlopen(req)
    for domain in ("Page", "Runtime", "Network"):
        browser.call(f"{domain}.enable")
    browser.call("Page.navigate", url=f"http://{addr}/")
    count = browser.wait("window.app && window.app.graph && window.LiteGraph && "
                         "Object.keys(LiteGraph.registered_node_types).length", 600, "the node list")
    assert count >= 23
    assert browser.wait("window.app.graph._nodes.length", 120, "the frontend's start graph") >= 1
    # The frontend's own start graph is now a newer model's (UNETLoader, CLIPLoader); load ComfyUI's
    # classic default graph as a user would, from its "Save (API Format)" file (app.loadApiJson).
    prompt = default_prompt(**{"3__steps": 4, "3__seed": 5})
    browser.js(f"app.loadApiJson({json.dumps(prompt)}, 'comfyui-default-api.json')")
    types = browser.wait("app.graph._nodes.some(n => n.type === 'KSampler') && app.graph._nodes.map(n => n.type)",
                         120, "the default graph")
    assert sorted(types) == sorted(n["class_type"] for n in prompt.values())
    before = set((data / "output").glob("*.png"))
    browser.js("app.queuePrompt(0, 1)")
    deadline = time.monotonic() + 900
    while not set((data / "output").glob("*.png")) - before:
        assert time.monotonic() < deadline, f"no image saved; failed requests: {browser.failed[-10:]}"
        time.sleep(1.0)
    browser.wait("""Array.from(document.querySelectorAll('img')).some(i => i.src.includes('/view') &&
        i.complete && i.naturalWidth > 0)""", 120, "the image shown in the page")
    shot = os.environ.get("STABLEKIT_SCREENSHOT")
    if shot:  # the whole graph in view, the saved image on its SaveImage node
        browser.js("app.extensionManager.command.execute('Comfy.Canvas.FitView')")
        time.sleep(3)
        png = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
        with open(shot, "wb") as f:
            f.write(png)
    assert not [f for f in browser.failed if "/api/prompt" in f or "/object_info" in f]
