"""The embedded census: real SOMA format, opened by the real cellxgene_census API, with every filter exercised."""

from __future__ import annotations

import cellxgene_census
import numpy as np

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
