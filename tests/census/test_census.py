"""The embedded census: real SOMA format, opened by the real cellxgene_census API, with every filter exercised."""

from __future__ import annotations

from dataclasses import replace

import cellxgene_census
import numpy as np
import pandas as pd
import pytest

from sctab.census.genes import protein_coding_ids
from sctab.census.source import OBS_COLUMNS
from sctab.census.synthetic import SyntheticCensusConfig, generate_census_anndata


def test_open_soma_reads_the_embedded_census(census_params):
    uri = census_params["census"]["uri"]
    with cellxgene_census.open_soma(uri=uri) as census:
        exp = census["census_data"]["homo_sapiens"]
        assert set(OBS_COLUMNS) <= set(exp.obs.schema.names)
        assert "raw" in exp.ms["RNA"].X
        adata = cellxgene_census.get_anndata(census, "Homo sapiens", X_name="raw", obs_coords=slice(0, 49),
                                             var_value_filter="feature_name != ''")
    assert adata.n_obs == 50
    x = adata.X.toarray()
    assert np.all(x >= 0) and np.all(x == np.round(x)), "raw counts are non-negative integers"
    assert adata.var["feature_id"].str.startswith("ENSG").all()


def test_generator_is_deterministic_and_exercises_every_filter():
    cfg = SyntheticCensusConfig(n_genes=1500, donors_per_dataset=(3, 4), cells_per_donor=(20, 30), library_size=600)
    a, info = generate_census_anndata(cfg)
    b, _ = generate_census_anndata(cfg)
    assert (a.X != b.X).nnz == 0 and a.obs.equals(b.obs)
    obs = a.obs
    assert (~obs["is_primary_data"]).any(), "non-primary duplicates"
    assert (~obs["assay"].str.startswith("10x")).any(), "non-10x assays"
    assert (obs["cell_type_ontology_term_id"] == "unknown").any(), "non-CL labels"
    assert {"CL:0000738", "CL:0000115"} <= set(obs["cell_type_ontology_term_id"]), "broad labels"
    pc = protein_coding_ids()
    coding = a.var["feature_id"].isin(pc)
    assert coding.sum() == 1500 and (~coding).sum() > 0, "non-coding genes for the gene selection to drop"
    # 10x-like sparsity and varying library sizes
    assert 0.03 < info["density"] < 0.25
    lib = np.asarray(a.X.sum(axis=1)).ravel()
    assert lib.std() / lib.mean() > 0.3


def test_subtype_shares_parent_program_more_than_unrelated_type():
    """Programs follow the ontology: CD4 T is closer to CD8 T than to an alveolar type 2 cell."""
    from sctab.census.synthetic import _ExpressionModel
    from sctab.ontology import load_bundled_cl

    cfg = SyntheticCensusConfig(n_genes=400)
    m = _ExpressionModel(cfg, load_bundled_cl(cfg.cl_version), 400)
    cd4, cd8, at2 = (m.ancestor_program(t) for t in ("CL:0000624", "CL:0000625", "CL:0002063"))
    assert np.abs(cd4 - cd8).sum() < 0.5 * np.abs(cd4 - at2).sum()


def test_extra_types_add_real_cl_terms():
    from sctab.ontology import load_bundled_cl

    base = SyntheticCensusConfig(n_genes=80, donors_per_dataset=(3, 3), cells_per_donor=(30, 40))
    more = SyntheticCensusConfig(n_genes=80, donors_per_dataset=(3, 3), cells_per_donor=(30, 40), extra_types=12)
    a, _ = generate_census_anndata(base)
    b, _ = generate_census_anndata(more)
    new = set(b.obs["cell_type_ontology_term_id"]) - set(a.obs["cell_type_ontology_term_id"])
    cl = load_bundled_cl(more.cl_version)
    assert len(new) >= 10 and all(t in cl and len(cl[t]["ancestors"]) >= 8 for t in new)


def test_bench_profile_is_at_the_paper_dimension():
    from sctab.config import load_profile

    bench = load_profile("bench")
    assert bench["synthetic"]["n_genes"] == 19331 and bench["store"]["row_group_size"] == 1024


# ------------------------------------------------------------------------------------------ streaming writer
def _read_back(uri):
    import scipy.sparse as sp
    import tiledbsoma

    with tiledbsoma.Experiment.open(f"{uri}/census_data/homo_sapiens") as e:
        obs = e.obs.read().concat().to_pandas()
        var = e.ms["RNA"].var.read().concat().to_pandas()
        X = e.ms["RNA"].X["raw"]
        t = X.read().tables().concat()
        m = sp.csr_matrix((t["soma_data"].to_numpy(), (t["soma_dim_0"].to_numpy(), t["soma_dim_1"].to_numpy())),
                          shape=X.shape)
        schemas = (e.obs.schema, e.ms["RNA"].var.schema, X.schema, X.shape)
    with tiledbsoma.Collection.open(str(uri)) as root:
        tables = {k: root["census_info"][k].read().concat() for k in ("summary", "datasets")}
    return obs, var, m, schemas, tables


def test_streamed_census_is_the_in_memory_one_value_for_value(tmp_path):
    """Same obs (every column, same order), var and X (same non-zeros, same float32 values) as the in-memory
    generator, laid out as tiledbsoma.io.from_anndata writes it; a small flush size mixes atlas copies and
    primary rows over several writes."""
    from sctab.census.streaming import write_census_streaming
    from sctab.census.synthetic import write_census

    cfg = SyntheticCensusConfig(n_genes=150, n_datasets=14, donors_per_dataset=(2, 3), cells_per_donor=(6, 18),
                                secondary_fraction=0.3, extra_types=5)
    a, info = generate_census_anndata(cfg)
    assert write_census_streaming(cfg, tmp_path / "streamed", flush_nnz=5000) == info
    fragments = list((tmp_path / "streamed/census_data/homo_sapiens/ms/RNA/X/raw/__fragments").iterdir())
    assert len(fragments) > 3, "several chunked writes"
    obs, var, X, schemas, tables = _read_back(tmp_path / "streamed")
    assert obs["soma_joinid"].tolist() == list(range(a.n_obs)) and obs["obs_id"].tolist() == a.obs_names.tolist()
    pd.testing.assert_frame_equal(obs.drop(columns=["soma_joinid", "obs_id"]), a.obs.reset_index(drop=True))
    assert (~obs["is_primary_data"]).sum() == round(0.3 * obs["is_primary_data"].sum()), "atlas copies"
    assert var["var_id"].tolist() == a.var_names.tolist()
    pd.testing.assert_frame_equal(var.drop(columns=["soma_joinid", "var_id"]), a.var.reset_index(drop=True))
    assert X.dtype == np.float32 and X.nnz == a.X.nnz and (X != a.X).nnz == 0
    assert np.array_equal(X.data, a.X.data) and np.array_equal(X.indices, a.X.indices)
    write_census(a, tmp_path / "memory", info)
    mem_obs, mem_var, _, mem_schemas, mem_tables = _read_back(tmp_path / "memory")
    assert [str(s) for s in schemas[:3]] == [str(s) for s in mem_schemas[:3]] and schemas[3] == mem_schemas[3]
    for k in ("summary", "datasets"):
        assert tables[k].equals(mem_tables[k]), k


def test_streaming_writer_names_bad_input(tmp_path):
    from sctab.census.streaming import write_census_streaming

    small = SyntheticCensusConfig(n_genes=60, cells_per_donor=(5, 8), donors_per_dataset=(2, 2))
    with pytest.raises(ValueError, match="flush_nnz must be a positive"):
        write_census_streaming(small, tmp_path / "a", flush_nnz=0)
    with pytest.raises(ValueError, match="no cells.*cells_per_donor"):
        write_census_streaming(replace(small, cells_per_donor=(0, 0)), tmp_path / "b")
    with pytest.raises(ValueError, match="synthetic.n_datasets=2000 plans .* datasets"):
        write_census_streaming(replace(small, n_datasets=2000), tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_scale_profile_and_cells_option_size_the_census(tmp_path):
    """--cells N: about N cells, with more datasets and donors (not only bigger donors) as N grows."""
    from sctab.census.streaming import census_layout
    from sctab.census.synthetic import expected_cells
    from sctab.cli import main
    from sctab.config import load_params, load_profile

    scale, bench = load_profile("scale"), load_profile("bench")
    assert set(scale) == set(bench) and scale["synthetic"]["n_genes"] == 19331
    assert scale["synthetic"]["extra_types"] == bench["synthetic"]["extra_types"]
    assert abs(expected_cells(SyntheticCensusConfig.from_params(scale)) - 500_000) < 5_000
    sized = {}
    for n in (20_000, 200_000):
        out = tmp_path / f"{n}.yaml"
        assert main(["params", "--profile", "scale", "--cells", str(n), "--out", str(out)]) == 0
        assert f"--cells {n}" in out.read_text().splitlines()[0]
        sized[n] = load_params(out)
    small, big = sized[20_000]["synthetic"], sized[200_000]["synthetic"]
    assert big["n_datasets"] > small["n_datasets"] and big["donors_per_dataset"][0] > small["donors_per_dataset"][0]
    assert big["n_genes"] == 19331 and {k: v for k, v in sized[200_000].items() if k != "synthetic"} == \
        {k: v for k, v in scale.items() if k != "synthetic"}
    layout = census_layout(SyntheticCensusConfig.from_params(sized[200_000]))
    assert abs(layout.n_obs - 200_000) < 0.05 * 200_000
    assert layout.datasets["dataset_total_cell_count"].sum() == layout.n_obs


def test_cells_option_is_for_the_embedded_census_only(tmp_path, capsys):
    from sctab.cli import main

    out = tmp_path / "params.yaml"
    assert main(["params", "--profile", "census-2023-05-15", "--cells", "100000", "--out", str(out)]) == 2
    assert "--cells sizes the embedded synthetic census" in capsys.readouterr().err and not out.exists()
    assert main(["params", "--profile", "tiny", "--cells", "10", "--out", str(out)]) == 2
    assert "whole number of cells >= 1000, got 10" in capsys.readouterr().err and not out.exists()
