"""The server's settings: one typed dataclass built from `stablekit serve` flags (or by tests)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from stablekit.errors import StablekitError

LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass
class ServeSettings:
    """Where the server listens, keeps its data and finds models; who may call it; how many workers.

    queue_url None means SQLite under data_dir (`sqlite:///DATA_DIR/queue.sqlite3`). api_auth holds
    A1111's `--api-auth user:pass` pairs (HTTP Basic); api_key the token for every route.
    """

    host: str = "127.0.0.1"
    port: int = 7860
    data_dir: Path = Path("stablekit-data")
    models_dir: Path | None = None
    api_key: str | None = None
    api_auth: list[tuple[str, str]] = field(default_factory=list)
    workers: int = 1
    queue_url: str | None = None
    max_upload_mb: int = 50
    max_body_mb: int = 60

    def __post_init__(self):
        self.data_dir = Path(self.data_dir)
        self.models_dir = Path(self.models_dir) if self.models_dir is not None else None
        if not isinstance(self.workers, int) or self.workers < 0:
            raise StablekitError(f"--workers must be a whole number >= 0 (got {self.workers!r}); 0 means only "
                                 "separate 'stablekit worker' processes run jobs")
        if not (0 < int(self.port) < 65536):
            raise StablekitError(f"--port must be 1..65535 (got {self.port})")
        if self.models_dir is not None and not self.models_dir.is_dir():
            raise StablekitError(f"--models-dir {self.models_dir} is not a folder; give the folder holding "
                                 "checkpoints/ (and loras/, vae/, controlnet/) or leave it out")
        if self.api_key == "":
            raise StablekitError("--api-key is empty; give a token or leave the flag out")

    @property
    def output_dir(self) -> Path:
        return self.data_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.data_dir / "input"

    @property
    def user_dir(self) -> Path:
        return self.data_dir / "user"

    @property
    def upscaler_dirs(self) -> tuple[str, ...]:
        """Where hires upscaler models are found (before $STABLEKIT_UPSCALER_DIR): --models-dir's
        ESRGAN/ and RealESRGAN/ (A1111's folders) and upscale_models/ (ComfyUI's)."""
        from stablekit.generate.upscale_models import models_dir_upscalers

        return tuple(str(d) for d in models_dir_upscalers(self.models_dir))

    @property
    def resolved_queue_url(self) -> str:
        """The queue URL to open: the given one, or SQLite in the data folder."""
        return self.queue_url or f"sqlite:///{(self.data_dir / 'queue.sqlite3').resolve()}"

    @property
    def secured(self) -> bool:
        return bool(self.api_key or self.api_auth)

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK or self.host.startswith("127.")

    def make_dirs(self) -> None:
        for d in (self.data_dir, self.output_dir, self.input_dir, self.user_dir):
            d.mkdir(parents=True, exist_ok=True)


def parse_api_auth(text: str | None) -> list[tuple[str, str]]:
    """A1111's `--api-auth user:pass[,user2:pass2]` -> [(user, pass), ...]; one-line error when malformed."""
    if not text:
        return []
    pairs = []
    for item in text.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise StablekitError(f"--api-auth {item.strip()!r} must be USER:PASS (several separated by commas)")
        pairs.append((user, password))
    return pairs
