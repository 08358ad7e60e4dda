"""`sctab annotate` and `sctab.annotate`: raw counts in, the pipeline's own predictions out.

The reference for correctness is the store: the raw counts of the store's test cells, read back from the
census, annotated through the bundle, must give the labels and probabilities the predictor gives on the
store's normalised rows. Real public data that ships in packages covers the user side: CellTypist's
raw-count sample (gene symbols; also converted to Ensembl ids, and with genes removed) and scanpy's
pbmc68k_reduced (scaled X, log-normalised raw: refused).
"""

from __future__ import annotations

import importlib.resources as resources
import json
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sctab.annotation import AnnotateError, annotate, annotate_file, load_annotator
from sctab.cli import main as cli
from sctab.data.store import Store
from tests.model_folders import write_pbmc_h5ad


@pytest.mark.parametrize("seed", range(4))
def test_to_model_space_equals_selecting_the_columns(seed):
    """The renumbering fast path against the plain reading: pick the file's columns in model order, densify."""
    from sctab.annotation.annotator import to_model_space

    rng = np.random.default_rng(seed)
    n_cells, n_file, n_model = int(rng.integers(0, 40)), 60, 50
    block = sp.random(n_cells, n_file, density=0.3, format="csr", random_state=seed) * 50
    block.data = np.round(block.data)
    if seed % 2 and block.nnz:  # a non-canonical block: repeated entries add up (scipy's toarray semantics)
        coo = block.tocoo()
        block = sp.csr_matrix((np.r_[coo.data, coo.data[:3]], np.r_[coo.col, coo.col[:3]],
                               np.r_[0, np.cumsum(np.bincount(np.r_[coo.row, coo.row[:3]], minlength=n_cells))]),
                              shape=block.shape)
        block.has_canonical_format = False
    columns = np.where(rng.random(n_model) < 0.3, -1, rng.permutation(n_file)[:n_model])  # some genes absent
    before = block.copy()
    got = to_model_space(block, columns).toarray()
    dense = block.toarray()
    want = np.zeros((n_cells, n_model), np.float32)
    for j, c in enumerate(columns):
        if c >= 0:
            want[:, j] = dense[:, c]
    np.testing.assert_array_equal(got, want)
    assert (block != before).nnz == 0  # the caller's block is left as it was


def test_annotation_equals_the_predictor_on_the_store(annotator, test_counts, models, store_dir):
    from sctab import models as sctab_models
    from sctab.evaluate import predict_split

    _, probs = predict_split(sctab_models.load(models / "sctab"), Store(store_dir), "test")
    out = annotate(test_counts.copy(), annotator, batch_size=97, progress=False)
    classes = np.asarray(Store(store_dir).classes)
    assert (out.obs["sctab_label"].to_numpy() == classes[probs.argmax(1)]).all()
    np.testing.assert_allclose(out.obs["sctab_probability"].to_numpy(), probs.max(1), atol=1e-5)
    np.testing.assert_allclose(out.obs["sctab_uncertainty"], 1 - out.obs["sctab_probability"], atol=1e-7)
    report = out.uns["sctab_annotation"]
    assert report["matrix"] == "X" and report["values"] == "counts" and report["genes_missing"] == 0
    assert out.obs["sctab_cell_type_ontology_term_id"].str.startswith("CL:").all()


def test_coarse_label_is_a_common_ancestor_above_the_threshold(annotator, test_counts, ontology):
    out = annotate(test_counts.copy(), annotator, uncertainty_threshold=0.0, progress=False)
    obs = out.obs
    coarser = obs["sctab_coarse_ontology_term_id"] != obs["sctab_cell_type_ontology_term_id"]
    assert coarser.any()
    for fine, coarse in obs.loc[coarser, ["sctab_cell_type_ontology_term_id",
                                          "sctab_coarse_ontology_term_id"]].itertuples(index=False):
        assert coarse in ontology.ancestors(fine)
    sure = annotate(test_counts.copy(), annotator, uncertainty_threshold=1.0, progress=False).obs
    assert (sure["sctab_coarse_label"] == sure["sctab_label"]).all()


def test_symbols_missing_genes_and_other_matrices(annotator, test_counts):
    ref = annotate(test_counts.copy(), annotator, progress=False).obs["sctab_label"].to_numpy()
    by_symbol = test_counts.copy()
    by_symbol.var_names = by_symbol.var["feature_name"].astype(str).to_numpy()
    by_symbol.var = by_symbol.var[["feature_length"]]  # no Ensembl id column left: symbols only
    out = annotate(by_symbol, annotator, progress=False)
    assert (out.obs["sctab_label"].to_numpy() == ref).all()
    assert out.uns["sctab_annotation"]["gene_ids"].startswith("symbol")

    model_genes = set(annotator.genes)
    keep = [g for i, g in enumerate(test_counts.var_names) if g not in model_genes or i % 3]
    fewer = test_counts[:, keep].copy()
    zeroed = test_counts.copy()
    drop = [i for i, g in enumerate(test_counts.var_names) if g not in set(keep)]
    mask = np.ones(test_counts.n_vars, dtype=np.float32)
    mask[drop] = 0
    zeroed.X = sp.csr_matrix(zeroed.X.multiply(mask[None, :]))
    a = annotate(fewer, annotator, progress=False)
    b = annotate(zeroed, annotator, progress=False)
    dropped_model_genes = len(set(test_counts.var_names[drop]) & model_genes)
    assert a.uns["sctab_annotation"]["genes_missing"] == dropped_model_genes > 0
    np.testing.assert_allclose(a.obs["sctab_probability"], b.obs["sctab_probability"], atol=1e-6)

    logged = test_counts.copy()
    logged.layers["counts"] = logged.X.copy()
    logged.X = sp.csr_matrix(np.log1p(logged.X.toarray() / np.maximum(logged.X.sum(1).A, 1) * 1e4))
    out = annotate(logged, annotator, progress=False)
    assert out.uns["sctab_annotation"]["matrix"] == "layers['counts']"
    assert (out.obs["sctab_label"].to_numpy() == ref).all()
    # the way out for log1p-only data gives the same labels
    only_log = anndata.AnnData(logged.X.copy(), obs=logged.obs.copy(), var=logged.var.copy())
    with pytest.raises(AnnotateError, match="looks normalised and log-transformed.*from_log1p"):
        annotate(only_log.copy(), annotator, progress=False)
    back = annotate(only_log, annotator, from_log1p=True, progress=False)
    assert (back.obs["sctab_label"].to_numpy() == ref).mean() > 0.99


def _write(adata, path) -> Path:
    adata.write_h5ad(path)
    return path


def test_annotate_file_streams_and_writes_h5ad_csv_parquet(bundle_dir, test_counts, tmp_path, annotator):
    src = _write(test_counts, tmp_path / "in.h5ad")
    ref = annotate(test_counts.copy(), annotator, progress=False).obs
    out = tmp_path / "out.h5ad"
    assert cli(["annotate", str(src), "-o", str(out), "--model", str(bundle_dir), "--batch-size", "50", "-q"]) == 0
    got = anndata.read_h5ad(out)
    assert (got.obs["sctab_label"] == ref["sctab_label"]).all()
    assert (got.X != test_counts.X).nnz == 0
    assert json.loads(json.dumps(got.uns["sctab_annotation"]["n_cells"].item())) == test_counts.n_obs
    for suffix in (".csv", ".parquet"):
        table = tmp_path / f"out{suffix}"
        assert cli(["annotate", str(src), "-o", str(table), "--model", str(bundle_dir), "-q"]) == 0
        frame = pd.read_csv(table, index_col=0) if suffix == ".csv" else pd.read_parquet(table)
        assert list(frame.index) == list(test_counts.obs_names)
        assert (frame["sctab_label"].to_numpy() == ref["sctab_label"].to_numpy()).all()


def test_pipeline_model_folder_needs_its_store(models, store_dir, obo_file, test_counts, annotator):
    ann = load_annotator(models / "sctab", store=store_dir, ontology=obo_file)
    a = annotate(test_counts.copy(), ann, progress=False).obs["sctab_label"]
    b = annotate(test_counts.copy(), annotator, progress=False).obs["sctab_label"]
    assert (a == b).all()
    with pytest.raises(AnnotateError, match="needs the project's store"):
        load_annotator(models / "sctab", store=store_dir.parent / "nope", ontology=obo_file)


@pytest.mark.parametrize("case", ["missing", "no-counts", "float", "negative", "nan", "no-overlap", "duplicates",
                                  "truncated", "empty", "bad-model", "bad-output"])
def test_bad_input_is_a_clear_error_and_writes_nothing(case, bundle_dir, test_counts, tmp_path, capsys):
    small = test_counts[:40].copy()
    small.var = small.var[["feature_length"]]  # genes identified by var_names only
    out = tmp_path / "out.h5ad"
    out.write_text("previous result")  # must survive a failed run untouched
    model = str(bundle_dir)
    src = tmp_path / "in.h5ad"
    expect = {"missing": "does not exist", "no-counts": "no raw counts", "float": "no raw counts",
              "negative": "negative", "nan": "NaN", "no-overlap": "none of the model's", "duplicates": "duplicate",
              "truncated": "cannot open", "empty": "no cells", "bad-model": "neither a models:/",
              "bad-output": "must end in"}[case]
    if case == "no-counts":
        small.X = sp.csr_matrix(small.X.toarray() - small.X.toarray().mean(0))
    elif case == "float":
        small.X = small.X * 1.37
    elif case == "negative":
        x = small.X.toarray()
        x[-1, 0] = -3  # after the first rows: caught while streaming
        small.X = sp.csr_matrix(x)
    elif case == "nan":
        x = small.X.toarray()
        x[35, 1] = np.nan
        small.X = sp.csr_matrix(x)
    elif case == "no-overlap":
        small.var_names = [f"gene{i}" for i in range(small.n_vars)]
    elif case == "duplicates":
        names = list(small.var_names)
        names[1] = names[0]
        small.var_names = names
    elif case == "empty":
        small = small[:0].copy()
    if case != "missing":
        small.write_h5ad(src)
    if case == "truncated":
        data = src.read_bytes()
        src.write_bytes(data[: len(data) // 3])
    if case == "bad-model":
        model = str(tmp_path / "no-such-model")
    target = tmp_path / "out.txt" if case == "bad-output" else out
    args = ["annotate", str(src), "-o", str(target), "--model", model, "-q"]
    if case in ("negative", "nan"):
        args += ["--batch-size", "16"]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("sctab: error:") and expect in err, err
    assert "Traceback" not in err
    assert out.read_text() == "previous result"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


# ----------------------------------------------------------------------- real public data in packages
@pytest.fixture(scope="module")
def pbmc_symbols(tmp_path_factory) -> Path:
    return write_pbmc_h5ad(tmp_path_factory.mktemp("pbmc") / "pbmc_symbols.h5ad")


def test_real_pbmc_by_symbol_by_ensembl_and_with_missing_genes(pbmc_symbols, annotator, tmp_path):
    from sctab.census.genes import gencode_genes

    by_symbol = annotate_file(pbmc_symbols, tmp_path / "sym.csv", annotator, progress=False)
    assert by_symbol.n_cells == 559 and by_symbol.gene_ids == "symbol (index)"
    assert 0 < by_symbol.genes_found <= len(annotator.genes)
    labels = pd.read_csv(tmp_path / "sym.csv", index_col=0)["sctab_label"]

    adata = anndata.read_h5ad(pbmc_symbols)
    table = gencode_genes().drop_duplicates("feature_name").set_index("feature_name")["feature_id"]
    ids = adata.var_names.map(lambda s: table.get(s, f"unmapped-{s}"))
    keep = ~pd.Index(ids).duplicated()
    ens = adata[:, keep].copy()
    ens.var_names = np.asarray(ids)[keep]
    ens.var["gene_symbols"] = adata.var_names[keep]
    path = _write(ens, tmp_path / "pbmc_ensembl.h5ad")
    by_id = annotate_file(path, tmp_path / "ens.csv", annotator, progress=False)
    assert by_id.gene_ids == "Ensembl id (index)" and by_id.genes_found == by_symbol.genes_found
    assert (pd.read_csv(tmp_path / "ens.csv", index_col=0)["sctab_label"] == labels).all()

    fewer = _write(ens[:, ::2].copy(), tmp_path / "pbmc_half.h5ad")
    half = annotate_file(fewer, tmp_path / "half.h5ad", annotator, progress=False)
    assert half.genes_missing > by_id.genes_missing
    assert anndata.read_h5ad(tmp_path / "half.h5ad").obs["sctab_label"].notna().all()


def test_real_log_normalised_pbmc_is_refused(annotator, tmp_path, capsys, bundle_dir):
    path = Path(str(resources.files("scanpy") / "datasets" / "10x_pbmc68k_reduced.h5ad"))
    out = tmp_path / "out.h5ad"
    assert cli(["annotate", str(path), "-o", str(out), "--model", str(bundle_dir), "-q"]) == 2
    err = capsys.readouterr().err
    assert "no raw counts" in err and "X: negative values" in err and ".raw.X" in err and "--from-log1p" in err
    assert not out.exists()


def test_plot_annotation(annotator, test_counts, tmp_path):
    from sctab.annotation import plot_annotation

    adata = annotate(test_counts.copy(), annotator, progress=False)
    adata.obsm["X_pca"] = np.random.default_rng(0).normal(size=(adata.n_obs, 2))
    fig = plot_annotation(adata, path=tmp_path / "umap.png")
    assert (tmp_path / "umap.png").stat().st_size > 10_000
    assert [ax.get_title() for ax in fig.axes[:2]] == ["predicted cell type", "ensemble uncertainty"]
    with pytest.raises(AnnotateError, match="run sctab.annotate"):
        plot_annotation(test_counts.copy())


def test_top_level_api_is_scanpy_like(annotator, test_counts):
    import sctab

    out = sctab.annotate(test_counts, annotator, copy=True, progress=False)
    assert out is not test_counts and "sctab_label" in out.obs and "sctab_label" not in test_counts.obs
    assert sctab.annotate is annotate and "plot_annotation" in dir(sctab)
    with pytest.raises(AnnotateError, match="expects an AnnData"):
        sctab.annotate(test_counts.X, annotator)
