"""Training data is read at the model's native size unless a kohya TOML sets its own
(train/run.py load_data): the data layer's default is SD's 512 px."""
from types import SimpleNamespace

from stablekit.shapes.captions import render_dataset
from stablekit.train.run import load_data, native_size


def _pixels(dataset):
    import numpy as np

    return dataset.get_batch(np.array([0]))["pixels"]


def test_folder_is_read_at_the_given_native_size(tmp_path):
    folder = render_dataset(tmp_path / "d", n=2, seed=0)
    assert tuple(_pixels(load_data(str(folder), 64)).shape[-2:]) == (64, 64)
    assert tuple(_pixels(load_data(str(folder), 32)).shape[-2:]) == (32, 32)


def test_a_kohya_toml_resolution_wins(tmp_path):
    folder = render_dataset(tmp_path / "d", n=2, seed=0)
    toml = tmp_path / "d.toml"
    toml.write_text(f"[general]\nenable_bucket = true\n\n[[datasets]]\nresolution = 48\n\n"
                    f"  [[datasets.subsets]]\n  image_dir = '{folder}'\n")
    assert tuple(_pixels(load_data(str(toml), 64)).shape[-2:]) == (48, 48)


def test_native_size_is_latent_size_times_vae_factor():
    c = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(sample_size=8)), vae_scale_factor=8)
    assert native_size(c) == 64
