"""`stablekit serve` (the HTTP server: our job API, A1111's and ComfyUI's APIs on one port) and
`stablekit worker` (a process draining the same job queue). See docs/serving.md."""
from __future__ import annotations

from pathlib import Path

SERVE_DESCRIPTION = """Serve stablekit over HTTP on one port: our job API (/api/v1/jobs) and page (/app), the
A1111 API (/sdapi/v1) and the ComfyUI API (/prompt, /ws, ...). Jobs go through a persistent queue (SQLite in
--data-dir, or PostgreSQL with --queue-url), so a restart loses none. Outputs go to DATA_DIR/output,
uploads to DATA_DIR/input. Listens on 127.0.0.1 unless --host says otherwise; see docs/serving.md."""
WORKER_DESCRIPTION = """Run jobs from a server's queue in this process (one per GPU or machine): give the same
--queue-url as the server (a postgresql:// URL for several machines; the server's sqlite:/// file on the same
machine). Stops on Ctrl-C/SIGTERM."""


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="HTTP server: our job API, A1111 and ComfyUI APIs, one job queue",
                              description=SERVE_DESCRIPTION)
    p.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface, then use --api-key)")
    p.add_argument("--port", type=int, default=7860, metavar="N", help="port to listen on (default 7860)")
    _common(p)
    p.add_argument("--models-dir", default=None, metavar="DIR",
                   help="folder with checkpoints/ (and loras/, vae/, controlnet/; upscalers in ESRGAN/, RealESRGAN/, "
                        "upscale_models/); the embedded model is always offered")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require this key on every route: 'Authorization: Bearer KEY', 'X-API-Key: KEY' or ?token=KEY")
    p.add_argument("--api-auth", default=None, metavar="USER:PASS",
                   help="A1111's HTTP Basic credentials, USER:PASS[,USER2:PASS2]")
    p.add_argument("--max-upload-mb", type=int, default=50, metavar="N", help="largest uploaded file in MB (default 50)")
    p.add_argument("--max-body-mb", type=int, default=60, metavar="N", help="largest request body in MB (default 60)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default info)")
    p.set_defaults(func=run_serve)

    w = subparsers.add_parser("worker", help="run jobs from a server's queue in this process",
                              description=WORKER_DESCRIPTION)
    _common(w)
    w.add_argument("--models-dir", default=None, metavar="DIR",
                   help="folder with checkpoints/ (and loras/, ...), as the server's (default: the embedded model only)")
    w.add_argument("--kinds", default=None, metavar="K1,K2",
                   help="run only these job kinds, e.g. generate,comfy.prompt (default: every kind)")
    w.add_argument("--once", action="store_true", help="exit when the queue is empty instead of waiting for jobs")
    w.set_defaults(func=run_worker)


def _common(p) -> None:
    p.add_argument("--data-dir", default="stablekit-data", metavar="DIR",
                   help="outputs (output/), uploads (input/), user settings (user/) and the SQLite queue "
                        "(default ./stablekit-data)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="job-running threads in this process (default 1; serve: 0 leaves jobs to 'stablekit worker')")
    p.add_argument("--queue-url", default=None, metavar="URL",
                   help="sqlite:///PATH.sqlite3 or postgresql://USER@HOST/DB (default sqlite in --data-dir)")


def _settings(args, **extra):
    from stablekit.serve.settings import ServeSettings

    return ServeSettings(data_dir=Path(args.data_dir), models_dir=args.models_dir, workers=args.workers,
                         queue_url=args.queue_url, **extra)


def run_serve(args) -> int:
    import logging

    import uvicorn

    from stablekit.serve.app import create_app
    from stablekit.serve.security import bind_warning
    from stablekit.serve.settings import parse_api_auth

    settings = _settings(args, host=args.host, port=args.port, api_key=args.api_key,
                         api_auth=parse_api_auth(args.api_auth), max_upload_mb=args.max_upload_mb,
                         max_body_mb=args.max_body_mb)
    warning = bind_warning(settings)
    if warning:
        print(warning, flush=True)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(name)s: %(message)s")
    app = create_app(settings)
    print(f"stablekit serve: http://{settings.host}:{settings.port}/app  (data: {settings.data_dir}, "
          f"queue: {settings.resolved_queue_url}, workers: {settings.workers})", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level, ws="websockets-sansio")
    return 0


def run_worker(args) -> int:
    import logging

    from stablekit.serve.worker import run_worker as work

    logging.basicConfig(level="INFO", format="%(levelname)s: %(name)s: %(message)s")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] if args.kinds else None
    return work(_settings(args), kinds=kinds, once=args.once)
