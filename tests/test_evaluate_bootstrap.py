"""Cluster-bootstrap intervals (evaluate/bootstrap.py): resampling keeps a prompt's images together,
intervals cover the value and narrow with n, and the FID/KID/mean wrappers agree with fid.py."""
from __future__ import annotations

import numpy as np
import pytest

from stablekit.errors import StablekitError
from stablekit.evaluate import bootstrap as B
from stablekit.evaluate.fid import fid, kid


def test_cluster_sample_keeps_groups_whole():
    idx = B.cluster_sample(12, 4, np.random.default_rng(0))
    assert idx.shape == (12,)
    groups = idx.reshape(3, 4)
    assert (groups % 4 == np.arange(4)).all()  # each group is one prompt's 4 images in order
    assert (groups // 4 == groups[:, :1] // 4).all()


@pytest.mark.parametrize("n, group", [(10, 4), (3, 4), (8, 0)])
def test_cluster_sample_rejects_bad_groups(n, group):
    with pytest.raises(StablekitError, match="multiple of the group size"):
        B.cluster_sample(n, group, np.random.default_rng(0))


def test_mean_interval_covers_and_narrows_with_n():
    rng = np.random.default_rng(1)
    small = B.mean_interval(rng.random(40), reps=400)
    large = B.mean_interval(rng.random(4000), reps=400)
    assert small.low <= small.value <= small.high
    assert large.low <= large.value <= large.high
    # the standard error falls as 1/sqrt(n): 100x the data, about a tenth of the width
    assert (large.high - large.low) < 0.25 * (small.high - small.low)
    assert abs(large.value - 0.5) < 0.03


def test_grouped_resampling_widens_correlated_data():
    # 50 prompts x 4 identical images: the effective n is 50, which the cluster bootstrap sees
    rng = np.random.default_rng(2)
    values = np.repeat(rng.random(50), 4)
    naive = B.mean_interval(values, group=1, reps=500)
    grouped = B.mean_interval(values, group=4, reps=500)
    assert (grouped.high - grouped.low) > 1.5 * (naive.high - naive.low)


def test_fid_and_kid_intervals_wrap_fid_py():
    rng = np.random.default_rng(3)
    gen, ref = rng.normal(0.3, 1, (64, 6)), rng.normal(0, 1, (80, 6))
    f = B.fid_interval(gen, ref, group=4, reps=30)
    assert f.value == pytest.approx(fid(gen, ref))
    assert f.low < f.high and f.reps == 30
    k = B.kid_interval(gen, ref, group=4, reps=20)
    assert k.value == pytest.approx(kid(gen, ref)[0])
    assert k.low < k.high
    # seeded: the same call gives the same interval
    assert B.fid_interval(gen, ref, group=4, reps=30) == f


def test_fid_interval_contains_the_value_and_a_fixed_reference_narrows_it():
    # FID on resamples is biased upward; the normal interval is centred on the full-set value anyway
    rng = np.random.default_rng(4)
    gen, ref = rng.normal(0, 1, (128, 8)), rng.normal(0, 1, (256, 8))
    both = B.fid_interval(gen, ref, group=4, reps=60)
    gen_only = B.fid_interval(gen, ref, group=4, reps=60, resample_reference=False)
    assert both.low < both.value < both.high and both.value == gen_only.value
    assert gen_only.sd < both.sd  # the reference's own noise is left out
    seen = []
    B.bootstrap(lambda i, j: seen.append(j.copy()) or 0.0, [(8, 2), (5, 0)], reps=10)
    assert all((j == np.arange(5)).all() for j in seen)  # group 0: the set is held fixed


def test_bootstrap_rejects_bad_settings():
    with pytest.raises(StablekitError, match="at least 10"):
        B.mean_interval([1.0, 2.0], reps=3)
    with pytest.raises(StablekitError, match="level"):
        B.bootstrap(lambda i: 0.0, [(4, 1)], level=1.5)


def test_paired_difference_cancels_shared_noise():
    rng = np.random.default_rng(5)
    ref = rng.normal(0, 1, (400, 6))
    base = rng.normal(0, 1, (96, 6))  # the shared part: same prompts and seeds at both checkpoints
    a, b = base + 0.25, base + 0.05  # a is further from the reference than b
    same = B.paired_fid_difference(base, base, ref, group=4, reps=30)
    assert same.value == 0 and same.sd == 0
    d = B.paired_fid_difference(a, b, ref, group=4, reps=60)
    assert d.value == pytest.approx(fid(a, ref) - fid(b, ref)) and d.low > 0
    # the unpaired intervals of a and b are wider than the paired interval of their difference
    assert B.fid_interval(a, ref, group=4, reps=60, resample_reference=False).sd > d.sd
    with pytest.raises(StablekitError, match="same size"):
        B.paired_fid_difference(a, b[:8], ref)
