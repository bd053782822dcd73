"""data/: every layout users have loads (folder + .txt, metadata.jsonl, CSV, kohya TOML + metadata
JSON, the shared kohya examples), and bad input fails with one line naming the problem."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stablekit.cli import main
from stablekit.data import DatasetConfig, SubsetConfig, load_dataset
from stablekit.errors import StablekitError

EXAMPLES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "kohya-dataset-examples"
if not EXAMPLES.is_dir():  # the shared folder sits beside the worktree or the main checkout
    EXAMPLES = Path("/work/shared/fixtures/kohya-dataset-examples")


def image(path: Path, size=(40, 24), color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def captioned_folder(folder: Path, n: int = 3, ext: str = ".txt") -> Path:
    for i in range(n):
        image(folder / f"{i:03d}.png", color=(i * 60, 20, 20))
        (folder / f"{i:03d}{ext}").write_text(f"a red shape {i}\n")
    return folder


SMALL = DatasetConfig(resolution=16)


def test_folder_with_txt_captions_as_shapes_render_writes_it(tmp_path):
    assert main(["shapes", "render", "--n", "3", "--out", str(tmp_path / "r")]) == 0
    ds = load_dataset(tmp_path / "r", DatasetConfig(resolution=64))
    assert len(ds) == 3
    b = ds.get_batch(np.arange(3))
    assert b["pixels"].shape == (3, 3, 64, 64) and -1 <= float(b["pixels"].min()) and float(b["pixels"].max()) <= 1
    assert b["captions"] == [(tmp_path / "r" / f"{i:06d}.txt").read_text().strip() for i in range(3)]
    assert b["is_reg"].tolist() == [False] * 3 and len(set(b["keys"])) == 3


def test_metadata_jsonl_imagefolder(tmp_path):
    image(tmp_path / "a.png")
    image(tmp_path / "sub" / "b.png")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "first"}\n\n'
                                             '{"file_name": "sub/b.png", "text": "second"}\n')
    for source in (tmp_path, tmp_path / "metadata.jsonl"):
        ds = load_dataset(source, SMALL)
        assert ds.get_batch(np.arange(2))["captions"] == ["first", "second"]


def test_csv_image_path_caption_keras_layout(tmp_path):
    image(tmp_path / "imgs" / "p1.jpg")
    image(tmp_path / "imgs" / "p2.jpg")
    (tmp_path / "data.csv").write_text('image_path,caption\nimgs/p1.jpg,"a pokemon, blue"\nimgs/p2.jpg,a dragon\n')
    ds = load_dataset(tmp_path / "data.csv", SMALL)
    assert ds.get_batch(np.arange(2))["captions"] == ["a pokemon, blue", "a dragon"]
    (tmp_path / "data.csv").write_text("image_path,caption\nimgs/p1.jpg,\n")
    with pytest.raises(StablekitError, match="1 image.*no caption.*p1.jpg"):
        load_dataset(tmp_path / "data.csv", SMALL)
    (tmp_path / "data.csv").write_text("file,words\nimgs/p1.jpg,x\n")
    with pytest.raises(StablekitError, match="no image column"):
        load_dataset(tmp_path / "data.csv", SMALL)


def _example(name: str, tmp_path: Path) -> Path:
    """A shared kohya example with its /data/... folders moved under tmp_path."""
    text = (EXAMPLES / name).read_text().replace("/data/", f"{tmp_path}/data/")
    out = tmp_path / name
    out.write_text(text)
    return out


def test_every_shared_kohya_example_loads(tmp_path):
    root = tmp_path / "data"
    for folder in ("sd-dataset/jisoo_png", "sd_dataset/shark_png", "sd-dataset/celeba_controlnet/images"):
        captioned_folder(root / folder)
    for i in range(2):  # DreamBooth class images have no captions: class_tokens would give them one
        image(root / "sd-dataset/shark_prior" / f"{i}.png")
        (root / "sd-dataset/shark_prior" / f"{i}.txt").write_text("a shark")
        image(root / "sd-dataset/celeba_controlnet/conditioning_images" / f"{i:03d}.png", color=(255, 255, 255))
    image(root / "sd-dataset/celeba_controlnet/conditioning_images" / "002.png", color=(255, 255, 255))
    image(root / "sd_dataset/celeba/0.jpg")
    image(root / "sd_dataset/celeba/1.jpg")
    (tmp_path / "toml").mkdir()
    (tmp_path / "toml" / "celeba.json").write_text((EXAMPLES / "metadata-example.json").read_text()
                                                   .replace("/data/", f"{tmp_path}/data/"))
    cfg = DatasetConfig(min_bucket_reso=256, max_bucket_reso=1024)
    lora = load_dataset(_example("lora.toml", tmp_path), cfg)
    assert len(lora) == 3 and lora.batch_size == 4 and lora.groups[0].enable_bucket
    dream = load_dataset(_example("dreambooth.toml", tmp_path), cfg)
    assert len(dream) == 5 and sorted(e.subset.is_reg for e in dream.examples) == [False] * 3 + [True] * 2
    fine = load_dataset(_example("finetune.toml", tmp_path), cfg)
    assert [e.caption.split(",")[1].strip() for e in fine.examples] == ["arched_eyebrows", "bags_under_eyes"]
    assert fine.examples[0].subset.shuffle_caption and not fine.text_cacheable
    control = load_dataset(_example("controlnet.toml", tmp_path), cfg)
    b = control.get_batch(control.batch_order(0, 2).indices(0, 2))
    assert b["conditioning_pixels"].shape == b["pixels"].shape == (2, 3, 512, 512)
    assert float(b["conditioning_pixels"].min()) == 1.0  # the white conditioning images, in [0, 1]
    # kohya's metadata JSON on its own, images beside it by file name
    meta = load_dataset(EXAMPLES / "metadata-example.json",
                        DatasetConfig(resolution=16, subset=SubsetConfig(image_dir=str(root / "sd_dataset/celeba"))))
    assert len(meta) == 2 and meta.examples[1].caption.startswith("celeba, bags_under_eyes")


def test_kohya_toml_every_documented_key_and_precedence(tmp_path):
    captioned_folder(tmp_path / "img")
    captioned_folder(tmp_path / "reg", ext=".caption")
    (tmp_path / "d.toml").write_text(f"""
[general]
shuffle_caption = true
keep_tokens = 1
caption_extension = ".txt"
flip_aug = true

[[datasets]]
resolution = [64, 32]
batch_size = 2
enable_bucket = true
min_bucket_reso = 16
max_bucket_reso = 128
bucket_reso_steps = 16

  [[datasets.subsets]]
  image_dir = "img"
  num_repeats = 3
  caption_dropout_rate = 0.5
  random_crop = true

  [[datasets.subsets]]
  image_dir = "{tmp_path / 'reg'}"
  caption_extension = ".caption"
  is_reg = true
  class_tokens = "shape"
  shuffle_caption = false
""")
    ds = load_dataset(tmp_path / "d.toml")
    assert len(ds) == 3 * 3 + 3 and ds.batch_size == 2
    a, r = ds.examples[0].subset, ds.examples[3].subset
    assert (a.num_repeats, a.keep_tokens, a.flip_aug, a.random_crop, a.shuffle_caption) == (3, 1, True, True, True)
    assert (r.is_reg, r.shuffle_caption, r.caption_extension, r.class_tokens) == (True, False, ".caption", "shape")
    assert not ds.latents_cacheable and ds.groups[0].size == (64, 32)


@pytest.mark.parametrize("toml, match", [
    ('[general]\nshufle_caption = true\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = "x"\n', "'shufle_caption'"),
    ('[[datasets]]\nresolutions = 512\n[[datasets.subsets]]\nimage_dir = "x"\n', "'resolutions'"),
    ('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "x"\nrepeats = 2\n', r"subsets\[0\]: unknown key 'repeats'"),
    ('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "x"\nnum_repeats = "2"\n', "num_repeats = '2' has the wrong type"),
    ('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "x"\ncolor_aug = true\n', "color_aug = True is not supported"),
    ('[[datasets]]\n[[datasets.subsets]]\ncaption_extension = ".txt"\n', "give image_dir"),
    ('[general]\n', "no \\[\\[datasets\\]\\]"),
    ('[[datasets]]\nresolution = 512\n', "no \\[\\[datasets.subsets\\]\\]"),
    ('[[datasets\n', "cannot read dataset TOML"),
])
def test_kohya_toml_errors_are_one_line_and_name_the_key(tmp_path, toml, match):
    (tmp_path / "d.toml").write_text(toml)
    with pytest.raises(StablekitError, match=match) as err:
        load_dataset(tmp_path / "d.toml")
    assert "\n" not in str(err.value)


def test_undecodable_images_skipped_and_counted_or_fatal(tmp_path):
    folder = captioned_folder(tmp_path / "f")
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "bad.txt").write_text("broken")
    with Image.open(folder / "000.png") as im:  # a truncated real PNG: the header reads, the pixels do not
        data = (folder / "000.png").read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    (folder / "cut.txt").write_text("cut")
    ds = load_dataset(folder, SMALL)
    assert len(ds) == 3 and sorted(p.name for p in ds.skipped) == ["bad.png", "cut.png"] and im.size == (40, 24)
    with pytest.raises(StablekitError, match="cannot decode image .*bad.png"):
        load_dataset(folder, DatasetConfig(resolution=16, strict_images=True))


def test_empty_and_missing_inputs_fail_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(StablekitError, match="no usable images"):
        load_dataset(tmp_path / "empty", SMALL)
    image(tmp_path / "nocap" / "x.png")
    with pytest.raises(StablekitError, match="1 image.*no caption.*x.png.*x.txt"):
        load_dataset(tmp_path / "nocap", SMALL)
    assert len(load_dataset(tmp_path / "nocap", DatasetConfig(resolution=16, subset=SubsetConfig(class_tokens="a dog")))) == 1
    with pytest.raises(StablekitError, match="does not exist"):
        load_dataset(tmp_path / "nowhere", SMALL)
    (tmp_path / "m.jsonl").write_text('{"file_name": "x.png", "text": "a"}\nnot json\n')
    with pytest.raises(StablekitError, match="line 2 is not JSON"):
        load_dataset(tmp_path / "m.jsonl", SMALL)
    (tmp_path / "k.json").write_text(json.dumps({"gone.png": {"caption": "x"}}))
    with pytest.raises(StablekitError, match="not found.*gone.png"):
        load_dataset(tmp_path / "k.json", SMALL)
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(StablekitError, match="cannot tell the dataset layout"):
        load_dataset(tmp_path / "x.parquet", SMALL)
