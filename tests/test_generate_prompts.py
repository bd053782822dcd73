"""`stablekit generate --prompts FILE` (generate/prompt_file.py, cli/generate_prompts.py): parsing,
seeds and names fixed by the file, and the same images from 1 and 2 processes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stablekit.cli import main
from stablekit.errors import StablekitError
from stablekit.generate.prompt_file import file_seed, image_name, my_share, plan_jobs, read_prompt_file

ALLOWED = ("negative_prompt", "steps", "seed", "batch_size", "batch_count", "cfg")
FILE = '# shapes\na red circle\n\n{"prompt": "a blue square", "seed": 7, "batch_size": 2}\na green star\n'


def test_file_is_parsed_and_seeds_and_names_fixed_by_it(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text(FILE)
    entries = read_prompt_file(path, ALLOWED)
    assert [(n, e["prompt"]) for n, e in entries] == [(2, "a red circle"), (4, "a blue square"), (5, "a green star")]
    jobs = plan_jobs(entries, {"steps": 3}, base_seed=100)
    assert [(j.seed, j.first_image, j.images, j.settings) for j in jobs] == [
        (100, 0, 1, {"steps": 3}), (7, 1, 2, {"steps": 3, "batch_size": 2}), (103, 3, 1, {"steps": 3})]
    assert [image_name(10, jobs[1], k, ".png") for k in range(2)] == ["00011-7.png", "00012-8.png"]
    assert [j.line for j in my_share(jobs, 0, 2)] == [2, 5] and [j.line for j in my_share(jobs, 1, 2)] == [4]
    other = tmp_path / "q.txt"
    other.write_text(FILE + "x\n")
    assert file_seed(path) == file_seed(path) != file_seed(other)
    path.write_text('{"prompt": "a", "stepz": 3}\n')
    with pytest.raises(StablekitError, match=r"p.txt:1: unknown setting 'stepz'"):
        read_prompt_file(path, ALLOWED)
    path.write_text('{"prompt": 3}\n')
    with pytest.raises(StablekitError, match="needs a \"prompt\" text"):
        read_prompt_file(path, ALLOWED)


def _run(args: list[str], processes: int, cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "STABLEKIT_TRACE": "0",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--num_cpu_threads_per_process", "1", "-m", "stablekit"] if processes > 1 else [sys.executable, "-m", "stablekit"]
    done = subprocess.run(launcher + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_two_processes_write_the_images_one_process_writes(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text(FILE)
    args = ["generate", "--prompts", str(prompts), "--steps", "2", "--seed", "5", "--no-progress"]
    _run(args + ["--out", str(tmp_path / "one")], 1, tmp_path)
    _run(args + ["--out", str(tmp_path / "two")], 2, tmp_path)
    one, two = sorted(p.name for p in (tmp_path / "one").iterdir()), sorted(p.name for p in (tmp_path / "two").iterdir())
    assert one == two == ["00000-5.png", "00001-7.png", "00002-8.png", "00003-8.png"]
    for name in one:
        a, b = (np.asarray(Image.open(tmp_path / d / name)) for d in ("one", "two"))
        assert np.array_equal(a, b), name


def test_prompts_in_one_process(tmp_path, monkeypatch):
    prompts = tmp_path / "p.txt"
    prompts.write_text('a red circle\n{"prompt": "a blue square", "seed": 9}\n')
    monkeypatch.setenv("STABLEKIT_TRACE", "0")
    assert main(["generate", "--prompts", str(prompts), "--steps", "2", "--seed", "3", "--no-progress",
                 "--out", str(tmp_path / "out")]) == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["00000-3.png", "00001-9.png"]
    assert "a blue square" in Image.open(tmp_path / "out" / names[1]).info["parameters"]
    assert main(["generate", "a cat", "--prompts", str(prompts)]) == 2  # one-line error: prompt and file
