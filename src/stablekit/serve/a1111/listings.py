"""The A1111 list endpoints' bodies: samplers, schedulers, upscalers, models, VAEs, LoRAs,
embeddings, styles, scripts, memory and command-line flags, in A1111's item shapes
(modules/api/models.py SamplerItem, SchedulerItem, UpscalerItem, SDModelItem, ... v1.10)."""
from __future__ import annotations

import os
from pathlib import Path

from stablekit.serve.a1111.options import read_styles


def samplers() -> list[dict]:
    """SamplerItem per stablekit sampler: A1111's label, its aliases (ComfyUI's and A1111's old
    k-diffusion names), options as A1111 writes them (strings)."""
    from stablekit.samplers import SAMPLERS

    items = []
    for spec in SAMPLERS.values():
        options = {"scheduler": spec.schedule.lower().replace(" ", "_")}
        if spec.discard_penultimate_sigma:
            options["discard_next_to_last_sigma"] = "True"
        if spec.stochastic:
            options["uses_ensd"] = "True"
        items.append({"name": spec.name, "aliases": list(spec.aliases), "options": options})
    return items


def schedulers() -> list[dict]:
    """SchedulerItem per schedule: name (A1111's lower-case id), label, aliases."""
    from stablekit.samplers.schedules import SCHEDULES

    items = [{"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1,
              "need_inner_model": False}]
    for label, (_, aliases) in SCHEDULES.items():
        name = label.lower().replace(" ", "_")
        items.append({"name": name, "label": label, "aliases": [a for a in aliases if a != name] or None,
                      "default_rho": 7.0 if label == "Karras" else -1, "need_inner_model": False})
    return items


def upscalers(state=None) -> list[dict]:
    """UpscalerItem for what the hires fix can use in pixel space ("None" resizes with Lanczos), then
    the ESRGAN-family models in --models-dir's ESRGAN/, RealESRGAN/, upscale_models/ and
    $STABLEKIT_UPSCALER_DIR by the names A1111 gives them (scale as A1111 lists it: 2 for R-ESRGAN 2x+,
    else 4)."""
    from stablekit.generate.hires import IMAGE_UPSCALERS
    from stablekit.generate.upscale_models import ALIAS_SCALES, list_upscalers

    items = [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4.0}
             for name in ("None", *IMAGE_UPSCALERS)]
    return items + [{"name": name, "model_name": None, "model_path": str(path), "model_url": None,
                     "scale": float(ALIAS_SCALES.get(name, 4))}
                     for name, path in list_upscalers(state.settings.upscaler_dirs if state is not None else ())]


def latent_upscale_modes() -> list[dict]:
    from stablekit.generate.hires import LATENT_MODES

    return [{"name": name} for name in LATENT_MODES]


def sd_models(state) -> list[dict]:
    """SDModelItem per checkpoint (the embedded model first). Hashes are left null until a model has
    been loaded (A1111 also computes them lazily)."""
    models = state.models
    items = []
    for name in models.list_checkpoints():
        path = models.folders.resolve("checkpoints", name)
        items.append({"title": models.title(name), "model_name": Path(name).with_suffix("").as_posix(),
                      "hash": None, "sha256": None, "filename": str(path), "config": None})
    return items


def sd_vaes(state) -> list[dict]:
    folders = state.models.folders
    return [{"model_name": Path(name).stem, "filename": str(folders.resolve("vae", name))}
            for name in folders.list("vae")]


def loras(state) -> list[dict]:
    """The Lora extension's /sdapi/v1/loras items: name (used in <lora:NAME:w>), alias, path, metadata."""
    folders = state.models.folders
    items = []
    for name in folders.list("loras"):
        path = folders.resolve("loras", name)
        items.append({"name": path.stem, "alias": path.stem, "path": str(path), "metadata": _metadata(path)})
    return items


def _metadata(path: Path) -> dict:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # a damaged file lists with no metadata rather than failing the listing
        return {}


def embeddings(state) -> dict:
    """EmbeddingsResponse: every .safetensors embedding under MODELS_DIR/embeddings with its vectors
    and width (read without loading the model; pickled .pt files are not opened here)."""
    models = state.models.folders.models
    loaded: dict = {}
    folder = models / "embeddings" if models is not None else None
    if folder is not None and folder.is_dir():
        for path in sorted(folder.rglob("*.safetensors")):
            shape = _embedding_shape(path)
            if shape is not None:
                loaded[path.stem] = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                     "shape": shape[1], "vectors": shape[0]}
    return {"loaded": loaded, "skipped": {}}


def _embedding_shape(path: Path) -> tuple[int, int] | None:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                shape = f.get_slice(key).get_shape()
                if len(shape) == 2:
                    return int(shape[0]), int(shape[1])
                if len(shape) == 1:
                    return 1, int(shape[0])
    except Exception:
        return None
    return None


def prompt_styles(state) -> list[dict]:
    return [{"name": n, "prompt": p, "negative_prompt": neg} for n, (p, neg) in read_styles(state).items()]


def scripts() -> dict:
    return {"txt2img": [], "img2img": []}


def memory() -> dict:
    """MemoryResponse: this process's RAM (psutil) and CUDA, as A1111 reports them."""
    try:
        import psutil

        process = psutil.Process(os.getpid())
        rss = process.memory_info().rss
        total = psutil.virtual_memory().total
        ram = {"free": total - rss, "used": rss, "total": total}
    except Exception as exc:  # psutil missing or refused: A1111 reports the error the same way
        ram = {"error": str(exc)}
    try:
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            cuda = {"system": {"free": free, "used": total - free, "total": total}}
        else:
            cuda = {"error": "unavailable"}
    except Exception as exc:
        cuda = {"error": str(exc)}
    return {"ram": ram, "cuda": cuda}


def cmd_flags(state) -> dict:
    """A1111's cmd-flags for the options clients look at, filled from `stablekit serve`'s settings."""
    s = state.settings
    return {"api": True, "nowebui": True, "listen": not s.loopback, "port": s.port, "server_name": s.host,
            "api_auth": ",".join(f"{u}:***" for u, _ in s.api_auth) or None, "data_dir": str(s.data_dir),
            "ckpt_dir": str(s.models_dir / "checkpoints") if s.models_dir else None,
            "lora_dir": str(s.models_dir / "loras") if s.models_dir else None,
            "embeddings_dir": str(s.models_dir / "embeddings") if s.models_dir else None,
            "esrgan_models_path": str(s.models_dir / "ESRGAN") if s.models_dir else None,
            "realesrgan_models_path": str(s.models_dir / "RealESRGAN") if s.models_dir else None,
            "styles_file": [str(s.data_dir / "styles.csv")], "skip_torch_cuda_test": True, "no_half": True,
            "use_cpu": [], "api_log": False, "disable_safe_unpickle": False}
