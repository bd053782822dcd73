"""ComfyUI-compatible API (routes.py: `router`), the "comfy.prompt" job kind (jobs.py), the /ws
websocket (ws.py), user storage (userdata.py) and the ComfyUI web frontend (frontend.py).
See docs/serving-comfyui.md."""
