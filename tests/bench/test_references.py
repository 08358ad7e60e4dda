"""The real-data reference suite (sctab.bench.references): its data sets, their labels, and its summary."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import yaml

from sctab.bench import references as refs
from sctab.census.pbmc68k import Pbmc68kError, reconstruct_counts
from sctab.config import REPO_ROOT, load_params


def test_counts_come_back_from_log_normalised_values_and_totals():
    rng = np.random.default_rng(0)
    counts = rng.poisson(0.7, size=(50, 40)).astype(float)
    totals = counts.sum(1) + rng.integers(100, 2000, 50)  # whole-transcriptome totals: more genes than kept
    log_norm = np.log1p(counts / totals[:, None] * 1e4).astype(np.float32)
    back, dist, rel, within = reconstruct_counts(log_norm, totals)
    assert np.array_equal(back, counts) and dist < 0.01 and rel < 0.01 and within == 1.0
    _, dist, rel, _ = reconstruct_counts(log_norm, totals, target_sum=1.5e4)  # the wrong scale is seen
    assert dist > 0.1 and rel > 0.05
    with pytest.raises(Pbmc68kError, match="total count <= 0"):
        reconstruct_counts(log_norm, np.zeros(50))


def test_pbmc68k_is_written_with_integer_counts_and_every_label_mapped(tmp_path, ontology):
    facts = refs.build_pbmc68k(tmp_path / "pbmc68k.h5ad", tmp_path)
    a = ad.read_h5ad(tmp_path / "pbmc68k.h5ad")
    assert a.shape == (700, 765) == (facts["cells"], facts["genes"])
    x = a.X.toarray()
    assert np.array_equal(x, np.round(x)) and x.min() >= 0 and x.sum(1).min() > 0
    assert "within 0.01 of an integer" in facts["counts"]
    label_map = yaml.safe_load((REPO_ROOT / "conf" / "label_maps" / "pbmc68k.yaml").read_text())
    assert set(a.obs["cell_type"]) == set(label_map) and len(label_map) == 10
    for term in label_map.values():
        assert term in ontology and ontology.label(term) != term, term  # a real Cell Ontology term
    assert sum(v >= 10 for v in facts["labels"].values()) >= 8  # the suite's set with >= 8 types


def test_subsample_keeps_every_label_in_proportion(tmp_path):
    refs.build_pbmc68k(tmp_path / "p.h5ad", tmp_path)
    before = ad.read_h5ad(tmp_path / "p.h5ad").obs["cell_type"].value_counts()
    info = refs.subsample(tmp_path / "p.h5ad", 350, seed=0)
    after = ad.read_h5ad(tmp_path / "p.h5ad").obs["cell_type"].value_counts()
    assert info["subsampled"] and abs(info["cells"] - 350) <= 5
    assert set(after.index) == set(before.index)
    assert all(abs(after[k] - before[k] / 2) <= 1 for k in before.index)
    assert refs.subsample(tmp_path / "p.h5ad", 10_000) == {"subsampled": False}


def test_set_params_writes_dotted_and_top_level_keys(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text((REPO_ROOT / "conf" / "profiles" / "reference.yaml").read_text())
    refs.set_params(p, {**refs.SETS["pbmc68k"].settings, **refs.seed_settings(2)})
    params = load_params(p)
    assert params["seed"] == 2 and params["ensemble"]["seeds"] == [10, 11, 12, 13, 14]
    assert params["split"]["by"] == "cell" and params["filters"]["min_cells_per_type"] == 10
    assert params["models"]["sctab"]["augment"] is False and params["models"]["xgboost"]["seed"] == 2
    assert "# paper" in p.read_text()  # comments kept


def _result(test: dict[str, list[float]], val: dict[str, list[float]]) -> dict:
    runs = [{"seed": i, "test": {m: v[i] for m, v in test.items()}, "val": {m: v[i] for m, v in val.items()},
             "rows": {"train": 490, "val": 105, "test": 105}, "wall_s": 60.0, "curves": None}
            for i in range(len(next(iter(test.values()))))]
    return {"set": "toy", "base": "toy", "description": "toy set", "groups": None, "split_by": "cell",
            "settings": {"split.by": "cell"}, "runs": runs,
            "facts": {"cells": 700, "genes": 765, "labels": {"a": 400, "b": 300}, "source": "test", "counts": "raw"}}


def test_summary_judges_the_ensemble_against_the_best_other_model():
    close = _result({"sctab": [0.90, 0.91, 0.92], "mlp": [0.92, 0.915, 0.91], "linear": [0.8, 0.8, 0.8]},
                    {"sctab": [0.93, 0.93, 0.93], "mlp": [0.9, 0.9, 0.9], "linear": [0.85, 0.85, 0.85]})
    s = refs.summarise(close)
    assert s["best_other"] == "mlp" and s["gap"] == pytest.approx(-0.005) and s["holds"]
    assert s["val_ranking"] == ["sctab", "mlp", "linear"]
    assert s["models"]["sctab"]["test_sd"] == pytest.approx(0.01)
    behind = _result({"sctab": [0.7, 0.72, 0.71], "celltypist": [0.85, 0.86, 0.87]},
                     {"sctab": [0.7, 0.7, 0.7], "celltypist": [0.8, 0.8, 0.8]})
    s = refs.summarise(behind)
    assert not s["holds"] and s["best_other"] == "celltypist" and s["gap"] == pytest.approx(-0.15)
    text = refs.render([close, behind], "## header")
    assert "| toy | 490 / 105 / 105 | cell |" in text and "**no**" in text and "-0.150 (vs celltypist)" in text
    assert "sctab > mlp > linear" in text
