"""Loader anchors of the bench (sctab.bench.anchors, issue 26): the anchors' batches hold the store's cells,
the shuffle measure tells a sorted epoch from a shuffled one, and a row without the anchors' venv is skipped.

The anchor loaders need their venvs (scDataset, tiledbsoma-ml: `make anchors-env`, then `make test-anchors`;
annbatch: `make annbatch-env`, then `make test-annbatch`); the rest runs in the project's venv."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from sctab.bench import anchors as A
from sctab.bench import runner
from sctab.bench.cases import REGISTRY, Case
from sctab.bench.checks import bounded
from sctab.bench.fixtures import Config
from sctab.bench.synthetic import make_store
from sctab.data.store import Store

BATCH = 64


def needs(anchor: str):
    """Skip unless the anchor's package is importable here, naming the make target of its venv."""
    venv, target = A.VENVS[anchor]
    test_target = "test-anchors" if target == "anchors-env" else "test-annbatch"
    return pytest.mark.skipif(importlib.util.find_spec(anchor) is None,
                              reason=f"{A.TITLES[anchor]} lives in its own venv {venv}: run `make {target}`, "
                              f"then `make {test_target}`")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("anchors") / "store"
    return Store(make_store(root, 600, 120, 5, row_group_size=100, rows_per_part=300))


# ------------------------------------------------------------------------------- no anchor packages needed
def test_shuffle_quality_sorted_vs_shuffled():
    y = np.random.default_rng(0).integers(0, 10, 5000)
    sorted_batches = np.split(np.sort(y), range(BATCH, len(y), BATCH))
    shuffled = np.split(np.random.default_rng(1).permutation(y), range(BATCH, len(y), BATCH))
    assert A.shuffle_quality(sorted_batches) < 0.2
    assert 0.95 < A.shuffle_quality(shuffled) < 1.05


def test_label_entropy():
    assert A.label_entropy(np.array([3, 3, 3])) == 0.0
    assert A.label_entropy(np.array([0, 1, 0, 1])) == pytest.approx(np.log(2))


def test_source_cells_are_the_store_rows(store):
    x, y, genes = A.source_cells(store)
    dense = np.concatenate([g["X"] for g in store.iter_row_groups("train")])
    labels = np.concatenate([g["cell_type"] for g in store.iter_row_groups("train")])
    assert x.dtype == np.float32 and x.shape == dense.shape
    np.testing.assert_array_equal(x.toarray(), dense)
    np.testing.assert_array_equal(y, labels)
    assert genes[:2] == ["ENSG00000000000", "ENSG00000000001"] and len(genes) == store.n_genes


def test_our_loader_epoch_passes_the_cell_check_and_a_tampered_one_fails(store):
    x, y, _ = A.source_cells(store)
    epoch = list(A.OurLoader(store, BATCH, "csr", block_row_groups=2))
    assert A.cell_mismatches(epoch, x, y) == 0
    dense = [(b.to_dense().clone(), lab) for b, lab in epoch]
    assert A.cell_mismatches(dense, x, y) == 0  # dense batches checked the same way
    dense[0][0][0, int(torch.nonzero(dense[0][0][0])[0])] += 1e-3  # one value of one cell
    assert A.cell_mismatches(dense, x, y) == 2  # that cell missing, another one there instead
    assert A.cell_mismatches(dense[1:], x, y) == len(dense[0][1])  # a batch missing
    assert A.cell_mismatches(dense + dense[:1], x, y) > 0  # a batch twice


def test_writers_keep_cells_and_genes(store, tmp_path):
    import anndata as ad

    x, y, genes = A.source_cells(store)
    path, write_s = A.anchor_format(store, "scdataset", tmp_path)
    assert write_s > 0 and path.name == "train.h5ad"
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(back.X.toarray(), x.toarray())
    np.testing.assert_array_equal(back.obs[A.LABEL].to_numpy(), y)
    assert list(back.var_names) == genes
    assert A.anchor_format(store, "scdataset", tmp_path) == (path, write_s)  # written once, then reused
    with pytest.raises(A.AnchorError, match="unknown anchor 'nope'"):
        A.anchor_format(store, "nope", tmp_path)


def test_soma_writer(store, tmp_path):
    tiledbsoma = pytest.importorskip("tiledbsoma")
    x, y, genes = A.source_cells(store)
    path, _ = A.anchor_format(store, "tiledbsoma_ml", tmp_path)
    with tiledbsoma.Experiment.open(str(path)) as exp:
        ms = exp.ms[A.SOMA_MEASUREMENT]
        m = ms.X[A.SOMA_LAYER].read().tables().concat()
        obs = exp.obs.read(column_names=["soma_joinid", A.LABEL]).concat().to_pandas()
        var = ms.var.read().concat().to_pandas()
    got = np.zeros(x.shape, np.float32)
    got[m["soma_dim_0"].to_numpy(), m["soma_dim_1"].to_numpy()] = m["soma_data"].to_numpy()
    np.testing.assert_array_equal(got, x.toarray())
    np.testing.assert_array_equal(obs.sort_values("soma_joinid")[A.LABEL].to_numpy(), y)
    var = var.sort_values("soma_joinid")
    assert any(var[c].tolist() == genes for c in var.columns)  # the genes, in the store's order


def test_drop_page_cache_advises_every_file(store):
    n = A.drop_page_cache(store.root)
    assert n == sum(1 for p in store.root.rglob("*") if p.is_file()) and n > 0


def test_anchor_row_is_skipped_without_its_venv(monkeypatch):
    cfg = Config.quick()
    monkeypatch.setitem(REGISTRY, "t_anchor", Case("t_anchor", "an anchor", None, lambda p, c: {}, "peer",
                                                   "needs `make anchors-env`", min_ratio=1.0,
                                                   baseline_venv=".venv-absent"))
    row = runner.run_case("t_anchor", cfg)
    assert row["status"] == "skipped" and ".venv-absent/ is absent" in row["note"]
    text = runner.table([row], cfg)
    assert "| an anchor | skipped |" in text and "needs `make anchors-env`" in text  # named, with why
    assert ">= 1x baseline" in text  # the target it would be judged on


def test_skipped_rows_are_no_missed_target_in_the_summary():
    from sctab.bench.summary import summarise

    skipped = {"name": "a", "figure": "an anchor", "target": None, "min_ratio": 1.0, "status": "skipped",
               "note": "skipped: .venv-anchors/ is absent"}
    errored = {**skipped, "name": "b", "status": "error", "note": "baseline failed"}
    out = {s["name"]: s for s in summarise([{"rows": [skipped, errored]}] * 3)}
    assert out["a"]["met"] is None and "absent" in out["a"]["note"]
    assert out["b"]["met"] is False  # an error still counts as not met


def test_anchor_rows_registered_for_each_output_and_cache():
    names = [n for n in REGISTRY if n.startswith("anchor_")]
    assert sorted(names) == sorted(f"anchor_{a}_{f}_{c}" for a in A.ANCHORS for f in ("csr", "dense")
                                   for c in ("warm", "cold"))
    for n in names:
        anchor = next(a for a in A.ANCHORS if n.startswith(f"anchor_{a}_"))
        assert REGISTRY[n].baseline_venv == A.VENVS[anchor][0] and REGISTRY[n].min_ratio == 1.0


def test_a_wrong_anchor_batch_fails_the_row():
    """The baseline's own checks are judged: an anchor that delivered wrong cells cannot leave a row met."""
    case = Case("t", "t", None, None, min_ratio=1.0)
    ours = {"samples": [2.0], "cpu_samples": [2.0], "check": {"cells": bounded(0, 0)}, "peak_rss_mib": 1}
    base = {"samples": [1.0], "cpu_samples": [1.0], "check": {"cells": bounded(3, 0)}, "peak_rss_mib": 1}
    row = runner.judge({"ours": ours, "baseline": base}, case, Config.quick())
    assert row["checks_ok"] is False and row["met"] is False and "baseline: cells" in row["ours"]["check"]


# ------------------------------------------------------------------------------------------- anchors
@pytest.mark.parametrize("x_format", ["csr", "dense"])
@pytest.mark.parametrize("anchor", [pytest.param(a, marks=needs(a)) for a in A.ANCHORS])
def test_anchor_batches_are_the_source_cells(store, tmp_path, anchor, x_format):
    x, y, _ = A.source_cells(store)
    path, _ = A.anchor_format(store, anchor, tmp_path)
    epoch = list(A.anchor_loader(anchor, path, BATCH, x_format, seed=3))
    sizes = [len(b) for _, b in epoch]
    # each DataLoader worker of tiledbsoma-ml reads its own share of the cells: one short batch per worker
    assert max(sizes) == BATCH and sum(n < BATCH for n in sizes) <= max(1, A.anchor_workers(anchor, x_format))
    xb, yb = epoch[0]
    assert yb.dtype == torch.int64 and xb.dtype == torch.float32
    assert xb.layout == (torch.sparse_csr if x_format == "csr" else torch.strided)
    assert A.cell_mismatches(epoch, x, y) == 0
    order = np.concatenate([b.numpy() for _, b in epoch])
    assert not np.array_equal(order, y)  # shuffled, not the store's order
