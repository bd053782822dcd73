"""Caption-less image folders: textual inversion captions them from templates with the token,
DreamBooth from the instance prompt (as diffusers' scripts and the Keras tutorial take a bare
folder); methods that learn from captions still refuse them in one line."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch
from fixtures import tiny_components
from train_fixtures import write_folder

import stablekit.train
from stablekit.cli import main
from stablekit.errors import StablekitError
from stablekit.train.methods import resolve
from stablekit.train.parallel import BatchRandom
from stablekit.train.strategies import sd
from stablekit.train.strategies.textual_inversion import OBJECT_TEMPLATES, STYLE_TEMPLATES, template_captions

FAST = dict(steps=2, batch_size=2, sample_every=0, tensorboard=False, progress=False)


def bare_folder(folder: Path, n: int = 4) -> Path:
    write_folder(folder, n=n)
    for txt in folder.glob("*.txt"):
        txt.unlink()
    return folder


@pytest.fixture
def seen(monkeypatch) -> list[str]:
    """Every caption the strategies encode during training."""
    captions: list[str] = []
    real = sd.SDStrategy.encode_captions

    def spy(self, texts):
        captions.extend(texts)
        return real(self, texts)

    monkeypatch.setattr(sd.SDStrategy, "encode_captions", spy)
    return captions


def test_textual_inversion_trains_on_a_bare_folder_with_template_captions(tmp_path, seen):
    data = bare_folder(tmp_path / "data")
    result = stablekit.train("textual-inversion", components=tiny_components("sd1"), data=data, out=tmp_path / "out",
                             token="<zq>", init_word="square", vectors=1, **FAST)
    assert result["step"] == 2 and Path(result["artefact"]).is_file()
    expected = {t.replace("{}", "<zq>") for t in OBJECT_TEMPLATES}
    assert len(seen) == 4 and set(seen) <= expected  # 2 steps x batch 2, every one a template with the token
    assert len(set(seen)) > 1  # drawn per item, not one fixed caption
    written = tomllib.loads((tmp_path / "out" / "zq.toml").read_text())
    assert written["caption_templates"] == list(OBJECT_TEMPLATES) and written["learnable_property"] == "object"


def test_textual_inversion_keeps_caption_files_and_templates_only_the_rest(tmp_path, seen):
    data = bare_folder(tmp_path / "data", n=2)
    (data / "0000.txt").write_text("a <zq> on a table")
    stablekit.train("textual-inversion", components=tiny_components("sd1"), data=data, out=tmp_path / "out",
                    token="<zq>", init_word="square", vectors=1, caption_templates=["a drawing of {}"],
                    **{**FAST, "steps": 1})
    assert sorted(seen) == ["a <zq> on a table", "a drawing of <zq>"]


def test_dreambooth_trains_on_a_bare_folder_with_the_instance_and_class_prompts(tmp_path, seen):
    data = bare_folder(tmp_path / "data", n=2)
    result = stablekit.train("dreambooth", components=tiny_components("sd1"), data=data, out=tmp_path / "out",
                             instance_prompt="a sks square", class_prompt="a square", num_class_images=1,
                             class_steps=2, **FAST)
    assert result["step"] == 2 and Path(result["artefact"]).is_file()
    assert sorted(seen) == ["a sks square"] * 2 + ["a square"] * 2
    written = tomllib.loads((tmp_path / "out" / "dreambooth.toml").read_text())
    assert (written["instance_prompt"], written["class_prompt"]) == ("a sks square", "a square")


def test_finetune_and_lora_still_refuse_a_bare_folder_in_one_line(tmp_path, capsys, tiny_model_file):
    data = bare_folder(tmp_path / "data", n=2)
    with pytest.raises(StablekitError, match=r"2 image\(s\) in .* have no caption \(first: 0000.png\); write 0000.txt"):
        stablekit.train("finetune", components=tiny_components("sd1"), data=data, out=tmp_path / "out", **FAST)
    with pytest.raises(StablekitError, match="no caption"):
        stablekit.train("lora", components=tiny_components("sd1"), data=data, out=tmp_path / "out", **FAST)
    assert main(["train", "finetune", "--model", str(tiny_model_file), "--data", str(data), "--out",
                 str(tmp_path / "cli"), "--steps", "1", "--no-tensorboard"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "have no caption" in err and "0000.txt" in err


def test_cli_textual_inversion_takes_a_bare_folder(tmp_path, tiny_model_file):
    data = bare_folder(tmp_path / "data", n=2)
    out = tmp_path / "out"
    assert main(["train", "textual-inversion", "--model", str(tiny_model_file), "--data", str(data), "--out", str(out),
                 "--token", "<zq>", "--init-word", "square", "--learnable-property", "style", "--steps", "1",
                 "--batch-size", "2", "--sample-every", "0", "--no-tensorboard"]) == 0
    assert tomllib.loads((out / "zq.toml").read_text())["caption_templates"] == list(STYLE_TEMPLATES)


def test_template_settings_resolve_and_bad_ones_fail():
    s, _ = resolve("textual-inversion", token="<zq>", init_word="shape", learnable_property="style")
    assert s.caption_templates == list(STYLE_TEMPLATES)
    s, _ = resolve("textual-inversion", token="<zq>", init_word="shape", caption_templates=["{} art"])
    assert s.caption_templates == ["{} art"]
    with pytest.raises(StablekitError, match="no '\\{\\}'"):
        resolve("textual-inversion", token="<zq>", init_word="shape", caption_templates=["a photo"])
    with pytest.raises(StablekitError, match="learnable_property"):
        resolve("textual-inversion", token="<zq>", init_word="shape", learnable_property="person")


def test_template_draws_are_the_same_split_across_processes_and_leave_the_noise_alone():
    captions = ["", "a <zq> drawn", "", ""]
    whole = template_captions(captions, OBJECT_TEMPLATES, "<zq>", BatchRandom(torch.Generator().manual_seed(3), 0, 4, 4))
    halves = [template_captions(captions[a:b], OBJECT_TEMPLATES, "<zq>",
                                BatchRandom(torch.Generator().manual_seed(3), a, b, 4)) for a, b in ((0, 2), (2, 4))]
    assert whole == halves[0] + halves[1] and whole[1] == "a <zq> drawn"
    assert all("<zq>" in c for c in whole)
    g = torch.Generator().manual_seed(3)
    template_captions(captions, OBJECT_TEMPLATES, "<zq>", BatchRandom(g, 0, 4, 4))
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=torch.Generator().manual_seed(3)))
