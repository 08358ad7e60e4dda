"""Extraction, the six filters, the donor split, normalisation and the store, on the small embedded census."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sctab.census.extract import extract
from sctab.census.filters import FilterError
from sctab.census.source import CensusError, open_counts
from sctab.config import ConfigError, load_profile
from sctab.data.normalize import normalize_log1p
from sctab.data.split import SPLITS, SplitError, split_cells
from sctab.data.store import Store, StoreError, balanced_class_weights
from sctab.data.store_writer import write_store


# ----------------------------------------------------------------------------------------- extraction
def test_extraction_applies_the_six_filters(extraction, census_params, ontology):
    obs, rep = extraction.obs, extraction.report
    f = census_params["filters"]
    assert obs["is_primary_data"].all()
    assert set(obs["assay"].astype(str)) <= set(f["assays"])
    per_type = obs.groupby("cell_type_ontology_term_id", observed=True).agg(
        n=("soma_joinid", "size"), donors=("tech_sample", "nunique"))
    assert (per_type["n"] >= f["min_cells_per_type"]).all()
    assert (per_type["donors"] >= f["min_donors_per_type"]).all()
    assert all(ontology.n_ancestors(t) >= f["min_ancestors"] for t in per_type.index)
    assert "unknown" not in per_type.index
    assert (obs["tech_sample"].astype(str) == obs["dataset_id"].astype(str) + "_" + obs["donor_id"].astype(str)).all()
    names = [s["filter"] for s in rep["filters"]]
    assert len(names) == 6
    # every filter removes something on the embedded census, and counts only go down
    for s in rep["filters"]:
        assert s["after"]["cells"] < s["before"]["cells"], s["filter"]
    assert rep["kept"]["cells"] == len(obs)
    assert any("obsolete" in n for n in rep["notes"]), "the obsolete native-cell root is reported"


def test_gene_space_is_protein_coding_in_census_order(extraction, census_params):
    var = extraction.var
    assert len(var) == census_params["synthetic"]["n_genes"]
    assert var["soma_joinid"].is_monotonic_increasing
    assert not var["feature_id"].duplicated().any()


def test_explicit_gene_list_sets_order(params, ontology, tmp_path, extraction):
    wanted = extraction.var["feature_id"].tolist()[::-1][:50]
    pd.DataFrame({"feature_id": wanted}).to_parquet(tmp_path / "genes.parquet")
    params["genes"]["feature_list"] = str(tmp_path / "genes.parquet")
    assert extract(params, ontology).var["feature_id"].tolist() == wanted
    pd.DataFrame({"feature_id": wanted + ["ENSG99999999999"]}).to_parquet(tmp_path / "bad.parquet")
    params["genes"]["feature_list"] = str(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="ENSG99999999999"):
        extract(params, ontology)


# ----------------------------------------------------------------------------------------- bad input
def test_missing_census_path_is_named(params, ontology, tmp_path):
    params["census"]["uri"] = str(tmp_path / "nowhere")
    with pytest.raises(CensusError, match="nowhere.*does not exist"):
        extract(params, ontology)


def test_census_without_a_column_is_named(params, ontology, tmp_path):
    import cellxgene_census

    with cellxgene_census.open_soma(uri=params["census"]["uri"]) as c:
        adata = cellxgene_census.get_anndata(c, "Homo sapiens", obs_coords=slice(0, 99))
    adata.obs = adata.obs.drop(columns=["tissue_general"])
    from sctab.census.synthetic import write_census

    write_census(adata, tmp_path / "broken")
    params["census"]["uri"] = str(tmp_path / "broken")
    with pytest.raises(CensusError, match="lacks column.*tissue_general"):
        extract(params, ontology)


def test_thresholds_that_leave_no_class_fail_clearly(params, ontology):
    params["filters"]["min_cells_per_type"] = 10**9
    with pytest.raises(FilterError, match="leave 0 cell type"):
        extract(params, ontology)


def test_assays_that_match_nothing_fail_clearly(params, ontology):
    params["filters"]["assays"] = ["no such assay"]
    with pytest.raises(FilterError, match="no cell passes"):
        extract(params, ontology)


def test_unknown_profile_is_named():
    with pytest.raises(ConfigError, match="unknown profile 'nope'.*tiny"):
        load_profile("nope")


def test_both_profiles_carry_the_paper_parameters():
    full, tiny = load_profile("census-2023-05-15"), load_profile("tiny")
    assert full["filters"]["min_cells_per_type"] == 5000 and full["filters"]["min_donors_per_type"] == 30
    assert full["filters"]["min_ancestors"] == 7 and full["store"]["target_sum"] == 10000
    assert full["split"]["fractions"] == {"train": 0.7, "val": 0.15, "test": 0.15}
    assert full["store"]["row_group_size"] == 1024 and full["census"]["version"] == "2023-05-15"
    assert set(full) == set(tiny), "the tiny profile scales the same parameters"
    assert full["synthetic"] is None, "the census stage's params exist in every profile (null: not generated)"


# ----------------------------------------------------------------------------------------- split
def test_split_is_donor_disjoint_complete_and_near_70_15_15(split_result, extraction):
    a = split_result.assignment
    assert len(a) == len(extraction.obs) and a["soma_joinid"].is_unique
    donors_per_split = a.groupby("tech_sample")["split"].nunique()
    assert (donors_per_split == 1).all(), "no donor in two splits"
    n = a["tech_sample"].nunique()
    for s, target in zip(SPLITS, (0.7, 0.15, 0.15)):
        frac = a.loc[a["split"] == s, "tech_sample"].nunique() / n
        assert abs(frac - target) < 0.08, (s, frac)
        assert set(a.loc[a["split"] == s, "cell_type"]) == set(a["cell_type"]), f"every type in {s}"


def test_split_is_deterministic(extraction, census_params):
    a = split_cells(extraction.obs, census_params).assignment
    b = split_cells(extraction.obs, census_params).assignment
    assert a.equals(b)
    other = copy.deepcopy(census_params)
    other["split"]["seed"] = 12345
    assert not split_cells(extraction.obs, other).assignment["split"].equals(a["split"])


def test_subsets_are_nested_and_inside_train(split_result):
    train = set(split_result.assignment.query("split == 'train'")["soma_joinid"])
    a = split_result.assignment.set_index("soma_joinid")
    for kind in ("donors", "cells"):
        prev: set = set()
        for pct in (15, 30, 50, 70, 100):
            cur = set(split_result.subsets[f"{kind}_{pct}"])
            assert prev <= cur and cur <= train
            prev = cur
        assert prev == train
    # donor subsets hold whole donors
    d15 = a.loc[list(split_result.subsets["donors_15"]), "tech_sample"].unique()
    assert len(split_result.subsets["donors_15"]) == a["tech_sample"].isin(d15).sum()


def test_split_fractions_are_checked(extraction, census_params):
    bad = copy.deepcopy(census_params)
    bad["split"]["fractions"] = {"train": 0.8, "val": 0.15, "test": 0.15}
    with pytest.raises(SplitError, match="sum to 1"):
        split_cells(extraction.obs, bad)


# ----------------------------------------------------------------------------------------- store
def test_normalisation_matches_scanpy():
    import anndata as ad
    import scanpy as sc
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    dense = rng.integers(1, 50, (50, 30)) * (rng.random((50, 30)) < 0.3)
    dense[np.arange(50), rng.integers(0, 30, 50)] = 3
    counts = sp.csr_matrix(dense)
    ours = normalize_log1p(counts, 10_000)
    a = ad.AnnData(counts.astype(np.float32).copy())
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    np.testing.assert_allclose(ours, a.X.toarray(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.expm1(ours.astype(np.float64)).sum(1), 10_000, rtol=1e-4)
    with pytest.raises(ValueError, match="no counts"):
        normalize_log1p(np.zeros((2, 3)))


def test_store_layout_and_contents(store_dir, split_result, extraction, ontology):
    store = Store(store_dir)
    assert store.n_genes == len(extraction.var)
    assert store.var["feature_id"].tolist() == extraction.var["feature_id"].tolist()
    a = split_result.assignment
    for s in SPLITS:
        sp_ = store.split(s)
        assert sp_.n_rows == (a["split"] == s).sum()
        schema = pq.read_schema(sp_.files[0])
        assert schema.field("X").type == pa.list_(pa.float32())
        for c in ("cell_type", "soma_joinid", "dataset_id", "donor_id", "assay", "development_stage", "disease",
                  "tissue", "tissue_general", "tech_sample", "idx"):
            assert schema.field(c).type == pa.int64(), c
        assert schema.field("is_primary_data").type == pa.bool_()
        assert all(n <= 64 for *_, n in sp_.row_groups)
    # rows are the normalised counts of the right cells with the right labels
    rg = next(store.iter_row_groups("test", columns=("X", "cell_type", "soma_joinid")))
    np.testing.assert_allclose(np.expm1(rg["X"].astype(np.float64)).sum(1), 10_000, rtol=1e-3)
    labels = store.lookup("cell_type")
    truth = extraction.obs.set_index("soma_joinid").loc[rg["soma_joinid"], "cell_type"].astype(str).to_numpy()
    assert (labels["label"].to_numpy()[rg["cell_type"]] == truth).all()
    # side files
    train_codes = store.read_obs("train")["cell_type"].to_numpy()
    np.testing.assert_allclose(store.class_weights(), balanced_class_weights(train_codes, store.n_classes))
    from sklearn.utils.class_weight import compute_class_weight

    np.testing.assert_allclose(store.class_weights(), compute_class_weight(
        "balanced", classes=np.arange(store.n_classes), y=train_codes), rtol=1e-6)
    cm = store.child_matrix()
    assert (np.diag(cm) == 1).all()
    terms = labels["ontology_term_id"].tolist()
    for i, ti in enumerate(terms):
        for j, tj in enumerate(terms):
            assert cm[i, j] == int(ontology.is_subtype(tj, ti))


def test_store_subsets_index_train_rows(store_dir, split_result):
    store = Store(store_dir)
    joinids = store.read_obs("train", columns=("soma_joinid",))["soma_joinid"].to_numpy()
    for name, ids in split_result.subsets.items():
        pos = store.train_subset(name)
        assert set(joinids[pos]) == set(ids), name


def test_store_is_deterministic(tmp_path, census_params, extraction, split_result, ontology, store_dir, read_counts):
    out = tmp_path / "again"
    write_store(census_params, extraction.obs, extraction.var, split_result.assignment, split_result.subsets,
                ontology, out, read_counts)
    for f in sorted(store_dir.rglob("*.parquet")):
        rel = f.relative_to(store_dir)
        assert pq.read_table(f).equals(pq.read_table(out / rel)), rel


def test_truncation_to_row_groups(tmp_path, census_params, extraction, split_result, ontology, read_counts):
    p = copy.deepcopy(census_params)
    p["store"]["truncate_to_row_group"] = True
    rep = write_store(p, extraction.obs, extraction.var, split_result.assignment, split_result.subsets, ontology,
                      tmp_path / "trunc", read_counts)
    for s in SPLITS:
        assert rep["rows"][s] % 64 == 0 and rep["rows"][s] + rep["truncated"][s] == (
            split_result.assignment["split"] == s).sum()


def test_store_layout_both_writes_the_sparse_layout_beside_the_dense(tmp_path, census_params, extraction,
                                                                   split_result, ontology, store_dir, read_counts):
    p = copy.deepcopy(census_params)
    p["store"]["layout"] = "both"
    rep = write_store(p, extraction.obs, extraction.var, split_result.assignment, split_result.subsets, ontology,
                      tmp_path / "both", read_counts)
    store = Store(tmp_path / "both")
    assert store.has_sparse and not Store(store_dir).has_sparse and 0 < rep["sparse"]["density"] < 1
    for s in SPLITS:
        dense, sparse = store.split(s), store.sparse_split(s)
        assert [g[2] for g in sparse.row_groups] == [g[2] for g in dense.row_groups]
        for (df, di, _), (sf, si, _) in zip(dense.row_groups, sparse.row_groups):
            d = pq.ParquetFile(df).read_row_group(di)
            with pa.OSFile(str(sf)) as fh:  # Arrow IPC, one record batch per dense row group
                t = pa.Table.from_batches([pa.ipc.open_file(fh).get_batch(si)])
            x = store.read_row_group(df, di)["X"]
            rows = np.repeat(np.arange(len(x)), np.diff(t.column("indices").combine_chunks().offsets.to_numpy()))
            rebuilt = np.zeros_like(x)
            rebuilt[rows, t.column("indices").combine_chunks().values.to_numpy()] = \
                t.column("values").combine_chunks().values.to_numpy()
            assert rebuilt.tobytes() == x.tobytes()
            assert int((x != 0).sum()) == len(rows)  # zeros are not stored
            assert t.drop_columns(["indices", "values"]).equals(d.drop_columns(["X"]))
    # the dense parts are the default layout's, byte for byte
    for f in sorted((store_dir / "train").glob("*.parquet")):
        assert pq.read_table(f).equals(pq.read_table(tmp_path / "both" / "train" / f.name))
    p["store"]["layout"] = "csr"
    with pytest.raises(ConfigError, match="store.layout must be one of"):  # the params schema names it
        write_store(p, extraction.obs, extraction.var, split_result.assignment, split_result.subsets, ontology,
                    tmp_path / "bad", read_counts)


def test_failed_store_leaves_nothing_behind(tmp_path, census_params, extraction, split_result, ontology, read_counts):
    bad = split_result.assignment.iloc[:-5]  # does not match obs
    out = tmp_path / "store"
    with pytest.raises(StoreError, match="does not match"):
        write_store(census_params, extraction.obs, extraction.var, bad, {}, ontology, out, read_counts)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_existing_store_survives_a_failed_rewrite(tmp_path, store_dir, census_params, extraction, split_result,
                                                  ontology, read_counts):
    out = tmp_path / "store"
    shutil.copytree(store_dir, out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    calls = []

    def census_lost_midway(joinids, var_ids):  # the census answers once, then its connection drops
        calls.append(len(joinids))
        if len(calls) > 1:
            raise CensusError("census connection lost")
        return read_counts(joinids, var_ids)

    with pytest.raises(CensusError, match="connection lost"):
        write_store(census_params, extraction.obs, extraction.var, split_result.assignment, split_result.subsets,
                    ontology, out, census_lost_midway)
    assert len(calls) == 2  # it failed half-way through, with a part already written in the temporary folder
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert [x.name for x in tmp_path.iterdir()] == ["store"]


def test_a_missing_census_is_named_before_the_store_is_touched(tmp_path, census_params):
    p = copy.deepcopy(census_params)
    p["census"]["uri"] = str(tmp_path / "gone")
    with pytest.raises(CensusError, match="does not exist"):
        with open_counts(p):
            pass


# ----------------------------------------------------------------------------------------- published layout
def write_published_style_store(root, n_genes=12, n_rows=(2048, 1024, 1024), classes=("B cell", "T cell", "NK cell")):
    """A small store exactly as the published scTab one: row groups of 1,024, _metadata, no extras of ours."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for s, n in zip(SPLITS, n_rows):
        (root / s).mkdir()
        counts = rng.poisson(3, size=(n, n_genes)) + 1
        x = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4).astype(np.float32)
        tbl = pa.table({
            "X": pa.array(list(x), type=pa.list_(pa.float32())),
            "soma_joinid": pa.array(np.arange(n), pa.int64()),
            "is_primary_data": pa.array(np.ones(n, bool)),
            "dataset_id": pa.array(np.zeros(n, np.int64)),
            "donor_id": pa.array(rng.integers(0, 5, n)),
            "assay": pa.array(np.zeros(n, np.int64)),
            "cell_type": pa.array(rng.integers(0, len(classes), n)),
            "development_stage": pa.array(np.zeros(n, np.int64)), "disease": pa.array(np.zeros(n, np.int64)),
            "tech_sample": pa.array(np.zeros(n, np.int64)), "tissue": pa.array(np.zeros(n, np.int64)),
            "tissue_general": pa.array(np.zeros(n, np.int64)), "idx": pa.array(np.arange(n), pa.int64()),
        })
        pq.write_table(tbl, root / s / "part.0.parquet", row_group_size=1024)
        pq.write_metadata(tbl.schema, root / s / "_metadata")
    (root / "categorical_lookup").mkdir()
    pd.DataFrame({"label": list(classes)}).to_parquet(root / "categorical_lookup" / "cell_type.parquet", index=False)
    pd.DataFrame({"feature_id": [f"ENSG{i:011d}" for i in range(n_genes)],
                  "feature_name": [f"G{i}" for i in range(n_genes)]}).to_parquet(root / "var.parquet", index=False)
    np.save(root / "class_weights.npy", np.ones(len(classes)))
    (root / "cell_type_hierarchy").mkdir()
    np.save(root / "cell_type_hierarchy" / "child_matrix.npy", np.eye(len(classes)))
    return root


def test_published_layout_reads_through_the_same_reader(tmp_path):
    root = write_published_style_store(tmp_path / "merlin")
    store = Store(root)
    assert store.classes == ["B cell", "T cell", "NK cell"] and store.n_genes == 12
    assert store.split("train").n_rows == 2048 and len(store.split("train").row_groups) == 2
    rg = next(store.iter_row_groups("val"))
    assert rg["X"].shape == (1024, 12) and rg["X"].dtype == np.float32
    np.testing.assert_allclose(np.expm1(rg["X"].astype(np.float64)).sum(1), 10_000, rtol=1e-4)
    assert store.child_matrix().shape == (3, 3) and store.report() == {}


def test_reader_names_a_bad_part(tmp_path):
    root = write_published_style_store(tmp_path / "merlin")
    (root / "test" / "part.1.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(StoreError, match="part.1.parquet"):
        Store(root).split("test")


def test_reader_names_a_wrong_gene_count(tmp_path):
    root = write_published_style_store(tmp_path / "merlin")
    var = pd.DataFrame({"feature_id": [f"g{i}" for i in range(5)], "feature_name": ["a"] * 5})
    var.to_parquet(root / "var.parquet")
    with pytest.raises(StoreError, match="has 12 values, expected 5"):
        next(Store(root).iter_row_groups("train"))
