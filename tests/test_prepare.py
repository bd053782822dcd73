"""`stablekit data prepare` on a folder seeded with every kind of bad input, plus duplicates."""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from stablekit.cli import main
from stablekit.data.prepare import PrepareConfig, prepare
from stablekit.data.prepare_image import to_rgb


def _noise(w, h, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(path: Path, side=30000):
    """A valid-looking 1-bit PNG header claiming side x side pixels, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))


def seed_folder(src: Path) -> dict[str, str]:
    """Good images in awkward formats and every bad input; returns {name: expected skip code}."""
    src.mkdir()
    sub = src / "sub"
    sub.mkdir()
    good = _noise(300, 200)
    good.save(src / "good.jpg", quality=95)
    (src / "good.txt").write_text("a photo of noise")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    good.save(src / "rotated.jpg", exif=exif, quality=95)
    rgba = Image.new("RGBA", (128, 128), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (32, 32, 96, 96))
    rgba.save(sub / "alpha.png")
    _noise(120, 100, 1).convert("P", palette=Image.Palette.ADAPTIVE).save(src / "palette.gif")
    frames = [Image.new("RGB", (100, 100), c) for c in ((200, 10, 10), (10, 200, 10))]
    frames[0].save(src / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    _noise(160, 120, 2).convert("CMYK").save(src / "cmyk.jpg")
    Image.fromarray(np.full((100, 100), 40000, dtype=np.uint16)).save(src / "gray16.png")
    _noise(150, 150, 3).save(src / "different.webp", lossless=True)
    if features.check("avif"):
        _noise(140, 140, 4).save(src / "modern.avif")
    # duplicates: a resized re-encode and an exact copy of good.jpg
    good.resize((270, 180), Image.Resampling.LANCZOS).save(sub / "good_small.png")
    (src / "zz_copy.jpg").write_bytes((src / "good.jpg").read_bytes())
    expected = {"sub/good_small.png": "duplicate", "zz_copy.jpg": "duplicate"}
    # bad inputs
    (src / "empty.png").write_bytes(b"")
    expected["empty.png"] = "zero-byte"
    (src / "corrupt.jpg").write_bytes(os.urandom(2000))
    expected["corrupt.jpg"] = "corrupt"
    buf = io.BytesIO()
    _noise(200, 200, 5).save(buf, "PNG")
    (src / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    expected["truncated.png"] = "corrupt"
    (src / "data.bin").write_bytes(os.urandom(500))
    expected["data.bin"] = "not-an-image"
    (src / "notes.txt").write_text("not a caption of anything")
    expected["notes.txt"] = "not-an-image"
    try:
        import pillow_heif  # noqa: F401
    except ImportError:  # without the plugin a .heic is reported as needing it, not as corrupt
        (src / "phone.heic").write_bytes(b"\0\0\0\x18ftypheic" + os.urandom(200))
        expected["phone.heic"] = "unsupported"
    _noise(16, 16).save(src / "tiny.png")
    expected["tiny.png"] = "too-small"
    _bomb_png(src / "bomb.png")
    expected["bomb.png"] = "too-large"
    _bomb_png(src / "big.png", side=12000)  # over the limit, under Pillow's hard 2x refusal
    expected["big.png"] = "too-large"
    os.symlink("self_loop", src / "self_loop")
    expected["self_loop"] = "symlink-loop"
    os.symlink("..", sub / "up")
    expected["sub/up"] = "symlink-loop"
    os.symlink("missing.png", src / "dangling.png")
    expected["dangling.png"] = "broken-symlink"
    os.mkfifo(src / "pipe.png")
    expected["pipe.png"] = "not-a-file"
    return expected


def snapshot(root: Path) -> dict:
    """Every entry's type, bytes hash and mtime, without following links."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else None
            out[str(p.relative_to(root))] = (st.st_mode, st.st_mtime_ns, digest,
                                             os.readlink(p) if p.is_symlink() else None)
    return out


def test_seeded_folder_reports_every_bad_file_and_touches_no_source(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "out"
    expected = seed_folder(src)
    before = snapshot(src)
    report = prepare(src, dst, PrepareConfig(resolution=64), progress=False)
    assert snapshot(src) == before
    codes = {s["path"]: s["code"] for s in report.skipped}
    assert codes == expected, report.table()
    assert "good.jpg" in codes["zz_copy.jpg"] or any("good.jpg" in s["reason"] for s in report.skipped)
    written = {w["source"] for w in report.written}
    must = {"good.jpg", "rotated.jpg", "sub/alpha.png", "palette.gif", "animated.gif", "cmyk.jpg",
            "gray16.png", "different.webp"}
    assert must <= written
    if features.check("avif"):
        assert "modern.avif" in written
    for w in report.written:
        with Image.open(dst / w["output"]) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "RGB", (64, 64))
    assert (dst / "good.txt").read_text() == "a photo of noise"
    assert report.captions_copied == 1
    saved = json.loads((dst / "prepare-report.json").read_text())
    assert saved["counts"]["written"] == len(report.written)
    assert {s["path"] for s in saved["skipped"]} == set(expected)
    table = report.table()
    for name in expected:
        assert name in table


def test_pixels_are_decoded_right(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "out"
    seed_folder(src)
    prepare(src, dst, PrepareConfig(resolution=0, dedupe=False, matte=(0, 0, 255)), progress=False)
    with Image.open(dst / "rotated.png") as im:
        assert im.size == (200, 300)  # EXIF orientation applied
    alpha = np.asarray(Image.open(dst / "sub/alpha.png"))
    assert tuple(alpha[0, 0]) == (0, 0, 255) and tuple(alpha[64, 64]) == (255, 0, 0)  # matte, object
    first = np.asarray(Image.open(dst / "animated.png"))
    assert first[50, 50, 0] > 150 and first[50, 50, 1] < 60  # the first (red) frame
    gray = np.asarray(Image.open(dst / "gray16.png"))
    assert abs(int(gray[0, 0, 0]) - round(40000 / 65535 * 255)) <= 1  # scaled, not clipped to 255


def test_no_overwrite_without_flag_then_overwrite(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    _noise(100, 80).save(src / "a.png")
    _noise(100, 80, 9).save(src / "a.jpg")  # same stem: second output gets its own name
    first = prepare(src, dst, PrepareConfig(resolution=32), progress=False)
    assert sorted(w["output"] for w in first.written) == ["a.png", "a__png.png"] or \
        sorted(w["output"] for w in first.written) == ["a.png", "a__jpg.png"]
    stamps = {p.name: p.stat().st_mtime_ns for p in dst.glob("a*.png")}
    second = prepare(src, dst, PrepareConfig(resolution=32), progress=False)
    assert not second.written and {s["code"] for s in second.skipped} == {"output-exists"}
    assert {p.name: p.stat().st_mtime_ns for p in dst.glob("a*.png")} == stamps
    assert (dst / "prepare-report-2.json").exists()  # the first report is kept
    third = prepare(src, dst, PrepareConfig(resolution=48, overwrite=True), progress=False)
    assert len(third.written) == 2
    assert Image.open(dst / "a.png").size == (48, 48)


def test_output_inside_source_is_excluded_and_source_as_output_refused(tmp_path):
    from stablekit.errors import StablekitError

    src = tmp_path / "src"
    src.mkdir()
    _noise(100, 100).save(src / "a.png")
    report = prepare(src, src / "prepared", PrepareConfig(resolution=32), progress=False)
    assert [w["source"] for w in report.written] == ["a.png"]
    again = prepare(src, src / "prepared", PrepareConfig(resolution=32, overwrite=True), progress=False)
    assert [w["source"] for w in again.written] == ["a.png"]  # its own outputs are not sources
    with pytest.raises(StablekitError, match="never writes into its sources"):
        prepare(src, src, progress=False)


def test_bucket_mode_writes_bucket_sizes(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    _noise(1000, 600).save(src / "wide.png")
    _noise(300, 900, 1).save(src / "tall.png")
    report = prepare(src, dst, PrepareConfig(resolution=512, buckets=True), progress=False)
    sizes = {w["source"]: tuple(w["size"]) for w in report.written}
    assert sizes == {"wide.png": (640, 384), "tall.png": (256, 832)}  # 1:3 -> nearest ratio 0.308


def test_focus_crop_follows_the_detail(tmp_path):
    canvas = Image.new("RGB", (400, 200), (128, 128, 128))
    canvas.paste(_noise(60, 60, 7), (320, 70))
    from stablekit.data.focus import focus_point

    cx, cy = focus_point(canvas)
    assert cx > 300 and 60 < cy < 140
    src, dst = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    canvas.save(src / "c.png")
    box = prepare(src, dst, PrepareConfig(resolution=64, crop="focus"), progress=False).written[0]["box"]
    assert box[0] == 200  # pushed to the right edge (center crop would start at 100)


def test_face_crop_zooms_on_the_face(tmp_path):
    cbook = pytest.importorskip("matplotlib.cbook")
    portrait = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    canvas = Image.new("RGB", (2000, 1200), (90, 120, 90))
    canvas.paste(portrait, (1400, 500))  # face lies near (1400+266, 500+216)
    src, dst = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    canvas.save(src / "person.jpg")
    (written,) = prepare(src, dst, PrepareConfig(resolution=256, crop="face"), progress=False).written
    left, top, right, bottom = written["box"]
    assert written["note"].startswith("face at")
    fx, fy, fw, fh = (int(v) for v in written["note"].split()[2].split(",") + written["note"].split()[3].split("x"))
    assert 1500 < fx + fw / 2 < 1800 and 600 < fy + fh / 2 < 800  # the pasted portrait's face
    assert right - left == pytest.approx(2 * max(fw, fh))  # face_margin 2: the face is half the side
    assert (left + right) / 2 == pytest.approx(fx + fw / 2) and (top + bottom) / 2 == pytest.approx(fy + fh / 2)
    from stablekit.data.focus import find_faces

    faces = find_faces(Image.open(dst / "person.png"))
    assert faces and faces[0][2] >= 256 * 0.35  # the face now fills a good part of the frame
    plain = tmp_path / "plain"
    plain.mkdir()
    _noise(300, 200).save(plain / "noise.png")
    no_face = prepare(plain, tmp_path / "o2", PrepareConfig(resolution=64, crop="face"), progress=False)
    assert no_face.written[0]["note"] == "no face found: center crop"
    assert no_face.written[0]["box"] == [50.0, 0.0, 250.0, 200.0]


def test_cli_exit_zero_with_skips_and_table(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "out"
    expected = seed_folder(src)
    code = main(["data", "prepare", str(src), str(dst), "--resolution", "64", "--crop", "center",
                 "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    for name in expected:
        assert name in out
    assert "written" in out and "duplicate" in out
    assert main(["data", "prepare", str(tmp_path / "nope"), str(dst)]) == 2


def test_to_rgb_cmyk_and_palette_transparency():
    p = Image.new("P", (4, 4), 0)
    p.putpalette([10, 20, 30] * 256)
    p.info["transparency"] = 0
    assert to_rgb(p, (1, 2, 3)).getpixel((0, 0)) == (1, 2, 3)
    assert to_rgb(Image.new("CMYK", (4, 4), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)


def test_dedupe_needs_structure_and_colour_to_agree():
    from stablekit.data.dedupe import DuplicateIndex

    index = DuplicateIndex(distance=2, capacity=2)  # grows while this test runs
    base = _noise(200, 150, 11)
    assert index.check(base, "a") is None
    assert index.check(Image.new("RGB", (100, 100), (250, 0, 0)), "red") is None
    assert index.check(Image.new("RGB", (100, 100), (0, 0, 250)), "blue") is None  # same pHash, other colour
    assert index.check(_noise(200, 150, 12), "other") is None
    skip = index.check(base.resize((150, 112)), "small copy")
    assert skip is not None and skip.code == "duplicate" and "duplicate of a" in skip.reason
    assert len(index.names) == 4 and len(index.bits) >= 4
    assert index.check(base, "again").reason.startswith("duplicate of a")
