"""Images that carry their metadata: annotate() + an ordinary Image.save -> png-info, for PNG, JPEG and WebP.

A1111 compatibility is checked with piexif, the library A1111 itself writes and reads EXIF with.
"""
from __future__ import annotations

import errno
import io
import json
from pathlib import Path

import numpy as np
import piexif
import piexif.helper
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from stablekit.cli import main
from stablekit.errors import StablekitError
from stablekit.metadata import AnnotatedImage, annotate, format_parameters, read_image_info, save_image
from stablekit.metadata.exif import decode_user_comment, exif_bytes

TEXT = format_parameters("a red circle, 猫", "blurry", {"Steps": 20, "Sampler": "DPM++ 2M", "CFG scale": 7,
                                                        "Seed": 3, "Size": (8, 8)})
RECORD = {"prompt": "a red circle, 猫", "seed": 3, "steps": 20}


def _image():
    return Image.fromarray(np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3))


@pytest.mark.parametrize("name", ["out.png", "out.jpg", "out.jpeg", "out.webp"])
def test_ordinary_save_round_trips_through_png_info(tmp_path, capsys, name):
    path = tmp_path / name
    annotate(_image(), TEXT, RECORD).save(path)  # what a user does with pipe.generate(...)[0]
    info = read_image_info(path)
    assert info["parameters"] == TEXT and info["stablekit"] == RECORD
    assert info["fields"]["Prompt"] == "a red circle, 猫" and info["fields"]["Seed"] == "3"
    assert main(["png-info", str(path)]) == 0
    assert capsys.readouterr().out == TEXT + "\n"
    assert main(["png-info", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stablekit"] == RECORD


@pytest.mark.parametrize("name", ["plain.png", "plain.jpg", "plain.webp"])
def test_a_plain_pil_save_carries_nothing(tmp_path, capsys, name):
    # The bug annotate() fixes: PIL does not write .info by itself.
    image = _image()
    image.info["parameters"] = TEXT
    image.save(tmp_path / name)
    assert main(["png-info", str(tmp_path / name)]) == 2
    assert "no generation parameters" in capsys.readouterr().err


def test_jpeg_and_webp_exif_is_what_a1111_writes_and_reads(tmp_path):
    a1111 = piexif.dump({"Exif": {piexif.ExifIFD.UserComment: piexif.helper.UserComment.dump(TEXT, encoding="unicode")}})
    assert exif_bytes(TEXT, None) == a1111  # byte for byte, no record
    for name in ("ours.jpg", "ours.webp"):
        annotate(_image(), TEXT, RECORD).save(tmp_path / name)
        with Image.open(tmp_path / name) as im:  # A1111's read_info_from_image
            exif = piexif.load(im.info["exif"])
        assert piexif.helper.UserComment.load(exif["Exif"][piexif.ExifIFD.UserComment]) == TEXT
    # A JPEG as A1111 saves it: plain save, then piexif.insert.
    _image().save(tmp_path / "a1111.jpg", quality=80)
    piexif.insert(a1111, str(tmp_path / "a1111.jpg"))
    info = read_image_info(tmp_path / "a1111.jpg")
    assert info["format"] == "JPEG" and info["parameters"] == TEXT and info["stablekit"] is None


def test_user_comment_encodings_as_piexif():
    for encoding in ("ascii", "jis", "unicode"):
        text = "Steps: 20, Seed: 1" if encoding == "ascii" else "猫, Steps: 20"
        assert decode_user_comment(piexif.helper.UserComment.dump(text, encoding=encoding)) == text
    assert decode_user_comment(b"\x00" * 8 + "a cat".encode()) == "a cat"  # undefined code: UTF-8, as A1111
    assert decode_user_comment(b"a cat") == "a cat"


def test_annotation_rules(tmp_path):
    base = _image()
    image = annotate(base, TEXT, RECORD)
    assert isinstance(image, AnnotatedImage) and isinstance(image, Image.Image)
    assert "parameters" not in base.info  # annotate copies
    assert image.info["stablekit"] == json.dumps(RECORD, sort_keys=True)
    image.copy().save(tmp_path / "copy.png")
    assert read_image_info(tmp_path / "copy.png")["parameters"] == TEXT
    image.resize((4, 4)).save(tmp_path / "resized.png")  # other pixels: not this record's image
    assert read_image_info(tmp_path / "resized.png")["parameters"] is None
    mine = PngInfo()
    mine.add_text("parameters", "mine")
    image.save(tmp_path / "mine.png", pnginfo=mine)  # an explicit pnginfo wins
    assert read_image_info(tmp_path / "mine.png")["parameters"] == "mine"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    assert _read_bytes(tmp_path, buffer.getvalue())["stablekit"] == RECORD
    # The same record in another key order gives the same bytes.
    a, b = io.BytesIO(), io.BytesIO()
    annotate(base, TEXT, {"b": 1, "a": 2}).save(a, format="PNG")
    annotate(base, TEXT, {"a": 2, "b": 1}).save(b, format="PNG")
    assert a.getvalue() == b.getvalue()


def _read_bytes(folder: Path, data: bytes) -> dict:
    (folder / "x.bin").write_bytes(data)
    return read_image_info(folder / "x.bin")


def test_save_image_errors_are_one_line_and_not_masked(tmp_path, monkeypatch):
    image = annotate(_image(), TEXT, RECORD)
    with pytest.raises(StablekitError, match="unknown image extension '.gif'"):
        save_image(image, tmp_path / "x.gif")
    save_image(image, tmp_path / "x.png")
    with pytest.raises(StablekitError, match="exists"):
        save_image(image, tmp_path / "x.png", overwrite=False)

    # A read-only file system: the write fails, and so does the clean-up; the first error is the one shown.
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("os.replace", read_only)
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(StablekitError, match="Read-only file system") as err:
        save_image(image, tmp_path / "y.webp")
    assert "\n" not in str(err.value)


def test_damaged_jpeg_and_webp_are_one_line_errors(tmp_path):
    for name in ("ok.jpg", "ok.webp"):
        annotate(_image(), TEXT, RECORD).save(tmp_path / name)
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut-{name}").write_bytes(data[: len(data) // 2])
        with pytest.raises(StablekitError, match="damaged") as err:
            read_image_info(tmp_path / f"cut-{name}")
        assert "\n" not in str(err.value)
    (tmp_path / "x.gif").write_bytes(b"GIF89a" + b"\x00" * 20)
    with pytest.raises(StablekitError, match="not a PNG, JPEG or WebP"):
        read_image_info(tmp_path / "x.gif")


@pytest.fixture(scope="module")
def pipeline_images():
    from fixtures import one_thread, tiny_components

    from stablekit.generate.pipeline import Pipeline

    with one_thread():
        return Pipeline(tiny_components("sd1"), progress=False).generate("a cat", steps=2, seed=1, width=64, height=64)


def test_pipeline_images_annotated_save_their_metadata(tmp_path, pipeline_images):
    # What the pipeline's post-process step does once it calls annotate() (CONTRACTS.md).
    image = pipeline_images[0]
    annotated = annotate(image, image.info["parameters"], json.loads(image.info["stablekit"]))
    for name in ("out.png", "out.jpg", "out.webp"):
        annotated.save(tmp_path / name)
        info = read_image_info(tmp_path / name)
        assert info["parameters"] == image.info["parameters"] and info["stablekit"] == json.loads(image.info["stablekit"])


def test_readme_snippet_images_save_their_metadata(tmp_path, pipeline_images):
    # The README: images = pipe.generate(...); images[0].save("out.png") -> png-info works.
    for name in ("out.png", "out.jpg", "out.webp"):
        pipeline_images[0].save(tmp_path / name)
        info = read_image_info(tmp_path / name)
        assert info["parameters"] == pipeline_images[0].info["parameters"] and info["stablekit"]["seed"] == 1
