"""A reference from .h5ad files and a census slice: exact oracles against the census route, and bad inputs.

The embedded census exported as one .h5ad per dataset (tests/h5ad_export.py: Ensembl ids, symbols, counts in
X / a layer / .raw, one free-text label column) must give the same store, value for value and code for code,
as the census itself. Every bad input is a clear error naming the file, with nothing written.
"""

from __future__ import annotations

import copy
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

from sctab.census.counts import InputError
from sctab.census.extract import extract
from sctab.census.filters import FilterError
from sctab.census.source import open_counts
from sctab.data.split import SplitError, split_cells
from sctab.data.store import Store
from sctab.data.store_writer import write_store
from tests.h5ad_export import RAW_FREE_TEXT, export_datasets
from tests.paths import PIPELINES


@pytest.fixture(scope="module")
def exported(census_params, extraction, tmp_path_factory) -> tuple[dict, list[Path]]:
    """(h5ad params with the census route's genes as feature_list, the exported files)."""
    tmp = tmp_path_factory.mktemp("h5ad")
    paths = export_datasets(census_params, tmp / "files")
    extraction.var[["feature_id"]].to_csv(tmp / "genes.csv", index=False)
    hp = copy.deepcopy(census_params)
    hp["census"].update({"source": "h5ad", "inputs": [str(p) for p in paths]})
    hp["genes"] = {**hp["genes"], "feature_list": str(tmp / "genes.csv")}
    return hp, paths


def _write(params, ex, ontology, out):
    split = split_cells(ex.obs, params)
    with open_counts(params) as read:
        write_store(params, ex.obs, ex.var, split.assignment, split.subsets, ontology, out, read)
    return Store(out)


def _frames(store: Store, split: str) -> pd.DataFrame:
    cols = ["X", "soma_joinid", "cell_type", "dataset_id", "donor_id", "assay", "tissue", "tissue_general",
            "tech_sample", "development_stage", "disease"]
    return pd.concat([pd.read_parquet(p, columns=cols) for p in store.split(split).files], ignore_index=True)


def test_h5ad_route_gives_the_census_store(exported, extraction, store_dir, ontology, tmp_path):
    hp, paths = exported
    ex = extract(hp, ontology)
    inputs = {Path(f["file"]).name: f for f in ex.report["inputs"]}
    assert inputs["dataset_01.h5ad"]["gene_ids"].startswith("symbol")
    assert inputs["dataset_01.h5ad"]["matrix"] == "layers['counts']"
    assert inputs[f"dataset_{RAW_FREE_TEXT:02d}.h5ad"]["matrix"] == ".raw.X"
    assert inputs[f"dataset_{RAW_FREE_TEXT:02d}.h5ad"]["labels"] == "free text mapped to CL"
    pd.testing.assert_frame_equal(ex.obs.astype(str), extraction.obs.astype(str))
    assert ex.var["feature_id"].tolist() == extraction.var["feature_id"].tolist()
    got = _write(hp, ex, ontology, tmp_path / "store")
    want = Store(store_dir)
    for s in ("train", "val", "test"):
        a, b = _frames(got, s), _frames(want, s)
        assert a.drop(columns="X").equals(b.drop(columns="X")), s
        assert np.array_equal(np.stack(a["X"].to_numpy()), np.stack(b["X"].to_numpy())), s
    for c in ("cell_type", "tech_sample"):
        assert got.lookup(c).equals(want.lookup(c))
    assert np.array_equal(got.class_weights(), want.class_weights())


def test_census_slice_is_the_full_store_restricted(params, ontology, tmp_path):
    params["filters"].update({"min_cells_per_type": 20, "min_donors_per_type": 1})
    params["split"]["by"] = "cell"  # a slice has types of few donors; the counts per cell are what is compared
    full = extract(params, ontology)
    sliced = copy.deepcopy(params)
    sliced["census"]["obs_value_filter"] = "tissue_general == 'lung'"
    part = extract(sliced, ontology)
    assert part.report["filters"][0]["filter"] == "obs_value_filter: tissue_general == 'lung'"
    assert part.report["filters"][0]["after"]["cells"] < part.report["filters"][0]["before"]["cells"]
    want = full.obs[full.obs["tissue_general"] == "lung"].reset_index(drop=True)
    pd.testing.assert_frame_equal(part.obs.astype(str), want.astype(str))
    # the store of the slice holds exactly those cells, with the counts the full store gives them
    a = _write(sliced, part, ontology, tmp_path / "slice")
    b = _write(params, full, ontology, tmp_path / "full")
    xa = pd.concat([_frames(a, s) for s in ("train", "val", "test")]).set_index("soma_joinid").sort_index()
    xb = pd.concat([_frames(b, s) for s in ("train", "val", "test")]).set_index("soma_joinid").sort_index()
    assert set(xa.index) == set(want["soma_joinid"])
    xb = xb.loc[xa.index]
    assert np.array_equal(np.stack(xa["X"].to_numpy()), np.stack(xb["X"].to_numpy()))
    label = a.lookup("cell_type")["label"].tolist()
    label_b = b.lookup("cell_type")["label"].tolist()
    assert [label[i] for i in xa["cell_type"]] == [label_b[i] for i in xb["cell_type"]]


def test_value_filter_errors(params, ontology, exported):
    params["census"]["obs_value_filter"] = "tissue_general == = 'lung'"
    with pytest.raises(FilterError, match="malformed"):
        extract(params, ontology)
    params["census"]["obs_value_filter"] = "tissue_general == 'moon'"
    with pytest.raises(FilterError, match="leaves no cell"):
        extract(params, ontology)
    hp = copy.deepcopy(exported[0])
    hp["census"]["obs_value_filter"] = "tissue_general == = 'lung'"
    with pytest.raises(FilterError, match="malformed"):
        extract(hp, ontology)
    hp["census"]["obs_value_filter"] = "tissue_general == 'moon'"
    with pytest.raises(FilterError, match="leaves no cell of .*dataset_00.h5ad"):
        extract(hp, ontology)


# ---------------------------------------------------------------------------------------------- bad inputs
def _cells(n=60, genes=("ENSG00000141510", "ENSG00000012048", "ENSG00000139618"), seed=0, **obs) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    x = sp.csr_matrix(rng.poisson(3, (n, len(genes))).astype(np.float32))
    frame = pd.DataFrame({"cell_type_ontology_term_id": ["CL:0000236"] * (n // 2) + ["CL:0000624"] * (n - n // 2),
                          "donor_id": [f"d{i % 4}" for i in range(n)], **obs},
                         index=[f"c{seed}-{i}" for i in range(n)])
    return ad.AnnData(X=x, obs=frame, var=pd.DataFrame(index=list(genes)))


def _h5ad_params(params, tmp_path, *adatas, **census) -> dict:
    hp = copy.deepcopy(params)
    tmp_path.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, a in enumerate(adatas):
        paths.append(tmp_path / f"ref_{i}.h5ad")
        a.write_h5ad(paths[-1])
    genes = tmp_path / "genes.csv"
    pd.DataFrame({"feature_id": ["ENSG00000141510", "ENSG00000012048", "ENSG00000139618"]}).to_csv(genes,
                                                                                                  index=False)
    hp["census"].update({"source": "h5ad", "inputs": [str(p) for p in paths], **census})
    hp["genes"] = {"feature_list": str(genes)}
    hp["filters"].update({"min_cells_per_type": 1, "min_donors_per_type": 1, "min_ancestors": 1})
    return hp


def _extract_fails(hp, ontology, match):
    with pytest.raises((InputError, FilterError, ValueError), match=match):
        extract(hp, ontology)


def test_bad_inputs_name_the_file(params, ontology, tmp_path):
    norm = _cells()
    norm.X = sp.csr_matrix(np.log1p(norm.X.toarray() / 7))
    _extract_fails(_h5ad_params(params, tmp_path / "a", norm), ontology, r"ref_0.h5ad holds no raw counts.*"
                   r"looks normalised")
    empty = _cells()
    empty.X = None
    _extract_fails(_h5ad_params(params, tmp_path / "b", empty), ontology, r"ref_0.h5ad has no matrix")
    text = _cells()
    text.obs = text.obs.drop(columns="cell_type_ontology_term_id").assign(cell_type=["B cell"] * 30 + ["blob"] * 30)
    hp = _h5ad_params(params, tmp_path / "c", text)
    _extract_fails(hp, ontology, r"'blob': 30 cells in .*ref_0.h5ad.*census.label_map")
    lm = tmp_path / "c" / "label_map.yaml"
    lm.write_text(yaml.safe_dump({"blob": "CL:0000624"}))
    hp["census"]["label_map"] = str(lm)
    ex = extract(hp, ontology)
    assert ex.report["label_mapping"] == {"B cell": "CL:0000236", "blob": "CL:0000624"}
    assert set(ex.obs["cell_type"].astype(str)) == {"B cell", "CD4-positive, alpha-beta T cell"}
    _extract_fails(_h5ad_params(params, tmp_path / "d", _cells(), _cells()), ontology,
                   r"ref_1.h5ad and .*ref_0.h5ad share 60 cell id")
    other = _cells(genes=("ENSG00000000001", "ENSG00000000002"))
    _extract_fails(_h5ad_params(params, tmp_path / "e", other), ontology, r"none of the model's 3 genes is in "
                   r".*ref_0.h5ad")
    prim = _cells(is_primary_data=False)
    _extract_fails(_h5ad_params(params, tmp_path / "f", prim), ontology, r"no cell of .*ref_0.h5ad passes")


def test_absent_columns_are_noop_filters_and_missing_genes_zero_filled(params, ontology, tmp_path):
    a = _cells(genes=("ENSG00000141510", "ENSG00000012048"))
    hp = _h5ad_params(params, tmp_path, a)
    ex = extract(hp, ontology)
    steps = {s["filter"]: s for s in ex.report["filters"]}
    assert "no is_primary_data column" in steps["is_primary_data"]["note"]
    assert "no assay column" in steps["10x assays"]["note"]
    f = ex.report["inputs"][0]
    assert (f["genes_found"], f["genes_zero_filled"]) == (2, 1)
    assert set(ex.obs["dataset_id"]) == {"ref_0"} and ex.obs["tech_sample"].nunique() == 4
    with open_counts(hp) as read:
        got = read(np.array([5, 0, 59]), ex.var["soma_joinid"].to_numpy())
    want = a.X[[5, 0, 59]].toarray()
    assert np.array_equal(got.toarray()[:, :2], want) and not got.toarray()[:, 2].any()


def test_one_donor_is_a_clear_error_and_cell_split_is_flagged(params, ontology, tmp_path):
    one = _cells()
    one.obs["donor_id"] = "d0"
    hp = _h5ad_params(params, tmp_path, one)
    ex = extract(hp, ontology)
    with pytest.raises(SplitError, match=r"1 donor\(s\) in the inputs .*ref_0.h5ad.*split.by: cell"):
        split_cells(ex.obs, hp)
    hp["split"]["by"] = "cell"
    res = split_cells(ex.obs, hp)
    assert res.report["by"] == "cell" and "optimistic" in res.report["leaky"]
    assert set(res.assignment["split"]) == {"train", "val", "test"}


def test_no_partial_store_when_counts_turn_bad(params, ontology, tmp_path):
    """Counts that are integers in the first rows but not later fail in the store stage; nothing is left."""
    a = _cells(n=3000)
    x = a.X.toarray()
    x[2500:] += 0.5
    a.X = sp.csr_matrix(x)
    hp = _h5ad_params(params, tmp_path, a)
    ex = extract(hp, ontology)
    out = tmp_path / "store"
    with pytest.raises(InputError, match=r"ref_0.h5ad.*non-integer"):
        _write(hp, ex, ontology, out)
    assert not out.exists() and not list(tmp_path.glob(".store.tmp-*"))


def test_augment_disabled_writes_only_the_report(params, store_dir, tmp_path):
    """A reference of one donor has no donor differences: augment.enabled false gives a report and no vectors."""
    import importlib.util
    import json

    params["augment"]["enabled"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    spec = importlib.util.spec_from_file_location("augment_stage", PIPELINES / "augment.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--params", str(tmp_path / "params.yaml"), "--store", str(store_dir), "--out", str(tmp_path / "aug")])
    assert sorted(p.name for p in (tmp_path / "aug").iterdir()) == ["augment_report.json"]
    assert json.loads((tmp_path / "aug" / "augment_report.json").read_text())["enabled"] is False
