"""`stablekit data prepare`: a folder of collected images -> training-ready PNGs and a report.

What the lecture's labs do by hand (convert everything to PNG, crop so faces fill the frame,
resize to the training resolution) as one run that never aborts on a bad file, never writes into
or changes the source folder, never overwrites an output without `overwrite=True`, and lists
every file it did not write with the reason. Near-duplicates (perceptual hash, `imagehash`) are
left out and reported with the file they repeat.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError, features

from stablekit.data import focus
from stablekit.data.buckets import make_bucket_resolutions, select_bucket
from stablekit.data.dedupe import DuplicateIndex
from stablekit.data.prepare_image import Geometry, cover_box, cut, to_rgb
from stablekit.data.prepare_walk import Skip, walk_sources
from stablekit.errors import StablekitError

CROPS = ("center", "face", "focus")
CAPTION_EXTENSIONS = (".txt", ".caption")
# Extensions that promise an image: such a file Pillow cannot identify is corrupt, not foreign.
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                    ".avif", ".heic", ".heif", ".tga", ".ppm", ".pgm", ".pbm", ".ico", ".jp2", ".psd"}
REPORT_NAME = "prepare-report.json"
# Formats Pillow reads only through a plugin package (AVIF is built into Pillow >= 11.2).
PLUGIN_FORMATS = {".heic": "pillow-heif", ".heif": "pillow-heif", ".avif": "pillow-avif-plugin"}


@dataclass
class PrepareConfig:
    """Settings of one run. resolution 0 keeps each image's size (convert only)."""
    resolution: int = 512
    buckets: bool = False
    crop: str = "center"
    dedupe: bool = True
    dedupe_distance: int = 2  # phash Hamming distance (of 64 bits) that still counts as the same image
    overwrite: bool = False
    matte: tuple[int, int, int] = (255, 255, 255)
    min_side: int = 64
    max_pixels: int = 89_478_485  # Pillow's decompression-bomb threshold
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    face_margin: float = 2.0  # the crop's shorter side is this many face heights (when the image allows)
    copy_captions: bool = True

    def validate(self) -> None:
        if self.crop not in CROPS:
            raise StablekitError(f"unknown crop {self.crop!r}; choose one of {', '.join(CROPS)}")
        if self.resolution < 0 or (self.buckets and self.resolution == 0):
            raise StablekitError(f"resolution must be positive for buckets and >= 0 otherwise "
                                 f"(got {self.resolution}); 0 keeps each image's size")
        if self.buckets and self.max_bucket_reso < self.resolution:
            self.max_bucket_reso = self.resolution  # kohya requires max_bucket_reso >= resolution
        if self.min_side < 1 or self.face_margin <= 0 or self.dedupe_distance < 0:
            raise StablekitError("min_side must be >= 1, face_margin > 0 and dedupe_distance >= 0")


@dataclass
class PrepareReport:
    """What a run did: every written file, every skipped one with its reason, and counts."""
    source: str
    dest: str
    config: dict
    written: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    captions_copied: int = 0
    seconds: float = 0.0
    report_path: str = ""

    def counts(self) -> dict[str, int]:
        out = {"written": len(self.written)}
        for code in sorted({item["code"] for item in self.skipped}):
            out[code] = sum(item["code"] == code for item in self.skipped)
        notes = [w.get("note") for w in self.written if w.get("note")]
        if notes:
            out["written with a note"] = len(notes)
        return out

    def to_dict(self) -> dict:
        return {**asdict(self), "counts": self.counts()}

    def table(self) -> str:
        """The summary people read: counts per outcome, then each skipped file and why."""
        counts = self.counts()
        width = max(len(k) for k in counts)
        lines = [f"{'outcome':<{width}}  files", f"{'-' * width}  -----"]
        lines += [f"{k:<{width}}  {v:>5}" for k, v in counts.items()]
        if self.skipped:
            lines.append("")
            lines.append("skipped:")
            lines += [f"  {s['path']}: {s['reason']}" for s in self.skipped]
        return "\n".join(lines)


def prepare(src: str | Path, dst: str | Path, config: PrepareConfig | None = None,
            progress: bool = True, report_path: str | Path | None = None) -> PrepareReport:
    """Convert every image under `src` into PNGs under `dst` (same relative layout), cropped and
    resized by `config`; write the report as JSON (default dst/prepare-report.json) and return it.
    Raises StablekitError only for a bad call (missing source, dst equal to src); a bad file is
    skipped and reported."""
    config = config or PrepareConfig()
    config.validate()
    src, dst = Path(src).absolute(), Path(dst).absolute()
    if not src.is_dir():
        raise StablekitError(f"source folder {src} does not exist or is not a folder")
    if src.resolve() == dst.resolve() or src.resolve().is_relative_to(dst.resolve()):
        raise StablekitError(f"output folder {dst} would hold the source {src}; choose a separate folder "
                             f"(prepare never writes into its sources)")
    start = time.perf_counter()
    report = PrepareReport(str(src), str(dst), {**asdict(config), "matte": list(config.matte)})
    exclude = dst if dst.resolve().is_relative_to(src.resolve()) else None
    files, walk_skips = walk_sources(src, exclude)
    for path, skip in walk_skips:
        _add_skip(report, src, path, skip)
    images, sidecars = _split_sidecars(files)
    outputs = _output_names(src, images)
    resos = (make_bucket_resolutions((config.resolution,) * 2, config.min_bucket_reso,
                                     config.max_bucket_reso, config.bucket_reso_steps)
             if config.buckets else None)
    hashes = DuplicateIndex(config.dedupe_distance) if config.dedupe else None
    _plugins()
    dst.mkdir(parents=True, exist_ok=True)
    for path in _progress(images, progress):
        out = dst / outputs[path]
        with _pixel_limit(config.max_pixels):
            result = _process(path, out, config, resos, hashes, src)
        if isinstance(result, Skip):
            _add_skip(report, src, path, result)
            continue
        result["source"] = str(path.relative_to(src))
        result["output"] = str(out.relative_to(dst))
        report.written.append(result)
        if config.copy_captions:
            report.captions_copied += _copy_sidecars(sidecars.get(path, []), out, config.overwrite)
    for path in sidecars.get(None, []):
        _add_skip(report, src, path, Skip("not-an-image", "a caption-like file with no image beside it"))
    report.skipped.sort(key=lambda s: s["path"])
    report.seconds = round(time.perf_counter() - start, 3)
    _write_report(report, Path(report_path) if report_path else dst / REPORT_NAME, config.overwrite)
    return report


def _process(path: Path, out: Path, config: PrepareConfig, resos, hashes, src: Path) -> dict | Skip:
    """One file -> the written record, or the Skip saying why not."""
    if path.stat().st_size == 0:
        return Skip("zero-byte", "empty file (0 bytes)")
    if out.exists() and not config.overwrite:
        return Skip("output-exists", f"output {out.name} exists; pass --overwrite to replace it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > config.max_pixels:
                    return _too_large(width, height, config)
                if min(width, height) < config.min_side:
                    return Skip("too-small", f"{width}x{height} is below the {config.min_side} px minimum side")
                fmt, frames = image.format, getattr(image, "n_frames", 1)
                rgb = to_rgb(image, config.matte)
                rgb.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Skip("too-large", f"decompression-bomb size ({exc})")
    except UnidentifiedImageError:
        if path.suffix.lower() in PLUGIN_FORMATS and not _plugins()[PLUGIN_FORMATS[path.suffix.lower()]]:
            return Skip("unsupported", f"{path.suffix} needs the {PLUGIN_FORMATS[path.suffix.lower()]} "
                                       f"Pillow plugin: pip install {PLUGIN_FORMATS[path.suffix.lower()]}")
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return Skip("corrupt", f"corrupt: Pillow cannot read it although it is named {path.suffix}")
        return Skip("not-an-image", "not an image Pillow can read")
    except OSError as exc:
        return Skip("corrupt", f"corrupt or truncated ({exc})")
    except Exception as exc:  # a decoder bug on a hostile file must not end the run
        return Skip("corrupt", f"cannot decode ({type(exc).__name__}: {exc})")
    record = {"format": fmt, "original_size": [width, height]}
    if frames > 1:
        record["note"] = f"animated ({frames} frames): first frame used"
    if hashes is not None:
        # hash a box-reduced copy: pHash looks at 32x32 anyway, and Lanczos on the full image is slow
        small = rgb.reduce(max(1, min(rgb.size) // 256))
        duplicate = hashes.check(small, str(path.relative_to(src)))
        if duplicate is not None:
            return duplicate
    geometry, crop_note = _geometry(rgb, config, resos)
    if crop_note:
        record["note"] = "; ".join(filter(None, [record.get("note"), crop_note]))
    result = cut(rgb, geometry)
    _save_png(result, out)
    record.update(size=list(result.size), box=[round(v, 2) for v in geometry.box])
    return record


@contextlib.contextmanager
def _pixel_limit(max_pixels: int):
    # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that while reading the header;
    # the user's limit replaces its default for the duration of one file.
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


@functools.lru_cache(maxsize=1)
def _plugins() -> dict[str, bool]:
    """Register the optional Pillow plugins that are installed; which ones are available."""
    found = {"pillow-heif": False, "pillow-avif-plugin": features.check("avif") is True}
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        found["pillow-heif"] = True
    except ImportError:
        pass
    if not found["pillow-avif-plugin"]:
        try:
            import pillow_avif  # noqa: F401  (registers itself on import)

            found["pillow-avif-plugin"] = True
        except ImportError:
            pass
    return found


def _too_large(width: int, height: int, config: PrepareConfig) -> Skip:
    return Skip("too-large", f"{width}x{height} = {width * height:,} pixels is over the "
                             f"{config.max_pixels:,}-pixel limit (decompression-bomb size)")


def _geometry(image: Image.Image, config: PrepareConfig, resos) -> tuple[Geometry, str | None]:
    w, h = image.size
    if config.resolution == 0:
        return Geometry((0, 0, w, h), (w, h)), None
    target = select_bucket(w, h, resos).bucket if resos else (config.resolution, config.resolution)
    center, zoom, note = (w / 2, h / 2), None, None
    if config.crop == "face":
        faces = focus.find_faces(image)
        if faces:
            left, top, fw, fh = faces[0]
            center = (left + fw / 2, top + fh / 2)
            # zoom so the face fills the frame, but never below the target size in source pixels
            zoom = max(max(fw, fh) * config.face_margin, min(target) * 1.0)
            note = f"face at {left},{top} {fw}x{fh}" + (f" (+{len(faces) - 1} more)" if len(faces) > 1 else "")
        else:
            note = "no face found: center crop"
    elif config.crop == "focus":
        center = focus.focus_point(image)
    return Geometry(cover_box(w, h, target, center, zoom), target), note


def _split_sidecars(files: list[Path]) -> tuple[list[Path], dict]:
    """Caption files beside an image travel with it; the rest are candidate images."""
    images = [p for p in files if p.suffix.lower() not in CAPTION_EXTENSIONS]
    by_stem = {(p.parent, p.stem): p for p in reversed(images)}  # the first image of a stem wins
    sidecars: dict = {}
    for p in files:
        if p.suffix.lower() in CAPTION_EXTENSIONS:
            sidecars.setdefault(by_stem.get((p.parent, p.stem)), []).append(p)
    return images, sidecars


def _output_names(src: Path, images: list[Path]) -> dict[Path, Path]:
    """a/b.jpg -> a/b.png; a second source with the same stem (b.gif) -> a/b__gif.png."""
    taken, names = set(), {}
    for p in images:
        rel = p.relative_to(src).with_suffix(".png")
        if rel in taken:
            rel = rel.with_name(f"{p.stem}__{p.suffix.lstrip('.').lower() or 'noext'}.png")
        taken.add(rel)
        names[p] = rel
    return names


def _save_png(image: Image.Image, out: Path) -> None:
    # Write beside the target and rename: an interrupted run never leaves half a PNG.
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".prepare-", suffix=".png", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format="PNG")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _copy_sidecars(captions: list[Path], out: Path, overwrite: bool) -> int:
    copied = 0
    for cap in captions:
        target = out.with_suffix(cap.suffix)
        if target.exists() and not overwrite:
            continue
        shutil.copyfile(cap, target)
        copied += 1
    return copied


def _add_skip(report: PrepareReport, src: Path, path: Path, skip: Skip) -> None:
    rel = str(path.relative_to(src)) if path.is_relative_to(src) else str(path)
    report.skipped.append({"path": rel, "code": skip.code, "reason": skip.reason})


def _write_report(report: PrepareReport, path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:  # keep an earlier run's report: number this one
        n = 2
        while (candidate := path.with_name(f"{path.stem}-{n}{path.suffix}")).exists():
            n += 1
        path = candidate
    report.report_path = str(path)
    path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")


def _progress(items: list, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc="prepare", unit="img", leave=False)
