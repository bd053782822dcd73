"""kohya metadata JSON + dataset TOML writers, checked against kohya's documented schema
(docs/config_README) and the lecture's examples in ../shared/fixtures/kohya-dataset-examples/."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from PIL import Image

from stablekit.cli import main
from stablekit.data.kohya_writer import DatasetToml, Subset, collect_captions, kohya_metadata

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "kohya-dataset-examples"

# Where kohya's config_README allows each option: [general], [[datasets]], [[datasets.subsets]].
DATASET_KEYS = {"batch_size", "bucket_no_upscale", "bucket_reso_steps", "enable_bucket", "max_bucket_reso",
                "min_bucket_reso", "resolution", "skip_image_resolution"}
SUBSET_COMMON = {"color_aug", "face_crop_aug_range", "flip_aug", "keep_tokens", "num_repeats", "random_crop",
                 "shuffle_caption", "caption_prefix", "caption_suffix", "caption_separator",
                 "keep_tokens_separator", "secondary_separator", "enable_wildcard", "resize_interpolation",
                 "caption_extension", "cache_info", "caption_dropout_every_n_epochs", "caption_dropout_rate",
                 "caption_tag_dropout_rate"}
SUBSET_ONLY = {"image_dir", "class_tokens", "is_reg", "metadata_file", "conditioning_data_dir"}


def check_kohya_schema(config: dict) -> None:
    assert set(config) <= {"general", "datasets"}
    assert set(config.get("general", {})) <= DATASET_KEYS | SUBSET_COMMON
    for dataset in config["datasets"]:
        assert set(dataset) <= DATASET_KEYS | SUBSET_COMMON | {"subsets"}
        kinds = set()
        for subset in dataset["subsets"]:
            assert set(subset) <= SUBSET_COMMON | SUBSET_ONLY
            assert "image_dir" in subset or "metadata_file" in subset
            kinds.add("metadata_file" in subset)
            assert not (subset.get("is_reg") and "metadata_file" in subset)
        assert len(kinds) == 1  # one method per dataset


def effective(config: dict) -> list[dict]:
    """Each subset's settings after kohya's inheritance (subset > dataset > general), with
    kohya's default num_repeats = 1 filled in."""
    out = []
    for dataset in config["datasets"]:
        base = {"num_repeats": 1, **config.get("general", {}),
                **{k: v for k, v in dataset.items() if k != "subsets"}}
        out += [{**base, **s} for s in dataset["subsets"]]
    return out


def fixture(name: str, **paths) -> dict:
    config = tomllib.loads((FIXTURES / name).read_text())
    for i, subset in enumerate(s for d in config["datasets"] for s in d["subsets"]):
        subset.update({k: v[i] for k, v in paths.items() if i < len(v) and k in subset})
    return config


def captioned(folder: Path, n=3) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (64, 64), (10 * i, 20, 30)).save(folder / f"{i}.jpg")
        (folder / f"{i}.txt").write_text(f"celeba, attribute_{i}\n")
    return folder


def test_metadata_json_matches_merge_captions_to_metadata(tmp_path):
    folder = captioned(tmp_path / "celeba")
    Image.new("RGB", (64, 64)).save(folder / "uncaptioned.png")
    captions, missing = collect_captions(folder)
    assert [p.name for p in missing] == ["uncaptioned.png"]
    meta = kohya_metadata(captions, full_path=True)
    assert meta == {str(folder / f"{i}.jpg"): {"caption": f"celeba, attribute_{i}"} for i in range(3)}
    example = json.loads((FIXTURES / "metadata-example.json").read_text())
    assert {type(v) for v in example.values()} == {dict} and all(set(v) == {"caption"} for v in example.values())
    assert set(kohya_metadata(captions, full_path=False)) == {"0", "1", "2"}  # stems without --full_path


def test_finetune_toml_is_the_lab_toml(tmp_path):
    written = DatasetToml([Subset(str(tmp_path / "celeba"), metadata_file=str(tmp_path / "celeba.json"))],
                          resolution=512, batch_size=4, shuffle_caption=True).to_toml()
    ours = tomllib.loads(written)
    check_kohya_schema(ours)
    lab = fixture("finetune.toml", image_dir=[str(tmp_path / "celeba")], metadata_file=[str(tmp_path / "celeba.json")])
    check_kohya_schema(lab)
    assert effective(ours) == effective(lab)


def test_dreambooth_and_lora_tomls_match_the_lab(tmp_path):
    subsets = [Subset(str(tmp_path / "shark_png")), Subset(str(tmp_path / "shark_prior"), is_reg=True)]
    ours = tomllib.loads(DatasetToml(subsets, resolution=512, batch_size=2, enable_bucket=True,
                                     caption_extension=".txt").to_toml())
    check_kohya_schema(ours)
    lab = fixture("dreambooth.toml", image_dir=[str(tmp_path / "shark_png"), str(tmp_path / "shark_prior")])
    assert effective(ours) == effective(lab)
    lora = tomllib.loads(DatasetToml([Subset(str(tmp_path / "jisoo"))], resolution=512, batch_size=4,
                                     enable_bucket=True, caption_extension=".txt").to_toml())
    assert effective(lora) == effective(fixture("lora.toml", image_dir=[str(tmp_path / "jisoo")]))
    cn = DatasetToml([Subset(str(tmp_path / "i"), caption_extension=".txt", conditioning_data_dir=str(tmp_path / "c"))],
                     resolution=512, batch_size=2, shuffle_caption=True)
    assert effective(tomllib.loads(cn.to_toml())) == effective(
        fixture("controlnet.toml", image_dir=[str(tmp_path / "i")], conditioning_data_dir=[str(tmp_path / "c")]))


def test_writer_refuses_mixed_methods_and_escapes_paths(tmp_path):
    with pytest.raises(Exception, match="cannot mix"):
        DatasetToml([Subset("a", metadata_file="m.json"), Subset("b")]).to_toml()
    with pytest.raises(Exception, match="cannot be is_reg"):
        DatasetToml([Subset("a", metadata_file="m.json", is_reg=True)]).to_toml()
    odd = 'C:\\data\\"quoted" folder\\日本'
    assert tomllib.loads(DatasetToml([Subset(odd)]).to_toml())["datasets"][0]["subsets"][0]["image_dir"] == odd


def test_cli_metadata_writes_json_and_toml(tmp_path, capsys):
    folder = captioned(tmp_path / "celeba")
    out = tmp_path / "toml" / "celeba.json"
    assert main(["data", "metadata", str(folder), "--out", str(out), "--batch-size", "4",
                 "--shuffle-caption"]) == 0
    meta = json.loads(out.read_text())
    assert meta[str(folder / "0.jpg")] == {"caption": "celeba, attribute_0"}
    config = tomllib.loads(out.with_suffix(".toml").read_text())
    check_kohya_schema(config)
    assert effective(config) == [{"shuffle_caption": True, "resolution": 512, "batch_size": 4,
                                  "image_dir": str(folder), "metadata_file": str(out), "num_repeats": 1}]
    assert main(["data", "metadata", str(folder), "--out", str(out)]) == 2  # exists: no overwrite
    assert "--overwrite" in capsys.readouterr().err
    reg = captioned(tmp_path / "prior")
    assert main(["data", "metadata", str(folder), "--out", str(tmp_path / "db.json"), "--reg-dir", str(reg),
                 "--buckets"]) == 0
    db = tomllib.loads((tmp_path / "db.toml").read_text())
    check_kohya_schema(db)
    assert [s.get("is_reg", False) for s in effective(db)] == [False, True]


def test_stablekit_loader_reads_what_we_write(tmp_path):
    """prepare -> captions -> metadata, then stablekit.data.load_dataset (the DATA helper's loader)
    reads the fine-tuning TOML, the stem-keyed metadata and the DreamBooth TOML with is_reg."""
    import numpy as np

    from stablekit.data import load_dataset

    raw = tmp_path / "raw"
    raw.mkdir()
    for i, (w, h) in enumerate([(120, 90), (90, 120), (100, 100)]):
        Image.new("RGB", (w, h), (70 * i, 90, 160)).save(raw / f"red_car_{i}.jpg")
    prepared = tmp_path / "prepared"
    assert main(["data", "prepare", str(raw), str(prepared), "--resolution", "64", "--no-dedupe",
                 "--no-progress"]) == 0
    assert main(["data", "captions", str(prepared), "--from", "filenames", "--token", "sks"]) == 0
    out = tmp_path / "toml" / "cars.json"
    assert main(["data", "metadata", str(prepared), "--out", str(out), "--resolution", "64"]) == 0
    dataset = load_dataset(out.with_suffix(".toml"))
    assert len(dataset) == 3
    batch = dataset.get_batch(np.arange(3))
    assert sorted(batch["captions"]) == ["sks, red car"] * 3
    assert tuple(batch["pixels"].shape) == (3, 3, 64, 64)
    assert main(["data", "metadata", str(prepared), "--out", str(tmp_path / "stems.json"), "--no-full-path",
                 "--resolution", "64"]) == 0
    assert len(load_dataset(tmp_path / "stems.toml")) == 3
    reg = captioned(tmp_path / "prior", n=2)
    assert main(["data", "metadata", str(prepared), "--out", str(tmp_path / "db.json"), "--reg-dir", str(reg),
                 "--resolution", "64"]) == 0
    db = load_dataset(tmp_path / "db.toml")
    assert len(db) == 5
    flags = db.get_batch(np.arange(5))["is_reg"]
    assert int(flags.sum()) == 2
