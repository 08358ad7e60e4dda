"""Augmentation vectors (paper, Methods "Data augmentation") and their online application."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.distance import cdist

from sctab.data.augment import (
    Augmenter,
    AugmentError,
    balanced_subsample,
    compute_augmentations,
    load_augmentations,
    write_augmentations,
)
from sctab.data.store import Store


@pytest.fixture(scope="module")
def cfg(census_params) -> dict:
    return dict(census_params["augment"])


@pytest.fixture(scope="module")
def computed(store_dir, cfg):
    return compute_augmentations(Store(store_dir), cfg)


def test_shape_dtype_and_report(computed, cfg, store_dir):
    v, report = computed
    assert v.shape == (cfg["n_vectors"], Store(store_dir).n_genes) and v.dtype == np.float32
    assert report["vectors_out"] == cfg["n_vectors"] and report["clusters_kept"] >= 1
    assert report["pairs"] >= report["vectors_clustered"] > 0
    assert not any("time" in k or "second" in k for k in report)  # DVC outputs must not change on re-runs


def test_values_are_zero_or_between_threshold_and_clamp(computed, cfg):
    v = computed[0]
    a = np.abs(v[v != 0])
    assert a.size and (a > cfg["zero_threshold"]).all() and (a <= cfg["clamp"]).all()
    assert (np.abs(v).max(axis=1) > 0).all()  # all-zero differences were dropped


def test_same_seed_gives_identical_files(computed, store_dir, cfg, tmp_path):
    again = compute_augmentations(Store(store_dir), cfg)
    write_augmentations(*computed, tmp_path / "a")
    write_augmentations(*again, tmp_path / "b")
    for name in ("augmentations.npy", "augment_report.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = compute_augmentations(Store(store_dir), {**cfg, "seed": cfg["seed"] + 1})[0]
    assert not np.array_equal(other, computed[0])
    assert json.loads((tmp_path / "a" / "augment_report.json").read_text())["vectors_out"] == cfg["n_vectors"]


def test_vectors_are_differences_of_same_type_donor_centroids(store_dir):
    """Without subsampling, zeroing, clamping or cluster filtering, each vector is +-(centroid a - centroid b)."""
    store = Store(store_dir)
    parts = list(store.iter_row_groups("train", ("X", "cell_type", "tech_sample")))
    x = np.concatenate([p["X"] for p in parts]).astype(np.float64)
    obs = pd.DataFrame({c: np.concatenate([p[c] for p in parts]) for c in ("cell_type", "tech_sample")})
    cent = pd.DataFrame(x).groupby([obs["cell_type"], obs["tech_sample"]]).mean()
    diffs = np.concatenate([
        np.array([cent.loc[(t, a)].to_numpy() - cent.loc[(t, b)].to_numpy()
                  for a, b in itertools.combinations(sub.index.get_level_values(1), 2)]).reshape(-1, x.shape[1])
        for t, sub in cent.groupby(level=0)])
    cfg = {"n_cells": 10**9, "zero_threshold": 0.0, "clamp": 1e9, "n_clusters": 1, "min_cluster_size": 0,
           "n_vectors": 300, "seed": 0}
    v, report = compute_augmentations(store, cfg)
    assert report["pairs"] == len(diffs) and report["cells_subsampled"] == len(obs)
    dist = np.minimum(cdist(v, diffs, "chebyshev"), cdist(v, -diffs, "chebyshev")).min(axis=1)
    assert dist.max() < 1e-4


def test_balanced_subsample():
    labels = np.repeat([0, 1, 2], [500, 40, 100])
    pos, cap = balanced_subsample(labels, 300, seed=0)
    assert cap == 100
    assert np.bincount(labels[pos]).tolist() == [100, 40, 100]
    assert len(np.unique(pos)) == len(pos)
    assert np.array_equal(pos, balanced_subsample(labels, 300, seed=0)[0])
    assert not np.array_equal(pos, balanced_subsample(labels, 300, seed=1)[0])


def test_few_vectors_cap_pairs_and_clusters(store_dir, cfg):
    small = {**cfg, "max_pairs_per_type": 2, "n_clusters": 50, "min_cluster_size": 0, "minibatch_above": 0}
    v, report = compute_augmentations(Store(store_dir), small)
    assert report["pairs"] == 2 * report["types_with_pairs"] < report["pairs_possible"]
    assert report["n_clusters_used"] == report["vectors_clustered"] < 50 and "note" in report
    assert report["kmeans"] == "MiniBatchKMeans"
    assert report["sampled_with_replacement"] and len(v) == cfg["n_vectors"]


def test_no_cluster_passes(store_dir, cfg):
    with pytest.raises(AugmentError, match="no k-means cluster.*smaller min_cluster_size"):
        compute_augmentations(Store(store_dir), {**cfg, "min_cluster_size": 10**9})


def test_load_checks(tmp_path, computed):
    v = computed[0]
    write_augmentations(*computed, tmp_path / "ok")
    assert np.array_equal(load_augmentations(tmp_path / "ok", v.shape[1]), v)  # a folder works
    assert np.array_equal(load_augmentations(tmp_path / "ok" / "augmentations.npy", v.shape[1]), v)
    np.save(tmp_path / "narrow.npy", np.zeros((3, 299), np.float32))
    with pytest.raises(AugmentError, match=r"narrow\.npy has 299 columns, the store has 300 genes"):
        load_augmentations(tmp_path / "narrow.npy", 300)
    bad = np.zeros((3, 300), np.float32)
    bad[1, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(AugmentError, match=r"nan\.npy has non-finite"):
        load_augmentations(tmp_path / "nan.npy", 300)
    np.save(tmp_path / "flat.npy", np.zeros(300, np.float32))
    with pytest.raises(AugmentError, match=r"flat\.npy has shape"):
        load_augmentations(tmp_path / "flat.npy", 300)
    np.save(tmp_path / "empty.npy", np.zeros((0, 300), np.float32))
    with pytest.raises(AugmentError, match="no vectors"):
        load_augmentations(tmp_path / "empty.npy", 300)
    with pytest.raises(AugmentError, match=r"missing\.npy does not exist"):
        load_augmentations(tmp_path / "missing.npy", 300)


# ------------------------------------------------------------------------------------------- Augmenter
def _batch(n=4000, g=50, seed=0):
    gen = torch.Generator().manual_seed(seed)
    vectors = (torch.rand(6, g, generator=gen) * 3 - 1.5)
    x = torch.rand(n, g, generator=gen) * 9
    return vectors, x


def test_augmenter_rows_are_x_plus_or_minus_one_vector(torch_one_thread):
    vectors, x = _batch()
    out = Augmenter(vectors)(x, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 9
    cand = torch.stack([(x + s * v).clamp(0, 9) for s in (1.0, -1.0) for v in vectors])  # (12, n, g)
    err = (cand - out).abs().amax(dim=2)  # (12, n)
    best = err.argmin(dim=0)
    assert err.min(dim=0).values.max() < 1e-6
    signs = best // len(vectors)
    assert set(signs.tolist()) == {0, 1}  # both added and subtracted
    assert len(set((best % len(vectors)).tolist())) == len(vectors)  # every vector is used


def test_augmenter_reproducible_and_checks_width(torch_one_thread):
    vectors, x = _batch(n=64)
    aug = Augmenter(vectors.numpy(), clip=(0.0, 9.0)).to("cpu")
    a = aug(x, generator=torch.Generator().manual_seed(3))
    b = aug(x, generator=torch.Generator().manual_seed(3))
    c = aug(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert aug(x).shape == x.shape  # the global generator works too
    with pytest.raises(AugmentError, match="49 genes|augmentation vectors have 50 genes"):
        aug(x[:, :49])
    with pytest.raises(AugmentError, match="non-empty 2-D"):
        Augmenter(np.zeros((0, 50), np.float32))
