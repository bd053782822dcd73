"""`stablekit train METHOD`: settings from defaults, TOML and flags; outputs; resume; data parallel."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest
import torch
from fixtures import tiny_components
from safetensors.torch import load_file
from train_fixtures import FolderImages, TinyImages, write_folder

import stablekit.train
from stablekit.cli import main
from stablekit.errors import StablekitError
from stablekit.train.methods import resolve

FAST = ["--steps", "2", "--batch-size", "2", "--sample-every", "0", "--no-tensorboard"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    from stablekit.formats import save_model

    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(tiny_components("sd1"), path)
    return path


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    """A captioned folder; stablekit.data stands in as a minimal reader if it is not merged yet."""
    try:
        import stablekit.data  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("stablekit.data")
        stand_in.load_dataset = lambda source, config=None: FolderImages(source)
        monkeypatch.setitem(sys.modules, "stablekit.data", stand_in)
    return write_folder(tmp_path / "data", n=4)


def test_print_config_shows_defaults_and_reads_back(tmp_path, capsys):
    assert main(["train", "textual-inversion", "--print-config", "--vectors", "3"]) == 0
    text = capsys.readouterr().out
    printed = tomllib.loads(text)
    assert printed["method"] == "textual-inversion" and printed["vectors"] == 3 and printed["lr"] == 5e-3
    assert {"token", "init_word", "steps", "batch_size", "optimizer", "lr_schedule", "lr_cycles", "device"} <= set(printed)
    (tmp_path / "run.toml").write_text(text.replace('token = ""', 'token = "<zq>"').replace('init_word = ""', 'init_word = "shape"'))
    s, tc = resolve("textual-inversion", tmp_path / "run.toml")
    assert s.vectors == 3 and s.token == "<zq>" and tc.lr == 5e-3


def test_flags_override_toml_which_overrides_defaults(tmp_path):
    (tmp_path / "run.toml").write_text('steps = 50\nbatch-size = 3\nrank = 16\nlr_schedule = "cosine_with_restarts"\nlr_cycles = 3\n')
    s, tc = resolve("lora", tmp_path / "run.toml", steps=7, alpha=4.0)
    assert (tc.steps, tc.batch_size, tc.lr_cycles, tc.lr_schedule) == (7, 3, 3, "cosine_with_restarts")
    assert (s.rank, s.alpha, s.name) == (16, 4.0, "lora")
    assert Path(tc.out_dir) == Path("runs/train/lora-training")


def test_bad_settings_fail_with_one_line(tmp_path, capsys):
    (tmp_path / "bad.toml").write_text("steps = 5\nlearning_rate = 0.1\n")
    with pytest.raises(StablekitError, match="learning_rate"):
        resolve("lora", tmp_path / "bad.toml")
    (tmp_path / "other.toml").write_text('method = "finetune"\n')
    with pytest.raises(StablekitError, match="finetune config"):
        resolve("lora", tmp_path / "other.toml")
    assert main(["train", "dreambooth", "--data", "x"]) == 2
    assert "--instance-prompt" in capsys.readouterr().err
    assert main(["train", "lora", "--optimizer", "lion", "--data", "x"]) == 2


def test_cli_lora_writes_artefact_and_config_beside_checkpoints(tmp_path, model_file, data_dir, capsys):
    out = tmp_path / "out"
    args = ["train", "lora", "--model", str(model_file), "--data", str(data_dir), "--out", str(out), "--name", "style",
            "--lr", "1e-3", "--text-encoder-lr", "2e-4", "--rank", "2", "--checkpoint-every", "1", *FAST]
    assert main(args) == 0
    assert f"-> {out / 'style.safetensors'}" in capsys.readouterr().out
    assert any("lora" in k for k in load_file(out / "style.safetensors"))
    from safetensors import safe_open

    with safe_open(out / "style.safetensors", "pt") as f:  # where kohya's tools read the learning rates
        meta = f.metadata()
    assert (float(meta["ss_unet_lr"]), float(meta["ss_text_encoder_lr"])) == (1e-3, 2e-4)
    assert tomllib.loads((out / "style.toml").read_text())["rank"] == 2
    for step in (1, 2):
        saved = tomllib.loads((out / "style-training" / "checkpoints" / f"step-00000{step}.toml").read_text())
        assert saved["method"] == "lora" and saved["data"] == str(data_dir) and saved["steps"] == 2


@pytest.mark.parametrize("method,extra", [("lora", dict(rank=2)),
                                          ("textual-inversion", dict(token="<zq>", init_word="square", vectors=2))])
def test_resume_is_exact_for_each_method(tmp_path, method, extra):
    common = dict(dataset=TinyImages(), sample_every=0, progress=False, tensorboard=False, batch_size=2, lr=1e-2,
                  checkpoint_every=2, **extra)
    full = stablekit.train(method, components=tiny_components("sd1"), out=tmp_path / "a", steps=4, **common)
    stablekit.train(method, components=tiny_components("sd1"), out=tmp_path / "b", steps=2, **common)
    resumed = stablekit.train(method, components=tiny_components("sd1"), out=tmp_path / "b", steps=4, **common)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]
    a, b = load_file(full["artefact"]), load_file(resumed["artefact"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # two launched processes import torch + diffusers each: 67 s wall here under load
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, model_file):
    """`accelerate launch` with 2 CPU processes (gloo), batch 2 each == 1 process with batch 4.

    SGD, so the comparison is linear in the gradients; fp32 gradients of a tiny random UNet are
    ill-conditioned (a batch of 4 vs two of 2 differ by ~5e-4 relative, 1e-13 in float64), so the
    weights are compared against the size of the update, and against a run that differs for real.
    """
    data = write_folder(tmp_path / "data", n=8)
    common = dict(model=str(model_file), dataset=FolderImages(data), steps=2, optimizer="sgd", lr=0.05,
                  sample_every=0, progress=False, tensorboard=False)
    one = stablekit.train("finetune", out=tmp_path / "one", batch_size=4, **common)
    half = stablekit.train("finetune", out=tmp_path / "half", batch_size=2, **common)  # a different global batch
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": os.pathsep.join([str(Path(stablekit.__file__).parents[1])]),
           "HF_HUB_OFFLINE": "1"}
    entry = Path(__file__).with_name("train_entry.py")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1", str(entry),
           "train", "finetune", "--model", str(model_file), "--data", str(data), "--out", str(tmp_path / "two"),
           "--steps", "2", "--batch-size", "2", "--optimizer", "sgd", "--lr", "0.05", "--sample-every", "0", "--no-tensorboard"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def weights(run):
        return torch.load(Path(run) / "finetune-training" / "checkpoints" / "step-000002.pt", weights_only=True)

    w1, w2, wh = weights(tmp_path / "one"), weights(tmp_path / "two"), weights(tmp_path / "half")
    assert [h["loss"] for h in w2["history"]] == pytest.approx([h["loss"] for h in w1["history"]], rel=1e-4)
    init = tiny_components("sd1").unet.state_dict()
    flat = {name: torch.cat([w["strategy"]["unet"][k].flatten() for k in init]) for name, w in
            (("one", w1), ("two", w2), ("half", wh))}
    start = torch.cat([init[k].flatten() for k in init])
    update = (flat["one"] - start).norm()
    assert (flat["two"] - flat["one"]).norm() < 1e-2 * update
    assert (flat["half"] - flat["one"]).norm() > 0.1 * update


def test_stablekit_train_is_reachable_from_a_plain_import():
    code = "import stablekit; assert callable(stablekit.train) and stablekit.train.__name__ == 'stablekit.train'"
    subprocess.run([sys.executable, "-c", code], check=True)
