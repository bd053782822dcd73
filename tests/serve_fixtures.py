"""Helpers for the server tests: a real PostgreSQL started for the session, free ports, a uvicorn
server in a thread, the tiny test model put into a ServerState's model cache."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    return None


class Postgres:
    """A throwaway PostgreSQL cluster on a loopback port (as the postgres user when run as root)."""

    def __init__(self):
        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not self.initdb or not self.pg_ctl:
            pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql); the postgres queue "
                        "test needs a real server")
        try:
            import psycopg  # noqa: F401
        except ImportError:
            pytest.skip("the psycopg package is not installed (pip install 'psycopg[binary]')")
        self.dir = Path(tempfile.mkdtemp(prefix="stablekit-pg-"))
        self.port = free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # postgres refuses to run as root
            if not shutil.which("runuser"):
                pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
            shutil.chown(self.dir, "postgres")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        data = self.dir / "data"
        self._run([self.initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"])
        self._run([self.pg_ctl, "-D", str(data), "-w", "-l", str(self.dir / "log"), "-o",
                   f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off", "start"])
        self.data = data
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, cmd: list[str]) -> None:
        try:
            subprocess.run(self.prefix + cmd, check=True, capture_output=True, timeout=120)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            err = getattr(exc, "stderr", b"") or b""
            pytest.skip(f"could not start a PostgreSQL server ({' '.join(cmd[:1])}): "
                        f"{err.decode(errors='replace').strip()[:200] or exc}")

    def fresh_url(self) -> str:
        """The URL after dropping the jobs table (each test starts from an empty queue)."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS jobs")
        return self.url

    def stop(self) -> None:
        subprocess.run(self.prefix + [self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


class UvicornThread:
    """A real uvicorn server for an app, in a thread, on a free loopback port."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    ws="websockets"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


def tiny_pipeline():
    """A Pipeline on the tiny seeded test model (fast; stands in for the embedded model)."""
    from fixtures import tiny_components

    from stablekit.generate.pipeline import Pipeline

    return Pipeline(tiny_components("sd1"), progress=False)


def use_tiny_model(state) -> None:
    """Make the state's "shapes.safetensors" the tiny model, so generate jobs need no real load."""
    state.models._loaded["shapes.safetensors"] = tiny_pipeline()
