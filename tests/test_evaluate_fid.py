"""FID/KID arithmetic against the reference libraries' own formulas, clean-fid's image conventions,
and the FID Inception network built in code.

clean-fid and torch-fidelity cannot be installed beside torch 2.13.0 (`pip install --dry-run`
shows both pull torch 2.14.1 + CUDA + torchvision, which the platform notes forbid), and their
modules import torch/torchvision at the top, so their functions cannot be imported either. The
references below are therefore written independently in this test from their source, read with
the project's `fetch` tool (clean-fid 0.1.35 `cleanfid/fid.py` frechet_distance / kernel_distance;
torch-fidelity 0.4.0 `metric_fid.py` fid_statistics_to_metric, `metric_kid.py` mmd2 /
kernel_poly), keeping each library's own way of computing: scipy sqrtm of S1 S2 (clean-fid),
eigenvalues of S1 S2 (torch-fidelity), the K-matrix sums of each.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg

from stablekit.errors import StablekitError
from stablekit.evaluate import fid as F


# ---- references (independent re-writes of the libraries' formulas, see module docstring) ----

def cleanfid_frechet(mu1, s1, mu2, s2, eps=1e-6):
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1.dot(s2))  # clean-fid passes disp=False, deprecated in SciPy 1.17
    if not np.isfinite(covmean).all():
        off = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + off).dot(s2 + off))
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def fidelity_frechet(mu1, s1, mu2, s2):
    diff = mu1 - mu2
    tr_covmean = np.sum(np.sqrt(np.linalg.eigvals(s1.dot(s2)).astype("complex128")).real)
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def cleanfid_kid_subset(x, y):
    """One subset of clean-fid's kernel_distance (its loop body, then / m)."""
    n, m = x.shape[1], len(x)
    a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
    b = (x @ y.T / n + 1) ** 3
    return ((a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m) / m


def fidelity_mmd2(f1, f2):
    """torch-fidelity's kernel_mmd: kernel_poly (degree 3, gamma 1/d, coef0 1) + mmd2 unbiased."""
    def k(a, b):
        return (np.matmul(a, b.T) * (1.0 / a.shape[1]) + 1) ** 3
    kxx, kyy, kxy = k(f1, f1), k(f2, f2), k(f1, f2)
    m = kxx.shape[0]
    kt_xx = (kxx.sum(axis=1) - np.diagonal(kxx)).sum()
    kt_yy = (kyy.sum(axis=1) - np.diagonal(kyy)).sum()
    return (kt_xx + kt_yy) / (m * (m - 1)) - 2 * kxy.sum(axis=0).sum() / (m * m)


def fidelity_kid(f1, f2, subsets, subset_size, seed):
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        a = f1[rng.choice(len(f1), subset_size, replace=False)]
        b = f2[rng.choice(len(f2), subset_size, replace=False)]
        mmds[i] = fidelity_mmd2(a, b)
    return float(np.mean(mmds)), float(np.std(mmds))


def _features(seed, n=300, d=16, shift=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(d).normal(size=(d, d)) / np.sqrt(d)  # one distribution per (shift, scale)
    return (rng.normal(size=(n, d)) @ mix) * scale + shift


# ---- FID ----

@pytest.mark.parametrize("shift,scale", [(0.0, 1.0), (0.3, 1.0), (0.0, 1.7), (1.0, 0.5)])
def test_fid_matches_clean_fid_and_torch_fidelity(shift, scale):
    a, b = _features(1), _features(2, shift=shift, scale=scale)
    sa, sb = F.feature_stats(a), F.feature_stats(b)
    ours = F.fid(a, b)
    # statistics as both libraries compute them: np.mean, np.cov(rowvar=False)
    assert np.allclose(sa.mu, np.mean(a, axis=0)) and np.allclose(sa.sigma, np.cov(a, rowvar=False))
    ref_clean = cleanfid_frechet(sa.mu, sa.sigma, sb.mu, sb.sigma)
    ref_fid = fidelity_frechet(sa.mu, sa.sigma, sb.mu, sb.sigma)
    assert ours == pytest.approx(ref_clean, rel=1e-7, abs=1e-9)
    assert ours == pytest.approx(ref_fid, rel=1e-7, abs=1e-9)


def test_fid_of_gaussians_in_closed_form():
    # diagonal covariances: FID = |dmu|^2 + sum (sqrt(s1) - sqrt(s2))^2 exactly
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 4.0, 1.0])
    got = F.frechet_distance(F.FeatureStats(mu1, s1, 10), F.FeatureStats(mu2, s2, 10))
    assert got == pytest.approx(5.0 + 1.0 + 0.0 + 4.0)


def test_fid_with_singular_covariance_fewer_samples_than_dims():
    a, b = _features(3, n=20, d=64), _features(4, n=20, d=64, shift=0.5)
    sa, sb = F.feature_stats(a), F.feature_stats(b)
    ours = F.frechet_distance(sa, sb)
    assert np.isfinite(ours)
    assert ours == pytest.approx(fidelity_frechet(sa.mu, sa.sigma, sb.mu, sb.sigma), rel=1e-5)
    assert F.fid(a, a) == pytest.approx(0.0, abs=1e-8)


def test_fid_rejects_bad_features():
    with pytest.raises(StablekitError, match="at least 2"):
        F.fid(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(StablekitError, match="feature sizes differ"):
        F.fid(_features(1, d=4), _features(1, d=5))
    bad = _features(1)
    bad[0, 0] = np.nan
    with pytest.raises(StablekitError, match="NaN"):
        F.fid(bad, _features(2))


# ---- KID ----

def test_mmd2_unbiased_matches_both_libraries():
    x, y = _features(5, n=50), _features(6, n=50, shift=0.2)
    ours = F.mmd2_unbiased(x, y)
    assert ours == pytest.approx(fidelity_mmd2(x, y), rel=1e-10)
    assert ours == pytest.approx(cleanfid_kid_subset(y, x), rel=1e-10)  # clean-fid draws feats2 first
    assert F.mmd2_unbiased(x, x) != 0  # unbiased: not a distance of a set to itself


def test_kid_matches_torch_fidelity_subsets_and_seed():
    a, b = _features(7, n=120), _features(8, n=150, shift=0.3)
    ours = F.kid(a, b, subsets=20, subset_size=50, seed=2020)
    ref = fidelity_kid(a, b, subsets=20, subset_size=50, seed=2020)
    assert ours[0] == pytest.approx(ref[0], rel=1e-10)
    assert ours[1] == pytest.approx(ref[1], rel=1e-10)
    # whole sets (subset = everything): no randomness left, clean-fid's per-subset value exactly
    full = F.kid(a[:100], b[:100], subsets=3, subset_size=1000)
    assert full[0] == pytest.approx(cleanfid_kid_subset(b[:100], a[:100]), rel=1e-10)
    assert full[1] == pytest.approx(0.0, abs=1e-12)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_shift():
    a, b = _features(9, n=400), _features(10, n=400)
    same = F.kid(a, b, subsets=10, subset_size=200)[0]
    shifted = F.kid(a, _features(10, n=400, shift=0.5), subsets=10, subset_size=200)[0]
    assert abs(same) < 0.05 * shifted
    assert shifted > 0


# ---- clean-fid image conventions ----

def test_quantize_rounds_like_a_png():
    x = np.array([[[[0.0, 0.5, 1.0]]]])
    assert F.quantize(x).tolist() == [[[[0, 128, 255]]]]
    assert F.quantize(np.array([[[[1.2, -0.1, 0.499 / 255]]]])).tolist() == [[[[255, 0, 0]]]]
    u8 = np.full((1, 2, 2, 3), 7, np.uint8)
    assert F.quantize(u8) is u8


def test_clean_resize_is_pil_bicubic_per_float_channel():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = F.clean_resize(img, 299)
    assert out.shape == (299, 299, 3) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255
    # clean-fid's make_resizer("PIL", quantize_after=False, "bicubic", (299, 299)), channel by channel
    ref = np.asarray(Image.fromarray(img[:, :, 1].astype(np.float32), mode="F").resize((299, 299), Image.BICUBIC))
    assert np.allclose(out[:, :, 1], np.clip(ref, 0, 255))
    # not quantised after resizing (clean-fid's point): values between integers survive
    assert np.any(np.abs(out - out.round()) > 1e-3)
    flat = np.full((64, 64, 3), 200, np.uint8)
    assert np.allclose(F.clean_resize(flat), 200, atol=1e-3)


def test_load_image_folder(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    arr = F.load_image_folder(tmp_path)
    assert arr.shape == (3, 8, 8, 3) and arr[2, 0, 0, 0] == 80
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(StablekitError, match="different sizes"):
        F.load_image_folder(tmp_path)
    with pytest.raises(StablekitError, match="does not exist"):
        F.load_image_folder(tmp_path / "nope")


# ---- the Inception network ----

def test_inception_weights_missing_or_wrong_are_one_line(tmp_path):
    from stablekit.evaluate.inception import load_inception

    with pytest.raises(StablekitError, match="not found.*pt_inception-2015-12-05"):
        load_inception(tmp_path / "pt_inception.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(StablekitError, match="not the FID Inception state dict"):
        load_inception(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a zip")
    with pytest.raises(StablekitError, match="cannot read"):
        load_inception(tmp_path / "junk.pth")


def test_inception_loads_a_pytorch_fid_style_state_dict(tmp_path):
    """The file pytorch-fid uses: torchvision's Inception3 names (FID variant), 1008-way fc,
    no num_batches_tracked (saved by an old torch); .pth via weights_only and .safetensors."""
    from safetensors.torch import save_file

    from stablekit.evaluate.inception import FIDInception, InceptionFeatures

    torch.manual_seed(0)
    net = FIDInception()
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert sum(v.numel() for k, v in state.items() if "running" not in k) == 23_850_960  # Inception3, no aux, 1008 classes
    for key in ("Conv2d_1a_3x3.conv.weight", "Mixed_5b.branch5x5_2.bn.running_var",
                "Mixed_6e.branch7x7dbl_5.conv.weight", "Mixed_7c.branch3x3dbl_3b.bn.bias", "fc.weight"):
        assert key in state
    assert state["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    torch.save(state, tmp_path / "pt_inception-2015-12-05.pth")
    save_file(state, str(tmp_path / "inception.safetensors"))
    images = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    a = InceptionFeatures(tmp_path / "pt_inception-2015-12-05.pth")(images)
    b = InceptionFeatures(tmp_path / "inception.safetensors")(images)
    assert a.shape == (1, 2048) and np.array_equal(a, b)
    # the same network on clean-fid's input: resized float image, (x - 128) / 128
    x = torch.from_numpy(F.clean_resize(images[0]))[None].permute(0, 3, 1, 2)
    with torch.no_grad():
        direct = net.eval()((x - 128) / 128).numpy()
    assert np.allclose(a, direct, atol=1e-5)
