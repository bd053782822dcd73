"""`stablekit serve`: one FastAPI process serving our job API, A1111's /sdapi/v1 and ComfyUI's API
over one persistent job queue (SQLite by default, PostgreSQL to share it between machines).
See docs/serving.md. Entry point: stablekit.serve.app.create_app(ServeSettings(...))."""
