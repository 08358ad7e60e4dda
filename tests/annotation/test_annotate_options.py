"""CellTypist's annotation options in `sctab annotate` / `sctab.annotate`: minimum probability ("Unassigned"),
restriction to some classes, majority voting over clusters, the probability matrix, the gene coverage, and the
default minimum probability a registered version carries (chosen on its store's validation split)."""

from __future__ import annotations

import os

import anndata
import numpy as np
import pandas as pd
import pytest

from sctab.annotation import UNASSIGNED, AnnotateError, annotate, annotate_file
from sctab.annotation.voting import HETEROGENEOUS, default_resolution, majority_vote
from sctab.cli import main as cli
from sctab.data.store import Store
from sctab.registry.thresholds import precision_threshold


@pytest.fixture(scope="module")
def plain(annotator, test_counts):  # noqa: F811
    """The reference run: no option set."""
    return annotate(test_counts.copy(), annotator, progress=False)


# ------------------------------------------------------------------------------------------ min probability
def test_min_probability_leaves_cells_unassigned(annotator, test_counts, plain):  # noqa: F811
    p = plain.obs["sctab_probability"].to_numpy()
    floor = float(np.median(p))
    out = annotate(test_counts.copy(), annotator, min_probability=floor, progress=False)
    obs = out.obs
    below = p < floor
    assert below.any() and (~below).any()
    assert (obs["sctab_label"].to_numpy()[below] == UNASSIGNED).all()
    assert (obs["sctab_cell_type_ontology_term_id"].to_numpy()[below] == "").all()
    kept = obs["sctab_label"].to_numpy()[~below]
    assert (kept == plain.obs["sctab_label"].to_numpy()[~below]).all()
    # an unassigned cell still gets the coarse label: what it surely is
    assert obs.loc[below, "sctab_coarse_ontology_term_id"].str.startswith("CL:").all()
    np.testing.assert_array_equal(obs["sctab_probability"], p)  # the probability itself is reported as is
    rep = out.uns["sctab_annotation"]
    assert rep["below_min_probability"] == int(below.sum()) and rep["min_probability"] == floor
    assert rep["min_probability_source"] == "given"
    off = annotate(test_counts.copy(), annotator, min_probability=0, progress=False).obs
    assert (off["sctab_label"] != UNASSIGNED).all()
    with pytest.raises(AnnotateError, match="between 0 and 1"):
        annotate(test_counts.copy(), annotator, min_probability=1.5, progress=False)


def test_precision_threshold_rule():
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    ok = np.array([1, 1, 0, 1, 0], bool)  # precision of the top k: 1, 1, .67, .75, .6
    assert precision_threshold(p, ok, 0.75)["value"] == 0.6
    r = precision_threshold(p, ok, 0.9)
    assert (r["value"], r["precision"], r["assigned_fraction"], r["reached"]) == (0.8, 1.0, 0.4, True)
    assert precision_threshold(p, ok, 0.5)["value"] == 0.0  # all cells meet it: nothing unassigned
    tied = precision_threshold(np.array([0.9, 0.9, 0.5]), np.array([1, 0, 1], bool), 1.0)
    assert (tied["value"], tied["reached"]) == (0.0, False)  # a tie cannot be split: not reachable
    with pytest.raises(ValueError, match="target precision"):
        precision_threshold(p, ok, 0.0)


# ------------------------------------------------------------------------------------------ restrict-to
def test_restrict_to_renormalises_and_never_predicts_outside(annotator, test_counts, plain, bundle_dir,  # noqa: F811
                                                             tmp_path):
    classes, ids = annotator.bundle.space.classes, annotator.bundle.class_ids
    allowed = [classes[0], ids[2]]  # one by label, one by Cell Ontology id
    out = annotate(test_counts.copy(), annotator, restrict_to=allowed, probabilities=True, progress=False)
    probs = out.obsm["sctab_probabilities"]
    assert out.uns["sctab_probabilities"]["classes"] == list(classes)
    np.testing.assert_allclose(probs[:, [0, 2]].sum(axis=1), 1.0, atol=1e-6)
    assert (np.delete(probs, [0, 2], axis=1) == 0).all()
    assert set(out.obs["sctab_label"]) <= {classes[0], classes[2]}
    full = annotate(test_counts.copy(), annotator, probabilities=True, progress=False).obsm["sctab_probabilities"]
    mass = full[:, [0, 2]].sum(axis=1)
    some = mass > 0  # the random-weight model can underflow both to 0: then the set is uniform
    np.testing.assert_allclose(probs[some, 0], full[some, 0] / mass[some], rtol=1e-5)
    assert (probs[~some][:, [0, 2]] == 0.5).all()
    assert out.uns["sctab_annotation"]["restricted_to"] == [classes[0], classes[2]]
    # the same through the CLI, one name per --restrict-to or a file of names
    src = tmp_path / "in.h5ad"
    test_counts.write_h5ad(src)
    names = tmp_path / "allowed.txt"
    names.write_text(f"{classes[0]}\n{ids[2]}\n")
    assert cli(["annotate", str(src), "-o", str(tmp_path / "r.csv"), "--model", str(bundle_dir), "-q",
                "--restrict-to", str(names)]) == 0
    table = pd.read_csv(tmp_path / "r.csv", index_col=0)
    assert (table["sctab_label"].to_numpy() == out.obs["sctab_label"].to_numpy()).all()


def test_restrict_to_an_ontology_term_means_the_classes_below_it(annotator, ontology):  # noqa: F811
    from sctab.annotation.restrict import restriction_mask

    bundle = annotator.bundle
    anc = {}
    for cid in bundle.class_ids:
        for a in ontology.ancestors(cid):
            anc.setdefault(a, set()).add(cid)
    term = next(t for t, below in sorted(anc.items()) if 1 < len(below) < len(bundle.class_ids))
    mask = restriction_mask(bundle, [ontology.label(term).upper()])  # case does not matter
    assert {c for c, m in zip(bundle.class_ids, mask) if m} == anc[term]


def test_restrict_to_unknown_names_lists_close_matches(annotator, test_counts, bundle_dir, tmp_path,  # noqa: F811
                                                       capsys):
    label = annotator.bundle.space.classes[1]
    with pytest.raises(AnnotateError, match=f"unknown.*{label[:-1]}x.*close: '{label}'"):
        annotate(test_counts.copy(), annotator, restrict_to=[label[:-1] + "x"], progress=False)
    src = tmp_path / "in.h5ad"
    test_counts[:20].copy().write_h5ad(src)
    out = tmp_path / "out.h5ad"
    assert cli(["annotate", str(src), "-o", str(out), "--model", str(bundle_dir), "-q",
                "--restrict-to", "CL:9999999"]) == 2
    assert "unknown label(s) or Cell Ontology id(s) 'CL:9999999'" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------------------------------ majority voting
def test_majority_vote_and_resolution_rules():
    labels = ["a", "b", "b", "a", "c", "c", "c", "b"]
    clusters = ["1", "1", "1", "2", "2", "2", "2", "3"]
    assert list(majority_vote(labels, clusters)) == ["b", "b", "b", "c", "c", "c", "c", "b"]
    assert list(majority_vote(["a", "b"], ["x", "x"])) == ["a", "a"]  # a tie goes to the first label
    strict = majority_vote(labels, clusters, min_prop=0.8)  # shares: 2/3, 3/4, 1
    assert list(strict) == [HETEROGENEOUS] * 7 + ["b"]
    assert [default_resolution(n) for n in (100, 5_000, 19_999, 20_000, 99_999, 150_000, 10**6)] == \
        [5, 10, 10, 15, 20, 25, 30]


def _one_label_per_cluster(obs: pd.DataFrame, key: str = "sctab") -> None:
    by = obs.groupby(f"{key}_over_clustering", observed=True)
    assert (by[f"{key}_majority_voting"].nunique() == 1).all()
    for _, g in by:
        counts = g[f"{key}_label"].value_counts()
        top = sorted(counts[counts == counts.max()].index)[0]
        assert (g[f"{key}_majority_voting"] == top).all()


def test_majority_voting_over_leiden_keeps_per_cell_labels(annotator, test_counts, plain):  # noqa: F811
    out = annotate(test_counts.copy(), annotator, majority_voting=True, progress=False)
    obs = out.obs
    assert (obs["sctab_label"].to_numpy() == plain.obs["sctab_label"].to_numpy()).all()
    n_clusters = obs["sctab_over_clustering"].nunique()
    assert 1 < n_clusters < len(obs)
    _one_label_per_cluster(obs)
    ids = dict(zip(annotator.bundle.space.classes, annotator.bundle.class_ids))
    assert (obs["sctab_majority_voting_ontology_term_id"] == obs["sctab_majority_voting"].map(ids)).all()
    rep = out.uns["sctab_annotation"]
    assert rep["n_clusters"] == n_clusters and "Leiden at resolution 5" in rep["majority_voting"]
    # a coarser resolution gives fewer clusters; the same settings give the same clusters
    coarse = annotate(test_counts.copy(), annotator, majority_voting=True, resolution=0.5, progress=False).obs
    assert coarse["sctab_over_clustering"].nunique() < n_clusters
    again = annotate(test_counts.copy(), annotator, majority_voting=True, progress=False).obs
    assert (again["sctab_over_clustering"] == obs["sctab_over_clustering"]).all()


def test_majority_voting_over_a_given_column_through_the_cli(annotator, test_counts, bundle_dir,  # noqa: F811
                                                             tmp_path, capsys):
    adata = test_counts.copy()
    adata.obs["cluster"] = adata.obs["cell_type"].astype(str)  # the true types as clusters
    src = tmp_path / "in.h5ad"
    adata.write_h5ad(src)
    out = tmp_path / "out.h5ad"
    assert cli(["annotate", str(src), "-o", str(out), "--model", str(bundle_dir), "-q",
                "--over-clustering", "cluster"]) == 0
    assert "majority voting over" in capsys.readouterr().out
    got = anndata.read_h5ad(out)
    assert (got.obs["sctab_over_clustering"].astype(str) == adata.obs["cluster"].to_numpy()).all()
    _one_label_per_cluster(got.obs)
    assert got.obs["sctab_majority_voting"].nunique() <= adata.obs["cluster"].nunique()
    assert (got.X != adata.X).nnz == 0
    # a graph already in the file is used as it is
    graph_in = tmp_path / "graph.h5ad"
    import scanpy as sc

    g = adata.copy()
    sc.pp.normalize_total(g)
    sc.pp.log1p(g)
    sc.pp.pca(g, n_comps=10)
    sc.pp.neighbors(g, n_neighbors=10)
    g.X, g.uns = adata.X, {}
    g.write_h5ad(graph_in)
    assert cli(["annotate", str(graph_in), "-o", str(tmp_path / "g.h5ad"), "--model", str(bundle_dir), "-q",
                "--majority-voting"]) == 0
    rep = anndata.read_h5ad(tmp_path / "g.h5ad").uns["sctab_annotation"]
    assert "obsp['connectivities'] of the input" in rep["majority_voting"]
    missing = tmp_path / "m.h5ad"
    assert cli(["annotate", str(src), "-o", str(missing), "--model", str(bundle_dir), "-q",
                "--over-clustering", "nope"]) == 2
    err = capsys.readouterr().err
    assert "over-clustering column 'nope' is not in the obs" in err and "cluster" in err
    assert not missing.exists()


# ------------------------------------------------------------------------------------------ probabilities
def test_probability_matrix_in_obsm_and_in_tables(annotator, test_counts, bundle_dir, tmp_path):  # noqa: F811
    src = tmp_path / "in.h5ad"
    test_counts.write_h5ad(src)
    out = tmp_path / "out.h5ad"
    assert cli(["annotate", str(src), "-o", str(out), "--model", str(bundle_dir), "-q", "--probabilities"]) == 0
    got = anndata.read_h5ad(out)
    probs = got.obsm["sctab_probabilities"]
    classes = list(got.uns["sctab_probabilities"]["classes"])
    assert probs.shape == (test_counts.n_obs, len(annotator.bundle.space.classes))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs.max(axis=1), got.obs["sctab_probability"], atol=1e-6)
    assert (np.asarray(classes)[probs.argmax(1)] == got.obs["sctab_label"].to_numpy()).all()
    assert list(got.uns["sctab_probabilities"]["ontology_term_ids"]) == annotator.bundle.class_ids
    table = tmp_path / "out.parquet"
    annotate_file(src, table, annotator, probabilities=True, progress=False)
    frame = pd.read_parquet(table)
    np.testing.assert_allclose(frame[[f"sctab_probabilities:{c}" for c in classes]].to_numpy(), probs, atol=1e-7)
    plain = annotate(test_counts.copy(), annotator, progress=False)
    assert "sctab_probabilities" not in plain.obsm


# ------------------------------------------------------------------------------------------ gene coverage
def test_gene_coverage_is_reported_and_too_little_is_refused(annotator, test_counts, bundle_dir, tmp_path,  # noqa: F811
                                                             capsys):
    model_genes = set(annotator.genes)
    keep = [g for i, g in enumerate(test_counts.var_names) if g not in model_genes or i % 4 == 0]
    part = test_counts[:, keep].copy()
    found = len(set(keep) & model_genes)
    coverage = found / len(model_genes)
    assert 0.1 < coverage < 0.5
    out = annotate(part.copy(), annotator, progress=False)
    assert out.uns["sctab_annotation"]["gene_coverage"] == pytest.approx(coverage)
    src = tmp_path / "part.h5ad"
    part.write_h5ad(src)
    target = tmp_path / "out.h5ad"
    target.write_text("previous result")
    args = ["annotate", str(src), "-o", str(target), "--model", str(bundle_dir), "-q"]
    assert cli(args + ["--min-gene-coverage", "0.6"]) == 2
    err = capsys.readouterr().err
    assert f"covers {found:,} of the model's {len(model_genes):,} genes" in err and "below the minimum gene " \
        "coverage 60.0%" in err and "nothing was written" in err
    assert target.read_text() == "previous result"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert cli(args + ["--min-gene-coverage", "0.1"]) == 0
    assert f"gene coverage {coverage:.1%}" in capsys.readouterr().out
    assert anndata.read_h5ad(target).uns["sctab_annotation"]["gene_coverage"] == pytest.approx(coverage)


# ------------------------------------------------------------------------------------------ registered default
def test_default_min_probability_recorded_at_registration_and_used(models, store_dir, ontology, tracking,  # noqa: F811
                                                                   test_counts):
    from sctab import models as sctab_models
    from sctab.evaluate import predict_split
    from sctab.evaluate.metrics import correct_predictions
    from sctab.registry import register_folder
    from sctab.registry.register import client, store_class_ids

    store = Store(store_dir)
    y, probs = predict_split(sctab_models.load(models / "sctab"), store, "val")
    pmax = probs.max(1)
    correct = correct_predictions(y, probs.argmax(1), store.child_matrix()) == y
    order = np.argsort(-pmax)
    curve = np.cumsum(correct[order]) / np.arange(1, len(y) + 1)
    ends = np.flatnonzero(np.r_[pmax[order][1:] != pmax[order][:-1], True])  # thresholds cannot split ties
    target = float((curve[-1] + curve[ends].max()) / 2)  # above the whole split's precision, reached by a top set
    assert curve[-1] < target <= curve[ends].max()
    want = precision_threshold(pmax, correct, target)
    assert want["reached"] and want["value"] > 0

    v = register_folder(models / "sctab", "voted", class_ids=store_class_ids(store_dir), ontology=ontology,
                        params={"profile": "test"}, test_f1=0.5, store=store_dir, min_probability_precision=target)
    mv = client().get_model_version("voted", v.version)
    assert float(mv.tags["min_probability"]) == pytest.approx(want["value"], abs=1e-6)
    assert mv.tags["min_probability_reached"] == "true"

    out = annotate(test_counts.copy(), "models:/voted@challenger", progress=False)
    # neither the registration nor the download left MLflow's URIs in the environment of later processes
    assert "MLFLOW_REGISTRY_URI" not in os.environ
    assert os.environ["MLFLOW_TRACKING_URI"] == tracking
    rep = out.uns["sctab_annotation"]
    assert rep["min_probability"] == pytest.approx(want["value"], abs=1e-9)
    assert "the model's default" in rep["min_probability_source"]
    below = out.obs["sctab_probability"].to_numpy() < want["value"]
    assert below.any()
    assert (out.obs["sctab_label"].to_numpy()[below] == UNASSIGNED).all()
    assert (out.obs["sctab_label"].to_numpy()[~below] != UNASSIGNED).all()
    off = annotate(test_counts.copy(), "models:/voted@challenger", min_probability=0, progress=False)
    assert (off.obs["sctab_label"] != UNASSIGNED).all()
    # the served model applies the same default
    import mlflow

    genes = annotator_genes = store.var["feature_id"].astype(str).tolist()
    x = test_counts[:, annotator_genes].X.toarray().astype(np.int64)
    served = mlflow.pyfunc.load_model("models:/voted@challenger").predict(pd.DataFrame(x, columns=genes))
    assert (served["label"].to_numpy() == out.obs["sctab_label"].to_numpy()).all()


def test_register_stage_records_each_default_on_a_sample_of_val(models, store_dir, obo_file, tracking):  # noqa: F811
    from sctab.annotation import load_annotator
    from sctab.registry import register_pipeline_models
    from sctab.registry.register import client
    from tests.conftest import pipeline_help

    params = {"profile": "test", "registry": {"models": {"sctab": "stage-ens", "linear": "stage-lin"},
                                              "min_probability_precision": 0.99, "threshold_max_cells": 100}}
    versions = register_pipeline_models(models, store=store_dir, ontology_path=obo_file,
                                        metrics={"sctab": {"test_f1_macro": 0.5}}, params=params)
    assert sorted(v.name for v in versions) == ["stage-ens", "stage-lin"]
    val = Store(store_dir).split("val")
    assert val.n_rows > 100
    for v in versions:
        tags = client().get_model_version(v.name, v.version).tags
        rec = load_annotator(f"models:/{v.name}/{v.version}").bundle.meta["min_probability"]
        assert tags["min_probability"] == f"{rec['value']:.6f}" and tags["min_probability_precision"] == "0.99"
        assert rec["precision_target"] == 0.99 and rec["split"] == "val" and "smallest t" in rec["rule"]
        assert 0 < rec["n_cells"] < val.n_rows  # evenly spread row groups, not the whole split
    assert "minimum probability" in pipeline_help("register")


def test_register_ranks_on_validation_and_marks_the_annotate_default(models, store_dir, obo_file,  # noqa: F811
                                                                      tracking, capsys, tmp_path):
    """registry.champion: every model is registered; the ranking by validation F1 is in the tags, the cards and
    `sctab models`; best marks the top one as `sctab annotate`'s default, sctab the ensemble whatever its rank."""
    import json
    import shutil
    from pathlib import Path

    from sctab.annotation.resolve import DEFAULT_MODEL, default_model_uri
    from sctab.config import ConfigError, check_settings
    from sctab.registry import RegistryError, register_pipeline_models
    from sctab.registry.register import client, folder_val_f1, rank_models

    models = Path(shutil.copytree(models, tmp_path / "models"))
    names = {"sctab": "rank-ens", "linear": "rank-lin", "linear2": "rank-unscored"}
    shutil.copytree(models / "linear", models / "linear2")
    ens = json.loads((models / "sctab" / "ensemble.json").read_text())
    (models / "sctab" / "ensemble.json").write_text(json.dumps({**ens, "ensemble": {"val_f1_macro": 0.61}}))
    (models / "linear" / "metrics.json").write_text(json.dumps({"val_f1_macro": 0.72, "test_f1_macro": 0.7}))
    (models / "linear2" / "metrics.json").unlink(missing_ok=True)  # no validation F1 recorded: ranks last
    val = {m: folder_val_f1(models / m) for m in names}
    assert val == {"sctab": 0.61, "linear": 0.72, "linear2": None}
    order = ["linear", "sctab", "linear2"]
    assert default_model_uri() == DEFAULT_MODEL  # nothing marked yet
    for rule, expect in (("best", names[order[0]]), ("sctab", "rank-ens")):
        ranking: dict = {}
        params = {"profile": "test", "registry": {"models": names, "champion": rule, "threshold_max_cells": 100}}
        versions = register_pipeline_models(models, store=store_dir, ontology_path=obo_file, metrics={},
                                            params=params, ranking_out=ranking)
        assert [r["name"] for r in ranking["models"]] == [names[m] for m in order]
        assert ranking["default"] == expect and ranking["best"] == names[order[0]]
        for v in versions:
            model = next(m for m, n in names.items() if n == v.name)
            tags = client().get_model_version(v.name, v.version).tags
            assert tags["val_rank"] == f"{order.index(model) + 1} of 3"
            assert tags["val_f1_macro"] == ("unknown" if val[model] is None else f"{val[model]:.6f}")
            rm = client().get_registered_model(v.name)
            assert rm.tags["annotate_default"] == str(v.name == expect).lower()
            assert "## Validation ranking" in rm.description and f"uses **{expect}** by default" in rm.description
        assert default_model_uri() == f"models:/{expect}@champion"
    assert cli(["models"]) == 0
    shown = capsys.readouterr().out
    assert "rank-ens *" in shown and "1 of 3" in shown and "3 of 3" in shown
    with pytest.raises(RegistryError, match="registry.champion must be one of best, sctab"):
        rank_models(models, names, {}, "worst")
    (models / "linear" / "metrics.json").write_text(json.dumps({"val_f1_macro": "n/a"}))
    with pytest.raises(RegistryError, match="val_f1_macro 'n/a' is not a number"):
        rank_models(models, names, {}, "best")
    with pytest.raises(ConfigError, match="registry.champion must be one of best, sctab"):
        check_settings({"registry": {"champion": "newest"}})


def test_over_clustering_of_many_cells_finds_the_groups():
    """From 8,192 cells on scanpy takes approximate neighbours (pynndescent); three expression programmes
    come out as clusters that never mix them."""
    import scipy.sparse as sp

    from sctab.annotation.voting import PYNNDESCENT_FROM, over_cluster

    rng = np.random.default_rng(0)
    n, genes = PYNNDESCENT_FROM + 300, 60
    group = rng.integers(0, 3, n)
    rates = np.full((3, genes), 0.3)
    for g in range(3):
        rates[g, g * 20:(g + 1) * 20] = 6.0
    counts = rng.poisson(rates[group])
    x = sp.csr_matrix(np.log1p(counts / counts.sum(1, keepdims=True) * 1e4).astype(np.float32))
    clusters, info = over_cluster(x, resolution=0.2)
    assert "Leiden at resolution 0.2" in info["over_clustering"]
    table = pd.crosstab(clusters, group)
    assert len(table) >= 3 and ((table > 0).sum(axis=1) == 1).all()  # every cluster holds one group only
