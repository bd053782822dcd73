"""Output paths: validated before any compute, one-line errors, PNG/JPEG/WebP files and folders, grids."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from fixtures import tiny_components
from PIL import Image

import stablekit
from stablekit.cli import main
from stablekit.errors import StablekitError
from stablekit.formats import save_model
from stablekit.metadata import annotate, read_image_info
from stablekit.metadata.outputs import check_count, grid_image, plan_outputs, write_outputs

TINY = ["--steps", "2", "--width", "64", "--height", "64", "--no-progress"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(tiny_components("sd1"), path, to="single-file")
    return str(path)


@pytest.fixture
def no_compute(monkeypatch):
    """Loading a model fails the test: the error must come before it."""
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(stablekit, "load", load)


def _one_line_error(capsys, args, match):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("stablekit: error: ") and err.count("\n") == 1, err
    assert match in err, err


def test_bad_output_paths_fail_in_one_line_before_compute(tmp_path, capsys, no_compute):
    (tmp_path / "existing.jpg").write_bytes(b"x")
    (tmp_path / "a-file").write_text("x")
    cases = [
        (str(tmp_path / "existing.jpg"), "exists; add --overwrite"),
        (str(tmp_path / "out.gif"), "unknown image extension '.gif'"),
        (str(tmp_path / "a-file"), "exists and is not a folder"),
        (str(tmp_path / "a-file" / "x.png"), "is a file, not a folder"),
    ]
    if Path("/dev/null").exists():
        cases.append(("/dev/null", "exists and is not a folder"))
    for out, match in cases:
        _one_line_error(capsys, ["generate", "a cat", "--out", out], match)
    _one_line_error(capsys, ["generate", "a cat", "--out", str(tmp_path / "x.png"), "--format", "jpg"],
                    "is a .png file but --format is jpg")
    _one_line_error(capsys, ["generate", "a cat", "--out", str(tmp_path / "x.png"), "--batch-size", "2"],
                    "is one file but 2 images")
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "out.gif").exists()


def test_read_only_file_system_is_one_line_before_compute(tmp_path, capsys, monkeypatch, no_compute):
    # Tests run as root here, so permission bits cannot make a folder unwritable: fail the probe file.
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    _one_line_error(capsys, ["generate", "a cat", "--out", str(tmp_path / "x.webp")], "Read-only file system")
    _one_line_error(capsys, ["generate", "a cat", "--out", str(tmp_path / "folder")], "Read-only file system")


def test_plan_creates_nothing_and_knows_files_from_folders(tmp_path):
    plan = plan_outputs(tmp_path / "x.jpg")  # a file that does not exist: no folder x.jpg, nothing at all
    assert not plan.is_folder and plan.format == "jpg" and list(tmp_path.iterdir()) == []
    assert plan_outputs(tmp_path / "X.JPEG").format == "jpg"
    assert plan_outputs(f"{tmp_path}/run.1/").is_folder  # a trailing slash: a folder, whatever the name
    assert plan_outputs(tmp_path / "new" / "deeper", "webp").format == "webp"
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "made.png").write_bytes(b"x")
    assert plan_outputs(tmp_path / "made.png", overwrite=True).overwrite
    os.mkdir(tmp_path / "dir.png")  # an existing folder is a folder, whatever its name
    assert plan_outputs(tmp_path / "dir.png").is_folder
    check_count(plan_outputs(tmp_path / "x.png", grid=True), 4)  # a file takes the grid of several
    with pytest.raises(StablekitError, match="unknown image format 'gif'"):
        plan_outputs(tmp_path, "gif")


def _annotated(seed, value):
    image = Image.fromarray(np.full((4, 6, 3), value, np.uint8))
    return annotate(image, f"p\nSteps: 2, Seed: {seed}, Size: 6x4", {"seed": seed})


def test_grid_is_a1111s_layout():
    images = [_annotated(i, 10 * i) for i in range(5)]
    grid = grid_image(images)  # round(sqrt(5)) = 2 rows, 3 columns, black where no image
    assert grid.size == (18, 8)
    pixels = np.asarray(grid)
    assert pixels[0, 0, 0] == 0 and pixels[0, 6, 0] == 10 and pixels[4, 0, 0] == 30 and pixels[4, 12, 0] == 0
    assert grid.info["parameters"] == images[0].info["parameters"]
    assert grid_image(images[:2]).size == (12, 4)  # 2 images: one row


def test_folder_numbering_continues_across_formats_and_never_overwrites(tmp_path):
    (tmp_path / "00007-1.jpg").write_bytes(b"x")
    written = write_outputs(plan_outputs(tmp_path, "webp", grid=True), [_annotated(5, 1), _annotated(6, 2)])
    assert [p.name for p in written] == ["00008-5.webp", "00009-6.webp", "grid-00000-5.webp"]
    assert read_image_info(written[-1])["stablekit"] == {"seed": 5, "grid": {"rows": 1, "cols": 2, "images": 2}}
    written = write_outputs(plan_outputs(tmp_path, "png", grid=True), [_annotated(5, 1), _annotated(6, 2)])
    assert [p.name for p in written] == ["00010-5.png", "00011-6.png", "grid-00001-5.png"]


def test_cli_writes_each_format_with_metadata(model, tmp_path, capsys):
    folder = tmp_path / "webps"
    assert main(["generate", "a cat", "--model", model, "--seed", "1", "--batch-size", "2", "--format", "webp",
                 "--grid", "--out", str(folder), *TINY]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["00000-1.webp", "00001-2.webp", "grid-00000-1.webp"]
    assert Image.open(folder / "grid-00000-1.webp").size == (128, 64)
    for path in folder.iterdir():
        assert read_image_info(path)["fields"]["Steps"] == "2"
    png, jpg = tmp_path / "one.png", tmp_path / "sub" / "one.jpg"
    for out in (png, jpg):
        assert main(["generate", "a cat", "--model", model, "--seed", "7", "--out", str(out), *TINY]) == 0
        assert read_image_info(out)["stablekit"]["seed"] == 7
    assert main(["generate", "a cat", "--model", model, "--seed", "8", "--out", str(jpg), "--overwrite", *TINY]) == 0
    assert read_image_info(jpg)["stablekit"]["seed"] == 8
    # --from-png reads a JPEG's EXIF (seed 8 now; --seed 7 overrides): the PNG of the same image again.
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(tmp_path / "sub" / "one.jpg"), "--model", model, "--seed", "7",
                 "--out", str(again), "--no-progress"]) == 0
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(png)))
    grid = tmp_path / "grid.png"
    assert main(["generate", "a cat", "--model", model, "--batch-size", "3", "--grid", "--out", str(grid), *TINY]) == 0
    assert Image.open(grid).size == (128, 128) and list(tmp_path.glob("grid*")) == [grid]
